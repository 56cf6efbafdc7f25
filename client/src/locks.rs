//! File locks (flock and POSIX record locks) held by the master, so they are
//! cluster-wide: setting, testing and releasing them, and remembering what
//! this session holds so it can be re-asserted after a re-registration
//! (`Session::note_locks`).
//!
//! A lock is keyed by the kernel's lock owner (a process's file table for
//! POSIX locks, an open file description for flock); the master adds the
//! session. Ranges are inclusive; `u64::MAX` as the end means "to the end of
//! the file, however long it grows".
//!
//! Open file descriptions: an OFD lock (`F_OFD_SETLK`) and a flock are owned by
//! the open file itself, and the kernel drops them at its last close without
//! telling the filesystem (for FUSE they are not in the kernel's lock table).
//! That last close is the FUSE RELEASE of the file handle, so [`Locks`] notes,
//! per handle, the owners that set locks through it ([`HandleOwners`]) and
//! releases whatever is still noted when the handle is released.
//!
//! Blocking waits: each is one long-lived call, and a mount may have many at
//! once (hundreds of processes waiting for one lock). They go over a master
//! connection of their own, so however many streams they keep open, the calls
//! of the data path (reads, fsync, release on the shared connection; metadata
//! on the FUSE threads' connections) never queue behind them for a stream.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use alces_proto::net::AuthChannel;
use alces_proto::pb;
use alces_proto::pb::master_client::MasterClient;
use parking_lot::Mutex;

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

/// The lock owners that set locks through each open file handle, so the
/// handle's release can drop the locks of owners that are the open file
/// description itself (OFD locks, flocks).
///
/// Why releasing every owner still noted at RELEASE is safe for POSIX locks,
/// whose owner (a process's file table) may reach the file through handles
/// shared by fork, dup or `SCM_RIGHTS`: RELEASE comes only once no file table
/// refers to the open file description any more, and every file table drops
/// its reference by a close (`close`, `exit`, `execve` with close-on-exec, the
/// last user of an unshared table), each of which sends FLUSH with that
/// table's owner first. That FLUSH released the owner's locks on the inode
/// and forgot the owner on every handle of the inode
/// ([`HandleOwners::forget`]). So a POSIX owner still noted at RELEASE holds
/// nothing any more (no master call is made then), and a POSIX owner whose
/// own copy is still open (a forked child) is never touched by another
/// process's close. What remains are the owners that are the open file
/// itself, whose locks end with it.
#[derive(Debug, Default)]
pub(crate) struct HandleOwners {
    /// Per handle: its inode and the owners that set locks through it.
    handles: HashMap<u64, (u64, HashSet<u64>)>,
    /// Per inode: the handles with noted owners.
    by_inode: HashMap<u64, HashSet<u64>>,
}

impl HandleOwners {
    /// Notes that `owner` set (or tried to set) a lock on `inode` through
    /// `handle`.
    pub(crate) fn note(&mut self, handle: u64, inode: u64, owner: u64) {
        let e = self
            .handles
            .entry(handle)
            .or_insert_with(|| (inode, HashSet::new()));
        e.0 = inode;
        e.1.insert(owner);
        self.by_inode.entry(inode).or_default().insert(handle);
    }

    /// Forgets `owner` on every handle of `inode` (its locks there were
    /// released by a close).
    pub(crate) fn forget(&mut self, inode: u64, owner: u64) {
        let Some(hs) = self.by_inode.get_mut(&inode) else {
            return;
        };
        hs.retain(|h| match self.handles.get_mut(h) {
            Some((_, owners)) => {
                owners.remove(&owner);
                if owners.is_empty() {
                    self.handles.remove(h);
                    false
                } else {
                    true
                }
            }
            None => false,
        });
        if hs.is_empty() {
            self.by_inode.remove(&inode);
        }
    }

    /// Removes `handle` (released): its inode and the owners still noted.
    pub(crate) fn take(&mut self, handle: u64) -> Option<(u64, Vec<u64>)> {
        let (inode, owners) = self.handles.remove(&handle)?;
        if let Some(hs) = self.by_inode.get_mut(&inode) {
            hs.remove(&handle);
            if hs.is_empty() {
                self.by_inode.remove(&inode);
            }
        }
        let mut owners: Vec<u64> = owners.into_iter().collect();
        owners.sort_unstable();
        Some((inode, owners))
    }
}

