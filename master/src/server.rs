//! Starting and stopping a master: data directory recovery, the gRPC listener
//! with authentication and message limits, the HTTP endpoint, the maintenance and
//! snapshot loops, and the graceful shutdown (final snapshot).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::auth::ServerAuth;
use alces_proto::pb::{
    admin_server::AdminServer, chunk_master_server::ChunkMasterServer, master_server::MasterServer,
    replication_server::ReplicationServer,
};
use alces_proto::MAX_MESSAGE_BYTES;
use alces_telemetry::Health;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::config::{Args, Tuning};
use crate::core::{now_ns, Core, Settings};
use crate::disk::datadir::{self, DirLock};
use crate::metrics::Metrics;
use crate::services::admin::AdminService;
use crate::services::chunk_master::ChunkMasterService;
use crate::services::master::MasterService;
use crate::services::replication::ReplicationService;

/// How a master is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// HTTP (metrics/health) listen address, if any.
    pub http_listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Cluster secret.
    pub secret: Arc<str>,
    /// TLS of the gRPC port and of the connections to chunkservers.
    pub tls: alces_proto::tls::Tls,
    /// Chunk size of a new filesystem.
    pub chunk_size: u64,
    /// Goal of the root of a new filesystem.
    pub default_goal: u32,
    /// Client lease.
    pub session_timeout: Duration,
    /// Grace after a chunkserver's last heartbeat before its copies stop counting.
    pub chunkserver_timeout: Duration,
    /// Silence after which a chunkserver is shown disconnected (its copies
    /// still count until `chunkserver_timeout`).
    pub chunkserver_disconnect: Duration,
    /// Time between periodic snapshots.
    pub snapshot_interval: Duration,
    /// Pace of replication, drain and rebalancing.
    pub replication: crate::runtime::chunkmap::Policy,
    /// Metaloggers that must hold a mutation before it is acknowledged.
    pub sync_metaloggers: usize,
    /// How long a mutation waits for them before the master degrades.
    pub sync_timeout: Duration,
    /// The caps on the file lock table.
    pub lock_caps: crate::runtime::locks::LockCaps,
}

impl Options {
    /// Options from command-line flags and the loaded secret.
    pub fn from_args(a: &Args, secret: Arc<str>, tls: alces_proto::tls::Tls) -> Self {
        Self::from_tuning(
            a.listen,
            Some(a.http_listen),
            a.data_dir.clone(),
            secret,
            tls,
            &a.tuning,
        )
    }

    /// Options of a master listening on `listen` (and `http_listen`) over
    /// `data_dir`, tuned by `t` (the flags alces-master and alces-metalogger share).
    pub fn from_tuning(
        listen: SocketAddr,
        http_listen: Option<SocketAddr>,
        data_dir: PathBuf,
        secret: Arc<str>,
        tls: alces_proto::tls::Tls,
        t: &Tuning,
    ) -> Self {
        Self {
            listen,
            http_listen,
            data_dir,
            secret,
            tls,
            chunk_size: t.chunk_size,
            default_goal: t.default_goal,
            session_timeout: Duration::from_secs(u64::from(t.session_timeout)),
            chunkserver_timeout: Duration::from_secs(t.chunkserver_timeout),
            chunkserver_disconnect: Duration::from_millis(t.chunkserver_disconnect_ms),
            snapshot_interval: Duration::from_secs(t.snapshot_interval),
            replication: t.policy(),
            sync_metaloggers: t.sync_metaloggers as usize,
            sync_timeout: Duration::from_millis(t.sync_timeout_ms),
            lock_caps: t.lock_caps(),
        }
    }
}

/// The most calls one client connection keeps open at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`): bounds a connection's cost while
/// leaving room for many blocking lock waits.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16_384;

/// A running master.
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address, if serving one.
    pub http_addr: Option<SocketAddr>,
    /// The master's state.
    pub core: Arc<Core>,
    health: Health,
    stop_tx: watch::Sender<bool>,
    grpc_task: JoinHandle<Result<(), tonic::transport::Error>>,
    loop_task: JoinHandle<()>,
    _lock: DirLock,
}

