//! The `Admin` service administrators call (`alces`): status, goals, drains,
//! quotas, snapshots, the trash, `du` and the consistency check, over
//! [`crate::domain::status`], [`crate::domain::goals`],
//! [`crate::domain::chunkservers`] and [`crate::domain::volumes`].

use std::sync::Arc;

use alces_proto::auth::Identity;
use alces_proto::pb::{self, admin_server::Admin};
use tonic::{Request, Status};

use super::{reply, Reply};
use crate::core::Core;
use crate::domain::credentials::{self, Export};
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

    /// Admits an Admin call on the whole cluster (see [`credentials::admin_scope`]).
    fn cluster_wide<T>(&self, req: &Request<T>, rpc: &str) -> Result<(), Status> {
        credentials::admin_scope(&self.core, Identity::of(req), rpc, true).map(|_| ())
    }

    /// Admits an Admin call on `paths` (with `true`: the directory that would
    /// hold the path) and answers the export it runs under.
    fn on_paths<T>(
        &self,
        req: &Request<T>,
        rpc: &str,
        paths: &[(&str, bool)],
    ) -> Result<Option<Export>, Status> {
        let e = credentials::admin_scope(&self.core, Identity::of(req), rpc, false)?;
        for (p, parent) in paths {
            credentials::check_admin_path(&self.core, &e, p, *parent)?;
        }
        Ok(e)
    }
}

