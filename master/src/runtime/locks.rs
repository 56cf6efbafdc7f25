//! The file lock table: flock and POSIX record locks held by the master for
//! every client session, and the requests waiting for one.
//!
//! Runtime only: locks are never written to the changelog. After a restart or
//! a promotion the clients re-assert what they hold, and no new lock is granted
//! before `grace_until` (one session timeout after the master started).
//!
//! A lock belongs to an [`Owner`]: a session and the lock owner the kernel
//! passed (a process's file table for POSIX locks, an open file description
//! for flock). FUSE does not tell the two kinds apart on the way to the
//! filesystem (fuser drops `FUSE_LK_FLOCK`), so a flock is a lock of the whole
//! file (`0..=u64::MAX`) whose owner is the open file description, exactly as
//! the Linux FUSE module emulates flock with POSIX locks. Hence a flock and a
//! POSIX lock of another owner on the same file conflict (as on NFS), where
//! a local Linux filesystem keeps the two apart.
//!
//! POSIX semantics (as `fs/locks.c`): a new lock of an owner replaces the
//! owner's locks on the bytes it covers (upgrade or downgrade, splitting those
//! that stick out), and the owner's adjacent or overlapping locks of the same
//! type merge; unlocking a sub-range splits. Two locks conflict when they
//! belong to different owners, overlap and one is a write lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

/// Who holds a lock: a client session and the kernel's lock owner in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    /// The client session.
    pub session: u64,
    /// The kernel's lock owner, unique within the session.
    pub owner: u64,
}

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shared (F_RDLCK, LOCK_SH).
    Read,
    /// Exclusive (F_WRLCK, LOCK_EX).
    Write,
}

/// One held lock on a byte range of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    /// Holder.
    pub owner: Owner,
    /// Shared or exclusive.
    pub kind: Kind,
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
    /// The pid the kernel passed with the request that set it.
    pub pid: u32,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    fn conflicts(&self, owner: Owner, kind: Kind, start: u64, end: u64) -> bool {
        self.owner != owner
            && self.overlaps(start, end)
            && (self.kind == Kind::Write || kind == Kind::Write)
    }
}

/// A request waiting for a conflicting lock to go.
#[derive(Debug)]
struct Waiter {
    ino: u64,
    owner: Owner,
    kind: Kind,
    start: u64,
    end: u64,
    notify: Arc<Notify>,
}

/// Every lock and waiter of the master.
#[derive(Debug, Default)]
pub struct LockTable {
    /// Locks per inode, in no particular order.
    files: HashMap<u64, Vec<Lock>>,
    /// Waiting requests by id.
    waiters: HashMap<u64, Waiter>,
    next_waiter: u64,
    /// No new lock is granted before this instant (clients re-assert theirs).
    pub grace_until: Option<Instant>,
}

impl LockTable {
    /// The first lock of another owner that conflicts with `kind` on
    /// `start..=end` of `ino`.
    pub fn conflict(
        &self,
        ino: u64,
        owner: Owner,
        kind: Kind,
        start: u64,
        end: u64,
    ) -> Option<Lock> {
        self.files
            .get(&ino)?
            .iter()
            .find(|l| l.conflicts(owner, kind, start, end))
            .copied()
    }

    /// Sets a lock (`Some(kind)`) or unlocks (`None`) `start..=end` of `ino`
    /// for `owner`, with POSIX splitting and merging; refuses a conflicting
    /// lock with the first lock of another owner it conflicts with. Wakes the
    /// inode's waiters.
    pub fn set(
        &mut self,
        ino: u64,
        owner: Owner,
        kind: Option<Kind>,
        start: u64,
        end: u64,
        pid: u32,
    ) -> Result<(), Lock> {
        if let Some(k) = kind {
            if let Some(c) = self.conflict(ino, owner, k, start, end) {
                return Err(c);
            }
        }
        let locks = self.files.entry(ino).or_default();
        let mut out: Vec<Lock> = Vec::with_capacity(locks.len() + 2);
        for l in locks.drain(..) {
            if l.owner != owner || !l.overlaps(start, end) {
                out.push(l);
                continue;
            }
            // The parts of the owner's lock outside the range stay.
            if l.start < start {
                out.push(Lock {
                    end: start - 1,
                    ..l
                });
            }
            if l.end > end {
                out.push(Lock {
                    start: end + 1,
                    ..l
                });
            }
        }
        if let Some(kind) = kind {
            let mut new = Lock {
                owner,
                kind,
                start,
                end,
                pid,
            };
            // Merge with the owner's overlapping or adjacent locks of the same kind.
            out.retain(|l| {
                let touches = l.owner == owner
                    && l.kind == kind
                    && l.start <= new.end.saturating_add(1)
                    && new.start <= l.end.saturating_add(1);
                if touches {
                    new.start = new.start.min(l.start);
                    new.end = new.end.max(l.end);
                }
                !touches
            });
            out.push(new);
        }
        *locks = out;
        if locks.is_empty() {
            self.files.remove(&ino);
        }
        self.wake(ino);
        Ok(())
    }

