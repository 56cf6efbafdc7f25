//! Wiring of a running chunkserver: store scan, gRPC server, HTTP endpoint,
//! master link, scrubber, and graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use alces_proto::auth::{ClientAuth, IdOnly, ServerAuth};
use alces_proto::pb::chunkserver_server::ChunkserverServer;
use alces_proto::MAX_MESSAGE_BYTES;
use alces_telemetry::Health;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::identity::Identity;
use crate::master_link::{LinkConfig, MasterLink};
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::service::ChunkService;
use crate::store::ChunkStore;

/// Everything a chunkserver needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Data directories, one per disk.
    pub data_dirs: Vec<PathBuf>,
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Advertised address; `None` derives it from the listen address.
    pub advertise: Option<String>,
    /// HTTP (metrics/health) listen address; `None` disables it.
    pub http_listen: Option<SocketAddr>,
    /// Master address.
    pub master: String,
    /// Failure-domain label.
    pub label: String,
    /// Cluster secret.
    pub secret: Arc<str>,
    /// TLS of the chunk port and of the connections to the master and peers.
    pub tls: alces_proto::tls::Tls,
    /// Scrub rate in bytes per second (0 = off).
    pub scrub_bytes_per_sec: u64,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Chunk files kept open between operations (see `--open-files`).
    pub open_files: usize,
}

/// A running chunkserver.
pub struct Running {
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address, if serving one.
    pub http_addr: Option<SocketAddr>,
    /// Address advertised to the master.
    pub advertise: String,
    /// This server's id.
    pub server_id: u64,
    /// The chunk store.
    pub store: Arc<ChunkStore>,
    health: Health,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Serves until `signal` resolves (then shuts down gracefully) or the gRPC
    /// server fails.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => self.shutdown().await,
            res = &mut self.server => {
                for b in &self.background {
                    b.abort();
                }
                match res {
                    Ok(Ok(())) => Err(anyhow::anyhow!("gRPC server stopped unexpectedly")),
                    Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
                    Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
                }
            }
        }
    }

    /// Stops accepting calls, lets in-flight calls finish, stops background tasks.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.health.set_ready(false);
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for b in &self.background {
            b.abort();
        }
        let res = (&mut self.server).await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
            Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
        }
    }
}

/// The advertised address for a listen address (see `--advertise`).
pub fn default_advertise(bound: SocketAddr) -> String {
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_string()
    } else {
        String::new()
    };
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        host
    };
    format!("{host}:{}", bound.port())
}

/// Starts a chunkserver: scans the disks, listens, and starts the master link
/// and the scrubber. Ready once it returns.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    alces_proto::net::validate_addr(&cfg.master).map_err(|e| anyhow::anyhow!("--master: {e}"))?;
    if let Some(a) = &cfg.advertise {
        alces_proto::net::validate_addr(a).map_err(|e| anyhow::anyhow!("--advertise: {e}"))?;
    }
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let health = Health::new(registry);
    let http_addr = match cfg.http_listen {
        Some(a) => Some(alces_telemetry::serve_http(a, health.clone()).await?),
        None => None,
    };

    let dirs = cfg.data_dirs.clone();
    let identity = Arc::new(
        tokio::task::spawn_blocking(move || Identity::load(&dirs))
            .await
            .map_err(|e| anyhow::anyhow!("identity loading failed: {e}"))??,
    );
    let dirs = cfg.data_dirs.clone();
    let m = metrics.clone();
    let open_files = crate::open_files::fd_budget(cfg.open_files);
    let store = Arc::new(
        tokio::task::spawn_blocking(move || ChunkStore::open_with(&dirs, m, open_files))
            .await
            .map_err(|e| anyhow::anyhow!("chunk scan failed: {e}"))??,
    );

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for gRPC on {}: {e}", cfg.listen))?;
    let grpc_addr = listener.local_addr()?;
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| default_advertise(grpc_addr));

    let auth = ClientAuth::new(&cfg.secret)?.with_tls(&cfg.tls);
    let peers = Arc::new(Peers::new(auth.clone()));
    let revoked = Arc::new(crate::revoked::Revoked::new());
    let service = ChunkService::new(store.clone(), peers.clone())
        .with_access_secret(cfg.secret.clone())
        .with_revocations(revoked.clone());
    let server = ChunkserverServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // A client may present a credential: its calls must then carry a chunk
    // access the master signed (`ChunkService::admit`).
    let svc = InterceptedService::new(
        server,
        ServerAuth::new(cfg.secret.clone()).with_credentials(Arc::new(IdOnly)),
    );
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            // No Nagle delay: small reads and acknowledgements are latency-bound.
            .serve_with_incoming_shutdown(alces_proto::net::incoming(listener, &cfg.tls), async {
                let _ = stop_rx.await;
            }),
    );

    let link = MasterLink::new(
        LinkConfig {
            master: cfg.master.clone(),
            advertise: advertise.clone(),
            label: cfg.label.clone(),
            heartbeat: cfg.heartbeat,
        },
        store.clone(),
        identity.clone(),
        peers,
        &auth,
    )?
    .with_revocations(revoked);
    let mut background = vec![tokio::spawn(link.run())];
    background.push(tokio::spawn(crate::scrubber::run(
        store.clone(),
        cfg.scrub_bytes_per_sec,
    )));
    let s = store.clone();
    background.push(tokio::spawn(async move {
        loop {
            let st = s.clone();
            if let Ok(disks) = tokio::task::spawn_blocking(move || st.disk_infos()).await {
                for d in disks {
                    let l = vec![("disk".to_string(), d.path.clone())];
                    s.metrics()
                        .disk_total_bytes
                        .get_or_create(&l)
                        .set(d.total_bytes as i64);
                    s.metrics()
                        .disk_free_bytes
                        .get_or_create(&l)
                        .set(d.free_bytes as i64);
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }));

    health.set_ready(true);
    tracing::info!(
        grpc = %grpc_addr,
        http = %http_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".to_string()),
        advertise = %advertise,
        server_id = identity.server_id,
        chunks = store.len(),
        "chunkserver ready"
    );
    Ok(Running {
        grpc_addr,
        http_addr,
        advertise,
        server_id: identity.server_id,
        store,
        health,
        stop: Some(stop_tx),
        server,
        background,
    })
}
