//! Pure builders of every object the operator makes for an `AlcesCluster`:
//! they take the cluster (and what the controller decided: the active
//! master, the replicas a pool keeps while it drains) and return manifests.
//! No I/O here, so each is covered by golden manifests.
//!
//! | object | name | what for |
//! |---|---|---|
//! | Secret | `<c>-secret` | the cluster secret, when `spec.secretRef` is not given (made once, never rotated) |
//! | ConfigMap | `<c>-metadata`, `<c>-chunkserver` | `ALCES_*` settings of each role |
//! | Service (headless) | `<c>-metadata`, `<c>-chunkservers` | stable pod DNS names |
//! | Service | `<c>-master` | clients and chunkservers reach the active master (and only it) here |
//! | StatefulSet | `<c>-metadata` | 1 + metaloggers pods, all started as metaloggers; the operator promotes one |
//! | StatefulSet | `<c>-cs-<pool>` | a pool's chunkservers, disks as volumeClaimTemplates or per-pod hostPath subdirectories |
//! | PodDisruptionBudget | `<c>-metadata`, `<c>-cs-<pool>` | one pod of a role at a time |

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde_json::{json, Value};

use crate::crd::{AlcesCluster, ChunkserverPool, DiskSource, GROUP, VERSION};

/// Port of the master's gRPC services (clients, chunkservers, admin).
pub const MASTER_PORT: u16 = 9421;
/// Port of a chunkserver's gRPC service.
pub const CHUNKSERVER_PORT: u16 = 9422;
/// Port of a metalogger's gRPC service (status, promote).
pub const METALOGGER_PORT: u16 = 9423;
/// HTTP port of the master (after promotion).
pub const MASTER_HTTP_PORT: u16 = 9431;
/// HTTP port of a chunkserver.
pub const CHUNKSERVER_HTTP_PORT: u16 = 9432;
/// HTTP port of a metalogger.
pub const METALOGGER_HTTP_PORT: u16 = 9433;
/// Key of the cluster secret in its Secret.
pub const SECRET_KEY: &str = "secret";
/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "alces-operator";
/// Annotation holding the hash of what the operator last applied.
pub const APPLIED_HASH: &str = "alces.io/applied-hash";
/// Pod template annotation holding the hash of the role's ConfigMap, so a
/// settings change rolls the pods.
pub const CONFIG_HASH: &str = "alces.io/config-hash";
/// Label of a chunkserver pool.
pub const POOL_LABEL: &str = "alces.io/pool";
/// The label StatefulSets put on their pods.
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// Where metadata pods keep their data.
pub const METADATA_DIR: &str = "/var/lib/alces/metadata";
/// Where the secret is mounted.
pub const SECRET_DIR: &str = "/etc/alces/secret";
/// Where the TLS Secret (`spec.tls.secretName`) is mounted.
pub const TLS_DIR: &str = "/etc/alces/tls";
/// Keys of a TLS Secret as cert-manager writes them: the certificate, its
/// private key and the CA bundle.
pub const TLS_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];
/// Pod template annotation of pods that run with TLS (`"on"`; absent:
/// plaintext). Plaintext and TLS pods cannot talk to each other, so a
/// change between the two replaces the pods together
/// (`controller::upgrade`).
pub const TLS_ANNOTATION: &str = "alces.io/tls";
/// Component label of metadata pods.
pub const METADATA: &str = "metadata";
/// Component label of chunkserver pods.
pub const CHUNKSERVER: &str = "chunkserver";
/// The image's non-root user and group (`image/build-oci`), which the daemons
/// run as unless a hostPath disk needs root.
pub const RUN_AS: i64 = 65532;
/// Name of the init container that gives hostPath disks to [`RUN_AS`].
pub const DATA_OWNER: &str = "data-owner";

/// Names of a cluster's objects.
pub mod names {
    /// The generated Secret.
    pub fn secret(c: &str) -> String {
        format!("{c}-secret")
    }
    /// Metadata StatefulSet, headless Service, ConfigMap and PDB.
    pub fn metadata(c: &str) -> String {
        format!("{c}-metadata")
    }
    /// The client-facing master Service.
    pub fn master(c: &str) -> String {
        format!("{c}-master")
    }
    /// Headless Service of every chunkserver.
    pub fn chunkservers(c: &str) -> String {
        format!("{c}-chunkservers")
    }
    /// ConfigMap of the chunkservers.
    pub fn chunkserver_config(c: &str) -> String {
        format!("{c}-chunkserver")
    }
    /// StatefulSet and PDB of a pool.
    pub fn pool(c: &str, pool: &str) -> String {
        format!("{c}-cs-{pool}")
    }
    /// Pod `ordinal` of StatefulSet `sts`.
    pub fn pod(sts: &str, ordinal: i32) -> String {
        format!("{sts}-{ordinal}")
    }
}

