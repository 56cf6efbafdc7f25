//! The `AlcesCluster` custom resource (group `alces.io`, version `v1alpha1`):
//! its spec (what the user asks for) and its status (what the operator found
//! and decided). The CRD YAML in `crds/` is generated from these types by
//! `cargo run -p alces-operator --bin crdgen`.
//!
//! Validation lives in the schema where it fits (ranges, enums, required
//! fields, CEL rules for cross-field constraints and immutable fields); what a
//! schema cannot say is checked by [`crate::validate`] and reported as a
//! `Degraded` condition naming the field.

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the custom resource.
pub const GROUP: &str = "alces.io";
/// API version of the custom resource.
pub const VERSION: &str = "v1alpha1";

fn default_goal() -> u32 {
    2
}
fn default_metaloggers() -> i32 {
    2
}
fn default_true() -> bool {
    true
}
/// Default of `spec.failover.detectionGraceSeconds`: how long the master
/// must stay unhealthy (every check failing) before a metalogger is promoted.
pub const DEFAULT_DETECTION_GRACE_SECONDS: u32 = 1;

fn default_grace() -> u32 {
    DEFAULT_DETECTION_GRACE_SECONDS
}

/// Desired state of an Alces cluster: its metadata servers (one active master
/// and `metaloggers.replicas` warm standbys, any of which can become master),
/// its chunkserver pools, and how it is run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// kube's printcolumn(...) repeats `type_` per column.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "alces.io",
    version = "v1alpha1",
    kind = "AlcesCluster",
    namespaced,
    shortname = "alces",
    status = "AlcesClusterStatus",
    doc = "An Alces distributed POSIX filesystem: metadata servers, chunkserver pools and their failover, run by the Alces operator.",
    printcolumn(
        name = "Available",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Available\")].status"
    ),
    printcolumn(name = "Master", type_ = "string", json_path = ".status.activeMaster"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch"),
    printcolumn(
        name = "Chunkservers",
        type_ = "string",
        json_path = ".status.chunkserversReady"
    ),
    printcolumn(name = "Capacity", type_ = "string", json_path = ".status.capacity"),
    printcolumn(name = "Used", type_ = "string", json_path = ".status.used"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AlcesClusterSpec {
    /// Container image carrying every Alces binary (alces-metalogger,
    /// alces-chunkserver, ...). Changing it rolls the cluster: chunkservers one
    /// at a time, then metaloggers, then the master by switchover.
    #[x_kube(validation = Rule::new("self != ''").message("spec.image must name a container image"))]
    pub image: String,

    /// Pull policy of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Names of Secrets holding registry credentials for the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,

    /// Goal (copies per chunk, 1-9) of the root directory of a new filesystem.
    /// Used when the filesystem is created; change goals of a live filesystem
    /// with `alces goal set`.
    #[serde(default = "default_goal")]
    #[schemars(range(min = 1, max = 9))]
    pub default_goal: u32,

    /// Metaloggers that must hold a mutation durably before it is acknowledged.
    /// Default: 1 when there are metaloggers (no acknowledged mutation is lost
    /// by a failover), 0 without metaloggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub sync_metaloggers: Option<u32>,

    /// The metadata servers (the active master and the metaloggers share this
    /// pod template: any of them can become the master).
    #[serde(default)]
    pub master: MasterSpec,

    /// Warm standbys of the master.
    #[serde(default)]
    pub metaloggers: MetaloggerSpec,

    /// Where chunks are stored.
    pub chunkservers: ChunkserverSpec,

    /// The cluster secret (the admin credential every part uses). When not
    /// given, the operator generates one once into `<name>-secret` and never
    /// rotates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// TLS on every gRPC connection of the cluster (servers, chunkserver
    /// chains, the operator's calls). Unset: plaintext. Changing it rolls the
    /// pods (see `operator/ARCHITECTURE.md`, "TLS").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// When and how the operator replaces a failed master.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// What happens to chunk and metadata disks when the AlcesCluster is deleted.
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,

    /// A partial pod template (metadata and spec) merged into every pod the
    /// operator makes, for what the spec has no field for. Lists are replaced,
    /// objects merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::crd::free_object")]
    pub pod_overrides: Option<serde_json::Value>,

    /// Extra environment variables for every Alces container (appended last,
    /// so they win over the operator's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_overrides: Vec<EnvVar>,
}

/// Image pull policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when not present on the node.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// The metadata servers: resources, metadata disk, placement, master tuning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterSpec {
    /// CPU and memory of each metadata pod (the master holds the whole
    /// namespace in memory: size it for the number of files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// The metadata disk of each metadata pod (snapshots and changelogs).
    /// Default: a 10Gi PersistentVolumeClaim of the default storage class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.master.storage cannot change: the metadata disks hold the filesystem's metadata; create a new cluster and copy the data to move them"))]
    pub storage: Option<DiskSource>,

    /// Where metadata pods may run.
    #[serde(default)]
    pub placement: Placement,

    /// Tuning flags of the master (see `alces-master --help`).
    #[serde(default)]
    pub tuning: MasterTuning,
}

/// Flags that tune the master; unset fields keep the master's defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasterTuning {
    /// Chunk size of a new filesystem, e.g. `64MiB` (1MiB..64MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(KiB|MiB|k|K|M)?$"))]
    pub chunk_size: Option<String>,
    /// Client session lease in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub session_timeout_seconds: Option<u32>,
    /// Seconds after a chunkserver was last heard before its copies stop
    /// counting (the master shows it disconnected long before, after
    /// `chunkserverDisconnectMs`; this is the grace before it re-replicates
    /// its chunks elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub chunkserver_timeout_seconds: Option<u32>,
    /// Milliseconds without a heartbeat after which the master shows a
    /// chunkserver disconnected (no new chunks go to it; its copies still
    /// count until `chunkserverTimeoutSeconds`). Default 3000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2000, max = 600000))]
    pub chunkserver_disconnect_ms: Option<u32>,
    /// Seconds between background snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub snapshot_interval_seconds: Option<u32>,
    /// Replications started per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub replication_rate: Option<u32>,
    /// Replications one chunkserver receives at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub replications_per_server: Option<u32>,
    /// Rebalance when chunkserver usage differs by more than this many
    /// percentage points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub rebalance_threshold_percent: Option<u32>,
    /// Milliseconds a mutation waits for the sync metaloggers before the
    /// master degrades (loudly) to acknowledging after its own fsync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub sync_timeout_ms: Option<u32>,
}

