//! The `ChunkMaster` service chunkservers call: registration and heartbeats,
//! over [`crate::domain::chunkservers`].

use std::sync::Arc;

use alces_proto::pb::{self, chunk_master_server::ChunkMaster};
use tonic::Request;

use super::{reply, Reply};
use crate::core::Core;
use crate::domain::chunkservers;

/// The `ChunkMaster` service over one [`Core`].
#[derive(Clone)]
pub struct ChunkMasterService {
    core: Arc<Core>,
}

impl ChunkMasterService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl ChunkMaster for ChunkMasterService {
    async fn register_chunkserver(
        &self,
        req: Request<pb::RegisterChunkserverRequest>,
    ) -> Reply<pb::RegisterChunkserverReply> {
        let res = chunkservers::register(&self.core, req.get_ref());
        reply(&self.core, "RegisterChunkserver", res)
    }

    async fn chunkserver_heartbeat(
        &self,
        req: Request<pb::ChunkserverHeartbeatRequest>,
    ) -> Reply<pb::ChunkserverHeartbeatReply> {
        let res = chunkservers::heartbeat(&self.core, req.get_ref());
        reply(&self.core, "ChunkserverHeartbeat", res)
    }
}
