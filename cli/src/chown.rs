//! `alces chown-data`: gives data directories to the unprivileged user the
//! daemons run as.
//!
//! On Kubernetes a hostPath disk (and the per-pod folder in it) is created by
//! the kubelet owned by root, and `fsGroup` does not apply to hostPath
//! volumes; the operator's pods therefore run this as an init step, as root
//! with CAP_CHOWN as their only capability, before the daemon starts as uid
//! 65532. Without CAP_DAC_OVERRIDE root reads only what it may read as uid 0,
//! so the walk changes children before their directory: a directory already
//! owned by the target is left as it is (the daemon made it, or an earlier run
//! finished it), which also makes a second run, on every pod start, cheap.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;

use crate::args::ChownDataArgs;

/// Parses `UID:GID` (two numbers).
pub fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("'{s}' is not UID:GID (two numbers, such as 65532:65532)");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

/// Runs `alces chown-data`.
pub fn run(a: &ChownDataArgs) -> anyhow::Result<()> {
    let (uid, gid) = a.owner;
    for d in &a.dirs {
        let md = std::fs::symlink_metadata(d)
            .with_context(|| format!("cannot use data directory {}", d.display()))?;
        if !md.is_dir() {
            anyhow::bail!("{} is not a directory", d.display());
        }
        let changed = give(d, md.dev(), uid, gid)?;
        println!("{}: {changed} entries given to {uid}:{gid}", d.display());
    }
    Ok(())
}

/// Gives `path` and what is below it (on device `dev`) to `uid:gid`, children
/// first; returns how many entries changed owner.
fn give(path: &Path, dev: u64, uid: u32, gid: u32) -> anyhow::Result<u64> {
    let md = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if md.uid() == uid && md.gid() == gid {
        return Ok(0);
    }
    let mut changed = 0;
    if md.is_dir() && md.dev() == dev {
        let entries = std::fs::read_dir(path).with_context(|| {
            format!(
                "cannot list {} (owned by {}:{}, mode {:04o}); give it to {uid}:{gid} by hand (chown -R)",
                path.display(),
                md.uid(),
                md.gid(),
                md.mode() & 0o7777
            )
        })?;
        for e in entries {
            let e = e.with_context(|| format!("cannot list {}", path.display()))?;
            changed += give(&e.path(), dev, uid, gid)?;
        }
    }
    if md.dev() == dev {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).with_context(|| {
            format!(
                "cannot give {} to {uid}:{gid} (this needs root or CAP_CHOWN)",
                path.display()
            )
        })?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_or_say_what_is_wrong() {
        assert_eq!(parse_owner("65532:65532"), Ok((65532, 65532)));
        assert_eq!(parse_owner("0:5"), Ok((0, 5)));
        for bad in ["", "65532", "a:b", "1:-2", ":1", "1:"] {
            let e = parse_owner(bad).unwrap_err();
            assert!(e.contains("UID:GID") && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn a_tree_is_given_children_first_without_following_links() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"x").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("chunks/0a")).unwrap();
        std::fs::write(data.join("chunks/0a/chunk"), b"y").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let dev = std::fs::metadata(&data).unwrap().dev();
        let (uid, gid) = if root {
            (4321, 4321)
        } else {
            // Not root: giving the tree to its own owner is all that works.
            let m = std::fs::metadata(&data).unwrap();
            (m.uid(), m.gid())
        };
        let n = give(&data, dev, uid, gid).unwrap();
        let owner = |p: &Path| {
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.gid())
        };
        for p in ["", "chunks", "chunks/0a", "chunks/0a/chunk", "link"] {
            assert_eq!(owner(&data.join(p)), (uid, gid), "{p}");
        }
        if root {
            assert_eq!(n, 5);
            // The link's target, outside the tree, is untouched.
            assert_eq!(owner(&outside).0, 0);
            // Already given: nothing to do.
            assert_eq!(give(&data, dev, uid, gid).unwrap(), 0);
        } else {
            assert_eq!(n, 0);
        }
    }
}
