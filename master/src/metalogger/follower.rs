//! Following the master: the changelog stream applied to the replica and
//! reported back, snapshots fetched when the history differs, and the checks
//! and step-down of a promotion.
//!
//! A failure that is not the master's clear refusal drops the connection to
//! the master ([`Follower::reconnect_after`]): the next attempt connects again,
//! resolving the address again, so a connection that reached another service
//! behind the master's address (an HTTP 404, not a gRPC answer) is not kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::auth::ClientAuth;
use alces_proto::errno;
use alces_proto::net::AuthChannel;
use alces_proto::pb::{
    self, admin_client::AdminClient, metalogger_client::MetaloggerClient,
    replication_client::ReplicationClient,
};
use alces_proto::MAX_MESSAGE_BYTES;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};

use crate::disk::snapshot;
use crate::metalogger::replica::Replica;
use crate::state::ops::apply;

/// A changelog stream silent for this long is considered dead.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts.
pub const RETRY: Duration = Duration::from_millis(300);
/// Timeout of the liveness and peer checks made by a promotion.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a caught-up metalogger stays ready after it lost its master:
/// long enough for an operator to promote it (detection grace, poll period,
/// promotion), so the pod about to become master is Ready when the master
/// Service selects it; after that, with no master to follow, it is not.
pub const READY_AFTER_LOSS: Duration = Duration::from_secs(10);

/// Longest silence between two "not following the master" warnings while the
/// master stays unreachable.
pub const RETRY_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit of the "not following the master" warning: the first failure of
/// an outage is logged at once, then at most one line every
/// [`RETRY_LOG_EVERY`], carrying how many attempts failed in all.
#[derive(Debug, Default)]
pub(crate) struct RetryLog {
    pub(crate) failed: u64,
    pub(crate) last: Option<Instant>,
}

impl RetryLog {
    /// Counts a failed attempt; returns the failures of this outage so far when
    /// a warning is due.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<u64> {
        self.failed += 1;
        match self.last {
            Some(t) if now.saturating_duration_since(t) < RETRY_LOG_EVERY => None,
            _ => {
                self.last = Some(now);
                Some(self.failed)
            }
        }
    }

    /// The master was followed again: the next failure starts a new outage.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What the metalogger shows in `Status`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Info {
    pub(crate) applied: u64,
    pub(crate) durable: u64,
    pub(crate) seen_epoch: u64,
    pub(crate) master_connected: bool,
    pub(crate) master_version: u64,
    pub(crate) role: &'static str,
    pub(crate) peers: BTreeMap<String, String>,
    pub(crate) holds_metadata: bool,
    /// The last batch left it within one batch of the master's version; false
    /// from start until then, and again from a resync (new epoch, gap).
    pub(crate) caught_up: bool,
    /// When it stopped following while caught up.
    pub(crate) lost_at: Option<Instant>,
}

impl Info {
    /// `/readyz`: serving as the master, or caught up and following (still
    /// true for [`READY_AFTER_LOSS`] after losing the master, or while being
    /// promoted). Bootstrap does not wait on it: the operator decides from
    /// gRPC answers, and a pod promoted at bootstrap is ready as master.
    pub(crate) fn ready(&self, now: Instant) -> bool {
        match self.role {
            "master" => true,
            "promoting" => self.caught_up,
            _ => {
                self.caught_up
                    && (self.master_connected
                        || self
                            .lost_at
                            .is_some_and(|t| now.saturating_duration_since(t) < READY_AFTER_LOSS))
            }
        }
    }
}

pub(crate) type PromoteReplyTx = oneshot::Sender<Result<pb::PromoteReply, Status>>;

/// A switchover in progress: the request, where to answer, when it started and
/// the StepDown call to the master.
pub(crate) type PendingStepDown = (
    pb::PromoteRequest,
    PromoteReplyTx,
    Instant,
    tokio::task::JoinHandle<Result<pb::StepDownReply, Status>>,
);

pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) advertise: String,
    pub(crate) master: String,
    pub(crate) info: Mutex<Info>,
    pub(crate) promote_tx: mpsc::Sender<(pb::PromoteRequest, PromoteReplyTx)>,
}

