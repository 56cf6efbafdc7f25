//! The CSI Node service: one FUSE mount per volume per node at the staging
//! path, bind-mounted into each pod's target path.
//!
//! Each staged volume is served by its own `alces-mount` daemon, started in a
//! session of its own so that it outlives the node plugin: a SIGKILL or a
//! restart of the plugin leaves every mount working. Everything a restarted
//! plugin needs is on the node: the mount table and one record per staged
//! volume in the state directory (`<state-dir>/volumes/*.json`).

pub mod sys;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::controller::capabilities;
use crate::errors::invalid;
use crate::ids::{EntryId, Kind};
use crate::locks::OpLocks;
use crate::pb;
use crate::pb::node_server::Node;
use crate::server::rpc_span;

/// How long a new mount may take to appear.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `statvfs` of a mount may take before the mount counts as broken.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the node plugin.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (NodeGetInfo).
    pub node_id: String,
    /// The kubelet's directory: every staging and target path must be inside.
    pub kubelet_dir: PathBuf,
    /// Where records of staged volumes and mount logs are kept.
    pub state_dir: PathBuf,
    /// The `alces-mount` binary.
    pub mount_bin: PathBuf,
    /// Cluster secret used when a call carries none.
    pub default_secret: Option<Arc<str>>,
}

/// What the node keeps about a staged volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedRecord {
    /// The volume id.
    pub volume_id: String,
    /// Where it is mounted.
    pub staging_path: PathBuf,
    /// Whether the FUSE session is read-only.
    pub read_only: bool,
    /// Pid of the `alces-mount` daemon.
    pub pid: u32,
}

/// The Node service.
pub struct NodeService {
    config: NodeConfig,
    locks: OpLocks,
}

/// A stable file name for a volume id (64-bit FNV-1a, hex).
fn record_name(volume_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in volume_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}.json")
}

fn io_status(what: &str, e: &std::io::Error) -> Status {
    Status::internal(format!("{what}: {e}"))
}

fn volume_id(s: &str) -> Result<EntryId, Status> {
    if s.is_empty() {
        return Err(invalid("volume_id is required"));
    }
    EntryId::parse(Kind::Volume, s).map_err(|e| Status::not_found(format!("volume_id: {e}")))
}

impl NodeService {
    /// The Node service; creates the state directory.
    pub fn new(config: NodeConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(config.state_dir.join("volumes"))
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", config.state_dir.display()))?;
        Ok(Self {
            config,
            locks: OpLocks::default(),
        })
    }

    fn record_path(&self, volume_id: &str) -> PathBuf {
        self.config
            .state_dir
            .join("volumes")
            .join(record_name(volume_id))
    }

    fn log_path(&self, volume_id: &str) -> PathBuf {
        self.record_path(volume_id).with_extension("log")
    }

    /// The record of a staged volume, if any.
    pub fn record(&self, volume_id: &str) -> Option<StagedRecord> {
        let text = std::fs::read(self.record_path(volume_id)).ok()?;
        serde_json::from_slice::<StagedRecord>(&text)
            .ok()
            .filter(|r| r.volume_id == volume_id)
    }

    fn write_record(&self, r: &StagedRecord) -> Result<(), Status> {
        let p = self.record_path(&r.volume_id);
        let tmp = p.with_extension("tmp");
        let data = serde_json::to_vec_pretty(r).map_err(|e| Status::internal(e.to_string()))?;
        std::fs::write(&tmp, data)
            .and_then(|()| std::fs::rename(&tmp, &p))
            .map_err(|e| io_status(&format!("writing {}", p.display()), &e))
    }

    fn path(&self, what: &str, p: &str) -> Result<PathBuf, Status> {
        sys::check_node_path(&self.config.kubelet_dir, what, p).map_err(invalid)
    }

    /// Whether the Alces mount at `path` answers (`Err` says why not).
    async fn healthy(&self, path: &Path) -> Result<sys::Usage, String> {
        sys::usage(path, STATS_TIMEOUT)
            .await
            .map_err(|e| format!("the mount at {} is broken: {e}", path.display()))
    }

