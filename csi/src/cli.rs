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
use crate::node::{NodeConfig, NodeService};
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

    /// TLS to the masters and chunkservers (the controller's calls and every
    /// volume's mount).
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,

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
    /// Serve the Identity and Node services (one per node, privileged, with
    /// the kubelet directory mounted with Bidirectional propagation).
    Node(NodeArgs),
    /// Serve Identity, Controller and Node on one socket (tests, single-node
    /// setups).
    All(AllArgs),
    /// Hold a copy of every staged volume's FUSE descriptor and state memfd,
    /// in a process (on Kubernetes, a container) apart from the node plugin, so
    /// a volume's connection survives its daemon and the plugin dying together;
    /// the restarted plugin takes the descriptors back and continues it.
    Hold(HoldArgs),
}

/// Flags of the descriptor holder.
#[derive(clap::Args, Debug, Clone)]
pub struct HoldArgs {
    /// The node plugin's state directory (records of staged volumes).
    #[arg(
        long,
        env = "ALCES_CSI_STATE_DIR",
        default_value = "/var/lib/alces-csi"
    )]
    pub state_dir: PathBuf,
}

/// Flags of the node plugin.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Endpoint and telemetry.
    #[command(flatten)]
    pub serve: ServeArgs,

    /// This node's id (NodeGetInfo); default: the host name.
    #[arg(long, env = "ALCES_CSI_NODE_ID")]
    pub node_id: Option<String>,

    /// The kubelet's directory: staging and target paths outside it are refused.
    #[arg(
        long,
        env = "ALCES_CSI_KUBELET_DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_dir: PathBuf,

    /// Directory on the host for records of staged volumes and mount logs
    /// (a hostPath on Kubernetes, so a restarted plugin finds them).
    #[arg(
        long,
        env = "ALCES_CSI_STATE_DIR",
        default_value = "/var/lib/alces-csi"
    )]
    pub state_dir: PathBuf,

    /// The alces-mount binary (default: next to alces-csi, else on PATH).
    #[arg(long, env = "ALCES_CSI_MOUNT_BIN")]
    pub mount_bin: Option<PathBuf>,

    /// File holding the cluster secret used when a call carries none (else
    /// ALCES_SECRET, if set).
    #[arg(long, env = "ALCES_SECRET_FILE")]
    pub node_secret_file: Option<PathBuf>,
}

/// Flags of the combined plugin.
#[derive(clap::Args, Debug, Clone)]
pub struct AllArgs {
    /// Controller flags.
    #[command(flatten)]
    pub controller: ControllerArgs,

    /// This node's id (NodeGetInfo); default: the host name.
    #[arg(long, env = "ALCES_CSI_NODE_ID")]
    pub node_id: Option<String>,

    /// The kubelet's directory: staging and target paths outside it are refused.
    #[arg(
        long,
        env = "ALCES_CSI_KUBELET_DIR",
        default_value = "/var/lib/kubelet"
    )]
    pub kubelet_dir: PathBuf,

    /// Directory for records of staged volumes and mount logs.
    #[arg(
        long,
        env = "ALCES_CSI_STATE_DIR",
        default_value = "/var/lib/alces-csi"
    )]
    pub state_dir: PathBuf,

    /// The alces-mount binary (default: next to alces-csi, else on PATH).
    #[arg(long, env = "ALCES_CSI_MOUNT_BIN")]
    pub mount_bin: Option<PathBuf>,
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

    /// Give every new volume a credential scoped to its directory, kept in
    /// the Secret `alces-vol-<volume name>` of this Kubernetes namespace
    /// (for the StorageClass's node-stage secret), and revoke it with the
    /// volume. Needs the Kubernetes API (in-cluster, or KUBECONFIG). Without
    /// it nodes mount with the secret the StorageClass names.
    #[arg(long, env = "ALCES_CSI_VOLUME_SECRET_NAMESPACE")]
    pub volume_secret_namespace: Option<String>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    alces_proto::geometry::parse_size(s)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    alces_telemetry::init_logging(cli.log_json);
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
    match rt.block_on(run(cli.role, cli.tls)) {
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

async fn run(role: Role, tls: alces_proto::tls::TlsArgs) -> anyhow::Result<()> {
    match role {
        Role::Controller(a) => {
            let (c, probe) = controller_service(&a, &tls).await?;
            serve(&a.serve, probe, Some(c), None).await
        }
        Role::Node(a) => {
            let secret = default_secret(a.node_secret_file.as_deref())?;
            let n = node_service(
                a.node_id,
                a.kubelet_dir,
                a.state_dir,
                a.mount_bin,
                secret,
                &tls,
            )?;
            let probe: ProbeFn = Arc::new(|| Box::pin(async { Ok(()) }));
            serve(&a.serve, probe, None, Some(n)).await
        }
        Role::Hold(a) => crate::node::holder::run(a.state_dir).await,
        Role::All(a) => {
            let (c, probe) = controller_service(&a.controller, &tls).await?;
            let secret = default_secret(a.controller.secret_file.as_deref())?;
            let n = node_service(
                a.node_id,
                a.kubelet_dir,
                a.state_dir,
                a.mount_bin,
                secret,
                &tls,
            )?;
            serve(&a.controller.serve, probe, Some(c), Some(n)).await
        }
    }
}

fn node_service(
    node_id: Option<String>,
    kubelet_dir: PathBuf,
    state_dir: PathBuf,
    mount_bin: Option<PathBuf>,
    default_secret: Option<Arc<str>>,
    tls: &alces_proto::tls::TlsArgs,
) -> anyhow::Result<NodeService> {
    // Checked here, so a bad flag stops the plugin instead of every mount.
    tls.load(alces_proto::tls::Role::Client)?;
    let node_id = match node_id {
        Some(n) if !n.trim().is_empty() => n,
        _ => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .map_err(|e| anyhow::anyhow!("no --node-id and cannot read the host name: {e}"))?,
    };
    if !kubelet_dir.is_absolute() {
        anyhow::bail!(
            "--kubelet-dir {} must be an absolute path",
            kubelet_dir.display()
        );
    }
    let mount_bin = match mount_bin {
        Some(b) => b,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("alces-mount")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("alces-mount")),
    };
    NodeService::new(NodeConfig {
        node_id,
        kubelet_dir,
        state_dir,
        mount_bin,
        default_secret,
        tls_flags: tls.to_flags(),
    })
}

