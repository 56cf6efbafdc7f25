//! Alces client library and the FUSE mount `alces-mount`.
//!
//! The library talks to the master (sessions, namespace) and to chunkservers
//! (chunk I/O) and is reused by the `alces` CLI and the CSI driver:
//!
//! - [`Client`]: connect with a [`ClientConfig`]; session registration, lease
//!   renewal, transparent reconnect; every namespace call; path helpers; the
//!   volume calls (quotas, snapshots, trash, `du`, the consistency check,
//!   `statfs_at`); cluster-wide file locks ([`LockSpec`]).
//! - [`FileHandle`]: an open file with readahead, write-behind, flush, fsync,
//!   truncate.
//! - [`Error`]: an errno plus a message.
//! - [`fuse`]: the FUSE filesystem served by `alces-mount`, and [`metrics`],
//!   its Prometheus counters; [`takeover`] and [`journal`]: serving a FUSE
//!   connection handed over by another process, continuing one whose daemon
//!   died, and the write journal that makes that lose nothing.
//!
//! Inside, the layers are (each only uses those below it): `session` (the
//! session with the master and the connections), `namespace` (namespace
//! calls), `file` and `open_files` (file I/O), `client` (the [`Client`] that
//! composes them), `volumes`, then `fuse`. `cache` is the one bounded cache
//! type they all use.

#![warn(missing_docs)]

mod cache;
mod chain;
mod client;
mod dirsnap;
mod error;
mod file;
mod filesize;
pub mod fuse;
mod groups;
pub mod journal;
mod layout;
mod leases;
mod locks;
pub mod metrics;
mod names;
mod namespace;
mod open_files;
mod readahead;
pub mod replay;
mod session;
pub mod takeover;
mod volumes;
mod writebuf;

pub use client::Client;
pub use error::{Error, Result};
pub use file::FileHandle;
pub use locks::{LockConflict, LockKind, LockSpec};
pub use namespace::{
    rename_flags, Attr, Caller, DirEntry, FileType, NewNode, SetAttr, SetTime, StatfsReply,
};
pub use session::{ClientConfig, Inherited, ResumeSession};
pub use volumes::{
    ConsistencyReport, DiskUsageReply, PurgeTrashReply, QuotaInfo, QuotaLimits, SnapshotReply,
    TrashEntry, TrashTimeReply,
};