/// The ordinal of a StatefulSet pod from its name.
pub fn ordinal(pod: &str) -> Option<i32> {
    pod.rsplit_once('-').and_then(|(_, n)| n.parse().ok())
}

/// Recommended labels of a cluster's objects of `component`.
pub fn labels(c: &AlcesCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "alces".into()),
        ("app.kubernetes.io/instance".into(), c.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/part-of".into(), "alces".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
    ])
}

/// Labels selecting a role's pods (a subset of [`labels`], never changed).
pub fn selector(c: &AlcesCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "alces".into()),
        ("app.kubernetes.io/instance".into(), c.name_any()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

fn pool_selector(c: &AlcesCluster, pool: &str) -> BTreeMap<String, String> {
    let mut s = selector(c, CHUNKSERVER);
    s.insert(POOL_LABEL.into(), pool.into());
    s
}

fn owner(c: &AlcesCluster) -> Value {
    json!([{
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "AlcesCluster",
        "name": c.name_any(),
        "uid": c.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

fn meta(c: &AlcesCluster, name: &str, labels: BTreeMap<String, String>) -> Value {
    json!({
        "name": name,
        "namespace": c.namespace().unwrap_or_default(),
        "labels": labels,
        "ownerReferences": owner(c),
    })
}

/// FNV-1a 64 of `bytes`, hex: a stable fingerprint of what was applied.
pub fn hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The generated cluster Secret holding `secret`.
pub fn secret(c: &AlcesCluster, secret: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(c, &names::secret(&c.name_any()), labels(c, METADATA)),
        "type": "Opaque",
        "stringData": { SECRET_KEY: secret },
    })
}

/// The master's address as clients and chunkservers use it (the Service).
pub fn master_address(c: &AlcesCluster) -> String {
    format!(
        "{}.{}.svc:{MASTER_PORT}",
        names::master(&c.name_any()),
        c.namespace().unwrap_or_default()
    )
}

/// `ALCES_*` settings of the metadata pods.
pub fn metadata_env(c: &AlcesCluster) -> BTreeMap<String, String> {
    let s = &c.spec;
    let t = &s.master.tuning;
    let mut m = BTreeMap::from([
        ("ALCES_MASTER".into(), master_address(c)),
        ("ALCES_DEFAULT_GOAL".into(), s.default_goal.to_string()),
        (
            "ALCES_SYNC_METALOGGERS".into(),
            s.effective_sync_metaloggers().to_string(),
        ),
        ("ALCES_LOG_JSON".into(), "true".into()),
    ]);
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    opt("ALCES_CHUNK_SIZE", t.chunk_size.clone());
    opt(
        "ALCES_SESSION_TIMEOUT",
        t.session_timeout_seconds.map(|v| v.to_string()),
    );
    opt(
        "ALCES_CHUNKSERVER_TIMEOUT",
        t.chunkserver_timeout_seconds.map(|v| v.to_string()),
    );
    opt(
        "ALCES_CHUNKSERVER_DISCONNECT_MS",
        t.chunkserver_disconnect_ms.map(|v| v.to_string()),
    );
    opt(
        "ALCES_SNAPSHOT_INTERVAL",
        t.snapshot_interval_seconds.map(|v| v.to_string()),
    );
    opt(
        "ALCES_REPLICATION_RATE",
        t.replication_rate.map(|v| v.to_string()),
    );
    opt(
        "ALCES_REPLICATIONS_PER_SERVER",
        t.replications_per_server.map(|v| v.to_string()),
    );
    opt(
        "ALCES_REBALANCE_THRESHOLD",
        t.rebalance_threshold_percent.map(|v| v.to_string()),
    );
    opt(
        "ALCES_SYNC_TIMEOUT_MS",
        t.sync_timeout_ms.map(|v| v.to_string()),
    );
    m
}

/// `ALCES_*` settings of the chunkservers.
pub fn chunkserver_env(c: &AlcesCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("ALCES_MASTER".into(), master_address(c)),
        ("ALCES_LOG_JSON".into(), "true".into()),
    ])
}

/// A role's ConfigMap.
pub fn config_map(
    c: &AlcesCluster,
    name: &str,
    component: &str,
    data: &BTreeMap<String, String>,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(c, name, labels(c, component)),
        "data": data,
    })
}