pub(crate) enum Outcome {
    /// Promote now (checks done; for a switchover the old master stepped down).
    Promote(pb::PromoteRequest, PromoteReplyTx, Option<Instant>),
}

pub(crate) struct Follower {
    pub(crate) shared: Arc<Shared>,
    pub(crate) repl: ReplicationClient<AuthChannel>,
    pub(crate) admin: AdminClient<AuthChannel>,
    pub(crate) auth: ClientAuth,
    pub(crate) rx: mpsc::Receiver<(pb::PromoteRequest, PromoteReplyTx)>,
}

/// Refuses a requested epoch that is not higher than every epoch seen (0
/// asks for the highest seen + 1).
fn check_epoch(req: &pb::PromoteRequest, seen_epoch: u64) -> Result<(), Status> {
    if req.epoch != 0 && req.epoch <= seen_epoch {
        return Err(Status::failed_precondition(format!(
            "epoch {} refused: this metalogger has already seen epoch {seen_epoch}; a promotion must take a higher epoch (re-read the highest epoch and decide again)",
            req.epoch
        )));
    }
    Ok(())
}

pub(crate) fn grpc_err(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

/// Clients of the master's Replication and Admin services, sharing one new
/// (lazy) connection.
pub(crate) fn master_clients(
    master: &str,
    auth: &ClientAuth,
) -> Result<(ReplicationClient<AuthChannel>, AdminClient<AuthChannel>), String> {
    let ch = alces_proto::net::channel(master, auth)?;
    Ok((
        ReplicationClient::new(ch.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        AdminClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    ))
}

impl Follower {
    /// After `e` ended following the master: unless it is the master's clear
    /// refusal (a gRPC answer such as a stale epoch or bad credentials), drops
    /// the connection, so the next attempt connects (and resolves the address)
    /// again. Returns whether it did.
    pub(crate) fn reconnect_after(&mut self, e: &anyhow::Error) -> bool {
        if e.downcast_ref::<Status>().is_some_and(errno::is_refusal) {
            return false;
        }
        match master_clients(&self.shared.master, &self.auth) {
            Ok((repl, admin)) => {
                self.repl = repl;
                self.admin = admin;
                true
            }
            // The address was valid at startup and does not change.
            Err(_) => false,
        }
    }

    pub(crate) fn set(&self, f: impl FnOnce(&mut Info)) {
        f(&mut self.shared.info.lock());
    }

    /// Refuses a promotion while the master answers (unless a switchover) or
    /// while a reachable metalogger holds more (unless forced).
    pub(crate) async fn preflight(
        &self,
        req: &pb::PromoteRequest,
        mine: u64,
        seen_epoch: u64,
    ) -> Result<(), Status> {
        check_epoch(req, seen_epoch)?;
        if req.bootstrap {
            return Err(Status::failed_precondition(
                "bootstrap refused: this metalogger follows a master (the filesystem exists); a bootstrap formats a new filesystem and is only for a metalogger that never saw a master",
            ));
        }
        if !req.switchover {
            let alive =
                tokio::time::timeout(PROBE_TIMEOUT, self.admin.clone().status(pb::Empty {})).await;
            if let Ok(Ok(s)) = alive {
                let s = s.into_inner();
                if s.role == "master" && !s.conditions.iter().any(|c| c.starts_with("Fenced")) {
                    return Err(Status::failed_precondition(format!(
                        "the master at {} is alive (epoch {}, version {}): refusing to promote; use --switchover for a planned handover",
                        self.shared.master, s.epoch, s.metadata_version
                    )));
                }
            }
        }
        // A switchover catches up with the live master, so peers cannot be ahead.
        if !req.force && !req.switchover {
            let peers = self.shared.info.lock().peers.clone();
            for (id, addr) in peers {
                if id == self.shared.id {
                    continue;
                }
                let Ok(ch) = alces_proto::net::channel(&addr, &self.auth) else {
                    continue;
                };
                let probe = tokio::time::timeout(
                    PROBE_TIMEOUT,
                    MetaloggerClient::new(ch).status(pb::Empty {}),
                )
                .await;
                if let Ok(Ok(p)) = probe {
                    let p = p.into_inner();
                    if p.durable_version > mine {
                        return Err(Status::failed_precondition(format!(
                            "metalogger {id} at {addr} holds version {} but this one only {mine}: promote that one, or use --force to accept losing the difference",
                            p.durable_version
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Allows a bootstrap (format a new filesystem) only on a metalogger that
    /// never saw a master and holds no metadata, while nothing answers at
    /// the master address.
    pub(crate) async fn preflight_bootstrap(
        &self,
        req: &pb::PromoteRequest,
        rep: &Replica,
    ) -> Result<(), Status> {
        check_epoch(req, rep.seen_epoch)?;
        if req.switchover {
            return Err(Status::invalid_argument(
                "bootstrap and switchover exclude each other: a bootstrap creates a new filesystem, a switchover takes over a running one",
            ));
        }
        if rep.seen_epoch != 0 || rep.holds_metadata() {
            return Err(Status::failed_precondition(format!(
                "bootstrap refused: this metalogger holds metadata or has followed a master (epoch {} seen); formatting would discard a filesystem. Promote without bootstrap instead",
                rep.seen_epoch
            )));
        }
        let probe =
            tokio::time::timeout(PROBE_TIMEOUT, self.admin.clone().status(pb::Empty {})).await;
        if let Ok(Ok(s)) = probe {
            let s = s.into_inner();
            return Err(Status::failed_precondition(format!(
                "bootstrap refused: a master answers at {} (epoch {}, cluster {}): the filesystem exists",
                self.shared.master, s.epoch, s.cluster_id
            )));
        }
        Ok(())
    }

    /// Fetches a snapshot from the master and installs it.
    pub(crate) async fn fetch_snapshot(&mut self, rep: &mut Replica) -> anyhow::Result<()> {
        self.set(|i| i.caught_up = false);
        let mut s = self
            .repl
            .fetch_snapshot(pb::FetchSnapshotRequest {
                metalogger_id: self.shared.id.clone(),
                seen_epoch: rep.seen_epoch,
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        let (mut version, mut epoch) = (0, 0);
        while let Some(p) = s.message().await? {
            version = p.version;
            epoch = p.epoch;
            data.extend_from_slice(&p.data);
        }
        if epoch < rep.seen_epoch {
            anyhow::bail!(
                "master {} has epoch {epoch}, lower than the {} already seen: it is a deposed master; refusing it",
                self.shared.master,
                rep.seen_epoch
            );
        }
        let state = tokio::task::spawn_blocking(move || snapshot::decode(&data))
            .await
            .map_err(|e| anyhow::anyhow!("snapshot decoding failed: {e}"))?
            .map_err(|e| anyhow::anyhow!("snapshot from the master is not valid: {e}"))?;
        if state.version != version {
            anyhow::bail!(
                "snapshot from the master holds version {} but was announced as {version}",
                state.version
            );
        }
        tracing::info!(version, epoch, "snapshot downloaded from the master");
        rep.install(state, epoch)?;
        self.set(|i| {
            i.applied = version;
            i.durable = version;
            i.seen_epoch = rep.seen_epoch;
            i.holds_metadata = true;
        });
        Ok(())
    }

    /// Follows the master until an error or a promotion.
    pub(crate) async fn follow(&mut self, rep: &mut Replica) -> anyhow::Result<Outcome> {
        if rep.state.is_none() {
            self.fetch_snapshot(rep).await?;
        }
        let from = rep.version().unwrap_or(0) + 1;
        let stream = self
            .repl
            .stream_changelog(pb::StreamChangelogRequest {
                metalogger_id: self.shared.id.clone(),
                from_version: from,
                seen_epoch: rep.seen_epoch,
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) if s.code() == Code::FailedPrecondition && s.message().contains("snapshot") => {
                tracing::warn!(reason = %s.message(), "cannot resume from the local version: fetching a fresh snapshot");
                rep.drop_local(false)?;
                anyhow::bail!("resyncing");
            }
            Err(s) => return Err(s.into()),
        };
        tracing::info!(from, master = %self.shared.master, "following the master's changelog");
        self.set(|i| i.master_connected = true);
        let mut step_down: Option<PendingStepDown> = None;
        let mut stepped_down: Option<u64> = None;
        loop {
            if let Some(last) = stepped_down {
                if rep.version().unwrap_or(0) >= last {
                    if let Some((req, tx, started, _)) = step_down.take() {
                        return Ok(Outcome::Promote(req, tx, Some(started)));
                    }
                }
            }
            tokio::select! {
                m = tokio::time::timeout(STREAM_TIMEOUT, stream.message()) => {
                    let batch = match m {
                        Err(_) => anyhow::bail!("no message from the master for {STREAM_TIMEOUT:?}"),
                        Ok(Err(s)) => {
                            if s.code() == Code::FailedPrecondition && s.message().contains("snapshot") {
                                rep.drop_local(false)?;
                            }
                            return Err(s.into());
                        }
                        Ok(Ok(None)) => anyhow::bail!("the master ended the changelog stream"),
                        Ok(Ok(Some(b))) => b,
                    };
                    self.apply_batch(rep, batch).await?;
                }
                r = async { match step_down.as_mut() { Some(s) => (&mut s.3).await, None => std::future::pending().await } }, if step_down.is_some() && stepped_down.is_none() => {
                    match r {
                        Ok(Ok(reply)) => {
                            tracing::info!(last = reply.last_version, "the master stepped down");
                            stepped_down = Some(reply.last_version);
                        }
                        other => {
                            let msg = match other {
                                Ok(Err(s)) => s.message().to_string(),
                                Err(e) => e.to_string(),
                                Ok(Ok(_)) => String::new(),
                            };
                            if let Some((_, tx, _, _)) = step_down.take() {
                                let _ = tx.send(Err(Status::aborted(format!("the master did not step down: {msg}"))));
                            }
                        }
                    }
                }
                p = self.rx.recv(), if step_down.is_none() => {
                    let Some((req, tx)) = p else { anyhow::bail!("service stopped") };
                    let mine = rep.version().unwrap_or(0);
                    if let Err(s) = self.preflight(&req, mine, rep.seen_epoch).await {
                        let _ = tx.send(Err(s));
                        continue;
                    }
                    if !req.switchover {
                        return Ok(Outcome::Promote(req, tx, None));
                    }
                    let started = Instant::now();
                    let mut repl = self.repl.clone();
                    let sd = pb::StepDownRequest {
                        new_epoch: if req.epoch > 0 { req.epoch } else { rep.seen_epoch + 1 },
                        metalogger_id: self.shared.id.clone(),
                    };
                    let task = tokio::spawn(async move {
                        repl.step_down(sd).await.map(|r| r.into_inner())
                    });
                    step_down = Some((req, tx, started, task));
                }
            }
        }
    }

    pub(crate) async fn apply_batch(
        &mut self,
        rep: &mut Replica,
        b: pb::ChangelogBatch,
    ) -> anyhow::Result<()> {
        if b.epoch < rep.seen_epoch {
            anyhow::bail!(
                "master {} has epoch {}, lower than the {} already seen: it is a deposed master; refusing it",
                self.shared.master,
                b.epoch,
                rep.seen_epoch
            );
        }
        if b.epoch > rep.seen_epoch {
            // A new master term: its history may differ from ours past the
            // promotion point, so start again from its snapshot.
            tracing::warn!(
                old = rep.seen_epoch,
                new = b.epoch,
                "the master has a newer epoch: fetching a fresh snapshot"
            );
            rep.seen_epoch = b.epoch;
            rep.drop_local(false)?;
            anyhow::bail!("resyncing with the master of epoch {}", b.epoch);
        }
        let n = b.records.len() as u64;
        let Some(state) = rep.state.as_mut() else {
            anyhow::bail!("no local metadata");
        };
        let mut last = None;
        for r in &b.records {
            if r.version != state.version + 1 {
                let v = state.version;
                rep.drop_local(false)?;
                anyhow::bail!(
                    "the master sent version {} after {v}: gap; fetching a fresh snapshot",
                    r.version
                );
            }
            if let Err(e) = apply(state, r) {
                let v = r.version;
                rep.drop_local(false)?;
                anyhow::bail!(
                    "record {v} does not apply to the replica ({e}); fetching a fresh snapshot"
                );
            }
            rep.writer
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("no changelog writer"))?
                .append(r)
                .map_err(|e| anyhow::anyhow!(e))?;
            last = Some(r.version);
        }
        let applied = state.version;
        // Within one batch of the master: the batch was not full (it held
        // all the master had durable), or the master is less than a batch ahead.
        let batch = crate::domain::replication::BATCH_RECORDS as u64;
        let caught_up = n < batch || b.master_version.saturating_sub(applied) < batch;
        rep.since_snapshot += n;
        let peers: BTreeMap<String, String> =
            b.peers.into_iter().map(|p| (p.id, p.address)).collect();
        self.set(|i| {
            i.applied = applied;
            i.master_version = b.master_version;
            i.peers = peers;
            i.master_connected = true;
            i.caught_up = caught_up;
            i.lost_at = None;
        });
        let w = rep
            .writer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no changelog writer"))?;
        let mut d = w.durable();
        if let Some(v) = last {
            let ok = d
                .wait_for(|x| x.version >= v || x.failed)
                .await
                .map(|x| !x.failed)
                .unwrap_or(false);
            if !ok {
                anyhow::bail!("the local changelog cannot be written: stopping");
            }
        }
        let durable = d.borrow().version;
        self.set(|i| i.durable = durable);
        self.repl
            .report_applied(pb::ReportAppliedRequest {
                metalogger_id: self.shared.id.clone(),
                address: self.shared.advertise.clone(),
                durable_version: durable,
                seen_epoch: rep.seen_epoch,
            })
            .await?;
        rep.maybe_snapshot().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_caught_up_and_following_or_serving() {
        let t0 = Instant::now();
        let ml = |caught_up, connected, lost_at| Info {
            role: "metalogger",
            caught_up,
            master_connected: connected,
            lost_at,
            ..Info::default()
        };
        // Started, never followed (bootstrap, or no master): not ready.
        assert!(!ml(false, false, None).ready(t0));
        // Following but behind (a backlog, or a fresh snapshot): not ready.
        assert!(!ml(false, true, None).ready(t0));
        assert!(ml(true, true, None).ready(t0));
        // The master just died: still ready for the grace, then not.
        let lost = ml(true, false, Some(t0));
        assert!(lost.ready(t0 + Duration::from_secs(1)));
        assert!(!lost.ready(t0 + READY_AFTER_LOSS));
        // Lost while behind: not ready.
        assert!(!ml(false, false, Some(t0)).ready(t0));
        // Promoted: ready while promoting (if it was caught up) and as master.
        let mut p = ml(true, false, Some(t0));
        p.role = "promoting";
        assert!(p.ready(t0 + READY_AFTER_LOSS * 2));
        p.role = "master";
        p.caught_up = false;
        assert!(p.ready(t0 + READY_AFTER_LOSS * 2));
    }

    #[test]
    fn not_following_warnings_are_rate_limited_and_count_attempts() {
        let mut r = RetryLog::default();
        let t0 = Instant::now();
        // The first failure of an outage is logged at once.
        assert_eq!(r.failed(t0), Some(1));
        // Retries every 300 ms for 9.9 s: silent.
        let mut t = t0;
        for _ in 0..33 {
            t += RETRY;
            if t.duration_since(t0) >= RETRY_LOG_EVERY {
                break;
            }
            assert_eq!(r.failed(t), None);
        }
        // Then one line with the count of all attempts so far.
        let n = r
            .failed(t0 + RETRY_LOG_EVERY)
            .expect("a warning after 10 s");
        assert!(n > 30, "count of failed attempts: {n}");
        assert_eq!(r.failed(t0 + RETRY_LOG_EVERY + RETRY), None);
        // Following again, then a new outage: logged at once, counted from 1.
        r.reset();
        assert_eq!(r.failed(t0 + RETRY_LOG_EVERY * 2), Some(1));
    }
}
