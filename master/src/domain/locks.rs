//! File locks as the Master service sees them: setting, testing and
//! releasing flock and POSIX record locks over [`crate::runtime::locks`],
//! blocking waits, and the locks clients re-assert after a restart or a
//! promotion.
//!
//! A blocking `SetLock` is one long-lived call: it registers a waiter, drops
//! the master lock and sleeps until a change of the inode's locks wakes it,
//! then tries again. When the client cancels the call (the waiting process
//! was interrupted, or the client died and its connection closed) the future
//! is dropped and the waiter goes with it.
//!
//! Grace: a master that starts over existing metadata (restart, promotion)
//! knows no lock until clients re-assert theirs, so new locks (and tests of
//! one) wait until `LockTable::grace_until`, one session timeout after start:
//! by then every live client has re-registered (its lease would have run out
//! otherwise) and re-asserted. Unlocks never wait.

use std::sync::Arc;
use std::time::Instant;

use alces_proto::errno::{self, status};
use alces_proto::pb;
use tokio::sync::Notify;
use tonic::Status;

use crate::core::{Core, Inner};
use crate::domain::permissions::{self, LockCall};
use crate::runtime::locks::{Kind, Lock, Owner, Refusal};

/// A lock request, checked.
struct Want {
    ino: u64,
    owner: Owner,
    kind: Option<Kind>,
    start: u64,
    end: u64,
    pid: u32,
}

fn want(session: u64, l: Option<&pb::HeldLock>, what: &str) -> Result<Want, Status> {
    let Some(l) = l else {
        return Err(status(
            libc::EINVAL,
            format!("{what}: the request names no lock (field `lock`)"),
        ));
    };
    let kind = match pb::LockType::try_from(l.r#type) {
        Ok(pb::LockType::LockRead) => Some(Kind::Read),
        Ok(pb::LockType::LockWrite) => Some(Kind::Write),
        Ok(pb::LockType::LockUnlock) => None,
        _ => {
            return Err(status(
                libc::EINVAL,
                format!(
                    "{what}: lock type {} is not LOCK_READ, LOCK_WRITE or LOCK_UNLOCK",
                    l.r#type
                ),
            ))
        }
    };
    if l.start > l.end {
        return Err(status(
            libc::EINVAL,
            format!(
                "{what}: the range starts at {} after its last byte {}",
                l.start, l.end
            ),
        ));
    }
    Ok(Want {
        ino: l.inode,
        owner: Owner {
            session,
            owner: l.owner,
        },
        kind,
        start: l.start,
        end: l.end,
        pid: l.pid,
    })
}

/// The session must be known and the inode exist; a credential session
/// must hold the inode open with the access the lock needs
/// ([`permissions::lock_in`]).
fn check(inner: &Inner, session: u64, w: &Want, call: LockCall) -> Result<(), Status> {
    if !inner.sessions.map.contains_key(&session) {
        return Err(errno::session_unknown(session));
    }
    inner.state.get(w.ino).map_err(|e| e.to_status())?;
    let kind = w.kind.map(|k| k == Kind::Write);
    permissions::lock_in(inner, session, w.ino, kind, (w.start, w.end), call)
        .map_err(|e| e.to_status())
}

/// Every lock session `sid` holds, as a takeover resume lists them.
pub fn held_by_session(inner: &Inner, sid: u64) -> Vec<pb::HeldLock> {
    inner
        .locks
        .held_by_session(sid)
        .iter()
        .map(|(ino, l)| held(l, *ino))
        .collect()
}

fn held(l: &Lock, ino: u64) -> pb::HeldLock {
    pb::HeldLock {
        inode: ino,
        owner: l.owner.owner,
        r#type: match l.kind {
            Kind::Read => pb::LockType::LockRead,
            Kind::Write => pb::LockType::LockWrite,
        } as i32,
        start: l.start,
        end: l.end,
        pid: l.pid,
        session_id: l.owner.session,
    }
}

/// Refreshes the lock gauges after the table changed.
fn gauges(core: &Core, inner: &Inner) {
    core.metrics.locks.set(inner.locks.len() as i64);
    core.metrics.lock_waiters.set(inner.locks.waiting() as i64);
}

/// Waits until the grace period after start is over.
async fn grace(core: &Core) {
    let until = core.inner.lock().locks.grace_until;
    if let Some(t) = until {
        if Instant::now() < t {
            tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
        }
    }
}

/// Removes a waiter from the table when its call ends any way (granted,
/// refused, or cancelled by the client).
struct Waiting<'a> {
    core: &'a Core,
    id: u64,
    notify: Arc<Notify>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut g = self.core.inner.lock();
        g.locks.stop_waiting(self.id);
        gauges(self.core, &g);
    }
}

