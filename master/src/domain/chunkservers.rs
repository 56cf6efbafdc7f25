//! Chunkservers as the master deals with them: registration and heartbeats
//! (the ChunkMaster service: copies reported, versions adopted, commands
//! handed out, the chunkserver quorum kept current), drains, and the status
//! row of one server.

use std::time::{Duration, Instant};

use alces_proto::pb;
use alces_proto::pb::changelog_record::Op;
use tonic::Status;

use crate::core::{now_ns, Core, Inner};
use crate::runtime::chunkmap::Server;
use crate::runtime::replication::chunkserver_quorum;
use crate::state::error::FsError;

/// Heartbeat period asked of chunkservers.
pub const HEARTBEAT_MS: u32 = 1000;

/// `RegisterChunkserver`: a chunkserver (re)joins with its full chunk list.
pub fn register(
    core: &Core,
    r: &pb::RegisterChunkserverRequest,
) -> Result<pb::RegisterChunkserverReply, Status> {
    core.check_epoch(r.seen_epoch)?;
    if r.server_id == 0 {
        return Err(alces_proto::errno::status(
            libc::EINVAL,
            "server_id 0 is not valid: a chunkserver must generate a random non-zero id",
        ));
    }
    alces_proto::net::validate_addr(&r.address).map_err(|e| {
        alces_proto::errno::status(libc::EINVAL, format!("chunkserver address: {e}"))
    })?;
    let mut g = core.inner.lock();
    let inner = &mut *g;
    let now = Instant::now();
    let adoptions = inner.chunks.register(r, now, &inner.state);
    core.adopt(inner, &adoptions);
    // The quorum is known again at once, not at the next maintenance tick.
    core.hub
        .set_isolated(!chunkserver_quorum(&inner.chunks, now));
    inner.tails.registered(&inner.state, &r.chunks);
    tracing::info!(server = r.server_id, address = %r.address, label = %r.label, chunks = r.chunks.len(), "chunkserver registered");
    Ok(pb::RegisterChunkserverReply {
        epoch: core.epoch,
        cluster_id: inner.state.cluster_id.clone(),
        heartbeat_ms: HEARTBEAT_MS,
        revoked_credentials: crate::domain::credentials::recently_revoked(inner, now_ns()),
    })
}

/// `ChunkserverHeartbeat`: changed copies and space; answers with the
/// commands waiting for the server (or asks an unknown one to re-register).
pub fn heartbeat(
    core: &Core,
    r: &pb::ChunkserverHeartbeatRequest,
) -> Result<pb::ChunkserverHeartbeatReply, Status> {
    core.check_epoch(r.seen_epoch)?;
    let mut g = core.inner.lock();
    let inner = &mut *g;
    inner.chunks.release_durable(core.durable_version());
    let now = Instant::now();
    let heard = inner.chunks.heartbeat(r, now, &inner.state);
    if core.hub.is_isolated() {
        core.hub
            .set_isolated(!chunkserver_quorum(&inner.chunks, now));
    }
    let reply = match heard {
        None => pb::ChunkserverHeartbeatReply {
            commands: Vec::new(),
            epoch: core.epoch,
            reregister: true,
            revoked_credentials: Vec::new(),
        },
        Some((commands, adoptions)) => {
            core.adopt(inner, &adoptions);
            pb::ChunkserverHeartbeatReply {
                commands,
                epoch: core.epoch,
                reregister: false,
                revoked_credentials: crate::domain::credentials::recently_revoked(inner, now_ns()),
            }
        }
    };
    Ok(reply)
}

/// The status row of chunkserver `s` at `now`; its copies count for `grace`
/// after its last heartbeat.
pub fn status_of(
    inner: &Inner,
    s: &Server,
    now: Instant,
    grace: Duration,
) -> pb::ChunkserverStatus {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let silent = now.saturating_duration_since(s.last_seen);
    let disconnected_ms = match (s.connected, s.disconnected_at) {
        (false, Some(at)) => ms(now.saturating_duration_since(at)).max(1),
        _ => 0,
    };
    let copies_count_for_ms = if !s.connected && s.counted {
        ms(grace.saturating_sub(silent))
    } else {
        0
    };
    let (t, u, f) = s.space();
    let to_move = inner.chunks.chunks_to_move(&inner.state, s.id);
    pb::ChunkserverStatus {
        server_id: s.id,
        address: s.address.clone(),
        label: s.label.clone(),
        connected: s.connected,
        disks: s.disks.clone(),
        chunks: s.held.len() as u64,
        total_bytes: t,
        used_bytes: u,
        free_bytes: f,
        last_seen_ms: ms(silent),
        draining: s.draining,
        safe_to_remove: s.draining && to_move == 0,
        chunks_to_move: to_move,
        disconnected_ms,
        copies_count: s.counted,
        copies_count_for_ms,
    }
}

/// Starts or ends the drain of a chunkserver and returns its status. The drain
/// is a logged metadata change (`SetDrainingOp`), so it survives restarts of the
/// master and promotions of a metalogger; a server drained while it is not
/// registered (e.g. after a restart) can still be undrained by id.
pub async fn drain(core: &Core, r: pb::DrainRequest) -> Result<pb::ChunkserverStatus, Status> {
    core.mutate(|core, inner| {
        let known = inner.chunks.servers.contains_key(&r.server_id);
        let logged = inner.state.draining.contains(&r.server_id);
        // An unknown server may only be undrained, if its drain was logged.
        let undrain_logged = logged && !r.drain;
        if !known && !undrain_logged {
            let known: Vec<String> = inner
                .chunks
                .servers
                .values()
                .map(|s| format!("{} ({})", s.id, s.address))
                .collect();
            return Err(FsError::new(
                libc::ENOENT,
                format!(
                    "no chunkserver with id {} is known to the master; known: [{}] (see `alces status`)",
                    r.server_id,
                    known.join(", ")
                ),
            ));
        }
        let v = if logged != r.drain {
            let op = Op::SetDraining(pb::SetDrainingOp {
                server_id: r.server_id,
                draining: r.drain,
            });
            Some(core.commit(inner, op)?)
        } else {
            None
        };
        inner.chunks.set_draining(r.server_id, r.drain);
        tracing::info!(
            server = r.server_id,
            draining = r.drain,
            "chunkserver drain changed"
        );
        let status = match inner.chunks.servers.get(&r.server_id) {
            Some(s) => status_of(inner, s, Instant::now(), core.settings.chunkserver_timeout),
            None => pb::ChunkserverStatus {
                server_id: r.server_id,
                ..Default::default()
            },
        };
        Ok((v, status))
    })
    .await
}
