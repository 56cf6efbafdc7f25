//! Client sessions as the Master service sees them: registration (new or
//! resumed after a master restart, with the files and write sessions the
//! client still holds), lease renewal and closing.

use std::time::Instant;

use alces_proto::pb;
use tonic::Status;

use crate::core::{Core, Inner};
use crate::runtime::sessions::{Refusal, Session, SECRET_BYTES};
use crate::state::error::{err, FsError, FsResult};
use crate::state::namespace::ROOT_INODE;
use alces_proto::auth::Identity;

/// Normalises a session subdirectory and resolves it to a directory inode
/// below `top` (the filesystem root, or a credential's directory: `..` does
/// not climb above it).
fn resolve_subdir(inner: &Inner, top: u64, subdir: &str) -> FsResult<u64> {
    if subdir.contains('\0') {
        return err(libc::EINVAL, "subdir contains NUL");
    }
    let ino = inner.state.resolve(top, subdir).map_err(|e| {
        FsError::new(
            e.errno,
            format!("cannot use subdir '{subdir}': {}", e.message),
        )
    })?;
    if !inner.state.get(ino)?.is_dir() {
        return err(
            libc::ENOTDIR,
            format!("cannot use subdir '{subdir}': it is not a directory"),
        );
    }
    Ok(ino)
}

/// Registers a session: a new one, or `r.session_id` resumed.
///
/// - A resume must carry the session's secret when this master knows the
///   session (else PERMISSION_DENIED); a session this master closed or
///   expired, or one it has not known for longer than a session timeout since
///   it started, cannot be resumed (the session-ended mark: the client
///   registers anew). A session unknown to a master that started less than a
///   session timeout ago is adopted: it was live before a restart or failover.
/// - A plain resume (a reconnect) replaces the session's open files and write
///   sessions with those the client lists; the accesses this master granted
///   at its opens stay for the inodes still listed (never granted from the
///   list).
/// - A takeover resume (`r.takeover`: another process continues the dead
///   one's connection) keeps the open files, their granted accesses and the
///   locks, ends the write sessions, and lists the open files and locks in
///   the reply.
///
/// A session opened with a credential (`who`) is rooted at its directory
/// (`subdir` is then below it), is read-only when the credential is, and only
/// that credential may resume it.
pub fn register(
    core: &Core,
    who: Identity,
    mut r: pb::RegisterSessionRequest,
) -> Result<pb::RegisterSessionReply, Status> {
    core.check_epoch(r.seen_epoch)?;
    let mut g = core.inner.lock();
    let inner = &mut *g;
    let credential = match who {
        Identity::Cluster => None,
        Identity::Credential(id) => Some(id),
    };
    let top = match credential {
        None => ROOT_INODE,
        Some(id) => {
            let c = inner
                .state
                .credentials
                .get(id)
                .filter(|c| !c.revoked)
                .ok_or_else(|| crate::domain::credentials::revoked(id))?;
            let path = c.rule.as_ref().map(|r| r.path.clone()).unwrap_or_default();
            if !inner.state.get(c.root_inode).is_ok_and(|i| i.is_dir()) {
                return Err(alces_proto::errno::status(
                    libc::ENOENT,
                    format!("the directory of credential {id} ({path}) no longer exists"),
                ));
            }
            r.read_only |= c.rule.as_ref().is_some_and(|r| r.read_only);
            c.root_inode
        }
    };
    let root = resolve_subdir(inner, top, &r.subdir)?;
    if r.session_id != 0 {
        check_resume(core, inner, &r)?;
        if let Some(s) = inner.sessions.map.get(&r.session_id) {
            if s.credential != credential {
                return Err(alces_proto::errno::session_secret_mismatch(r.session_id));
            }
        }
    }
    // Files a resumed session lists must lie in its subtree.
    r.open_inodes
        .retain(|ino| inner.state.in_subtree(root, *ino));
    let sid = if r.session_id != 0 {
        r.session_id
    } else {
        loop {
            let id: u64 = rand::random();
            if id != 0 && !inner.sessions.map.contains_key(&id) {
                break id;
            }
        }
    };
    let known = inner.sessions.map.get(&sid).map(|s| s.secret);
    let secret = match known {
        Some(Some(s)) => Some(s),
        // A new session, or one adopted or kept unprotected: the secret it
        // presents (if any) is its secret from now on.
        _ => match <[u8; SECRET_BYTES]>::try_from(r.session_secret.as_slice()) {
            Ok(s) => Some(s),
            Err(_) if r.session_id == 0 => Some(rand::random()),
            Err(_) => None,
        },
    };
    let (mut open_inodes, mut held_locks) = (Vec::new(), Vec::new());
    let resumed = if r.takeover && known.is_some() {
        // The dead process's write sessions end (what they wrote past a
        // file's end was never recorded); its opens and locks stay.
        inner.tails.session_gone(&inner.state, sid);
        let s = inner.sessions.map.get_mut(&sid).expect("known session");
        s.root = root;
        s.read_only = r.read_only;
        s.credential = credential;
        s.client_name = r.client_name.clone();
        s.hostname = r.hostname.clone();
        s.renewed = Instant::now();
        s.secret = secret;
        open_inodes = inner.sessions.opens_of(sid);
        held_locks = crate::domain::locks::held_by_session(inner, sid);
        Vec::new()
    } else {
        // What this master granted the session at the opens it checked
        // stays with the opens the client still lists (never made from the
        // list itself: a client may list any inode of its subtree).
        let mut granted = inner
            .sessions
            .map
            .get(&sid)
            .map(|s| s.granted.clone())
            .unwrap_or_default();
        let listed: std::collections::HashSet<u64> = if r.takeover {
            Default::default()
        } else {
            r.open_inodes.iter().copied().collect()
        };
        granted.retain(|ino, _| listed.contains(ino));
        let resumed = inner.sessions.close(sid);
        inner.sessions.map.insert(
            sid,
            Session {
                root,
                read_only: r.read_only,
                credential,
                client_name: r.client_name.clone(),
                hostname: r.hostname.clone(),
                renewed: Instant::now(),
                open: Default::default(),
                granted,
                secret,
            },
        );
        if !r.takeover {
            for ino in &r.open_inodes {
                if inner.state.inodes.contains_key(ino) {
                    inner.sessions.open(sid, *ino);
                }
            }
            for w in &r.write_sessions {
                if inner.state.chunks.contains_key(&w.chunk_id) {
                    inner.tails.opened(w.chunk_id, sid, w.version);
                }
            }
        }
        resumed
    };
    // Inodes the previous incarnation held but the client no longer lists.
    core.purge_unused(inner, &resumed);
    tracing::info!(session = sid, client = %r.client_name, host = %r.hostname, subdir = %r.subdir, read_only = r.read_only, resumed = r.session_id != 0, takeover = r.takeover, opens = open_inodes.len(), locks = held_locks.len(), "session registered");
    Ok(pb::RegisterSessionReply {
        session_id: sid,
        root_inode: root,
        lease_secs: core.settings.session_timeout.as_secs() as u32,
        epoch: core.epoch,
        chunk_size: inner.state.chunk_size,
        cluster_id: inner.state.cluster_id.clone(),
        read_only: r.read_only,
        session_secret: secret.map(|s| s.to_vec()).unwrap_or_default(),
        open_inodes,
        held_locks,
    })
}