    async fn stage(&self, req: pb::NodeStageVolumeRequest) -> Result<(), Status> {
        let id = volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("volume_capability is required"))?;
        capabilities::check(cap).map_err(invalid)?;
        let read_only = capabilities::read_only(cap);
        let _g = self.locks.lock(&req.volume_id)?;
        if let Some(m) =
            sys::mount_at(&staging).map_err(|e| io_status("reading the mount table", &e))?
        {
            let ours = self
                .record(&req.volume_id)
                .filter(|r| r.staging_path == staging);
            if sys::is_alces(&m) && ours.is_some() {
                match self.healthy(&staging).await {
                    Ok(_) => return Ok(()),
                    Err(why) => {
                        tracing::warn!(%why, "staged mount is broken; mounting it again");
                        sys::unmount(&staging)
                            .map_err(|e| io_status("unmounting the broken mount", &e))?;
                    }
                }
            } else {
                return Err(Status::already_exists(format!(
                    "{} is already a mount point ({} from {}) not staged for this volume",
                    staging.display(),
                    m.fs_type,
                    m.source
                )));
            }
        }
        std::fs::create_dir_all(&staging)
            .map_err(|e| io_status(&format!("creating {}", staging.display()), &e))?;
        let secret: Arc<str> = match req.secrets.get(crate::clusters::SECRET_KEY) {
            Some(s) if !s.trim().is_empty() => Arc::from(s.trim()),
            _ => self.config.default_secret.clone().ok_or_else(|| {
                invalid("no cluster secret: reference a Secret with the key 'secret' in the StorageClass (csi.storage.k8s.io/node-stage-secret-name) or start the node plugin with --secret-file")
            })?,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(&req.volume_id))
            .map_err(|e| io_status("opening the mount log", &e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| io_status("opening the mount log", &e))?;
        let mut cmd = std::process::Command::new(&self.config.mount_bin);
        cmd.arg(&staging)
            .arg("--master")
            .arg(id.cluster.master_address())
            .arg("--subdir")
            .arg(id.path())
            .arg("--allow-other")
            .env_remove("ALCES_SECRET_FILE")
            .env(alces_proto::auth::SECRET_ENV, &*secret)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2);
        if read_only {
            cmd.arg("--read-only");
        }
        // A session of its own: the daemon outlives this plugin (and its
        // process group), so a restart of the plugin leaves the mount serving.
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            Status::failed_precondition(format!(
                "cannot start {}: {e}",
                self.config.mount_bin.display()
            ))
        })?;
        let pid = child.id();
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Ok(Some(m)) = sys::mount_at(&staging) {
                if sys::is_alces(&m) {
                    break;
                }
            }
            if let Ok(Some(st)) = child.try_wait() {
                let tail =
                    std::fs::read_to_string(self.log_path(&req.volume_id)).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(Status::unavailable(format!(
                    "the mount daemon for {} exited ({st}) before mounting: {}",
                    id,
                    tail.join(" | ")
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Status::deadline_exceeded(format!(
                    "{} was not mounted within {MOUNT_TIMEOUT:?}",
                    staging.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The daemon is reaped by init once it exits (its session is its own);
        // a thread reaps it while this plugin lives, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        self.write_record(&StagedRecord {
            volume_id: req.volume_id.clone(),
            staging_path: staging.clone(),
            read_only,
            pid,
        })?;
        tracing::info!(staging = %staging.display(), pid, read_only, "volume staged");
        Ok(())
    }

    async fn unstage(&self, req: pb::NodeUnstageVolumeRequest) -> Result<(), Status> {
        volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _g = self.locks.lock(&req.volume_id)?;
        let record = self.record(&req.volume_id);
        match sys::mount_at(&staging).map_err(|e| io_status("reading the mount table", &e))? {
            Some(m) if sys::is_alces(&m) => {
                sys::unmount(&staging)
                    .map_err(|e| io_status(&format!("unmounting {}", staging.display()), &e))?;
            }
            Some(m) => {
                return Err(Status::failed_precondition(format!(
                    "{} is a {} mount, not an Alces one; not unmounting it",
                    staging.display(),
                    m.fs_type
                )))
            }
            None => {}
        }
        if let Some(r) = record {
            // The daemon ends with its FUSE session; make sure it does.
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(r.pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if pid_alive(r.pid) && is_mount_daemon(r.pid) {
                // SAFETY: plain kill of a pid this node started for this volume.
                unsafe { libc::kill(r.pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir(&staging);
        let _ = std::fs::remove_file(self.record_path(&req.volume_id));
        tracing::info!(staging = %staging.display(), "volume unstaged");
        Ok(())
    }

    async fn publish(&self, req: pb::NodePublishVolumeRequest) -> Result<(), Status> {
        volume_id(&req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        if req.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(
                "staging_target_path is not set: NodeStageVolume must come first",
            ));
        }
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| invalid("volume_capability is required"))?;
        capabilities::check(cap).map_err(invalid)?;
        let mut flags: libc::c_ulong = 0;
        let mut read_only = req.readonly || capabilities::read_only(cap);
        if let Some(pb::volume_capability::AccessType::Mount(m)) = &cap.access_type {
            for f in &m.mount_flags {
                match f.as_str() {
                    "ro" => read_only = true,
                    "nosuid" => flags |= libc::MS_NOSUID,
                    "nodev" => flags |= libc::MS_NODEV,
                    "noexec" => flags |= libc::MS_NOEXEC,
                    "noatime" => flags |= libc::MS_NOATIME,
                    _ => {}
                }
            }
        }
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        let _g = self
            .locks
            .lock(&format!("{}|{}", req.volume_id, target.display()))?;
        let table = sys::mounts().map_err(|e| io_status("reading the mount table", &e))?;
        let staged = table
            .iter()
            .rev()
            .find(|m| m.mount_point == staging && sys::is_alces(m))
            .cloned()
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "volume {} is not staged at {}: call NodeStageVolume first",
                    req.volume_id,
                    staging.display()
                ))
            })?;
        if let Some(m) = table.iter().rev().find(|m| m.mount_point == target) {
            let same = m.dev == staged.dev;
            let was_ro = m.options.split(',').any(|o| o == "ro");
            if same && was_ro == read_only {
                return Ok(());
            }
            return Err(Status::already_exists(format!(
                "{} is already mounted ({}), differently from this request",
                target.display(),
                if same {
                    "read-only differs"
                } else {
                    "another filesystem"
                }
            )));
        }
        std::fs::create_dir_all(&target)
            .map_err(|e| io_status(&format!("creating {}", target.display()), &e))?;
        sys::bind(&staging, &target, flags).map_err(|e| {
            io_status(
                &format!(
                    "bind-mounting {} on {}",
                    staging.display(),
                    target.display()
                ),
                &e,
            )
        })?;
        tracing::info!(target = %target.display(), read_only, "volume published");
        Ok(())
    }

    async fn unpublish(&self, req: pb::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        volume_id(&req.volume_id)?;
        let target = self.path("target_path", &req.target_path)?;
        let _g = self
            .locks
            .lock(&format!("{}|{}", req.volume_id, target.display()))?;
        // Unmount every layer (a bind mount repeated by a crashed attempt too),
        // also when the mount is broken (ENOTCONN) or already gone.
        for _ in 0..8 {
            match sys::mount_at(&target).map_err(|e| io_status("reading the mount table", &e))? {
                Some(_) => {
                    sys::unmount(&target)
                        .map_err(|e| io_status(&format!("unmounting {}", target.display()), &e))?;
                }
                None => break,
            }
        }
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_status(&format!("removing {}", target.display()), &e)),
        }
        tracing::info!(target = %target.display(), "volume unpublished");
        Ok(())
    }

    async fn stats(
        &self,
        req: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        volume_id(&req.volume_id)?;
        let path = self.path("volume_path", &req.volume_path)?;
        let m = sys::mount_at(&path)
            .map_err(|e| io_status("reading the mount table", &e))?
            .filter(sys::is_alces)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "volume {} is not mounted at {}",
                    req.volume_id,
                    path.display()
                ))
            })?;
        let _ = m;
        match self.healthy(&path).await {
            Ok(u) => Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![
                    pb::VolumeUsage {
                        available: u.avail_bytes as i64,
                        total: u.total_bytes as i64,
                        used: u.used_bytes as i64,
                        unit: pb::volume_usage::Unit::Bytes as i32,
                    },
                    pb::VolumeUsage {
                        available: u.free_inodes as i64,
                        total: u.total_inodes as i64,
                        used: u.total_inodes.saturating_sub(u.free_inodes) as i64,
                        unit: pb::volume_usage::Unit::Inodes as i32,
                    },
                ],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: false,
                    message: "mounted and answering".into(),
                }),
            }),
            Err(why) => Ok(pb::NodeGetVolumeStatsResponse {
                usage: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: true,
                    message: why,
                }),
            }),
        }
    }
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
}