/// A headless Service giving a role's pods stable DNS names (published before
/// they are ready: a metalogger must be reachable to be promoted).
pub fn headless_service(c: &AlcesCluster, name: &str, component: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(c, name, labels(c, component)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(c, component),
            "ports": [{ "name": "grpc", "port": port, "targetPort": port, "protocol": "TCP" }],
        },
    })
}

/// The client-facing master Service: selects the pod `active` only (none
/// while no master was chosen).
pub fn master_service(c: &AlcesCluster, active: Option<&str>) -> Value {
    let mut sel = selector(c, METADATA);
    // A label value no pod has while there is no master.
    sel.insert(POD_NAME_LABEL.into(), active.unwrap_or("none").into());
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(c, &names::master(&c.name_any()), labels(c, METADATA)),
        "spec": {
            "type": "ClusterIP",
            "selector": sel,
            "ports": [
                { "name": "grpc", "port": MASTER_PORT, "targetPort": MASTER_PORT, "protocol": "TCP" },
                { "name": "http", "port": MASTER_HTTP_PORT, "targetPort": MASTER_HTTP_PORT, "protocol": "TCP" },
            ],
        },
    })
}

/// The DNS names a cluster's server certificate must carry without
/// `spec.tls.serverName`: the master Service (clients, chunkservers and
/// metaloggers reach the master there), every metadata pod (the operator
/// calls each one; metaloggers advertise these names) and every chunkserver
/// (each registers, and is reached by clients and the write chain, at its
/// pod name in the headless Service).
pub fn tls_dns_names(c: &AlcesCluster) -> Vec<String> {
    let (cname, ns) = (c.name_any(), c.namespace().unwrap_or_default());
    vec![
        format!("{}.{ns}.svc", names::master(&cname)),
        format!("*.{}.{ns}.svc", names::metadata(&cname)),
        format!("*.{}.{ns}.svc", names::chunkservers(&cname)),
    ]
}

/// The `ALCES_TLS_*` variables of a daemon with `spec.tls` (none without).
fn tls_env(c: &AlcesCluster) -> Vec<Value> {
    let Some(t) = &c.spec.tls else {
        return Vec::new();
    };
    let mut env = vec![
        json!({ "name": "ALCES_TLS_CA", "value": format!("{TLS_DIR}/ca.crt") }),
        json!({ "name": "ALCES_TLS_CERT", "value": format!("{TLS_DIR}/tls.crt") }),
        json!({ "name": "ALCES_TLS_KEY", "value": format!("{TLS_DIR}/tls.key") }),
    ];
    if t.client_auth {
        env.push(json!({ "name": "ALCES_TLS_CLIENT_AUTH", "value": "true" }));
    }
    if let Some(n) = &t.server_name {
        env.push(json!({ "name": "ALCES_TLS_SERVER_NAME", "value": n }));
    }
    env
}

/// The TLS Secret's volume and mount (None without `spec.tls`). The whole
/// Secret is mounted as a directory, never by `subPath`: the kubelet then
/// swaps in a renewed certificate (`..data`) and the daemons load it at
/// their next handshake. The key is 0400 (0440 with the group `fsGroup`
/// gives it, the one group-readable mode the daemons accept for a key), the
/// certificates 0444.
fn tls_volume(c: &AlcesCluster) -> Option<(Value, Value)> {
    let t = c.spec.tls.as_ref()?;
    Some((
        json!({
            "name": "tls",
            "secret": {
                "secretName": t.secret_name,
                "defaultMode": 0o400,
                "items": [
                    { "key": "tls.crt", "path": "tls.crt", "mode": 0o444 },
                    { "key": "tls.key", "path": "tls.key", "mode": 0o400 },
                    { "key": "ca.crt", "path": "ca.crt", "mode": 0o444 },
                ],
            },
        }),
        json!({ "name": "tls", "mountPath": TLS_DIR, "readOnly": true }),
    ))
}

fn env_common(c: &AlcesCluster, config: &str) -> (Value, Value) {
    let mut env = vec![
        json!({ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }),
        json!({ "name": "ALCES_SECRET_FILE", "value": format!("{SECRET_DIR}/{SECRET_KEY}") }),
    ];
    env.extend(tls_env(c));
    for e in &c.spec.env_overrides {
        env.push(serde_json::to_value(e).unwrap_or(Value::Null));
    }
    (
        Value::Array(env),
        json!([{ "configMapRef": { "name": config } }]),
    )
}

