//! The filesystems measured: Alces, MooseFS, a local directory and a no-op FUSE mount.

pub mod alces;
pub mod local;
pub mod moosefs;
pub mod noop;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::SystemKind;

/// A running filesystem the workloads can use.
pub trait System {
    /// Which system this is.
    fn kind(&self) -> SystemKind;

    /// Exact version string for the results file.
    fn version(&self) -> String;

    /// Creates the directory `rel` (relative to the filesystem root) whose new files get
    /// `goal` copies, and returns its path through the main mount.
    fn make_dir(&mut self, rel: &str, goal: u32) -> Result<PathBuf>;

    /// Opens `n` new mounts of the same filesystem (new clients with empty caches) and
    /// returns their roots: `root/rel` in each names the same file as in the main mount.
    fn open_mounts(&mut self, n: usize) -> Result<Vec<PathBuf>>;

    /// Unmounts what [`System::open_mounts`] opened.
    fn close_mounts(&mut self);

    /// Process id of the metadata server, for the memory workload.
    fn master_pid(&self) -> Option<i32> {
        None
    }

    /// Process ids of the filesystem's daemons and mounts, for the CPU-per-operation
    /// workload; empty when its work runs in no separate process.
    fn processes(&self) -> Vec<i32> {
        Vec::new()
    }

    /// True when reads return zeros instead of what was written (the no-op FUSE mount).
    fn reads_zeros(&self) -> bool {
        false
    }
}

/// Creates `dir` and its parents.
pub fn mkdirs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))
}
