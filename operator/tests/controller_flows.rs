//! The controller's reconcile flows against a stand-in API server
//! (`tower-test`, `common::Api`), asserting the requests made: create,
//! steady state (no writes), scale up, scale down (drain first, refused
//! below the largest goal), failover (record, promote, route, in that
//! order), deletion (finalizer; disks kept unless the cleanup policy says
//! otherwise), and the faults the operator must survive: the API server
//! going away and coming back, conflicts on its writes, and its own restart
//! in the middle of a failover or a scale-down.
//!
//! The master of the scale-down flow is a real master started in-process
//! (chunkservers registered over its ChunkMaster service); the metadata pods
//! of the failover flow are stand-in Metalogger services.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alces_operator::builders::{MASTER_PORT, METALOGGER_PORT, SECRET_KEY};
use alces_operator::controller::{self, Context, FINALIZER};
use alces_operator::metrics::Metrics;
use alces_proto::pb;
use common::{cluster, metadata_pod, Addresses, Api, FakeMetalogger};
use serde_json::json;

const SECRET: &str = "flow-test-secret-0123456789";

fn context(client: kube::Client, addrs: Addresses) -> Arc<Context> {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    Arc::new(Context::new(client, metrics, Arc::new(addrs)))
}

async fn reconcile(api: &Api, ctx: &Arc<Context>) -> Result<(), String> {
    controller::reconcile(Arc::new(api.cluster("c")), ctx.clone())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A cluster carrying the finalizer (as one with `cleanupPolicy: Delete`
/// after its first reconcile, or any cluster made by an older operator).
fn with_finalizer(mut v: serde_json::Value) -> serde_json::Value {
    v["metadata"]["finalizers"] = json!([FINALIZER]);
    v
}

fn the_secret() -> serde_json::Value {
    let b = k8s_openapi::ByteString(SECRET.as_bytes().to_vec());
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "c-secret" },
        "data": { SECRET_KEY: serde_json::to_value(b).unwrap() }
    })
}

