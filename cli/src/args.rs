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
    /// File holding a credential token (`alces credential issue`) to present
    /// instead of the cluster secret (also $ALCES_CREDENTIAL, the token itself).
    #[arg(long, global = true, env = "ALCES_CREDENTIAL_FILE")]
    pub credential_file: Option<PathBuf>,
    /// Print machine-readable JSON instead of human-readable text.
    #[arg(long, global = true)]
    pub json: bool,
    /// TLS to the master and metaloggers (when unset and ALCES_LOCAL_DIR points
    /// at an `alces local up --tls` directory, that cluster's CA and certificate).
    #[command(flatten)]
    pub tls: alces_proto::tls::TlsArgs,
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
    /// Set or show goals (copies of each chunk, 1-9) of files and directories.
    #[command(subcommand)]
    Goal(GoalCommand),
    /// Drain a chunkserver before removing it, or end a drain.
    #[command(subcommand)]
    Chunkserver(ChunkserverCommand),
    /// Directory quotas: set, show, remove.
    #[command(subcommand)]
    Quota(QuotaCommand),
    /// Copy-on-write snapshot of a file or a whole tree (instant, shares chunks).
    Snapshot(SnapshotArgs),
    /// Deleted files kept for the trash time: list, restore, purge, trash time.
    #[command(subcommand)]
    Trash(TrashCommand),
    /// Size and inode count of a tree, from the master's counters (no walk).
    Du(PathArgs),
    /// Recompute usage and chunk reference counts on the master and compare them
    /// with the incremental ones; exits non-zero on a mismatch.
    Fsck,
    /// Make a metalogger the master (after the master died, or --switchover).
    Promote(PromoteArgs),
    /// Credentials scoped to a directory (exports): issue, list, revoke.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Give data directories to the unprivileged user the daemons run as
    /// (run as root with CAP_CHOWN only: the operator's init step for
    /// hostPath disks, which the kubelet creates owned by root).
    ChownData(ChownDataArgs),
    /// Certificates for TLS without cert-manager.
    #[command(subcommand)]
    Tls(TlsCommand),
}

/// `alces tls ...`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a CA and a certificate signed by it (server and client usages)
    /// as a Kubernetes TLS Secret wants them: DIR/ca.crt, DIR/tls.crt,
    /// DIR/tls.key (0600) and the CA's key DIR/ca.key (0600; keep it
    /// offline). Prints the `kubectl create secret` command.
    Generate(TlsGenerateArgs),
}

/// Options of `alces tls generate`.
#[derive(Debug, Clone, Args)]
pub struct TlsGenerateArgs {
    /// Where to write the files (created 0700 if missing; files already
    /// there are refused unless --force).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// DNS names or IP addresses the certificate carries (repeat the flag, or
    /// separate with commas; `*.` wildcards allowed in the first label).
    #[arg(long = "names", value_name = "NAME", value_delimiter = ',')]
    pub names: Vec<String>,
    /// Add the names an AlcesCluster of this name needs (its master Service,
    /// metadata and chunkserver pods; with --namespace).
    #[arg(long, value_name = "NAME", requires = "namespace")]
    pub cluster: Option<String>,
    /// Namespace of --cluster.
    #[arg(long, value_name = "NAMESPACE", requires = "cluster")]
    pub namespace: Option<String>,
    /// PEM file of CA certificates to trust as well (appended to ca.crt):
    /// the previous CA while a rotation to a new one reaches every pod.
    #[arg(long, value_name = "FILE")]
    pub also_trust: Option<PathBuf>,
    /// Name of the Secret in the printed `kubectl` command.
    #[arg(long, value_name = "NAME", default_value = "alces-tls")]
    pub secret_name: String,
    /// Replace files already in DIR.
    #[arg(long)]
    pub force: bool,
}

