//! Alces mounts as listed in `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// One Alces FUSE mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlcesMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The master address from the fsname `alces:<master><subdir>`.
    pub master: String,
    /// The mounted subdirectory of the filesystem ("/" for the whole filesystem).
    pub subdir: String,
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the fsname `alces:<master><subdir>` into master and subdir.
pub fn parse_fsname(source: &str) -> Option<(String, String)> {
    let rest = source.strip_prefix("alces:")?;
    match rest.find('/') {
        Some(i) => Some((rest[..i].to_string(), rest[i..].to_string())),
        None => Some((rest.to_string(), "/".to_string())),
    }
}

/// Parses mountinfo text and returns every Alces mount (fstype `fuse.alces`, or
/// `fuse` with a source `alces:...`).
pub fn parse(text: &str) -> Vec<AlcesMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rf: Vec<&str> = right.split(' ').collect();
        // fstype `fuse.alces`, or plain `fuse` with an `alces:` source (a mount
        // made without the subtype).
        if fields.len() < 5 || rf.len() < 2 || !(rf[0] == "fuse.alces" || rf[0] == "fuse") {
            continue;
        }
        let Some((master, subdir)) = parse_fsname(&unescape(rf[1])) else {
            continue;
        };
        out.push(AlcesMount {
            mount_point: PathBuf::from(unescape(fields[4])),
            master,
            subdir,
        });
    }
    out
}

/// Every Alces mount of this process's mount namespace.
pub fn alces_mounts() -> Vec<AlcesMount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// Whether `path` is a mount point of any filesystem (a line of mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    text.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .map(|m| Path::new(&unescape(m)) == want)
            .unwrap_or(false)
    })
}

/// Finds the Alces mount holding `path` (already absolute and canonical) and returns
/// it with the path from the filesystem root.
pub fn translate(mounts: &[AlcesMount], path: &Path) -> Option<(AlcesMount, String)> {
    let m = mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())?;
    let rel = path.strip_prefix(&m.mount_point).ok()?;
    let mut fs = m.subdir.trim_end_matches('/').to_string();
    for c in rel.components() {
        fs.push('/');
        fs.push_str(&c.as_os_str().to_string_lossy());
    }
    if fs.is_empty() {
        fs.push('/');
    }
    Some((m.clone(), fs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_alces_mounts_and_translates() {
        let text =
            "36 35 98:0 / /mnt/a\\040b rw,nosuid - fuse.alces alces:127.0.0.1:9421/sub/dir rw\n\
                    37 35 98:0 / /mnt/c rw - ext4 /dev/sda rw\n\
                    39 35 98:0 / /mnt/e rw - fuse sshfs:host rw\n\
                    38 35 98:0 / /mnt/d rw - fuse.alces alces:host:1 rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].master, "127.0.0.1:9421");
        assert_eq!(m[0].subdir, "/sub/dir");
        assert_eq!(m[1].subdir, "/");
        let (mm, p) = translate(&m, Path::new("/mnt/a b/x/y")).unwrap();
        assert_eq!(mm.master, "127.0.0.1:9421");
        assert_eq!(p, "/sub/dir/x/y");
        let (_, p) = translate(&m, Path::new("/mnt/d")).unwrap();
        assert_eq!(p, "/");
        assert!(translate(&m, Path::new("/mnt/c/x")).is_none());
    }
}
