//! Against a real API server (`../shared/k8s`: kube-apiserver 1.20 with the
//! current CRD server for CEL rules), started and stopped by this test: the
//! CRD is accepted, invalid specs are refused by the server, and a reconcile
//! creates every object and then reaches a steady state with no further write.
//!
//! When the envtest binaries are missing the test prints `SKIPPED: <reason>`,
//! unless `ALCES_REQUIRE_ENVTEST=1` (set by `e2e/test-all`), which makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_operator::controller::{self, target::PodDns, Context};
use alces_operator::crd::AlcesCluster;
use alces_operator::metrics::Metrics;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::json;

mod common;

/// `../shared/k8s` beside the repository, or `ALCES_K8S_DIR`.
fn shared() -> PathBuf {
    std::env::var_os("ALCES_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s"))
}

fn envtest_dir() -> PathBuf {
    std::env::var_os("ALCES_ENVTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/alces-envtest"))
}

/// A running control plane, stopped on drop.
struct Env {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    /// An API server this test restarted (stopped by `down`, reaped on drop).
    restarted: std::sync::Mutex<Vec<std::process::Child>>,
}

impl Env {
    fn start() -> Option<Self> {
        let bins = envtest_dir().join("bin");
        let missing: Vec<&str> = ["kube-apiserver", "etcd", "apiextensions-apiserver"]
            .into_iter()
            .filter(|b| !bins.join(b).is_file())
            .collect();
        let up = shared().join("up");
        if !missing.is_empty() || !up.is_file() {
            let why = format!(
                "envtest binaries {missing:?} not in {} or {} missing; build them with ../shared/k8s/build --with-crd-server",
                bins.display(),
                up.display()
            );
            if std::env::var_os("ALCES_REQUIRE_ENVTEST").is_some() {
                panic!("ALCES_REQUIRE_ENVTEST is set but {why}");
            }
            println!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("alces-envtest-")
            .tempdir()
            .expect("tempdir");
        let state = dir.path().join("state");
        let out = Command::new(&up)
            .arg(&state)
            .args(["--with-crd-server", "alces.io/v1alpha1"])
            .output()
            .expect("run shared/k8s/up");
        assert!(
            out.status.success(),
            "shared/k8s/up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            kubeconfig: state.join("kubeconfig"),
            dir,
            restarted: Default::default(),
        })
    }

    async fn client(&self) -> Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }
}

impl Env {
    /// SIGKILLs the kube-apiserver, leaves it down for `down_for`, then starts
    /// it again with the same command line (etcd and its data stay).
    fn restart_apiserver(&self, down_for: Duration) {
        let pidfile = self.dir.path().join("state/run/kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pidfile).expect("apiserver pid file");
        let pid = pid.trim().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("apiserver cmdline");
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(
            args[0].contains("kube-apiserver"),
            "pid file names {args:?}"
        );
        let st = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(st.success());
        while Path::new(&format!("/proc/{pid}/cmdline")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(down_for);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.dir.path().join("state/logs/kube-apiserver.log"))
            .expect("log");
        use std::os::unix::process::CommandExt;
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("restart kube-apiserver");
        std::fs::write(&pidfile, child.id().to_string()).expect("pid file");
        self.restarted.lock().unwrap().push(child);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new(shared().join("down"))
            .arg(self.dir.path().join("state"))
            .output();
        for mut c in self.restarted.lock().unwrap().drain(..) {
            let _ = c.wait();
        }
    }
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "alcesclusters.alces.io",
        &PatchParams::apply("alces-test").force(),
        &Patch::Apply(AlcesCluster::crd()),
    )
    .await
    .expect("the CRD is accepted by the API server");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = crds.get("alcesclusters.alces.io").await.expect("get CRD");
        let est = c.status.and_then(|s| s.conditions).is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if est {
            break;
        }
        assert!(Instant::now() < deadline, "CRD not Established in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The custom resources become reachable through the aggregator shortly after.
    let api: Api<AlcesCluster> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.list(&Default::default()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "AlcesClusters not served in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cluster(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "alces.io/v1alpha1",
        "kind": "AlcesCluster",
        "metadata": { "name": name },
        "spec": {
            "image": "alces:test",
            "chunkservers": { "pools": [
                { "name": "a", "replicas": 3, "disks": [{ "name": "d0", "volumeClaim": { "size": "1Gi" } }] }
            ] }
        }
    })
}

