//! `/readyz` of a real `alces-metalogger` process: not ready before it has
//! followed a master, ready once caught up, still ready for a grace after
//! its master dies (a promotion candidate), not ready after it, and ready
//! again once promoted.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alces_proto::auth::ClientAuth;
use alces_proto::pb::{self, metalogger_client::MetaloggerClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ML: &str = env!("CARGO_BIN_EXE_alces-metalogger");

/// Kills the child when the test ends, failed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The HTTP status of `GET path`, or None when nothing answers.
async fn status_of(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_for(what: &str, timeout: Duration, port: u16, path: &str, want: u16) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = status_of(port, path).await;
        if got == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < timeout,
            "{what}: {path} answered {got:?}, not {want}, for {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_means_caught_up_and_following_or_serving_as_master() {
    let tmp = tempfile::tempdir().unwrap();
    let (master_port, ml_port, http_port, promote_port) =
        (free_port(), free_port(), free_port(), free_port());
    let child = Command::new(ML)
        .args(["--master", &format!("127.0.0.1:{master_port}")])
        .args(["--listen", &format!("127.0.0.1:{ml_port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http_port}")])
        .args(["--promote-listen", &format!("127.0.0.1:{promote_port}")])
        .arg("--data-dir")
        .arg(tmp.path().join("ml"))
        .env("ALCES_SECRET", common::SECRET)
        .env_remove("ALCES_SECRET_FILE")
        .env_remove("ALCES_MASTER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);

    // No master yet (as at bootstrap): alive, not ready.
    wait_for("start", Duration::from_secs(20), http_port, "/healthz", 200).await;
    for _ in 0..10 {
        assert_eq!(
            status_of(http_port, "/readyz").await,
            Some(503),
            "ready without ever following a master"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // A master with some history: ready once it holds it.
    let dir = tmp.path().join("master");
    let m = alces_master::server::start(alces_master::server::Options {
        listen: format!("127.0.0.1:{master_port}").parse().unwrap(),
        ..common::options(&dir)
    })
    .await
    .unwrap();
    let mut c = common::master(&m);
    let session = common::session(&mut c).await;
    for i in 0..50 {
        common::mkdir(&mut c, session, 1, &format!("d{i}")).await;
    }
    let version = common::admin(&m)
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .metadata_version;
    wait_for(
        "catch up",
        Duration::from_secs(30),
        http_port,
        "/readyz",
        200,
    )
    .await;
    let auth = ClientAuth::new(common::SECRET).unwrap();
    let ch = alces_proto::net::channel(&format!("127.0.0.1:{ml_port}"), &auth).unwrap();
    let info = MetaloggerClient::new(ch)
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.master_connected, "{info:?}");
    assert!(
        info.applied_version >= version,
        "ready at version {} while the master was at {version}",
        info.applied_version
    );

    // The master dies: still ready (it is the one to promote), for a while.
    m.stop_without_snapshot().await;
    let died = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        status_of(http_port, "/readyz").await,
        Some(200),
        "a caught-up metalogger dropped out at once when its master died"
    );
    wait_for(
        "no master for long",
        Duration::from_secs(30),
        http_port,
        "/readyz",
        503,
    )
    .await;
    let after = died.elapsed();
    assert!(after >= Duration::from_secs(5), "unready after {after:?}");

    // Promoted: it serves as the master, ready again.
    let ch = alces_proto::net::channel(&format!("127.0.0.1:{ml_port}"), &auth).unwrap();
    let reply = MetaloggerClient::new(ch)
        .promote(pb::PromoteRequest {
            epoch: 2,
            ..Default::default()
        })
        .await
        .expect("promote")
        .into_inner();
    assert_eq!(reply.epoch, 2);
    assert!(reply.version >= version);
    wait_for(
        "promoted",
        Duration::from_secs(10),
        http_port,
        "/readyz",
        200,
    )
    .await;
}
