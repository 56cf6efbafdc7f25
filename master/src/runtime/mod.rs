//! What the master knows at runtime and never persists (rebuilt after a
//! restart from registrations and reports): client sessions, chunkservers and
//! their copies, chunks that may hold bytes past their file's end, and the
//! replication window and metalogger table. These modules know the state
//! (`state`) and nothing above it.
//!
//! - `sessions`: client sessions, leases and open files.
//! - [`leases`]: metadata leases of client sessions and the breaks changes send.
//! - `locks`: file locks (flock and POSIX record locks) and the requests waiting for one.
//! - [`chunkmap`]: chunkservers, copies, placement and replication planning.
//! - `tails`: chunks that may hold bytes past their file's end, and open write sessions.
//! - [`replication`]: the changelog window, metalogger table, sync acknowledgements and fencing.
//! - `window`: the window's storage: recent records, encoded, in reused blocks.

pub mod chunkmap;
pub mod leases;
pub mod locks;
pub mod replication;
pub(crate) mod sessions;
pub(crate) mod tails;
pub(crate) mod window;
