//! Supplementary groups of the processes calling through the mount. FUSE
//! gives a request's uid, gid and pid only; the master checks a credential
//! session's calls against every group of the caller, so the mount reads them
//! from `/proc/PID/status` ("Groups:") and keeps them a short while per
//! (pid, uid, gid), as MooseFS's mount does.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long the groups read for a (pid, uid, gid) are reused.
const KEEP: Duration = Duration::from_secs(2);
/// Most entries kept; the cache is emptied when it grows past this.
const MAX_ENTRIES: usize = 4096;
/// Most groups taken from one process (Linux's NGROUPS_MAX).
const MAX_GROUPS: usize = 65536;

type Key = (u32, u32, u32);
type Cache = Mutex<HashMap<Key, (Instant, Vec<u32>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The supplementary groups of process `pid` (empty when it is gone or the
/// request came from the kernel, pid 0).
pub(crate) fn of(pid: u32, uid: u32, gid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let key = (pid, uid, gid);
    if let Some((t, g)) = cache().lock().get(&key) {
        if t.elapsed() < KEEP {
            return g.clone();
        }
    }
    let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_status(&s))
        .unwrap_or_default();
    let mut c = cache().lock();
    if c.len() >= MAX_ENTRIES {
        c.clear();
    }
    c.insert(key, (Instant::now(), groups.clone()));
    groups
}

/// The "Groups:" line of a `/proc/PID/status` text.
fn parse_status(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|g| g.parse().ok())
                .take(MAX_GROUPS)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line_is_parsed_and_junk_ignored() {
        let s = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 x 1000 \nNgid:\t0\n";
        assert_eq!(parse_status(s), vec![4, 24, 27, 1000]);
        assert!(parse_status("Name:\tcat\n").is_empty());
        assert!(parse_status("Groups:\n").is_empty());
    }

    #[test]
    fn own_groups_are_read_from_proc() {
        // SAFETY: no preconditions.
        let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
        let mut want = vec![0 as libc::gid_t; n as usize];
        // SAFETY: the buffer holds n entries.
        let n = unsafe { libc::getgroups(n, want.as_mut_ptr()) };
        want.truncate(n as usize);
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut got = of(std::process::id(), uid, gid);
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(of(0, uid, gid).is_empty());
    }
}
