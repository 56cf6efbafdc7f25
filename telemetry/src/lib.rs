//! Logging, metrics and health endpoints shared by every Alces daemon
//! (master, metalogger, chunkserver, mount, operator, CSI driver). Depends on
//! no other Alces crate.

#![warn(missing_docs)]

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

/// Sets up `tracing` for a daemon: level from `RUST_LOG` (default `info`), format
/// human or JSON, to stderr.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests) is harmless.
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// What the health endpoint serves.
#[derive(Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
    registry: Arc<Mutex<Registry>>,
}

impl Health {
    /// A health state over `registry`, not ready until [`Health::set_ready`].
    pub fn new(registry: Registry) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Marks the daemon ready (or not) to serve; `/readyz` follows it.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    let mut out = String::new();
    let reg = h.registry.lock().unwrap_or_else(|e| e.into_inner());
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "encoding failed\n".to_string(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` (alive) and `/readyz` (ready to
/// serve) until the process ends. Returns the bound address (useful with port 0).
pub async fn serve_http(addr: SocketAddr, health: Health) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP (metrics/health) on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP endpoint stopped");
        }
    });
    Ok(bound)
}

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// Logs a warning when the process runs as root: `binary` (the master, a
/// metalogger, a chunkserver) needs no privilege, so root only widens what a
/// bug in it could reach. Only a warning: `alces local up` run as root, and
/// existing installations, keep working. Returns whether it warned.
pub fn warn_if_root(binary: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        tracing::warn!(
            "{binary} is running as root, which it does not need: run it as an unprivileged user that owns its data directories (the operator's pods run it as uid 65532)"
        );
    }
    root
}