async fn create(api: &Api<DynamicObject>, v: serde_json::Value) -> Result<DynamicObject, String> {
    let o: DynamicObject = serde_json::from_value(v).expect("object");
    api.create(&PostParams::default(), &o)
        .await
        .map_err(|e| e.to_string())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn crd_is_accepted_invalid_specs_are_refused_and_reconcile_reaches_a_steady_state() {
    let Some(env) = Env::start() else { return };
    rt().block_on(async {
        let client = env.client().await;
        install_crd(&client).await;
        let ns = "alces-test";
        let nss: Api<Namespace> = Api::all(client.clone());
        let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
        nss.create(&PostParams::default(), &n).await.expect("namespace");
        let ar = ApiResource::erase::<AlcesCluster>(&());
        let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);

        // Invalid specs: refused by the server, each naming the field.
        let mut cases: Vec<(&str, serde_json::Value, &str)> = Vec::new();
        let mut v = cluster("bad-goal");
        v["spec"]["defaultGoal"] = json!(0);
        cases.push(("goal 0", v, "defaultGoal"));
        let mut v = cluster("bad-goal-type");
        v["spec"]["defaultGoal"] = json!("three");
        cases.push(("goal of the wrong type", v, "defaultGoal"));
        let mut v = cluster("bad-ml");
        v["spec"]["metaloggers"] = json!({ "replicas": 9 });
        cases.push(("9 metaloggers", v, "replicas"));
        let mut v = cluster("dup-pools");
        let p = v["spec"]["chunkservers"]["pools"][0].clone();
        v["spec"]["chunkservers"]["pools"] = json!([p.clone(), p]);
        cases.push(("duplicate pool names", v, "pools"));
        let mut v = cluster("no-image");
        v["spec"]["image"] = json!("");
        cases.push(("empty image (CEL)", v, "image"));
        let mut v = cluster("two-sources");
        v["spec"]["chunkservers"]["pools"][0]["disks"][0]["hostPath"] = json!("/x");
        cases.push(("disk with two sources (CEL)", v, "hostPath or volumeClaim"));
        let mut v = cluster("no-pools");
        v["spec"]["chunkservers"]["pools"] = json!([]);
        cases.push(("no pool", v, "pools"));
        let mut v = cluster("Bad_Name");
        v["metadata"]["name"] = json!("Bad_Name");
        cases.push(("bad object name", v, "Bad_Name"));
        for (what, v, field) in cases {
            let e = create(&dynapi, v).await.expect_err(what);
            assert!(e.contains(field), "{what}: the refusal does not name {field}: {e}");
        }

        // A valid cluster: the reconcile makes every object.
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), Arc::new(PodDns)));
        create(&dynapi, cluster("demo")).await.expect("a valid cluster is accepted");
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        let mut rounds = 0;
        loop {
            let c = api.get("demo").await.expect("get");
            controller::reconcile(Arc::new(c), ctx.clone()).await.expect("reconcile");
            rounds += 1;
            let c = api.get("demo").await.expect("get");
            if c.status.as_ref().and_then(|s| s.observed_generation).is_some() {
                break;
            }
            assert!(rounds < 10, "no status after {rounds} reconciles");
        }
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let md = sts.get("demo-metadata").await.expect("metadata StatefulSet");
        assert_eq!(md.spec.replicas, Some(3));
        sts.get("demo-cs-a").await.expect("pool StatefulSet");
        let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
        for s in ["demo-master", "demo-metadata", "demo-chunkservers"] {
            svcs.get(s).await.unwrap_or_else(|e| panic!("service {s}: {e}"));
        }
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm = cms.get("demo-metadata").await.expect("metadata ConfigMap");
        assert_eq!(cm.data.expect("data")["ALCES_SYNC_METALOGGERS"], "1");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = secrets.get("demo-secret").await.expect("generated secret");
        // On a 1.20 server the PodDisruptionBudget is found by discovery in policy/v1beta1.
        let pdb = ApiResource {
            group: "policy".into(),
            version: "v1beta1".into(),
            api_version: "policy/v1beta1".into(),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &pdb)
            .get("demo-metadata")
            .await
            .expect("metadata PDB (policy/v1beta1)");
        let c = api.get("demo").await.expect("get");
        let st = c.status.clone().expect("status");
        assert_eq!(st.observed_generation, c.metadata.generation);
        assert!(
            c.finalizers().is_empty(),
            "a finalizer on a cluster that keeps its disks: {:?}",
            c.finalizers()
        );
        let available = st.conditions.iter().find(|c| c.type_ == "Available").expect("Available");
        assert_eq!(available.status, "False", "no pod runs on this server: no master yet");

        // Steady state: more reconciles write nothing.
        let writes = metrics.api_writes.get();
        let mut took = Vec::new();
        for _ in 0..5 {
            let c = api.get("demo").await.expect("get");
            let t = Instant::now();
            controller::reconcile(Arc::new(c), ctx.clone()).await.expect("reconcile");
            took.push(t.elapsed());
        }
        assert_eq!(metrics.api_writes.get(), writes, "a steady-state reconcile wrote to the API server");
        // The secret is never rewritten.
        let again = secrets.get("demo-secret").await.expect("secret");
        assert_eq!(again.metadata.resource_version, secret.metadata.resource_version);
        took.sort();
        println!(
            "envtest: steady-state reconcile writes: 0 over 5 reconciles; reconcile duration median {:.0} ms, max {:.0} ms (no pod runs here: the metadata pods do not answer)",
            took[2].as_secs_f64() * 1000.0,
            took[4].as_secs_f64() * 1000.0
        );

        // A changed disk layout is refused by the CEL transition rule.
        let e = api
            .patch(
                "demo",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "chunkservers": { "pools": [
                    { "name": "a", "replicas": 3, "disks": [{ "name": "d0", "volumeClaim": { "size": "2Gi" } }] }
                ] } } })),
            )
            .await
            .expect_err("a changed disk layout must be refused");
        assert!(e.to_string().contains("disk layout"), "{e}");

        // A missing secret reference: Degraded, naming the field.
        let mut v = cluster("ext");
        v["spec"]["secretRef"] = json!({ "name": "nope" });
        create(&dynapi, v).await.expect("accepted by the schema");
        for _ in 0..3 {
            let c = api.get("ext").await.expect("get");
            controller::reconcile(Arc::new(c), ctx.clone()).await.expect("reconcile");
        }
        let c = api.get("ext").await.expect("get");
        let d = c
            .status
            .expect("status")
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded")
            .expect("Degraded");
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", "MissingSecret"));
        assert!(d.message.contains("spec.secretRef"), "{}", d.message);
        assert!(sts.get_opt("ext-metadata").await.expect("get").is_none(), "nothing applied without the secret");

        // Least privilege, as the API server stored the pods: the daemons as
        // uid 65532; a hostPath disk given to it by a CHOWN-only init step.
        let md = serde_json::to_value(sts.get("demo-metadata").await.expect("get")).unwrap();
        let pod = &md["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        assert!(pod["initContainers"].is_null(), "claims need no init step: {}", pod["initContainers"]);
        let mut hp = cluster("hp");
        hp["spec"]["chunkservers"]["pools"][0]["disks"][0] = json!({ "name": "d0", "hostPath": "/var/lib/alces/d0" });
        create(&dynapi, hp).await.expect("a hostPath cluster is accepted");
        let mut pool = None;
        for _ in 0..10 {
            let c = api.get("hp").await.expect("get");
            controller::reconcile(Arc::new(c), ctx.clone()).await.expect("reconcile");
            pool = sts.get_opt("hp-cs-a").await.expect("get");
            if pool.is_some() {
                break;
            }
        }
        let pool = serde_json::to_value(pool.expect("the hostPath pool's StatefulSet")).unwrap();
        let pod = &pool["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], 65532);
        let init = &pod["initContainers"][0];
        assert_eq!(init["command"], json!(["alces", "chown-data", "--owner", "65532:65532", "/data/d0"]));
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        assert_eq!(init["securityContext"]["capabilities"], json!({ "drop": ["ALL"], "add": ["CHOWN"] }));
        assert_eq!(init["volumeMounts"][0]["subPathExpr"], "$(POD_NAME)");
    });
}