    /// The locks `owner` holds on `ino`, lowest range first.
    pub fn held(&self, ino: u64, owner: Owner) -> Vec<Lock> {
        let mut v: Vec<Lock> = self
            .files
            .get(&ino)
            .map(|ls| ls.iter().filter(|l| l.owner == owner).copied().collect())
            .unwrap_or_default();
        v.sort_by_key(|l| l.start);
        v
    }

    /// Every lock `session` holds, with its inode, by inode then range.
    pub fn held_by_session(&self, session: u64) -> Vec<(u64, Lock)> {
        let mut v: Vec<(u64, Lock)> = self
            .files
            .iter()
            .flat_map(|(ino, ls)| {
                ls.iter()
                    .filter(|l| l.owner.session == session)
                    .map(|l| (*ino, *l))
            })
            .collect();
        v.sort_by_key(|(ino, l)| (*ino, l.owner.owner, l.start));
        v
    }

    /// Removes every lock of `owner` on `ino` (the process closed the file).
    pub fn release_owner(&mut self, ino: u64, owner: Owner) {
        let _ = self.set(ino, owner, None, 0, u64::MAX, 0);
    }

    /// Removes every lock of `session` (closed or expired) and wakes whoever
    /// waited for one; returns how many were removed.
    pub fn release_session(&mut self, session: u64) -> usize {
        let mut removed = 0;
        let mut touched = Vec::new();
        self.files.retain(|ino, locks| {
            let before = locks.len();
            locks.retain(|l| l.owner.session != session);
            if locks.len() != before {
                removed += before - locks.len();
                touched.push(*ino);
            }
            !locks.is_empty()
        });
        for ino in touched {
            self.wake(ino);
        }
        removed
    }

    fn wake(&self, ino: u64) {
        for w in self.waiters.values().filter(|w| w.ino == ino) {
            w.notify.notify_one();
        }
    }

    /// Owners holding a lock that conflicts with the request.
    fn blockers(&self, ino: u64, owner: Owner, kind: Kind, start: u64, end: u64) -> Vec<Owner> {
        self.files
            .get(&ino)
            .map(|ls| {
                ls.iter()
                    .filter(|l| l.conflicts(owner, kind, start, end))
                    .map(|l| l.owner)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when `owner` waiting for this request would wait, through owners
    /// that wait themselves, for a lock `owner` holds.
    pub fn would_deadlock(&self, ino: u64, owner: Owner, kind: Kind, start: u64, end: u64) -> bool {
        let mut seen = HashSet::new();
        let mut todo = self.blockers(ino, owner, kind, start, end);
        while let Some(o) = todo.pop() {
            if o == owner {
                return true;
            }
            if !seen.insert(o) {
                continue;
            }
            for w in self.waiters.values().filter(|w| w.owner == o) {
                todo.extend(self.blockers(w.ino, w.owner, w.kind, w.start, w.end));
            }
        }
        false
    }

    /// Records a waiting request (after [`LockTable::would_deadlock`] said
    /// no); returns its id and what wakes it. Remove it with
    /// [`LockTable::stop_waiting`].
    pub fn wait(
        &mut self,
        ino: u64,
        owner: Owner,
        kind: Kind,
        start: u64,
        end: u64,
    ) -> (u64, Arc<Notify>) {
        self.next_waiter += 1;
        let id = self.next_waiter;
        let notify = Arc::new(Notify::new());
        self.waiters.insert(
            id,
            Waiter {
                ino,
                owner,
                kind,
                start,
                end,
                notify: notify.clone(),
            },
        );
        (id, notify)
    }

    /// Forgets waiting request `id` (granted, refused or cancelled).
    pub fn stop_waiting(&mut self, id: u64) {
        self.waiters.remove(&id);
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Locks held now, over all inodes.
    pub fn len(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }

    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
