//! `alces-metalogger`: see `alces-metalogger --help`.

use clap::Parser;

#[tokio::main]
async fn main() {
    let args = alces_master::config::MetaloggerArgs::parse();
    alces_proto::telemetry::init_logging(args.log_json);
    if let Err(e) = alces_master::metalogger::run(args).await {
        tracing::error!("{e:#}");
        eprintln!("alces-metalogger: {e:#}");
        std::process::exit(1);
    }
}
