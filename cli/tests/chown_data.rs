//! `alces chown-data` as the operator's init step runs it: root with
//! CAP_CHOWN as its only capability (no DAC_OVERRIDE), over a tree the
//! kubelet and daemons that ran as root made.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const ALCES: &str = env!("CARGO_BIN_EXE_alces");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs `alces chown-data` with only the capabilities in `caps` ("" for none).
fn chown_data(caps: &str, args: &[&str]) -> std::process::Output {
    let set = if caps.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,+{caps}")
    };
    Command::new("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .arg(ALCES)
        .arg("chown-data")
        .args(args)
        .output()
        .expect("setpriv runs")
}

#[test]
fn gives_a_root_made_tree_with_chown_only_and_says_why_when_it_cannot() {
    if !is_root() {
        println!("SKIPPED: needs root (the init step runs as root with CAP_CHOWN)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pod-0");
    // What the kubelet makes (0755, root), and what root-run daemons left:
    // a private folder, private files, a folder an earlier run was
    // interrupted in (children are given first), a symbolic link to outside.
    std::fs::create_dir_all(data.join("chunks/0a")).unwrap();
    std::fs::create_dir_all(data.join("private")).unwrap();
    std::fs::create_dir_all(data.join("half")).unwrap();
    mode(&data, 0o755);
    mode(&data.join("private"), 0o700);
    std::fs::write(data.join("private/epoch"), b"3").unwrap();
    mode(&data.join("private/epoch"), 0o600);
    std::fs::write(data.join("chunks/0a/chunk_000000000000000a.dat"), b"x").unwrap();
    std::fs::write(data.join("half/f"), b"y").unwrap();
    std::fs::write(data.join("half/g"), b"y").unwrap();
    std::os::unix::fs::chown(data.join("half/f"), Some(65532), Some(65532)).unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"z").unwrap();
    std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
    let d = data.display().to_string();

    // Without CAP_CHOWN: refused, saying what it needs.
    let out = chown_data("", &["--owner", "65532:65532", &d]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CAP_CHOWN"), "{err}");

    let out = chown_data("chown", &["--owner", "65532:65532", &d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in [
        "",
        "chunks",
        "chunks/0a",
        "chunks/0a/chunk_000000000000000a.dat",
        "private",
        "private/epoch",
        "half",
        "half/f",
        "half/g",
        "link",
    ] {
        let m = std::fs::symlink_metadata(data.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65532, 65532), "{p}");
    }
    assert_eq!(
        std::fs::metadata(&outside).unwrap().uid(),
        0,
        "a link's target is not followed"
    );
    // Again (every pod start): nothing to change.
    let out = chown_data("chown", &["--owner", "65532:65532", &d]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(": 0 entries"));

    // Bad input.
    let file = outside.display().to_string();
    for (args, want) in [
        (vec!["--owner", "nobody", d.as_str()], "UID:GID"),
        (
            vec!["--owner", "1:2", "/nonexistent/alces"],
            "/nonexistent/alces",
        ),
        (vec!["--owner", "1:2", file.as_str()], "not a directory"),
    ] {
        let out = Command::new(ALCES)
            .arg("chown-data")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