fn secret_volume(c: &AlcesCluster) -> Value {
    let (name, key) = match &c.spec.secret_ref {
        Some(r) => (
            r.name.clone(),
            r.key.clone().unwrap_or_else(|| SECRET_KEY.into()),
        ),
        None => (names::secret(&c.name_any()), SECRET_KEY.into()),
    };
    json!({
        "name": "secret",
        "secret": { "secretName": name, "defaultMode": 0o400, "items": [{ "key": key, "path": SECRET_KEY }] },
    })
}

fn probe(path: &str, port: u16, period: i32, failures: i32) -> Value {
    json!({
        "httpGet": { "path": path, "port": port },
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    })
}

/// The pod's placement. Unless the spec's affinity has a `podAntiAffinity`
/// of its own, pods of a role (`spread`: the metadata pods, or every
/// chunkserver of the cluster) preferably go to different nodes: a master and
/// its metaloggers on one node, or two copies of a chunk on one node's
/// disks, would not survive that node.
fn placement(
    spec: &mut serde_json::Map<String, Value>,
    p: &crate::crd::Placement,
    spread: BTreeMap<String, String>,
) {
    if !p.node_selector.is_empty() {
        spec.insert("nodeSelector".into(), json!(p.node_selector));
    }
    let mut affinity = p
        .affinity
        .as_ref()
        .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    if affinity.get("podAntiAffinity").is_none() {
        affinity["podAntiAffinity"] = json!({
            "preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": { "matchLabels": spread },
                },
            }],
        });
    }
    spec.insert("affinity".into(), affinity);
    if !p.tolerations.is_empty() {
        spec.insert("tolerations".into(), json!(p.tolerations));
    }
    if !p.topology_spread_constraints.is_empty() {
        spec.insert(
            "topologySpreadConstraints".into(),
            json!(p.topology_spread_constraints),
        );
    }
}

/// The pod's security context. The daemons run as the image's non-root user,
/// with `fsGroup` so that volume claims and the secret (mode 0400, made 0440
/// and group-readable by the kubelet, a mode the daemons accept for their own
/// group: `alces_proto::auth::check_private_file`) are theirs. `fsGroup`
/// does not apply to hostPath disks: [`data_owner_init`] gives those to the
/// user before the daemon starts.
fn pod_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// The init container of a pod with hostPath disks: the kubelet creates a
/// hostPath directory (and the per-pod `subPathExpr` folder in it) owned by
/// root, so `alces chown-data` gives them (`mounts`, at `dirs`) to the
/// daemons' user. It is the pod's only root process, with CAP_CHOWN as its
/// only capability: it can change owners, not read or write other users'
/// files, and it exits before the daemon starts.
fn data_owner_init(c: &AlcesCluster, mounts: Vec<Value>, dirs: Vec<String>) -> Value {
    let mut command = vec![
        json!("alces"),
        json!("chown-data"),
        json!("--owner"),
        json!(format!("{RUN_AS}:{RUN_AS}")),
    ];
    command.extend(dirs.into_iter().map(Value::from));
    let mut container = json!({
        "name": DATA_OWNER,
        "command": command,
        "env": [
            { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
        ],
        "securityContext": {
            "runAsNonRoot": false,
            "runAsUser": 0,
            "runAsGroup": 0,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"], "add": ["CHOWN"] },
        },
        "volumeMounts": mounts,
    });
    image_fields(c, &mut container);
    container
}

/// A daemon container's security context: no capability, no privilege
/// escalation, a read-only root filesystem (the daemons write only to their
/// data directories).
fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// Merges `overlay` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn claim(name: &str, size: &str, class: Option<&str>) -> Value {
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": size } },
    });
    if let Some(cl) = class {
        spec["storageClassName"] = json!(cl);
    }
    json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": { "name": name }, "spec": spec })
}

