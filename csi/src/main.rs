//! `alces-csi`: the Alces CSI driver and its mount service (see `alces_csi`).
#![warn(missing_docs)]

fn main() -> std::process::ExitCode {
    alces_csi::cli::main()
}
