//! The `alces` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Administer an Alces filesystem cluster.
#[derive(Debug, Parser)]
#[command(name = "alces", version, about, long_about = None)]
pub struct Cli {
    /// Options every command understands.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Address (host:port) of the master's gRPC endpoint. When unset and ALCES_LOCAL_DIR
    /// points at an `alces local` directory, the master of that cluster is used.
    #[arg(long, global = true, env = "ALCES_MASTER")]
    pub master: Option<String>,
    /// File holding the cluster secret; when unset the secret is read from $ALCES_SECRET.
    #[arg(long, global = true, env = "ALCES_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole cluster (master, chunkservers, a mount) on this machine.
    #[command(subcommand)]
    Local(LocalCommand),
    /// Show the cluster: epoch, metadata version, chunkservers, metaloggers, chunk health.
    Status,
    /// Show a file's chunks, their versions and where each copy lives.
    Fileinfo(FileinfoArgs),
    /// Make a metalogger the master (after the master died, or --switchover).
    Promote(PromoteArgs),
}

/// Options of `alces promote`.
#[derive(Debug, Clone, Args)]
pub struct PromoteArgs {
    /// The metalogger: its gRPC address (host:port), or with ALCES_LOCAL_DIR set,
    /// its name in the local cluster (e.g. ml1).
    pub metalogger: String,
    /// Planned handover while the master is alive: the master stops accepting
    /// mutations, the metalogger catches up, becomes master, the old one rejoins
    /// as a metalogger.
    #[arg(long)]
    pub switchover: bool,
    /// Promote even if another reachable metalogger holds a newer version (the
    /// difference is lost).
    #[arg(long)]
    pub force: bool,
}

/// `alces local ...`.
#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start a local cluster in DIR and mount it at MNT.
    Up(UpArgs),
    /// Stop the local cluster in DIR (unmount, stop every process). Safe to repeat.
    Down(DownArgs),
}

/// Options of `alces local up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Directory for the cluster's data, logs, pid files, secret and env file.
    #[arg(long)]
    pub dir: PathBuf,
    /// Where to mount the filesystem; created if missing, must be an empty directory.
    #[arg(long)]
    pub mount: PathBuf,
    /// Number of chunkservers to start.
    #[arg(long, default_value_t = 3)]
    pub chunkservers: u32,
    /// Number of metaloggers to start (each can be promoted with `alces promote mlN`).
    #[arg(long, default_value_t = 1)]
    pub metaloggers: u32,
    /// Chunk size of a new filesystem (e.g. 1MiB, 64MiB); default: the master's default.
    #[arg(long)]
    pub chunk_size: Option<String>,
    /// Default goal (copies per chunk, 1-9) of a new filesystem; default: the master's default.
    #[arg(long)]
    pub default_goal: Option<u32>,
    /// Seconds to wait for each process to become ready before giving up.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Return once the cluster is up and leave it running (stop it with `alces local down`).
    /// Without it, `alces` stays in the foreground and Ctrl-C stops the cluster.
    #[arg(long)]
    pub detach: bool,
}

/// Options of `alces local down`.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Directory of the cluster, as given to `alces local up`.
    #[arg(long)]
    pub dir: PathBuf,
}

/// Options of `alces fileinfo`.
#[derive(Debug, Clone, Args)]
pub struct FileinfoArgs {
    /// The file: a path inside an Alces mount, or (with --fs-path) an absolute path
    /// from the filesystem's root.
    pub path: PathBuf,
    /// Treat PATH as a path from the filesystem root instead of a local path.
    #[arg(long)]
    pub fs_path: bool,
}
