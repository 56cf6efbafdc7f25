//! `alces-master`: see `alces-master --help`.

#![warn(missing_docs)]

use clap::Parser;

fn main() {
    alces_master::core::limit_allocator_arenas();
    let args = alces_master::config::Args::parse();
    alces_telemetry::init_logging(args.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alces-master: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(alces_master::server::run(args)) {
        tracing::error!("{e:#}");
        eprintln!("alces-master: {e:#}");
        std::process::exit(1);
    }
}