/// The lock calls over a session.
#[derive(Clone, Debug)]
pub(crate) struct Locks {
    session: Session,
    handles: Arc<Mutex<HandleOwners>>,
    /// The connection of blocking waits, made by the first one (on the
    /// runtime that runs it).
    waits: Arc<Mutex<Option<MasterClient<AuthChannel>>>>,
}

impl Locks {
    /// The lock calls over `session`.
    pub(crate) fn new(session: Session) -> Self {
        Self {
            session,
            handles: Arc::default(),
            waits: Arc::default(),
        }
    }

    /// The master connection of blocking waits.
    fn wait_master(&self) -> Result<MasterClient<AuthChannel>> {
        let mut w = self.waits.lock();
        if let Some(m) = w.as_ref() {
            return Ok(m.clone());
        }
        let m = self.session.new_master_client()?;
        *w = Some(m.clone());
        Ok(m)
    }

    /// Sets, changes or removes a lock through open file `handle`. Without
    /// `wait` a conflicting lock fails with `EAGAIN`; with it the call returns
    /// once the lock is granted, or fails with `EDEADLK` when waiting would
    /// deadlock. Dropping the future cancels the wait (the lock may then have
    /// been granted: it is noted as possibly held, so the owner's next close,
    /// or the handle's release, releases it).
    pub(crate) async fn set(&self, spec: LockSpec, wait: bool, handle: u64) -> Result<()> {
        let own = if wait && spec.kind != LockKind::Unlock {
            Some(self.wait_master()?)
        } else {
            None
        };
        if spec.kind != LockKind::Unlock {
            // Noted before the call, so a lock granted to a cancelled wait is
            // covered too; a noted owner that holds nothing costs no call.
            self.handles.lock().note(handle, spec.inode, spec.owner);
        }
        let mut guard = MaybeGranted {
            session: &self.session,
            spec: (wait && spec.kind != LockKind::Unlock).then(|| spec.wire()),
        };
        let call = self.session.call("SetLock", |mut m, sid| {
            let req = pb::SetLockRequest {
                session_id: sid,
                lock: Some(spec.wire()),
                wait,
            };
            async move { m.set_lock(req).await }
        });
        let r = match own {
            Some(m) => self.session.with_master(m, call).await,
            None => call.await,
        };
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
        self.handles.lock().forget(inode, owner);
        self.release_owner(inode, owner).await
    }

    /// The last close of open file `handle`: removes the locks of every owner
    /// that set locks through it and still holds some (see [`HandleOwners`]).
    /// Every owner is tried; the first failure is returned.
    pub(crate) async fn release_handle(&self, handle: u64) -> Result<()> {
        let Some((inode, owners)) = self.handles.lock().take(handle) else {
            return Ok(());
        };
        let mut first = Ok(());
        for owner in owners {
            let r = self.release_owner(inode, owner).await;
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    async fn release_owner(&self, inode: u64, owner: u64) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::HandleOwners;

    #[test]
    fn a_released_handle_gives_back_the_owners_no_close_forgot() {
        let mut h = HandleOwners::default();
        // Handle 1 of inode 10: an OFD owner (the open file, 100) and two
        // POSIX owners (200, a parent, and 300, its forked child).
        h.note(1, 10, 100);
        h.note(1, 10, 200);
        h.note(1, 10, 300);
        // Handle 2 of the same inode, the parent's again.
        h.note(2, 10, 200);
        // Handle 3 of another inode, the parent's too.
        h.note(3, 11, 200);
        // The parent closes its copy of inode 10: forgotten on both of its
        // handles, not on inode 11's.
        h.forget(10, 200);
        assert_eq!(h.take(2), None, "handle 2 had only the parent");
        assert_eq!(h.take(1), Some((10, vec![100, 300])));
        assert_eq!(h.take(1), None, "taken once");
        assert_eq!(h.take(3), Some((11, vec![200])));
        assert!(h.handles.is_empty() && h.by_inode.is_empty());
        // Forgetting on an unknown inode or owner is harmless.
        h.note(4, 12, 1);
        h.forget(13, 1);
        h.forget(12, 2);
        assert_eq!(h.handles.len(), 1);
    }
}
