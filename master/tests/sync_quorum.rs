//! `sync_metaloggers` without its metaloggers: a master degrades (acknowledges
//! after its own fsync) only while a majority of its chunkservers still hear
//! from it. Cut off from them too — the situation in which a metalogger gets
//! promoted — it keeps mutations waiting, and a newer master deposing it makes
//! them fail as never acknowledged (UNAVAILABLE, retried by clients elsewhere).
//! Also `Replication.Identify`, the probe a cut-off master sends to the master
//! address.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use alces_master::runtime::replication::QUORUM_WINDOW;
use alces_master::server::{start, Options, Running};
use alces_proto::pb::{self, master_client::MasterClient, replication_client::ReplicationClient};
use common::{admin, chan, chunk_master, register};
use tonic::Code;

fn options(dir: &Path) -> Options {
    Options {
        default_goal: 1,
        // Servers 2 and 3 are declared lost during the test: lost servers
        // that were not drained still count against the quorum.
        chunkserver_timeout: Duration::from_secs(2),
        sync_metaloggers: 1,
        sync_timeout: Duration::from_millis(300),
        ..common::options(dir)
    }
}

/// Heartbeats servers `ids` every 300 ms until the returned sender is dropped.
fn heartbeats(m: &Running, ids: Vec<u64>) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let mut c = chunk_master(m);
    tokio::spawn(async move {
        loop {
            for id in &ids {
                let _ = c
                    .chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest {
                        server_id: *id,
                        seen_epoch: 1,
                        ..Default::default()
                    })
                    .await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = &mut rx => return,
            }
        }
    });
    tx
}

async fn conditions(m: &Running) -> Vec<String> {
    admin(m)
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner()
        .conditions
}

type Pending = tokio::task::JoinHandle<Result<tonic::Response<pb::AttrReply>, tonic::Status>>;

fn mkdir(m: &Running, sid: u64, name: &str) -> Pending {
    let mut c = MasterClient::new(chan(m));
    let req = pb::MkdirRequest {
        tag: None,
        session_id: sid,
        parent: 1,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
        caller: Some(pb::Caller {
            uid: 0,
            gid: 0,
            groups: vec![],
            pid: 1,
        }),
    };
    tokio::spawn(async move { c.mkdir(req).await })
}

/// Waits up to `d` for `p`; None when it is still pending.
async fn within(p: &mut Pending, d: Duration) -> Option<Result<pb::AttrReply, tonic::Status>> {
    tokio::time::timeout(d, p)
        .await
        .ok()
        .map(|r| r.expect("mkdir task").map(|r| r.into_inner()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_metaloggers_a_master_degrades_only_with_a_chunkserver_quorum() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let sid = MasterClient::new(chan(&m))
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;

    // No metalogger and no chunkserver at all: the mutation waits, well past
    // the sync timeout.
    let a_started = Instant::now();
    let mut a = mkdir(&m, sid, "a");
    assert!(
        within(&mut a, Duration::from_millis(1500)).await.is_none(),
        "acknowledged with neither a metalogger nor a chunkserver"
    );
    let c = conditions(&m).await;
    assert!(
        c.iter().any(|c| c.starts_with("NoChunkserverQuorum")),
        "{c:?}"
    );

    // Two of three chunkservers heartbeat: a majority, so it degrades.
    for id in 1..=3 {
        register(&m, id).await;
    }
    // The registrations restore the quorum at once, not at the next tick.
    let c = conditions(&m).await;
    assert!(
        !c.iter().any(|c| c.starts_with("NoChunkserverQuorum")),
        "{c:?}"
    );
    let beating = heartbeats(&m, vec![1, 2]);
    let a = within(&mut a, Duration::from_secs(10))
        .await
        .expect("acknowledged once degraded with a chunkserver quorum");
    a.expect("mkdir a");
    // A mutation degrades only after waiting at least the quorum window (the
    // sync timeout here is 300 ms).
    assert!(
        a_started.elapsed() >= QUORUM_WINDOW,
        "{:?}",
        a_started.elapsed()
    );
    let acked = m.core.hub.acked();
    assert!(acked > 0 && m.core.hub.degraded());
    let c = conditions(&m).await;
    assert!(
        c.iter().any(|c| c.starts_with("SyncMetaloggersDegraded")),
        "{c:?}"
    );
    // While degraded with its quorum, it acknowledges at once.
    let mut b = mkdir(&m, sid, "b");
    within(&mut b, Duration::from_secs(5))
        .await
        .expect("degraded acknowledgement")
        .expect("mkdir b");

    // Only one of three keeps beating (the others are lost after 2 s, which
    // does not shrink the count): no quorum, even though degraded.
    drop(beating);
    let _one = heartbeats(&m, vec![1]);
    let cut = Instant::now();
    tokio::time::sleep(QUORUM_WINDOW + Duration::from_millis(500)).await;
    let before = m.core.hub.acked();
    let mut d = mkdir(&m, sid, "d");
    assert!(
        within(&mut d, Duration::from_millis(1500)).await.is_none(),
        "acknowledged with one chunkserver of three, {:?} after the others went silent",
        cut.elapsed()
    );
    assert_eq!(m.core.hub.acked(), before, "nothing acknowledged meanwhile");
    let committed = m.core.inner.lock().state.version;
    assert!(
        committed > before,
        "the mutation is applied, just not acknowledged"
    );

    // The probe a cut-off master sends to the master address.
    let id = ReplicationClient::new(chan(&m))
        .identify(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (id.epoch, id.role.as_str(), id.fenced),
        (1, "master", false)
    );
    assert_eq!(id.metadata_version, committed);

    // A newer master deposes this one: the waiting mutation fails as never
    // acknowledged, for the client to retry against the new master.
    let e = MasterClient::new(chan(&m))
        .register_session(pb::RegisterSessionRequest {
            seen_epoch: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let r = within(&mut d, Duration::from_secs(5))
        .await
        .expect("the waiting mutation ends once deposed");
    let e = r.expect_err("never acknowledged");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("not acknowledged"), "{}", e.message());
    assert_eq!(m.core.hub.acked(), before);
    assert!(
        ReplicationClient::new(chan(&m))
            .identify(pb::Empty {})
            .await
            .unwrap()
            .into_inner()
            .fenced
    );
    m.stop_without_snapshot().await;
}
