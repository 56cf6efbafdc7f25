//! The replicated metadata and its deterministic `apply`: the bottom layer.
//!
//! Everything here is pure data and pure functions of it: no lock, no clock,
//! no I/O, no knowledge of chunkservers, sessions or the transport. The live
//! master, changelog replay at startup and every metalogger change a
//! [`namespace::State`] only through [`ops::apply`], so they all hold the same
//! metadata for the same records.
//!
//! - [`error`]: the errno-carrying error of every metadata operation.
//! - [`inode`]: one inode (attributes, kind, contents), kept small.
//! - [`inodes`]: the inode table, dense pages indexed by inode number.
//! - [`namespace`]: the whole [`namespace::State`] and the read-only queries on it.
//! - [`volumes`]: usage accounting, quotas, the trash and snapshots as state changes.
//! - [`credentials`]: issued credentials (export rules) and the subtree test.
//! - [`replies`]: the reply cache, the first outcome of each tagged request.
//! - [`ops`]: changelog operations: `prepare_*` decide a record, [`ops::apply`] carries it out.

pub mod credentials;
pub mod error;
pub mod inode;
pub mod inodes;
pub mod namespace;
pub mod ops;
pub mod replies;
pub mod volumes;
