//! The `alces` admin CLI: cluster status, file information, and `alces local`,
//! which runs a whole cluster (master, chunkservers, a mount) on one machine.
//!
//! - [`args`]: the command line (clap).
//! - [`connect`]: reaching the master's admin service with the cluster secret.
//! - [`status`]: `alces status`.
//! - [`fileinfo`]: `alces fileinfo` and translating mount paths to filesystem paths.
//! - [`mountinfo`]: reading Alces mounts from `/proc/self/mountinfo`.
//! - [`local`]: `alces local up` / `alces local down`.
//! - [`promote`]: `alces promote`.
//! - [`procs`]: pid files, liveness checks and signals for local processes.

pub mod args;
pub mod connect;
pub mod fileinfo;
pub mod local;
pub mod mountinfo;
pub mod procs;
pub mod promote;
pub mod status;

use args::{Cli, Command, LocalCommand};

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
            Command::Promote(p) => promote::run(&cli.global, p).await,
        }
    })
}
