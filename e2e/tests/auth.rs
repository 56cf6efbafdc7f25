//! Peers with a wrong cluster secret are refused with a clear error.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use alces_e2e::{bin, free_port, is_mount_point, retry, tail, Cluster};

#[test]
fn auth() {
    let c = Cluster::start_default();
    let wrong = c.dir.join("wrong-secret");
    std::fs::write(&wrong, "not-the-cluster-secret-at-all\n").unwrap();
    // Owner-only, so what is refused is the secret, not the file's mode.
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();

    // CLI.
    let out = Command::new(bin("alces"))
        .args(c.tls_flags())
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
        .args(c.tls_flags())
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
        // Under TLS (ALCES_E2E_TLS=1) it gets past the handshake with the
        // harness's CA and certificate, so the secret is what is refused.
        .args(c.tls_flags())
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

/// Every binary that reads a cluster secret file refuses one that others can
/// read, before it does anything else, naming the file, its mode and the fix.
#[test]
fn secret_files_readable_by_others_stop_every_binary() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-that-leaked-to-everyone\n").unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (d, m, sock) = (
        data.display().to_string(),
        mnt.display().to_string(),
        format!("unix://{}", dir.path().join("csi.sock").display()),
    );
    let master = "127.0.0.1:9"; // never reached: the secret is checked first
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (
            "alces-master",
            vec![
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
                &d,
            ],
        ),
        (
            "alces-metalogger",
            vec![
                "--master",
                master,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &d,
            ],
        ),
        (
            "alces-chunkserver",
            vec![
                "--master",
                master,
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                &d,
            ],
        ),
        ("alces-mount", vec!["--master", master, &m]),
        ("alces", vec!["--master", master, "status"]),
        (
            "alces-csi",
            vec!["controller", "--endpoint", &sock, "--master", master],
        ),
    ];
    for mode in [0o644, 0o640] {
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(mode)).unwrap();
        if mode == 0o640 {
            // A group other than the process's own (as root in CI).
            let _ = std::os::unix::fs::chown(&secret, None, Some(4242));
            if std::fs::metadata(&secret)
                .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
                .ok()
                != Some(4242)
            {
                println!("mode 0640 with another group: needs root to chown; checked 0644 only");
                continue;
            }
        }
        for (b, args) in &runs {
            let out = Command::new(bin(b))
                .args(args)
                .arg("--secret-file")
                .arg(&secret)
                .env_remove("ALCES_SECRET")
                .env_remove("ALCES_SECRET_FILE")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{b} started with a {mode:o} secret file: {err}"
            );
            let path = secret.display().to_string();
            assert!(
                err.contains(&path)
                    && err.contains(&format!("{mode:04o}"))
                    && err.contains(&format!("chmod 600 {path}")),
                "{b}'s error does not name the file, its mode and the fix: {err}"
            );
        }
    }
    assert!(!is_mount_point(&mnt));
}