/// Sets, changes or removes a lock; with `wait`, waits for conflicting locks to go.
pub async fn set_lock(core: &Core, r: pb::SetLockRequest) -> Result<pb::SetLockReply, Status> {
    let w = want(r.session_id, r.lock.as_ref(), "SetLock")?;
    if w.kind.is_some() {
        grace(core).await;
    }
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        let notify = {
            let mut g = core.inner.lock();
            check(&g, r.session_id, &w, LockCall::Set)?;
            match g.locks.set(w.ino, w.owner, w.kind, w.start, w.end, w.pid) {
                Ok(()) => {
                    gauges(core, &g);
                    let held = g
                        .locks
                        .held(w.ino, w.owner)
                        .iter()
                        .map(|l| held(l, w.ino))
                        .collect();
                    return Ok(pb::SetLockReply { held });
                }
                Err(Refusal::Conflict(c)) if !r.wait => {
                    return Err(status(
                        libc::EAGAIN,
                        format!(
                            "inode {} bytes {}..={} are locked by session {} (pid {})",
                            w.ino, c.start, c.end, c.owner.session, c.pid
                        ),
                    ))
                }
                Err(Refusal::SessionCap(cap)) => {
                    core.metrics.lock_cap_refused("session");
                    return Err(status(
                        libc::ENOLCK,
                        format!(
                            "session {} would hold more than {cap} file lock ranges, the cap per session; release some, or raise the master's --max-locks-per-session (ALCES_MAX_LOCKS_PER_SESSION)",
                            r.session_id
                        ),
                    ));
                }
                Err(Refusal::TotalCap(cap)) => {
                    core.metrics.lock_cap_refused("total");
                    return Err(status(
                        libc::ENOLCK,
                        format!(
                            "the master would hold more than {cap} file lock ranges, its cap over all sessions; raise its --max-locks (ALCES_MAX_LOCKS)"
                        ),
                    ));
                }
                Err(Refusal::Conflict(_)) => match &waiting {
                    Some(wt) => wt.notify.clone(),
                    None => {
                        let kind = w.kind.unwrap_or(Kind::Read);
                        if g.locks.would_deadlock(w.ino, w.owner, kind, w.start, w.end) {
                            return Err(status(
                                libc::EDEADLK,
                                format!(
                                    "waiting for inode {} bytes {}..={} would deadlock: its holder waits, directly or not, for a lock this owner holds",
                                    w.ino, w.start, w.end
                                ),
                            ));
                        }
                        let (id, notify) = g.locks.wait(w.ino, w.owner, kind, w.start, w.end);
                        gauges(core, &g);
                        waiting = Some(Waiting {
                            core,
                            id,
                            notify: notify.clone(),
                        });
                        notify
                    }
                },
            }
        };
        notify.notified().await;
    }
}

/// The first lock of another owner that conflicts with the one described.
pub async fn get_lock(core: &Core, r: pb::SetLockRequest) -> Result<pb::GetLockReply, Status> {
    let w = want(r.session_id, r.lock.as_ref(), "GetLock")?;
    let Some(kind) = w.kind else {
        return Err(status(
            libc::EINVAL,
            "GetLock: test for LOCK_READ or LOCK_WRITE, not LOCK_UNLOCK",
        ));
    };
    grace(core).await;
    let g = core.inner.lock();
    check(&g, r.session_id, &w, LockCall::Test)?;
    let conflict = g
        .locks
        .conflict(w.ino, w.owner, kind, w.start, w.end)
        .map(|l| held(&l, w.ino));
    Ok(pb::GetLockReply { conflict })
}

/// Removes every lock of (session, owner) on an inode.
pub fn release_locks(core: &Core, r: &pb::ReleaseLocksRequest) -> Result<pb::Empty, Status> {
    let mut g = core.inner.lock();
    if !g.sessions.map.contains_key(&r.session_id) {
        return Err(errno::session_unknown(r.session_id));
    }
    g.locks.release_owner(
        r.inode,
        Owner {
            session: r.session_id,
            owner: r.owner,
        },
    );
    gauges(core, &g);
    Ok(pb::Empty {})
}

/// Re-asserts the locks a re-registered session holds; returns those that a
/// conflicting lock of another session, a removed inode or (for a credential
/// session) a missing open or access ([`permissions::lock_in`]) makes
/// impossible.
pub fn reassert(
    core: &Core,
    r: pb::ReassertLocksRequest,
) -> Result<pb::ReassertLocksReply, Status> {
    let mut g = core.inner.lock();
    if !g.sessions.map.contains_key(&r.session_id) {
        return Err(errno::session_unknown(r.session_id));
    }
    let mut lost = Vec::new();
    for l in r.locks {
        let w = want(r.session_id, Some(&l), "ReassertLocks")?;
        let ok = match w.kind {
            Some(kind) => {
                let l = Lock {
                    owner: w.owner,
                    kind,
                    start: w.start,
                    end: w.end,
                    pid: w.pid,
                };
                let may = check(&g, r.session_id, &w, LockCall::Reassert);
                if let Err(e) = &may {
                    tracing::warn!(session = r.session_id, inode = w.ino, error = %e.message(), "a re-asserted lock is refused");
                }
                may.is_ok() && g.locks.reassert(w.ino, l).is_ok()
            }
            None => false,
        };
        if !ok {
            tracing::warn!(
                session = r.session_id,
                inode = w.ino,
                start = w.start,
                end = w.end,
                "a re-asserted lock conflicts with another session's, its file is gone or the session may not hold it: lost"
            );
            lost.push(l);
        }
    }
    gauges(core, &g);
    Ok(pb::ReassertLocksReply { lost })
}
