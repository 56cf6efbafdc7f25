//! Administration beyond status: goals of paths, draining chunkservers and
//! the tuning shown in the status.

use alces_proto::pb;
use tonic::Status;

use crate::core::{Core, Inner, Settings};
use crate::goals::{prepare_set_goal, resolve_path};
use crate::namespace::FsResult;

/// Sets the goal of a path (or a tree); logged in the changelog.
pub async fn set_goal(core: &Core, r: pb::SetGoalRequest) -> Result<pb::SetGoalReply, Status> {
    core.mutate(|core, inner| {
        let (op, visited) = prepare_set_goal(&inner.state, &r.path, r.goal, r.recursive)?;
        let Some(op) = op else {
            return Ok((
                None,
                pb::SetGoalReply {
                    changed: 0,
                    visited,
                },
            ));
        };
        let changed = match &op {
            pb::changelog_record::Op::SetGoal(o) => o.inodes.len() as u64,
            _ => 0,
        };
        let v = core.commit(inner, op)?;
        tracing::info!(path = %r.path, goal = r.goal, recursive = r.recursive, changed, "goal set");
        Ok((Some(v), pb::SetGoalReply { changed, visited }))
    })
    .await
}

/// The goal of a path.
pub fn get_goal(inner: &Inner, path: &str) -> FsResult<pb::GetGoalReply> {
    let ino = resolve_path(&inner.state, path)?;
    Ok(pb::GetGoalReply {
        goal: u32::from(inner.state.get(ino)?.goal),
        inode: ino,
    })
}

/// The drain fields of a chunkserver's status.
pub fn drain_status(inner: &Inner, server_id: u64) -> pb::ChunkserverStatus {
    let draining = inner
        .chunks
        .servers
        .get(&server_id)
        .is_some_and(|s| s.draining);
    let to_move = inner.chunks.chunks_to_move(&inner.state, server_id);
    pb::ChunkserverStatus {
        draining,
        safe_to_remove: draining && to_move == 0,
        chunks_to_move: to_move,
        ..Default::default()
    }
}

/// Starts or ends the drain of a chunkserver and returns its status.
pub fn drain(core: &Core, r: pb::DrainRequest) -> Result<pb::ChunkserverStatus, Status> {
    let mut g = core.inner.lock();
    let inner = &mut *g;
    if !inner.chunks.set_draining(r.server_id, r.drain) {
        let known: Vec<String> = inner
            .chunks
            .servers
            .values()
            .map(|s| format!("{} ({})", s.id, s.address))
            .collect();
        return Err(alces_proto::errno::status(
            libc::ENOENT,
            format!(
                "no chunkserver with id {} is known to the master; known: [{}] (see `alces status`)",
                r.server_id,
                known.join(", ")
            ),
        ));
    }
    tracing::info!(
        server = r.server_id,
        draining = r.drain,
        "chunkserver drain changed"
    );
    let s = &inner.chunks.servers[&r.server_id];
    let (t, u, f) = s.space();
    Ok(pb::ChunkserverStatus {
        server_id: s.id,
        address: s.address.clone(),
        label: s.label.clone(),
        connected: s.connected,
        disks: s.disks.clone(),
        chunks: s.held.len() as u64,
        total_bytes: t,
        used_bytes: u,
        free_bytes: f,
        last_seen_ms: 0,
        ..drain_status(inner, r.server_id)
    })
}

/// The tuning the master runs with, for `Admin.Status`.
pub fn tuning(s: &Settings) -> pb::MasterTuning {
    pb::MasterTuning {
        replication_rate: s.replication.per_tick as u32,
        replications_per_server: s.replication.per_server as u32,
        rebalance_threshold: s.replication.rebalance_threshold,
        chunkserver_timeout_secs: s.chunkserver_timeout.as_secs(),
        session_timeout_secs: s.session_timeout.as_secs(),
        snapshot_interval_secs: s.snapshot_interval.as_secs(),
        sync_timeout_ms: s.sync_timeout.as_millis() as u64,
    }
}
