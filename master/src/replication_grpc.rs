//! The Replication service the master serves to metaloggers: snapshot transfer,
//! the live changelog stream, durable-version reports and planned step-down.

use std::sync::Arc;
use std::time::Duration;

use alces_proto::pb::{self, replication_server::Replication};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::{now_ns, Core};
use crate::disk::snapshot;

/// Bytes per snapshot piece.
pub const SNAPSHOT_PIECE: usize = 4 << 20;
/// Records per changelog batch.
pub const BATCH_RECORDS: usize = 4096;
/// An empty batch is sent this often so a metalogger notices a dead link.
pub const KEEPALIVE: Duration = Duration::from_millis(1000);
/// Longest a step-down waits for the new master's metalogger to catch up.
pub const STEP_DOWN_WAIT: Duration = Duration::from_secs(10);

/// The Replication service over one [`Core`].
#[derive(Clone)]
pub struct ReplicationService {
    core: Arc<Core>,
}

impl ReplicationService {
    /// The service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn check(&self, id: &str, seen_epoch: u64) -> Result<(), Status> {
        if id.is_empty() || id.len() > 256 {
            return Err(Status::invalid_argument(
                "metalogger_id must be 1..=256 bytes: give the metalogger's id",
            ));
        }
        if seen_epoch > self.core.epoch {
            if !self.core.hub.is_fenced() {
                tracing::error!(
                    epoch = self.core.epoch,
                    newer = seen_epoch,
                    metalogger = id,
                    "a metalogger has seen a newer master epoch: this master is deposed and stops accepting mutations"
                );
            }
            self.core.hub.set_fence(seen_epoch);
            return Err(Status::failed_precondition(format!(
                "this master's epoch {} is older than epoch {seen_epoch} already seen: it has been replaced by a newer master",
                self.core.epoch
            )));
        }
        Ok(())
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
        self.check(&r.metalogger_id, r.seen_epoch)?;
        let state = self.core.inner.lock().state.clone();
        let version = state.version;
        let epoch = self.core.epoch;
        let bytes = tokio::task::spawn_blocking(move || snapshot::encode(&state, now_ns()))
            .await
            .map_err(|e| Status::internal(format!("snapshot encoding failed: {e}")))?;
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
        self.check(&r.metalogger_id, r.seen_epoch)?;
        let committed = self.core.hub.committed();
        if r.from_version == 0 || r.from_version > committed + 1 {
            return Err(Status::failed_precondition(format!(
                "from_version {} is not held by this master (committed version {committed}): the metalogger's history differs; fetch a snapshot",
                r.from_version
            )));
        }
        let first = self.core.hub.first();
        if r.from_version < first {
            return Err(Status::failed_precondition(format!(
                "metalogger is too far behind: version {} is no longer held in memory (oldest {first}); fetch a snapshot",
                r.from_version
            )));
        }
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
            // Only records durable on the master are sent, so a metalogger's
            // history is always a prefix of what the master can recover.
            let mut durable = core.durable_rx();
            loop {
                let upto = durable.borrow().version;
                let recs = match core.hub.records_from(next, upto, BATCH_RECORDS) {
                    Ok(v) => v,
                    Err(first) => {
                        let _ = tx
                            .send(Err(Status::failed_precondition(format!(
                                "metalogger is too far behind: version {next} is no longer held in memory (oldest {first}); fetch a snapshot"
                            ))))
                            .await;
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
                let peers = core
                    .hub
                    .metaloggers()
                    .into_iter()
                    .filter(|(_, m)| !m.address.is_empty())
                    .map(|(id, m)| pb::MetaloggerPeer {
                        id,
                        address: m.address,
                    })
                    .collect();
                let batch = pb::ChangelogBatch {
                    epoch: core.epoch,
                    records: recs,
                    master_version: core.hub.committed(),
                    peers,
                };
                if tx.send(Ok(batch)).await.is_err() {
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
        self.check(&r.metalogger_id, r.seen_epoch)?;
        self.core
            .hub
            .report(&r.metalogger_id, &r.address, r.durable_version);
        Ok(Response::new(pb::ReportAppliedReply {
            epoch: self.core.epoch,
            master_version: self.core.hub.committed(),
        }))
    }

    async fn step_down(
        &self,
        req: Request<pb::StepDownRequest>,
    ) -> Result<Response<pb::StepDownReply>, Status> {
        let r = req.into_inner();
        self.check(&r.metalogger_id, 0)?;
        if r.new_epoch <= self.core.epoch {
            return Err(Status::invalid_argument(format!(
                "new_epoch {} must be higher than this master's epoch {}",
                r.new_epoch, self.core.epoch
            )));
        }
        // Under the lock so that no mutation commits after the last version.
        let last = {
            let g = self.core.inner.lock();
            self.core.hub.set_fence(0);
            g.state.version
        };
        tracing::warn!(
            last_version = last,
            metalogger = %r.metalogger_id,
            new_epoch = r.new_epoch,
            "stepping down: no more mutations accepted; waiting for the metalogger to hold the last version"
        );
        if !self
            .core
            .hub
            .wait_metalogger(&r.metalogger_id, last, STEP_DOWN_WAIT)
            .await
        {
            tracing::error!(
                metalogger = %r.metalogger_id,
                "the metalogger did not catch up within {STEP_DOWN_WAIT:?}: resuming service"
            );
            self.core.hub.unfence();
            return Err(Status::deadline_exceeded(format!(
                "metalogger {} did not reach version {last} within {STEP_DOWN_WAIT:?}; the master resumed",
                r.metalogger_id
            )));
        }
        // Hand over: the server loop sees the newer epoch and rejoins as a metalogger.
        self.core.hub.set_fence(r.new_epoch);
        Ok(Response::new(pb::StepDownReply {
            last_version: last,
            epoch: self.core.epoch,
        }))
    }

    async fn identify(
        &self,
        _req: Request<pb::Empty>,
    ) -> Result<Response<pb::IdentifyReply>, Status> {
        let (cluster_id, version) = {
            let g = self.core.inner.lock();
            (g.state.cluster_id.clone(), g.state.version)
        };
        Ok(Response::new(pb::IdentifyReply {
            epoch: self.core.epoch,
            cluster_id,
            role: "master".to_string(),
            metadata_version: version,
            fenced: self.core.hub.is_fenced(),
        }))
    }
}
