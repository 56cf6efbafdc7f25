//! `alces-bench operator-failover` and `operator-reconcile`: the operator's
//! figures, each printed as a markdown table with reference figures measured
//! in the same run on the same machine.
//!
//! - failover: local clusters of real processes (master, two metaloggers with
//!   `sync_metaloggers = 1`, three chunkservers, a mount running a storm of
//!   operations) driven by the operator's own failover driver
//!   (`alces_operator::failover::driver::step` over
//!   `failover::local::LocalTarget`), stepped as the controller steps it; the
//!   master is SIGKILLed at a random point of the poll period. Rows: the
//!   operator's defaults, the previous defaults, and, as the floor, a
//!   promotion at the first failed check (detection excluded), which leaves
//!   the promotion itself and the client's reconnection.
//! - reconcile: a real API server (`shared/k8s/up`: kube-apiserver with the
//!   CRD server, on loopback, no kubelet), a local cluster of real processes
//!   standing for the metadata pods, and the controller's `reconcile` called
//!   in a loop: API writes per steady-state reconcile and its duration, next
//!   to one GET of the AlcesCluster and one `Admin.Status` of the master.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_e2e::storm::{verify, Storm};
use alces_e2e::{wait_until, Cluster, Options, Proc};
use alces_operator::builders::{self, MASTER_PORT, METALOGGER_PORT};
use alces_operator::controller::{self, target::FixedAddresses, Context, BUSY_POLL, DEFAULT_POLL};
use alces_operator::crd::{AlcesCluster, DEFAULT_DETECTION_GRACE_SECONDS};
use alces_operator::dataplane::DataPlane;
use alces_operator::failover::decide::Policy;
use alces_operator::failover::driver::{step, DriverState, Outcome};
use alces_operator::failover::local::LocalTarget;
use alces_operator::metrics::Metrics;
use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::CustomResourceExt;
use serde_json::json;

/// Options of `alces-bench operator-failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorFailoverArgs {
    /// Failovers measured per setting (each on a new local cluster).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub rounds: u64,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

/// Options of `alces-bench operator-reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorReconcileArgs {
    /// Steady-state reconciles measured.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub reconciles: u64,
    /// The folder with the `up` and `down` scripts of the test control plane
    /// (default: ALCES_K8S_DIR, else `../shared/k8s` beside the workspace).
    #[arg(long)]
    pub k8s_dir: Option<PathBuf>,
    /// Do not run `cargo build --release` for the Alces binaries first.
    #[arg(long)]
    pub no_build: bool,
}

fn build(no_build: bool) -> Result<()> {
    if !no_build {
        eprintln!("alces-bench: building the Alces binaries (cargo build --release)");
        crate::systems::alces::build()?;
    }
    Ok(())
}

/// Runs `f`, turning a panic of the harness (it panics with a message saying
/// what failed) into an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        anyhow::anyhow!("{what} failed: {msg}")
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median (min–max)" in ms of `v` (sorted here).
fn spread(v: &mut [Duration]) -> String {
    v.sort();
    match v {
        [] => "-".into(),
        [one] => format!("{:.0}", ms(*one)),
        _ => format!(
            "{:.0} ({:.0}–{:.0})",
            ms(v[v.len() / 2]),
            ms(v[0]),
            ms(v[v.len() - 1])
        ),
    }
}

/// A pseudo-random offset in `[0, below)` (no generator needed for this).
fn offset(below: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    match below.as_millis() as u64 {
        0 => Duration::ZERO,
        m => Duration::from_millis(n % m),
    }
}

/// One failover setting of the table.
struct Setting {
    name: String,
    /// Period of the health check while the master is healthy.
    poll: Duration,
    /// Period once it is not.
    busy: Duration,
    grace: Duration,
}

/// What one round measured.
struct Round {
    promoted: Duration,
    first_ack: Duration,
    failed_ops: usize,
    verified: usize,
}

