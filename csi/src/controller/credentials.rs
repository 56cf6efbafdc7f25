//! Per-volume credentials: at CreateVolume the controller has the master issue
//! a credential scoped to the volume's directory and keeps its token in a
//! Kubernetes Secret named after the volume (`alces-vol-<name>`), which the
//! kubelet hands to NodeStageVolume (StorageClass
//! `csi.storage.k8s.io/node-stage-secret-name: alces-vol-${pv.name}`); at
//! DeleteVolume it revokes the credential and deletes the Secret.
//!
//! The master shows a token once, so the Secret is the only copy. Every step
//! is safe to repeat: a credential is found again by its name
//! ([`credential_name`]), a Secret by its name, and [`VolumeCredentials::ensure`]
//! ends with exactly one live credential whose token is in the Secret whatever
//! step an earlier attempt stopped after.

use std::collections::BTreeMap;
use std::sync::Arc;

use alces_client::Client;
use alces_proto::pb;
use tonic::Status;

use crate::errors::status;
use crate::ids::EntryId;

/// Key of the credential token in a volume's Secret (and in the `secrets`
/// of NodeStageVolume).
pub const CREDENTIAL_KEY: &str = "credential";
/// Key of the volume id in a volume's Secret: the node checks that the Secret
/// it is handed is the volume's.
pub const VOLUME_ID_KEY: &str = "volumeId";
/// Prefix of a volume's Secret name; the rest is the volume's name (the PV
/// name, which the external-provisioner templates as `${pv.name}`).
pub const SECRET_PREFIX: &str = "alces-vol-";
/// Annotation of a volume's Secret holding the volume id.
pub const VOLUME_ID_ANNOTATION: &str = "csi.alces.io/volume-id";
/// Annotation of a volume's Secret holding the credential's id on the master.
pub const CREDENTIAL_ID_ANNOTATION: &str = "csi.alces.io/credential-id";
/// Type of a volume's Secret.
pub const SECRET_TYPE: &str = "csi.alces.io/volume-credential";
/// Largest goal a volume's credential may set when its class names none.
pub const DEFAULT_MAX_GOAL: u32 = 3;

/// What a volume's Secret holds (its `Debug` never shows the token).
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeSecret {
    /// The Secret's name (`alces-vol-<volume name>`).
    pub name: String,
    /// The volume id it is for.
    pub volume_id: String,
    /// The credential's id on the master.
    pub credential_id: u64,
    /// The credential token.
    pub token: String,
}