/// Answers the refusal of an unadmitted call.
macro_rules! admit {
    ($self:ident, $rpc:literal, $check:expr) => {
        if let Err(e) = $check {
            return reply(&$self.core, $rpc, Err(e));
        }
    };
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(&self, _req: Request<pb::Empty>) -> Reply<pb::ClusterStatus> {
        admit!(self, "Status", self.cluster_wide(&_req, "Status"));
        let res = status::status(&self.core);
        reply(&self.core, "Status", res)
    }

    async fn file_info(&self, req: Request<pb::FileInfoRequest>) -> Reply<pb::FileInfoReply> {
        admit!(
            self,
            "FileInfo",
            self.on_paths(&req, "FileInfo", &[(&req.get_ref().path, false)])
        );
        let res = status::file_info(&self.core, req.get_ref());
        reply(&self.core, "FileInfo", res)
    }

    async fn set_goal(&self, req: Request<pb::SetGoalRequest>) -> Reply<pb::SetGoalReply> {
        let e = match self.on_paths(&req, "SetGoal", &[(&req.get_ref().path, false)]) {
            Ok(e) => e,
            Err(s) => return reply(&self.core, "SetGoal", Err(s)),
        };
        admit!(
            self,
            "SetGoal",
            credentials::check_goal(&e, req.get_ref().goal)
        );
        let res = goals::set_goal(&self.core, req.into_inner()).await;
        reply(&self.core, "SetGoal", res)
    }

    async fn get_goal(&self, req: Request<pb::GetGoalRequest>) -> Reply<pb::GetGoalReply> {
        admit!(
            self,
            "GetGoal",
            self.on_paths(&req, "GetGoal", &[(&req.get_ref().path, false)])
        );
        let res = goals::get_goal(&self.core, &req.get_ref().path);
        reply(&self.core, "GetGoal", res)
    }

    async fn drain_chunkserver(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Reply<pb::ChunkserverStatus> {
        admit!(
            self,
            "DrainChunkserver",
            self.cluster_wide(&req, "DrainChunkserver")
        );
        let res = chunkservers::drain(&self.core, req.into_inner()).await;
        reply(&self.core, "DrainChunkserver", res)
    }

    async fn set_quota(&self, req: Request<pb::SetQuotaRequest>) -> Reply<pb::QuotaInfo> {
        admit!(
            self,
            "SetQuota",
            self.on_paths(&req, "SetQuota", &[(&req.get_ref().path, false)])
        );
        let res = volumes::set_quota(&self.core, req.into_inner()).await;
        reply(&self.core, "SetQuota", res)
    }

    async fn get_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::QuotaInfo> {
        admit!(
            self,
            "GetQuota",
            self.on_paths(&req, "GetQuota", &[(&req.get_ref().path, false)])
        );
        let res = volumes::get_quota(&self.core, req.into_inner());
        reply(&self.core, "GetQuota", res)
    }

    async fn remove_quota(&self, req: Request<pb::PathRequest>) -> Reply<pb::Empty> {
        admit!(
            self,
            "RemoveQuota",
            self.on_paths(&req, "RemoveQuota", &[(&req.get_ref().path, false)])
        );
        let res = volumes::remove_quota(&self.core, req.into_inner()).await;
        reply(&self.core, "RemoveQuota", res)
    }

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Reply<pb::SnapshotReply> {
        admit!(
            self,
            "Snapshot",
            self.on_paths(
                &req,
                "Snapshot",
                &[
                    (&req.get_ref().source, false),
                    (&req.get_ref().destination, true)
                ]
            )
        );
        let res = volumes::snapshot(&self.core, req.into_inner()).await;
        reply(&self.core, "Snapshot", res)
    }

    async fn set_trash_time(
        &self,
        req: Request<pb::SetTrashTimeRequest>,
    ) -> Reply<pb::TrashTimeReply> {
        admit!(
            self,
            "SetTrashTime",
            self.on_paths(&req, "SetTrashTime", &[(&req.get_ref().path, false)])
        );
        let res = volumes::set_trash_time(&self.core, req.into_inner()).await;
        reply(&self.core, "SetTrashTime", res)
    }

    async fn get_trash_time(&self, req: Request<pb::PathRequest>) -> Reply<pb::TrashTimeReply> {
        admit!(
            self,
            "GetTrashTime",
            self.on_paths(&req, "GetTrashTime", &[(&req.get_ref().path, false)])
        );
        let res = volumes::get_trash_time(&self.core, req.into_inner());
        reply(&self.core, "GetTrashTime", res)
    }

    async fn list_trash(&self, _req: Request<pb::Empty>) -> Reply<pb::TrashList> {
        admit!(self, "ListTrash", self.cluster_wide(&_req, "ListTrash"));
        let res = volumes::list_trash(&self.core);
        reply(&self.core, "ListTrash", res)
    }

    async fn restore_trash(&self, req: Request<pb::RestoreTrashRequest>) -> Reply<pb::TrashEntry> {
        admit!(
            self,
            "RestoreTrash",
            self.cluster_wide(&req, "RestoreTrash")
        );
        let res = volumes::restore_trash(&self.core, req.into_inner()).await;
        reply(&self.core, "RestoreTrash", res)
    }

    async fn purge_trash(&self, req: Request<pb::PurgeTrashRequest>) -> Reply<pb::PurgeTrashReply> {
        admit!(self, "PurgeTrash", self.cluster_wide(&req, "PurgeTrash"));
        let res = volumes::purge_trash(&self.core, req.into_inner()).await;
        reply(&self.core, "PurgeTrash", res)
    }

    async fn disk_usage(&self, req: Request<pb::PathRequest>) -> Reply<pb::DiskUsageReply> {
        admit!(
            self,
            "DiskUsage",
            self.on_paths(&req, "DiskUsage", &[(&req.get_ref().path, false)])
        );
        let res = volumes::disk_usage(&self.core, req.into_inner());
        reply(&self.core, "DiskUsage", res)
    }

    async fn check_consistency(&self, _req: Request<pb::Empty>) -> Reply<pb::ConsistencyReport> {
        admit!(
            self,
            "CheckConsistency",
            self.cluster_wide(&_req, "CheckConsistency")
        );
        let res = volumes::check_consistency(&self.core);
        reply(&self.core, "CheckConsistency", res)
    }

    async fn issue_credential(
        &self,
        req: Request<pb::IssueCredentialRequest>,
    ) -> Reply<pb::IssueCredentialReply> {
        admit!(
            self,
            "IssueCredential",
            credentials::cluster_only(Identity::of(&req), "issuing a credential")
        );
        let res = credentials::issue(&self.core, req.into_inner()).await;
        reply(&self.core, "IssueCredential", res)
    }

    async fn list_credentials(&self, req: Request<pb::Empty>) -> Reply<pb::CredentialList> {
        admit!(
            self,
            "ListCredentials",
            credentials::cluster_only(Identity::of(&req), "listing credentials")
        );
        let res = credentials::list(&self.core);
        reply(&self.core, "ListCredentials", res)
    }

    async fn revoke_credential(
        &self,
        req: Request<pb::RevokeCredentialRequest>,
    ) -> Reply<pb::CredentialInfo> {
        admit!(
            self,
            "RevokeCredential",
            credentials::cluster_only(Identity::of(&req), "revoking a credential")
        );
        let res = credentials::revoke(&self.core, req.get_ref().id).await;
        reply(&self.core, "RevokeCredential", res)
    }
}