/// A local cluster (two metaloggers, sync_metaloggers = 1) with a storm of
/// operations; SIGKILL of the master at a random point of the poll period;
/// the driver stepped as the controller steps it until it promotes; then
/// the first operation acknowledged after the kill.
fn failover_round(s: &Setting) -> Round {
    let c = Cluster::start(Options {
        metaloggers: 2,
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    })
    .expect("start a local cluster");
    let mut t = LocalTarget::new(
        DataPlane::new(&c.secret()).expect("client auth"),
        c.master.clone(),
        vec![
            ("master".into(), 0, None),
            ("ml1".into(), 1, Some(c.ml_addr(1))),
            ("ml2".into(), 2, Some(c.ml_addr(2))),
        ],
        1,
    );
    let policy = Policy {
        enabled: true,
        grace: s.grace,
        force: false,
        sync_metaloggers: 1,
    };
    let storm = Storm::start(c.mnt.clone(), "s");
    wait_until(
        "20 acknowledged operations",
        Duration::from_secs(120),
        || storm.count() >= 20,
    );
    let mut st = DriverState::default();
    let once = |t: &mut LocalTarget, st: &mut DriverState| {
        let rec = t.stored.clone();
        c.block_on(step(t, &rec, &policy, st, Instant::now(), "t"))
            .expect("driver step")
            .1
    };
    assert!(
        matches!(once(&mut t, &mut st), Outcome::Healthy(_)),
        "the master is not healthy before the kill"
    );
    let kill_after = offset(s.poll);
    std::thread::sleep(kill_after);
    c.kill9(Proc::Master);
    let killed = Instant::now();
    let acked_at_kill = storm.count();
    // The next periodic round comes `poll` after the last healthy one.
    std::thread::sleep(s.poll.saturating_sub(kill_after));
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no promotion within 60 s"
        );
        match once(&mut t, &mut st) {
            Outcome::Promoted { .. } => break,
            Outcome::Refused { reason, message } => panic!("refused ({reason}): {message}"),
            Outcome::Healthy(_) => std::thread::sleep(s.poll),
            _ => std::thread::sleep(s.busy),
        }
    }
    let promoted = killed.elapsed();
    while storm.count() <= acked_at_kill {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "no operation acknowledged after the promotion"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_ack = killed.elapsed();
    let (log, errors) = storm.finish();
    verify(&c.mnt, &log);
    Round {
        promoted,
        first_ack,
        failed_ops: errors.len(),
        verified: log.len(),
    }
}

/// Measures the operator's failover figures and returns the table.
pub fn failover(a: &OperatorFailoverArgs) -> Result<String> {
    build(a.no_build)?;
    let settings = [
        Setting {
            name: format!(
                "operator defaults: health checked every {} ms, every {} ms once failing, grace {} s",
                DEFAULT_POLL.as_millis(),
                BUSY_POLL.as_millis(),
                DEFAULT_DETECTION_GRACE_SECONDS
            ),
            poll: DEFAULT_POLL,
            busy: BUSY_POLL,
            grace: Duration::from_secs(DEFAULT_DETECTION_GRACE_SECONDS.into()),
        },
        Setting {
            name: "reference: the previous defaults (2000 ms, 500 ms, grace 2 s)".into(),
            poll: Duration::from_secs(2),
            busy: Duration::from_millis(500),
            grace: Duration::from_secs(2),
        },
        Setting {
            name: "reference: promoted at the first failed check (detection excluded)".into(),
            poll: Duration::ZERO,
            busy: Duration::from_millis(10),
            grace: Duration::ZERO,
        },
    ];
    let mut rows = Vec::new();
    for s in &settings {
        let (mut promoted, mut acked, mut client) = (Vec::new(), Vec::new(), Vec::new());
        let (mut failed, mut verified) = (0, 0);
        for i in 0..a.rounds {
            eprintln!(
                "alces-bench: operator failover [{}] round {}",
                s.name,
                i + 1
            );
            let r = guarded("the operator failover round", || failover_round(s))?;
            promoted.push(r.promoted);
            acked.push(r.first_ack);
            client.push(r.first_ack.saturating_sub(r.promoted));
            failed += r.failed_ops;
            verified += r.verified;
        }
        rows.push(format!(
            "| {} | {} | {} | {} | {verified} | {failed} |",
            s.name,
            spread(&mut promoted),
            spread(&mut acked),
            spread(&mut client),
        ));
    }
    Ok(format!(
        "Operator failover, {} rounds per row (median (min–max) in ms; local processes, 2 metaloggers, sync_metaloggers = 1):\n\n\
         | setting | SIGKILL -> promoted | SIGKILL -> first acknowledged operation | promoted -> first acknowledged (client side) | operations verified | operations failed |\n\
         |---|---:|---:|---:|---:|---:|\n{}",
        a.rounds,
        rows.join("\n")
    ))
}

