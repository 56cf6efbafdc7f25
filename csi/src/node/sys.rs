//! The node's kernel side: the mount table, bind mounts, unmounts and
//! `statvfs`, with paths checked to stay inside the kubelet's directory.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether a mount-table entry is an Alces FUSE mount (type `fuse` or
/// `fuse.alces`, source `alces:<master><path>`), or a bind mount of one.
pub fn is_alces(m: &MountEntry) -> bool {
    matches!(m.fs_type.as_str(), "fuse" | "fuse.alces") && m.source.starts_with("alces:")
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Root of the mount within its filesystem (`/` for the FUSE mount, the
    /// same for a bind mount of its root).
    pub root: String,
    /// Filesystem type (`fuse.alces`).
    pub fs_type: String,
    /// Mount source (`alces:<master><subdir>`).
    pub source: String,
    /// Major:minor of the filesystem: a bind mount shares it with its source.
    pub dev: String,
    /// Per-mount options (`rw`/`ro`, ...).
    pub options: String,
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\134` for a
/// backslash). Only `\000`..`\377` name a byte; anything else is kept as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of `/proc/self/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let p: Vec<&str> = post.split(' ').collect();
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                root: unescape(f.get(3)?),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
                options: f.get(5)?.to_string(),
                fs_type: p.first()?.to_string(),
                source: unescape(p.get(1).copied().unwrap_or("")),
            })
        })
        .collect()
}

/// The current mount table. A mount point that is not UTF-8 (any user of the
/// node may make one) reads with replacement characters instead of failing the
/// whole table; the driver's own paths are UTF-8.
pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    let raw = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&String::from_utf8_lossy(&raw)))
}

/// The topmost mount at `path`, if any.
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// Bind-mounts `source` on `target`, then applies `flags` (MS_RDONLY,
/// MS_NOSUID, ...) to the bind mount.
pub fn bind(source: &Path, target: &Path, flags: libc::c_ulong) -> std::io::Result<()> {
    let (s, t) = (cstr(source)?, cstr(target)?);
    // SAFETY: valid NUL-terminated strings; null fs type and data are allowed for MS_BIND.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags != 0 {
        // SAFETY: as above; a remount of the bind mount changes its flags only.
        let r = unsafe {
            libc::mount(
                std::ptr::null(),
                t.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | flags,
                std::ptr::null(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let _ = unmount(target);
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `path`; a busy mount is detached (lazy unmount). `Ok(false)` when
/// nothing was mounted there.
pub fn unmount(path: &Path) -> std::io::Result<bool> {
    let c = cstr(path)?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(false),
        Some(libc::EBUSY) | Some(libc::ENOTCONN) | Some(libc::EIO) => {
            // SAFETY: as above.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
                Ok(true)
            } else {
                Err(std::io::Error::last_os_error())
            }
        }
        _ => Err(e),
    }
}

/// Space and inode counts of a mounted filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes in all.
    pub total_bytes: u64,
    /// Bytes available.
    pub avail_bytes: u64,
    /// Bytes used.
    pub used_bytes: u64,
    /// Inodes in all.
    pub total_inodes: u64,
    /// Inodes free.
    pub free_inodes: u64,
}

/// `statvfs` of `path`, giving up after `timeout` (a FUSE mount whose daemon
/// does not answer would block forever).
pub async fn usage(path: &Path, timeout: Duration) -> std::io::Result<Usage> {
    let c = cstr(path)?;
    let task = tokio::task::spawn_blocking(move || {
        // SAFETY: zeroed statvfs is a valid out-parameter; c is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let bs = st.f_frsize as u64;
        Ok(Usage {
            total_bytes: st.f_blocks as u64 * bs,
            avail_bytes: st.f_bavail as u64 * bs,
            used_bytes: (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * bs,
            total_inodes: st.f_files as u64,
            free_inodes: st.f_ffree as u64,
        })
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the mount did not answer statvfs within {timeout:?}"),
        )),
    }
}

/// Checks that `path` (a staging or target path from the CO) is an absolute,
/// normalised path strictly inside `root` (the kubelet's directory), also
/// after resolving the symbolic links of its existing part.
pub fn check_node_path(root: &Path, what: &str, path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err(format!("{what} is required"));
    }
    if path.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    if path.len() > 4096 {
        return Err(format!("{what} is {} bytes long; at most 4096", path.len()));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{what} {path:?} is not an absolute path"));
    }
    // Path::components() would silently drop "." components: check the text.
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!("{what} {path:?} contains '.' or '..'"));
    }
    let outside = || {
        format!(
            "{what} {path:?} is outside the kubelet directory {}; refusing it",
            root.display()
        )
    };
    if !p.starts_with(root) || p == root {
        return Err(outside());
    }
    // The existing part, with symbolic links resolved, must stay inside too.
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut existing = p;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    if let Ok(real) = std::fs::canonicalize(existing) {
        if !real.starts_with(&real_root) {
            return Err(outside());
        }
    }
    Ok(p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 30 0:55 / /var/lib/kubelet/x/globalmount rw,nosuid,nodev,relatime shared:7 - fuse.alces alces:127.0.0.1:9421/csi/volumes/v rw,user_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert!(is_alces(&m[1]));
        assert!(!is_alces(&m[0]));
        assert_eq!(m[1].dev, "0:55");
        assert_eq!(m[1].source, "alces:127.0.0.1:9421/csi/volumes/v");
    }

    /// Found by the `text_files` fuzz target: `\\777` overflowed a byte.
    #[test]
    fn escapes_past_a_byte_are_kept_as_text() {
        let t = "22 27 0:21 / /a\\777b\\134c\\400 rw - proc proc rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mount_point, PathBuf::from("/a\\777b\\c\\400"));
        assert_eq!(unescape("\\377"), "\u{fffd}");
        assert_eq!(unescape("x\\04"), "x\\04");
    }

    #[test]
    fn node_paths_stay_inside_the_kubelet_directory() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("kubelet");
        std::fs::create_dir_all(root.join("pods")).unwrap();
        let r = root.to_str().unwrap();
        assert!(check_node_path(&root, "target_path", &format!("{r}/pods/a/mount")).is_ok());
        for bad in [
            String::new(),
            "relative/x".into(),
            format!("{r}/../etc"),
            format!("{r}/pods/./x"),
            "/etc/passwd".into(),
            r.to_string(),
            format!("{r}x/y"),
            format!("{r}/a\0b"),
        ] {
            assert!(
                check_node_path(&root, "target_path", &bad).is_err(),
                "{bad:?}"
            );
        }
        std::os::unix::fs::symlink("/etc", root.join("pods/escape")).unwrap();
        let e = check_node_path(&root, "target_path", &format!("{r}/pods/escape/x")).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }
}
