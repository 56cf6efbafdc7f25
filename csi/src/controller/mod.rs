//! The CSI Controller service: volumes as quota'd directories, snapshots and
//! clones as copy-on-write snapshots of them (`store` holds the filesystem
//! side, `capabilities` the checks of volume capabilities).

pub mod capabilities;
pub mod credentials;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;

use alces_client::QuotaLimits;
use tonic::{Request, Response, Status};

use crate::clusters::Clusters;
use crate::errors::{invalid, status};
use crate::ids::{shown, validate_name, ClusterRef, EntryId, Kind};
use crate::locks::OpLocks;
use crate::params::{self, parse_class, CapacityError, OnDelete, VolumeParams, MAX_CAPACITY};
use crate::pb;
use crate::pb::controller_server::Controller;
use store::{now_ns, Meta, SnapshotMeta, Store, VolumeMeta};

/// Prefix of the temporary name of an entry being removed.
const DELETING_PREFIX: &str = ".deleting-";
/// Entries of one ListVolumes/ListSnapshots page when the CO sets no limit.
const DEFAULT_PAGE: u32 = 1000;

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Capacity of a volume whose request gives none.
    pub default_capacity: u64,
    /// Root listed by ListVolumes/ListSnapshots without a filter (on the
    /// default cluster).
    pub list_root: String,
}

/// The Controller service.
pub struct ControllerService {
    clusters: Arc<Clusters>,
    locks: OpLocks,
    config: ControllerConfig,
    /// Per-volume credentials kept in Secrets, when enabled.
    credentials: Option<credentials::VolumeCredentials>,
}

fn source_string(src: &Source) -> String {
    match src {
        Source::Snapshot(id) => format!("snapshot:{id}"),
        Source::Volume(id) => format!("volume:{id}"),
    }
}

/// A volume's content source.
#[derive(Debug, Clone)]
enum Source {
    Snapshot(EntryId),
    Volume(EntryId),
}

impl Source {
    fn id(&self) -> &EntryId {
        match self {
            Self::Snapshot(i) | Self::Volume(i) => i,
        }
    }

    fn to_pb(&self) -> pb::VolumeContentSource {
        use pb::volume_content_source::{SnapshotSource, Type, VolumeSource};
        pb::VolumeContentSource {
            r#type: Some(match self {
                Self::Snapshot(i) => Type::Snapshot(SnapshotSource {
                    snapshot_id: i.to_string(),
                }),
                Self::Volume(i) => Type::Volume(VolumeSource {
                    volume_id: i.to_string(),
                }),
            }),
        }
    }
}

fn parse_source(src: Option<&pb::VolumeContentSource>) -> Result<Option<Source>, Status> {
    use pb::volume_content_source::Type;
    let Some(src) = src else { return Ok(None) };
    match &src.r#type {
        None => Err(invalid(
            "volume_content_source is set but names neither a snapshot nor a volume",
        )),
        Some(Type::Snapshot(s)) => {
            if s.snapshot_id.is_empty() {
                return Err(invalid(
                    "volume_content_source.snapshot.snapshot_id is empty",
                ));
            }
            EntryId::parse(Kind::Snapshot, &s.snapshot_id)
                .map(|i| Some(Source::Snapshot(i)))
                .map_err(|e| Status::not_found(format!("source snapshot: {e}")))
        }
        Some(Type::Volume(v)) => {
            if v.volume_id.is_empty() {
                return Err(invalid("volume_content_source.volume.volume_id is empty"));
            }
            EntryId::parse(Kind::Volume, &v.volume_id)
                .map(|i| Some(Source::Volume(i)))
                .map_err(|e| Status::not_found(format!("source volume: {e}")))
        }
    }
}

/// Parses a volume or snapshot id of a call that needs it to exist: empty is
/// INVALID_ARGUMENT, anything that is not an Alces id NOT_FOUND.
fn existing_id(kind: Kind, field: &str, s: &str) -> Result<EntryId, Status> {
    if s.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    EntryId::parse(kind, s).map_err(|e| Status::not_found(format!("{field}: {e}")))
}

