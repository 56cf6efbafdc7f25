//! `alces-chunkserver`: stores chunks on local disks and serves them.

#![warn(missing_docs)]

use std::process::ExitCode;
use std::time::Duration;

use alces_chunkserver::config::Args;
use alces_chunkserver::daemon::{self, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    alces_telemetry::init_logging(args.log_json);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("alces-chunkserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    alces_telemetry::warn_if_root("alces-chunkserver");
    let secret = alces_proto::auth::load_secret(args.secret_file.as_deref())?;
    let cfg = Config {
        data_dirs: args.data_dirs,
        listen: args.listen,
        advertise: args.advertise,
        http_listen: Some(args.http_listen),
        master: args.master,
        label: args.label,
        secret,
        tls: args.tls.load(alces_proto::tls::Role::Server)?,
        scrub_bytes_per_sec: args.scrub_bytes_per_sec,
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        open_files: args.open_files,
    };
    let running = daemon::start(cfg).await?;
    running
        .run_until(alces_telemetry::shutdown_signal())
        .await?;
    tracing::info!("chunkserver stopped");
    Ok(())
}