impl std::fmt::Debug for VolumeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeSecret")
            .field("name", &self.name)
            .field("volume_id", &self.volume_id)
            .field("credential_id", &self.credential_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Where volume Secrets are kept: the Kubernetes API ([`KubeSecrets`]) or,
/// in tests, memory.
#[tonic::async_trait]
pub trait SecretStore: Send + Sync {
    /// Where the Secrets are (for messages), e.g. `namespace alces-system`.
    fn place(&self) -> String;
    /// The Secret `name`, `None` when there is none. A Secret that is not a
    /// volume Secret (no token) reads as one with an empty token.
    async fn get(&self, name: &str) -> Result<Option<VolumeSecret>, Status>;
    /// Creates the Secret or replaces what it holds.
    async fn put(&self, s: &VolumeSecret) -> Result<(), Status>;
    /// Deletes the Secret; deleting one that does not exist is OK.
    async fn delete(&self, name: &str) -> Result<(), Status>;
}

/// The name of the volume Secret of volume `name`, refused (INVALID_ARGUMENT)
/// when it is not a Kubernetes object name (lower case, digits, `-`, `.`; at
/// most 253 bytes; PV names always are).
pub fn secret_name(volume_name: &str) -> Result<String, Status> {
    let n = format!("{SECRET_PREFIX}{volume_name}");
    let ok = n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && n.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && !n.contains("..");
    if ok {
        Ok(n)
    } else {
        Err(Status::invalid_argument(format!(
            "volume name '{volume_name}' cannot name the Kubernetes Secret '{n}' that holds its credential: use lower-case letters, digits, '-' and '.' ending in a letter or digit (PersistentVolume names always are)"
        )))
    }
}

/// The name the master knows a volume's credential by.
pub fn credential_name(id: &EntryId) -> String {
    format!("csi-volume:{}", id.path())
}

/// Issues, finds and revokes volumes' credentials and keeps their Secrets.
#[derive(Clone)]
pub struct VolumeCredentials {
    store: Arc<dyn SecretStore>,
}

impl VolumeCredentials {
    /// Credentials kept in `store`.
    pub fn new(store: Arc<dyn SecretStore>) -> Self {
        Self { store }
    }

    /// The live credentials named for `id`.
    async fn live(&self, client: &Client, id: &EntryId) -> Result<Vec<pb::CredentialInfo>, Status> {
        let name = credential_name(id);
        let all = client
            .credential_list()
            .await
            .map_err(|e| status("listing the master's credentials", &e))?;
        Ok(all
            .into_iter()
            .filter(|c| !c.revoked && c.rule.as_ref().is_some_and(|r| r.name == name))
            .collect())
    }

    async fn revoke(&self, client: &Client, id: &EntryId, cid: u64) -> Result<(), Status> {
        client
            .credential_revoke(cid)
            .await
            .map_err(|e| status(&format!("revoking credential {cid} of volume {id}"), &e))?;
        tracing::info!(credential = cid, "volume credential revoked");
        Ok(())
    }

    /// Makes sure volume `id` has exactly one live credential (read-write,
    /// no admin calls, no squash, goals up to `max_goal`) and that its token
    /// is in the volume's Secret. A Secret whose token still names a live
    /// credential of the volume is kept; otherwise every live credential of
    /// the volume is revoked and a new one issued (the master shows a token
    /// only once, so one that was not stored is lost). A Secret that cannot
    /// be written revokes the credential just issued.
    pub async fn ensure(&self, client: &Client, id: &EntryId, max_goal: u32) -> Result<(), Status> {
        let sname = secret_name(&id.name)?;
        let vid = id.to_string();
        let live = self.live(client, id).await?;
        let path = client.fs_path(&id.path());
        if let Some(s) = self.store.get(&sname).await? {
            if !s.volume_id.is_empty() && s.volume_id != vid {
                return Err(Status::already_exists(format!(
                    "the Secret {sname} in {} holds the credential of volume {}, not of {vid}: delete that volume, or the Secret if it is stale",
                    self.store.place(),
                    s.volume_id
                )));
            }
            let in_secret = alces_proto::auth::parse_credential(&s.token).map(|(c, _)| c);
            let kept = in_secret.filter(|&c| {
                live.iter()
                    .any(|l| l.id == c && l.rule.as_ref().is_some_and(|r| r.path == path))
            });
            if let Some(keep) = kept {
                for c in live.iter().filter(|c| c.id != keep) {
                    self.revoke(client, id, c.id).await?;
                }
                return Ok(());
            }
            tracing::info!(secret = %sname, "the volume's Secret holds no live credential of the volume: issuing a new one");
        }
        for c in &live {
            self.revoke(client, id, c.id).await?;
        }
        let rule = pb::CredentialRule {
            path: path.clone(),
            read_only: false,
            squash: pb::Squash::None as i32,
            anon_uid: 0,
            anon_gid: 0,
            max_goal,
            admin: false,
            name: credential_name(id),
        };
        let issued = client
            .credential_issue(rule)
            .await
            .map_err(|e| status(&format!("issuing a credential for {path}"), &e))?;
        let cid = issued.info.as_ref().map_or(0, |i| i.id);
        let secret = VolumeSecret {
            name: sname.clone(),
            volume_id: vid,
            credential_id: cid,
            token: issued.token,
        };
        if let Err(e) = self.store.put(&secret).await {
            // Never a credential without its Secret: the token is lost anyway.
            if let Err(r) = client.credential_revoke(cid).await {
                tracing::warn!(credential = cid, error = %r, "revoking the credential whose Secret could not be written; the next CreateVolume or DeleteVolume revokes it");
            }
            return Err(e);
        }
        tracing::info!(credential = cid, secret = %sname, place = %self.store.place(), "volume credential issued and stored");
        Ok(())
    }

    /// Revokes every credential of volume `id` and deletes its Secret (a
    /// Secret naming another volume is left alone). Idempotent: a retry after
    /// any step finishes the job.
    pub async fn retire(&self, client: &Client, id: &EntryId) -> Result<(), Status> {
        let sname = secret_name(&id.name).ok();
        for c in self.live(client, id).await? {
            self.revoke(client, id, c.id).await?;
        }
        let Some(sname) = sname else { return Ok(()) };
        let vid = id.to_string();
        match self.store.get(&sname).await? {
            Some(s) if !s.volume_id.is_empty() && s.volume_id != vid => {
                tracing::warn!(secret = %sname, other = %s.volume_id, "the volume's Secret name holds another volume's credential; leaving it");
            }
            Some(_) => {
                self.store.delete(&sname).await?;
                tracing::info!(secret = %sname, "volume Secret deleted");
            }
            None => {}
        }
        Ok(())
    }
}

/// Volume Secrets in one namespace of a Kubernetes API server.
pub struct KubeSecrets {
    api: kube::Api<k8s_openapi::api::core::v1::Secret>,
    namespace: String,
}

impl KubeSecrets {
    /// Secrets in `namespace` through `client`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        Self {
            api: kube::Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn unavailable(&self, what: &str, name: &str, e: &kube::Error) -> Status {
        let hint = match e {
            kube::Error::Api(s) if s.code == 403 => {
                " (the controller's ServiceAccount needs get, create, patch and delete on secrets in this namespace: the chart's csi-controller-volume-secrets Role)"
            }
            kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound" => {
                " (does the namespace exist?)"
            }
            _ => "",
        };
        Status::unavailable(format!(
            "Kubernetes API: {what} Secret {}/{name}: {e}{hint}; the call is retried",
            self.namespace
        ))
    }
}