async fn create_namespace(client: &Client, ns: &str) {
    let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &n)
        .await
        .expect("namespace");
}

/// A TLS Secret as cert-manager makes it, for `names`, signed by `ca`.
fn tls_secret(name: &str, ca: &alces_proto::tls::certgen::Ca, names: &[String]) -> Secret {
    let p = ca
        .issue(names, alces_proto::tls::certgen::Validity::Current, 1)
        .expect("issue");
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "type": "kubernetes.io/tls",
        "stringData": { "tls.crt": p.cert_pem, "tls.key": p.key_pem, "ca.crt": ca.cert_pem() },
    }))
    .expect("secret")
}

fn degraded(c: &AlcesCluster) -> Option<alces_operator::crd::Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded" && c.status == "True")
        .cloned()
}

/// `spec.tls` on a real API server: a missing Secret, a missing key and a
/// key that is not PEM each become `Degraded`/`InvalidTLSSecret` naming the
/// Secret and the key, with an event, and change nothing (the StatefulSets
/// stay as they were); turning TLS on mounts the Secret in every pod template
/// and replaces the plaintext pods together (`TLSSwitch`: a plaintext pod
/// and a TLS pod cannot talk), which the StatefulSet controller makes again
/// as TLS pods; another Secret is a template change the rolling upgrade
/// handles, with no pod deleted at once; turning TLS off replaces the TLS
/// pods together again.
#[test]
fn tls_secret_problems_are_conditions_and_a_tls_change_replaces_the_pods() {
    let Some(env) = Env::start() else { return };
    rt().block_on(async {
        let client = env.client().await;
        install_crd(&client).await;
        let ns = "alces-tls";
        create_namespace(&client, ns).await;
        let ar = ApiResource::erase::<AlcesCluster>(&());
        let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
        let mut registry = prometheus_client::registry::Registry::default();
        let tls_dir = tempfile::Builder::new()
            .prefix("alces-k8stls-operator-")
            .tempdir()
            .expect("tempdir");
        let mut ctx = Context::new(
            client.clone(),
            Metrics::new(&mut registry),
            Arc::new(PodDns),
        );
        ctx.tls_dir = tls_dir.path().to_path_buf();
        let ctx = Arc::new(ctx);
        let reconcile = |name: &'static str| {
            let (api, ctx) = (api.clone(), ctx.clone());
            async move {
                let c = api.get(name).await.expect("get");
                controller::reconcile(Arc::new(c), ctx)
                    .await
                    .expect("reconcile");
                api.get(name).await.expect("get")
            }
        };
        let ca = alces_proto::tls::certgen::Ca::new("envtest CA").expect("CA");
        let names = |c: &str| {
            vec![
                format!("{c}-master.{ns}.svc"),
                format!("*.{c}-metadata.{ns}.svc"),
                format!("*.{c}-chunkservers.{ns}.svc"),
            ]
        };

        // A missing Secret: nothing is made.
        let mut v = cluster("sec");
        v["spec"]["tls"] = json!({ "secretName": "sec-tls" });
        create(&dynapi, v).await.expect("accepted by the schema");
        reconcile("sec").await;
        let c = reconcile("sec").await;
        let d = degraded(&c).expect("Degraded");
        assert_eq!(d.reason, "InvalidTLSSecret");
        assert!(
            d.message.contains("spec.tls.secretName")
                && d.message.contains("alces-tls/sec-tls")
                && d.message.contains("does not exist"),
            "{}",
            d.message
        );
        assert!(
            sts.get_opt("sec-metadata").await.expect("get").is_none(),
            "applied without its TLS Secret"
        );
        // A Secret without ca.crt, then with a key that is not PEM.
        let mut bad = tls_secret("sec-tls", &ca, &names("sec"));
        bad.string_data.as_mut().unwrap().remove("ca.crt");
        secrets
            .create(&PostParams::default(), &bad)
            .await
            .expect("secret");
        let d = degraded(&reconcile("sec").await).expect("Degraded");
        assert_eq!(d.reason, "InvalidTLSSecret");
        assert!(
            d.message
                .contains("Secret alces-tls/sec-tls key 'ca.crt': missing"),
            "{}",
            d.message
        );
        secrets
            .patch(
                "sec-tls",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "stringData": { "ca.crt": ca.cert_pem(), "tls.key": "not a key" } }),
                ),
            )
            .await
            .expect("patch");
        let d = degraded(&reconcile("sec").await).expect("Degraded");
        assert!(
            d.message
                .contains("Secret alces-tls/sec-tls key 'tls.key': is not a PEM private key"),
            "{}",
            d.message
        );
        // A good Secret: the cluster is made, with the Secret mounted.
        secrets
            .replace(
                "sec-tls",
                &PostParams::default(),
                &tls_secret("sec-tls", &ca, &names("sec")),
            )
            .await
            .expect("replace");
        let c = reconcile("sec").await;
        assert!(
            degraded(&c).is_none_or(|d| d.reason != "InvalidTLSSecret"),
            "{:?}",
            degraded(&c)
        );
        let md = serde_json::to_value(
            sts.get("sec-metadata")
                .await
                .expect("made once the Secret is good"),
        )
        .unwrap();
        assert!(md["spec"]["template"]["spec"]["volumes"]
            .to_string()
            .contains("sec-tls"));
        // The operator's own files: the key readable by it alone.
        let key = tls_dir.path().join(ns).join("sec").join("tls.key");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key)
                .expect("operator's key")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );

        // A plaintext cluster; this control plane's StatefulSet controller
        // makes its pods (no kubelet runs them: they stay Pending).
        create(&dynapi, cluster("roll")).await.expect("cluster");
        reconcile("roll").await;
        reconcile("roll").await;
        let sel = ListParams::default().labels("app.kubernetes.io/instance=roll");
        // The uids of the cluster's live pods, once all 6 (3 metadata, 3 chunkservers) exist.
        let live = |want_tls: Option<bool>| {
            let (pods, sel) = (pods.clone(), sel.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let items: Vec<_> = pods
                        .list(&sel)
                        .await
                        .expect("pods")
                        .items
                        .into_iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .collect();
                    let tls_ok = want_tls.is_none_or(|t| {
                        items.iter().all(|p| {
                            (p.annotations().get("alces.io/tls").map(String::as_str) == Some("on"))
                                == t
                        })
                    });
                    if items.len() == 6 && tls_ok {
                        return items
                            .iter()
                            .map(|p| p.metadata.uid.clone().unwrap_or_default())
                            .collect::<std::collections::BTreeSet<String>>();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the StatefulSets' 6 pods (TLS {want_tls:?}) not there in 60 s: {:?}",
                        items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // Reconciles until none of `uids` is left (the upgrade acts once the
        // StatefulSet controller has observed the new templates); the names
        // still there after 30 s.
        let until_gone = |uids: std::collections::BTreeSet<String>| {
            let (pods, sel) = (pods.clone(), sel.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    reconcile("roll").await;
                    let left: Vec<String> = pods
                        .list(&sel)
                        .await
                        .expect("pods")
                        .items
                        .into_iter()
                        .filter(|p| {
                            p.metadata.deletion_timestamp.is_none()
                                && uids.contains(p.metadata.uid.as_deref().unwrap_or_default())
                        })
                        .map(|p| p.name_any())
                        .collect();
                    if left.is_empty() || Instant::now() > deadline {
                        return left;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let still = |uids: std::collections::BTreeSet<String>| {
            let (pods, sel) = (pods.clone(), sel.clone());
            async move {
                pods.list(&sel)
                    .await
                    .expect("pods")
                    .items
                    .into_iter()
                    .filter(|p| {
                        p.metadata.deletion_timestamp.is_none()
                            && uids.contains(p.metadata.uid.as_deref().unwrap_or_default())
                    })
                    .map(|p| p.name_any())
                    .collect::<Vec<_>>()
            }
        };
        let plain = live(Some(false)).await;
        let before = sts
            .get("roll-metadata")
            .await
            .expect("sts")
            .metadata
            .resource_version;
        // TLS on with a Secret that is not there: nothing changes, no pod goes.
        api.patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "tls": { "secretName": "roll-tls" } } })),
        )
        .await
        .expect("patch");
        let d = degraded(&reconcile("roll").await).expect("Degraded");
        assert_eq!(d.reason, "InvalidTLSSecret");
        assert_eq!(
            sts.get("roll-metadata")
                .await
                .expect("sts")
                .metadata
                .resource_version,
            before,
            "changed with a bad TLS Secret"
        );
        assert_eq!(
            still(plain.clone()).await.len(),
            6,
            "pods deleted with a bad TLS Secret"
        );
        // The Secret made: every template mounts it, and the plaintext pods go together.
        secrets
            .create(
                &PostParams::default(),
                &tls_secret("roll-tls", &ca, &names("roll")),
            )
            .await
            .expect("secret");
        reconcile("roll").await;
        for s in ["roll-metadata", "roll-cs-a"] {
            let t = serde_json::to_value(sts.get(s).await.expect("sts")).unwrap();
            assert_eq!(
                t["spec"]["template"]["metadata"]["annotations"]["alces.io/tls"], "on",
                "{s}"
            );
            assert!(
                t["spec"]["template"]["spec"]["containers"][0]["env"]
                    .to_string()
                    .contains("ALCES_TLS_CLIENT_AUTH"),
                "{s}"
            );
        }
        let kept = until_gone(plain).await;
        assert!(
            kept.is_empty(),
            "plaintext pods kept after TLS was turned on: {kept:?}; status: {:?}",
            api.get("roll").await.expect("get").status
        );
        // The StatefulSets make TLS pods. Another Secret is a template change
        // for the rolling upgrade (which waits for ready pods, never here): no
        // pod goes at once.
        let tls_pods = live(Some(true)).await;
        secrets
            .create(
                &PostParams::default(),
                &tls_secret("roll-tls2", &ca, &names("roll")),
            )
            .await
            .expect("secret");
        api.patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "spec": { "tls": { "secretName": "roll-tls2", "clientAuth": false } } }),
            ),
        )
        .await
        .expect("patch");
        for _ in 0..10 {
            reconcile("roll").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let t = serde_json::to_value(sts.get("roll-cs-a").await.expect("sts")).unwrap();
        assert!(t["spec"]["template"]["spec"]["volumes"]
            .to_string()
            .contains("roll-tls2"));
        assert!(!t["spec"]["template"]["spec"]["containers"][0]["env"]
            .to_string()
            .contains("ALCES_TLS_CLIENT_AUTH"));
        assert_eq!(
            still(tls_pods.clone()).await.len(),
            6,
            "pods deleted at once for a change within TLS"
        );
        // TLS off: the TLS pods go together.
        api.patch(
            "roll",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "tls": null } })),
        )
        .await
        .expect("patch");
        let kept = until_gone(tls_pods).await;
        assert!(
            kept.is_empty(),
            "TLS pods kept after TLS was turned off: {kept:?}"
        );
        let t = serde_json::to_value(sts.get("roll-metadata").await.expect("sts")).unwrap();
        assert!(
            !t.to_string().contains("ALCES_TLS_"),
            "TLS settings left after spec.tls was removed"
        );
        live(Some(false)).await;

        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
        let evs: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        assert!(
            evs.iter()
                .any(|(r, n)| r == "InvalidTLSSecret" && n.contains("sec-tls")),
            "{evs:?}"
        );
        let switches: Vec<&String> = evs
            .iter()
            .filter(|(r, _)| r == "TLSSwitch")
            .map(|(_, n)| n)
            .collect();
        assert!(
            switches
                .iter()
                .any(|n| n.contains("from plaintext to TLS") && n.contains("roll-cs-a-0")),
            "{switches:?}"
        );
        assert!(
            switches.iter().any(|n| n.contains("from TLS to plaintext")),
            "{switches:?}"
        );
    });
}

