//! The Alces master: the namespace and the chunk map in memory, changelog and
//! snapshots on disk, chunk placement and repair, and the gRPC services.
//!
//! - [`admin`]: goal and drain administration.
//! - [`namespace`]: inodes, directory entries, xattrs, the chunk table and queries.
//! - [`inodes`]: the inode table, dense pages indexed by inode number.
//! - [`ops`]: changelog operations, decided by `prepare_*` and carried out by [`ops::apply`].
//! - [`goals`]: goals (copies per chunk) set by administrators.
//! - [`frame`]: length + CRC32C record framing of on-disk files.
//! - [`changelog`]: changelog files and the group-committing writer.
//! - [`snapshot`]: snapshot files.
//! - [`datadir`]: the data directory: lock, epoch, recovery, retention.
//! - [`sessions`]: client sessions, leases and open files.
//! - [`chunkmap`]: chunkservers, copies, placement and replication planning.
//! - [`core`]: the shared state, the commit path, snapshots and maintenance.
//! - [`grpc`]: the Master, ChunkMaster and Admin services.
//! - [`replication`]: the changelog window, metalogger table, sync acknowledgements and fencing.
//! - [`window`]: the window's storage: recent records, encoded, in reused blocks.
//! - [`replication_grpc`]: the Replication service metaloggers call.
//! - [`metalogger`]: the metalogger role: a warm replica that can be promoted.
//! - [`metrics`]: Prometheus metrics.
//! - [`config`]: command-line flags.
//! - [`server`]: starting, running and stopping a master.
//! - [`volume_rpcs`]: the Admin rpcs of quotas, snapshots, trash, du and the consistency check.
//! - [`volumes`]: quotas and usage accounting, the trash, copy-on-write snapshots.
//! - [`tails`]: bytes stored past a file's end, cut before the file grows over them.
//! - [`cow`]: copy-on-write of a chunk shared with a snapshot, made before the file switches to it.

pub mod config;
pub mod core;
pub mod disk;
pub mod domain;
pub mod metalogger;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod services;
pub mod state;