/// Metaloggers: warm standbys of the master.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetaloggerSpec {
    /// Number of metaloggers (0-8). The metadata StatefulSet runs
    /// 1 + replicas pods.
    #[serde(default = "default_metaloggers")]
    #[schemars(range(min = 0, max = 8))]
    pub replicas: i32,
}

impl Default for MetaloggerSpec {
    fn default() -> Self {
        Self {
            replicas: default_metaloggers(),
        }
    }
}

/// Chunkservers, in one or more pools.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkserverSpec {
    /// The pools (each becomes a StatefulSet), keyed by name: the API server
    /// refuses two pools of the same name.
    #[schemars(length(min = 1, max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub pools: Vec<ChunkserverPool>,
}

/// A group of identical chunkservers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkserverPool {
    /// Name of the pool (a DNS label; part of its pods' names).
    #[schemars(
        length(min = 1, max = 20),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Number of chunkservers. Scaling down drains the highest ordinals first;
    /// going below the largest goal in use is refused.
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Disks of each chunkserver (one data directory each). The layout cannot
    /// change once created: a chunkserver's identity and data stay with its disks.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("the disk layout of a pool cannot change: a chunkserver's identity and chunks live on its disks; add a new pool and scale this one down instead"))]
    pub disks: Vec<Disk>,

    /// Failure domain passed to the master's label-aware placement (copies of
    /// a chunk go to distinct labels first), e.g. a zone or rack name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub failure_domain: Option<String>,

    /// CPU and memory of each chunkserver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Where this pool's pods may run.
    #[serde(default)]
    pub placement: Placement,
}

/// Node placement of pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Node labels the pods require.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Affinity rules (merged with the operator's own anti-affinity for
    /// hostPath disks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Topology spread constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
}

/// One disk of a chunkserver: a directory of the node, or a
/// PersistentVolumeClaim per pod (exactly one of the two).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.hostPath) != has(self.volumeClaim)").message("a disk is either hostPath or volumeClaim, exactly one of them"))]
pub struct Disk {
    /// Name of the disk (a DNS label, unique in its pool).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A directory on the node. Each pod gets its own subdirectory named
    /// after the pod, so two chunkservers on one node never share a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    pub host_path: Option<String>,
    /// A PersistentVolumeClaim per pod (volumeClaimTemplates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<VolumeClaim>,
}

impl Disk {
    /// Where its data lives.
    pub fn source(&self) -> DiskSource {
        DiskSource {
            host_path: self.host_path.clone(),
            volume_claim: self.volume_claim.clone(),
        }
    }
}

/// A disk: a directory of the node, or a PersistentVolumeClaim per pod.
/// Exactly one of the two is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.hostPath) != has(self.volumeClaim)").message("a disk is either hostPath or volumeClaim, exactly one of them"))]
pub struct DiskSource {
    /// A directory on the node. Each pod gets its own subdirectory named
    /// after the pod, so two chunkservers on one node never share a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    pub host_path: Option<String>,
    /// A PersistentVolumeClaim per pod (volumeClaimTemplates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<VolumeClaim>,
}

/// A PersistentVolumeClaim template.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaim {
    /// Requested size, e.g. `100Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// Storage class ("" for the cluster's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// A key of a Secret in the cluster's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the secret (default `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// TLS of a cluster: the certificate its servers present, the CA its peers
