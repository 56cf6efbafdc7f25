//! The figures a run measures (one table row each) and the values collected for them.

use std::collections::BTreeMap;

use crate::cli::SystemKind;
use crate::cpu::Role;

/// One measured quantity: a row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Figure {
    /// Sequential write, 1 MiB blocks, fsync at the end, goal 1 (MiB/s).
    SeqWriteG1,
    /// Same at goal 2 (MiB/s).
    SeqWriteG2,
    /// Sequential read after a remount and dropped page cache (MiB/s).
    SeqReadCold,
    /// Sequential read again, caches warm (MiB/s).
    SeqReadWarm,
    /// fio random 4 KiB reads, 1 in flight (IOPS).
    RandReadQd1,
    /// fio random 4 KiB reads, 16 in flight (IOPS).
    RandReadQd16,
    /// fio random 4 KiB writes, 1 in flight (IOPS).
    RandWriteQd1,
    /// fio random 4 KiB writes, 16 in flight (IOPS).
    RandWriteQd16,
    /// Metadata phases, one mount (ops/s).
    Meta(MetaPhase),
    /// Small files written, one mount (files/s).
    SmallWrite,
    /// Small files read through a fresh mount (files/s).
    SmallRead,
    /// Metadata phases from 4 mounts at once (ops/s, all mounts together).
    MultiMeta(MetaPhase),
    /// Small files written from 4 mounts at once (files/s).
    MultiSmallWrite,
    /// Small files read from 4 mounts at once, each reading another's files (files/s).
    MultiSmallRead,
    /// Master resident memory per file (bytes).
    RssPerFile,
    /// User + system CPU time of the filesystem's processes in a role (or all of
    /// them) per operation (µs).
    CpuPerOp(CpuOp, Role),
}

/// The operations whose CPU cost is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuOp {
    /// Create an empty file.
    Create,
    /// stat a file.
    Stat,
    /// Write a 16 KiB file.
    SmallWrite,
    /// Read a 16 KiB file, page cache dropped.
    SmallRead,
    /// Write and fsync a 1 MiB file.
    MibWrite,
}

impl CpuOp {
    fn name(self) -> &'static str {
        match self {
            CpuOp::Create => "create",
            CpuOp::Stat => "stat",
            CpuOp::SmallWrite => "16 KiB file write",
            CpuOp::SmallRead => "16 KiB file read",
            CpuOp::MibWrite => "1 MiB file write + fsync",
        }
    }
}

/// The phases of the metadata workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MetaPhase {
    /// Create empty files in one directory.
    Create,
    /// stat each file.
    Stat,
    /// List the directory (ops = entries listed).
    List,
    /// Rename each file within the directory.
    Rename,
    /// Unlink each file.
    Unlink,
    /// mkdir of a directory tree.
    Mkdir,
    /// A POSIX write lock taken and dropped on one file per mount (ops =
    /// lock/unlock pairs; each is two calls to the lock holder, the master
    /// on a distributed filesystem).
    LockUnlock,
}

impl MetaPhase {
    fn name(self) -> &'static str {
        match self {
            MetaPhase::Create => "create",
            MetaPhase::Stat => "stat",
            MetaPhase::List => "list (entries)",
            MetaPhase::Rename => "rename",
            MetaPhase::Unlink => "unlink",
            MetaPhase::Mkdir => "mkdir (tree)",
            MetaPhase::LockUnlock => "lock+unlock (pairs)",
        }
    }
}

impl Figure {
    /// Row title.
    pub fn title(self) -> String {
        match self {
            Figure::SeqWriteG1 => "seq write 1 MiB + fsync, goal 1".into(),
            Figure::SeqWriteG2 => "seq write 1 MiB + fsync, goal 2".into(),
            Figure::SeqReadCold => "seq read, cold (remount, caches dropped)".into(),
            Figure::SeqReadWarm => "seq read, warm".into(),
            Figure::RandReadQd1 => "random 4 KiB read, 1 in flight".into(),
            Figure::RandReadQd16 => "random 4 KiB read, 16 in flight".into(),
            Figure::RandWriteQd1 => "random 4 KiB write, 1 in flight".into(),
            Figure::RandWriteQd16 => "random 4 KiB write, 16 in flight".into(),
            Figure::Meta(p) => format!("metadata {}", p.name()),
            Figure::SmallWrite => "small files 16 KiB, write".into(),
            Figure::SmallRead => "small files 16 KiB, read (fresh mount)".into(),
            Figure::MultiMeta(p) => format!("4 mounts: metadata {}", p.name()),
            Figure::MultiSmallWrite => "4 mounts: small files, write".into(),
            Figure::MultiSmallRead => "4 mounts: small files, read".into(),
            Figure::RssPerFile => "master RSS per file".into(),
            Figure::CpuPerOp(op, role) => format!("CPU per {}: {}", op.name(), role.name()),
        }
    }

    /// Unit of the values.
    pub fn unit(self) -> &'static str {
        match self {
            Figure::SeqWriteG1 | Figure::SeqWriteG2 | Figure::SeqReadCold | Figure::SeqReadWarm => {
                "MiB/s"
            }
            Figure::RandReadQd1
            | Figure::RandReadQd16
            | Figure::RandWriteQd1
            | Figure::RandWriteQd16 => "IOPS",
            Figure::Meta(_) | Figure::MultiMeta(_) => "ops/s",
            Figure::SmallWrite
            | Figure::SmallRead
            | Figure::MultiSmallWrite
            | Figure::MultiSmallRead => "files/s",
            Figure::RssPerFile => "bytes/file",
            Figure::CpuPerOp(..) => "µs CPU/op",
        }
    }
}

/// Values collected over the repetitions, and the errors met.
#[derive(Debug, Default)]
pub struct Results {
    /// Values per figure and system, one per repetition.
    pub values: BTreeMap<Figure, BTreeMap<SystemKind, Vec<f64>>>,
    /// Errors per system (workload name and message).
    pub errors: Vec<(SystemKind, String)>,
    /// Systems that could not be started, with the reason.
    pub unavailable: BTreeMap<SystemKind, String>,
    /// Workloads that completed and verified, per system.
    pub completed: Vec<(SystemKind, &'static str)>,
}

impl Results {
    /// Adds one repetition's value.
    pub fn add(&mut self, fig: Figure, sys: SystemKind, v: f64) {
        self.values
            .entry(fig)
            .or_default()
            .entry(sys)
            .or_default()
            .push(v);
    }
}

/// Median, minimum and maximum of `v` (which must not be empty).
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

impl PartialOrd for SystemKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SystemKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let pos = |s: &SystemKind| SystemKind::ALL.iter().position(|x| x == s);
        pos(self).cmp(&pos(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), Some((2.0, 1.0, 3.0)));
        assert_eq!(summary(&[4.0, 1.0]), Some((2.5, 1.0, 4.0)));
        assert_eq!(summary(&[]), None);
    }
}
