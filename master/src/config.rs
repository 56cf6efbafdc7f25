//! Command-line flags of `alces-master`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

fn parse_threshold(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "rebalance threshold '{s}' is not a number of percentage points from 0 to 100"
        )),
    }
}

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    alces_proto::geometry::validate_chunk_size(alces_proto::geometry::parse_size(s)?)
}

/// The Alces master: holds the namespace and the chunk map in memory, persists
/// them as changelog + snapshots in --data-dir, and serves clients (Master),
/// chunkservers (ChunkMaster) and administrators (Admin) over gRPC.
#[derive(Debug, Clone, Parser)]
#[command(name = "alces-master", version)]
pub struct Args {
    /// gRPC listen address for the Master, ChunkMaster and Admin services.
    #[arg(long, env = "ALCES_MASTER_LISTEN", default_value = "0.0.0.0:9421")]
    pub listen: SocketAddr,

    /// HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ALCES_MASTER_HTTP_LISTEN", default_value = "0.0.0.0:9431")]
    pub http_listen: SocketAddr,

    /// Directory for changelogs, snapshots, the epoch and the lock file. An empty
    /// (or new) directory formats a new filesystem.
    #[arg(long, env = "ALCES_MASTER_DATA_DIR")]
    pub data_dir: PathBuf,

    /// File holding the cluster secret (else the ALCES_SECRET environment variable).
    #[arg(long, env = "ALCES_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// Tuning of the master (shared with alces-metalogger, which uses them once promoted).
    #[command(flatten)]
    pub tuning: Tuning,

    /// TLS on the gRPC port and on this master's connections to chunkservers.
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,

    /// Master address to follow as a metalogger after being deposed (a newer
    /// master took over); default: this master's --listen address (the address
    /// a promoted metalogger takes over), with 127.0.0.1 for an unspecified IP.
    #[arg(long, env = "ALCES_REJOIN_MASTER")]
    pub rejoin_master: Option<String>,

    /// Listen address of the metalogger service after being deposed.
    #[arg(long, env = "ALCES_REJOIN_LISTEN", default_value = "0.0.0.0:9423")]
    pub rejoin_listen: SocketAddr,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    pub log_json: bool,
}

/// Flags that tune a running master, shared by `alces-master` and
/// `alces-metalogger` (a promoted metalogger runs a master with them), with the
/// same names and environment variables in both.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Master tuning (alces-master and a promoted alces-metalogger)")]
pub struct Tuning {
    /// Chunk size of a new filesystem (1MiB..64MiB, a multiple of 64KiB); an
    /// existing filesystem keeps the size it was created with.
    #[arg(long, env = "ALCES_CHUNK_SIZE", default_value = "64MiB", value_parser = parse_chunk_size)]
    pub chunk_size: u64,

    /// Goal (copies per chunk, 1-9) of the root directory of a new filesystem;
    /// new entries inherit their parent's goal.
    #[arg(long, env = "ALCES_DEFAULT_GOAL", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub default_goal: u32,

    /// Client session lease in seconds: a session not renewed for this long is
    /// closed and its open files released; orphans left after a restart are kept
    /// this long for clients to reclaim.
    #[arg(long, env = "ALCES_SESSION_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=86400))]
    pub session_timeout: u32,

    /// Grace in seconds, counted from a chunkserver's last heartbeat, before its
    /// copies stop counting toward goals and are re-replicated elsewhere. The
    /// server is shown disconnected long before (--chunkserver-disconnect-ms);
    /// one back within the grace keeps its copies and nothing is re-copied.
    #[arg(long, env = "ALCES_CHUNKSERVER_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub chunkserver_timeout: u64,

    /// Milliseconds without a heartbeat (sent every second) after which a
    /// chunkserver is shown disconnected (`alces status`, Admin.Status): it
    /// gets no new chunks, sessions and replications avoid it, but its copies
    /// still count until --chunkserver-timeout.
    #[arg(long, env = "ALCES_CHUNKSERVER_DISCONNECT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(2000..=600_000))]
    pub chunkserver_disconnect_ms: u64,

    /// Seconds between background snapshots (one is also taken after 1,000,000
    /// changelog records and on graceful shutdown).
    #[arg(long, env = "ALCES_SNAPSHOT_INTERVAL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub snapshot_interval: u64,

    /// Replications (copies of under-goal, drained or rebalanced chunks) the
    /// master starts per second. Lower keeps more bandwidth for clients; higher
    /// heals faster.
    #[arg(long, env = "ALCES_REPLICATION_RATE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub replication_rate: u32,