/// Deletion under both cleanup policies on a real API server: `Retain` (the
/// default) has no finalizer, so deleting the cluster with no operator
/// running removes it at once; `Delete` has one (added first, before any
/// object), the reconcile of the deleted cluster removes its StatefulSets
/// and then releases it; switching `Delete` back to `Retain` removes it.
#[test]
fn the_finalizer_follows_the_cleanup_policy_and_deletion_never_waits_for_nothing() {
    let Some(env) = Env::start() else { return };
    rt().block_on(async {
        let client = env.client().await;
        install_crd(&client).await;
        let ns = "cleanup";
        let nss: Api<Namespace> = Api::all(client.clone());
        let n: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
        nss.create(&PostParams::default(), &n)
            .await
            .expect("namespace");
        let ar = ApiResource::erase::<AlcesCluster>(&());
        let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let mut registry = prometheus_client::registry::Registry::default();
        let ctx = Arc::new(Context::new(
            client.clone(),
            Metrics::new(&mut registry),
            Arc::new(PodDns),
        ));
        let reconcile = |name: &'static str| {
            let (api, ctx) = (api.clone(), ctx.clone());
            async move {
                let c = api.get(name).await.expect("get");
                controller::reconcile(Arc::new(c), ctx)
                    .await
                    .expect("reconcile");
            }
        };
        let gone = |name: &'static str| {
            let api = api.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while api.get_opt(name).await.expect("get").is_some() {
                    assert!(
                        Instant::now() < deadline,
                        "{name} still there 30 s after its deletion"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };

        // Retain: no finalizer; deleted while no operator runs, it goes at once.
        create(&dynapi, cluster("keep")).await.expect("cluster");
        reconcile("keep").await;
        assert!(sts.get_opt("keep-metadata").await.expect("get").is_some());
        let c = api.get("keep").await.expect("get");
        assert!(c.finalizers().is_empty(), "{:?}", c.finalizers());
        api.delete("keep", &Default::default())
            .await
            .expect("delete");
        gone("keep").await;

        // Delete: the finalizer first, then the objects.
        let mut v = cluster("wipe");
        v["spec"]["cleanupPolicy"] = json!("Delete");
        create(&dynapi, v).await.expect("cluster");
        reconcile("wipe").await;
        let c = api.get("wipe").await.expect("get");
        assert_eq!(c.finalizers(), [controller::FINALIZER.to_string()]);
        assert!(
            sts.get_opt("wipe-metadata").await.expect("get").is_none(),
            "objects before the finalizer"
        );
        reconcile("wipe").await;
        assert!(sts.get_opt("wipe-metadata").await.expect("get").is_some());
        // Deleted: it waits for the operator, which removes the StatefulSets,
        // waits until their pods are gone (made by the controller manager,
        // never run: no kubelet) and releases it (no claim or volume here).
        api.delete("wipe", &Default::default())
            .await
            .expect("delete");
        let c = api
            .get("wipe")
            .await
            .expect("a cluster with disks to clean waits for the operator");
        assert!(c.metadata.deletion_timestamp.is_some());
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(c) = api.get_opt("wipe").await.expect("get") {
            if let Err(e) = controller::reconcile(Arc::new(c), ctx.clone()).await {
                assert!(
                    e.to_string().contains("waiting for the cluster's pods"),
                    "{e}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "wipe not released 60 s after its deletion"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for s in ["wipe-metadata", "wipe-cs-a"] {
            let left = sts.get_opt(s).await.expect("get");
            assert!(
                left.is_none_or(|s| s.metadata.deletion_timestamp.is_some()),
                "{s} not deleted"
            );
        }

        // Delete, then back to Retain: the finalizer goes, and so does the
        // cluster when deleted with no operator.
        let mut v = cluster("both");
        v["spec"]["cleanupPolicy"] = json!("Delete");
        create(&dynapi, v).await.expect("cluster");
        reconcile("both").await;
        assert_eq!(
            api.get("both").await.expect("get").finalizers(),
            [controller::FINALIZER.to_string()]
        );
        api.patch(
            "both",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "cleanupPolicy": "Retain" } })),
        )
        .await
        .expect("patch");
        reconcile("both").await;
        assert!(api.get("both").await.expect("get").finalizers().is_empty());
        api.delete("both", &Default::default())
            .await
            .expect("delete");
        gone("both").await;
    });
}

