//! The AlcesCluster controller: kube-runtime's `Controller` over the
//! custom resource and what it owns, one [`reconcile`] per change (and
//! periodically, to poll the master's health).
//!
//! A reconcile, in order:
//! 1. validates the spec (nothing is applied while it is invalid);
//! 2. makes the cluster Secret once (never rewritten);
//! 3. applies ConfigMaps, Services, StatefulSets and PDBs (server-side apply,
//!    skipped when the live object carries the same hash);
//! 4. runs one round of the failover driver (bootstrap, failover, resume);
//! 5. plans each pool (drains before a scale-down) and the rolling upgrade;
//! 6. writes the status if it changed (resourceVersion precondition).

pub mod apply;
pub mod pools;
pub mod status;
pub mod target;
pub mod upgrade;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use parking_lot::Mutex;

use crate::builders::{self, names, CHUNKSERVER, METADATA};
use crate::crd::{AlcesCluster, AlcesClusterStatus, CleanupPolicy, PoolStatus};
use crate::dataplane::DataPlane;
use crate::failover::decide::Policy;
use crate::failover::driver::{self, DriverState, Outcome, RecordError};
use crate::metrics::Metrics;
use crate::validate;

use apply::{kinds, Applier};
use target::{KubeTarget, Resolver};

/// Finalizer the operator puts on an AlcesCluster whose deletion must clean
/// something (`cleanupPolicy: Delete`), and only there.
pub const FINALIZER: &str = "alces.io/cleanup";

/// Default period of the master's health check while nothing is in progress
/// (`--poll-ms`). A dead master pod also triggers a reconcile at once (pods
/// are watched); this bounds the detection of a master process that died in
/// a pod that looks unchanged.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

/// Requeue period while a failover, drain or upgrade is in progress, or the
/// master is unhealthy: the granularity of the detection grace.
pub const BUSY_POLL: Duration = Duration::from_millis(250);

/// Errors of a reconcile (retried with a backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Metrics.
    pub metrics: Metrics,
    /// How pods are reached.
    pub resolver: Arc<dyn Resolver>,
    /// Who publishes events.
    pub reporter: Reporter,
    /// Failover driver state per cluster (`ns/name`).
    pub drivers: Mutex<HashMap<String, DriverState>>,
    /// PodDisruptionBudget version found by discovery (`None` inside: none served).
    pub pdb_version: tokio::sync::OnceCell<Option<&'static str>>,
    /// Requeue period while the master is healthy and nothing is in progress.
    pub poll: Duration,
    /// gRPC clients per cluster (`ns/name`) with a fingerprint of the secret
    /// and TLS settings they use: their channels outlive a reconcile.
    pub dataplanes: Mutex<HashMap<String, (String, DataPlane)>>,
    /// TLS of the calls to masters and metaloggers of clusters without
    /// `spec.tls` (`--tls-*` of the operator).
    pub tls: alces_proto::tls::Tls,
    /// Where the TLS files of clusters with `spec.tls` are written
    /// (`--tls-dir`, one folder per cluster: [`crate::tls`]).
    pub tls_dir: std::path::PathBuf,
    /// The TLS client of each cluster with `spec.tls` (`ns/name`) and the
    /// fingerprint of the material it was built from.
    pub tls_clients: Mutex<HashMap<String, (String, alces_proto::tls::Tls)>>,
}

