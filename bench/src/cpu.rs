//! CPU time of a filesystem's processes (user + system, from `/proc/<pid>/stat`),
//! so a workload can report CPU per operation by role: the metadata server, the
//! chunkservers, the metaloggers and the mounts.

use std::collections::BTreeMap;

/// What a process of a filesystem does; the CPU table has one row per role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// The metadata server (alces-master, mfsmaster).
    Master,
    /// The chunkservers (alces-chunkserver, mfschunkserver).
    Chunkservers,
    /// The metaloggers (alces-metalogger; MooseFS runs none here).
    Metaloggers,
    /// The FUSE mounts (alces-mount, mfsmount).
    Mounts,
    /// Every process of the filesystem together.
    All,
}

impl Role {
    /// Row title part.
    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Chunkservers => "chunkservers",
            Role::Metaloggers => "metaloggers",
            Role::Mounts => "mounts",
            Role::All => "all processes",
        }
    }

    /// The role of a process named `comm` (as in `/proc/<pid>/comm`, at most 15
    /// bytes), or None for one that is not a daemon or mount (the `alces` CLI).
    pub fn of_comm(comm: &str) -> Option<Role> {
        match comm {
            "alces-master" | "mfsmaster" => Some(Role::Master),
            "alces-chunkserv" | "mfschunkserver" => Some(Role::Chunkservers),
            "alces-metalogge" | "mfsmetalogger" => Some(Role::Metaloggers),
            "alces-mount" | "mfsmount" => Some(Role::Mounts),
            _ => None,
        }
    }
}

/// User + system CPU seconds of `pid` so far, from the text of its
/// `/proc/<pid>/stat`; None when it cannot be parsed.
pub fn parse_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or ')':
    // the fields after it start past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3.. of proc(5): state is rest[0], so utime (14) and stime (15) are
    // rest[11] and rest[12], in clock ticks.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / ticks_per_second())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds used so far by each process in `pids`, by pid, with its role
/// (processes that are gone or have no role are left out).
pub fn sample(pids: &[i32]) -> BTreeMap<i32, (Role, f64)> {
    let mut out = BTreeMap::new();
    for &pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Some(role) = Role::of_comm(comm.trim()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(s) = parse_stat(&stat) {
            out.insert(pid, (role, s));
        }
    }
    out
}

/// CPU seconds used per role (and by all together) between two samples, counting
/// only processes present in both.
pub fn used(
    before: &BTreeMap<i32, (Role, f64)>,
    after: &BTreeMap<i32, (Role, f64)>,
) -> BTreeMap<Role, f64> {
    let mut out = BTreeMap::new();
    for (pid, (role, a)) in after {
        if let Some((_, b)) = before.get(pid) {
            let d = (a - b).max(0.0);
            *out.entry(*role).or_insert(0.0) += d;
            *out.entry(Role::All).or_insert(0.0) += d;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let t = ticks_per_second();
        // A command name with a space and a parenthesis.
        let stat =
            "4242 (alces m) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat(stat), Some(200.0 / t));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn roles_and_differences() {
        assert_eq!(Role::of_comm("alces-chunkserv"), Some(Role::Chunkservers));
        assert_eq!(Role::of_comm("mfsmount"), Some(Role::Mounts));
        assert_eq!(Role::of_comm("alces"), None);
        let before = BTreeMap::from([(1, (Role::Master, 1.0)), (2, (Role::Mounts, 2.0))]);
        let after = BTreeMap::from([
            (1, (Role::Master, 1.5)),
            (2, (Role::Mounts, 2.25)),
            (3, (Role::Mounts, 9.0)),
        ]);
        let u = used(&before, &after);
        assert_eq!(u[&Role::Master], 0.5);
        assert_eq!(u[&Role::Mounts], 0.25);
        assert_eq!(u[&Role::All], 0.75);
        assert!(!u.contains_key(&Role::Chunkservers));
    }
}