fn text(s: &k8s_openapi::api::core::v1::Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl SecretStore for KubeSecrets {
    fn place(&self) -> String {
        format!("namespace {}", self.namespace)
    }

    async fn get(&self, name: &str) -> Result<Option<VolumeSecret>, Status> {
        let got = self
            .api
            .get_opt(name)
            .await
            .map_err(|e| self.unavailable("reading", name, &e))?;
        Ok(got.map(|s| {
            let ann = s.metadata.annotations.clone().unwrap_or_default();
            VolumeSecret {
                name: name.to_string(),
                volume_id: ann
                    .get(VOLUME_ID_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| text(&s, VOLUME_ID_KEY)),
                credential_id: ann
                    .get(CREDENTIAL_ID_ANNOTATION)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                token: text(&s, CREDENTIAL_KEY),
            }
        }))
    }

    async fn put(&self, v: &VolumeSecret) -> Result<(), Status> {
        use k8s_openapi::api::core::v1::Secret;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        use k8s_openapi::ByteString;
        let labels = BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_string(),
                "alces-csi".to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                "volume-credential".to_string(),
            ),
        ]);
        let annotations = BTreeMap::from([
            (VOLUME_ID_ANNOTATION.to_string(), v.volume_id.clone()),
            (
                CREDENTIAL_ID_ANNOTATION.to_string(),
                v.credential_id.to_string(),
            ),
        ]);
        let data = BTreeMap::from([
            (
                CREDENTIAL_KEY.to_string(),
                ByteString(v.token.clone().into_bytes()),
            ),
            (
                VOLUME_ID_KEY.to_string(),
                ByteString(v.volume_id.clone().into_bytes()),
            ),
        ]);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(v.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                ..Default::default()
            },
            type_: Some(SECRET_TYPE.to_string()),
            data: Some(data),
            ..Default::default()
        };
        let mut value =
            serde_json::to_value(&secret).map_err(|e| Status::internal(e.to_string()))?;
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        let pp = kube::api::PatchParams::apply("alces-csi").force();
        match self
            .api
            .patch(&v.name, &pp, &kube::api::Patch::Apply(value))
            .await
        {
            Ok(_) => Ok(()),
            // A Secret of another type cannot change type in place.
            Err(kube::Error::Api(s)) if s.code == 422 => {
                self.delete(&v.name).await?;
                let pp = kube::api::PostParams::default();
                self.api
                    .create(&pp, &secret)
                    .await
                    .map(|_| ())
                    .map_err(|e| self.unavailable("creating", &v.name, &e))
            }
            Err(e) => Err(self.unavailable("writing", &v.name, &e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<(), Status> {
        match self
            .api
            .delete(name, &kube::api::DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.unavailable("deleting", name, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_names_follow_kubernetes_rules() {
        assert_eq!(
            secret_name("pvc-5f0c1d2e-aaaa-4bbb-8ccc-0123456789ab").unwrap(),
            "alces-vol-pvc-5f0c1d2e-aaaa-4bbb-8ccc-0123456789ab"
        );
        for bad in ["Upper", "a_b", "v-", "v.", "a..b", &"x".repeat(250)] {
            let e = secret_name(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains(bad), "{}", e.message());
        }
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let s = VolumeSecret {
            name: "alces-vol-v".into(),
            volume_id: "a1#h:1#/csi/volumes/v".into(),
            credential_id: 3,
            token: "alces-credential-3-deadbeef".into(),
        };
        let text = format!("{s:?}");
        assert!(!text.contains("deadbeef"), "{text}");
        assert!(text.contains("alces-vol-v"), "{text}");
    }

    #[test]
    fn credential_names_carry_the_volume_path() {
        let id = EntryId::parse(crate::ids::Kind::Volume, "a1#h:1#/csi/volumes/v1").unwrap();
        assert_eq!(credential_name(&id), "csi-volume:/csi/volumes/v1");
    }
}