    /// Replications one chunkserver receives at once.
    #[arg(long, env = "ALCES_REPLICATIONS_PER_SERVER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub replications_per_server: u32,

    /// Rebalance when the disk usage of the fullest and the emptiest chunkserver
    /// differ by more than this many percentage points (0-100).
    #[arg(long, env = "ALCES_REBALANCE_THRESHOLD", default_value_t = 10.0, value_parser = parse_threshold)]
    pub rebalance_threshold: f64,

    /// Metaloggers that must hold a mutation durably before it is acknowledged
    /// (0: acknowledge after the master's own fsync).
    #[arg(long, env = "ALCES_SYNC_METALOGGERS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub sync_metaloggers: u32,

    /// Milliseconds a mutation waits for --sync-metaloggers metaloggers (at least
    /// 3000: the chunkserver quorum window); then the master degrades (loud
    /// error, status condition) and acknowledges after its own fsync until
    /// enough metaloggers are back — but only while more than half of its
    /// chunkservers were heard in the last 3 s (a master cut off from them keeps
    /// waiting).
    #[arg(long, env = "ALCES_SYNC_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub sync_timeout_ms: u64,

    /// Most file locks (flock and POSIX ranges) one client session may hold;
    /// past it a lock request fails with ENOLCK.
    #[arg(long, env = "ALCES_MAX_LOCKS_PER_SESSION", default_value_t = crate::runtime::locks::LockCaps::PER_SESSION as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub max_locks_per_session: u64,

    /// Most file locks the master holds over all sessions (about 100 bytes
    /// each); past it a lock request fails with ENOLCK.
    #[arg(long, env = "ALCES_MAX_LOCKS", default_value_t = crate::runtime::locks::LockCaps::TOTAL as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub max_locks: u64,
}

impl Tuning {
    /// The replication pace these flags give.
    pub fn policy(&self) -> crate::runtime::chunkmap::Policy {
        crate::runtime::chunkmap::Policy {
            per_tick: self.replication_rate as usize,
            per_server: self.replications_per_server as usize,
            rebalance_threshold: self.rebalance_threshold,
        }
    }

    /// The caps on the lock table.
    pub fn lock_caps(&self) -> crate::runtime::locks::LockCaps {
        crate::runtime::locks::LockCaps {
            per_session: usize::try_from(self.max_locks_per_session).unwrap_or(usize::MAX),
            total: usize::try_from(self.max_locks).unwrap_or(usize::MAX),
        }
    }

    /// Command-line flags that reproduce these values (to start another
    /// process of the cluster, e.g. a deposed master rejoining as a metalogger,
    /// with the same tuning).
    pub fn to_flags(&self) -> Vec<std::ffi::OsString> {
        let pairs: [(&str, String); 13] = [
            ("--chunk-size", self.chunk_size.to_string()),
            ("--default-goal", self.default_goal.to_string()),
            ("--session-timeout", self.session_timeout.to_string()),
            (
                "--chunkserver-timeout",
                self.chunkserver_timeout.to_string(),
            ),
            (
                "--chunkserver-disconnect-ms",
                self.chunkserver_disconnect_ms.to_string(),
            ),
            ("--snapshot-interval", self.snapshot_interval.to_string()),
            ("--replication-rate", self.replication_rate.to_string()),
            (
                "--replications-per-server",
                self.replications_per_server.to_string(),
            ),
            (
                "--rebalance-threshold",
                self.rebalance_threshold.to_string(),
            ),
            ("--sync-metaloggers", self.sync_metaloggers.to_string()),
            ("--sync-timeout-ms", self.sync_timeout_ms.to_string()),
            (
                "--max-locks-per-session",
                self.max_locks_per_session.to_string(),
            ),
            ("--max-locks", self.max_locks.to_string()),
        ];
        pairs
            .into_iter()
            .flat_map(|(k, v)| [k.into(), v.into()])
            .collect()
    }
}

/// Flags of `alces-metalogger`.
///
/// A metalogger follows the master's changelog into an in-memory replica and
/// its own data directory, and becomes the master when promoted
/// (`alces promote`).
#[derive(Debug, Clone, Parser)]
#[command(name = "alces-metalogger", version)]
pub struct MetaloggerArgs {
    /// Address of the master to follow (host:port, re-resolved on every reconnect).
    #[arg(long, env = "ALCES_MASTER")]
    pub master: String,

