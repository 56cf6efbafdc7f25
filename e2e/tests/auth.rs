//! Peers with a wrong cluster secret are refused with a clear error.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use alces_e2e::{bin, free_port, is_mount_point, retry, tail, Cluster};

#[test]
fn auth() {
    let c = Cluster::start_default();
    let wrong = c.dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-cluster-secret-at-all\n").unwrap();

    // CLI.
    let out = Command::new(bin("alces"))
        .args(["--master", &c.master, "--secret-file"])
        .arg(&wrong)
        .arg("status")
        .env_remove("ALCES_SECRET")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "alces status with a wrong secret succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("secret"),
        "the CLI error does not name the secret: {err}"
    );
    // The right secret works.
    let ok = c.cli(&["status"]);
    assert!(
        ok.status.success(),
        "alces status: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // No secret at all.
    let out = Command::new(bin("alces"))
        .args(["--master", &c.master, "status"])
        .env_remove("ALCES_SECRET")
        .env_remove("ALCES_SECRET_FILE")
        .env_remove("ALCES_LOCAL_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));

    // Mount: must fail, exit and say why.
    let mnt = c.dir.parent().unwrap().join("mnt-wrong");
    let log = c.dir.join("mount-wrong.log");
    let mut child = c.spawn_mount(&mnt, &wrong, &[], &log);
    let st = retry(Duration::from_secs(30), || {
        child.try_wait().ok().flatten().ok_or(())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        st.is_ok(),
        "alces-mount with a wrong secret kept running; log:\n{}",
        tail(&log, 20)
    );
    assert!(!st.unwrap().success());
    assert!(
        !is_mount_point(&mnt),
        "a mount with a wrong secret got mounted"
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("secret"),
        "the mount's log does not name the secret problem:\n{}",
        tail(&log, 20)
    );

    // Chunkserver: refused (it exits, or keeps retrying while logging the error),
    // and the master never lists it as connected.
    let data = c.dir.join("cs-wrong");
    std::fs::create_dir_all(&data).unwrap();
    let cslog = c.dir.join("cs-wrong.log");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let f = std::fs::File::create(&cslog).unwrap();
    let mut cs = Command::new(bin("alces-chunkserver"))
        .args([
            "--master",
            &c.master,
            "--listen",
            &addr,
            "--advertise",
            &addr,
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--secret-file")
        .arg(&wrong)
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    let seen = retry(Duration::from_secs(30), || {
        let exited = matches!(cs.try_wait(), Ok(Some(_)));
        let logged = std::fs::read_to_string(&cslog)
            .unwrap_or_default()
            .contains("secret");
        if exited || logged {
            Ok(())
        } else {
            Err(())
        }
    });
    let _ = cs.kill();
    let _ = cs.wait();
    assert!(
        seen.is_ok(),
        "chunkserver with a wrong secret neither exited nor logged it:\n{}",
        tail(&cslog, 20)
    );
    assert!(
        std::fs::read_to_string(&cslog)
            .unwrap_or_default()
            .contains("secret"),
        "the chunkserver log does not name the secret problem:\n{}",
        tail(&cslog, 20)
    );
    let st = c.status().expect("status");
    assert!(
        !st.chunkservers.iter().any(|s| s.address == addr),
        "the master registered a chunkserver with a wrong secret"
    );
    let _: PathBuf = data;
}