/// Runs the controller as the operator does (watches, requeues) and checks
/// that it carries on through an outage of the API server: a change made
/// after the server is back is reconciled.
#[test]
fn the_controller_survives_the_api_server_going_away_and_coming_back() {
    // The controller's logs (RUST_LOG) explain a failure.
    alces_telemetry::init_logging(false);
    let Some(env) = Env::start() else { return };
    rt().block_on(async {
        let client = env.client().await;
        install_crd(&client).await;
        let ns = "outage";
        let nss: Api<Namespace> = Api::all(client.clone());
        let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
        nss.create(&PostParams::default(), &n).await.expect("namespace");
        let ar = ApiResource::erase::<AlcesCluster>(&());
        let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let mut ctx = Context::new(client.clone(), metrics.clone(), Arc::new(PodDns));
        ctx.poll = Duration::from_millis(500);
        let running = tokio::spawn(controller::run(Arc::new(ctx), Some(ns.to_string())));
        create(&dynapi, cluster("demo")).await.expect("cluster");
        let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
        let replicas = |want: i32| {
            let sts = sts.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let got = sts.get_opt("demo-cs-a").await.ok().flatten().and_then(|s| s.spec.replicas);
                    if got == Some(want) {
                        return;
                    }
                    assert!(Instant::now() < deadline, "pool StatefulSet at {got:?}, not {want}, after 120 s");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        replicas(3).await;

        // The API server goes away for a while, then comes back.
        let errors = metrics.reconcile_errors.get();
        tokio::task::block_in_place(|| env.restart_apiserver(Duration::from_secs(8)));
        assert!(!running.is_finished(), "the controller stopped when the API server went away");
        let deadline = Instant::now() + Duration::from_secs(120);
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        // The custom resources are served again once the aggregator found
        // the CRD server again.
        while api.list(&Default::default()).await.is_err() {
            assert!(Instant::now() < deadline, "the API server did not come back");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        api.patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "chunkservers": { "pools": [
                { "name": "a", "replicas": 4, "disks": [{ "name": "d0", "volumeClaim": { "size": "1Gi" } }] }
            ] } } })),
        )
        .await
        .expect("scale the pool after the outage");
        let patched = Instant::now();
        replicas(4).await;
        assert!(!running.is_finished(), "the controller stopped");
        println!(
            "outage: {} reconcile errors during and after the outage; a change made once the server was back reconciled after {:.1} s",
            metrics.reconcile_errors.get() - errors,
            patched.elapsed().as_secs_f64()
        );
        running.abort();
    });
}

