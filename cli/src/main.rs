//! `alces`: the Alces admin command line.

#![warn(missing_docs)]

use clap::Parser;

fn main() {
    let cli = alces_cli::args::Cli::parse();
    if let Err(e) = alces_cli::run(cli) {
        eprintln!("alces: error: {e:#}");
        std::process::exit(1);
    }
}
