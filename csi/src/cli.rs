//! Command line of `alces-csi`: one subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_stream::wrappers::UnixListenerStream;

use crate::clusters::Clusters;
use crate::controller::{ControllerConfig, ControllerService};
use crate::identity::{IdentityService, ProbeFn};
use crate::ids::ClusterRef;
use crate::metrics::CsiMetrics;
use crate::pb;
use crate::server::{bind_unix, socket_path, MetricsLayer};

/// The Alces CSI driver.
#[derive(Parser, Debug)]
#[command(
    name = "alces-csi",
    version,
    about = "Alces CSI driver (csi.alces.io): Kubernetes volumes as quota'd directories of an Alces filesystem"
)]
pub struct Cli {
    /// Log in JSON instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON", global = true)]
    pub log_json: bool,

    /// What to run.
    #[command(subcommand)]
    pub role: Role,
}

/// The roles of `alces-csi`.
#[derive(Subcommand, Debug)]
pub enum Role {
    /// Serve the Identity and Controller services (one replica per cluster,
    /// next to the CSI provisioner, snapshotter and resizer sidecars).
    Controller(ControllerArgs),
}

/// Flags shared by every gRPC-serving role.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// CSI endpoint: unix:///path/to/csi.sock.
    #[arg(
        long,
        env = "ALCES_CSI_ENDPOINT",
        default_value = "unix:///csi/csi.sock"
    )]
    pub endpoint: String,

    /// Address to serve /metrics, /healthz and /readyz on (off when not given).
    #[arg(long, env = "ALCES_CSI_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
}

/// Flags of the controller.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Endpoint and telemetry.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Default cluster for StorageClasses that name none: an AlcesCluster
    /// namespace/name or a master host:port. ListVolumes and ListSnapshots
    /// without a filter list this cluster.
    #[arg(long, env = "ALCES_MASTER")]
    pub master: Option<String>,

    /// File holding the cluster secret used when a call carries none (a
    /// StorageClass without csi.storage.k8s.io/*-secret-name). Else the
    /// ALCES_SECRET environment variable, if set.
    #[arg(long, env = "ALCES_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Capacity of a volume whose request gives none, in bytes (or with a
    /// unit: 1GiB).
    #[arg(long, env = "ALCES_CSI_DEFAULT_CAPACITY", default_value = "1GiB", value_parser = parse_size)]
    pub default_capacity: u64,

    /// Root folder (holding volumes/ and snapshots/) that ListVolumes and
    /// ListSnapshots without a filter list, on the default cluster.
    #[arg(long, env = "ALCES_CSI_LIST_ROOT", default_value = crate::params::DEFAULT_ROOT)]
    pub list_root: String,
}

fn parse_size(s: &str) -> Result<u64, String> {
    alces_proto::geometry::parse_size(s)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    alces_proto::telemetry::init_logging(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("alces-csi")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alces-csi: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("alces-csi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_secret(file: Option<&std::path::Path>) -> anyhow::Result<Option<Arc<str>>> {
    if file.is_none() && std::env::var_os(alces_proto::auth::SECRET_ENV).is_none() {
        return Ok(None);
    }
    alces_proto::auth::load_secret(file).map(Some)
}

async fn run(role: Role) -> anyhow::Result<()> {
    match role {
        Role::Controller(a) => run_controller(a).await,
    }
}

async fn run_controller(a: ControllerArgs) -> anyhow::Result<()> {
    let default = a
        .master
        .as_deref()
        .map(ClusterRef::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--master: {e}"))?;
    let list_root = crate::ids::validate_dir_path("--list-root", &a.list_root)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = default_secret(a.secret_file.as_deref())?;
    let clusters = Arc::new(Clusters::new(default, secret));
    let controller = ControllerService::new(
        clusters.clone(),
        ControllerConfig {
            default_capacity: a.default_capacity,
            list_root,
        },
    );
    let probe_clusters = clusters.clone();
    let probe: ProbeFn = Arc::new(move || {
        let c = probe_clusters.clone();
        Box::pin(async move {
            match c.default_cluster() {
                None => Ok(()),
                Some(cl) => c
                    .client(cl, &Default::default())
                    .await
                    .map(|_| ())
                    .map_err(|s| s.message().to_string()),
            }
        })
    });
    let (metrics, health) = telemetry(&a.serve).await?;
    let identity = IdentityService::new(true, probe);
    let path = socket_path(&a.serve.endpoint).map_err(anyhow::Error::msg)?;
    let listener = bind_unix(&path)?;
    tracing::info!(endpoint = %path.display(), "serving CSI Identity and Controller");
    health.set_ready(true);
    tonic::transport::Server::builder()
        .layer(MetricsLayer(metrics))
        .add_service(pb::identity_server::IdentityServer::new(identity))
        .add_service(pb::controller_server::ControllerServer::new(controller))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            alces_proto::telemetry::shutdown_signal(),
        )
        .await?;
    Ok(())
}

async fn telemetry(
    serve: &ServeArgs,
) -> anyhow::Result<(CsiMetrics, alces_proto::telemetry::Health)> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CsiMetrics::new(&mut registry);
    let health = alces_proto::telemetry::Health::new(registry);
    if let Some(addr) = serve.http_listen {
        let bound = alces_proto::telemetry::serve_http(addr, health.clone()).await?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    Ok((metrics, health))
}