/// Two operators (two controller contexts, as after a lost lease) race for
/// the same failover on a real API server: the resourceVersion precondition
/// lets one record win, so every Promote carries the same pod and epoch.
/// Then an operator restarted after recording a promotion (and before
/// calling Promote) resumes it with the recorded epoch.
#[test]
fn two_operators_race_for_a_failover_and_a_restarted_one_resumes() {
    let Some(env) = Env::start() else { return };
    rt().block_on(async {
        let client = env.client().await;
        install_crd(&client).await;
        let ns = "race";
        let nss: Api<Namespace> = Api::all(client.clone());
        let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
        nss.create(&PostParams::default(), &n).await.expect("namespace");
        let ar = ApiResource::erase::<AlcesCluster>(&());
        let dynapi: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        let s: Secret = serde_json::from_value(json!({ "metadata": { "name": "demo-secret" }, "stringData": { "secret": "race-secret-0123456789" } })).unwrap();
        secrets.create(&PostParams::default(), &s).await.expect("secret");
        let mut v = cluster("demo");
        v["spec"]["failover"] = json!({ "detectionGraceSeconds": 1 });
        create(&dynapi, v).await.expect("cluster");
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        api.patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "activeMaster": "demo-metadata-0", "epoch": 1, "initialized": true } })),
        )
        .await
        .expect("status");
        // Stand-in metadata pods: 0 (the master) is dead, 1 is ahead of 2.
        let journal = common::Api::default();
        let info = |v: u64| alces_proto::pb::MetaloggerInfo {
            role: "metalogger".into(),
            durable_version: v,
            applied_version: v,
            seen_epoch: 1,
            holds_metadata: true,
            ..Default::default()
        };
        let (m1, a1, _t1) = common::FakeMetalogger::serve(&journal, "demo-metadata-1", info(10)).await;
        let (m2, a2, _t2) = common::FakeMetalogger::serve(&journal, "demo-metadata-2", info(8)).await;
        let addrs = common::Addresses::default();
        addrs.set("demo-metadata-1", alces_operator::builders::METALOGGER_PORT, a1);
        addrs.set("demo-metadata-2", alces_operator::builders::METALOGGER_PORT, a2);
        let ctx = |addrs: &common::Addresses| {
            let mut registry = prometheus_client::registry::Registry::default();
            Arc::new(Context::new(client.clone(), Metrics::new(&mut registry), Arc::new(addrs.clone())))
        };
        let (ca, cb) = (ctx(&addrs), ctx(&addrs));
        // Every object first (creating them twice is not what this test is about).
        let c = api.get("demo").await.expect("get");
        controller::reconcile(Arc::new(c), ca.clone()).await.expect("reconcile");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (c1, c2) = (api.get("demo").await.expect("get"), api.get("demo").await.expect("get"));
            let (r1, r2) = tokio::join!(
                controller::reconcile(Arc::new(c1), ca.clone()),
                controller::reconcile(Arc::new(c2), cb.clone())
            );
            r1.expect("reconcile A");
            r2.expect("reconcile B");
            let st = api.get("demo").await.expect("get").status.unwrap_or_default();
            if st.active_master.as_deref() == Some("demo-metadata-1") && st.promotion.is_none() {
                assert_eq!(st.epoch, 2);
                break;
            }
            assert!(Instant::now() < deadline, "no failover in 60 s: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let epochs: Vec<u64> = m1.promotes.lock().iter().map(|p| p.epoch).collect();
        assert!(!epochs.is_empty() && epochs.iter().all(|e| *e == 2), "Promote calls: {epochs:?}");
        assert!(m2.promotes.lock().is_empty(), "two different promotions");

        // An operator recorded a promotion of pod 2 and died before calling
        // Promote; a new one (fresh state) resumes it with the same epoch.
        api.patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "promotion": { "pod": "demo-metadata-2", "epoch": 9, "kind": "Failover", "from": "demo-metadata-1" } } })),
        )
        .await
        .expect("status");
        let fresh = ctx(&addrs);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = api.get("demo").await.expect("get");
            controller::reconcile(Arc::new(c), fresh.clone()).await.expect("reconcile");
            let st = api.get("demo").await.expect("get").status.unwrap_or_default();
            if st.active_master.as_deref() == Some("demo-metadata-2") && st.promotion.is_none() {
                assert_eq!(st.epoch, 9);
                break;
            }
            assert!(Instant::now() < deadline, "the recorded promotion was not resumed: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let epochs: Vec<u64> = m2.promotes.lock().iter().map(|p| p.epoch).collect();
        assert_eq!(epochs, [9], "resumed with the recorded epoch");
    });
}

