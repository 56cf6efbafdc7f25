//! `alces-master`: see `alces-master --help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = alces_master::config::Args::parse();
    alces_proto::telemetry::init_logging(args.log_json);
    if let Err(e) = alces_master::server::run(args).await {
        tracing::error!("{e:#}");
        eprintln!("alces-master: {e:#}");
        std::process::exit(1);
    }
}
