//! The failover driver's [`Target`] on Kubernetes: pods from the API, their
//! daemons over gRPC, the record in the AlcesCluster status (written with a
//! resourceVersion precondition), traffic by the master Service's selector.

use std::sync::Arc;

use alces_proto::pb;
use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::ResourceExt;

use crate::builders::{self, names, MASTER_PORT, METALOGGER_PORT};
use crate::crd::AlcesCluster;
use crate::crd::Promotion;
use crate::dataplane::DataPlane;
use crate::failover::decide::{kind, PodView, Record, Role};
use crate::failover::driver::{Observation, RecordError, Target};

use super::apply::{kinds, Applier};

/// How the operator reaches a pod's port. In production, the pod's DNS name
/// through its headless Service; tests that run the daemons as local
/// processes give a map instead.
pub trait Resolver: Send + Sync {
    /// `host:port` of `port` on metadata pod `pod` of cluster `cluster` in `ns`.
    fn metadata_pod(&self, ns: &str, cluster: &str, pod: &str, port: u16) -> String;
}

/// Pod DNS names: `<pod>.<cluster>-metadata.<ns>.svc:<port>`.
pub struct PodDns;

impl Resolver for PodDns {
    fn metadata_pod(&self, ns: &str, cluster: &str, pod: &str, port: u16) -> String {
        format!("{pod}.{}.{ns}.svc:{port}", names::metadata(cluster))
    }
}

/// Fixed addresses by (pod, port), for tests running the daemons locally.
pub struct FixedAddresses(pub std::collections::HashMap<(String, u16), String>);

impl Resolver for FixedAddresses {
    fn metadata_pod(&self, _ns: &str, _cluster: &str, pod: &str, port: u16) -> String {
        self.0
            .get(&(pod.to_string(), port))
            .cloned()
            .unwrap_or_else(|| format!("{pod}.invalid:{port}"))
    }
}

/// Whether a pod is Ready and not being deleted.
pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The driver's view of one cluster on Kubernetes.
pub struct KubeTarget {
    /// The cluster as last read or written (its resourceVersion is the
    /// precondition of the next record).
    pub cluster: AlcesCluster,
    /// Writes.
    pub applier: Applier,
    /// gRPC to the daemons.
    pub dp: DataPlane,
    /// Addresses of pods.
    pub resolver: Arc<dyn Resolver>,
    /// Metadata pods as listed at the last observation.
    pub pods: Vec<Pod>,
    /// The master's Admin.Status at the last observation, if it answered.
    pub master_status: Option<pb::ClusterStatus>,
    /// The master answered as a healthy master at the last observation.
    pub master_ok: bool,
    api: Api<AlcesCluster>,
    pod_api: Api<Pod>,
    ns: String,
    name: String,
}

impl KubeTarget {
    /// A target for `cluster`.
    pub fn new(
        client: kube::Client,
        cluster: AlcesCluster,
        applier: Applier,
        dp: DataPlane,
        resolver: Arc<dyn Resolver>,
    ) -> Self {
        let ns = cluster.namespace().unwrap_or_default();
        let name = cluster.name_any();
        Self {
            api: Api::namespaced(client.clone(), &ns),
            pod_api: Api::namespaced(client, &ns),
            cluster,
            applier,
            dp,
            resolver,
            pods: Vec::new(),
            master_status: None,
            master_ok: false,
            ns,
            name,
        }
    }

    /// `host:port` of `port` on metadata pod `pod`.
    pub fn addr(&self, pod: &str, port: u16) -> String {
        self.resolver.metadata_pod(&self.ns, &self.name, pod, port)
    }

    /// The record as the status holds it.
    pub fn record_of(c: &AlcesCluster) -> Record {
        let s = c.status.clone().unwrap_or_default();
        Record {
            active: s.active_master,
            epoch: s.epoch,
            initialized: s.initialized,
            promotion: s.promotion,
        }
    }
}