/// A client of `env` acting as ServiceAccount `ns/sa` (impersonated by the
/// admin client), so the API server authorizes every call by that account's
/// RBAC.
async fn client_as(env: &Env, ns: &str, sa: &str) -> Client {
    let kc = kube::config::Kubeconfig::read_from(&env.kubeconfig).expect("kubeconfig");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    cfg.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{sa}"));
    cfg.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{ns}"),
        "system:authenticated".into(),
    ]);
    Client::try_from(cfg).expect("client")
}

/// Applies every object of a multi-document YAML (as the admin).
async fn apply_yaml(client: &Client, yaml: &str) -> Vec<(String, String)> {
    let mut made = Vec::new();
    for doc in yaml.split("\n---") {
        let v: serde_json::Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(e) => panic!("not YAML: {e}\n{doc}"),
        };
        if v.is_null() || v.get("kind").is_none() {
            continue;
        }
        let (api_version, kind) = (
            v["apiVersion"].as_str().unwrap(),
            v["kind"].as_str().unwrap(),
        );
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        };
        let name = v["metadata"]["name"].as_str().unwrap().to_string();
        let api: Api<DynamicObject> = match v["metadata"]["namespace"].as_str() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply("alces-test").force(),
            &Patch::Apply(&v),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
        made.push((kind.to_string(), name));
    }
    made
}

/// Lists and watches `K` in `ns` as `client`: the calls the controller's
/// watches make.
async fn list_and_watch<K>(client: &Client, ns: &str) -> Result<(), String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    use futures::StreamExt;
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let what = K::plural(&Default::default()).to_string();
    api.list(&Default::default())
        .await
        .map_err(|e| format!("list {what}: {e}"))?;
    let mut w = api
        .watch(&kube::api::WatchParams::default().timeout(1), "0")
        .await
        .map_err(|e| format!("watch {what}: {e}"))?
        .boxed();
    if let Some(Err(e)) = w.next().await {
        return Err(format!("watch {what}: {e}"));
    }
    Ok(())
}