/// The volume credentials of `--volume-secret-namespace`, if given.
async fn volume_credentials(
    namespace: Option<&str>,
) -> anyhow::Result<Option<crate::controller::credentials::VolumeCredentials>> {
    let Some(ns) = namespace else { return Ok(None) };
    crate::ids::validate_dns_label("--volume-secret-namespace", ns)
        .map_err(|e| anyhow::anyhow!("{e} (a Kubernetes namespace name)"))?;
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "--volume-secret-namespace {ns}: cannot reach the Kubernetes API ({e}); run in a pod with a ServiceAccount token, or set KUBECONFIG"
        )
    })?;
    let store = crate::controller::credentials::KubeSecrets::new(client, ns);
    Ok(Some(
        crate::controller::credentials::VolumeCredentials::new(Arc::new(store)),
    ))
}

async fn controller_service(
    a: &ControllerArgs,
    tls: &alces_proto::tls::TlsArgs,
) -> anyhow::Result<(ControllerService, ProbeFn)> {
    let default = a
        .master
        .as_deref()
        .map(ClusterRef::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--master: {e}"))?;
    let list_root = crate::ids::validate_dir_path("--list-root", &a.list_root)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secret = default_secret(a.secret_file.as_deref())?;
    let clusters = Arc::new(
        Clusters::new(default, secret).with_tls(tls.load(alces_proto::tls::Role::Client)?),
    );
    let mut controller = ControllerService::new(
        clusters.clone(),
        ControllerConfig {
            default_capacity: a.default_capacity,
            list_root,
        },
    );
    if let Some(creds) = volume_credentials(a.volume_secret_namespace.as_deref()).await? {
        controller = controller.with_volume_credentials(creds);
    }
    let probe: ProbeFn = Arc::new(move || {
        let c = clusters.clone();
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
    Ok((controller, probe))
}

async fn serve(
    args: &ServeArgs,
    probe: ProbeFn,
    controller: Option<ControllerService>,
    node: Option<NodeService>,
) -> anyhow::Result<()> {
    let (metrics, health) = telemetry(args).await?;
    if let Some(n) = &node {
        n.set_metrics(metrics.clone());
    }
    let keepers = node.as_ref().map(NodeService::keepers);
    let identity = IdentityService::new(controller.is_some(), probe);
    let path = socket_path(&args.endpoint).map_err(anyhow::Error::msg)?;
    let listener = bind_unix(&path)?;
    tracing::info!(
        endpoint = %path.display(),
        controller = controller.is_some(),
        node = node.is_some(),
        "serving CSI"
    );
    health.set_ready(true);
    tonic::transport::Server::builder()
        .layer(MetricsLayer(metrics))
        .add_service(pb::identity_server::IdentityServer::new(identity))
        .add_optional_service(controller.map(pb::controller_server::ControllerServer::new))
        .add_optional_service(node.map(pb::node_server::NodeServer::new))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(listener),
            alces_telemetry::shutdown_signal(),
        )
        .await?;
    if let Some(k) = keepers {
        crate::node::stop_supervising(&k);
    }
    Ok(())
}

async fn telemetry(serve: &ServeArgs) -> anyhow::Result<(CsiMetrics, alces_telemetry::Health)> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = CsiMetrics::new(&mut registry);
    let health = alces_telemetry::Health::new(registry);
    if let Some(addr) = serve.http_listen {
        let bound = alces_telemetry::serve_http(addr, health.clone()).await?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    Ok((metrics, health))
}