fn ts(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

fn volume_context(p: &VolumeParams) -> HashMap<String, String> {
    let mut ctx = HashMap::new();
    if !p.labels.is_empty() {
        let l: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        ctx.insert("labels".into(), l.join(","));
    }
    ctx
}

fn page_size(max_entries: i32) -> Result<u32, Status> {
    match max_entries {
        n if n < 0 => Err(invalid(format!(
            "max_entries is {n}; it must not be negative"
        ))),
        0 => Ok(DEFAULT_PAGE),
        n => Ok(n as u32),
    }
}

fn check_token(token: &str) -> Result<(), Status> {
    if token.is_empty() {
        return Ok(());
    }
    validate_name("starting_token", token).map_err(|e| {
        Status::aborted(format!(
            "invalid starting_token: {e}; start again without one"
        ))
    })
}

impl ControllerService {
    /// A controller over `clusters`.
    pub fn new(clusters: Arc<Clusters>, config: ControllerConfig) -> Self {
        Self {
            clusters,
            locks: OpLocks::default(),
            config,
            credentials: None,
        }
    }

    /// The same, giving every volume a credential scoped to its directory
    /// whose token is kept in a Secret of `creds` (issue 18).
    pub fn with_volume_credentials(mut self, creds: credentials::VolumeCredentials) -> Self {
        self.credentials = Some(creds);
        self
    }

    /// Gives volume `id` its credential and Secret (see
    /// [`credentials::VolumeCredentials::ensure`]), when enabled.
    async fn ensure_credential(
        &self,
        store: &Store,
        id: &EntryId,
        p: &VolumeParams,
    ) -> Result<(), Status> {
        if let Some(c) = &self.credentials {
            let max_goal = p.goal.unwrap_or(credentials::DEFAULT_MAX_GOAL);
            c.ensure(store.client(), id, max_goal).await?;
        }
        Ok(())
    }

    async fn store(
        &self,
        cluster: &ClusterRef,
        secrets: &HashMap<String, String>,
    ) -> Result<Store, Status> {
        Ok(Store::new(self.clusters.client(cluster, secrets).await?))
    }

    /// The entry `id` with its metadata, or `None` when it does not exist (an
    /// entry without this driver's metadata counts as absent).
    async fn entry(&self, store: &Store, id: &EntryId) -> Result<Option<(u64, Meta)>, Status> {
        let found = store
            .find(&id.path())
            .await
            .map_err(|e| status(&format!("looking up {}", id.path()), &e))?;
        let Some(a) = found else { return Ok(None) };
        let meta = store
            .meta(a.inode)
            .await
            .map_err(|e| status(&format!("reading the metadata of {}", id.path()), &e))?;
        let ok = match (&meta, id.kind) {
            (Some(Meta::Volume(m)), Kind::Volume) => m.name == id.name,
            (Some(Meta::Snapshot(m)), Kind::Snapshot) => m.name == id.name,
            _ => false,
        };
        Ok(if ok { meta.map(|m| (a.inode, m)) } else { None })
    }

    async fn volume_meta(&self, store: &Store, id: &EntryId) -> Result<(u64, VolumeMeta), Status> {
        match self.entry(store, id).await? {
            Some((ino, Meta::Volume(m))) => Ok((ino, m)),
            _ => Err(Status::not_found(format!("volume {id} does not exist"))),
        }
    }

    async fn capacity_of(&self, store: &Store, id: &EntryId) -> Result<u64, Status> {
        match store.client().quota_get(&id.path()).await {
            Ok(q) => Ok(q.hard_bytes),
            Err(e) if e.errno() == libc::ENOENT => Ok(0),
            Err(e) => Err(status(&format!("reading the quota of {}", id.path()), &e)),
        }
    }

    async fn create_volume_inner(
        &self,
        req: pb::CreateVolumeRequest,
    ) -> Result<pb::Volume, Status> {
        if req.name.is_empty() {
            return Err(invalid("name is required"));
        }
        validate_name("volume name", &req.name).map_err(invalid)?;
        capabilities::check_all(&req.volume_capabilities).map_err(invalid)?;
        let cp = parse_class(&req.parameters, &req.mutable_parameters).map_err(invalid)?;
        let cluster = self.clusters.resolve(cp.cluster.as_ref())?;
        let id =
            EntryId::new(Kind::Volume, cluster.clone(), &cp.root, &req.name).map_err(invalid)?;
        if self.credentials.is_some() {
            credentials::secret_name(&req.name)?;
        }
        let range = req.capacity_range.unwrap_or_default();
        let cap = params::capacity(
            range.required_bytes,
            range.limit_bytes,
            self.config.default_capacity,
        )
        .map_err(|e| match e {
            CapacityError::Invalid(m) => invalid(m),
            CapacityError::OutOfRange(m) => Status::out_of_range(m),
        })?;
        let source = parse_source(req.volume_content_source.as_ref())?;
        if let Some(s) = &source {
            if s.id().cluster != cluster {
                return Err(invalid(format!(
                    "the content source {} is in cluster {}, the new volume would be in {}: copy-on-write works within one cluster",
                    s.id(),
                    s.id().cluster,
                    cluster
                )));
            }
        }
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&cluster, &req.secrets).await?;
        let folder = store
            .folder(&id.folder_path())
            .await
            .map_err(|e| status(&format!("creating {}", id.folder_path()), &e))?;
        let want = VolumeMeta {
            name: req.name.clone(),
            params: cp.volume.clone(),
            source: source.as_ref().map(source_string),
            created_ns: now_ns(),
        };
        // A repeated call: the same name with compatible parameters is the same volume.
        if let Some(existing) = store
            .find_in(folder.inode, &req.name)
            .await
            .map_err(|e| status(&format!("looking up {}", id.path()), &e))?
        {
            let meta = store
                .meta(existing.inode)
                .await
                .map_err(|e| status("reading volume metadata", &e))?;
            let Some(Meta::Volume(m)) = meta else {
                return Err(Status::already_exists(format!(
                    "{} exists but was not made by this driver; choose another name or root",
                    id.path()
                )));
            };
            let have = self.capacity_of(&store, &id).await?;
            if m.params != want.params || m.source != want.source {
                return Err(Status::already_exists(format!(
                    "volume {} already exists with other parameters or content source (it has {:?} from {:?}; asked {:?} from {:?})",
                    req.name, m.params, m.source, want.params, want.source
                )));
            }
            let fits = have >= range.required_bytes.max(0) as u64
                && (range.limit_bytes <= 0 || have <= range.limit_bytes as u64);
            if !fits {
                return Err(Status::already_exists(format!(
                    "volume {} already exists with {have} bytes, outside the requested capacity range",
                    req.name
                )));
            }
            // A retry after any step of an earlier attempt.
            self.ensure_credential(&store, &id, &m.params).await?;
            return Ok(pb::Volume {
                capacity_bytes: have as i64,
                volume_id: id.to_string(),
                volume_context: volume_context(&m.params),
                content_source: source.as_ref().map(Source::to_pb),
                accessible_topology: vec![],
            });
        }
        let tmp = id.staging_name();
        let tmp_path = format!("{}/{tmp}", id.folder_path());
        // Left over by an interrupted attempt: start again from nothing.
        store.client().trash_time_set(&tmp_path, 0).await.ok();
        store
            .remove_tree(folder.inode, &tmp)
            .await
            .map_err(|e| status(&format!("removing the leftover {tmp_path}"), &e))?;
        let built = match &source {
            None => store
                .mkdir(folder.inode, &tmp)
                .await
                .map_err(|e| status(&format!("creating {tmp_path}"), &e))?,
            Some(src) => {
                let sid = src.id();
                let size = match (src, self.entry(&store, sid).await?) {
                    (Source::Snapshot(_), Some((_, Meta::Snapshot(m)))) => m.size,
                    (Source::Volume(_), Some((_, Meta::Volume(_)))) => {
                        store
                            .client()
                            .du(&sid.path())
                            .await
                            .map_err(|e| status(&format!("measuring {}", sid.path()), &e))?
                            .bytes
                    }
                    (Source::Snapshot(_), _) => {
                        return Err(Status::not_found(format!(
                            "source snapshot {sid} does not exist"
                        )))
                    }
                    (Source::Volume(_), _) => {
                        return Err(Status::not_found(format!(
                            "source volume {sid} does not exist"
                        )))
                    }
                };
                if size > cap {
                    return Err(Status::out_of_range(format!(
                        "the source holds {size} bytes, more than the requested capacity of {cap} bytes"
                    )));
                }
                store
                    .client()
                    .snapshot(&sid.path(), &tmp_path)
                    .await
                    .map_err(|e| status(&format!("copying {} to {tmp_path}", sid.path()), &e))?;
                store
                    .find(&tmp_path)
                    .await
                    .map_err(|e| status(&format!("looking up {tmp_path}"), &e))?
                    .ok_or_else(|| {
                        Status::internal(format!("{tmp_path} vanished after the snapshot"))
                    })?
            }
        };
        store
            .set_meta(built.inode, &Meta::Volume(want.clone()))
            .await
            .map_err(|e| status("recording volume metadata", &e))?;
        store
            .client()
            .quota_set(
                &tmp_path,
                QuotaLimits {
                    hard_bytes: cap,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("setting the quota of {tmp_path}"), &e))?;
        self.apply_params(&store, &tmp_path, &cp.volume, source.is_some())
            .await?;
        store
            .rename(folder.inode, &tmp, &req.name)
            .await
            .map_err(|e| status(&format!("renaming {tmp_path} to {}", id.path()), &e))?;
        self.ensure_credential(&store, &id, &cp.volume).await?;
        tracing::info!(volume_id = %id, capacity = cap, source = ?want.source, "volume created");
        Ok(pb::Volume {
            capacity_bytes: cap as i64,
            volume_id: id.to_string(),
            volume_context: volume_context(&cp.volume),
            content_source: source.as_ref().map(Source::to_pb),
            accessible_topology: vec![],
        })
    }

    async fn apply_params(
        &self,
        store: &Store,
        path: &str,
        p: &VolumeParams,
        recursive: bool,
    ) -> Result<(), Status> {
        if let Some(g) = p.goal {
            store
                .client()
                .goal_set(path, g, recursive)
                .await
                .map_err(|e| status(&format!("setting goal {g} on {path}"), &e))?;
        }
        if let Some(t) = p.trash_secs {
            store
                .client()
                .trash_time_set(path, t)
                .await
                .map_err(|e| status(&format!("setting the trash time of {path}"), &e))?;
        }
        Ok(())
    }

    /// Removes entry `id` (volume or snapshot): it is first renamed out of the
    /// way (so a half-removed entry never looks alive), then its tree is
    /// removed; files go to the trash when `trash`, else are freed.
    async fn remove(&self, store: &Store, id: &EntryId, trash: bool) -> Result<(), Status> {
        let folder = match store
            .find(&id.folder_path())
            .await
            .map_err(|e| status(&format!("looking up {}", id.folder_path()), &e))?
        {
            Some(f) => f,
            None => return Ok(()),
        };
        let doomed = format!("{DELETING_PREFIX}{}", id.name);
        let doomed_path = format!("{}/{doomed}", id.folder_path());
        if self.entry(store, id).await?.is_some() {
            if !trash {
                store
                    .client()
                    .trash_time_set(&id.path(), 0)
                    .await
                    .map_err(|e| status(&format!("disabling the trash of {}", id.path()), &e))?;
            }
            store
                .rename(folder.inode, &id.name, &doomed)
                .await
                .map_err(|e| status(&format!("moving {} out of the way", id.path()), &e))?;
        }
        let n = store
            .remove_tree(folder.inode, &doomed)
            .await
            .map_err(|e| status(&format!("removing {doomed_path}"), &e))?;
        tracing::info!(id = %id, entries = n, trash, "removed");
        Ok(())
    }

    async fn snapshot_entry(
        &self,
        store: &Store,
        id: &EntryId,
    ) -> Result<Option<pb::Snapshot>, Status> {
        Ok(match self.entry(store, id).await? {
            Some((_, Meta::Snapshot(m))) => Some(snapshot_pb(id, &m)),
            _ => None,
        })
    }

    /// One page of the snapshots of `root` on `cluster`, optionally only those of `source`.
    async fn snapshot_page(
        &self,
        cluster: &ClusterRef,
        root: &str,
        secrets: &HashMap<String, String>,
        source: Option<&str>,
        token: &str,
        limit: u32,
    ) -> Result<pb::ListSnapshotsResponse, Status> {
        let store = self.store(cluster, secrets).await?;
        let folder = crate::ids::folder_path(root, Kind::Snapshot);
        let Some(f) = store
            .find(&folder)
            .await
            .map_err(|e| status(&format!("looking up {folder}"), &e))?
        else {
            return Ok(pb::ListSnapshotsResponse::default());
        };
        let mut entries = Vec::new();
        let mut cursor = token.to_string();
        let mut next = String::new();
        'pages: loop {
            let (names, eof) = store
                .list(f.inode, &cursor, limit)
                .await
                .map_err(|e| status(&format!("listing {folder}"), &e))?;
            for (name, ino) in &names {
                cursor = name.clone();
                let Ok(Some(Meta::Snapshot(m))) = store.meta(*ino).await else {
                    continue;
                };
                if m.name != *name || source.is_some_and(|s| s != m.source_volume) {
                    continue;
                }
                let Ok(id) = EntryId::new(Kind::Snapshot, cluster.clone(), root, name) else {
                    continue;
                };
                entries.push(pb::list_snapshots_response::Entry {
                    snapshot: Some(snapshot_pb(&id, &m)),
                });
                if entries.len() as u32 >= limit {
                    next = name.clone();
                    break 'pages;
                }
            }
            if eof || names.is_empty() {
                break;
            }
        }
        Ok(pb::ListSnapshotsResponse {
            entries,
            next_token: next,
        })
    }
}

