//! The master's files on disk: record framing, the changelog and its
//! group-committing writer, snapshot files, and the data directory (lock,
//! epoch, recovery, retention). Below the master's live logic: these modules
//! know the state (`state`) and nothing above it.
//!
//! - `frame`: length + CRC32C record framing of on-disk files.
//! - [`changelog`]: changelog files and the group-committing writer.
//! - [`snapshot`]: snapshot files.
//! - `datadir`: the data directory: lock, epoch, recovery, retention.

pub mod changelog;
pub(crate) mod datadir;
pub(crate) mod frame;
pub mod snapshot;
