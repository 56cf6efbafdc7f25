//! Administration beyond status: goals of paths, draining chunkservers (a
//! logged change) and the tuning shown in the status.

use alces_proto::pb;
use tonic::Status;

use alces_proto::pb::changelog_record::Op;

use crate::core::{Core, Inner, Settings};
use crate::domain::goals::{prepare_set_goal, resolve_path};
use crate::state::error::{FsError, FsResult};

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
        let Some(s) = inner.chunks.servers.get(&r.server_id) else {
            return Ok((
                v,
                pb::ChunkserverStatus {
                    server_id: r.server_id,
                    ..Default::default()
                },
            ));
        };
        let (t, u, f) = s.space();
        Ok((
            v,
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
                last_seen_ms: 0,
                ..drain_status(inner, r.server_id)
            },
        ))
    })
    .await
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
