//! Volume administration through the client library: directory quotas, goals,
//! copy-on-write snapshots, the trash, `du` and the master's consistency check
//! (the master's Admin service). Paths are relative to the client's root (its
//! subdirectory); trash entries carry paths from the filesystem root.

use alces_proto::net::AuthChannel;
use alces_proto::pb::admin_client::AdminClient;
use alces_proto::pb::{self, Empty};

use crate::client::Client;
use crate::error::{Error, Result};

pub use alces_proto::pb::{
    ConsistencyReport, DiskUsageReply, GetGoalReply, PurgeTrashReply, QuotaInfo, SetGoalReply,
    SnapshotReply, TrashEntry, TrashTimeReply,
};

/// Limits of a directory quota; 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Bytes that may be exceeded for `grace_secs`.
    pub soft_bytes: u64,
    /// Bytes never exceeded (writes fail with EDQUOT).
    pub hard_bytes: u64,
    /// Inodes that may be exceeded for `grace_secs`.
    pub soft_inodes: u64,
    /// Inodes never exceeded (creates fail with EDQUOT).
    pub hard_inodes: u64,
    /// How long a soft limit may be exceeded before it acts as a hard one.
    pub grace_secs: u64,
}

impl Client {
    fn admin(&self) -> Result<AdminClient<AuthChannel>> {
        let auth = alces_proto::auth::ClientAuth::new(&self.config().secret)
            .map_err(|e| Error::new(libc::EINVAL, e.to_string()))?
            .with_tls(&self.config().tls);
        let ch = alces_proto::net::channel(&self.config().master, &auth)
            .map_err(|e| Error::new(libc::EINVAL, format!("master address: {e}")))?;
        Ok(AdminClient::new(ch)
            .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES))
    }

    /// The absolute filesystem path of `path` (relative to this client's root).
    pub fn fs_path(&self, path: &str) -> String {
        let sub = self.config().subdir.trim_end_matches('/');
        let rel = path.trim_start_matches('/');
        let joined = if rel.is_empty() {
            sub.to_string()
        } else {
            format!("{sub}/{rel}")
        };
        if joined.is_empty() {
            "/".into()
        } else if joined.starts_with('/') {
            joined
        } else {
            format!("/{joined}")
        }
    }

    /// Sets (or replaces) the quota of directory `path`.
    pub async fn quota_set(&self, path: &str, limits: QuotaLimits) -> Result<QuotaInfo> {
        let req = pb::SetQuotaRequest {
            path: self.fs_path(path),
            soft_bytes: limits.soft_bytes,
            hard_bytes: limits.hard_bytes,
            soft_inodes: limits.soft_inodes,
            hard_inodes: limits.hard_inodes,
            grace_secs: limits.grace_secs,
        };
        admin_call(self.admin()?.set_quota(req).await)
    }

    /// The quota of directory `path` and its usage (ENOENT when it has none).
    pub async fn quota_get(&self, path: &str) -> Result<QuotaInfo> {
        let req = pb::PathRequest {
            path: self.fs_path(path),
        };
        admin_call(self.admin()?.get_quota(req).await)
    }

    /// Removes the quota of directory `path`.
    pub async fn quota_remove(&self, path: &str) -> Result<()> {
        let req = pb::PathRequest {
            path: self.fs_path(path),
        };
        admin_call(self.admin()?.remove_quota(req).await).map(|_: Empty| ())
    }

    /// Copy-on-write snapshot of file or tree `source` as `destination` (which
    /// must not exist), consistent to one moment.
    pub async fn snapshot(&self, source: &str, destination: &str) -> Result<SnapshotReply> {
        let req = pb::SnapshotRequest {
            source: self.fs_path(source),
            destination: self.fs_path(destination),
        };
        admin_call(self.admin()?.snapshot(req).await)
    }

    /// Sets the trash time of directory `path` (0 disables the trash there).
    pub async fn trash_time_set(&self, path: &str, seconds: u64) -> Result<TrashTimeReply> {
        let req = pb::SetTrashTimeRequest {
            path: self.fs_path(path),
            seconds,
        };
        admin_call(self.admin()?.set_trash_time(req).await)
    }

    /// The trash time in force at `path`.
    pub async fn trash_time_get(&self, path: &str) -> Result<TrashTimeReply> {
        let req = pb::PathRequest {
            path: self.fs_path(path),
        };
        admin_call(self.admin()?.get_trash_time(req).await)
    }

    /// Every trashed file.
    pub async fn trash_list(&self) -> Result<Vec<TrashEntry>> {
        admin_call(self.admin()?.list_trash(Empty {}).await).map(|l: pb::TrashList| l.entries)
    }

    /// Restores trashed file `id` (or, with id 0, the latest one deleted from the
    /// filesystem path `original_path`) to its original path, or to
    /// `destination` (relative to this client's root) when given. Fails with
    /// EEXIST when the target path exists.
    pub async fn trash_restore(
        &self,
        id: u64,
        original_path: &str,
        destination: Option<&str>,
    ) -> Result<TrashEntry> {
        let req = pb::RestoreTrashRequest {
            id,
            path: original_path.to_string(),
            destination: destination.map(|d| self.fs_path(d)).unwrap_or_default(),
        };
        admin_call(self.admin()?.restore_trash(req).await)
    }

    /// Frees trashed file `id` now, or every trashed file with `None`.
    pub async fn trash_purge(&self, id: Option<u64>) -> Result<PurgeTrashReply> {
        let req = pb::PurgeTrashRequest {
            id: id.unwrap_or(0),
        };
        admin_call(self.admin()?.purge_trash(req).await)
    }

    /// Sets the goal (copies of each chunk, 1-9) of `path`, and with `recursive`
    /// of every entry below it; new entries inherit a directory's goal.
    pub async fn goal_set(&self, path: &str, goal: u32, recursive: bool) -> Result<SetGoalReply> {
        let req = pb::SetGoalRequest {
            path: self.fs_path(path),
            goal,
            recursive,
        };
        admin_call(self.admin()?.set_goal(req).await)
    }

    /// The goal of `path`.
    pub async fn goal_get(&self, path: &str) -> Result<GetGoalReply> {
        let req = pb::GetGoalRequest {
            path: self.fs_path(path),
        };
        admin_call(self.admin()?.get_goal(req).await)
    }

    /// Size and inode count of the tree at `path`, from the master's counters.
    pub async fn du(&self, path: &str) -> Result<DiskUsageReply> {
        let req = pb::PathRequest {
            path: self.fs_path(path),
        };
        admin_call(self.admin()?.disk_usage(req).await)
    }

    /// Recomputes usage and chunk reference counts on the master and compares.
    pub async fn check_consistency(&self) -> Result<ConsistencyReport> {
        admin_call(self.admin()?.check_consistency(Empty {}).await)
    }

    /// Issues a credential scoped to the directory `rule.path` (an absolute
    /// filesystem path); its token is in the reply only. Cluster secret only.
    pub async fn credential_issue(
        &self,
        rule: pb::CredentialRule,
    ) -> Result<pb::IssueCredentialReply> {
        let req = pb::IssueCredentialRequest { rule: Some(rule) };
        admin_call(self.admin()?.issue_credential(req).await)
    }

    /// Every credential of the cluster, revoked ones included (never tokens).
    pub async fn credential_list(&self) -> Result<Vec<pb::CredentialInfo>> {
        admin_call(self.admin()?.list_credentials(Empty {}).await).map(|l| l.credentials)
    }

    /// Revokes credential `id` (revoking a revoked one is OK).
    pub async fn credential_revoke(&self, id: u64) -> Result<pb::CredentialInfo> {
        let req = pb::RevokeCredentialRequest { id };
        admin_call(self.admin()?.revoke_credential(req).await)
    }
}

fn admin_call<T>(r: std::result::Result<tonic::Response<T>, tonic::Status>) -> Result<T> {
    r.map(|r| r.into_inner())
        .map_err(|s| Error::from_status(&s))
}
