//! File locks (flock and POSIX record locks) held by the master, so they are
//! cluster-wide: setting, testing and releasing them, and remembering what
//! this session holds so it can be re-asserted after a re-registration
//! (`Session::note_locks`).
//!
//! A lock is keyed by the kernel's lock owner (a process's file table for
//! POSIX locks, an open file description for flock); the master adds the
//! session. Ranges are inclusive; `u64::MAX` as the end means "to the end of
//! the file, however long it grows".

use alces_proto::pb;

use crate::error::{Error, Result};
use crate::session::Session;

/// What a lock request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Shared (F_RDLCK, LOCK_SH).
    Read,
    /// Exclusive (F_WRLCK, LOCK_EX).
    Write,
    /// Remove (F_UNLCK, LOCK_UN).
    Unlock,
}

impl LockKind {
    fn wire(self) -> pb::LockType {
        match self {
            LockKind::Read => pb::LockType::LockRead,
            LockKind::Write => pb::LockType::LockWrite,
            LockKind::Unlock => pb::LockType::LockUnlock,
        }
    }
}

/// A lock request: whose, which bytes, what kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockSpec {
    /// The file.
    pub inode: u64,
    /// The kernel's lock owner.
    pub owner: u64,
    /// Shared, exclusive or unlock.
    pub kind: LockKind,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// The pid of the requesting process (reported to others testing the lock).
    pub pid: u32,
}

impl LockSpec {
    fn wire(&self) -> pb::HeldLock {
        pb::HeldLock {
            inode: self.inode,
            owner: self.owner,
            r#type: self.kind.wire() as i32,
            start: self.start,
            end: self.end,
            pid: self.pid,
            session_id: 0,
        }
    }
}

/// A lock held by another owner that conflicts with a tested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConflict {
    /// True for a write (exclusive) lock.
    pub write: bool,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// The pid its holder's kernel passed.
    pub pid: u32,
}

/// The lock calls over a session.
#[derive(Clone, Debug)]
pub(crate) struct Locks {
    session: Session,
}

impl Locks {
    /// The lock calls over `session`.
    pub(crate) fn new(session: Session) -> Self {
        Self { session }
    }

    /// Sets, changes or removes a lock. Without `wait` a conflicting lock fails
    /// with `EAGAIN`; with it the call returns once the lock is granted, or
    /// fails with `EDEADLK` when waiting would deadlock. Dropping the future
    /// cancels the wait (the lock may then have been granted: it is noted as
    /// possibly held, so the owner's next close releases it).
    pub(crate) async fn set(&self, spec: LockSpec, wait: bool) -> Result<()> {
        let mut guard = MaybeGranted {
            session: &self.session,
            spec: (wait && spec.kind != LockKind::Unlock).then(|| spec.wire()),
        };
        let r = self
            .session
            .call("SetLock", |mut m, sid| {
                let req = pb::SetLockRequest {
                    session_id: sid,
                    lock: Some(spec.wire()),
                    wait,
                };
                async move { m.set_lock(req).await }
            })
            .await;
        guard.spec = None;
        let held = r?.held;
        self.session.note_locks(spec.inode, spec.owner, held);
        Ok(())
    }

    /// The first lock of another owner that conflicts with `spec` (`Read` or
    /// `Write`), if any.
    pub(crate) async fn get(&self, spec: LockSpec) -> Result<Option<LockConflict>> {
        if spec.kind == LockKind::Unlock {
            return Err(Error::new(
                libc::EINVAL,
                "a lock test needs a read or write lock",
            ));
        }
        let r = self
            .session
            .call("GetLock", |mut m, sid| {
                let req = pb::SetLockRequest {
                    session_id: sid,
                    lock: Some(spec.wire()),
                    wait: false,
                };
                async move { m.get_lock(req).await }
            })
            .await?;
        Ok(r.conflict.map(|c| LockConflict {
            write: c.r#type == pb::LockType::LockWrite as i32,
            start: c.start,
            end: c.end,
            pid: c.pid,
        }))
    }

    /// Removes every lock of `owner` on `inode` (a close by the process, or the
    /// last close of a flocked file). No call when this session holds none.
    pub(crate) async fn release(&self, inode: u64, owner: u64) -> Result<()> {
        if !self.session.holds_locks(inode, owner) {
            return Ok(());
        }
        self.session
            .call("ReleaseLocks", |mut m, sid| {
                let req = pb::ReleaseLocksRequest {
                    session_id: sid,
                    inode,
                    owner,
                };
                async move { m.release_locks(req).await }
            })
            .await?;
        self.session.note_locks(inode, owner, Vec::new());
        Ok(())
    }
}

/// Notes a waited-for lock as possibly held when its call is dropped before
/// the answer.
struct MaybeGranted<'a> {
    session: &'a Session,
    spec: Option<pb::HeldLock>,
}

impl Drop for MaybeGranted<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.spec.take() {
            self.session.note_maybe_lock(l);
        }
    }
}