fn snapshot_pb(id: &EntryId, m: &SnapshotMeta) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: m.size.min(i64::MAX as u64) as i64,
        snapshot_id: id.to_string(),
        source_volume_id: m.source_volume.clone(),
        creation_time: Some(ts(m.created_ns)),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    }
}

fn check_snapshot_params(params: &HashMap<String, String>) -> Result<(), Status> {
    for k in params.keys() {
        if !k.starts_with("csi.storage.k8s.io/") {
            return Err(invalid(format!(
                "unknown snapshot parameter {}; Alces snapshots take no parameters",
                shown(k)
            )));
        }
    }
    Ok(())
}

fn rpc_cap(t: pb::controller_service_capability::rpc::Type) -> pb::ControllerServiceCapability {
    pb::ControllerServiceCapability {
        r#type: Some(pb::controller_service_capability::Type::Rpc(
            pb::controller_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Controller for ControllerService {
    #[tracing::instrument(name = "csi", skip_all, fields(name = %shown(&request.get_ref().name)))]
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let v = self.create_volume_inner(request.into_inner()).await?;
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(v) }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().volume_id)))]
    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.volume_id.is_empty() {
            return Err(invalid("volume_id is required"));
        }
        let id = match EntryId::parse(Kind::Volume, &req.volume_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(volume_id = %shown(&req.volume_id), error = %e, "DeleteVolume of an id that cannot name an Alces volume: nothing to delete");
                return Ok(Response::new(pb::DeleteVolumeResponse {}));
            }
        };
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        let found = store
            .find(&id.path())
            .await
            .map_err(|e| status("looking up the volume", &e))?;
        let on_delete = match (found, self.entry(&store, &id).await?) {
            (_, Some((_, Meta::Volume(m)))) => m.params.on_delete,
            (Some(_), _) => {
                return Err(Status::failed_precondition(format!(
                    "{} exists but was not made by this driver; not deleting it",
                    id.path()
                )))
            }
            // Gone, or a removal that was interrupted: finish it (the trash
            // time was settled before the volume was moved out of the way).
            (None, _) => OnDelete::Trash,
        };
        // Mounts lose the volume first; a retry after a crash finishes it.
        if let Some(c) = &self.credentials {
            c.retire(store.client(), &id).await?;
        }
        self.remove(&store, &id, on_delete == OnDelete::Trash)
            .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _request: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "Alces volumes need no attach: ControllerPublishVolume is not offered",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _request: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "Alces volumes need no attach: ControllerUnpublishVolume is not offered",
        ))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().volume_id)))]
    async fn validate_volume_capabilities(
        &self,
        request: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let id = existing_id(Kind::Volume, "volume_id", &req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(invalid("volume_capabilities is required"));
        }
        let store = self.store(&id.cluster, &req.secrets).await?;
        self.volume_meta(&store, &id).await?;
        let reply = match capabilities::check_all(&req.volume_capabilities) {
            Ok(()) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            },
            Err(m) => pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: m,
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size(req.max_entries)?;
        check_token(&req.starting_token)?;
        let Some(cluster) = self.clusters.default_cluster().cloned() else {
            return Ok(Response::new(pb::ListVolumesResponse::default()));
        };
        let store = self.store(&cluster, &HashMap::new()).await?;
        let root = self.config.list_root.clone();
        let folder = crate::ids::folder_path(&root, Kind::Volume);
        let Some(f) = store
            .find(&folder)
            .await
            .map_err(|e| status(&format!("looking up {folder}"), &e))?
        else {
            return Ok(Response::new(pb::ListVolumesResponse::default()));
        };
        let mut entries = Vec::new();
        let mut cursor = req.starting_token.clone();
        let mut next = String::new();
        'pages: loop {
            let (names, eof) = store
                .list(f.inode, &cursor, limit)
                .await
                .map_err(|e| status(&format!("listing {folder}"), &e))?;
            for (name, ino) in &names {
                cursor = name.clone();
                let Ok(Some(Meta::Volume(m))) = store.meta(*ino).await else {
                    continue;
                };
                let Ok(id) = EntryId::new(Kind::Volume, cluster.clone(), &root, name) else {
                    continue;
                };
                if m.name != *name {
                    continue;
                }
                let cap = self.capacity_of(&store, &id).await.unwrap_or(0);
                entries.push(pb::list_volumes_response::Entry {
                    volume: Some(pb::Volume {
                        capacity_bytes: cap as i64,
                        volume_id: id.to_string(),
                        volume_context: volume_context(&m.params),
                        content_source: None,
                        accessible_topology: vec![],
                    }),
                    status: None,
                });
                if entries.len() as u32 >= limit {
                    next = name.clone();
                    break 'pages;
                }
            }
            if eof || names.is_empty() {
                break;
            }
        }
        Ok(Response::new(pb::ListVolumesResponse {
            entries,
            next_token: next,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        if !req.volume_capabilities.is_empty() {
            if let Err(m) = capabilities::check_all(&req.volume_capabilities) {
                // Nothing can be provisioned with these capabilities.
                tracing::debug!(reason = %m, "GetCapacity for unsupported capabilities");
                return Ok(Response::new(pb::GetCapacityResponse {
                    available_capacity: 0,
                    maximum_volume_size: None,
                    minimum_volume_size: None,
                }));
            }
        }
        let cp = parse_class(&req.parameters, &HashMap::new()).map_err(invalid)?;
        let cluster = self.clusters.resolve(cp.cluster.as_ref())?;
        let store = self.store(&cluster, &HashMap::new()).await?;
        let client = store.client();
        let at = match store
            .find(&cp.root)
            .await
            .map_err(|e| status(&format!("looking up {}", cp.root), &e))?
        {
            Some(a) => a.inode,
            None => client.root(),
        };
        let st = client
            .statfs_at(at)
            .await
            .map_err(|e| status("reading the filesystem's free space", &e))?;
        let avail = st.avail_bytes.min(i64::MAX as u64) as i64;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: avail,
            maximum_volume_size: Some(MAX_CAPACITY as i64),
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use pb::controller_service_capability::rpc::Type as T;
        let capabilities = [
            T::CreateDeleteVolume,
            T::CreateDeleteSnapshot,
            T::ListSnapshots,
            T::CloneVolume,
            T::ExpandVolume,
            T::ListVolumes,
            T::GetCapacity,
            T::GetVolume,
            T::GetSnapshot,
            T::SingleNodeMultiWriter,
            T::ModifyVolume,
        ]
        .into_iter()
        .map(rpc_cap)
        .collect();
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().source_volume_id), snapshot = %shown(&request.get_ref().name)))]
    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(invalid("name is required"));
        }
        validate_name("snapshot name", &req.name).map_err(invalid)?;
        if req.source_volume_id.is_empty() {
            return Err(invalid("source_volume_id is required"));
        }
        check_snapshot_params(&req.parameters)?;
        let src = EntryId::parse(Kind::Volume, &req.source_volume_id)
            .map_err(|e| Status::not_found(format!("source_volume_id: {e}")))?;
        let id = EntryId::new(Kind::Snapshot, src.cluster.clone(), &src.root, &req.name)
            .map_err(invalid)?;
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        let folder = store
            .folder(&id.folder_path())
            .await
            .map_err(|e| status(&format!("creating {}", id.folder_path()), &e))?;
        if let Some(existing) = store
            .find_in(folder.inode, &req.name)
            .await
            .map_err(|e| status("looking up the snapshot", &e))?
        {
            return match store
                .meta(existing.inode)
                .await
                .map_err(|e| status("reading snapshot metadata", &e))?
            {
                Some(Meta::Snapshot(m)) if m.source_volume == src.to_string() => {
                    Ok(Response::new(pb::CreateSnapshotResponse {
                        snapshot: Some(snapshot_pb(&id, &m)),
                    }))
                }
                Some(Meta::Snapshot(m)) => Err(Status::already_exists(format!(
                    "snapshot {} already exists, of volume {}",
                    req.name, m.source_volume
                ))),
                _ => Err(Status::already_exists(format!(
                    "{} exists but was not made by this driver",
                    id.path()
                ))),
            };
        }
        self.volume_meta(&store, &src).await?;
        let tmp = id.staging_name();
        let tmp_path = format!("{}/{tmp}", id.folder_path());
        store.client().trash_time_set(&tmp_path, 0).await.ok();
        store
            .remove_tree(folder.inode, &tmp)
            .await
            .map_err(|e| status(&format!("removing the leftover {tmp_path}"), &e))?;
        let reply = store
            .client()
            .snapshot(&src.path(), &tmp_path)
            .await
            .map_err(|e| status(&format!("snapshotting {}", src.path()), &e))?;
        let meta = SnapshotMeta {
            name: req.name.clone(),
            source_volume: src.to_string(),
            created_ns: now_ns(),
            size: reply.bytes,
        };
        store
            .set_meta(reply.inode, &Meta::Snapshot(meta.clone()))
            .await
            .map_err(|e| status("recording snapshot metadata", &e))?;
        // A snapshot is never written; its files are freed at once when it is deleted.
        store
            .client()
            .trash_time_set(&tmp_path, 0)
            .await
            .map_err(|e| status("setting the snapshot's trash time", &e))?;
        store
            .rename(folder.inode, &tmp, &req.name)
            .await
            .map_err(|e| status(&format!("renaming {tmp_path} to {}", id.path()), &e))?;
        tracing::info!(snapshot_id = %id, source = %src, bytes = reply.bytes, "snapshot created");
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot_pb(&id, &meta)),
        }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(snapshot_id = %shown(&request.get_ref().snapshot_id)))]
    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        if req.snapshot_id.is_empty() {
            return Err(invalid("snapshot_id is required"));
        }
        let id = match EntryId::parse(Kind::Snapshot, &req.snapshot_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::info!(snapshot_id = %shown(&req.snapshot_id), error = %e, "DeleteSnapshot of an id that cannot name an Alces snapshot: nothing to delete");
                return Ok(Response::new(pb::DeleteSnapshotResponse {}));
            }
        };
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        if store
            .find(&id.path())
            .await
            .map_err(|e| status("looking up the snapshot", &e))?
            .is_some()
            && self.entry(&store, &id).await?.is_none()
        {
            return Err(Status::failed_precondition(format!(
                "{} exists but was not made by this driver; not deleting it",
                id.path()
            )));
        }
        self.remove(&store, &id, false).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let limit = page_size(req.max_entries)?;
        check_token(&req.starting_token)?;
        if !req.snapshot_id.is_empty() {
            let Ok(id) = EntryId::parse(Kind::Snapshot, &req.snapshot_id) else {
                return Ok(Response::new(pb::ListSnapshotsResponse::default()));
            };
            let store = self.store(&id.cluster, &req.secrets).await?;
            let entries = self
                .snapshot_entry(&store, &id)
                .await?
                .filter(|s| {
                    req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id
                })
                .map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) })
                .into_iter()
                .collect();
            return Ok(Response::new(pb::ListSnapshotsResponse {
                entries,
                next_token: String::new(),
            }));
        }
        if !req.source_volume_id.is_empty() {
            let Ok(src) = EntryId::parse(Kind::Volume, &req.source_volume_id) else {
                return Ok(Response::new(pb::ListSnapshotsResponse::default()));
            };
            let page = self
                .snapshot_page(
                    &src.cluster,
                    &src.root,
                    &req.secrets,
                    Some(&req.source_volume_id),
                    &req.starting_token,
                    limit,
                )
                .await?;
            return Ok(Response::new(page));
        }
        let Some(cluster) = self.clusters.default_cluster().cloned() else {
            return Ok(Response::new(pb::ListSnapshotsResponse::default()));
        };
        let page = self
            .snapshot_page(
                &cluster,
                &self.config.list_root,
                &req.secrets,
                None,
                &req.starting_token,
                limit,
            )
            .await?;
        Ok(Response::new(page))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(snapshot_id = %shown(&request.get_ref().snapshot_id)))]
    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> Result<Response<pb::GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let id = existing_id(Kind::Snapshot, "snapshot_id", &req.snapshot_id)?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        let snapshot = self
            .snapshot_entry(&store, &id)
            .await?
            .ok_or_else(|| Status::not_found(format!("snapshot {id} does not exist")))?;
        Ok(Response::new(pb::GetSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().volume_id)))]
    async fn controller_expand_volume(
        &self,
        request: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = existing_id(Kind::Volume, "volume_id", &req.volume_id)?;
        let range = req
            .capacity_range
            .ok_or_else(|| invalid("capacity_range is required"))?;
        if range.required_bytes <= 0 && range.limit_bytes <= 0 {
            return Err(invalid(
                "capacity_range gives neither required_bytes nor limit_bytes",
            ));
        }
        if let Some(c) = &req.volume_capability {
            capabilities::check_all(std::slice::from_ref(c)).map_err(invalid)?;
        }
        let want =
            params::capacity(range.required_bytes, range.limit_bytes, 0).map_err(|e| match e {
                CapacityError::Invalid(m) => invalid(m),
                CapacityError::OutOfRange(m) => Status::out_of_range(m),
            })?;
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        self.volume_meta(&store, &id).await?;
        let have = self.capacity_of(&store, &id).await?;
        if want <= have && have != 0 {
            return Ok(Response::new(pb::ControllerExpandVolumeResponse {
                capacity_bytes: have as i64,
                node_expansion_required: false,
            }));
        }
        store
            .client()
            .quota_set(
                &id.path(),
                QuotaLimits {
                    hard_bytes: want,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| status(&format!("setting the quota of {}", id.path()), &e))?;
        tracing::info!(volume_id = %id, from = have, to = want, "volume expanded");
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: want as i64,
            node_expansion_required: false,
        }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().volume_id)))]
    async fn controller_get_volume(
        &self,
        request: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = existing_id(Kind::Volume, "volume_id", &req.volume_id)?;
        let store = self.store(&id.cluster, &HashMap::new()).await?;
        let (_, m) = self.volume_meta(&store, &id).await?;
        let cap = self.capacity_of(&store, &id).await?;
        let condition = if cap == 0 {
            pb::VolumeCondition {
                abnormal: true,
                message: format!("{} has no quota: its capacity is not enforced", id.path()),
            }
        } else {
            pb::VolumeCondition {
                abnormal: false,
                message: "volume directory and quota present".into(),
            }
        };
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: cap as i64,
                volume_id: id.to_string(),
                volume_context: volume_context(&m.params),
                content_source: None,
                accessible_topology: vec![],
            }),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(condition),
            }),
        }))
    }

    #[tracing::instrument(name = "csi", skip_all, fields(volume_id = %shown(&request.get_ref().volume_id)))]
    async fn controller_modify_volume(
        &self,
        request: Request<pb::ControllerModifyVolumeRequest>,
    ) -> Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        let req = request.into_inner();
        let id = existing_id(Kind::Volume, "volume_id", &req.volume_id)?;
        let mut changed = VolumeParams {
            goal: None,
            trash_secs: None,
            on_delete: OnDelete::Trash,
            labels: Default::default(),
        };
        params::apply_mutable(&mut changed, &req.mutable_parameters).map_err(invalid)?;
        let _g = self.locks.lock(&id.to_string())?;
        let store = self.store(&id.cluster, &req.secrets).await?;
        let (ino, mut m) = self.volume_meta(&store, &id).await?;
        self.apply_params(&store, &id.path(), &changed, true)
            .await?;
        if changed.goal.is_some() {
            m.params.goal = changed.goal;
        }
        if changed.trash_secs.is_some() {
            m.params.trash_secs = changed.trash_secs;
        }
        store
            .set_meta(ino, &Meta::Volume(m))
            .await
            .map_err(|e| status("recording volume metadata", &e))?;
        tracing::info!(volume_id = %id, goal = ?changed.goal, trash_secs = ?changed.trash_secs, "volume modified");
        Ok(Response::new(pb::ControllerModifyVolumeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_calls() {
        assert_eq!(
            existing_id(Kind::Volume, "volume_id", "")
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            existing_id(Kind::Volume, "volume_id", "x")
                .unwrap_err()
                .code(),
            tonic::Code::NotFound
        );
        assert_eq!(
            page_size(-1).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            check_token("../x").unwrap_err().code(),
            tonic::Code::Aborted
        );
        assert_eq!(ts(-1).seconds, -1);
        assert_eq!(ts(-1).nanos, 999_999_999);
    }
}
