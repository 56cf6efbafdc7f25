//! Command-line flags of `alces-bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Benchmark Alces side by side with MooseFS 3.0, a local directory and a no-op FUSE
/// filesystem, on this machine, in one run.
#[derive(Debug, Parser)]
#[command(name = "alces-bench", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workloads on every system and print one markdown table.
    All(RunArgs),
    /// Remove what a previous (crashed) run left behind: mounts, processes, the network
    /// namespace and the work directory.
    Cleanup(CleanupArgs),
    /// Failover figures on local Alces clusters: SIGKILL of the master to the first
    /// acknowledged write on a promoted metalogger, the switchover pause, and the
    /// metadata rate with sync_metaloggers=1 as a ratio of the rate with 0.
    Failover(FailoverArgs),
    /// Self-healing figures on a local Alces cluster (3 chunkservers, goal 2): the
    /// time from a chunkserver's SIGKILL to every chunk back at goal, and the
    /// foreground write throughput during the repair as a ratio of a healthy one.
    Repair(RepairArgs),
    /// Snapshot figures on a local Alces cluster: the time to snapshot a tree of
    /// many files and the master's memory per snapshot entry.
    Snapshot(SnapshotArgs),
    /// The operator's failover figures on local Alces clusters: SIGKILL of the master
    /// to promotion and to the first acknowledged operation, with the operator's
    /// detection, next to the previous defaults and to detection excluded.
    OperatorFailover(crate::operator_figures::OperatorFailoverArgs),
    /// The operator's reconcile figures against a real API server (shared/k8s): API
    /// writes per steady-state reconcile and its duration, next to one API GET and one
    /// master status call.
    OperatorReconcile(crate::operator_figures::OperatorReconcileArgs),
    /// A mount served as the CSI node plugin serves one (handed-over /dev/fuse
    /// descriptor and state memfd, write journal) against a plain alces-mount
    /// mount of the same local cluster: sequential write, read and metadata
    /// rates as ratios.
    Handover(HandoverArgs),
}

/// Options of `alces-bench handover`.
#[derive(Debug, Clone, Args)]
pub struct HandoverArgs {
    /// MiB of each file written and read.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub mib: u64,
    /// Files created, stat'ed and removed per metadata round.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub files: u64,
    /// Rounds on each mount (alternating); the best of each is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reps: u32,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `alces-bench snapshot`.
#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// Files in the tree that is snapshotted.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub files: u64,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `alces-bench failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Directories created to measure each metadata rate.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub mkdirs: u64,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `alces-bench repair`.
#[derive(Debug, Clone, Args)]
pub struct RepairArgs {
    /// MiB of data written (goal 2) before a chunkserver is killed.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(64..=65536))]
    pub mib: u64,
    /// Seconds without heartbeats before the master declares the chunkserver lost
    /// (its --chunkserver-timeout).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub loss_timeout: u64,
    /// Seconds the foreground writer is measured on the healthy cluster.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub baseline_secs: u64,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `alces-bench all`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Tiny sizes and one repetition (about three minutes): proves that every workload
    /// completes and verifies its data; timings are printed but never asserted.
    #[arg(long, env = "ALCES_BENCH_QUICK")]
    pub quick: bool,
    /// Run only this workload (repeatable). Default: every workload.
    #[arg(long, value_enum)]
    pub only: Vec<Workload>,
    /// Run only on these systems (repeatable). Default: every system.
    #[arg(long, value_enum)]
    pub system: Vec<SystemKind>,
    /// Repetitions of each timed figure (median and min-max are reported).
    /// Default: 3, or 1 with --quick.
    #[arg(long)]
    pub reps: Option<usize>,
    /// Directory for every file the run creates (data dirs, mount points, configs, logs).
    /// Wiped at start and at the end.
    #[arg(long, env = "ALCES_BENCH_DIR", default_value = "/tmp/alces-bench")]
    pub work_dir: PathBuf,
    /// Directory where a full run writes its results as `<date>-<host>.md`.
    /// Quick runs write nothing.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
    pub results_dir: PathBuf,
    /// Fail (exit status 1) when Alces cannot be measured, instead of reporting it as
    /// "not available" and measuring the other systems.
    #[arg(long)]
    pub require_alces: bool,
    /// Do not run `cargo build --release` for the Alces binaries before starting;
    /// use whatever is in the target directory.
    #[arg(long)]
    pub no_build: bool,
    /// Directory holding the Alces binaries (alces, alces-master, alces-chunkserver,
    /// alces-mount). Default: the directory of this executable.
    #[arg(long, env = "ALCES_BIN_DIR")]
    pub alces_bin_dir: Option<PathBuf>,
    /// Files created for the master-memory workload. Default: 1,000,000 (2,000 with --quick).
    #[arg(long)]
    pub rss_files: Option<u64>,
    /// Seconds each fio job runs. Default: 30 (3 with --quick).
    #[arg(long)]
    pub fio_seconds: Option<u64>,
    /// Size of the sequential and random-I/O file in MiB. Default: 1024 (16 with --quick).
    #[arg(long)]
    pub file_mib: Option<u64>,
}

/// Options of `alces-bench cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// The work directory of the run to clean up.
    #[arg(long, env = "ALCES_BENCH_DIR", default_value = "/tmp/alces-bench")]
    pub work_dir: PathBuf,
}

/// The workloads (issue 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Sequential write (1 MiB blocks, fsync at the end) at goal 1 and 2, then cold
    /// and warm sequential reads of the goal-2 file.
    Seq,
    /// Random 4 KiB reads and writes with fio, 1 and 16 requests in flight.
    Fio,
    /// Create, stat, list, rename, unlink of empty files in one directory; mkdir of a tree.
    Meta,
    /// Write then read many 16 KiB files.
    Small,
    /// Master resident memory per file after creating many files.
    Rss,
    /// The small-file and metadata workloads from 4 mounts at once.
    Multi,
    /// CPU time of the filesystem's processes per create, stat, 16 KiB file write
    /// and read, and 1 MiB file write.
    Cpu,
}

/// The systems measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemKind {
    /// Alces, started with `alces local up`.
    Alces,
    /// Alces with mutual TLS on every connection (`alces local up --tls`):
    /// the cost of TLS, next to the Alces column.
    AlcesTls,
    /// MooseFS 3.0 from Debian, inside a network namespace.
    Moosefs,
    /// A plain directory on the local disk.
    Local,
    /// A FUSE filesystem that accepts writes and returns zeros.
    Noop,
}

impl SystemKind {
    /// Every system, in table order.
    pub const ALL: [SystemKind; 5] = [
        SystemKind::Alces,
        SystemKind::AlcesTls,
        SystemKind::Moosefs,
        SystemKind::Local,
        SystemKind::Noop,
    ];

    /// Column title in the table.
    pub fn title(self) -> &'static str {
        match self {
            SystemKind::Alces => "Alces",
            SystemKind::AlcesTls => "Alces TLS",
            SystemKind::Moosefs => "MooseFS",
            SystemKind::Local => "local dir",
            SystemKind::Noop => "no-op FUSE",
        }
    }
}

impl Workload {
    /// Every workload, in run order.
    pub const ALL: [Workload; 7] = [
        Workload::Seq,
        Workload::Fio,
        Workload::Meta,
        Workload::Small,
        Workload::Multi,
        Workload::Cpu,
        Workload::Rss,
    ];
}