/// Options of `alces chown-data`.
#[derive(Debug, Clone, Args)]
pub struct ChownDataArgs {
    /// The owner to give, as UID:GID (numbers).
    #[arg(long, value_name = "UID:GID", value_parser = crate::chown::parse_owner)]
    pub owner: (u32, u32),
    /// The data directories (each walked without following symbolic links
    /// or leaving its filesystem).
    #[arg(required = true)]
    pub dirs: Vec<PathBuf>,
}

/// `alces goal ...`.
#[derive(Debug, Subcommand)]
pub enum GoalCommand {
    /// Set the goal of PATH (and with -r of everything below it); new entries
    /// inherit their directory's goal.
    Set(GoalSetArgs),
    /// Show the goal of PATH.
    Get(GoalPathArgs),
}

/// Options of `alces goal set`.
#[derive(Debug, Clone, Args)]
pub struct GoalSetArgs {
    /// Copies to keep of each chunk, 1 to 9.
    pub goal: u32,
    /// The file or directory (see `alces goal get --help` for path forms).
    #[command(flatten)]
    pub path: GoalPathArgs,
    /// Also set it on every file and directory below PATH.
    #[arg(short, long)]
    pub recursive: bool,
}

/// A path for `alces goal`.
#[derive(Debug, Clone, Args)]
pub struct GoalPathArgs {
    /// A path inside an Alces mount, or (with --fs-path) an absolute path from the
    /// filesystem's root.
    pub path: PathBuf,
    /// Treat PATH as a path from the filesystem root instead of a local path.
    #[arg(long)]
    pub fs_path: bool,
}

/// A path inside an Alces mount, or (with --fs-path) from the filesystem root.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// The path: inside an Alces mount, or from the filesystem root with --fs-path.
    pub path: PathBuf,
    /// Treat paths as paths from the filesystem root instead of local paths.
    #[arg(long)]
    pub fs_path: bool,
}

/// `alces chunkserver ...`.
#[derive(Debug, Subcommand)]
pub enum ChunkserverCommand {
    /// Move every chunk off chunkserver ID; `alces status` says when it is safe
    /// to remove.
    Drain(ServerIdArgs),
    /// End the drain of chunkserver ID (it takes new chunks again).
    Undrain(ServerIdArgs),
}

/// A chunkserver id as shown by `alces status`.
#[derive(Debug, Clone, Args)]
pub struct ServerIdArgs {
    /// The chunkserver's id (first column of `alces status`).
    pub id: u64,
}

/// `alces quota ...`.
#[derive(Debug, Subcommand)]
pub enum QuotaCommand {
    /// Set (or replace) the quota of a directory.
    Set(QuotaSetArgs),
    /// Show the quota of a directory and its usage.
    Get(PathArgs),
    /// Remove the quota of a directory.
    Rm(PathArgs),
}

/// Options of `alces quota set`.
#[derive(Debug, Clone, Args)]
pub struct QuotaSetArgs {
    /// The directory.
    #[command(flatten)]
    pub path: PathArgs,
    /// Hard byte limit (e.g. 10GiB): writes beyond it fail with EDQUOT.
    #[arg(long, allow_hyphen_values = true)]
    pub bytes: Option<String>,
    /// Hard inode limit: creates beyond it fail with EDQUOT.
    #[arg(long, allow_hyphen_values = true)]
    pub inodes: Option<String>,
    /// Soft byte limit: may be exceeded for the grace period.
    #[arg(long, allow_hyphen_values = true)]
    pub soft_bytes: Option<String>,
    /// Soft inode limit: may be exceeded for the grace period.
    #[arg(long, allow_hyphen_values = true)]
    pub soft_inodes: Option<String>,
    /// Grace period of the soft limits, in seconds.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    pub grace: u64,
}

/// Options of `alces snapshot`.
#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// File or directory to snapshot.
    pub source: PathBuf,
    /// Path of the snapshot; must not exist and must not be inside SOURCE.
    pub destination: PathBuf,
    /// Treat paths as paths from the filesystem root instead of local paths.
    #[arg(long)]
    pub fs_path: bool,
}