impl Context {
    /// A context with production defaults (pod DNS names, [`DEFAULT_POLL`]).
    pub fn new(client: Client, metrics: Metrics, resolver: Arc<dyn Resolver>) -> Self {
        Self {
            client,
            metrics,
            resolver,
            reporter: Reporter {
                controller: "alces-operator".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
            drivers: Mutex::new(HashMap::new()),
            pdb_version: tokio::sync::OnceCell::new(),
            poll: DEFAULT_POLL,
            dataplanes: Mutex::new(HashMap::new()),
            tls: alces_proto::tls::Tls::plain(),
            tls_dir: std::env::temp_dir().join("alces-operator-tls"),
            tls_clients: Mutex::new(HashMap::new()),
        }
    }

    /// The gRPC client of cluster `key`, made anew when its secret or its
    /// TLS settings changed (`tls`: the fingerprint of the cluster's own
    /// [`crate::tls::Material`] and its client settings; None: the
    /// operator's `--tls-*`).
    fn dataplane(
        &self,
        key: &str,
        secret: &str,
        tls: Option<&(String, alces_proto::tls::Tls)>,
    ) -> Result<DataPlane, Error> {
        let id = format!(
            "{}\n{}",
            builders::hash(secret.as_bytes()),
            tls.map_or("operator flags", |(f, _)| f.as_str())
        );
        let mut m = self.dataplanes.lock();
        if let Some((s, dp)) = m.get(key) {
            if *s == id {
                return Ok(dp.clone());
            }
        }
        let dp = DataPlane::new(secret)
            .map_err(|e| Error::Other(e.to_string()))?
            .with_tls(tls.map_or(&self.tls, |(_, t)| t));
        m.insert(key.to_string(), (id, dp.clone()));
        Ok(dp)
    }
}

/// Runs the controller over AlcesClusters in `namespace` (all when None)
/// until the stream ends.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (clusters, sts, svc, cm, sec, pods) = match &namespace {
        Some(ns) => (
            Api::<AlcesCluster>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
            Api::<Secret>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=alces-operator");
    Controller::new(clusters, watcher::Config::default())
        .owns(sts, owned.clone())
        .owns(svc, owned.clone())
        .owns(cm, owned.clone())
        .owns(sec, owned.clone())
        // Pods are owned by the StatefulSets: map them to their cluster by label,
        // so a master pod that dies triggers a reconcile at once.
        .watches(
            pods,
            // Only the pods the operator made: the chart's own pods (operator,
            // CSI) carry app.kubernetes.io/name=alces too, with the release as
            // their instance, which would map them to a cluster of that name.
            watcher::Config::default().labels("app.kubernetes.io/managed-by=alces-operator"),
            |p: Pod| {
                let ns = p.namespace()?;
                let name = p.labels().get("app.kubernetes.io/instance")?.clone();
                Some(kube::runtime::reflector::ObjectRef::new(&name).within(&ns))
            },
        )
        .trigger_backoff(TriggerBackoff::default())
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "reconcile stream item");
            }
        })
        .await;
}

/// Backoff of the controller's watches after an error: 200 ms doubling up to
/// 3 s, back to 200 ms after any event. kube-runtime applies one backoff to
/// all the watches merged, and after an API server restart each of them
/// fails once ("410 Gone: too old resource version") before it lists again;
/// with the default (up to 30 s, jittered, reset only after 120 s) those
/// errors, one after another, kept the controller blind to changes for
/// minutes after the server was back.
#[derive(Debug, Clone)]
pub struct TriggerBackoff {
    next: Duration,
}

impl TriggerBackoff {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(3);
}

impl Default for TriggerBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for TriggerBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for TriggerBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

fn error_policy(_c: Arc<AlcesCluster>, e: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.inc();
    tracing::warn!(error = %e, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(3))
}

