//! The `Metalogger` service a metalogger serves: its status, and `Promote`
//! (handed to the follow loop in [`crate::metalogger::follower`]).

use std::sync::Arc;

use alces_proto::pb;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::metalogger::follower::Shared;

/// The `Metalogger` service of one metalogger.
#[derive(Clone)]
pub struct MetaloggerService {
    shared: Arc<Shared>,
}

impl MetaloggerService {
    /// The service of the metalogger sharing `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::metalogger_server::Metalogger for MetaloggerService {
    async fn status(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::MetaloggerInfo>, Status> {
        let i = self.shared.info.lock().clone();
        Ok(Response::new(pb::MetaloggerInfo {
            id: self.shared.id.clone(),
            address: self.shared.advertise.clone(),
            applied_version: i.applied,
            durable_version: i.durable,
            seen_epoch: i.seen_epoch,
            master: self.shared.master.clone(),
            master_connected: i.master_connected,
            role: i.role.to_string(),
            master_version: i.master_version,
            holds_metadata: i.holds_metadata,
        }))
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .promote_tx
            .send((req.into_inner(), tx))
            .await
            .map_err(|_| {
                Status::failed_precondition(
                    "this metalogger is no longer following (already promoted or stopping)",
                )
            })?;
        rx.await
            .map_err(|_| Status::internal("the promotion was abandoned"))?
            .map(Response::new)
    }
}
