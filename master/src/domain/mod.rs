//! What the master decides: the operations behind its RPCs, over
//! [`crate::core::Core`] (the lock and the commit path). A transport (the gRPC
//! services in [`crate::services`]) turns requests into calls of these
//! functions and their results into replies; nothing here knows how a
//! request arrived.
//!
//! - [`credentials`]: issuing and revoking credentials; what a credential's calls may reach.
//! - [`permissions`]: POSIX permission checks of a credential session's calls.
//! - [`sessions`]: client sessions: registration, renewal, closing.
//! - [`metadata`]: lookups, attributes, entries, xattrs, statfs.
//! - [`leases`]: the lease stream of a client session (renewals, breaks, acknowledgements).
//! - [`locks`]: file locks (flock, POSIX record locks): set, test, wait, release, re-assert.
//! - [`io`]: open/release, read locations and write sessions (placement, quotas, copy-on-write, tails).
//! - [`cow`]: copy-on-write of a chunk shared with a snapshot.
//! - [`tails`]: cutting bytes stored past a file's end before the file grows over them.
//! - [`chunkservers`]: registration, heartbeats, drains and the status row of a chunkserver.
//! - [`goals`]: goals (copies per chunk) of a path or a tree.
//! - [`volumes`]: quotas, snapshots, the trash, `du` and the consistency check.
//! - [`status`]: the cluster status, file info and tuning.
//! - [`replication`]: snapshots, changelog batches and step-down for metaloggers.
//! - [`replies`]: dropping the reply cache of closed and expired sessions.
//! - [`maintenance`]: the once-a-second tick.

pub mod chunkservers;
pub mod cow;
pub mod credentials;
pub mod goals;
pub mod io;
pub mod leases;
pub mod locks;
pub mod maintenance;
pub mod metadata;
pub mod permissions;
pub mod replication;
pub mod replies;
pub mod sessions;
pub mod status;
pub mod tails;
pub mod volumes;
