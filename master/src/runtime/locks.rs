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
//!
//! Caps ([`LockCaps`]): a session may hold at most `per_session` locks and
//! the table at most `total` (each a range; merged ranges count once). A
//! request that would go past either is refused ([`Refusal::SessionCap`],
//! [`Refusal::TotalCap`]); unlocking and any change that does not add a range
//! are always allowed, and so are re-asserted locks (they were granted before
//! the restart; refusing them would take a lock from a process holding it).

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

/// Why a lock request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A lock of another owner conflicts.
    Conflict(Lock),
    /// The session would hold more locks than its cap (the cap).
    SessionCap(usize),
    /// The table would hold more locks than its cap (the cap).
    TotalCap(usize),
}

/// The most locks the table holds (each range counts once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockCaps {
    /// Per client session.
    pub per_session: usize,
    /// Over all sessions.
    pub total: usize,
}

impl LockCaps {
    /// Default cap per session.
    pub const PER_SESSION: usize = 65_536;
    /// Default cap over all sessions (about 100 bytes each: some 100 MiB).
    pub const TOTAL: usize = 1_048_576;
}

impl Default for LockCaps {
    fn default() -> Self {
        Self {
            per_session: Self::PER_SESSION,
            total: Self::TOTAL,
        }
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
    /// Locks held per session (sessions holding none are absent).
    per_session: HashMap<u64, usize>,
    /// Locks held over all sessions.
    total: usize,
    /// No new lock is granted before this instant (clients re-assert theirs).
    pub grace_until: Option<Instant>,
    /// The caps on how many locks are held.
    pub caps: LockCaps,
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

    /// [`LockTable::set`] of lock `l` without the caps: for locks a session
    /// re-asserts after a restart or a promotion (granted before, so kept).
    pub fn reassert(&mut self, ino: u64, l: Lock) -> Result<(), Refusal> {
        let unbounded = LockCaps {
            per_session: usize::MAX,
            total: usize::MAX,
        };
        let caps = std::mem::replace(&mut self.caps, unbounded);
        let r = self.set(ino, l.owner, Some(l.kind), l.start, l.end, l.pid);
        self.caps = caps;
        r
    }

    /// Sets a lock (`Some(kind)`) or unlocks (`None`) `start..=end` of `ino`
    /// for `owner`, with POSIX splitting and merging; refuses a conflicting
    /// lock with the first lock of another owner it conflicts with, and a
    /// change that would take the session or the table past its cap. Wakes
    /// the inode's waiters.
    pub fn set(
        &mut self,
        ino: u64,
        owner: Owner,
        kind: Option<Kind>,
        start: u64,
        end: u64,
        pid: u32,
    ) -> Result<(), Refusal> {
        if let Some(k) = kind {
            if let Some(c) = self.conflict(ino, owner, k, start, end) {
                return Err(Refusal::Conflict(c));
            }
        }
        let old = self.files.get(&ino).map(Vec::as_slice).unwrap_or_default();
        let mut out: Vec<Lock> = Vec::with_capacity(old.len() + 2);
        for &l in old {
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
        // Only the owner's locks changed: so did its session's count.
        let (before, after) = (old.len(), out.len());
        let held = self.per_session.get(&owner.session).copied().unwrap_or(0);
        if after > before {
            let added = after - before;
            if held + added > self.caps.per_session {
                return Err(Refusal::SessionCap(self.caps.per_session));
            }
            if self.total + added > self.caps.total {
                return Err(Refusal::TotalCap(self.caps.total));
            }
        }
        let held = held + after - before;
        self.total = self.total + after - before;
        if held == 0 {
            self.per_session.remove(&owner.session);
        } else {
            self.per_session.insert(owner.session, held);
        }
        if out.is_empty() {
            self.files.remove(&ino);
        } else {
            self.files.insert(ino, out);
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
        self.per_session.remove(&session);
        self.total -= removed;
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
        self.total
    }

    /// Locks `session` holds now.
    pub fn held_by(&self, session: u64) -> usize {
        self.per_session.get(&session).copied().unwrap_or(0)
    }

    /// True when no lock is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
#[path = "locks_tests.rs"]
mod tests;