fn condition(api: &Api, type_: &str) -> Option<(String, String, String)> {
    let c = api.get("alcesclusters", "c")?;
    c["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == type_)
        .map(|x| {
            (
                x["status"].as_str().unwrap_or_default().to_string(),
                x["reason"].as_str().unwrap_or_default().to_string(),
                x["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_steady_state_without_writes_then_scale_up() {
    let (api, client) = Api::start();
    let ctx = context(client, Addresses::default());
    api.put("alcesclusters", cluster("c", 3));

    // Every object, by server-side apply under one field manager, the
    // generated secret created once, the status; no finalizer (the default
    // cleanupPolicy Retain has nothing to clean on deletion).
    reconcile(&api, &ctx).await.expect("reconcile");
    let mut writes = api.writes();
    writes.sort();
    let mut want = vec![
        "PATCH configmaps/c-chunkserver",
        "PATCH configmaps/c-metadata",
        "PATCH poddisruptionbudgets/c-cs-a",
        "PATCH poddisruptionbudgets/c-metadata",
        "PATCH services/c-chunkservers",
        "PATCH services/c-master",
        "PATCH services/c-metadata",
        "PATCH statefulsets/c-cs-a",
        "PATCH statefulsets/c-metadata",
        "POST secrets",
        "PUT alcesclusters/c/status",
    ];
    want.sort();
    assert_eq!(writes, want);
    for c in api.calls().iter().filter(|c| c.method == "PATCH") {
        assert!(
            c.content_type.contains("apply-patch"),
            "not server-side apply: {c:?}"
        );
        assert!(c.query.contains("fieldManager=alces-operator"), "{c:?}");
        let owner = &c.body["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["controller"]),
            (&json!("AlcesCluster"), &json!(true)),
            "{c:?}"
        );
        assert_eq!(owner["uid"], "uid-alcesclusters-c");
    }
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(
        api.get("alcesclusters", "c").unwrap()["metadata"]["finalizers"],
        json!(null),
        "a finalizer on a cluster with nothing to clean"
    );
    assert_eq!(st["chunkserversReady"], "0/3");
    let sts = api.get("statefulsets", "c-cs-a").unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);

    // Steady state: reads only.
    for round in 0..3 {
        api.clear();
        reconcile(&api, &ctx).await.expect("reconcile");
        assert_eq!(api.writes(), Vec::<String>::new(), "round {round} wrote");
        assert!(!api.calls().is_empty());
    }

    // Scale up: the pool's StatefulSet grows at once; nothing else is written
    // but the status (observedGeneration).
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["chunkservers"]["pools"][0]["replicas"] = json!(5)
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        api.writes(),
        ["PATCH statefulsets/c-cs-a", "PUT alcesclusters/c/status"]
    );
    assert_eq!(
        api.get("statefulsets", "c-cs-a").unwrap()["spec"]["replicas"],
        5
    );
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(
        (&st["observedGeneration"], &st["chunkserversReady"]),
        (&json!(2), &json!("0/5"))
    );
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        api.writes(),
        Vec::<String>::new(),
        "a second pass after the scale-up wrote"
    );
}

/// Registers stand-in chunkservers `c-cs-a-<i>` with the master at `addr`.
async fn register_chunkservers(addr: std::net::SocketAddr, n: u64) {
    let auth = alces_proto::auth::ClientAuth::new(SECRET).unwrap();
    let ch = alces_proto::net::channel(&addr.to_string(), &auth).unwrap();
    let mut cm = pb::chunk_master_client::ChunkMasterClient::new(ch);
    for i in 0..n {
        cm.register_chunkserver(pb::RegisterChunkserverRequest {
            server_id: 100 + i,
            address: format!("c-cs-a-{i}.c-chunkservers.ns.svc:9422"),
            seen_epoch: 1,
            disks: vec![pb::DiskInfo {
                path: "/d".into(),
                total_bytes: 1 << 30,
                free_bytes: 1 << 30,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("register a chunkserver");
    }
}

/// A real master in-process (chunkservers shown disconnected after
/// `disconnect`), three stand-in chunkservers registered, and the cluster
/// recorded with it as the active master, reconciled once.
async fn with_master(
    dir: &std::path::Path,
    disconnect: Duration,
) -> (alces_master::server::Running, Api, Arc<Context>) {
    let master = alces_master::server::start(alces_master::server::Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        data_dir: dir.to_path_buf(),
        secret: Arc::from(SECRET),
        tls: Default::default(),
        chunk_size: 1 << 20,
        default_goal: 2,
        session_timeout: Duration::from_secs(30),
        chunkserver_timeout: Duration::from_secs(600),
        chunkserver_disconnect: disconnect,
        snapshot_interval: Duration::from_secs(3600),
        replication: Default::default(),
        sync_metaloggers: 0,
        sync_timeout: Duration::from_secs(5),
        lock_caps: Default::default(),
    })
    .await
    .expect("master");
    register_chunkservers(master.grpc_addr, 3).await;
    let epoch = master.core.epoch;
    let (api, client) = Api::start();
    let addrs = Addresses::default();
    addrs.set("c-metadata-0", MASTER_PORT, master.grpc_addr);
    let ctx = context(client, addrs);
    let mut c = cluster("c", 3);
    c["status"] = json!({ "activeMaster": "c-metadata-0", "epoch": epoch, "initialized": true });
    api.put("alcesclusters", c);
    api.put("secrets", the_secret());
    let typed = api.cluster("c");
    api.put("pods", metadata_pod(&typed, 0));
    reconcile(&api, &ctx).await.expect("reconcile");
    // The pods of the pool are up, as Kubernetes sees them.
    api.edit("statefulsets", "c-cs-a", |s| {
        s["status"] = json!({ "replicas": 3, "readyReplicas": 3 })
    });
    (master, api, ctx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_chunkservers_are_those_the_master_shows_connected() {
    let dir = tempfile::tempdir().unwrap();
    let (master, api, ctx) = with_master(dir.path(), Duration::from_secs(1)).await;
    reconcile(&api, &ctx).await.expect("reconcile");
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(st["chunkserversReady"], "3/3", "{st}");
    // c-cs-a-2 dies: its pod still looks ready to Kubernetes, but its
    // heartbeats stop (0 and 1 keep sending theirs).
    let auth = alces_proto::auth::ClientAuth::new(SECRET).unwrap();
    let ch = alces_proto::net::channel(&master.grpc_addr.to_string(), &auth).unwrap();
    let mut cm = pb::chunk_master_client::ChunkMasterClient::new(ch);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        for id in [100, 101] {
            cm.chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest {
                server_id: id,
                seen_epoch: 1,
                ..Default::default()
            })
            .await
            .expect("heartbeat");
        }
        reconcile(&api, &ctx).await.expect("reconcile");
        let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
        if st["chunkserversReady"] == "2/3" {
            assert_eq!(st["pools"][0]["ready"], 2, "{st}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still counted ready: {st}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    master.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_first_and_is_refused_below_the_largest_goal() {
    let dir = tempfile::tempdir().unwrap();
    let (master, api, ctx) = with_master(dir.path(), Duration::from_secs(600)).await;
    reconcile(&api, &ctx).await.expect("reconcile");
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(st["chunkserversReady"], "3/3", "{st}");

    // Below the largest goal (2): refused with a condition and an event;
    // nothing drained, the StatefulSet untouched.
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["chunkservers"]["pools"][0]["replicas"] = json!(1)
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert!(
        !api.writes().iter().any(|w| w.contains("statefulsets")),
        "{:?}",
        api.writes()
    );
    assert_eq!(api.event_reasons(), ["ScaleDownBlocked"]);
    let (status, reason, message) = condition(&api, "Degraded").expect("Degraded condition");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ScaleDownBlocked")
    );
    assert!(message.contains("goal 2"), "{message}");
    let ms = alces_operator::dataplane::DataPlane::new(SECRET)
        .unwrap()
        .master_status(&master.grpc_addr.to_string())
        .await
        .unwrap();
    assert!(ms.chunkservers.iter().all(|s| !s.draining));
    // The same refusal again: no second event.
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.event_reasons(), Vec::<String>::new());

    // To 2: the highest ordinal is drained first, the StatefulSet kept.
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["chunkservers"]["pools"][0]["replicas"] = json!(2)
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert!(
        !api.writes().iter().any(|w| w.contains("statefulsets")),
        "{:?}",
        api.writes()
    );
    assert!(
        api.event_reasons().contains(&"DrainStarted".to_string()),
        "{:?}",
        api.event_reasons()
    );
    let ms = alces_operator::dataplane::DataPlane::new(SECRET)
        .unwrap()
        .master_status(&master.grpc_addr.to_string())
        .await
        .unwrap();
    let drained: Vec<u64> = ms
        .chunkservers
        .iter()
        .filter(|s| s.draining)
        .map(|s| s.server_id)
        .collect();
    assert_eq!(drained, [102]);
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(st["pools"][0]["draining"], json!(["c-cs-a-2"]), "{st}");
    assert_eq!(
        api.get("statefulsets", "c-cs-a").unwrap()["spec"]["replicas"],
        3
    );
    // The operator restarts mid-way (no state kept in memory): the drain is
    // in the master's metadata and the size in the StatefulSet, so the new
    // one carries on. The server holds no chunk: safe to remove, so its
    // first pass shrinks.
    let mut registry = prometheus_client::registry::Registry::default();
    let ctx = Arc::new(Context::new(
        ctx.client.clone(),
        Metrics::new(&mut registry),
        ctx.resolver.clone(),
    ));
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert!(
        api.writes()
            .contains(&"PATCH statefulsets/c-cs-a".to_string()),
        "{:?}",
        api.writes()
    );
    assert_eq!(
        api.get("statefulsets", "c-cs-a").unwrap()["spec"]["replicas"],
        2
    );
    assert!(
        api.event_reasons().contains(&"ScaledDown".to_string()),
        "{:?}",
        api.event_reasons()
    );
    master.stop().await.unwrap();
}

/// Stand-in metadata pods: 0 was the master (now dead: nothing answers), 1
/// and 2 metaloggers, 1 the most advanced.
async fn failover_setup(
    api: &Api,
    addrs: &Addresses,
) -> (
    FakeMetalogger,
    FakeMetalogger,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let mut c = cluster("c", 3);
    c["spec"]["failover"] = json!({ "detectionGraceSeconds": 1 });
    c["status"] = json!({ "activeMaster": "c-metadata-0", "epoch": 1, "initialized": true });
    api.put("alcesclusters", c);
    api.put("secrets", the_secret());
    let info = |v: u64| pb::MetaloggerInfo {
        role: "metalogger".into(),
        durable_version: v,
        applied_version: v,
        seen_epoch: 1,
        holds_metadata: true,
        ..Default::default()
    };
    let (m1, a1, t1) = FakeMetalogger::serve(api, "c-metadata-1", info(10)).await;
    let (m2, a2, t2) = FakeMetalogger::serve(api, "c-metadata-2", info(8)).await;
    addrs.set("c-metadata-1", METALOGGER_PORT, a1);
    addrs.set("c-metadata-2", METALOGGER_PORT, a2);
    let typed = api.cluster("c");
    for i in 1..3 {
        api.put("pods", metadata_pod(&typed, i));
    }
    (m1, m2, vec![t1, t2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_records_then_promotes_then_routes_and_survives_a_conflict() {
    let (api, client) = Api::start();
    let addrs = Addresses::default();
    let ctx = context(client, addrs.clone());
    let (m1, m2, _tasks) = failover_setup(&api, &addrs).await;

    // While every write of the record meets a conflict (another writer won),
    // nothing is promoted, well past the grace.
    api.state.lock().conflict_status = true;
    for _ in 0..12 {
        reconcile(&api, &ctx)
            .await
            .expect("a conflict is not an error");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        m1.promotes.lock().is_empty() && m2.promotes.lock().is_empty(),
        "promoted on a lost record"
    );
    let tries = api
        .writes()
        .iter()
        .filter(|w| *w == "PUT alcesclusters/c/status")
        .count();
    assert!(tries > 0, "the record was never tried: {:?}", api.writes());
    api.state.lock().conflict_status = false;
    api.clear();
    let mut promoted = false;
    for _ in 0..40 {
        reconcile(&api, &ctx).await.expect("reconcile");
        if api.event_reasons().contains(&"Promoted".to_string()) {
            promoted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(promoted, "no promotion; events {:?}", api.event_reasons());
    assert!(
        m2.promotes.lock().is_empty(),
        "the less advanced metalogger was promoted"
    );
    let promotes = m1.promotes.lock().clone();
    assert_eq!(promotes.len(), 1, "{promotes:?}");
    assert_eq!(promotes[0].epoch, 2);
    assert!(!promotes[0].bootstrap && !promotes[0].switchover);

    // Order: the epoch and the pod recorded first, then Promote, then the
    // master Service moved.
    let journal = api.state.lock().journal.clone();
    let pos = |needle: &str| journal.iter().position(|j| j.contains(needle));
    let promote = pos("grpc Promote c-metadata-1 epoch 2").expect("Promote in the journal");
    let route = pos("PATCH services/c-master").expect("route in the journal");
    let record = journal[..promote]
        .iter()
        .rposition(|j| j.contains("PUT alcesclusters/c/status"))
        .expect("a status write before Promote");
    assert!(record < promote && promote < route, "{journal:#?}");
    let svc = api.get("services", "c-master").unwrap();
    assert_eq!(
        svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        "c-metadata-1"
    );
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(
        (&st["activeMaster"], &st["epoch"]),
        (&json!("c-metadata-1"), &json!(2)),
        "{st}"
    );
    assert!(
        st["promotion"].is_null(),
        "the promotion is confirmed: {st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_operator_resumes_a_recorded_promotion_with_the_same_epoch() {
    let (api, client) = Api::start();
    let addrs = Addresses::default();
    let (m1, _m2, _tasks) = failover_setup(&api, &addrs).await;
    // The previous operator recorded the promotion and died before Promote.
    api.edit("alcesclusters", "c", |c| {
        c["status"]["promotion"] = json!({ "pod": "c-metadata-1", "epoch": 7, "kind": "Failover", "from": "c-metadata-0" });
    });
    let ctx = context(client, addrs);
    for _ in 0..20 {
        reconcile(&api, &ctx).await.expect("reconcile");
        if !m1.promotes.lock().is_empty()
            && api.get("alcesclusters", "c").unwrap()["status"]["promotion"].is_null()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promotes = m1.promotes.lock().clone();
    assert_eq!(
        promotes.iter().map(|p| p.epoch).collect::<Vec<_>>(),
        [7],
        "resumed with the recorded epoch"
    );
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(
        (&st["activeMaster"], &st["epoch"]),
        (&json!("c-metadata-1"), &json!(7)),
        "{st}"
    );
    let svc = api.get("services", "c-master").unwrap();
    assert_eq!(
        svc["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
        "c-metadata-1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_going_away_fails_a_reconcile_and_the_next_one_carries_on() {
    let (api, client) = Api::start();
    let ctx = context(client, Addresses::default());
    api.put("alcesclusters", cluster("c", 3));
    api.state.lock().down = true;
    let e = reconcile(&api, &ctx)
        .await
        .expect_err("a reconcile with no API server");
    assert!(!e.is_empty());
    api.state.lock().down = false;
    reconcile(&api, &ctx)
        .await
        .expect("reconcile once the API server is back");
    assert!(api.get("statefulsets", "c-cs-a").is_some());
    // A conflict on the status write is not an error: the next reconcile
    // starts from what the other writer left.
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["chunkservers"]["pools"][0]["replicas"] = json!(4)
    });
    api.state.lock().conflict_next_status = true;
    api.clear();
    reconcile(&api, &ctx)
        .await
        .expect("a conflict is not an error");
    assert_eq!(
        api.get("alcesclusters", "c").unwrap()["status"]["observedGeneration"],
        1
    );
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        api.get("alcesclusters", "c").unwrap()["status"]["observedGeneration"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_keeps_the_disks_unless_the_cleanup_policy_says_delete() {
    let (api, client) = Api::start();
    let ctx = context(client, Addresses::default());
    let pvc = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": { "name": name, "labels": { "app.kubernetes.io/instance": "c", "app.kubernetes.io/name": "alces" } },
            "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
        })
    };

    // Retain (the default) with a finalizer (made by an older operator):
    // the finalizer goes at once, nothing is deleted.
    api.put("alcesclusters", with_finalizer(cluster("c", 3)));
    api.put("persistentvolumeclaims", pvc("d0-c-cs-a-0"));
    api.edit("alcesclusters", "c", |c| {
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.writes(), ["PATCH alcesclusters/c"]);
    assert!(
        api.get("alcesclusters", "c").is_none(),
        "the finalizer was not released"
    );
    assert!(
        api.get("persistentvolumeclaims", "d0-c-cs-a-0").is_some(),
        "a disk was deleted"
    );

    // Delete: the StatefulSets, then the claims; the finalizer stays while a
    // PersistentVolume of the cluster is left.
    let mut c = with_finalizer(cluster("c", 3));
    c["spec"]["cleanupPolicy"] = json!("Delete");
    api.put("alcesclusters", c);
    reconcile(&api, &ctx).await.expect("reconcile");
    api.put("persistentvolumes", json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": { "name": "pv-1" },
        "spec": { "capacity": { "storage": "1Gi" }, "accessModes": ["ReadWriteOnce"], "hostPath": { "path": "/x" },
                  "claimRef": { "namespace": "ns", "name": "d0-c-cs-a-0" } }
    }));
    api.edit("alcesclusters", "c", |c| {
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    api.clear();
    let e = reconcile(&api, &ctx)
        .await
        .expect_err("a PersistentVolume is left");
    assert!(e.contains("PersistentVolume"), "{e}");
    let writes = api.writes();
    for w in [
        "DELETE statefulsets/c-metadata",
        "DELETE statefulsets/c-cs-a",
        "DELETE persistentvolumeclaims/d0-c-cs-a-0",
    ] {
        assert!(
            writes.contains(&w.to_string()),
            "{w} missing from {writes:?}"
        );
    }
    assert!(
        api.get("alcesclusters", "c").is_some(),
        "released with a volume left"
    );
    // The volume is gone (the PV controller reclaimed it): released.
    api.state.lock().objects.remove("persistentvolumes/pv-1");
    reconcile(&api, &ctx).await.expect("reconcile");
    assert!(
        api.get("alcesclusters", "c").is_none(),
        "the finalizer was not released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_is_there_only_while_the_cleanup_policy_is_delete() {
    let (api, client) = Api::start();
    let ctx = context(client, Addresses::default());
    let mut c = cluster("c", 3);
    c["spec"]["cleanupPolicy"] = json!("Delete");
    c["metadata"]["finalizers"] = json!(["example.com/other"]);
    api.put("alcesclusters", c);

    // Delete: the finalizer first (appended after another's), nothing else.
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.writes(), ["PATCH alcesclusters/c"]);
    let calls = api.calls();
    let patch = calls.iter().find(|c| c.is_write()).unwrap();
    assert!(patch.content_type.contains("json-patch"), "{patch:?}");
    assert_eq!(
        api.get("alcesclusters", "c").unwrap()["metadata"]["finalizers"],
        json!(["example.com/other", FINALIZER])
    );
    // Then every object, and a steady state that writes nothing.
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert!(api
        .writes()
        .contains(&"PATCH statefulsets/c-metadata".to_string()));
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.writes(), Vec::<String>::new());

    // Back to Retain: the finalizer goes (the other stays), nothing else.
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["cleanupPolicy"] = json!("Retain")
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.writes(), ["PATCH alcesclusters/c"]);
    assert_eq!(
        api.get("alcesclusters", "c").unwrap()["metadata"]["finalizers"],
        json!(["example.com/other"])
    );

    // Deleted with Retain: nothing to do, nothing written (Kubernetes
    // garbage-collects what the cluster owns, with or without an operator).
    api.edit("alcesclusters", "c", |c| {
        c["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z")
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(api.writes(), Vec::<String>::new());
}

/// A pod of the cluster at template revision `rev`, Ready or not.
fn pod_at(
    c: &alces_operator::crd::AlcesCluster,
    name: &str,
    component: &str,
    rev: &str,
    ready: bool,
) -> serde_json::Value {
    let mut labels =
        serde_json::to_value(alces_operator::builders::selector(c, component)).unwrap();
    labels["controller-revision-hash"] = json!(rev);
    if component == alces_operator::builders::CHUNKSERVER {
        labels[alces_operator::builders::POOL_LABEL] = json!("a");
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": { "containers": [{ "name": "alces", "image": "alces:test" }] },
        "status": { "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }] }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_replaces_chunkservers_then_metaloggers_then_the_master_by_switchover() {
    let dir = tempfile::tempdir().unwrap();
    let master = alces_master::server::start(alces_master::server::Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        data_dir: dir.path().to_path_buf(),
        secret: Arc::from(SECRET),
        tls: Default::default(),
        chunk_size: 1 << 20,
        default_goal: 2,
        session_timeout: Duration::from_secs(30),
        chunkserver_timeout: Duration::from_secs(600),
        chunkserver_disconnect: Duration::from_secs(600),
        snapshot_interval: Duration::from_secs(3600),
        replication: Default::default(),
        sync_metaloggers: 0,
        sync_timeout: Duration::from_secs(5),
        lock_caps: Default::default(),
    })
    .await
    .expect("master");
    register_chunkservers(master.grpc_addr, 3).await;
    let epoch = master.core.epoch;
    let (api, client) = Api::start();
    let addrs = Addresses::default();
    addrs.set("c-metadata-0", MASTER_PORT, master.grpc_addr);
    let ctx = context(client, addrs.clone());
    let mut c = cluster("c", 3);
    c["status"] = json!({ "activeMaster": "c-metadata-0", "epoch": epoch, "initialized": true });
    api.put("alcesclusters", c);
    api.put("secrets", the_secret());
    let info = pb::MetaloggerInfo {
        role: "metalogger".into(),
        durable_version: 1,
        applied_version: 1,
        seen_epoch: epoch,
        holds_metadata: true,
        ..Default::default()
    };
    let (m1, a1, _t1) = FakeMetalogger::serve(&api, "c-metadata-1", info.clone()).await;
    let (m2, a2, _t2) = FakeMetalogger::serve(&api, "c-metadata-2", info).await;
    addrs.set("c-metadata-1", METALOGGER_PORT, a1);
    addrs.set("c-metadata-2", METALOGGER_PORT, a2);
    reconcile(&api, &ctx).await.expect("reconcile");
    // Every pod runs the old template; the StatefulSets now want "new".
    let typed = api.cluster("c");
    use alces_operator::builders::{CHUNKSERVER, METADATA};
    for i in 0..3 {
        api.put(
            "pods",
            pod_at(&typed, &format!("c-metadata-{i}"), METADATA, "old", true),
        );
        api.put(
            "pods",
            pod_at(&typed, &format!("c-cs-a-{i}"), CHUNKSERVER, "old", true),
        );
    }
    for s in ["c-cs-a", "c-metadata"] {
        api.edit(
            "statefulsets",
            s,
            |s| s["status"] = json!({ "replicas": 3, "readyReplicas": 3, "updateRevision": "new" }),
        );
    }
    let deleted = |api: &Api| -> Vec<String> {
        api.writes()
            .into_iter()
            .filter(|w| w.starts_with("DELETE pods/"))
            .collect()
    };
    // The pool's StatefulSet controller has not yet observed the new template
    // (its updateRevision still the pods' "old"), the metadata one has: nothing
    // is replaced, not even a metalogger, until the pool's status catches up.
    api.edit("statefulsets", "c-cs-a", |s| {
        s["metadata"]["generation"] = json!(2);
        s["status"] = json!({ "replicas": 3, "readyReplicas": 3, "updateRevision": "old", "observedGeneration": 1 });
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        deleted(&api),
        Vec::<String>::new(),
        "a pod replaced while a StatefulSet's revision is stale"
    );
    api.edit("statefulsets", "c-cs-a", |s| {
        s["status"] = json!({ "replicas": 3, "readyReplicas": 3, "updateRevision": "new", "observedGeneration": 2 })
    });
    // Chunkservers first, highest ordinal first, one at a time: the next
    // waits until the replacement is Ready.
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), ["DELETE pods/c-cs-a-2"]);
    api.put(
        "pods",
        pod_at(&typed, "c-cs-a-2", CHUNKSERVER, "new", false),
    );
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        deleted(&api),
        Vec::<String>::new(),
        "replaced while one is not Ready"
    );
    api.put("pods", pod_at(&typed, "c-cs-a-2", CHUNKSERVER, "new", true));
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), ["DELETE pods/c-cs-a-1"]);
    for i in 0..2 {
        api.put(
            "pods",
            pod_at(&typed, &format!("c-cs-a-{i}"), CHUNKSERVER, "new", true),
        );
    }
    // Then the metaloggers (never the master), one at a time.
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), ["DELETE pods/c-metadata-2"]);
    api.put(
        "pods",
        pod_at(&typed, "c-metadata-2", METADATA, "new", false),
    );
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        deleted(&api),
        Vec::<String>::new(),
        "replaced while a metalogger is not Ready (not caught up)"
    );
    api.put(
        "pods",
        pod_at(&typed, "c-metadata-2", METADATA, "new", true),
    );
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), ["DELETE pods/c-metadata-1"]);
    api.put(
        "pods",
        pod_at(&typed, "c-metadata-1", METADATA, "new", true),
    );
    // The master last: a switchover to the lowest up-to-date metalogger,
    // recorded before the Promote; no pod deleted in that round.
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), Vec::<String>::new());
    let promotes: Vec<(bool, u64)> = m1
        .promotes
        .lock()
        .iter()
        .map(|p| (p.switchover, p.epoch))
        .collect();
    assert_eq!(
        promotes,
        [(true, epoch + 1)],
        "a switchover Promote to c-metadata-1"
    );
    assert!(m2.promotes.lock().is_empty());
    let st = api.get("alcesclusters", "c").unwrap()["status"].clone();
    assert_eq!(
        (&st["activeMaster"], &st["epoch"]),
        (&json!("c-metadata-1"), &json!(epoch + 1)),
        "{st}"
    );
    master.stop().await.unwrap();
}

/// The image changes and, within the same reconcile, the StatefulSet controller
/// observes the metadata StatefulSet's new template before the operator looks
/// at the pools (as a real cluster's does, found with a kubelet): the first pod
/// replaced is still a chunkserver, not a metalogger beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_replaces_a_chunkserver_first_even_when_the_metadata_set_is_observed_at_once(
) {
    let dir = tempfile::tempdir().unwrap();
    let master = alces_master::server::start(alces_master::server::Options {
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        data_dir: dir.path().to_path_buf(),
        secret: Arc::from(SECRET),
        chunk_size: 1 << 20,
        default_goal: 2,
        session_timeout: Duration::from_secs(30),
        chunkserver_timeout: Duration::from_secs(600),
        chunkserver_disconnect: Duration::from_secs(600),
        snapshot_interval: Duration::from_secs(3600),
        replication: Default::default(),
        sync_metaloggers: 0,
        sync_timeout: Duration::from_secs(5),
        lock_caps: Default::default(),
        tls: Default::default(),
    })
    .await
    .expect("master");
    register_chunkservers(master.grpc_addr, 3).await;
    let epoch = master.core.epoch;
    let (api, client) = Api::start();
    let addrs = Addresses::default();
    addrs.set("c-metadata-0", MASTER_PORT, master.grpc_addr);
    let ctx = context(client, addrs.clone());
    let mut c = cluster("c", 3);
    c["status"] = json!({ "activeMaster": "c-metadata-0", "epoch": epoch, "initialized": true });
    api.put("alcesclusters", c);
    api.put("secrets", the_secret());
    let info = pb::MetaloggerInfo {
        role: "metalogger".into(),
        durable_version: 1,
        applied_version: 1,
        seen_epoch: epoch,
        holds_metadata: true,
        ..Default::default()
    };
    let (_m1, a1, _t1) = FakeMetalogger::serve(&api, "c-metadata-1", info.clone()).await;
    let (_m2, a2, _t2) = FakeMetalogger::serve(&api, "c-metadata-2", info).await;
    addrs.set("c-metadata-1", METALOGGER_PORT, a1);
    addrs.set("c-metadata-2", METALOGGER_PORT, a2);
    reconcile(&api, &ctx).await.expect("reconcile");
    // Every pod and both StatefulSets at the current template ("old").
    let typed = api.cluster("c");
    use alces_operator::builders::{CHUNKSERVER, METADATA};
    for i in 0..3 {
        api.put(
            "pods",
            pod_at(&typed, &format!("c-metadata-{i}"), METADATA, "old", true),
        );
        api.put(
            "pods",
            pod_at(&typed, &format!("c-cs-a-{i}"), CHUNKSERVER, "old", true),
        );
    }
    for s in ["c-cs-a", "c-metadata"] {
        api.edit("statefulsets", s, |s| {
            let g = s["metadata"]["generation"].clone();
            s["status"] = json!({ "replicas": 3, "readyReplicas": 3, "updateRevision": "old", "observedGeneration": g })
        });
    }
    let deleted = |api: &Api| -> Vec<String> {
        api.writes()
            .into_iter()
            .filter(|w| w.starts_with("DELETE pods/"))
            .collect()
    };
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(deleted(&api), Vec::<String>::new(), "nothing outdated yet");
    // A new image; every StatefulSet the operator changes is observed at once.
    api.state.lock().instant_statefulset_revision = Some("new".into());
    api.edit("alcesclusters", "c", |c| {
        c["spec"]["image"] = json!("alces:next")
    });
    api.clear();
    reconcile(&api, &ctx).await.expect("reconcile");
    assert_eq!(
        deleted(&api),
        ["DELETE pods/c-cs-a-2"],
        "the chunkservers go first, one at a time"
    );
    master.stop().await.unwrap();
}
