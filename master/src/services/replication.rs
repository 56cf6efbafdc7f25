//! The `Replication` service metaloggers call: the snapshot transfer, the live
//! changelog stream, durable-version reports, the planned step-down and
//! `Identify`, over [`crate::domain::replication`].

use std::sync::Arc;
use std::time::Duration;

use alces_proto::pb::{self, replication_server::Replication};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::domain::replication;

/// Bytes per snapshot piece.
pub const SNAPSHOT_PIECE: usize = 4 << 20;
pub use crate::domain::replication::BATCH_RECORDS;
/// An empty batch is sent this often so a metalogger notices a dead link.
pub const KEEPALIVE: Duration = Duration::from_millis(1000);

/// The `Replication` service over one [`Core`].
#[derive(Clone)]
pub struct ReplicationService {
    core: Arc<Core>,
}

impl ReplicationService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

/// Drops a stream's registration when the stream ends.
struct StreamGuard {
    core: Arc<Core>,
    id: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.core.hub.stream_open(&self.id, false);
    }
}

type Stream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type FetchSnapshotStream = Stream<pb::SnapshotPiece>;
    type StreamChangelogStream = Stream<pb::ChangelogBatch>;

    async fn fetch_snapshot(
        &self,
        req: Request<pb::FetchSnapshotRequest>,
    ) -> Result<Response<Self::FetchSnapshotStream>, Status> {
        let r = req.into_inner();
        replication::check(&self.core, &r.metalogger_id, r.seen_epoch)?;
        let (version, bytes) = replication::snapshot(&self.core);
        let epoch = self.core.epoch;
        tracing::info!(
            metalogger = %r.metalogger_id,
            version,
            bytes = bytes.len(),
            "sending a snapshot to a metalogger"
        );
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let bytes = bytes::Bytes::from(bytes);
            let mut off = 0;
            loop {
                let end = (off + SNAPSHOT_PIECE).min(bytes.len());
                let piece = pb::SnapshotPiece {
                    version,
                    epoch,
                    data: bytes.slice(off..end),
                };
                if tx.send(Ok(piece)).await.is_err() || end == bytes.len() {
                    return;
                }
                off = end;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn stream_changelog(
        &self,
        req: Request<pb::StreamChangelogRequest>,
    ) -> Result<Response<Self::StreamChangelogStream>, Status> {
        let r = req.into_inner();
        replication::check(&self.core, &r.metalogger_id, r.seen_epoch)?;
        replication::check_resume(&self.core, r.from_version)?;
        tracing::info!(metalogger = %r.metalogger_id, from = r.from_version, "metalogger streaming the changelog");
        self.core.hub.stream_open(&r.metalogger_id, true);
        let guard = StreamGuard {
            core: self.core.clone(),
            id: r.metalogger_id.clone(),
        };
        let (tx, rx) = mpsc::channel(16);
        let core = self.core.clone();
        let mut next = r.from_version;
        tokio::spawn(async move {
            let _guard = guard;
            let mut durable = core.durable_rx();
            loop {
                let upto = durable.borrow().version;
                let recs = match replication::records(&core, next, upto, BATCH_RECORDS) {
                    Ok(v) => v,
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        return;
                    }
                };
                if recs.is_empty() {
                    // Wait for a new record, or send a keepalive.
                    let woke =
                        tokio::time::timeout(KEEPALIVE, durable.wait_for(|d| d.version >= next))
                            .await;
                    match woke {
                        Ok(Ok(_)) => continue,
                        Ok(Err(_)) => return,
                        Err(_) => {}
                    }
                }
                if let Some(last) = recs.last() {
                    next = last.version + 1;
                }
                if tx.send(Ok(replication::batch(&core, recs))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn report_applied(
        &self,
        req: Request<pb::ReportAppliedRequest>,
    ) -> Result<Response<pb::ReportAppliedReply>, Status> {
        let r = req.into_inner();
        replication::check(&self.core, &r.metalogger_id, r.seen_epoch)?;
        Ok(Response::new(replication::report(&self.core, &r)))
    }

    async fn step_down(
        &self,
        req: Request<pb::StepDownRequest>,
    ) -> Result<Response<pb::StepDownReply>, Status> {
        let r = req.into_inner();
        replication::check(&self.core, &r.metalogger_id, 0)?;
        replication::step_down(&self.core, &r)
            .await
            .map(Response::new)
    }

    async fn identify(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::IdentifyReply>, Status> {
        Ok(Response::new(replication::identify(&self.core)))
    }
}
