//! Writes to the API server, counted: server-side apply under one field
//! manager, skipped when the live object already carries the hash of what
//! would be applied (so a steady-state reconcile writes nothing).

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::Value;

use crate::builders::{stamp, APPLIED_HASH, FIELD_MANAGER};
use crate::metrics::Metrics;

/// API resources the operator writes, by kind.
pub mod kinds {
    use kube::api::ApiResource;

    fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }
    /// v1 Secret.
    pub fn secret() -> ApiResource {
        ar("", "v1", "Secret", "secrets")
    }
    /// v1 ConfigMap.
    pub fn config_map() -> ApiResource {
        ar("", "v1", "ConfigMap", "configmaps")
    }
    /// v1 Service.
    pub fn service() -> ApiResource {
        ar("", "v1", "Service", "services")
    }
    /// apps/v1 StatefulSet.
    pub fn statefulset() -> ApiResource {
        ar("apps", "v1", "StatefulSet", "statefulsets")
    }
    /// PodDisruptionBudget in `version` of group `policy`.
    pub fn pdb(version: &str) -> ApiResource {
        ar(
            "policy",
            version,
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        )
    }
}

/// Writes objects of one namespace, counting every write.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    ns: String,
    metrics: Metrics,
}

impl Applier {
    /// Writes in `ns`.
    pub fn new(client: Client, ns: &str, metrics: Metrics) -> Self {
        Self {
            client,
            ns: ns.into(),
            metrics,
        }
    }

    /// Counts a write made elsewhere (status replacements, events).
    pub fn count_write(&self) {
        self.metrics.api_writes.inc();
    }

    fn api(&self, ar: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.ns, ar)
    }

    /// The live object, if any.
    pub async fn get(&self, ar: &ApiResource, name: &str) -> kube::Result<Option<DynamicObject>> {
        self.api(ar).get_opt(name).await
    }

    /// Applies `obj` unless the live object carries the same hash. Returns
    /// true when it wrote.
    pub async fn apply(&self, ar: &ApiResource, obj: Value) -> kube::Result<bool> {
        let (obj, h) = stamp(obj);
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(live) = self.get(ar, &name).await? {
            if live.annotations().get(APPLIED_HASH) == Some(&h) {
                return Ok(false);
            }
        }
        self.api(ar)
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await?;
        self.metrics.api_writes.inc();
        tracing::info!(kind = %ar.kind, %name, "applied");
        Ok(true)
    }

    /// Creates `obj` (used for what must never be overwritten: the secret).
    pub async fn create(&self, ar: &ApiResource, obj: Value) -> kube::Result<()> {
        let o: DynamicObject = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
        self.metrics.api_writes.inc();
        self.api(ar).create(&PostParams::default(), &o).await?;
        Ok(())
    }

    /// Deletes an object (absent is fine).
    pub async fn delete(&self, ar: &ApiResource, name: &str) -> kube::Result<()> {
        self.metrics.api_writes.inc();
        match self.api(ar).delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Which PodDisruptionBudget version the server serves: `policy/v1` on
/// current clusters, `policy/v1beta1` on old ones (1.20), or none.
pub async fn pdb_version(client: &Client) -> Option<&'static str> {
    for v in ["v1", "v1beta1"] {
        match client
            .list_api_group_resources(&format!("policy/{v}"))
            .await
        {
            Ok(l) if l.resources.iter().any(|r| r.name == "poddisruptionbudgets") => {
                return Some(if v == "v1" { "v1" } else { "v1beta1" });
            }
            _ => {}
        }
    }
    None
}
