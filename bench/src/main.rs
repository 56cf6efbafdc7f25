//! `alces-bench`: see `alces-bench --help`.

#![warn(missing_docs)]

use alces_bench::cli::{Cli, Command};
use clap::Parser;

fn report(r: anyhow::Result<String>) -> i32 {
    match r {
        Ok(table) => {
            println!("{table}");
            0
        }
        Err(e) => {
            eprintln!("alces-bench: {e:#}");
            2
        }
    }
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::All(args) => match alces_bench::runner::run(args) {
            Ok(code) => code,
            Err(e) => {
                alces_bench::cleanup::run_all();
                eprintln!("alces-bench: {e:#}");
                2
            }
        },
        Command::Cleanup(args) => {
            alces_bench::runner::cleanup(&args.work_dir);
            0
        }
        Command::Failover(args) => report(alces_bench::cluster_figures::failover(&args)),
        Command::Repair(args) => report(alces_bench::cluster_figures::repair(&args)),
        Command::Snapshot(args) => report(alces_bench::cluster_figures::snapshot(&args)),
        Command::Handover(args) => report(alces_bench::handover::handover(&args)),
        Command::OperatorFailover(args) => report(alces_bench::operator_figures::failover(&args)),
        Command::OperatorReconcile(args) => report(alces_bench::operator_figures::reconcile(&args)),
    };
    alces_bench::cleanup::run_all();
    if alces_bench::cleanup::interrupted() {
        // The signal watcher is cleaning up and exits with status 130 when done.
        loop {
            std::thread::park();
        }
    }
    std::process::exit(code);
}