/// One reconcile of `c`: its finalizer first (see [`needs_finalizer`]),
/// then the cleanup of a deleted cluster or the apply of a live one.
pub async fn reconcile(c: Arc<AlcesCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let t0 = Instant::now();
    ctx.metrics.reconciles.inc();
    let res = reconcile_with_finalizer(c, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(t0.elapsed().as_secs_f64());
    res
}

/// Whether `c` needs the finalizer [`FINALIZER`]: only when its deletion has
/// something to clean (`cleanupPolicy: Delete`). A cluster that keeps its
/// disks has none, so deleting it never waits for a running operator (the
/// chart's optional cluster, uninstalled together with the operator, goes at
/// once); its owned objects are garbage-collected by Kubernetes.
pub fn needs_finalizer(c: &AlcesCluster) -> bool {
    c.spec.cleanup_policy == CleanupPolicy::Delete
}

async fn reconcile_with_finalizer(c: Arc<AlcesCluster>, ctx: &Context) -> Result<Action, Error> {
    let ns = c.namespace().unwrap_or_default();
    let api: Api<AlcesCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let has = c.finalizers().iter().any(|f| f == FINALIZER);
    let needs = needs_finalizer(&c);
    if c.metadata.deletion_timestamp.is_some() {
        let key = format!("{ns}/{}", c.name_any());
        ctx.dataplanes.lock().remove(&key);
        ctx.drivers.lock().remove(&key);
        ctx.tls_clients.lock().remove(&key);
        let _ = std::fs::remove_dir_all(crate::tls::cluster_dir(&ctx.tls_dir, &ns, &c.name_any()));
        if !has {
            return Ok(Action::await_change());
        }
        if needs {
            cleanup(&c, ctx).await?;
        } else {
            tracing::info!(cluster = %c.name_any(), "deleted; disks retained (cleanupPolicy Retain)");
        }
        remove_finalizer(&api, &c, ctx).await?;
        return Ok(Action::await_change());
    }
    match (needs, has) {
        // The patch is an event of the watch: the next reconcile applies.
        (true, false) => {
            add_finalizer(&api, &c, ctx).await?;
            Ok(Action::await_change())
        }
        // The policy went back to Retain: nothing to clean on deletion.
        (false, true) => {
            remove_finalizer(&api, &c, ctx).await?;
            Ok(Action::await_change())
        }
        _ => apply(c, ctx).await,
    }
}

/// Adds [`FINALIZER`] by a JSON patch whose test fails (409/422, retried
/// by the next reconcile) if the list changed since `c` was read.
async fn add_finalizer(
    api: &Api<AlcesCluster>,
    c: &AlcesCluster,
    ctx: &Context,
) -> Result<(), Error> {
    let ops = if c.finalizers().is_empty() {
        serde_json::json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ])
    } else {
        serde_json::json!([
            { "op": "test", "path": "/metadata/finalizers", "value": c.finalizers() },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ])
    };
    finalizer_patch(api, c, ctx, ops).await
}

/// Removes [`FINALIZER`] (tested at its index, so another's is never removed).
async fn remove_finalizer(
    api: &Api<AlcesCluster>,
    c: &AlcesCluster,
    ctx: &Context,
) -> Result<(), Error> {
    let Some(i) = c.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let path = format!("/metadata/finalizers/{i}");
    let ops = serde_json::json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ]);
    finalizer_patch(api, c, ctx, ops).await
}

async fn finalizer_patch(
    api: &Api<AlcesCluster>,
    c: &AlcesCluster,
    ctx: &Context,
    ops: serde_json::Value,
) -> Result<(), Error> {
    let patch = serde_json::from_value(ops).map_err(|e| Error::Finalizer(e.to_string()))?;
    ctx.metrics.api_writes.inc();
    match api
        .patch(
            &c.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already: nothing holds it any more.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Finalizer(format!(
            "cannot update the finalizers of {}: {e}",
            c.name_any()
        ))),
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Publishes an event about `c` (failures are logged, never fatal).
async fn event(ctx: &Context, c: &AlcesCluster, warning: bool, reason: &str, note: String) {
    let rec = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: reason.into(),
        secondary: None,
    };
    ctx.metrics.api_writes.inc();
    if let Err(e) = rec.publish(&ev, &c.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish an event");
    }
}

/// Reads (or creates once) the cluster secret; Err names what is missing.
async fn ensure_secret(
    c: &AlcesCluster,
    applier: &Applier,
) -> Result<Result<String, String>, Error> {
    let ns = c.namespace().unwrap_or_default();
    let (name, key, generated) = match &c.spec.secret_ref {
        Some(r) => (
            r.name.clone(),
            r.key.clone().unwrap_or_else(|| builders::SECRET_KEY.into()),
            false,
        ),
        None => (
            names::secret(&c.name_any()),
            builders::SECRET_KEY.to_string(),
            true,
        ),
    };
    let live = applier.get(&kinds::secret(), &name).await?;
    let value = live.and_then(|s| {
        s.data
            .get("data")
            .and_then(|d| d.get(&key))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    });
    match value {
        Some(b64) => {
            let raw = k8s_openapi::ByteString::deserialize_b64(&b64);
            match raw {
                Some(s) if !s.trim().is_empty() => Ok(Ok(s.trim().to_string())),
                _ => Ok(Err(format!(
                    "spec.secretRef: key '{key}' of Secret {ns}/{name} is empty or not text; put the cluster secret there"
                ))),
            }
        }
        None if generated => {
            let secret: String = rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            applier
                .create(&kinds::secret(), builders::secret(c, &secret))
                .await?;
            tracing::info!(secret = %name, "generated the cluster secret");
            Ok(Ok(secret))
        }
        None => Ok(Err(format!(
            "spec.secretRef: Secret {ns}/{name} with key '{key}' does not exist; create it, or remove secretRef to let the operator generate one"
        ))),
    }
}

