//! Exports on real FUSE mounts: a mount presenting a credential sees only the
//! credential's directory (`..` and symlinks stay inside), a read-only
//! credential's mount refuses writes, all squash gives new files the
//! anonymous ids, and revoking the credential makes the live mount's next
//! calls fail within seconds; the revocation survives a master restart.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alces_e2e::{Cluster, Proc};

fn issue(c: &Cluster, name: &str, extra: &[&str]) -> (u64, PathBuf) {
    common::issue_credential(c, name, extra)
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn exports_on_live_mounts() {
    let c = Cluster::start_default();
    fs::create_dir_all(c.path("vols/a/sub")).unwrap();
    fs::create_dir_all(c.path("vols/b")).unwrap();
    fs::create_dir_all(c.path("outside")).unwrap();
    fs::write(c.path("vols/a/file"), b"in a").unwrap();
    fs::write(c.path("vols/b/other"), b"volume b").unwrap();
    fs::write(c.path("outside/secret"), b"secret").unwrap();

    // Bad input: a path that is not a directory.
    let e = c
        .cli_json(&["credential", "issue", "--path", "/vols/a/file"])
        .unwrap_err();
    assert!(e.contains("not a directory"), "{e}");

    let (id, token) = issue(&c, "a", &["--path", "/vols/a"]);
    let mnt = c.mount_extra(
        "mnt-cred-a",
        &["--credential-file", token.to_str().unwrap()],
    );
    assert_eq!(names(&mnt.path), ["file", "sub"]);
    assert_eq!(fs::read(mnt.path.join("file")).unwrap(), b"in a");
    fs::write(mnt.path.join("new"), b"via credential").unwrap();
    assert_eq!(fs::read(c.path("vols/a/new")).unwrap(), b"via credential");
    // `..` from the mount's root is the directory holding the mount point.
    let parent = mnt.path.parent().unwrap();
    let up = fs::metadata(mnt.path.join("sub/../..")).unwrap();
    let p = fs::metadata(parent).unwrap();
    assert_eq!((up.dev(), up.ino()), (p.dev(), p.ino()));
    // Symlinks resolve on this side, within the mount: none reaches /outside
    // or /vols/b of the filesystem.
    for (name, target) in [
        ("up1", "../outside/secret"),
        ("up2", "../../outside/secret"),
        ("up3", "sub/../../vols/b/other"),
        ("abs", "/outside/secret"),
    ] {
        std::os::unix::fs::symlink(target, mnt.path.join(name)).unwrap();
        let got = fs::read(mnt.path.join(name)).ok();
        assert!(
            got.as_deref() != Some(b"secret".as_slice())
                && got.as_deref() != Some(b"volume b".as_slice()),
            "symlink {name} -> {target} escaped the credential's directory"
        );
    }

    // Read-only and all-squash credentials.
    let (_, ro_token) = issue(&c, "a-ro", &["--path", "/vols/a", "--read-only"]);
    let ro = c.mount_extra(
        "mnt-cred-ro",
        &["--credential-file", ro_token.to_str().unwrap()],
    );
    assert_eq!(fs::read(ro.path.join("file")).unwrap(), b"in a");
    let e = fs::write(ro.path.join("x"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::remove_file(ro.path.join("file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    drop(ro);
    // Squashed callers create in /vols/a only if its mode lets them (the
    // master checks permissions for credential sessions).
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(c.path("vols/a"), fs::Permissions::from_mode(0o777)).unwrap();
    }
    let (_, sq_token) = issue(
        &c,
        "a-squash",
        &[
            "--path",
            "/vols/a",
            "--squash",
            "all",
            "--anon-uid",
            "4242",
            "--anon-gid",
            "4343",
        ],
    );
    let sq = c.mount_extra(
        "mnt-cred-sq",
        &["--credential-file", sq_token.to_str().unwrap()],
    );
    fs::write(sq.path.join("squashed"), b"x").unwrap();
    let md = fs::metadata(c.path("vols/a/squashed")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4242, 4343));
    drop(sq);

    // Revocation: the live mount's next call fails within seconds.
    let listed = c.cli_json(&["credential", "list"]).unwrap();
    assert!(listed.as_array().unwrap().iter().any(|v| v["id"] == id));
    let started = Instant::now();
    c.cli_json(&["credential", "revoke", &id.to_string()])
        .expect("alces credential revoke");
    let mut n = 0;
    let err = loop {
        n += 1;
        match fs::write(mnt.path.join(format!("after-{n}")), b"x") {
            Err(e) => break e,
            Ok(()) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "writes still succeed 10 s after the revocation"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    println!("revoked mount refused after {:?}: {err}", started.elapsed());
    assert!(
        matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)),
        "{err}"
    );
    let log = fs::read_to_string(&mnt.log).unwrap_or_default();
    assert!(
        log.contains(&format!("credential {id} revoked")),
        "the mount's log does not say why: {}",
        alces_e2e::tail(&mnt.log, 20)
    );
    drop(mnt);

    // The revocation survives a master restart: a new mount is refused.
    c.kill9(Proc::Master);
    c.restart(Proc::Master);
    let log = c.dir.join("mnt-revoked.log");
    let mut child = c.spawn_mount(
        &c.dir.parent().unwrap().join("mnt-revoked"),
        &c.secret_file,
        &["--credential-file", token.to_str().unwrap()],
        &log,
    );
    let st = alces_e2e::retry(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().ok_or(())
    })
    .expect("a mount with a revoked credential must exit");
    assert!(!st.success());
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("revoked"), "{}", alces_e2e::tail(&log, 20));
}
