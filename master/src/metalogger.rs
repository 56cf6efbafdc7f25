//! The metalogger role: a warm replica of the master's metadata.
//!
//! It downloads a snapshot, follows the changelog stream, applies every record
//! with [`ops::apply`](crate::ops::apply) to an in-memory [`State`], appends it to
//! its own changelog (group-committed like the master's) and reports the durable
//! version back, so the master can count it for `sync_metaloggers`. Its data
//! directory has the master's layout; after `Promote` it is recovered by a master
//! started in the same process on the promote address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::auth::{ClientAuth, ServerAuth};
use alces_proto::net::AuthChannel;
use alces_proto::pb::{
    self, admin_client::AdminClient, metalogger_client::MetaloggerClient,
    metalogger_server::MetaloggerServer, replication_client::ReplicationClient,
};
use alces_proto::telemetry::Health;
use alces_proto::MAX_MESSAGE_BYTES;
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use crate::changelog::{self, Writer};
use crate::config::MetaloggerArgs;
use crate::core::now_ns;
use crate::datadir::{self, DirLock};
use crate::namespace::State;
use crate::ops::apply;
use crate::server::{self, Ended, Options};
use crate::snapshot;

/// A changelog stream silent for this long is considered dead.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts.
pub const RETRY: Duration = Duration::from_millis(300);
/// Timeout of the liveness and peer checks made by a promotion.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest silence between two "not following the master" warnings while the
/// master stays unreachable.
pub const RETRY_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate limit of the "not following the master" warning: the first failure of
/// an outage is logged at once, then at most one line every
/// [`RETRY_LOG_EVERY`], carrying how many attempts failed in all.
#[derive(Debug, Default)]
struct RetryLog {
    failed: u64,
    last: Option<Instant>,
}

impl RetryLog {
    /// Counts a failed attempt; returns the failures of this outage so far when
    /// a warning is due.
    fn failed(&mut self, now: Instant) -> Option<u64> {
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
    fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What the metalogger shows in `Status`.
#[derive(Debug, Clone, Default)]
struct Info {
    applied: u64,
    durable: u64,
    seen_epoch: u64,
    master_connected: bool,
    master_version: u64,
    role: &'static str,
    peers: BTreeMap<String, String>,
    holds_metadata: bool,
}

type PromoteReplyTx = oneshot::Sender<Result<pb::PromoteReply, Status>>;

/// A switchover in progress: the request, where to answer, when it started and
/// the StepDown call to the master.
type PendingStepDown = (
    pb::PromoteRequest,
    PromoteReplyTx,
    Instant,
    tokio::task::JoinHandle<Result<pb::StepDownReply, Status>>,
);

struct Shared {
    id: String,
    advertise: String,
    master: String,
    info: Mutex<Info>,
    promote_tx: mpsc::Sender<(pb::PromoteRequest, PromoteReplyTx)>,
}

/// The Metalogger gRPC service.
#[derive(Clone)]
struct Service {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl pb::metalogger_server::Metalogger for Service {
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

/// The local replica: metadata, changelog writer and data directory.
struct Replica {
    dir: PathBuf,
    state: Option<State>,
    writer: Option<Writer>,
    seen_epoch: u64,
    since_snapshot: u64,
    snapshot_records: u64,
    _lock: Option<DirLock>,
}

fn hist() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5])
}

impl Replica {
    /// Opens the data directory: recovers local metadata if any (a corrupt tail
    /// is cut by the changelog reader and re-fetched from the master).
    fn open(dir: &Path, resync: bool, snapshot_records: u64) -> anyhow::Result<Self> {
        let lock = datadir::lock(dir)?;
        let seen_epoch = datadir::read_epoch(dir)?.unwrap_or(0);
        let mut r = Self {
            dir: dir.to_path_buf(),
            state: None,
            writer: None,
            seen_epoch,
            since_snapshot: 0,
            snapshot_records,
            _lock: Some(lock),
        };
        if resync {
            r.drop_local(true)?;
            return Ok(r);
        }
        let l = datadir::list(dir)?;
        if l.snapshots.is_empty() {
            if !l.changelogs.is_empty() {
                r.drop_local(true)?;
            }
            return Ok(r);
        }
        match datadir::recover(dir, 1 << 20, 1, now_ns()) {
            Ok(rec) => {
                tracing::info!(
                    version = rec.state.version,
                    epoch = rec.epoch,
                    "local metadata recovered"
                );
                r.start_writer(rec.state)?;
            }
            Err(e) => {
                tracing::warn!(error = %e, "local metadata unusable: fetching a fresh snapshot");
                r.drop_local(true)?;
            }
        }
        Ok(r)
    }