    /// gRPC listen address of this metalogger's own service (status, promote).
    #[arg(long, env = "ALCES_METALOGGER_LISTEN", default_value = "0.0.0.0:9423")]
    pub listen: SocketAddr,

    /// Address the master and other metaloggers use to reach this one; default:
    /// the listen address if its IP is not unspecified, else <hostname>:<port>.
    #[arg(long, env = "ALCES_METALOGGER_ADVERTISE")]
    pub advertise: Option<String>,

    /// Optional HTTP listen address for /metrics, /healthz and /readyz.
    #[arg(long, env = "ALCES_METALOGGER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Directory for this metalogger's snapshots, changelogs, epoch and id; after
    /// a promotion it is the master's data directory.
    #[arg(long, env = "ALCES_METALOGGER_DATA_DIR")]
    pub data_dir: PathBuf,

    /// File holding the cluster secret (else the ALCES_SECRET environment variable).
    #[arg(long, env = "ALCES_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,

    /// TLS on this metalogger's port, its connection to the master, and the
    /// master it becomes when promoted.
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,

    /// Write a local snapshot after this many changelog records.
    #[arg(long, env = "ALCES_METALOGGER_SNAPSHOT_RECORDS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_records: u64,

    /// Drop the local metadata (moved to <data-dir>/dropped.<time>/) and fetch a
    /// fresh snapshot: used by a deposed master rejoining, so a tail it never
    /// had acknowledged is not kept.
    #[arg(long, env = "ALCES_METALOGGER_RESYNC")]
    pub resync: bool,

    /// gRPC listen address of the master this metalogger becomes when promoted
    /// (the address clients and chunkservers use for the master).
    #[arg(
        long,
        env = "ALCES_METALOGGER_PROMOTE_LISTEN",
        default_value = "0.0.0.0:9421"
    )]
    pub promote_listen: SocketAddr,

    /// HTTP listen address of the master after promotion.
    #[arg(long, env = "ALCES_METALOGGER_PROMOTE_HTTP_LISTEN")]
    pub promote_http_listen: Option<SocketAddr>,

    /// How the master this metalogger becomes when promoted is tuned: the same
    /// flags (and ALCES_* variables) as alces-master's, so give both the same values.
    #[command(flatten)]
    pub tuning: Tuning,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    pub log_json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuning_flags_round_trip_from_master_to_metalogger() {
        let m = Args::try_parse_from([
            "alces-master",
            "--data-dir",
            "/d",
            "--chunk-size",
            "2MiB",
            "--default-goal",
            "3",
            "--session-timeout",
            "21",
            "--chunkserver-timeout",
            "9",
            "--chunkserver-disconnect-ms",
            "2500",
            "--snapshot-interval",
            "77",
            "--replication-rate",
            "7",
            "--replications-per-server",
            "3",
            "--rebalance-threshold",
            "25.5",
            "--sync-metaloggers",
            "1",
            "--sync-timeout-ms",
            "1234",
        ])
        .expect("master flags");
        let mut argv: Vec<std::ffi::OsString> =
            ["alces-metalogger", "--master", "m:1", "--data-dir", "/x"]
                .iter()
                .map(Into::into)
                .collect();
        argv.extend(m.tuning.to_flags());
        let ml = MetaloggerArgs::try_parse_from(argv).expect("metalogger flags");
        let (a, b) = (&m.tuning, &ml.tuning);
        assert_eq!(
            (
                a.chunk_size,
                a.default_goal,
                a.session_timeout,
                a.chunkserver_timeout
            ),
            (2 << 20, 3, 21, 9)
        );
        assert_eq!(
            (
                b.chunk_size,
                b.default_goal,
                b.session_timeout,
                b.chunkserver_timeout
            ),
            (
                a.chunk_size,
                a.default_goal,
                a.session_timeout,
                a.chunkserver_timeout
            )
        );
        assert_eq!(
            (
                b.snapshot_interval,
                b.replication_rate,
                b.replications_per_server
            ),
            (77, 7, 3)
        );
        assert_eq!(b.rebalance_threshold, 25.5);
        assert_eq!((b.sync_metaloggers, b.sync_timeout_ms), (1, 1234));
        assert_eq!(b.chunkserver_disconnect_ms, 2500);
        let p = b.policy();
        assert_eq!((p.per_tick, p.per_server), (7, 3));
    }
}