/// The operator's RBAC, from both places it is written (the chart's
/// rendered `templates/operator-rbac.yaml`, and `operator/rbac.yaml`),
/// grants every call the operator makes: each is applied to a real API
/// server (RBAC authorization on), and the operator's calls are made as
/// that ServiceAccount: the Lease (take, renew), the watches, a reconcile
/// that adds the finalizer, creates every object (server-side apply creates
/// them), the secret, the status, an event, and a deletion with
/// `cleanupPolicy: Delete` (StatefulSets, pods, claims, volumes). Calls whose
/// failure the operator only logs (events, PodDisruptionBudgets, the pod
/// list) are checked by their effect.
#[test]
fn the_operator_rbac_of_the_chart_and_of_rbac_yaml_grants_every_call_it_makes() {
    let Some(env) = Env::start() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let helm = std::env::var_os("HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"));
    let rendered = Command::new(&helm)
        .args([
            "template",
            "rbac",
            "charts/alces",
            "--namespace",
            "chart-sys",
        ])
        .args(["--show-only", "templates/operator-rbac.yaml"])
        .current_dir(&root)
        .output();
    let chart = match rendered {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).expect("utf-8"),
        Ok(o) => panic!(
            "helm template failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            let why = format!("helm ({}) cannot run: {e}", helm.display());
            if std::env::var_os("ALCES_REQUIRE_ENVTEST").is_some() {
                panic!("ALCES_REQUIRE_ENVTEST is set but {why}");
            }
            println!("SKIPPED: {why}");
            return;
        }
    };
    let file =
        std::fs::read_to_string(root.join("operator/rbac.yaml")).expect("operator/rbac.yaml");
    rt().block_on(async {
        let admin = env.client().await;
        install_crd(&admin).await;
        let nss: Api<Namespace> = Api::all(admin.clone());
        for ns in ["chart-sys", "alces-system", "rbac-chart", "rbac-file"] {
            let n: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("ns");
            nss.create(&PostParams::default(), &n).await.expect("namespace");
        }
        let mut failures = Vec::new();
        for (source, yaml, sa_ns, ns) in [
            ("the chart", chart.as_str(), "chart-sys", "rbac-chart"),
            ("operator/rbac.yaml", file.as_str(), "alces-system", "rbac-file"),
        ] {
            let made = apply_yaml(&admin, yaml).await;
            let sa = made
                .iter()
                .find(|(k, _)| k == "ServiceAccount")
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| panic!("{source} makes no ServiceAccount"));
            let client = client_as(&env, sa_ns, &sa).await;
            let mut fail = |what: String| failures.push(format!("{source}: {what}"));

            // Leader election: take the Lease, then renew it.
            let lease = alces_operator::leader::LeaseConfig {
                namespace: sa_ns.into(),
                name: "alces-operator".into(),
                identity: "test".into(),
                duration: Duration::from_secs(15),
                renew: Duration::from_secs(5),
            };
            for round in ["take", "renew"] {
                match alces_operator::leader::try_acquire(&client, &lease).await {
                    Ok(true) => {}
                    other => fail(format!("{round} the Lease: {other:?}")),
                }
            }
            // The controller's watches.
            for r in [
                list_and_watch::<AlcesCluster>(&client, ns).await,
                list_and_watch::<StatefulSet>(&client, ns).await,
                list_and_watch::<Service>(&client, ns).await,
                list_and_watch::<ConfigMap>(&client, ns).await,
                list_and_watch::<Secret>(&client, ns).await,
                list_and_watch::<k8s_openapi::api::core::v1::Pod>(&client, ns).await,
            ] {
                if let Err(e) = r {
                    fail(e);
                }
            }

            // A cluster with cleanupPolicy Delete, reconciled as the operator.
            let mut registry = prometheus_client::registry::Registry::default();
            let ctx = Arc::new(Context::new(client.clone(), Metrics::new(&mut registry), Arc::new(PodDns)));
            let ar = ApiResource::erase::<AlcesCluster>(&());
            let dynapi: Api<DynamicObject> = Api::namespaced_with(admin.clone(), ns, &ar);
            let mut v = cluster("demo");
            v["spec"]["cleanupPolicy"] = json!("Delete");
            create(&dynapi, v).await.expect("cluster");
            let mut v = cluster("nosecret");
            v["spec"]["secretRef"] = json!({ "name": "nope" });
            create(&dynapi, v).await.expect("cluster");
            let api: Api<AlcesCluster> = Api::namespaced(admin.clone(), ns);
            for name in ["demo", "demo", "demo", "nosecret"] {
                let c = api.get(name).await.expect("get");
                if let Err(e) = controller::reconcile(Arc::new(c), ctx.clone()).await {
                    fail(format!("reconcile of {name}: {e}"));
                }
            }
            let c = api.get("demo").await.expect("get");
            if c.finalizers().is_empty() {
                fail("no finalizer was added".into());
            }
            if c.status.as_ref().and_then(|s| s.observed_generation).is_none() {
                fail("no status was written".into());
            }
            let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), ns);
            for s in ["demo-metadata", "demo-cs-a"] {
                if sts.get_opt(s).await.expect("get").is_none() {
                    fail(format!("StatefulSet {s} not made"));
                }
            }
            let pdb = ApiResource {
                group: "policy".into(),
                version: "v1beta1".into(),
                api_version: "policy/v1beta1".into(),
                kind: "PodDisruptionBudget".into(),
                plural: "poddisruptionbudgets".into(),
            };
            if Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &pdb)
                .get_opt("demo-metadata")
                .await
                .expect("get")
                .is_none()
            {
                fail("PodDisruptionBudget demo-metadata not made".into());
            }
            let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), ns);
            let reasons: Vec<String> = events
                .list(&Default::default())
                .await
                .expect("events")
                .items
                .into_iter()
                .filter_map(|e| e.reason)
                .collect();
            if !reasons.iter().any(|r| r == "MissingSecret") {
                fail(format!("the MissingSecret event was not published (events: {reasons:?})"));
            }

            // Deleted: StatefulSets, then claims; released once no volume is left.
            let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> = Api::namespaced(admin.clone(), ns);
            let pvc = serde_json::from_value(json!({
                "metadata": { "name": "d0-demo-cs-a-0", "labels": { "app.kubernetes.io/instance": "demo", "app.kubernetes.io/name": "alces" } },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
            }))
            .expect("pvc");
            pvcs.create(&PostParams::default(), &pvc).await.expect("pvc");
            api.delete("demo", &Default::default()).await.expect("delete");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let Some(c) = api.get_opt("demo").await.expect("get") else { break };
                if let Err(e) = controller::reconcile(Arc::new(c), ctx.clone()).await {
                    // Waiting for the pods (the garbage collector) is not a refusal.
                    if e.to_string().contains("403") || e.to_string().contains("forbidden") {
                        fail(format!("deletion: {e}"));
                        break;
                    }
                }
                if Instant::now() > deadline {
                    fail("the deleted cluster was not released in 60 s".into());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let left = pvcs.get_opt("d0-demo-cs-a-0").await.expect("get");
            if left.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
                fail("the claim was not deleted".into());
            }
        }
        assert!(failures.is_empty(), "calls the RBAC does not grant:\n{}", failures.join("\n"));
    });
}
