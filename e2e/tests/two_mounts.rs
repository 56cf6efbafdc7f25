//! Two mounts of one filesystem: close-to-open consistency between them.

use std::fs;
use std::io::Write;
use std::time::Duration;

use alces_e2e::{pattern, wait_until, Cluster};

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
}