/// The volume, mount and claim template of a disk mounted at `path`.
fn disk(vol: &str, src: &DiskSource, path: &str) -> (Option<Value>, Value, Option<Value>) {
    match (&src.host_path, &src.volume_claim) {
        (Some(h), _) => (
            Some(json!({ "name": vol, "hostPath": { "path": h, "type": "DirectoryOrCreate" } })),
            // Each pod gets its own subdirectory: two pods on one node never
            // share a chunk directory.
            json!({ "name": vol, "mountPath": path, "subPathExpr": "$(POD_NAME)" }),
            None,
        ),
        (None, Some(v)) => (
            None,
            json!({ "name": vol, "mountPath": path }),
            Some(claim(vol, &v.size, v.storage_class_name.as_deref())),
        ),
        (None, None) => (
            None,
            json!({ "name": vol, "mountPath": path }),
            Some(claim(vol, "10Gi", None)),
        ),
    }
}

fn image_fields(c: &AlcesCluster, container: &mut Value) {
    container["image"] = json!(c.spec.image);
    if let Some(p) = c.spec.image_pull_policy {
        container["imagePullPolicy"] = json!(p.as_str());
    }
}

/// What differs between the operator's StatefulSets (metadata, one per pool).
struct SetParts<'a> {
    /// The StatefulSet's name.
    name: &'a str,
    /// The headless Service that gives its pods stable names.
    service: &'a str,
    /// The selector (also the StatefulSet's own role labels).
    sel: BTreeMap<String, String>,
    /// The pod template's labels.
    pod_labels: BTreeMap<String, String>,
    replicas: i32,
    /// Hash of the role's ConfigMap, as a pod annotation (a change rolls pods).
    config_hash: &'a str,
    pod_spec: Value,
    /// Its volumeClaimTemplates.
    claims: Vec<Value>,
}

fn statefulset(c: &AlcesCluster, parts: SetParts<'_>) -> Value {
    let SetParts {
        name,
        service,
        sel,
        pod_labels,
        replicas,
        config_hash,
        mut pod_spec,
        claims,
    } = parts;
    if !c.spec.image_pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = json!(c
            .spec
            .image_pull_secrets
            .iter()
            .map(|n| json!({ "name": n }))
            .collect::<Vec<_>>());
    }
    let mut template = json!({
        "metadata": {
            "labels": pod_labels,
            "annotations": { CONFIG_HASH: config_hash },
        },
        "spec": pod_spec,
    });
    if c.spec.tls.is_some() {
        template["metadata"]["annotations"][TLS_ANNOTATION] = json!("on");
    }
    if let Some(o) = &c.spec.pod_overrides {
        merge(&mut template, o);
    }
    let mut spec = json!({
        "replicas": replicas,
        "serviceName": service,
        "podManagementPolicy": "Parallel",
        // The operator replaces pods itself, one at a time, in the order an
        // upgrade needs (chunkservers, metaloggers, then the master by
        // switchover).
        "updateStrategy": { "type": "OnDelete" },
        "selector": { "matchLabels": sel },
        "template": template,
    });
    if !claims.is_empty() {
        spec["volumeClaimTemplates"] = Value::Array(claims);
    }
    let mut labels_ = labels(c, sel.get("app.kubernetes.io/component").map_or("", |s| s));
    if let Some(p) = sel.get(POOL_LABEL) {
        labels_.insert(POOL_LABEL.into(), p.clone());
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": meta(c, name, labels_),
        "spec": spec,
    })
}