/// `alces trash ...`.
#[derive(Debug, Subcommand)]
pub enum TrashCommand {
    /// List trashed files: id, original path, size, expiry.
    List,
    /// Restore a trashed file to its original path (or --to PATH). A path that
    /// exists now is refused; restore under another name with --to.
    Restore(TrashRestoreArgs),
    /// Free trashed files now: one id, or every one.
    Purge(TrashPurgeArgs),
    /// Trash time of a directory (inherited by its subtree; default 24 h).
    #[command(subcommand)]
    Time(TrashTimeCommand),
}

/// Options of `alces trash restore`.
#[derive(Debug, Clone, Args)]
pub struct TrashRestoreArgs {
    /// Trash id (from `alces trash list`) or the original path from the filesystem root.
    pub what: String,
    /// Restore here instead (a path inside a mount, or from the root with --fs-path).
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// --to is a path from the filesystem root.
    #[arg(long)]
    pub fs_path: bool,
}

/// Options of `alces trash purge`.
#[derive(Debug, Clone, Args)]
pub struct TrashPurgeArgs {
    /// Trash id to free; every trashed file when omitted.
    pub id: Option<u64>,
}

/// `alces trash time ...`.
#[derive(Debug, Subcommand)]
pub enum TrashTimeCommand {
    /// Set the trash time of a directory (0 disables the trash there).
    Set(TrashTimeSetArgs),
    /// Show the trash time in force at a path.
    Get(PathArgs),
}

/// Options of `alces trash time set`.
#[derive(Debug, Clone, Args)]
pub struct TrashTimeSetArgs {
    /// The directory.
    #[command(flatten)]
    pub path: PathArgs,
    /// Seconds a deleted file stays in the trash.
    pub seconds: u64,
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
    /// Run every connection with mutual TLS: a throwaway CA and one certificate
    /// per process are generated into DIR/tls (keys mode 0600), and the env
    /// file points the CLI at the CA and a client certificate.
    #[arg(long)]
    pub tls: bool,
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

/// `alces credential` subcommands.
#[derive(Debug, Subcommand)]
pub enum CredentialCommand {
    /// Issue a credential scoped to a directory; its token is printed once.
    Issue(CredentialIssueArgs),
    /// List the credentials (never their tokens).
    List,
    /// Revoke a credential: every mount and call using it is refused from now on.
    Revoke(CredentialRevokeArgs),
}

/// How a credential's callers' ids are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SquashArg {
    /// Callers keep their uid and gid.
    None,
    /// Root (uid 0) becomes the anonymous uid/gid.
    Root,
    /// Every caller becomes the anonymous uid/gid.
    All,
}

/// Options of `alces credential issue`.
#[derive(Debug, Clone, Args)]
pub struct CredentialIssueArgs {
    /// Directory the credential is rooted at (absolute from the filesystem root).
    #[arg(long)]
    pub path: String,
    /// Every mutation is refused (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Map root's or every caller's uid/gid to the anonymous ones.
    #[arg(long, value_enum, default_value = "none")]
    pub squash: SquashArg,
    /// Anonymous uid for squashed callers.
    #[arg(long, default_value_t = 65534)]
    pub anon_uid: u32,
    /// Anonymous gid for squashed callers.
    #[arg(long, default_value_t = 65534)]
    pub anon_gid: u32,
    /// Largest goal the credential may set (1-9; unset: any).
    #[arg(long)]
    pub max_goal: Option<u32>,
    /// Allow admin calls (goals, quotas, snapshots, trash time, du) inside the directory.
    #[arg(long)]
    pub admin: bool,
    /// A name for people (e.g. the volume it is for).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Write the token to this file (mode 0600) instead of printing it.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// Options of `alces credential revoke`.
#[derive(Debug, Clone, Args)]
pub struct CredentialRevokeArgs {
    /// The credential's id (`alces credential list`).
    pub id: u64,
}