fn is_mount_daemon(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim() == "alces-mount")
        .unwrap_or(false)
}

fn rpc_cap(t: pb::node_service_capability::rpc::Type) -> pb::NodeServiceCapability {
    pb::NodeServiceCapability {
        r#type: Some(pb::node_service_capability::Type::Rpc(
            pb::node_service_capability::Rpc { r#type: t as i32 },
        )),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = rpc_span("NodeStageVolume", &req.volume_id);
        self.stage(req).instrument(span).await?;
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = rpc_span("NodeUnstageVolume", &req.volume_id);
        self.unstage(req).instrument(span).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = rpc_span("NodePublishVolume", &req.volume_id);
        self.publish(req).instrument(span).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = rpc_span("NodeUnpublishVolume", &req.volume_id);
        self.unpublish(req).instrument(span).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let span = rpc_span("NodeGetVolumeStats", &req.volume_id);
        Ok(Response::new(self.stats(req).instrument(span).await?))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no node expansion is needed: a volume's quota grows on the controller and every mount sees it at once",
        ))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        use pb::node_service_capability::rpc::Type as T;
        let capabilities = [
            T::StageUnstageVolume,
            T::GetVolumeStats,
            T::VolumeCondition,
            T::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(rpc_cap)
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_are_stable_and_safe() {
        let a = record_name("a1#h:1#/csi/volumes/v");
        assert_eq!(a, record_name("a1#h:1#/csi/volumes/v"));
        assert_ne!(a, record_name("a1#h:1#/csi/volumes/w"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '.' || c.is_ascii_alphabetic()));
        assert_eq!(
            volume_id("").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(volume_id("../x").unwrap_err().code(), tonic::Code::NotFound);
    }
}
