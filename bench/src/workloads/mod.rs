//! The workloads of issue 6; each returns the figures of one repetition.

pub mod cpu;
pub mod fio;
pub mod meta;
pub mod rss;
pub mod seq;
pub mod small;

use std::time::Instant;

use crate::figures::Figure;

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Blocks (1 MiB) of the sequential and random-I/O file.
    pub file_blocks: u64,
    /// Seconds each fio job runs.
    pub fio_seconds: u64,
    /// Empty files of the metadata workload.
    pub meta_files: usize,
    /// Directories of the mkdir-tree phase.
    pub meta_dirs: usize,
    /// Files of the small-file workload.
    pub small_files: usize,
    /// Size of each small file.
    pub small_size: usize,
    /// Files created for the master-memory workload.
    pub rss_files: u64,
    /// Mounts of the many-clients workload.
    pub mounts: usize,
}

impl Params {
    /// The sizes of issue 6.
    pub fn full() -> Params {
        Params {
            file_blocks: 1024,
            fio_seconds: 30,
            meta_files: 20_000,
            meta_dirs: 5_000,
            small_files: 10_000,
            small_size: 16 << 10,
            rss_files: 1_000_000,
            mounts: 4,
        }
    }

    /// Tiny sizes that only prove every workload completes and verifies.
    pub fn quick() -> Params {
        Params {
            file_blocks: 16,
            fio_seconds: 3,
            meta_files: 500,
            meta_dirs: 200,
            small_files: 500,
            small_size: 16 << 10,
            rss_files: 2_000,
            mounts: 4,
        }
    }
}

/// Figures of one repetition.
pub type Figures = Vec<(Figure, f64)>;

/// Rate of `n` items done since `start`, per second.
pub fn rate(n: f64, start: Instant) -> f64 {
    n / start.elapsed().as_secs_f64().max(1e-9)
}
