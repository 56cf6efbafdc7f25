//! The markdown table, the machine description and the results file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cli::SystemKind;
use crate::figures::{summary, Results};

/// What the run ran on and with.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// UTC date and time of the run.
    pub date: String,
    /// Host name.
    pub host: String,
    /// CPU model and core count.
    pub cpu: String,
    /// Total memory.
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// Exact versions of what was measured (name, version).
    pub versions: Vec<(String, String)>,
}

fn first_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.lines().next().unwrap_or("").trim().to_owned())
        .unwrap_or_default()
}

impl Machine {
    /// Describes this machine.
    pub fn describe() -> Machine {
        let date = crate::exec::run(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        Machine {
            date,
            host: first_line("/proc/sys/kernel/hostname"),
            cpu: format!("{cores} cores ({model})"),
            memory: format!("{:.1} GiB", mem_kib as f64 / (1 << 20) as f64),
            kernel: first_line("/proc/sys/kernel/osrelease"),
            versions: Vec::new(),
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn cell(r: &Results, fig: crate::figures::Figure, sys: SystemKind) -> String {
    if let Some(why) = r.unavailable.get(&sys) {
        let _ = why;
        return "n/a".into();
    }
    match r
        .values
        .get(&fig)
        .and_then(|m| m.get(&sys))
        .and_then(|v| summary(v).map(|s| (s, v.len())))
    {
        Some(((med, lo, hi), n)) if n > 1 => {
            format!("{} ({}–{})", fmt_num(med), fmt_num(lo), fmt_num(hi))
        }
        Some(((med, _, _), _)) => fmt_num(med),
        None => "–".into(),
    }
}

fn median(r: &Results, fig: crate::figures::Figure, sys: SystemKind) -> Option<f64> {
    r.values
        .get(&fig)
        .and_then(|m| m.get(&sys))
        .and_then(|v| summary(v))
        .map(|s| s.0)
}

/// The markdown table: median (min–max) per system, and Alces/MooseFS.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("| figure | unit | Alces | Alces TLS | TLS/plain | MooseFS | Alces/MooseFS | local dir | no-op FUSE |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (&fig, _) in r.values.iter() {
        let ratio = match (
            median(r, fig, SystemKind::Alces),
            median(r, fig, SystemKind::Moosefs),
        ) {
            (Some(a), Some(m)) if m > 0.0 => format!("{a_m:.2}×", a_m = a / m),
            _ => "–".into(),
        };
        let tls = match (
            median(r, fig, SystemKind::AlcesTls),
            median(r, fig, SystemKind::Alces),
        ) {
            (Some(t), Some(a)) if a > 0.0 => format!("{t_a:.2}×", t_a = t / a),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fig.title(),
            fig.unit(),
            cell(r, fig, SystemKind::Alces),
            cell(r, fig, SystemKind::AlcesTls),
            tls,
            cell(r, fig, SystemKind::Moosefs),
            ratio,
            cell(r, fig, SystemKind::Local),
            cell(r, fig, SystemKind::Noop),
        );
    }
    s
}

/// The whole report: machine, versions, table, unavailable systems and errors.
pub fn document(m: &Machine, r: &Results, mode: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Alces benchmark, {}\n", m.date);
    let _ = writeln!(s, "- host: {}", m.host);
    let _ = writeln!(s, "- CPU: {}", m.cpu);
    let _ = writeln!(s, "- memory: {}", m.memory);
    let _ = writeln!(s, "- kernel: {}", m.kernel);
    let _ = writeln!(s, "- mode: {mode}");
    for (k, v) in &m.versions {
        let _ = writeln!(s, "- {k}: {v}");
    }
    s.push('\n');
    s.push_str(&table(r));
    if !r.unavailable.is_empty() {
        s.push('\n');
        for (sys, why) in &r.unavailable {
            let _ = writeln!(s, "- {}: not available: {why}", sys.title());
        }
    }
    if !r.errors.is_empty() {
        s.push_str("\nErrors:\n");
        for (sys, e) in &r.errors {
            let _ = writeln!(s, "- {}: {e}", sys.title());
        }
    }
    s
}

/// Writes `doc` to `<dir>/<date>-<host>.md` (or `<date>-<host>-2.md`, `-3`, ...
/// when that exists: earlier runs are never overwritten) and returns the path.
pub fn write_results(dir: &Path, m: &Machine, doc: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let day: String = m.date.chars().take(10).collect();
    for n in 1u32.. {
        let name = match n {
            1 => format!("{day}-{}.md", m.host),
            n => format!("{day}-{}-{n}.md", m.host),
        };
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(doc.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    unreachable!("some numbered results file name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_files_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let m = Machine {
            date: "2026-11-21 20:00 UTC".into(),
            host: "vm".into(),
            ..Default::default()
        };
        let a = write_results(dir.path(), &m, "first").unwrap();
        let b = write_results(dir.path(), &m, "second").unwrap();
        let c = write_results(dir.path(), &m, "third").unwrap();
        assert_eq!(a.file_name().unwrap(), "2026-11-21-vm.md");
        assert_eq!(b.file_name().unwrap(), "2026-11-21-vm-2.md");
        assert_eq!(c.file_name().unwrap(), "2026-11-21-vm-3.md");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "third");
    }
}
