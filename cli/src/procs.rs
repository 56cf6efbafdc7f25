//! Local processes of an `alces local` cluster: pid files, liveness and signals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Reads the pid stored in `file`, if the file exists and holds a number.
pub fn read_pid(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0)
}

/// True when `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
}

/// True when `pid` is alive and runs an Alces program (not a recycled pid).
pub fn alive_alces(pid: i32) -> bool {
    if !alive(pid) {
        return false;
    }
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(argv0).contains("alces")
}

/// Sends `sig` to `pid`; errors (already gone) are ignored.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: plain kill(2) on a pid we started.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits until none of `pids` is alive or `timeout` passed; returns the survivors.
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The process folders of a local cluster, in the order they must stop:
/// mount first, then metaloggers, chunkservers, and the master last.
pub fn process_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut mounts = Vec::new();
    let mut mls = Vec::new();
    let mut css = Vec::new();
    let mut master = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        if n.starts_with("mount") {
            mounts.push(p);
        } else if n.starts_with("ml") {
            mls.push(p);
        } else if n.starts_with("cs") {
            css.push(p);
        } else if n == "master" {
            master.push(p);
        }
    }
    mounts
        .into_iter()
        .chain(mls)
        .chain(css)
        .chain(master)
        .collect()
}

/// Live Alces processes recorded in the pid files of `dir`.
pub fn running(dir: &Path) -> Vec<(PathBuf, i32)> {
    process_dirs(dir)
        .into_iter()
        .filter_map(|d| {
            let pid = read_pid(&d.join("pid"))?;
            alive_alces(pid).then_some((d, pid))
        })
        .collect()
}
