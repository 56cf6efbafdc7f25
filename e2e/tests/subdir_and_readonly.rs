//! Mounting a subdirectory, and read-only mounts.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;

use alces_e2e::Cluster;

fn names(p: &std::path::Path) -> BTreeSet<String> {
    fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn subdir_and_readonly() {
    let c = Cluster::start_default();
    fs::create_dir_all(c.path("sub/inner")).unwrap();
    fs::write(c.path("sub/file"), b"in sub").unwrap();
    fs::write(c.path("sub/inner/deep"), b"deep").unwrap();
    fs::write(c.path("outside"), b"secret").unwrap();

    let sub = c.mount_extra("mnt-sub", &["--subdir", "/sub"]);
    assert_eq!(
        names(&sub.path),
        ["file", "inner"].iter().map(|s| s.to_string()).collect()
    );
    assert_eq!(fs::read(sub.path.join("file")).unwrap(), b"in sub");
    assert_eq!(fs::read(sub.path.join("inner/deep")).unwrap(), b"deep");
    // '..' from the subdir root leads to the directory holding the mount point,
    // never to the filesystem's real root.
    let parent = sub.path.parent().unwrap();
    let up = fs::metadata(sub.path.join("inner/../..")).unwrap();
    assert_eq!(
        (up.dev(), up.ino()),
        (
            fs::metadata(parent).unwrap().dev(),
            fs::metadata(parent).unwrap().ino()
        )
    );
    assert!(!sub.path.join("inner/../../outside").exists() || parent.join("outside").exists());
    assert!(!sub.path.join("outside").exists());
    // A symlink inside the subdir pointing above it does not reach the filesystem root.
    std::os::unix::fs::symlink("../outside", sub.path.join("escape")).unwrap();
    assert!(
        fs::read(sub.path.join("escape")).is_err(),
        "a symlink escaped the mounted subdirectory"
    );
    // Writes through the subdir mount land in /sub.
    fs::write(sub.path.join("new"), b"via sub").unwrap();
    assert_eq!(fs::read(c.path("sub/new")).unwrap(), b"via sub");
    // A subdirectory that does not exist cannot be mounted.
    let log = c.dir.join("badsub.log");
    let mut child = c.spawn_mount(
        &c.dir.parent().unwrap().join("mnt-bad"),
        &c.secret_file,
        &["--subdir", "/nonexistent"],
        &log,
    );
    let st = alces_e2e::retry(std::time::Duration::from_secs(30), || {
        child.try_wait().ok().flatten().ok_or(())
    })
    .expect("mounting a missing subdir must fail and exit");
    assert!(!st.success());
    drop(sub);

    let ro = c.mount_extra("mnt-ro", &["--read-only"]);
    assert_eq!(fs::read(ro.path.join("outside")).unwrap(), b"secret");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(
        fs::write(ro.path.join("outside"), b"x"),
        "overwrite on a read-only mount",
    );
    erofs(
        fs::write(ro.path.join("newfile"), b"x"),
        "create on a read-only mount",
    );
    erofs(
        fs::create_dir(ro.path.join("newdir")),
        "mkdir on a read-only mount",
    );
    erofs(
        fs::remove_file(ro.path.join("outside")),
        "unlink on a read-only mount",
    );
    erofs(
        fs::rename(ro.path.join("outside"), ro.path.join("o2")),
        "rename on a read-only mount",
    );
    use std::os::unix::fs::PermissionsExt;
    erofs(
        fs::set_permissions(ro.path.join("outside"), fs::Permissions::from_mode(0o600)),
        "chmod on a read-only mount",
    );
    assert_eq!(
        fs::read(c.path("outside")).unwrap(),
        b"secret",
        "the read-only mount changed data"
    );
}