/// The metadata StatefulSet: 1 + metaloggers pods, each started as a
/// metalogger that can take the master's role (`--promote-listen`).
pub fn metadata_statefulset(c: &AlcesCluster, config_hash: &str) -> Value {
    let cname = c.name_any();
    let ns = c.namespace().unwrap_or_default();
    let _ = ns;
    let (env, env_from) = env_common(c, &names::metadata(&cname));
    let src = c.spec.master.storage.clone().unwrap_or(DiskSource {
        host_path: None,
        volume_claim: None,
    });
    let (vol, mount, claim) = disk("metadata", &src, METADATA_DIR);
    let mut container = json!({
        "name": METADATA,
        "command": ["alces-metalogger"],
        "args": [
            "--listen", format!("0.0.0.0:{METALOGGER_PORT}"),
            "--advertise", format!("$(POD_NAME).{}.$(POD_NAMESPACE).svc:{METALOGGER_PORT}", names::metadata(&cname)),
            "--http-listen", format!("0.0.0.0:{METALOGGER_HTTP_PORT}"),
            "--data-dir", METADATA_DIR,
            "--promote-listen", format!("0.0.0.0:{MASTER_PORT}"),
            "--promote-http-listen", format!("0.0.0.0:{MASTER_HTTP_PORT}"),
        ],
        "env": env,
        "envFrom": env_from,
        "ports": [
            { "name": "master", "containerPort": MASTER_PORT, "protocol": "TCP" },
            { "name": "metalogger", "containerPort": METALOGGER_PORT, "protocol": "TCP" },
            { "name": "master-http", "containerPort": MASTER_HTTP_PORT, "protocol": "TCP" },
            { "name": "http", "containerPort": METALOGGER_HTTP_PORT, "protocol": "TCP" },
        ],
        // alces-metalogger loads its metadata (snapshot and changelogs) before
        // it serves HTTP: minutes for a large filesystem. The liveness probe
        // starts only once /healthz answers, within an hour.
        "startupProbe": probe("/healthz", METALOGGER_HTTP_PORT, 5, 720),
        "livenessProbe": probe("/healthz", METALOGGER_HTTP_PORT, 10, 6),
        "readinessProbe": probe("/readyz", METALOGGER_HTTP_PORT, 2, 2),
        "securityContext": container_security(),
        "volumeMounts": [
            mount,
            { "name": "secret", "mountPath": SECRET_DIR, "readOnly": true },
        ],
    });
    let tls = tls_volume(c);
    if let Some((_, m)) = &tls {
        container["volumeMounts"]
            .as_array_mut()
            .expect("a list")
            .push(m.clone());
    }
    image_fields(c, &mut container);
    if let Some(r) = &c.spec.master.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let init = src
        .host_path
        .is_some()
        .then(|| data_owner_init(c, vec![mount.clone()], vec![METADATA_DIR.into()]));
    let mut volumes = vec![secret_volume(c)];
    volumes.extend(vol);
    volumes.extend(tls.map(|(v, _)| v));
    let mut pod = serde_json::Map::new();
    pod.insert("automountServiceAccountToken".into(), json!(false));
    pod.insert("securityContext".into(), pod_security());
    if let Some(i) = init {
        pod.insert("initContainers".into(), json!([i]));
    }
    // The master writes a final snapshot on SIGTERM.
    pod.insert("terminationGracePeriodSeconds".into(), json!(60));
    pod.insert("containers".into(), json!([container]));
    pod.insert("volumes".into(), Value::Array(volumes));
    placement(&mut pod, &c.spec.master.placement, selector(c, METADATA));
    let name = names::metadata(&cname);
    statefulset(
        c,
        SetParts {
            name: &name,
            service: &name,
            sel: selector(c, METADATA),
            pod_labels: labels(c, METADATA),
            replicas: c.spec.metadata_replicas(),
            config_hash,
            pod_spec: Value::Object(pod),
            claims: claim.into_iter().collect(),
        },
    )
}

