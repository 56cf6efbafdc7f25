//! `alces-metalogger`: see `alces-metalogger --help`.

#![warn(missing_docs)]

use clap::Parser;

fn main() {
    // A metalogger holds the whole namespace too, and serves it once promoted.
    alces_master::core::limit_allocator_arenas();
    let args = alces_master::config::MetaloggerArgs::parse();
    alces_telemetry::init_logging(args.log_json);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("alces-metalogger: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(alces_master::metalogger::run(args)) {
        tracing::error!("{e:#}");
        eprintln!("alces-metalogger: {e:#}");
        std::process::exit(1);
    }
}