/// Recovers the data directory and starts serving.
pub async fn start(opts: Options) -> anyhow::Result<Running> {
    let lock = datadir::lock(&opts.data_dir)?;
    let dir = opts.data_dir.clone();
    let (chunk_size, goal) = (opts.chunk_size, opts.default_goal);
    let rec =
        tokio::task::spawn_blocking(move || datadir::recover(&dir, chunk_size, goal, now_ns()))
            .await
            .map_err(|e| anyhow::anyhow!("recovery task failed: {e}"))??;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let health = Health::new(registry);
    let settings = Settings {
        data_dir: opts.data_dir.clone(),
        session_timeout: opts.session_timeout,
        chunkserver_timeout: opts.chunkserver_timeout,
        chunkserver_disconnect: opts.chunkserver_disconnect,
        snapshot_interval: opts.snapshot_interval,
        replication: opts.replication,
        sync_metaloggers: opts.sync_metaloggers,
        sync_timeout: opts.sync_timeout,
        chunk_auth: alces_proto::auth::ClientAuth::new(&opts.secret)
            .ok()
            .map(|a| crate::core::ChunkAuth(a.with_tls(&opts.tls))),
        access_secret: crate::core::AccessSecret(opts.secret.clone()),
    };
    tracing::info!(
        version = rec.state.version,
        inodes = rec.state.inodes.len(),
        chunks = rec.state.chunks.len(),
        epoch = rec.epoch,
        cluster_id = %rec.state.cluster_id,
        formatted = rec.formatted,
        "metadata loaded"
    );
    // Over existing metadata (a restart, a promotion) clients re-assert the
    // locks they hold: no new lock is granted until they had the time to.
    let lock_grace = (!rec.formatted).then(|| Instant::now() + opts.session_timeout);
    let core = Arc::new(Core::new(
        rec.state,
        rec.snapshot_version,
        rec.epoch,
        settings,
        metrics,
    )?);
    {
        let mut g = core.inner.lock();
        g.locks.grace_until = lock_grace;
        g.locks.caps = opts.lock_caps;
    }
    core.update_gauges(&core.inner.lock());

    let http_addr = match opts.http_listen {
        Some(a) => Some(alces_telemetry::serve_http(a, health.clone()).await?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {}: {e}", opts.listen))?;
    let grpc_addr = listener.local_addr()?;
    let auth = ServerAuth::new(opts.secret.clone());
    // Clients and administrators may present a credential; peers may not.
    let client_auth = auth
        .clone()
        .with_credentials(Arc::new(crate::domain::credentials::Checker(core.clone())));
    let master = MasterServer::new(MasterService::new(core.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let chunk = ChunkMasterServer::new(ChunkMasterService::new(core.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let replication = ReplicationServer::new(ReplicationService::new(core.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServer::new(AdminService::new(core.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            // A blocking lock wait is a call that stays open until the lock is
            // granted, and a mount sends all of its waits over one connection
            // of their own: the per-connection stream cap is set deliberately
            // high (hyper's own default is 200) so hundreds of waiting
            // processes on one node all register here; past it, only further
            // waits queue in that mount.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(InterceptedService::new(master, client_auth.clone()))
            .add_service(InterceptedService::new(chunk, auth.clone()))
            .add_service(InterceptedService::new(replication, auth.clone()))
            .add_service(InterceptedService::new(admin, client_auth))
            // No Nagle delay: replication replies and streams are small and latency-bound.
            .serve_with_incoming_shutdown(
                alces_proto::net::incoming(listener, &opts.tls),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            ),
    );
    let loop_task = tokio::spawn(maintenance(core.clone(), stop_rx));
    health.set_ready(true);
    tracing::info!(grpc = %grpc_addr, http = ?http_addr, data_dir = %opts.data_dir.display(), epoch = core.epoch, sync_metaloggers = opts.sync_metaloggers, "alces-master ready");
    Ok(Running {
        grpc_addr,
        http_addr,
        core,
        health,
        stop_tx,
        grpc_task,
        loop_task,
        _lock: lock,
    })
}

async fn maintenance(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snapshot = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let due = crate::domain::maintenance::tick(&core);
        if due || last_snapshot.elapsed() >= core.settings.snapshot_interval {
            last_snapshot = Instant::now();
            if let Err(e) = core.snapshot().await {
                tracing::error!(error = %e, "background snapshot failed");
            }
        }
    }
}

/// How long in-flight calls may take to finish after a stop; clients keep their
/// connections open, so the server is stopped after this even if they do.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

async fn drain(mut task: JoinHandle<Result<(), tonic::transport::Error>>) {
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
        Err(_) => {
            tracing::info!("closing client connections still open after the shutdown grace period");
            task.abort();
            let _ = task.await;
        }
    }
}

impl Running {
    /// Stops accepting calls, writes a final snapshot and flushes the changelog.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.health.set_ready(false);
        let _ = self.stop_tx.send(true);
        drain(self.grpc_task).await;
        let _ = self.loop_task.await;
        let res = self.core.snapshot().await;
        self.core.stop_writer();
        res?;
        tracing::info!("alces-master stopped");
        Ok(())
    }
}

impl Running {
    /// Stops serving and flushes the changelog without the final snapshot, as a
    /// crash after the last acknowledged mutation would leave the data directory:
    /// the next start replays the changelog.
    pub async fn stop_without_snapshot(self) {
        self.health.set_ready(false);
        let _ = self.stop_tx.send(true);
        drain(self.grpc_task).await;
        let _ = self.loop_task.await;
        self.core.stop_writer();
    }
}

/// How a serving master ended.
pub enum Ended {
    /// Stopped by SIGTERM/SIGINT (final snapshot written).
    Stopped,
    /// A newer master replaced this one: it must rejoin as a metalogger.
    Deposed {
        /// The newer epoch.
        newer_epoch: u64,
    },
}

/// Serves until SIGTERM/SIGINT or until the master is deposed (a newer epoch
/// was seen, or it stepped down for a switchover).
pub async fn serve(running: Running) -> anyhow::Result<Ended> {
    let mut fence = running.core.hub.fence_rx();
    tokio::select! {
        _ = alces_telemetry::shutdown_signal() => {
            running.stop().await?;
            Ok(Ended::Stopped)
        }
        f = fence.wait_for(|f| f.newer_epoch > 0) => {
            let newer_epoch = f.map(|f| f.newer_epoch).unwrap_or(0);
            // Let the step-down reply reach the new master before the sockets close.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tracing::warn!(
                epoch = running.core.epoch,
                newer_epoch,
                last_acknowledged = running.core.hub.acked(),
                "DEPOSED: a master with a higher epoch exists; rejoining as a metalogger and dropping local metadata that may hold unacknowledged changes"
            );
            running.core.stop_writer();
            Ok(Ended::Deposed { newer_epoch })
        }
    }
}

/// How often a master without its chunkserver quorum asks the master address
/// who serves there.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Watches for a newer master at the master address `addr` (what clients and
/// chunkservers use: a Service, a floating IP, a DNS name).
///
/// Nothing else tells a master that was cut off (a partition) that a
/// metalogger was promoted meanwhile: its clients and chunkservers moved to the
/// new master, and nobody talks to it any more. So while it hears from no
/// majority of its chunkservers, it asks `addr` every [`PROBE_EVERY`] who
/// serves there (`Replication.Identify`, a fresh connection each time); a
/// master of the same cluster with a higher epoch means this one was replaced:
/// it fences itself, and [`serve`] turns it into a metalogger of the new one.
/// While the address still leads to this master itself, the answer carries its
/// own epoch and nothing happens.
pub fn watch_for_newer_master(
    core: Arc<Core>,
    addr: String,
    auth: alces_proto::auth::ClientAuth,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned_other_cluster = false;
        loop {
            tick.tick().await;
            if core.hub.fence().newer_epoch > 0 {
                return;
            }
            if core.chunkserver_quorum() {
                continue;
            }
            if let Err(e) = alces_proto::net::validate_addr(&addr) {
                tracing::error!(address = %addr, "the rejoin address is not host:port ({e}): not watching it for a newer master");
                return;
            }
            let probe = async {
                let ch = alces_proto::net::connect(&addr, &auth).await?;
                let mut c = alces_proto::pb::replication_client::ReplicationClient::new(ch);
                c.identify(alces_proto::pb::Empty {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| s.message().to_string())
            };
            let Ok(Ok(r)) = tokio::time::timeout(PROBE_EVERY * 2, probe).await else {
                continue;
            };
            if r.epoch <= core.epoch {
                continue;
            }
            let ours = core.inner.lock().state.cluster_id.clone();
            if r.cluster_id != ours {
                if !warned_other_cluster {
                    warned_other_cluster = true;
                    tracing::error!(address = %addr, cluster = %r.cluster_id, ours = %ours, "a master of another cluster answers at the master address; ignoring it");
                }
                continue;
            }
            tracing::error!(
                address = %addr,
                epoch = core.epoch,
                newer_epoch = r.epoch,
                "a newer master serves at the master address: this master was replaced while cut off; it stops accepting mutations and rejoins as a metalogger"
            );
            core.hub.set_fence(r.epoch);
            return;
        }
    })
}

/// Replaces this process with `alces-metalogger` (found next to the running
/// executable, else on PATH) run with `args`. Returns only on failure.
pub fn exec_metalogger(args: &[std::ffi::OsString]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("alces-metalogger")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("alces-metalogger"));
    let e = std::process::Command::new(&bin).args(args).exec();
    anyhow::anyhow!(
        "cannot start {} to rejoin as a metalogger: {e}",
        bin.display()
    )
}

/// Runs the master from command-line flags until SIGTERM/SIGINT; a deposed
/// master turns into a metalogger of the new one.
pub async fn run(args: Args) -> anyhow::Result<()> {
    alces_telemetry::warn_if_root("alces-master");
    let secret = alces_proto::auth::load_secret(args.secret_file.as_deref())?;
    let tls = args.tls.load(alces_proto::tls::Role::Server)?;
    let auth = alces_proto::auth::ClientAuth::new(&secret)?.with_tls(&tls);
    let running = start(Options::from_args(&args, secret.clone(), tls)).await?;
    let rejoin_master = args.rejoin_master.clone().unwrap_or_else(|| {
        let mut a = args.listen;
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        a.to_string()
    });
    let watch = watch_for_newer_master(running.core.clone(), rejoin_master.clone(), auth);
    let ended = serve(running).await;
    watch.abort();
    match ended? {
        Ended::Stopped => Ok(()),
        Ended::Deposed { .. } => {
            let master = rejoin_master;
            let mut argv: Vec<std::ffi::OsString> = vec![
                "--master".into(),
                master.into(),
                "--listen".into(),
                args.rejoin_listen.to_string().into(),
                "--data-dir".into(),
                args.data_dir.clone().into(),
                "--resync".into(),
                "--promote-listen".into(),
                args.listen.to_string().into(),
                "--promote-http-listen".into(),
                args.http_listen.to_string().into(),
            ];
            // The same tuning, so that this process, promoted again one day,
            // runs the master as it was configured.
            argv.extend(args.tuning.to_flags());
            argv.extend(args.tls.to_flags());
            if let Some(f) = &args.secret_file {
                argv.push("--secret-file".into());
                argv.push(f.clone().into());
            }
            if args.log_json {
                argv.push("--log-json".into());
            }
            Err(exec_metalogger(&argv))
        }
    }
}