/// The data of Secret `name` (None when it does not exist).
async fn secret_data(
    applier: &Applier,
    name: &str,
) -> Result<Option<std::collections::BTreeMap<String, Vec<u8>>>, Error> {
    let Some(live) = applier.get(&kinds::secret(), name).await? else {
        return Ok(None);
    };
    let mut out = std::collections::BTreeMap::new();
    if let Some(d) = live.data.get("data").and_then(|d| d.as_object()) {
        for (k, v) in d {
            let bytes = v
                .as_str()
                .and_then(|b| {
                    serde_json::from_value::<k8s_openapi::ByteString>(serde_json::Value::String(
                        b.into(),
                    ))
                    .ok()
                })
                .map(|b| b.0)
                .unwrap_or_default();
            out.insert(k.clone(), bytes);
        }
    }
    Ok(Some(out))
}

/// The operator's TLS client for cluster `c` from its `spec.tls` Secrets
/// (None without `spec.tls`: the operator's own flags apply), or the
/// message of a `Degraded`/`InvalidTLSSecret` condition naming the Secret
/// and the key at fault.
async fn cluster_tls(
    c: &AlcesCluster,
    applier: &Applier,
    ctx: &Context,
) -> Result<Result<Option<(String, alces_proto::tls::Tls)>, String>, Error> {
    let Some(spec) = &c.spec.tls else {
        return Ok(Ok(None));
    };
    let ns = c.namespace().unwrap_or_default();
    let missing = |n: &str, field: &str| {
        format!(
            "{field}: Secret {ns}/{n} does not exist; create it (a cert-manager Certificate's Secret, or `alces tls generate`), or remove spec.tls; the pods keep running as they are"
        )
    };
    let Some(server) = secret_data(applier, &spec.secret_name).await? else {
        return Ok(Err(missing(&spec.secret_name, "spec.tls.secretName")));
    };
    let client = match &spec.client_secret_name {
        Some(n) => match secret_data(applier, n).await? {
            Some(d) => Some(d),
            None => return Ok(Err(missing(n, "spec.tls.clientSecretName"))),
        },
        None => None,
    };
    let bad = |p: crate::tls::Problem| {
        format!("spec.tls: {p}; nothing was changed, the pods keep running as they are")
    };
    let m = match crate::tls::check(&ns, spec, &server, client.as_ref()) {
        Ok(m) => m,
        Err(p) => return Ok(Err(bad(p))),
    };
    let fp = m.fingerprint(spec);
    let key = format!("{ns}/{}", c.name_any());
    if let Some(t) = ctx.tls_clients.lock().get(&key).filter(|(f, _)| *f == fp) {
        return Ok(Ok(Some(t.clone())));
    }
    let dir = crate::tls::cluster_dir(&ctx.tls_dir, &ns, &c.name_any());
    let who = format!(
        "{ns}/{}",
        spec.client_secret_name
            .as_ref()
            .unwrap_or(&spec.secret_name)
    );
    match crate::tls::client(&dir, spec, &m, &who) {
        Ok(t) => {
            ctx.tls_clients.lock().insert(key, (fp.clone(), t.clone()));
            Ok(Ok(Some((fp, t))))
        }
        Err(p) => Ok(Err(bad(p))),
    }
}

trait B64 {
    fn deserialize_b64(s: &str) -> Option<String>;
}

impl B64 for k8s_openapi::ByteString {
    fn deserialize_b64(s: &str) -> Option<String> {
        let v: k8s_openapi::ByteString =
            serde_json::from_value(serde_json::Value::String(s.into())).ok()?;
        String::from_utf8(v.0).ok()
    }
}

