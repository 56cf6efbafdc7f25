//! Command-line flags of `alces-operator` (each also an `ALCES_OPERATOR_*`
//! environment variable).

use std::net::SocketAddr;

use clap::Parser;

/// The Alces operator: turns AlcesCluster resources into running clusters,
/// promotes a metalogger when the master fails, drains chunkservers before a
/// scale-down and rolls upgrades one pod at a time.
#[derive(Debug, Clone, Parser)]
#[command(name = "alces-operator", version)]
pub struct Args {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz.
    #[arg(
        long,
        env = "ALCES_OPERATOR_HTTP_LISTEN",
        default_value = "0.0.0.0:9440"
    )]
    pub http_listen: SocketAddr,

    /// TLS of the operator's calls to masters and metaloggers (the same CA
    /// and, with mutual TLS, a client certificate for every cluster).
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,

    /// Directory where the operator writes, per cluster with `spec.tls`, the
    /// CA bundle and client certificate it read from the cluster's Secrets
    /// (keys mode 0600; an emptyDir in a pod). Those clusters use these
    /// instead of the --tls-* flags.
    #[arg(
        long,
        env = "ALCES_OPERATOR_TLS_DIR",
        value_name = "DIR",
        default_value = "/tmp/alces-operator-tls"
    )]
    pub tls_dir: std::path::PathBuf,

    /// Watch AlcesClusters of this namespace only (default: every namespace).
    #[arg(long, env = "ALCES_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Namespace of the leader Lease (default: the POD_NAMESPACE variable,
    /// else `default`).
    #[arg(long, env = "ALCES_OPERATOR_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "ALCES_OPERATOR_LEASE_NAME",
        default_value = "alces-operator"
    )]
    pub lease_name: String,

    /// Seconds a leader Lease holds without renewal (2-300); a standby
    /// replica takes over after this long.
    #[arg(long, env = "ALCES_OPERATOR_LEASE_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_seconds: u64,

    /// This replica's identity in the Lease (default: the POD_NAME variable,
    /// else the host name).
    #[arg(long, env = "ALCES_OPERATOR_IDENTITY")]
    pub identity: Option<String>,

    /// Act without leader election (one replica only; for development).
    #[arg(long, env = "ALCES_OPERATOR_NO_LEADER_ELECTION")]
    pub no_leader_election: bool,

    /// Milliseconds between two health checks of a cluster's master while
    /// nothing is in progress (100-60000).
    #[arg(long, env = "ALCES_OPERATOR_POLL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub poll_ms: u64,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    pub log_json: bool,
}
