//! Alces client library and the FUSE mount `alces-mount`.
//!
//! The library talks to the master (sessions, namespace) and to chunkservers
//! (chunk I/O) and is reused by the `alces` CLI and the CSI driver:
//!
//! - [`Client`]: connect with a [`ClientConfig`]; session registration, lease
//!   renewal, transparent reconnect; every namespace call; path helpers.
//! - [`FileHandle`]: an open file with readahead, write-behind, flush, fsync,
//!   truncate.
//! - [`Error`]: an errno plus a message.
//! - [`fuse`]: the FUSE filesystem served by `alces-mount`.
//! - [`volumes`]: quotas, snapshots, trash, `du` and the consistency check.

#![warn(missing_docs)]

pub mod chain;
pub mod client;
pub mod dirsnap;
pub mod error;
pub mod file;
mod filesize;
pub mod fuse;
pub mod layout;
pub mod metrics;
pub mod names;
pub mod readahead;
pub mod volumes;
pub mod writebuf;

pub use client::{
    rename_flags, Attr, Caller, Client, ClientConfig, DirEntry, FileType, SetAttr, SetTime,
    StatfsReply,
};
pub use error::{Error, Result};
pub use file::FileHandle;
pub use volumes::QuotaLimits;
