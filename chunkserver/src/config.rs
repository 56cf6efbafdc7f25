//! Command-line flags (each also settable through an `ALCES_*` variable).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// Stores chunks on local disks and serves them to Alces clients and peers.
#[derive(Parser, Debug, Clone)]
#[command(name = "alces-chunkserver", version, about)]
pub struct Args {
    /// Master address (host:port); the name is resolved again on every reconnect.
    #[arg(long, env = "ALCES_MASTER")]
    pub master: String,

    /// Address to serve the chunk gRPC service on.
    #[arg(long, env = "ALCES_CHUNKSERVER_LISTEN", default_value = "0.0.0.0:9422")]
    pub listen: SocketAddr,

    /// Address given to the master and clients (host:port). Default: the listen
    /// address if its IP is not unspecified, else <hostname>:<port>.
    #[arg(long, env = "ALCES_CHUNKSERVER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(
        long,
        env = "ALCES_CHUNKSERVER_HTTP_LISTEN",
        default_value = "0.0.0.0:9432"
    )]
    pub http_listen: SocketAddr,

    /// Data directory, one per disk (repeat the flag; the variable takes a
    /// comma-separated list). The first one also holds the server identity.
    #[arg(
        long = "data-dir",
        env = "ALCES_CHUNKSERVER_DATA_DIRS",
        value_delimiter = ',',
        required = true
    )]
    pub data_dirs: Vec<PathBuf>,

    /// Failure domain of this server (zone, rack); the master spreads copies across labels.
    #[arg(long, env = "ALCES_CHUNKSERVER_LABEL", default_value = "")]
    pub label: String,

    /// File holding the cluster secret (else the ALCES_SECRET variable is used).
    #[arg(long, env = "ALCES_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// TLS on the chunk port (clients, the master, peers in a write chain) and
    /// on this server's connections to the master and to peers.
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,

    /// Rate of background CRC verification of stored chunks, e.g. 32MiB; 0 disables it.
    #[arg(
        long,
        env = "ALCES_CHUNKSERVER_SCRUB_BYTES_PER_SEC",
        default_value = "32MiB",
        value_parser = alces_proto::geometry::parse_size
    )]
    pub scrub_bytes_per_sec: u64,

    /// Heartbeat period to the master in milliseconds (the master may ask for another).
    #[arg(long, env = "ALCES_CHUNKSERVER_HEARTBEAT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,

    /// Chunk files kept open between operations (least recently used closed
    /// first); 0 opens the file for every operation. The process's soft limit
    /// on open files is raised to its hard limit at startup, and this number is
    /// lowered to half of that limit if it is larger.
    #[arg(long, env = "ALCES_CHUNKSERVER_OPEN_FILES", default_value_t = crate::open_files::DEFAULT_OPEN_FILES)]
    pub open_files: usize,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    pub log_json: bool,
}
