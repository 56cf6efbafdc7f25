//! Whole-system benchmarks of Alces, run side by side with MooseFS 3.0, a local
//! directory and a no-op FUSE filesystem on the same machine in the same run
//! (`alces-bench all`).

#![warn(missing_docs)]

pub mod cleanup;
pub mod cli;
pub mod cluster_figures;
pub mod data;
pub mod exec;
pub mod figures;
pub mod netns;
pub mod noopfs;
pub mod report;
pub mod runner;
pub mod systems;
pub mod workloads;
