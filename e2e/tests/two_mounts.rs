//! Two mounts of one filesystem: close-to-open consistency between them.

use std::fs;
use std::io::Write;
use std::time::Duration;

use alces_e2e::{cpath, errno, pattern, wait_until, Cluster};

/// The value of xattr `name` of `path`, or the errno.
fn getxattr(path: &std::path::Path, name: &str) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(path), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Sets xattr `name` of `path` to `value`.
fn setxattr(path: &std::path::Path, name: &str, value: &[u8]) {
    let (p, n) = (cpath(path), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: errno {}",
        path.display(),
        errno()
    );
}

#[test]
fn two_mounts() {
    let c = Cluster::start_default();
    let other = c.mount_extra("mnt2", &[]);
    let a = c.path("shared.txt");
    let b = other.path.join("shared.txt");

    fs::write(&a, b"version one").unwrap();
    // New names may take up to the entry timeout to appear on the other mount.
    wait_until(
        "the new file to appear on the second mount",
        Duration::from_secs(10),
        || b.exists(),
    );
    assert_eq!(fs::read(&b).unwrap(), b"version one");

    // Same length, different content: after close on A, an open on B sees it.
    fs::write(&a, b"version two").unwrap();
    assert_eq!(
        fs::read(&b).unwrap(),
        b"version two",
        "close-to-open: stale data on the second mount"
    );

    // Growing, multi-chunk content written on B, read on A.
    let big = pattern(11, 2 * 1024 * 1024 + 999);
    let mut f = fs::File::create(&b).unwrap();
    f.write_all(&big).unwrap();
    drop(f);
    assert_eq!(
        fs::read(&a).unwrap(),
        big,
        "close-to-open: A sees B's new content"
    );

    // Shrinking on A is seen on B.
    fs::write(&a, b"short").unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"short");

    // A file kept open on B while A rewrites it: a new open sees the new data.
    let keep = fs::File::open(&b).unwrap();
    fs::write(&a, b"third!").unwrap();
    assert_eq!(fs::read(&b).unwrap(), b"third!");
    drop(keep);

    // Unlink on A: B stops seeing it (after the entry timeout at most).
    fs::remove_file(&a).unwrap();
    wait_until(
        "the unlinked file to vanish on the second mount",
        Duration::from_secs(10),
        || !b.exists(),
    );
    // Directories created on B show on A.
    fs::create_dir(other.path.join("fromb")).unwrap();
    fs::write(other.path.join("fromb/x"), b"x").unwrap();
    wait_until("B's directory on A", Duration::from_secs(10), || {
        c.path("fromb/x").exists()
    });
    assert_eq!(fs::read(c.path("fromb/x")).unwrap(), b"x");

    // Extended attributes. A knows a file it just created has none and answers
    // getxattr locally for the attribute timeout; its own setxattr ends that at
    // once, and one made on B shows on A within the timeout.
    let xa = c.path("xattrs.txt");
    let xb = other.path.join("xattrs.txt");
    fs::write(&xa, b"x").unwrap();
    assert_eq!(getxattr(&xa, "user.mine"), Err(libc::ENODATA));
    setxattr(&xa, "user.mine", b"from a");
    assert_eq!(getxattr(&xa, "user.mine").as_deref(), Ok(&b"from a"[..]));
    wait_until("the new file on B", Duration::from_secs(10), || xb.exists());
    setxattr(&xb, "user.theirs", b"from b");
    wait_until("B's xattr seen on A", Duration::from_secs(10), || {
        getxattr(&xa, "user.theirs").as_deref() == Ok(&b"from b"[..])
    });
    let fresh = c.path("fresh.txt");
    fs::write(&fresh, b"y").unwrap();
    let fresh_b = other.path.join("fresh.txt");
    wait_until("the fresh file on B", Duration::from_secs(10), || {
        fresh_b.exists()
    });
    setxattr(&fresh_b, "user.late", b"late");
    wait_until(
        "an xattr set on B after A cached none",
        Duration::from_secs(10),
        || getxattr(&fresh, "user.late").as_deref() == Ok(&b"late"[..]),
    );
}
