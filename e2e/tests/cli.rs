//! The `alces` CLI against a live local cluster: status, fileinfo, and the
//! guards of `alces local up` / `down`.

use std::process::Command;

use alces_e2e::{bin, free_port, pattern, write_synced, Cluster, Proc};
use common::{stderr, stdout};

mod common;

#[test]
fn cli() {
    let c = Cluster::start_default();

    // status --json: every chunkserver, with the pid of the local process.
    let o = c.cli(&["--json", "status"]);
    assert!(o.status.success(), "alces status: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("status JSON");
    assert_eq!(v["epoch"], 1);
    let servers = v["chunkservers"].as_array().expect("chunkservers");
    assert_eq!(servers.len(), 3);
    for i in 1..=3 {
        let addr = c.cs_addr(i);
        let s = servers
            .iter()
            .find(|s| s["address"] == addr.as_str())
            .expect("server listed");
        assert_eq!(s["connected"], true);
        assert_eq!(s["pid"], c.pid(Proc::Chunkserver(i)).expect("pid"));
    }
    let o = c.cli(&["status"]);
    assert!(stdout(&o).contains("CHUNKSERVER") && stdout(&o).contains(&c.cs_addr(1)));

    // fileinfo through the mount path, and by filesystem path.
    std::fs::create_dir(c.path("d")).unwrap();
    write_synced(&c.path("d/f"), &pattern(1, 2_500_000)).unwrap();
    let o = c.cli(&["--json", "fileinfo", &c.path("d/f").to_string_lossy()]);
    assert!(o.status.success(), "fileinfo: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["path"], "/d/f");
    assert_eq!(v["size"], 2_500_000);
    let chunks = v["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 3);
    assert!(chunks
        .iter()
        .all(|ch| !ch["copies"].as_array().unwrap().is_empty()));
    let o = c.cli(&["fileinfo", "--fs-path", "/d/f"]);
    assert!(
        o.status.success() && stdout(&o).contains("3 chunks"),
        "{}",
        stdout(&o)
    );
    let o = c.cli(&["fileinfo", "--fs-path", "/d/missing"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
    let o = c.cli(&["fileinfo", "/etc/hostname"]);
    assert!(!o.status.success() && stderr(&o).contains("not inside an Alces mount"));

    // Unreachable master.
    let port = free_port();
    let o = Command::new(bin("alces"))
        .args(["--master", &format!("127.0.0.1:{port}"), "--secret-file"])
        .arg(&c.secret_file)
        .arg("status")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("cannot reach master at 127.0.0.1:"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("is it running?"));

    // `local up` refuses a directory whose cluster runs, and a non-empty mount point.
    let other_mnt = c.scratch("other-mnt");
    let o = Command::new(bin("alces"))
        .args(["local", "up", "--detach", "--dir"])
        .arg(&c.dir)
        .arg("--mount")
        .arg(&other_mnt)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already has a running cluster"),
        "{}",
        stderr(&o)
    );
    std::fs::write(other_mnt.join("junk"), b"x").unwrap();
    let o = Command::new(bin("alces"))
        .args(["local", "up", "--detach", "--dir"])
        .arg(c.scratch("other-dir"))
        .arg("--mount")
        .arg(&other_mnt)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    let o = Command::new(bin("alces"))
        .args([
            "local",
            "up",
            "--detach",
            "--chunk-size",
            "3",
            "--dir",
            "/tmp/x",
            "--mount",
            "/tmp/y",
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("chunk size"),
        "{}",
        stderr(&o)
    );

    // `local down` stops everything and is idempotent.
    let pids: Vec<i32> = [Proc::Master, Proc::Mount, Proc::Chunkserver(1)]
        .iter()
        .map(|p| c.pid(*p).expect("running"))
        .collect();
    for _ in 0..2 {
        let o = Command::new(bin("alces"))
            .args(["local", "down", "--dir"])
            .arg(&c.dir)
            .output()
            .unwrap();
        assert!(o.status.success(), "local down: {}", stderr(&o));
    }
    assert!(
        pids.iter().all(|p| !alces_e2e::alive(*p)),
        "processes survived local down"
    );
    assert!(!alces_e2e::is_mount_point(&c.mnt));
}

/// `alces local up` run as root mounts with allow_other and default_permissions:
/// every local user can use the mount, the kernel checking permissions.
#[test]
fn local_up_mount_serves_every_user_with_kernel_permission_checks() {
    use std::os::unix::process::CommandExt;
    let c = Cluster::start_default();
    let shared = c.path("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(c.path("root-only"), b"secret").unwrap();
    std::fs::set_permissions(
        c.path("root-only"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let as_user = |script: String| {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .uid(5151)
            .gid(5151)
            .output()
            .unwrap()
    };
    let ok = as_user(format!(
        "echo mine > {}/f && cat {}/f",
        shared.display(),
        shared.display()
    ));
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(stdout(&ok).trim(), "mine");
    let denied = as_user(format!("cat {}", c.path("root-only").display()));
    assert!(
        !denied.status.success(),
        "a 0600 root file was readable by another user"
    );
    assert!(
        stderr(&denied).contains("Permission denied"),
        "{}",
        stderr(&denied)
    );
}
