//! The Alces master: the namespace and the chunk map in memory, changelog and
//! snapshots on disk, chunk placement and repair, and the gRPC services; and
//! the metalogger, a warm replica that can be promoted to master.
//!
//! Modules form layers; each uses only the layers below it (checked by
//! `tests/layers.rs`):
//!
//! 1. `state`: the replicated metadata and its deterministic
//!    `apply` (namespace, inodes, volumes, changelog ops). Pure: no lock, no
//!    I/O.
//! 2. [`disk`] (changelog, snapshots, data directory) and [`runtime`]
//!    (sessions, chunkservers and copies, bytes past a file's end, the
//!    replication window): what is persisted, and what is known only while
//!    running.
//! 3. [`core`]: the master lock, the commit path, durability waits, snapshots.
//! 4. `domain`: what the master decides for each request
//!    (placement, quotas, copy-on-write, goals, drains, volumes, replication
//!    to metaloggers, the maintenance tick), over [`core`].
//! 5. `services`: the gRPC transport, one file per
//!    service, each handler a call of a domain function.
//! 6. [`server`] and [`metalogger`]: starting, running and stopping a master or
//!    a metalogger; [`config`]: their flags.
//!
//! Public for the binaries, the tests and the benchmarks: [`config`],
//! [`server`], [`metalogger`], [`core`] (what a running master holds),
//! [`disk`] (the changelog writer and snapshot files) and [`runtime`] (the
//! replication policy and quorum window the server options and tests name).

#![warn(missing_docs)]

pub mod config;
pub mod core;
pub mod disk;
mod domain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metalogger;
mod metrics;
pub mod runtime;
pub mod server;
mod services;
mod state;