/// Hashes of the disk layouts (metadata storage, each pool's disks), kept in
/// the status to refuse a change on servers that do not run CEL rules.
fn layouts(c: &AlcesCluster) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    m.insert(
        "metadata".to_string(),
        builders::hash(
            serde_json::to_string(&c.spec.master.storage)
                .unwrap_or_default()
                .as_bytes(),
        ),
    );
    for p in &c.spec.chunkservers.pools {
        m.insert(
            format!("pool/{}", p.name),
            builders::hash(
                serde_json::to_string(&p.disks)
                    .unwrap_or_default()
                    .as_bytes(),
            ),
        );
    }
    m
}

fn layout_problems(c: &AlcesCluster) -> Vec<validate::Problem> {
    let Some(old) = c.status.as_ref().map(|s| &s.disk_layouts) else {
        return Vec::new();
    };
    let new = layouts(c);
    let mut out = Vec::new();
    for (k, h) in &new {
        if let Some(o) = old.get(k) {
            if o != h {
                let field = if k == "metadata" {
                    "spec.master.storage".to_string()
                } else {
                    let pool = k.trim_start_matches("pool/");
                    let i = c
                        .spec
                        .chunkservers
                        .pools
                        .iter()
                        .position(|p| p.name == pool)
                        .unwrap_or(0);
                    format!("spec.chunkservers.pools[{i}].disks")
                };
                out.push(validate::Problem {
                    field,
                    message: "the disk layout cannot change once created (identity and data live on the disks); put the previous layout back, or add a new pool and scale this one down".into(),
                });
            }
        }
    }
    out
}

async fn write_status(
    ctx: &Context,
    c: &AlcesCluster,
    mut status: AlcesClusterStatus,
) -> Result<bool, Error> {
    let old = c.status.clone().unwrap_or_default();
    status.conditions = status::carry_times(&old.conditions, status.conditions, &now_rfc3339());
    if status == old {
        return Ok(false);
    }
    let mut obj = c.clone();
    obj.status = Some(status);
    obj.metadata.managed_fields = None;
    let api: Api<AlcesCluster> =
        Api::namespaced(ctx.client.clone(), &c.namespace().unwrap_or_default());
    ctx.metrics.api_writes.inc();
    match api
        .replace_status(&c.name_any(), &PostParams::default(), &obj)
        .await
    {
        Ok(_) => Ok(true),
        // Someone wrote first: the next reconcile starts from what they wrote.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
        Err(e) => Err(e.into()),
    }
}