/// A control plane from `shared/k8s/up`, stopped by `down` on drop.
struct ApiServer {
    k8s: PathBuf,
    state: tempfile::TempDir,
}

impl ApiServer {
    fn start(k8s: &Path) -> Result<Self> {
        let up = k8s.join("up");
        if !up.is_file() {
            bail!(
                "{} not found: give --k8s-dir (the shared/k8s folder with up and down)",
                up.display()
            );
        }
        let state = tempfile::Builder::new()
            .prefix("alces-bench-apiserver-")
            .tempdir()?;
        let out = Command::new(&up)
            .arg(state.path().join("s"))
            .args(["--with-crd-server", "alces.io/v1alpha1"])
            .output()
            .with_context(|| format!("cannot run {}", up.display()))?;
        let server = Self {
            k8s: k8s.to_path_buf(),
            state,
        };
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                up.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(server)
    }

    async fn client(&self) -> Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(self.state.path().join("s/kubeconfig"))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new(self.k8s.join("down"))
            .arg(self.state.path().join("s"))
            .output();
    }
}

async fn install_crd(client: &kube::Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "alcesclusters.alces.io",
        &PatchParams::apply("alces-bench").force(),
        &Patch::Apply(AlcesCluster::crd()),
    )
    .await
    .context("the API server refused the CRD")?;
    let api: Api<AlcesCluster> = Api::namespaced(client.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.list(&Default::default()).await.is_err() {
        if Instant::now() > deadline {
            bail!("AlcesClusters not served 60 s after the CRD was applied");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Measures the steady-state reconcile figures and returns the table.
pub fn reconcile(a: &OperatorReconcileArgs) -> Result<String> {
    build(a.no_build)?;
    let k8s = a.k8s_dir.clone().unwrap_or_else(|| {
        std::env::var_os("ALCES_K8S_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::systems::alces::workspace_dir().join("../shared/k8s"))
    });
    let server = ApiServer::start(&k8s)?;
    let c = guarded("starting a local cluster", || {
        Cluster::start(Options {
            metaloggers: 2,
            ..Options::default()
        })
        .expect("start a local cluster")
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let n = usize::try_from(a.reconciles).context("--reconciles")?;
    let epoch = c.status().context("master status")?.epoch;
    let secret = c.secret();
    let (master, ml1, ml2) = (c.master.clone(), c.ml_addr(1), c.ml_addr(2));
    let table = rt.block_on(async move {
        let client = server.client().await?;
        install_crd(&client).await?;
        let ns = "figures";
        let nsobj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &nsobj)
            .await?;
        let s: Secret = serde_json::from_value(
            json!({ "metadata": { "name": "demo-secret" }, "stringData": { "secret": secret } }),
        )?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &s)
            .await?;
        let cluster: AlcesCluster = serde_json::from_value(json!({
            "apiVersion": "alces.io/v1alpha1", "kind": "AlcesCluster",
            "metadata": { "name": "demo", "namespace": ns },
            "spec": { "image": "alces:bench", "chunkservers": { "pools": [
                { "name": "a", "replicas": 3, "disks": [{ "name": "d0", "volumeClaim": { "size": "1Gi" } }] }
            ] } }
        }))?;
        let api: Api<AlcesCluster> = Api::namespaced(client.clone(), ns);
        api.create(&PostParams::default(), &cluster).await?;
        api.patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "activeMaster": "demo-metadata-0", "epoch": epoch, "initialized": true } })),
        )
        .await?;
        // The metadata pods as objects (no kubelet runs them): the local
        // processes answer for them.
        let typed = api.get("demo").await?;
        let labels = builders::selector(&typed, builders::METADATA);
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for i in 0..3 {
            let p: Pod = serde_json::from_value(json!({
                "metadata": { "name": format!("demo-metadata-{i}"), "labels": labels },
                "spec": { "containers": [{ "name": "metadata", "image": "alces:bench" }] }
            }))?;
            pods.create(&PostParams::default(), &p).await?;
        }
        let mut addrs = HashMap::new();
        addrs.insert(("demo-metadata-0".to_string(), MASTER_PORT), master.clone());
        // The original master process has no Metalogger service: a closed port.
        addrs.insert(("demo-metadata-0".to_string(), METALOGGER_PORT), "127.0.0.1:1".to_string());
        addrs.insert(("demo-metadata-1".to_string(), METALOGGER_PORT), ml1);
        addrs.insert(("demo-metadata-2".to_string(), METALOGGER_PORT), ml2);
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::new(&mut registry);
        let ctx = Arc::new(Context::new(
            client.clone(),
            metrics.clone(),
            Arc::new(FixedAddresses(addrs)),
        ));
        let once = |ctx: Arc<Context>| {
            let api = api.clone();
            async move {
                let c = api.get("demo").await?;
                let t = Instant::now();
                controller::reconcile(Arc::new(c), ctx).await?;
                anyhow::Ok(t.elapsed())
            }
        };
        let first = once(ctx.clone()).await?;
        let mut settle = 0;
        loop {
            let before = metrics.api_writes.get();
            once(ctx.clone()).await?;
            settle += 1;
            if metrics.api_writes.get() == before {
                break;
            }
            if settle > 20 {
                bail!("the reconcile still writes after 20 rounds");
            }
        }
        let writes = metrics.api_writes.get();
        let mut took = Vec::new();
        for _ in 0..n {
            took.push(once(ctx.clone()).await?);
        }
        let steady_writes = metrics.api_writes.get() - writes;
        // References: one GET of the AlcesCluster; one Admin.Status of the master.
        let mut gets = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            api.get("demo").await?;
            gets.push(t.elapsed());
        }
        let dp = DataPlane::new(&secret)?;
        let mut statuses = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            dp.master_status(&master).await?;
            statuses.push(t.elapsed());
        }
        let st = api.get("demo").await?.status.unwrap_or_default();
        if st.active_master.as_deref() != Some("demo-metadata-0") {
            bail!("the reconcile moved the master: {st:?}");
        }
        took.sort();
        let p90 = took[(n * 9 / 10).min(n - 1)];
        anyhow::Ok(format!(
            "Operator reconcile (real API server on loopback, a local cluster answering for the metadata pods, {n} steady-state reconciles):\n\n\
             | figure | value |\n|---|---:|\n\
             | the reconcile that creates every object | {:.0} ms |\n\
             | reconciles until nothing more is written | {settle} |\n\
             | API writes per steady-state reconcile | {:.2} |\n\
             | steady-state reconcile duration, median / p90 / max | {:.1} / {:.1} / {:.1} ms |\n\
             | reference: one GET of the AlcesCluster, median | {:.1} ms |\n\
             | reference: one Admin.Status of the master, median | {:.1} ms |",
            ms(first),
            steady_writes as f64 / n as f64,
            ms(took[n / 2]),
            ms(p90),
            ms(took[n - 1]),
            ms(median(&mut gets)),
            ms(median(&mut statuses)),
        ))
    })?;
    drop(c);
    Ok(table)
}
