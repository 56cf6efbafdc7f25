//! Client sessions as the Master service sees them: registration (new or
//! resumed after a master restart, with the files and write sessions the
//! client still holds), lease renewal and closing.

use std::time::Instant;

use alces_proto::pb;
use tonic::Status;

use crate::core::{Core, Inner};
use crate::runtime::sessions::Session;
use crate::state::error::{err, FsError, FsResult};
use crate::state::namespace::ROOT_INODE;

/// Normalises a session subdirectory and resolves it to a directory inode.
fn resolve_subdir(inner: &Inner, subdir: &str) -> FsResult<u64> {
    if subdir.contains('\0') {
        return err(libc::EINVAL, "subdir contains NUL");
    }
    let ino = inner.state.resolve(ROOT_INODE, subdir).map_err(|e| {
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

/// Registers a session (a new one, or `r.session_id` resumed with the open
/// files and write sessions the client lists).
pub fn register(
    core: &Core,
    r: pb::RegisterSessionRequest,
) -> Result<pb::RegisterSessionReply, Status> {
    core.check_epoch(r.seen_epoch)?;
    let mut g = core.inner.lock();
    let inner = &mut *g;
    let root = resolve_subdir(inner, &r.subdir)?;
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
    let resumed = inner.sessions.close(sid);
    inner.sessions.map.insert(
        sid,
        Session {
            root,
            read_only: r.read_only,
            client_name: r.client_name.clone(),
            hostname: r.hostname.clone(),
            renewed: Instant::now(),
            open: Default::default(),
        },
    );
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
    // Inodes the previous incarnation held but the client no longer lists.
    core.purge_unused(inner, &resumed);
    tracing::info!(session = sid, client = %r.client_name, host = %r.hostname, subdir = %r.subdir, read_only = r.read_only, resumed = r.session_id != 0, "session registered");
    Ok(pb::RegisterSessionReply {
        session_id: sid,
        root_inode: root,
        lease_secs: core.settings.session_timeout.as_secs() as u32,
        epoch: core.epoch,
        chunk_size: inner.state.chunk_size,
        cluster_id: inner.state.cluster_id.clone(),
        read_only: r.read_only,
    })
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
        inner.tails.session_gone(&inner.state, sid);
        inner.locks.release_session(sid);
        Ok((core.purge_unused(inner, &freed), pb::Empty {}))
    })
    .await
}
