//! The `alces` admin CLI: cluster status, file information, and `alces local`,
//! which runs a whole cluster (master, chunkservers, a mount) on one machine.
//!
//! Public: [`args`] (the command line, clap), [`run`] and [`ports`] (the one
//! TCP port allocator, also used by the end-to-end harness and the benchmark).
//! The commands live in private modules:
//!
//! - `connect`: reaching the master's admin service with the cluster secret.
//! - `credential`: `alces credential issue|list|revoke`.
//! - `status`: `alces status`.
//! - `goal`: `alces goal set|get`.
//! - `drain`: `alces chunkserver drain|undrain`.
//! - `fileinfo`: `alces fileinfo` and translating mount paths to filesystem paths.
//! - `mountinfo`: reading Alces mounts from `/proc/self/mountinfo`.
//! - `local`: `alces local up` / `alces local down`.
//! - `promote`: `alces promote`.
//! - `procs`: pid files, liveness checks and signals for local processes.
//! - `volumes`: `alces quota`, `snapshot`, `trash`, `du`, `fsck`.
//! - `tls`: `alces tls generate` (a CA and a certificate for a Kubernetes TLS Secret).

#![warn(missing_docs)]

pub mod args;
mod chown;
mod connect;
mod credential;
mod drain;
mod fileinfo;
mod goal;
mod local;
mod mountinfo;
pub mod ports;
mod procs;
mod promote;
mod status;
pub mod tls;
mod volumes;

use args::{ChunkserverCommand, Cli, Command, GoalCommand, LocalCommand, TlsCommand};

/// Runs one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    rt.block_on(async move {
        match &cli.command {
            Command::Local(LocalCommand::Up(up)) => local::up(up).await,
            Command::Local(LocalCommand::Down(down)) => local::down(&down.dir),
            Command::Status => status::run(&cli.global).await,
            Command::Fileinfo(f) => fileinfo::run(&cli.global, f).await,
            Command::Goal(GoalCommand::Set(a)) => goal::set(&cli.global, a).await,
            Command::Goal(GoalCommand::Get(a)) => goal::get(&cli.global, a).await,
            Command::Chunkserver(ChunkserverCommand::Drain(a)) => {
                drain::run(&cli.global, a.id, true).await
            }
            Command::Chunkserver(ChunkserverCommand::Undrain(a)) => {
                drain::run(&cli.global, a.id, false).await
            }
            Command::Quota(q) => volumes::quota(&cli.global, q).await,
            Command::Snapshot(a) => volumes::snapshot(&cli.global, a).await,
            Command::Trash(t) => volumes::trash(&cli.global, t).await,
            Command::Du(p) => volumes::du(&cli.global, p).await,
            Command::Fsck => volumes::fsck(&cli.global).await,
            Command::Promote(p) => promote::run(&cli.global, p).await,
            Command::Credential(c) => credential::run(&cli.global, c).await,
            Command::ChownData(a) => chown::run(a),
            Command::Tls(TlsCommand::Generate(a)) => tls::generate(a),
        }
    })
}
