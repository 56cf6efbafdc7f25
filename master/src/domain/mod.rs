//! What the master decides: the operations behind its RPCs, over
//! [`crate::core::Core`] (the lock and the commit path). A transport (the gRPC
//! services in [`crate::services`]) turns requests into calls of these
//! functions and their results into replies; nothing here knows how a
//! request arrived.
//!
//! - [`admin`]: draining chunkservers and the tuning shown in the status.
//! - [`goals`]: goals (copies per chunk) of a path or a tree.
//! - [`volumes`]: quotas, snapshots, the trash, `du` and the consistency check.
//! - [`cow`]: copy-on-write of a chunk shared with a snapshot.
//! - [`tails`]: cutting bytes stored past a file's end before the file grows over them.
//! - [`maintenance`]: the once-a-second tick.

pub mod admin;
pub mod cow;
pub mod goals;
pub mod maintenance;
pub mod tails;
pub mod volumes;