async fn apply(c: Arc<AlcesCluster>, ctx: &Context) -> Result<Action, Error> {
    let name = c.name_any();
    let ns = c.namespace().unwrap_or_default();
    let gen = c.metadata.generation;
    let applier = Applier::new(ctx.client.clone(), &ns, ctx.metrics.clone());
    let old = c.status.clone().unwrap_or_default();
    let mut st = old.clone();
    st.observed_generation = gen;

    // 1. Validation: nothing is applied while the spec is invalid.
    let mut problems = validate::check(&name, &c.spec);
    problems.extend(layout_problems(&c));
    if !problems.is_empty() {
        let msg = problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        st.conditions = status::invalid(&old.conditions, "InvalidSpec", &msg, gen);
        if write_status(ctx, &c, st).await? {
            event(ctx, &c, true, "InvalidSpec", msg).await;
        }
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    // 2. The secret.
    let secret = match ensure_secret(&c, &applier).await? {
        Ok(s) => s,
        Err(msg) => {
            st.conditions = status::invalid(&old.conditions, "MissingSecret", &msg, gen);
            if write_status(ctx, &c, st).await? {
                event(ctx, &c, true, "MissingSecret", msg).await;
            }
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    // 2b. The TLS Secrets: checked before anything mounts them (a pod with a
    // bad one would not start), so a bad one changes nothing.
    let tls = match cluster_tls(&c, &applier, ctx).await? {
        Ok(t) => t,
        Err(msg) => {
            st.conditions = status::invalid(&old.conditions, "InvalidTLSSecret", &msg, gen);
            if write_status(ctx, &c, st).await? {
                event(ctx, &c, true, "InvalidTLSSecret", msg).await;
            }
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    st.secret_name = Some(match &c.spec.secret_ref {
        Some(r) => r.name.clone(),
        None => names::secret(&name),
    });
    st.disk_layouts = layouts(&c);

    // 3. Configuration, Services, StatefulSets, PDBs.
    let md_env = builders::metadata_env(&c);
    let cs_env = builders::chunkserver_env(&c);
    let md_hash = builders::hash(
        serde_json::to_string(&md_env)
            .unwrap_or_default()
            .as_bytes(),
    );
    let cs_hash = builders::hash(
        serde_json::to_string(&cs_env)
            .unwrap_or_default()
            .as_bytes(),
    );
    applier
        .apply(
            &kinds::config_map(),
            builders::config_map(&c, &names::metadata(&name), METADATA, &md_env),
        )
        .await?;
    applier
        .apply(
            &kinds::config_map(),
            builders::config_map(&c, &names::chunkserver_config(&name), CHUNKSERVER, &cs_env),
        )
        .await?;
    applier
        .apply(
            &kinds::service(),
            builders::headless_service(
                &c,
                &names::metadata(&name),
                METADATA,
                builders::METALOGGER_PORT,
            ),
        )
        .await?;
    applier
        .apply(
            &kinds::service(),
            builders::headless_service(
                &c,
                &names::chunkservers(&name),
                CHUNKSERVER,
                builders::CHUNKSERVER_PORT,
            ),
        )
        .await?;
    if old.promotion.is_none() {
        let routed = old.active_master.as_deref().filter(|_| old.initialized);
        applier
            .apply(&kinds::service(), builders::master_service(&c, routed))
            .await?;
    }
    applier
        .apply(
            &kinds::statefulset(),
            builders::metadata_statefulset(&c, &md_hash),
        )
        .await?;
    let pdb = *ctx
        .pdb_version
        .get_or_init(|| apply::pdb_version(&ctx.client))
        .await;
    let mut notes = Vec::new();
    match pdb {
        Some(v) => {
            for p in builders::pdbs(&c, &format!("policy/{v}")) {
                if let Err(e) = applier.apply(&kinds::pdb(v), p).await {
                    tracing::warn!(error = %e, "cannot apply a PodDisruptionBudget");
                    notes.push(format!("PodDisruptionBudget not applied: {e}"));
                }
            }
        }
        None => notes.push("the API server serves no PodDisruptionBudget (policy/v1 or v1beta1): pods are not protected from voluntary evictions".into()),
    }

    // 4. The master: bootstrap, failover, resume.
    let mut target = KubeTarget::new(
        ctx.client.clone(),
        (*c).clone(),
        applier.clone(),
        ctx.dataplane(&format!("{ns}/{name}"), &secret, tls.as_ref())?,
        ctx.resolver.clone(),
    );
    let rec = KubeTarget::record_of(&c);
    let policy = Policy {
        enabled: c.spec.failover.enabled,
        grace: Duration::from_secs(u64::from(c.spec.failover.detection_grace_seconds)),
        force: c.spec.failover.force,
        sync_metaloggers: c.spec.effective_sync_metaloggers(),
    };
    let key = format!("{ns}/{name}");
    let mut dstate = ctx.drivers.lock().get(&key).cloned().unwrap_or_default();
    let stepped = driver::step(
        &mut target,
        &rec,
        &policy,
        &mut dstate,
        Instant::now(),
        &now_rfc3339(),
    )
    .await;
    ctx.drivers.lock().insert(key.clone(), dstate.clone());
    let (rec, outcome) = match stepped {
        Ok(x) => x,
        Err(RecordError::Conflict) => return Ok(Action::requeue(Duration::from_millis(100))),
        Err(RecordError::Other(e)) => return Err(Error::Other(e)),
    };
    match &outcome {
        Outcome::Promoted { promotion, took } => {
            if let Some(t) = took {
                ctx.metrics.failovers.inc();
                ctx.metrics.failover_duration.observe(t.as_secs_f64());
            }
            event(
                ctx,
                &target.cluster,
                false,
                "Promoted",
                format!(
                    "{} {} is the master at epoch {}{}{}",
                    promotion.kind,
                    promotion.pod,
                    promotion.epoch,
                    promotion
                        .from
                        .as_ref()
                        .map(|f| format!(", replacing {f}"))
                        .unwrap_or_default(),
                    took.map(|t| format!(
                        ", {:.1} s after the master was first seen unhealthy",
                        t.as_secs_f64()
                    ))
                    .unwrap_or_default()
                ),
            )
            .await;
        }
        Outcome::PromoteFailed { promotion, error } => {
            event(
                ctx,
                &target.cluster,
                true,
                "PromotionFailed",
                format!(
                    "promoting {} to epoch {}: {error}",
                    promotion.pod, promotion.epoch
                ),
            )
            .await;
        }
        Outcome::Refused { reason, message } => {
            let known = old
                .conditions
                .iter()
                .any(|c| c.reason == *reason && c.message == *message);
            if !known {
                event(ctx, &target.cluster, true, reason, message.clone()).await;
            }
        }
        _ => {}
    }
    st.active_master = rec.active.clone();
    st.epoch = rec.epoch;
    st.initialized = rec.initialized;
    st.promotion = rec.promotion.clone();
    let ms = target.master_status.clone().filter(|_| target.master_ok);

    // 5. Pools: drains before scale-down; then the rolling upgrade.
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let remaining: i32 = c
        .spec
        .chunkservers
        .pools
        .iter()
        .map(|p| p.replicas.max(0))
        .sum();
    let mut pool_status = Vec::new();
    let mut blocked = Vec::new();
    let mut live_sets = Vec::new();
    for pool in &c.spec.chunkservers.pools {
        let sname = names::pool(&name, &pool.name);
        let live = sts_api.get_opt(&sname).await?;
        let live_replicas = live.as_ref().and_then(|s| s.spec.replicas);
        let plan = pools::plan(&name, pool, live_replicas, remaining, ms.as_ref());
        for (id, drain, pod) in &plan.drains {
            let addr = target.addr(
                rec.active.as_deref().unwrap_or_default(),
                builders::MASTER_PORT,
            );
            match target.dp.drain(&addr, *id, *drain).await {
                Ok(_) => {
                    let (r, what) = if *drain {
                        ("DrainStarted", "draining")
                    } else {
                        ("DrainEnded", "no longer draining")
                    };
                    event(
                        ctx,
                        &target.cluster,
                        false,
                        r,
                        format!("chunkserver {pod} (server {id}) {what}"),
                    )
                    .await;
                }
                Err(e) => tracing::warn!(%pod, error = %e, "drain call failed"),
            }
        }
        if plan.shrinks {
            event(
                ctx,
                &target.cluster,
                false,
                "ScaledDown",
                format!("pool {} drained and scaled to {}", pool.name, plan.replicas),
            )
            .await;
        }
        if let Some(b) = &plan.blocked {
            blocked.push(b.clone());
        }
        applier
            .apply(
                &kinds::statefulset(),
                builders::pool_statefulset(&c, pool, plan.replicas, &cs_hash),
            )
            .await?;
        let sts_ready = live
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        let ready = pools::ready(&name, pool, plan.replicas, sts_ready, ms.as_ref());
        pool_status.push(PoolStatus {
            name: pool.name.clone(),
            ready,
            desired: pool.replicas,
            current: plan.replicas,
            draining: plan.draining.clone(),
        });
        // The upgrade looks at the StatefulSet as it is after this apply: the
        // one read before it may still carry the previous generation and
        // revision, and the pool would look up to date while the metadata
        // StatefulSet (applied earlier in this pass) already wants its pods
        // replaced.
        live_sets.push(sts_api.get_opt(&sname).await?);
    }
    if let Some(b) = blocked.first() {
        let known = old
            .conditions
            .iter()
            .any(|c| c.reason == "ScaleDownBlocked" && c.message == *b);
        if !known {
            event(ctx, &target.cluster, true, "ScaleDownBlocked", b.clone()).await;
        }
    }
    let md_live = sts_api.get_opt(&names::metadata(&name)).await?;
    let upgrade = upgrade::step(
        ctx,
        &c,
        &mut target,
        upgrade::Observed {
            pools: &live_sets,
            metadata: md_live.as_ref(),
            master: ms.as_ref(),
        },
        &rec,
        &policy,
        &mut dstate,
    )
    .await?;
    ctx.drivers.lock().insert(key, dstate);
    if let Some((reason, note)) = &upgrade.event {
        event(ctx, &target.cluster, false, reason, note.clone()).await;
    }

    // 6. Status.
    st.active_master = target
        .cluster
        .status
        .as_ref()
        .and_then(|s| s.active_master.clone())
        .or(st.active_master);
    if let Some(s) = target.cluster.status.as_ref() {
        st.epoch = s.epoch.max(st.epoch);
        st.promotion = s.promotion.clone();
        st.initialized = s.initialized || st.initialized;
    }
    st.metadata = crate::crd::RoleStatus {
        ready: md_live
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        desired: c.spec.metadata_replicas(),
    };
    let ready_cs: i32 = pool_status.iter().map(|p| p.ready).sum();
    st.chunkservers_ready = Some(format!("{ready_cs}/{remaining}"));
    st.pools = pool_status;
    if let Some(m) = &ms {
        let (total, used) = status::settle_bytes(
            (old.capacity_bytes, old.used_bytes),
            (m.total_bytes, m.used_bytes),
        );
        st.capacity_bytes = total;
        st.used_bytes = used;
        st.capacity = Some(status::human(total));
        st.used = Some(status::human(used));
        st.chunks = m.chunk_counts.map(|k| crate::crd::ChunkCounts {
            missing: k.missing,
            under_goal: k.under_goal,
            at_goal: k.at_goal,
            over_goal: k.over_goal,
        });
    }
    let pods_problem = status::pod_problems(&target.pods);
    st.conditions = status::conditions(&status::Inputs {
        old: &old.conditions,
        generation: gen,
        outcome: &outcome,
        master: ms.as_ref(),
        blocked: &blocked,
        upgrading: upgrade.progress.as_deref(),
        draining: st.pools.iter().any(|p| !p.draining.is_empty()),
        notes: &notes,
        pods_problem: pods_problem.as_deref(),
        metaloggers: c.spec.metaloggers.replicas,
    });
    let cur = target.cluster.clone();
    write_status(ctx, &cur, st).await?;
    let busy = !matches!(outcome, Outcome::Healthy(_))
        || upgrade.progress.is_some()
        || !blocked.is_empty();
    Ok(Action::requeue(if busy { BUSY_POLL } else { ctx.poll }))
}

/// Deletion with `cleanupPolicy: Delete`: the StatefulSets are removed,
/// then the cluster's PersistentVolumeClaims; Ok only once no
/// PersistentVolume bound to them is left (the finalizer is released then).
/// With `Retain` (the default) there is no finalizer: everything owned is
/// garbage-collected and the claims are kept.
async fn cleanup(c: &AlcesCluster, ctx: &Context) -> Result<(), Error> {
    let ns = c.namespace().unwrap_or_default();
    let name = c.name_any();
    let applier = Applier::new(ctx.client.clone(), &ns, ctx.metrics.clone());
    let mut sets = vec![names::metadata(&name)];
    sets.extend(
        c.spec
            .chunkservers
            .pools
            .iter()
            .map(|p| names::pool(&name, &p.name)),
    );
    for s in &sets {
        applier.delete(&kinds::statefulset(), s).await?;
    }
    let sel = format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=alces");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if !pods
        .list(&ListParams::default().labels(&sel))
        .await?
        .items
        .is_empty()
    {
        return Err(Error::Other(
            "waiting for the cluster's pods to end before deleting its disks".into(),
        ));
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claims = pvcs.list(&ListParams::default().labels(&sel)).await?.items;
    for pvc in &claims {
        ctx.metrics.api_writes.inc();
        let _ = pvcs.delete(&pvc.name_any(), &Default::default()).await;
    }
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let left = pvs
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .is_some_and(|r| {
                    r.namespace.as_deref() == Some(ns.as_str())
                        && claims.iter().any(|c| Some(c.name_any()) == r.name)
                })
        })
        .count();
    if left > 0 {
        return Err(Error::Other(format!(
            "{left} PersistentVolume(s) of the cluster still exist; waiting"
        )));
    }
    tracing::info!(cluster = %name, claims = claims.len(), "deleted with its disks (cleanupPolicy Delete)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::TriggerBackoff;
    use kube::runtime::utils::Backoff;
    use std::time::Duration;

    #[test]
    fn trigger_backoff_doubles_to_its_cap_and_resets() {
        let mut b = TriggerBackoff::default();
        let first: Vec<u64> = (&mut b).take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(first, [200, 400, 800, 1600, 3000, 3000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(200)));
    }
}