/// verify, and whether servers ask clients for a certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Secret in the cluster's namespace with `tls.crt` (the servers'
    /// certificate, with the "server auth" and, for mutual TLS, "client auth"
    /// usages), `tls.key` (its private key) and `ca.crt` (the CA bundle every
    /// peer is verified against): a cert-manager Certificate's Secret. Its
    /// certificate must name `<cluster>-master.<namespace>.svc`,
    /// `*.<cluster>-metadata.<namespace>.svc` and
    /// `*.<cluster>-chunkservers.<namespace>.svc`, or `serverName`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,
    /// Mutual TLS: servers refuse clients without a certificate signed by
    /// `ca.crt` (mounts, the CSI driver, the CLI and the operator need one).
    #[serde(default = "default_true")]
    pub client_auth: bool,
    /// Secret (`tls.crt`, `tls.key`) with the client certificate the operator
    /// presents to this cluster's servers; default: `secretName`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub client_secret_name: Option<String>,
    /// A name every server certificate carries, verified instead of the host
    /// part of each address (one shared name instead of the per-service ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$")
    )]
    pub server_name: Option<String>,
}

/// Failover settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Promote a metalogger when the master fails (off: a human runs `alces
    /// promote`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Seconds the master must stay unhealthy (pod not ready, or its gRPC
    /// status not answering) before a metalogger is promoted.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 1, max = 600))]
    pub detection_grace_seconds: u32,
    /// Promote the most advanced metalogger even when that may lose
    /// acknowledged mutations (metaloggers that hold them are unreachable).
    /// Only for disaster recovery.
    #[serde(default)]
    pub force: bool,
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            detection_grace_seconds: default_grace(),
            force: false,
        }
    }
}

/// What deletion of the AlcesCluster does to the disks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CleanupPolicy {
    /// Keep every PersistentVolumeClaim and host directory (the default).
    #[default]
    Retain,
    /// Delete the cluster's PersistentVolumeClaims too (host directories are
    /// never deleted by the operator).
    Delete,
}

/// What the operator observed and decided.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlcesClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Available`, `Progressing`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The pod serving as master (the master Service targets it only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_master: Option<String>,
    /// The master's epoch as decided by the operator (recorded before the
    /// promotion is made).
    #[serde(default)]
    pub epoch: u64,
    /// True once the filesystem was created (bootstrap done).
    #[serde(default)]
    pub initialized: bool,
    /// A promotion decided and recorded but not yet confirmed done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// Ready and desired metadata pods.
    #[serde(default)]
    pub metadata: RoleStatus,
    /// Per chunkserver pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolStatus>,
    /// "ready/desired" chunkservers over all pools (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunkservers_ready: Option<String>,
    /// Total chunkserver space, human-readable (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<String>,
    /// Used chunkserver space, human-readable (printer column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<String>,
    /// Total chunkserver space in bytes (updated when it or the used space
    /// moves by more than 1% of it, not at every write).
    #[serde(default)]
    pub capacity_bytes: u64,
    /// Used chunkserver space in bytes (within 1% of the capacity).
    #[serde(default)]
    pub used_bytes: u64,
    /// Chunks by valid copies against their goal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkCounts>,
    /// Name of the Secret holding the cluster secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Fingerprints of the disk layouts in use (metadata storage, each
    /// pool's disks): a change is refused, also where CEL rules do not run.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub disk_layouts: std::collections::BTreeMap<String, String>,
}

/// A promotion the operator decided (recorded here before it calls Promote).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The pod being promoted.
    pub pod: String,
    /// The epoch it must take.
    pub epoch: u64,
    /// `Bootstrap` (a new filesystem), `Failover` or `Switchover`.
    pub kind: String,
    /// The master it replaces, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// When it was decided (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<String>,
}

/// Ready and desired pods of a role.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoleStatus {
    /// Pods ready.
    pub ready: i32,
    /// Pods wanted.
    pub desired: i32,
}

/// A chunkserver pool's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    /// Pool name.
    pub name: String,
    /// Pods ready.
    pub ready: i32,
    /// Replicas asked for in the spec.
    pub desired: i32,
    /// Pods the StatefulSet currently keeps (higher than `desired` while
    /// a scale-down drains).
    pub current: i32,
    /// Pods being drained before removal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
}

/// Chunk counts by copies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChunkCounts {
    /// No valid copy.
    pub missing: u64,
    /// Fewer copies than the goal.
    pub under_goal: u64,
    /// At the goal.
    pub at_goal: u64,
    /// More copies than the goal.
    pub over_goal: u64,
}

/// A condition (Kubernetes API conventions).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Available`, `Progressing` or `Degraded`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// What is wrong and what to do.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// The generation this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Schema of a free-form object (kept as given, not pruned).
pub fn free_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

impl AlcesClusterSpec {
    /// Metaloggers that must hold a mutation (the default follows the number
    /// of metaloggers).
    pub fn effective_sync_metaloggers(&self) -> u32 {
        self.sync_metaloggers
            .unwrap_or(if self.metaloggers.replicas > 0 { 1 } else { 0 })
    }

    /// Pods of the metadata StatefulSet.
    pub fn metadata_replicas(&self) -> i32 {
        1 + self.metaloggers.replicas.max(0)
    }
}
