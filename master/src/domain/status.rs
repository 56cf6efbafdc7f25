//! What the master reports about itself: the cluster status (`alces status`),
//! the chunks of one file, and the tuning it runs with.

use std::time::Instant;

use alces_proto::pb;
use tonic::Status;

use crate::core::{Core, Settings};
use crate::domain::chunkservers::status_of;
use crate::runtime::locks::LockCaps;
use crate::state::namespace::ROOT_INODE;

/// `Admin.Status`: the whole cluster as the master sees it.
pub fn status(core: &Core) -> Result<pb::ClusterStatus, Status> {
    core.read(|i| {
        let now = Instant::now();
        let (inodes, files, dirs) = i.state.counts();
        let c = i.chunks.counts(&i.state);
        let (total, used, free) = i.chunks.space();
        let mut servers: Vec<pb::ChunkserverStatus> = i
            .chunks
            .servers
            .values()
            .map(|s| status_of(i, s, now, core.settings.chunkserver_timeout))
            .collect();
        servers.sort_by(|a, b| {
            a.address
                .cmp(&b.address)
                .then(a.server_id.cmp(&b.server_id))
        });
        Ok(pb::ClusterStatus {
            epoch: core.epoch,
            metadata_version: i.state.version,
            cluster_id: i.state.cluster_id.clone(),
            inodes,
            files,
            directories: dirs,
            chunks: i.state.chunks.len() as u64,
            chunkservers: servers,
            chunk_counts: Some(pb::ChunkCounts {
                missing: c.missing,
                under_goal: c.under,
                at_goal: c.at,
                over_goal: c.over,
                max_goal: c.max_goal as u32,
            }),
            metaloggers: core.hub.status(i.state.version),
            sessions: i.sessions.map.len() as u64,
            total_bytes: total,
            used_bytes: used,
            free_bytes: free,
            role: "master".to_string(),
            chunk_size: i.state.chunk_size,
            default_goal: i.state.get(ROOT_INODE).map_or(0, |r| u32::from(r.goal)),
            replications_in_flight: i.chunks.replications_in_flight() as u64,
            conditions: core.hub.conditions(),
            sync_metaloggers: core.hub.sync as u32,
            tuning: Some(tuning(&core.settings, i.locks.caps)),
            reply_cache_entries: i.state.replies.len() as u64,
            reply_cache_bytes: i.state.replies.bytes() as u64,
            locks_held: i.locks.len() as u64,
            lock_waiters: i.locks.waiting() as u64,
        })
    })
}

/// `Admin.FileInfo`: the attributes of a path and where each of its chunks is.
pub fn file_info(core: &Core, r: &pb::FileInfoRequest) -> Result<pb::FileInfoReply, Status> {
    core.read(|i| {
        let ino = i.state.resolve_absolute(&r.path)?;
        let f = i.state.get(ino)?;
        let mut chunks = Vec::new();
        if let Some(list) = f.chunks() {
            for (idx, id) in list.iter().enumerate().filter(|(_, id)| **id != 0) {
                let version = i.state.chunks.get(id).map_or(0, |c| c.version);
                chunks.push(pb::ChunkDetail {
                    index: idx as u64,
                    chunk_id: *id,
                    version,
                    copies: i
                        .chunks
                        .valid(*id, version)
                        .iter()
                        .map(|s| s.location())
                        .collect(),
                    goal: u32::from(f.goal),
                });
            }
        }
        Ok(pb::FileInfoReply {
            attr: Some(f.attr(ino)),
            chunks,
            path: r.path.clone(),
        })
    })
}

/// The tuning the master runs with, for `Admin.Status`.
pub fn tuning(s: &Settings, caps: LockCaps) -> pb::MasterTuning {
    pb::MasterTuning {
        replication_rate: s.replication.per_tick as u32,
        replications_per_server: s.replication.per_server as u32,
        rebalance_threshold: s.replication.rebalance_threshold,
        chunkserver_timeout_secs: s.chunkserver_timeout.as_secs(),
        session_timeout_secs: s.session_timeout.as_secs(),
        snapshot_interval_secs: s.snapshot_interval.as_secs(),
        sync_timeout_ms: s.sync_timeout.as_millis() as u64,
        chunkserver_disconnect_ms: s.chunkserver_disconnect.as_millis() as u64,
        max_locks_per_session: caps.per_session as u64,
        max_locks: caps.total as u64,
    }
}
