//! The metalogger role: a warm replica of the master's metadata.
//!
//! It downloads a snapshot, follows the changelog stream, applies every record
//! with `ops::apply` to an in-memory `State`, appends it to
//! its own changelog (group-committed like the master's) and reports the durable
//! version back, so the master can count it for `sync_metaloggers`. Its data
//! directory has the master's layout; after `Promote` it is recovered by a master
//! started in the same process on the promote address.
//!
//! - `replica`: the local metadata, changelog writer and data directory.
//! - `follower`: following the master's changelog, and the checks of a promotion.
//! - this module: starting a metalogger, and promoting it to master.

pub(crate) mod follower;
pub(crate) mod replica;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::auth::{ClientAuth, ServerAuth};
use alces_proto::pb::{self, metalogger_server::MetaloggerServer};
use alces_proto::MAX_MESSAGE_BYTES;
use alces_telemetry::Health;
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::Status;

use crate::config::MetaloggerArgs;
use crate::disk::datadir;
use crate::metalogger::follower::{
    grpc_err, master_clients, Follower, Info, Outcome, RetryLog, Shared, RETRY,
};
use crate::metalogger::replica::Replica;
use crate::server::{self, Ended, Options};
use crate::services::metalogger::MetaloggerService;

/// How often `/readyz` is brought up to date with the replica.
const READY_TICK: Duration = Duration::from_millis(200);

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
    alces_telemetry::warn_if_root("alces-metalogger");
    let secret = alces_proto::auth::load_secret(args.secret_file.as_deref())?;
    let tls = args.tls.load(alces_proto::tls::Role::Server)?;
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
        alces_telemetry::serve_http(a, health.clone()).await?;
    }
    let svc = MetaloggerServer::new(MetaloggerService::new(shared.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let auth = ServerAuth::new(secret.clone());
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(InterceptedService::new(svc, auth))
            .serve_with_incoming(alces_proto::net::incoming(listener, &tls)),
    );
    let client_auth = ClientAuth::new(&secret)?.with_tls(&tls);
    let (repl, admin) = master_clients(&args.master, &client_auth)
        .map_err(|e| anyhow::anyhow!("--master {}: {e}", args.master))?;
    let mut f = Follower {
        shared: shared.clone(),
        repl,
        admin,
        auth: client_auth.clone(),
        rx: promote_rx,
    };
    // /readyz follows the replica: caught up and following, or serving as
    // the master (`Info::ready`), checked every READY_TICK.
    let ready_task = {
        let (shared, health) = (shared.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let ready = shared.info.lock().ready(Instant::now());
                health.set_ready(ready);
                tokio::time::sleep(READY_TICK).await;
            }
        })
    };
    tracing::info!(id = %id, grpc = %bound, master = %args.master, data_dir = %args.data_dir.display(), "alces-metalogger ready");
    let signal = alces_telemetry::shutdown_signal();
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
                    let resync = rep.state.is_none();
                    f.set(|i| {
                        i.master_connected = false;
                        if was_following {
                            i.lost_at = Some(Instant::now());
                        }
                        if resync {
                            i.caught_up = false;
                        }
                    });
                    if was_following {
                        retries.reset();
                    }
                    let new_connection = f.reconnect_after(&e);
                    if let Some(n) = retries.failed(Instant::now()) {
                        tracing::warn!(error = %format!("{e:#}"), master = %args.master, failed_attempts = n, new_connection, "not following the master; retrying every {RETRY:?}");
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
                client_auth.clone(),
            );
            let ended = server::serve(running).await;
            watch.abort();
            grpc.abort();
            ready_task.abort();
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
        args.tls.load(alces_proto::tls::Role::Server)?,
        &args.tuning,
    );
    let running = server::start(opts).await?;
    Ok((running, epoch, version))
}