/// Refuses a resume of `r.session_id` that may not continue the session.
fn check_resume(core: &Core, inner: &Inner, r: &pb::RegisterSessionRequest) -> Result<(), Status> {
    let sid = r.session_id;
    match inner.sessions.refusal(sid, &r.session_secret) {
        Some(Refusal::Secret) => {
            tracing::warn!(session = sid, client = %r.client_name, host = %r.hostname, "refused a resume without the session's secret");
            Err(alces_proto::errno::session_secret_mismatch(sid))
        }
        Some(Refusal::Ended) => Err(alces_proto::errno::session_ended(
            sid,
            "it was closed or its lease expired on this master",
        )),
        None if !inner.sessions.map.contains_key(&sid)
            && core.started.elapsed() > core.settings.session_timeout =>
        {
            Err(alces_proto::errno::session_ended(
                sid,
                "this master has served for longer than a session timeout without it, so its lease expired",
            ))
        }
        None => Ok(()),
    }
}

/// Renews the lease of session `sid`.
pub fn renew(core: &Core, sid: u64) -> Result<pb::RenewSessionReply, Status> {
    let mut g = core.inner.lock();
    match g.sessions.map.get_mut(&sid) {
        Some(s) => {
            s.renewed = Instant::now();
            Ok(pb::RenewSessionReply { epoch: core.epoch })
        }
        None => Err(alces_proto::errno::session_unknown(sid)),
    }
}

/// Closes session `sid`: its open files are released, its write sessions end.
pub async fn close(core: &Core, sid: u64) -> Result<pb::Empty, Status> {
    core.mutate(|core, inner| {
        let freed = inner.sessions.close(sid);
        inner.sessions.mark_ended(sid);
        inner.tails.session_gone(&inner.state, sid);
        inner.locks.release_session(sid);
        inner.leases.forget(sid);
        Ok((core.purge_unused(inner, &freed), pb::Empty {}))
    })
    .await
}