impl Target for KubeTarget {
    async fn observe(&mut self, rec: &Record) -> Observation {
        let sel = builders::selector(&self.cluster, builders::METADATA)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        self.pods = match self.pod_api.list(&ListParams::default().labels(&sel)).await {
            Ok(l) => l.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the metadata pods");
                Vec::new()
            }
        };
        let sts = names::metadata(&self.name);
        let want = self.cluster.spec.metadata_replicas();
        let mut names_: Vec<(String, i32)> = (0..want).map(|i| (names::pod(&sts, i), i)).collect();
        for p in &self.pods {
            let n = p.name_any();
            if let Some(o) = builders::ordinal(&n) {
                if !names_.iter().any(|(m, _)| *m == n) {
                    names_.push((n, o));
                }
            }
        }
        let dp = self.dp.clone();
        let views = join_all(names_.iter().map(|(n, o)| {
            let addr = self.addr(n, METALOGGER_PORT);
            let dp = dp.clone();
            let (n, o) = (n.clone(), *o);
            async move {
                match dp.metalogger_status(&addr).await {
                    Ok(i) => PodView {
                        name: n,
                        ordinal: o,
                        reachable: true,
                        role: Role::parse(&i.role),
                        durable_version: i.durable_version,
                        seen_epoch: i.seen_epoch,
                        holds_metadata: i.holds_metadata,
                    },
                    Err(e) => {
                        tracing::debug!(pod = %n, error = %e, "metadata pod does not answer");
                        PodView::unreachable(&n, o)
                    }
                }
            }
        }))
        .await;
        self.master_status = None;
        self.master_ok = false;
        let mut degraded = false;
        if let Some(active) = rec.active.as_deref() {
            let pod_gone = !self
                .pods
                .iter()
                .any(|p| p.name_any() == active && p.metadata.deletion_timestamp.is_none());
            match self.dp.master_status(&self.addr(active, MASTER_PORT)).await {
                Ok(s) => {
                    let fenced = s.conditions.iter().any(|c| c.starts_with("Fenced"));
                    degraded = s
                        .conditions
                        .iter()
                        .any(|c| c.starts_with("SyncMetaloggersDegraded"));
                    self.master_ok =
                        !pod_gone && s.role == "master" && !fenced && s.epoch >= rec.epoch;
                    self.master_status = Some(s);
                }
                Err(e) => tracing::debug!(pod = %active, error = %e, "master does not answer"),
            }
        }
        Observation {
            pods: views,
            master_ok: self.master_ok,
            master_degraded: degraded,
        }
    }

    async fn record(&mut self, new: &Record) -> Result<(), RecordError> {
        let mut c = self.cluster.clone();
        let mut st = c.status.clone().unwrap_or_default();
        st.active_master = new.active.clone();
        st.epoch = new.epoch;
        st.initialized = new.initialized;
        st.promotion = new.promotion.clone();
        c.status = Some(st);
        c.metadata.managed_fields = None;
        self.applier_writes();
        match self
            .api
            .replace_status(&self.name, &PostParams::default(), &c)
            .await
        {
            Ok(written) => {
                self.cluster = written;
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Err(RecordError::Conflict),
            Err(e) => Err(RecordError::Other(e.to_string())),
        }
    }

    async fn promote(&mut self, p: &Promotion, force: bool) -> Result<(), String> {
        let req = pb::PromoteRequest {
            switchover: p.kind == kind::SWITCHOVER && self.master_ok,
            force,
            epoch: p.epoch,
            bootstrap: p.kind == kind::BOOTSTRAP,
        };
        self.dp
            .promote(&self.addr(&p.pod, METALOGGER_PORT), req)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn route(&mut self, pod: &str) -> Result<(), String> {
        self.applier
            .apply(
                &kinds::service(),
                builders::master_service(&self.cluster, Some(pod)),
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl KubeTarget {
    fn applier_writes(&self) {
        self.applier.count_write();
    }
}
