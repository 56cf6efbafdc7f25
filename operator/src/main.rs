//! `alces-operator`: see `alces_operator::config::Args` and `operator/ARCHITECTURE.md`.
#![warn(missing_docs)]

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = alces_operator::config::Args::parse();
    alces_telemetry::init_logging(args.log_json);
    if let Err(e) = alces_operator::run(args).await {
        tracing::error!(error = %format!("{e:#}"), "alces-operator stopped");
        std::process::exit(1);
    }
}
