//! A chunkserver drain is a logged metadata change (`SetDrainingOp`): it
//! survives a master restart both by changelog replay and through a snapshot,
//! and a drained server the master does not see (yet) can still be undrained.

mod common;

use alces_master::server::{start, Running};
use alces_proto::errno;
use alces_proto::pb;
use common::{admin, options, register};

async fn drain(m: &Running, id: u64, on: bool) -> Result<pb::ChunkserverStatus, tonic::Status> {
    admin(m)
        .drain_chunkserver(pb::DrainRequest {
            server_id: id,
            drain: on,
        })
        .await
        .map(|r| r.into_inner())
}

/// (server id, draining) of every chunkserver in the status.
async fn draining(m: &Running) -> Vec<(u64, bool)> {
    let mut v: Vec<(u64, bool)> = admin(m)
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .chunkservers
        .iter()
        .map(|c| (c.server_id, c.draining))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_survives_restarts_by_replay_and_by_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    register(&m, 1).await;
    register(&m, 2).await;
    let v0 = m.core.inner.lock().state.version;
    let s = drain(&m, 1, true).await.unwrap();
    assert!(s.draining && s.server_id == 1, "{s:?}");
    assert_eq!(
        m.core.inner.lock().state.version,
        v0 + 1,
        "a drain is one logged metadata change"
    );
    // Draining again changes nothing and logs nothing.
    drain(&m, 1, true).await.unwrap();
    assert_eq!(m.core.inner.lock().state.version, v0 + 1);
    assert_eq!(draining(&m).await, vec![(1, true), (2, false)]);

    // A crash-like stop (no final snapshot): the restart replays the changelog.
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    register(&m, 1).await;
    register(&m, 2).await;
    assert_eq!(draining(&m).await, vec![(1, true), (2, false)]);

    // Through a snapshot: the stop writes one; the restart loads it.
    drain(&m, 2, true).await.unwrap();
    m.stop().await.unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    {
        let g = m.core.inner.lock();
        assert_eq!(
            g.snapshot_version, g.state.version,
            "started from the snapshot"
        );
    }
    register(&m, 2).await;
    assert_eq!(draining(&m).await, vec![(2, true)]);

    // Server 1 has not registered with this master: it can be undrained by id
    // (its drain was logged), not drained.
    let s = drain(&m, 1, false).await.unwrap();
    assert!(!s.draining);
    let e = drain(&m, 1, true).await.unwrap_err();
    assert_eq!(errno::of(&e), libc::ENOENT, "{e:?}");
    let e = drain(&m, 99, false).await.unwrap_err();
    assert_eq!(errno::of(&e), libc::ENOENT, "{e:?}");
    assert!(e.message().contains("99"), "{}", e.message());
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    register(&m, 1).await;
    register(&m, 2).await;
    assert_eq!(draining(&m).await, vec![(1, false), (2, true)]);
    m.stop_without_snapshot().await;
}