/// A chunkserver pool's StatefulSet keeping `replicas` pods (more than the
/// spec asks while the highest ordinals drain).
pub fn pool_statefulset(
    c: &AlcesCluster,
    pool: &ChunkserverPool,
    replicas: i32,
    config_hash: &str,
) -> Value {
    let cname = c.name_any();
    let (env, env_from) = env_common(c, &names::chunkserver_config(&cname));
    let mut args = vec![
        json!("--listen"),
        json!(format!("0.0.0.0:{CHUNKSERVER_PORT}")),
        json!("--advertise"),
        json!(format!(
            "$(POD_NAME).{}.$(POD_NAMESPACE).svc:{CHUNKSERVER_PORT}",
            names::chunkservers(&cname)
        )),
        json!("--http-listen"),
        json!(format!("0.0.0.0:{CHUNKSERVER_HTTP_PORT}")),
    ];
    if let Some(fd) = &pool.failure_domain {
        args.push(json!("--label"));
        args.push(json!(fd));
    }
    let (mut volumes, mut mounts, mut claims) = (vec![secret_volume(c)], Vec::new(), Vec::new());
    let (mut host_mounts, mut host_dirs) = (Vec::new(), Vec::new());
    for d in &pool.disks {
        let path = format!("/data/{}", d.name);
        let (vol, mount, claim) = disk(&format!("disk-{}", d.name), &d.source(), &path);
        if d.source().host_path.is_some() {
            host_mounts.push(mount.clone());
            host_dirs.push(path.clone());
        }
        args.push(json!("--data-dir"));
        args.push(json!(path));
        volumes.extend(vol);
        mounts.push(mount);
        claims.extend(claim);
    }
    mounts.push(json!({ "name": "secret", "mountPath": SECRET_DIR, "readOnly": true }));
    if let Some((v, m)) = tls_volume(c) {
        volumes.push(v);
        mounts.push(m);
    }
    let mut container = json!({
        "name": CHUNKSERVER,
        "command": ["alces-chunkserver"],
        "args": args,
        "env": env,
        "envFrom": env_from,
        "ports": [
            { "name": "grpc", "containerPort": CHUNKSERVER_PORT, "protocol": "TCP" },
            { "name": "http", "containerPort": CHUNKSERVER_HTTP_PORT, "protocol": "TCP" },
        ],
        "livenessProbe": probe("/healthz", CHUNKSERVER_HTTP_PORT, 10, 6),
        "readinessProbe": probe("/readyz", CHUNKSERVER_HTTP_PORT, 5, 2),
        "securityContext": container_security(),
        "volumeMounts": mounts,
    });
    image_fields(c, &mut container);
    if let Some(r) = &pool.resources {
        container["resources"] = serde_json::to_value(r).unwrap_or(Value::Null);
    }
    let mut pod = serde_json::Map::new();
    pod.insert("automountServiceAccountToken".into(), json!(false));
    pod.insert("securityContext".into(), pod_security());
    if !host_dirs.is_empty() {
        pod.insert(
            "initContainers".into(),
            json!([data_owner_init(c, host_mounts, host_dirs)]),
        );
    }
    pod.insert("terminationGracePeriodSeconds".into(), json!(30));
    pod.insert("containers".into(), json!([container]));
    pod.insert("volumes".into(), Value::Array(volumes));
    placement(&mut pod, &pool.placement, selector(c, CHUNKSERVER));
    let mut pod_labels = labels(c, CHUNKSERVER);
    pod_labels.insert(POOL_LABEL.into(), pool.name.clone());
    statefulset(
        c,
        SetParts {
            name: &names::pool(&cname, &pool.name),
            service: &names::chunkservers(&cname),
            sel: pool_selector(c, &pool.name),
            pod_labels,
            replicas,
            config_hash,
            pod_spec: Value::Object(pod),
            claims,
        },
    )
}

/// A PodDisruptionBudget allowing one pod of `sel` down at a time, in API
/// version `api_version` (`policy/v1`, or `policy/v1beta1` on old servers).
pub fn pdb(
    c: &AlcesCluster,
    name: &str,
    component: &str,
    sel: BTreeMap<String, String>,
    api_version: &str,
) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": "PodDisruptionBudget",
        "metadata": meta(c, name, labels(c, component)),
        "spec": {
            "maxUnavailable": 1,
            "selector": { "matchLabels": sel },
        },
    })
}

/// The PDBs of a cluster.
pub fn pdbs(c: &AlcesCluster, api_version: &str) -> Vec<Value> {
    let cname = c.name_any();
    let mut v = vec![pdb(
        c,
        &names::metadata(&cname),
        METADATA,
        selector(c, METADATA),
        api_version,
    )];
    for p in &c.spec.chunkservers.pools {
        v.push(pdb(
            c,
            &names::pool(&cname, &p.name),
            CHUNKSERVER,
            pool_selector(c, &p.name),
            api_version,
        ));
    }
    v
}

