//! The Alces chunkserver: chunks on local disks in 64 KiB CRC32C-checked blocks,
//! served over gRPC and forwarded down replication chains, registered with the
//! master through heartbeats.
//!
//! - [`format`](mod@format): the on-disk chunk file format and paths.
//! - [`store`]: the chunk store (files, chunk list, per-chunk locks, change deltas).
//! - `open_files`: the bounded cache of open chunk files.
//! - `identity`: server id, cluster id and highest seen master epoch.
//! - [`service`]: the `Chunkserver` gRPC service with chain forwarding.
//! - [`peers`]: cached channels to other chunkservers.
//! - [`master_link`]: registration, heartbeats, delete/replicate commands,
//!   the revoked credentials.
//! - [`revoked`]: the credentials the master says are revoked, refused.
//! - [`scrubber`]: background CRC verification.
//! - [`metrics`]: Prometheus metrics.
//! - [`config`]: command-line flags.
//! - [`daemon`]: starting and stopping a whole chunkserver.
//!
//! Public are the modules the binary, the tests and the benchmarks use;
//! `identity` and `open_files` are private to the crate.

#![warn(missing_docs)]

pub mod config;
pub mod daemon;
pub mod format;
mod identity;
pub mod master_link;
pub mod metrics;
mod open_files;
pub mod peers;
pub mod revoked;
pub mod scrubber;
pub mod service;
pub mod store;