    fn start_writer(&mut self, state: State) -> anyhow::Result<()> {
        self.writer = None;
        self.writer = Some(Writer::start(
            &self.dir,
            state.version + 1,
            state.version,
            hist(),
        )?);
        self.state = Some(state);
        Ok(())
    }

    /// True when the data directory holds metadata (or a promotion's epoch).
    fn holds_metadata(&self) -> bool {
        self.state.is_some()
            || datadir::list(&self.dir)
                .map(|l| !l.snapshots.is_empty() || !l.changelogs.is_empty())
                .unwrap_or(true)
    }

    /// Forgets the local metadata; with `keep`, moves its files to
    /// `dropped.<time>/` instead of deleting them.
    fn drop_local(&mut self, keep: bool) -> anyhow::Result<()> {
        self.writer = None;
        self.state = None;
        self.since_snapshot = 0;
        let l = datadir::list(&self.dir)?;
        if l.snapshots.is_empty() && l.changelogs.is_empty() {
            return Ok(());
        }
        let aside = self.dir.join(format!("dropped.{}", now_ns()));
        if keep {
            std::fs::create_dir_all(&aside)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", aside.display()))?;
        }
        for (_, p) in l.snapshots.iter().chain(l.changelogs.iter()) {
            let res = match (keep, p.file_name()) {
                (true, Some(n)) => std::fs::rename(p, aside.join(n)),
                _ => std::fs::remove_file(p),
            };
            res.map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
        }
        changelog::sync_dir(&self.dir)?;
        tracing::warn!(kept_in = %aside.display(), moved = keep, "local metadata dropped");
        Ok(())
    }

    fn version(&self) -> Option<u64> {
        self.state.as_ref().map(|s| s.version)
    }

    /// Installs a snapshot fetched from the master as the new local history.
    fn install(&mut self, state: State, epoch: u64) -> anyhow::Result<()> {
        self.drop_local(false)?;
        snapshot::write(&self.dir, &state, now_ns())?;
        if epoch > self.seen_epoch || datadir::read_epoch(&self.dir)?.is_none() {
            datadir::write_epoch(&self.dir, epoch)?;
            self.seen_epoch = epoch;
        }
        self.start_writer(state)
    }

    /// Writes a local snapshot when enough records arrived since the last one.
    async fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        if self.since_snapshot < self.snapshot_records {
            return Ok(());
        }
        let Some(st) = self.state.clone() else {
            return Ok(());
        };
        if let Some(w) = &self.writer {
            w.rotate(st.version + 1).map_err(|e| anyhow::anyhow!(e))?;
        }
        self.since_snapshot = 0;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            snapshot::write(&dir, &st, now_ns())?;
            datadir::prune(&dir)
        })
        .await
        .map_err(|e| anyhow::anyhow!("snapshot task failed: {e}"))??;
        Ok(())
    }
}

enum Outcome {
    /// Promote now (checks done; for a switchover the old master stepped down).
    Promote(pb::PromoteRequest, PromoteReplyTx, Option<Instant>),
}

struct Follower {
    shared: Arc<Shared>,
    repl: ReplicationClient<AuthChannel>,
    admin: AdminClient<AuthChannel>,
    auth: ClientAuth,
    rx: mpsc::Receiver<(pb::PromoteRequest, PromoteReplyTx)>,
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

fn grpc_err(e: anyhow::Error) -> Status {
    Status::internal(format!("{e:#}"))
}

impl Follower {
    fn set(&self, f: impl FnOnce(&mut Info)) {
        f(&mut self.shared.info.lock());
    }