/// Stamps `obj` with the hash of its content (what the controller compares
/// with the live object to skip a write that would change nothing).
pub fn stamp(mut obj: Value) -> (Value, String) {
    let h = hash(obj.to_string().as_bytes());
    obj["metadata"]["annotations"] = json!({ APPLIED_HASH: h });
    (obj, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AlcesClusterSpec;

    fn cluster(tls: &str) -> AlcesCluster {
        let spec: AlcesClusterSpec = serde_saphyr::from_str(&format!(
            "image: alces:1\nchunkservers:\n  pools:\n  - name: a\n    replicas: 3\n    disks: [{{name: d, hostPath: /x}}]\n{tls}"
        ))
        .expect("spec");
        let mut c = AlcesCluster::new("demo", spec);
        c.metadata.namespace = Some("store".into());
        c
    }

    /// The one container and the pod spec of a StatefulSet.
    fn parts(sts: &Value) -> (&Value, &Value) {
        let pod = &sts["spec"]["template"]["spec"];
        (&pod["containers"][0], pod)
    }

    fn env_of(container: &Value) -> BTreeMap<String, String> {
        container["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
            .collect()
    }

    fn all_sets(c: &AlcesCluster) -> Vec<Value> {
        vec![
            metadata_statefulset(c, "h"),
            pool_statefulset(c, &c.spec.chunkservers.pools[0], 3, "h"),
        ]
    }

    #[test]
    fn without_tls_nothing_of_it_is_built() {
        for sts in all_sets(&cluster("")) {
            let (ctr, pod) = parts(&sts);
            assert!(env_of(ctr).keys().all(|k| !k.starts_with("ALCES_TLS")));
            assert!(!pod["volumes"].to_string().contains("\"tls\""));
            // No annotation: clusters made before TLS existed do not roll.
            assert!(sts["spec"]["template"]["metadata"]["annotations"]
                .get(TLS_ANNOTATION)
                .is_none());
        }
    }

    #[test]
    fn tls_mounts_the_secret_with_modes_and_sets_the_variables() {
        let c = cluster("tls:\n  secretName: demo-tls\n  serverName: alces.example.org\n");
        for sts in all_sets(&c) {
            let (ctr, pod) = parts(&sts);
            let env = env_of(ctr);
            assert_eq!(env["ALCES_TLS_CA"], "/etc/alces/tls/ca.crt");
            assert_eq!(env["ALCES_TLS_CERT"], "/etc/alces/tls/tls.crt");
            assert_eq!(env["ALCES_TLS_KEY"], "/etc/alces/tls/tls.key");
            assert_eq!(env["ALCES_TLS_CLIENT_AUTH"], "true");
            assert_eq!(env["ALCES_TLS_SERVER_NAME"], "alces.example.org");
            let vol = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "tls")
                .expect("tls volume");
            assert_eq!(vol["secret"]["secretName"], "demo-tls");
            assert_eq!(vol["secret"]["defaultMode"], 0o400);
            let modes: BTreeMap<String, i64> = vol["secret"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["path"].as_str().unwrap().into(),
                        i["mode"].as_i64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                modes,
                BTreeMap::from([
                    ("ca.crt".into(), 0o444),
                    ("tls.crt".into(), 0o444),
                    ("tls.key".into(), 0o400),
                ])
            );
            // A directory mount (no subPath), so renewals reach the files.
            let mount = ctr["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "tls")
                .expect("tls mount");
            assert_eq!(mount["mountPath"], TLS_DIR);
            assert_eq!(mount["readOnly"], true);
            assert!(mount.get("subPath").is_none());
            // The group fsGroup gives the key is the daemons' own.
            assert_eq!(pod["securityContext"]["fsGroup"], RUN_AS);
            assert_eq!(pod["securityContext"]["runAsGroup"], RUN_AS);
            assert_eq!(
                sts["spec"]["template"]["metadata"]["annotations"][TLS_ANNOTATION],
                "on"
            );
            // The init container (hostPath disks) needs no certificate.
            assert!(!pod["initContainers"].to_string().contains("ALCES_TLS"));
        }
    }

    #[test]
    fn plain_tls_and_env_overrides_stack_in_that_order() {
        let c = cluster(
            "tls:\n  secretName: demo-tls\n  clientAuth: false\nenvOverrides:\n- name: ALCES_TLS_SERVER_NAME\n  value: x.example\n",
        );
        let sts = metadata_statefulset(&c, "h");
        let (ctr, _) = parts(&sts);
        let names: Vec<&str> = ctr["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert!(!names.contains(&"ALCES_TLS_CLIENT_AUTH"), "{names:?}");
        // The user's override comes last, so it wins.
        assert_eq!(names.last(), Some(&"ALCES_TLS_SERVER_NAME"));
    }

    #[test]
    fn the_names_a_certificate_needs() {
        assert_eq!(
            tls_dns_names(&cluster("")),
            [
                "demo-master.store.svc",
                "*.demo-metadata.store.svc",
                "*.demo-chunkservers.store.svc"
            ]
        );
        // They cover the addresses the pods advertise and the master address.
        let c = cluster("");
        assert!(master_address(&c).starts_with("demo-master.store.svc:"));
        let args = metadata_statefulset(&c, "h")["spec"]["template"]["spec"]["containers"][0]
            ["args"]
            .to_string();
        assert!(args.contains("$(POD_NAME).demo-metadata.$(POD_NAMESPACE).svc"));
        let args = pool_statefulset(&c, &c.spec.chunkservers.pools[0], 3, "h")["spec"]["template"]
            ["spec"]["containers"][0]["args"]
            .to_string();
        assert!(args.contains("$(POD_NAME).demo-chunkservers.$(POD_NAMESPACE).svc"));
    }
}
