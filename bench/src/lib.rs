//! Whole-system benchmarks of Alces, run side by side with MooseFS 3.0, a local
//! directory and a no-op FUSE filesystem on the same machine in the same run
//! (`alces-bench all`).
//!
//! Public are what `main.rs` uses: [`cli`] (the command line), [`runner`] (`all`),
//! [`cluster_figures`] (`failover`, `repair`, `snapshot`), [`handover`], [`operator_figures`]
//! (`operator-failover`, `operator-reconcile`) and [`cleanup`] (undoing
//! what a run started, also on a signal). The systems run on the cluster harness
//! of `alces-e2e` (Alces) and in the private network namespace made by its
//! `netns` helper.

#![warn(missing_docs)]

pub mod cleanup;
pub mod cli;
pub mod cluster_figures;
mod cpu;
mod data;
mod exec;
mod figures;
pub mod handover;
mod netns;
mod noopfs;
pub mod operator_figures;
mod report;
pub mod runner;
mod systems;
mod workloads;