    /// Refuses a promotion while the master answers (unless a switchover) or
    /// while a reachable metalogger holds more (unless forced).
    async fn preflight(
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
    async fn preflight_bootstrap(
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
    async fn fetch_snapshot(&mut self, rep: &mut Replica) -> anyhow::Result<()> {
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
    async fn follow(&mut self, rep: &mut Replica) -> anyhow::Result<Outcome> {
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

    async fn apply_batch(
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
        rep.since_snapshot += n;
        let peers: BTreeMap<String, String> =
            b.peers.into_iter().map(|p| (p.id, p.address)).collect();
        self.set(|i| {
            i.applied = applied;
            i.master_version = b.master_version;
            i.peers = peers;
            i.master_connected = true;
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

/// The metalogger's id: `<data-dir>/metalogger_id`, created once.
fn load_id(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    let p = dir.join("metalogger_id");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            anyhow::bail!("cannot read {}: {e}", p.display())
        }
        _ => {
            let id = format!("ml-{:016x}", rand::random::<u64>());
            std::fs::write(&p, format!("{id}\n"))
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
            Ok(id)
        }
    }
}

fn advertise(listen: SocketAddr, configured: &Option<String>) -> String {
    if let Some(a) = configured {
        return a.clone();
    }
    if listen.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        format!("{host}:{}", listen.port())
    } else {
        listen.to_string()
    }
}

/// Runs a metalogger until SIGTERM/SIGINT, or until it is promoted (then it
/// serves as the master until stopped or deposed).
pub async fn run(args: MetaloggerArgs) -> anyhow::Result<()> {
    let secret = alces_proto::auth::load_secret(args.secret_file.as_deref())?;
    let id = load_id(&args.data_dir)?;
    let dir = args.data_dir.clone();
    let (resync, records) = (args.resync, args.snapshot_records);
    let mut rep = tokio::task::spawn_blocking(move || Replica::open(&dir, resync, records))
        .await
        .map_err(|e| anyhow::anyhow!("recovery task failed: {e}"))??;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {}: {e}", args.listen))?;
    let bound = listener.local_addr()?;
    let (promote_tx, promote_rx) = mpsc::channel(4);
    let shared = Arc::new(Shared {
        id: id.clone(),
        advertise: advertise(bound, &args.advertise),
        master: args.master.clone(),
        info: Mutex::new(Info {
            applied: rep.version().unwrap_or(0),
            durable: rep.version().unwrap_or(0),
            seen_epoch: rep.seen_epoch,
            role: "metalogger",
            holds_metadata: rep.holds_metadata(),
            ..Info::default()
        }),
        promote_tx,
    });
    let health = Health::new(Registry::default());
    if let Some(a) = args.http_listen {
        alces_proto::telemetry::serve_http(a, health.clone()).await?;
    }
    let svc = MetaloggerServer::new(Service {
        shared: shared.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let auth = ServerAuth::new(secret.clone());
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(InterceptedService::new(svc, auth))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    let client_auth = ClientAuth::new(&secret)?;
    let ch = alces_proto::net::channel(&args.master, &client_auth)
        .map_err(|e| anyhow::anyhow!("--master {}: {e}", args.master))?;
    let mut f = Follower {
        shared: shared.clone(),
        repl: ReplicationClient::new(ch.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        admin: AdminClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        auth: client_auth,
        rx: promote_rx,
    };
    health.set_ready(true);
    tracing::info!(id = %id, grpc = %bound, master = %args.master, data_dir = %args.data_dir.display(), "alces-metalogger ready");
    let signal = alces_proto::telemetry::shutdown_signal();
    tokio::pin!(signal);
    let mut retries = RetryLog::default();
    let outcome = loop {
        tokio::select! {
            _ = &mut signal => {
                tracing::info!("alces-metalogger stopping");
                rep.writer = None;
                return Ok(());
            }
            r = f.follow(&mut rep) => match r {
                Ok(o) => break o,
                Err(e) => {
                    let was_following = f.shared.info.lock().master_connected;
                    f.set(|i| i.master_connected = false);
                    if was_following {
                        retries.reset();
                    }
                    if let Some(n) = retries.failed(Instant::now()) {
                        tracing::warn!(error = %format!("{e:#}"), master = %args.master, failed_attempts = n, "not following the master; retrying every {RETRY:?}");
                    }
                }
            }
        }
        // Wait before retrying, but answer promotions meanwhile.
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            p = f.rx.recv() => {
                let Some((req, tx)) = p else { continue };
                let mine = rep.version().unwrap_or(0);
                if req.bootstrap {
                    match f.preflight_bootstrap(&req, &rep).await {
                        Ok(()) => break Outcome::Promote(req, tx, None),
                        Err(s) => { let _ = tx.send(Err(s)); continue; }
                    }
                }
                if rep.state.is_none() {
                    let _ = tx.send(Err(Status::failed_precondition("this metalogger holds no metadata yet")));
                    continue;
                }
                match f.preflight(&req, mine, rep.seen_epoch).await {
                    Err(s) => { let _ = tx.send(Err(s)); }
                    Ok(()) if req.switchover => {
                        let _ = tx.send(Err(Status::failed_precondition("a switchover needs a live master, and this metalogger is not connected to it")));
                    }
                    Ok(()) => break Outcome::Promote(req, tx, None),
                }
            }
        }
    };
    let Outcome::Promote(req, tx, started) = outcome;
    let res = promote(&args, &secret, &mut rep, &shared, &req).await;
    let pause_ms = started.map_or(0, |s| s.elapsed().as_millis() as u64);
    match res {
        Ok((running, epoch, version)) => {
            let _ = tx.send(Ok(pb::PromoteReply {
                epoch,
                version,
                listen: running.grpc_addr.to_string(),
                pause_ms,
            }));
            shared.info.lock().role = "master";
            let watch = server::watch_for_newer_master(
                running.core.clone(),
                args.master.clone(),
                secret.clone(),
            );
            let ended = server::serve(running).await;
            watch.abort();
            grpc.abort();
            match ended? {
                Ended::Stopped => Ok(()),
                Ended::Deposed { .. } => {
                    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
                    if !argv.iter().any(|a| a == "--resync") {
                        argv.push("--resync".into());
                    }
                    Err(server::exec_metalogger(&argv))
                }
            }
        }
        Err(e) => {
            let _ = tx.send(Err(grpc_err(anyhow::anyhow!("promotion failed: {e:#}"))));
            Err(e)
        }
    }
}

/// Persists the new epoch, releases the data directory and starts a master on
/// it at the promote address (waiting for the old master to release it).
async fn promote(
    args: &MetaloggerArgs,
    secret: &Arc<str>,
    rep: &mut Replica,
    shared: &Arc<Shared>,
    req: &pb::PromoteRequest,
) -> anyhow::Result<(server::Running, u64, u64)> {
    shared.info.lock().role = "promoting";
    let version = match rep.version() {
        Some(v) => v,
        // A bootstrap formats a new filesystem (checked by preflight_bootstrap).
        None if req.bootstrap => 0,
        None => anyhow::bail!("this metalogger holds no metadata yet"),
    };
    let epoch = if req.epoch > 0 {
        req.epoch
    } else {
        rep.seen_epoch + 1
    };
    rep.writer = None;
    datadir::write_epoch(&rep.dir, epoch)?;
    rep.seen_epoch = epoch;
    shared.info.lock().seen_epoch = epoch;
    rep.state = None;
    rep._lock = None;
    tracing::warn!(epoch, version, listen = %args.promote_listen, "PROMOTING this metalogger to master");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match std::net::TcpListener::bind(args.promote_listen) {
            Ok(l) => {
                drop(l);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "promote address still in use; waiting");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => anyhow::bail!(
                "cannot listen on the promote address {}: {e} (is the old master still running there?)",
                args.promote_listen
            ),
        }
    }
    let opts = Options::from_tuning(
        args.promote_listen,
        args.promote_http_listen,
        args.data_dir.clone(),
        secret.clone(),
        &args.tuning,
    );
    let running = server::start(opts).await?;
    Ok((running, epoch, version))
}

#[cfg(test)]
mod tests {
    use super::*;

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
