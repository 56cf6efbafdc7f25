//! Running external commands, waiting for conditions, and handling mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Runs `cmd` to completion; an error carries its stderr when it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{shown} failed ({}): {} {}",
            out.status,
            tail(stderr.trim(), 600),
            tail(stdout.trim(), 300)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `max` bytes of `s` (at a character boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut i = s.len().saturating_sub(max);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Runs a command line given as words, ignoring whether it succeeds.
pub fn run_quiet(args: &[&str]) {
    if let Some((prog, rest)) = args.split_first() {
        let _ = Command::new(prog)
            .args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Makes `cmd` run inside the network namespace `ns` (only the network: the mount
/// namespace stays shared, so FUSE mounts made by the child are visible here).
pub fn in_netns(cmd: &mut Command, ns: &str) -> Result<()> {
    alces_e2e::netns::enter_net(cmd, ns).map_err(anyhow::Error::msg)
}

/// Starts `cmd` in the background with stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open log {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))
}

/// Polls `cond` every 50 ms until it is true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(());
        }
        if crate::cleanup::interrupted() {
            bail!("interrupted while waiting for {what}");
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every mount point of this mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// True when `path` is a mount point.
pub fn is_mounted(path: &Path) -> bool {
    mount_points().iter().any(|p| p == path)
}

/// Unmounts `path` (lazily if it is busy); no error when it is not mounted.
pub fn unmount(path: &Path) {
    if !is_mounted(path) {
        return;
    }
    let p = path.to_string_lossy().into_owned();
    run_quiet(&["umount", &p]);
    if is_mounted(path) {
        run_quiet(&["umount", "-l", &p]);
    }
}

/// Drops the kernel's page cache, dentries and inodes.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("cannot drop caches (/proc/sys/vm/drop_caches; run as root)")
}

/// Stops process `pid`: SIGTERM, then SIGKILL after `grace`.
pub fn stop_pid(pid: i32, grace: Duration) {
    if pid <= 0 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let gone = wait_for("process exit", grace, || !pid_alive(pid)).is_ok();
    if !gone {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_for("process exit", Duration::from_secs(5), || !pid_alive(pid));
    }
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .map(|(_, r)| r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Stops a child we started and reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    let pid = child.id() as i32;
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Resident memory (VmRSS) of `pid` in bytes.
pub fn vm_rss(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable VmRSS line {line:?}"))?;
    Ok(kib * 1024)
}

/// Programs a run starts (as `/proc/<pid>/comm` shows them, cut to 15 bytes).
const OUR_PROGRAMS: [&str; 9] = [
    "mfsmaster",
    "mfschunkserver",
    "mfsmount",
    "alces",
    "alces-master",
    "alces-chunkserv",
    "alces-metalogge",
    "alces-mount",
    "fio",
];

/// Processes of the programs a run starts (mfsmaster, alces-mount, fio, ...) whose
/// command line mentions `needle`.
pub fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| OUR_PROGRAMS.contains(&c.trim()))
                .unwrap_or(false)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
