//! Runs the real `alces-master` binary: flags and help, readiness, SIGTERM with a
//! final snapshot and exit 0, and refusing a data directory it must not format.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alces_proto::pb::{self, master_client::MasterClient};

const BIN: &str = env!("CARGO_BIN_EXE_alces-master");

/// Kills the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--http-listen",
        "--data-dir",
        "--secret-file",
        "--chunk-size",
        "--default-goal",
        "--session-timeout",
        "--chunkserver-timeout",
        "--snapshot-interval",
        "--log-json",
        "ALCES_MASTER_LISTEN",
        "ALCES_MASTER_HTTP_LISTEN",
        "ALCES_MASTER_DATA_DIR",
        "ALCES_SECRET_FILE",
        "ALCES_CHUNK_SIZE",
        "ALCES_DEFAULT_GOAL",
        "ALCES_SESSION_TIMEOUT",
        "ALCES_CHUNKSERVER_TIMEOUT",
        "ALCES_SNAPSHOT_INTERVAL",
        "ALCES_LOG_JSON",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

/// The tuning flags alces-master and alces-metalogger share (same names, same
/// variables): a promoted metalogger runs its master with them.
const TUNING: [(&str, &str); 10] = [
    ("--chunk-size", "ALCES_CHUNK_SIZE"),
    ("--default-goal", "ALCES_DEFAULT_GOAL"),
    ("--session-timeout", "ALCES_SESSION_TIMEOUT"),
    ("--chunkserver-timeout", "ALCES_CHUNKSERVER_TIMEOUT"),
    ("--snapshot-interval", "ALCES_SNAPSHOT_INTERVAL"),
    ("--replication-rate", "ALCES_REPLICATION_RATE"),
    ("--replications-per-server", "ALCES_REPLICATIONS_PER_SERVER"),
    ("--rebalance-threshold", "ALCES_REBALANCE_THRESHOLD"),
    ("--sync-metaloggers", "ALCES_SYNC_METALOGGERS"),
    ("--sync-timeout-ms", "ALCES_SYNC_TIMEOUT_MS"),
];

#[test]
fn master_and_metalogger_share_the_tuning_flags() {
    for bin in [BIN, env!("CARGO_BIN_EXE_alces-metalogger")] {
        let out = Command::new(bin).arg("--help").output().unwrap();
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        for (flag, var) in TUNING {
            assert!(
                help.contains(flag) && help.contains(var),
                "{bin} --help does not mention {flag} / {var}:\n{help}"
            );
        }
    }
    // A bad value is refused by the metalogger as by the master.
    let out = Command::new(env!("CARGO_BIN_EXE_alces-metalogger"))
        .args([
            "--master",
            "127.0.0.1:1",
            "--data-dir",
            "/nonexistent",
            "--rebalance-threshold",
            "101",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rebalance threshold '101'"), "{err}");
}

#[test]
fn bad_flags_are_refused_clearly() {
    let out = Command::new(BIN)
        .args(["--data-dir", "/tmp/x", "--chunk-size", "3MiB7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chunk-size"));
    let out = Command::new(BIN)
        .args(["--data-dir", "/tmp/x", "--default-goal", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--data-dir"])
        .arg(tmp.path())
        .env_remove("ALCES_SECRET")
        .env_remove("ALCES_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster secret"));
}

#[test]
fn sigterm_snapshots_and_exits_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let child = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--chunk-size",
            "1MiB",
            "--log-json",
            "--data-dir",
        ])
        .arg(tmp.path())
        .env("ALCES_SECRET", "process-test-secret")
        .env_remove("ALCES_SECRET_FILE")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let child = &mut child.0;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let grpc = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("master never became ready");
        if line.contains("alces-master ready") {
            let v: serde_json::Value =
                serde_json::from_str(&line).expect("--log-json lines are JSON");
            break v["fields"]["grpc"]
                .as_str()
                .expect("the ready line names the gRPC address")
                .to_string();
        }
    };
    // One acknowledged mutation.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let auth = alces_proto::auth::ClientAuth::new("process-test-secret").unwrap();
        let mut c = MasterClient::new(alces_proto::net::channel(&grpc, &auth).unwrap());
        let session = c
            .register_session(pb::RegisterSessionRequest {
                client_name: "process-test".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .session_id;
        c.mkdir(pb::MkdirRequest {
            session_id: session,
            parent: 1,
            name: b"kept".to_vec(),
            mode: 0o755,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("epoch"))
            .unwrap()
            .trim(),
        "1"
    );
    assert!(tmp
        .path()
        .join(format!("snapshot.{:020}.alces", 0))
        .exists());
    // A second master on the same directory refuses to start.
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tmp.path())
        .env("ALCES_SECRET", "process-test-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another master"));

    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "master did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // The final snapshot holds the mutation.
    let snap = tmp.path().join(format!("snapshot.{:020}.alces", 1));
    let st = alces_master::disk::snapshot::read(&snap).unwrap();
    assert!(st.lookup(1, b"kept").is_ok());
}

#[test]
fn refuses_changelogs_without_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(format!("changelog.{:020}.log", 1)), b"x").unwrap();
    let out = Command::new(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(tmp.path())
        .env("ALCES_SECRET", "process-test-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds changelogs but no snapshot"), "{err}");
    assert!(!tmp
        .path()
        .join(format!("snapshot.{:020}.alces", 0))
        .exists());
}
