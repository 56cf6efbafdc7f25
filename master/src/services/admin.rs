//! The `Admin` service administrators call (`alces`): status, goals, drains,
//! quotas, snapshots, the trash, `du` and the consistency check, over
//! [`crate::domain::status`], [`crate::domain::goals`],
//! [`crate::domain::chunkservers`] and [`crate::domain::volumes`].

use std::sync::Arc;

use alces_proto::pb::{self, admin_server::Admin};
use tonic::Request;

use super::{reply, Reply};
use crate::core::Core;
use crate::domain::{chunkservers, goals, status, volumes};

/// The `Admin` service over one [`Core`].
#[derive(Clone)]
pub struct AdminService {
    core: Arc<Core>,
}

impl AdminService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _req: Request<pb::Empty>) -> Reply<pb::ClusterStatus> {
        let res = status::status(&self.core);
        reply(&self.core, "Status", res)
    }

    async fn file_info(&self, req: Request<pb::FileInfoRequest>) -> Reply<pb::FileInfoReply> {
        let res = status::file_info(&self.core, req.get_ref());
        reply(&self.core, "FileInfo", res)
    }

    async fn set_goal(&self, req: Request<pb::SetGoalRequest>) -> Reply<pb::SetGoalReply> {
        let res = goals::set_goal(&self.core, req.into_inner()).await;
        reply(&self.core, "SetGoal", res)
    }

    async fn get_goal(&self, req: Request<pb::GetGoalRequest>) -> Reply<pb::GetGoalReply> {
        let res = goals::get_goal(&self.core, &req.get_ref().path);
        reply(&self.core, "GetGoal", res)
    }

    async fn drain_chunkserver(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Reply<pb::ChunkserverStatus> {
        let res = chunkservers::drain(&self.core, req.into_inner()).await;
        reply(&self.core, "DrainChunkserver", res)
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> Reply<pb::QuotaInfo> {
        let res = volumes::set_quota(&self.core, req.into_inner()).await;
        reply(&self.core, "SetQuota", res)
    }

    async fn get_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::QuotaInfo> {
        let res = volumes::get_quota(&self.core, req.into_inner());
        reply(&self.core, "GetQuota", res)
    }

    async fn remove_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::Empty> {
        let res = volumes::remove_quota(&self.core, req.into_inner()).await;
        reply(&self.core, "RemoveQuota", res)
    }

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Reply<pb::SnapshotReply> {
        let res = volumes::snapshot(&self.core, req.into_inner()).await;
        reply(&self.core, "Snapshot", res)
    }

    async fn set_trash_time(
        &self,
        req: Request<pb::SetTrashTimeRequest>,
    ) -> Reply<pb::TrashTimeReply> {
        let res = volumes::set_trash_time(&self.core, req.into_inner()).await;
        reply(&self.core, "SetTrashTime", res)
    }

    async fn get_trash_time(&self, req: Request<pb::PathRequest>) -> Reply<pb::TrashTimeReply> {
        let res = volumes::get_trash_time(&self.core, req.into_inner());
        reply(&self.core, "GetTrashTime", res)
    }

    async fn list_trash(&self, _req: Request<pb::Empty>) -> Reply<pb::TrashList> {
        let res = volumes::list_trash(&self.core);
        reply(&self.core, "ListTrash", res)
    }

    async fn restore_trash(&self, req: Request<pb::RestoreTrashRequest>) -> Reply<pb::TrashEntry> {
        let res = volumes::restore_trash(&self.core, req.into_inner()).await;
        reply(&self.core, "RestoreTrash", res)
    }

    async fn purge_trash(&self, req: Request<pb::PurgeTrashRequest>) -> Reply<pb::PurgeTrashReply> {
        let res = volumes::purge_trash(&self.core, req.into_inner()).await;
        reply(&self.core, "PurgeTrash", res)
    }

    async fn disk_usage(&self, req: Request<pb::PathRequest>) -> Reply<pb::DiskUsageReply> {
        let res = volumes::disk_usage(&self.core, req.into_inner());
        reply(&self.core, "DiskUsage", res)
    }

    async fn check_consistency(&self, _req: Request<pb::Empty>) -> Reply<pb::ConsistencyReport> {
        let res = volumes::check_consistency(&self.core);
        reply(&self.core, "CheckConsistency", res)
    }
}
