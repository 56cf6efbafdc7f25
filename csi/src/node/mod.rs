//! The CSI Node service: one FUSE mount per volume per node at the staging
//! path, bind-mounted into each pod's target path.
//!
//! The plugin mounts each staged volume itself (`mount(2)` with `fd=N` on a
//! `/dev/fuse` descriptor it keeps, [`keeper`]) and runs one `alces-mount`
//! daemon per volume on that connection, in a session of its own so that it
//! outlives the plugin: a SIGKILL or a restart of the plugin leaves every mount
//! working, and a daemon that dies is replaced by one that takes over the same
//! kernel connection. Everything a restarted plugin needs is on the node: the
//! mount table, one record per staged volume in the state directory
//! (`<state-dir>/volumes/*.json`), and the running daemons, from which it takes
//! its copies of the descriptors back.

pub mod holder;
pub mod keeper;
pub mod sys;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::controller::capabilities;
use crate::errors::invalid;
use crate::ids::{EntryId, Kind};
use crate::locks::OpLocks;
use crate::metrics::CsiMetrics;
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
    /// TLS flags given to every volume's `alces-mount` (its `ALCES_TLS_*`
    /// environment, inherited from this process, works too).
    pub tls_flags: Vec<std::ffi::OsString>,
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
    /// Whether this plugin mounted the connection and keeps its descriptor
    /// (the daemon runs with `--fuse-fd`).
    #[serde(default)]
    pub kept: bool,
    /// Master address the daemon uses.
    #[serde(default)]
    pub master: String,
    /// The volume's directory.
    #[serde(default)]
    pub subdir: String,
    /// Device (major:minor) of the kept connection's mount: it changes when
    /// the volume is mounted again on a new connection.
    #[serde(default)]
    pub dev: String,
}

/// The kept connections of a node plugin, by volume id.
pub type Keepers = Arc<Mutex<HashMap<String, Arc<keeper::Kept>>>>;

/// Stops supervising every kept connection (the plugin is exiting; the
/// daemons go on serving, and the next plugin takes their descriptors back).
pub fn stop_supervising(keepers: &Keepers) {
    for k in keepers.lock().values() {
        k.stop();
    }
}

/// The Node service.
pub struct NodeService {
    config: NodeConfig,
    locks: OpLocks,
    /// Kept connections by volume id.
    kept: Keepers,
    metrics: Arc<OnceLock<CsiMetrics>>,
    /// Connections taken over at start from the holder (counted once the
    /// metrics exist).
    held_takeovers: std::sync::atomic::AtomicU64,
}

fn write_record_at(path: &Path, r: &StagedRecord) -> Result<(), Status> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(r).map_err(|e| Status::internal(e.to_string()))?;
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io_status(&format!("writing {}", path.display()), &e))
}

/// The credential token or cluster secret in the environment of process
/// `pid` (a running mount daemon's), so a restarted plugin never keeps
/// secrets on disk.
fn secret_of(pid: u32) -> Option<Arc<str>> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    [
        alces_proto::auth::CREDENTIAL_ENV,
        alces_proto::auth::SECRET_ENV,
    ]
    .iter()
    .find_map(|name| {
        let key = format!("{name}=");
        env.split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(key.as_bytes()))
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
            .map(Arc::from)
    })
}

/// Longest credential token accepted (the master's are about 90 bytes; the
/// token must fit the keeper's note in the state memfd).
const MAX_TOKEN_BYTES: usize = 1024;

/// What a volume's daemon presents to the master, from the node-stage
/// `secrets` of the call: the volume's credential (`credential`, from its
/// Secret `alces-vol-<name>`; the volume directory becomes the mount's root),
/// else the cluster secret (`secret`: volumes provisioned before per-volume
/// credentials), else the plugin's default secret.
pub fn stage_token(
    volume_id: &str,
    secrets: &HashMap<String, String>,
    default_secret: Option<&Arc<str>>,
) -> Result<Arc<str>, Status> {
    use crate::controller::credentials::{CREDENTIAL_KEY, SECRET_PREFIX, VOLUME_ID_KEY};
    let name = volume_id.rsplit('/').next().unwrap_or(volume_id);
    let secret_name = format!("{SECRET_PREFIX}{name}");
    if let Some(t) = secrets.get(CREDENTIAL_KEY) {
        let t = t.trim();
        if t.len() > MAX_TOKEN_BYTES
            || alces_proto::auth::parse_credential(t).is_none()
            || t.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(invalid(format!(
                "the node-stage Secret (StorageClass csi.storage.k8s.io/node-stage-secret-name, normally {secret_name}) has a key '{CREDENTIAL_KEY}' that is not a credential token (`alces-credential-<id>-<secret>`): delete the Secret and call CreateVolume again (the controller issues a new credential), or put the token `alces credential issue` printed there"
            )));
        }
        if let Some(v) = secrets.get(VOLUME_ID_KEY) {
            if v.trim() != volume_id {
                return Err(invalid(format!(
                    "the node-stage Secret holds the credential of volume {}, not of {volume_id}: the PersistentVolume names the wrong Secret (it should be {secret_name})",
                    v.trim()
                )));
            }
        }
        return Ok(Arc::from(t));
    }
    match secrets.get(crate::clusters::SECRET_KEY) {
        Some(s) if !s.trim().is_empty() => Ok(Arc::from(s.trim())),
        Some(_) => Err(invalid(format!(
            "the node-stage Secret's key '{}' is empty: fill it with the cluster secret, or give the volume its credential Secret {secret_name}",
            crate::clusters::SECRET_KEY
        ))),
        None => default_secret.cloned().ok_or_else(|| {
            invalid(format!(
                "NodeStageVolume carries no secrets: the volume's Secret {secret_name} (key '{CREDENTIAL_KEY}', made by the controller at CreateVolume) must be named by the StorageClass's csi.storage.k8s.io/node-stage-secret-name and -namespace, or start the node plugin with --secret-file"
            ))
        }),
    }
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
        let s = Self {
            config,
            locks: OpLocks::default(),
            kept: Arc::new(Mutex::new(HashMap::new())),
            metrics: Arc::new(OnceLock::new()),
            held_takeovers: Default::default(),
        };
        s.recover();
        Ok(s)
    }

    /// The kept connections (see [`stop_supervising`]).
    pub fn keepers(&self) -> Keepers {
        self.kept.clone()
    }

    /// Counts takeovers in `metrics` from now on.
    pub fn set_metrics(&self, metrics: CsiMetrics) {
        let held = self
            .held_takeovers
            .swap(0, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..held {
            metrics.takeover("held_connection");
        }
        let _ = self.metrics.set(metrics);
    }

    /// Takes back the descriptors of every volume staged by an earlier run of
    /// the plugin whose daemon still serves it, and supervises it again.
    fn recover(&self) {
        let Ok(dir) = std::fs::read_dir(self.config.state_dir.join("volumes")) else {
            return;
        };
        for e in dir.flatten() {
            if e.path().extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(r) = std::fs::read(e.path())
                .ok()
                .and_then(|t| serde_json::from_slice::<StagedRecord>(&t).ok())
            else {
                continue;
            };
            if !r.kept {
                continue;
            }
            let span = tracing::info_span!("recover", volume_id = %r.volume_id);
            let _in = span.enter();
            let mounted = sys::mount_at(&r.staging_path)
                .ok()
                .flatten()
                .is_some_and(|m| sys::is_alces(&m));
            if !mounted {
                tracing::warn!(
                    pid = r.pid,
                    "the volume is not mounted any more; the next NodeStageVolume mounts it again"
                );
                continue;
            }
            let daemon = pid_alive(r.pid) && keeper::is_daemon_of(r.pid, &r.staging_path);
            let got = if daemon {
                keeper::recover_fds(r.pid)
            } else {
                // The daemon died with (or while) the plugin was down: the
                // holder (`alces-csi hold`) kept the connection.
                self.fds_from_holder(&r)
            };
            let (fuse, state) = match got {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(pid = r.pid, daemon, error = %e, "cannot take the volume's descriptors back; the next NodeStageVolume mounts it again");
                    continue;
                }
            };
            let note = keeper::KeeperNote::read(&state).ok();
            let secret = note
                .as_ref()
                .map(|n| Arc::<str>::from(n.secret.as_str()))
                .or_else(|| secret_of(r.pid))
                .or_else(|| self.config.default_secret.clone());
            let Some(secret) = secret else {
                tracing::warn!(pid = r.pid, "no cluster secret for the volume's daemon");
                continue;
            };
            let spec = self.spec(&r, secret);
            let (pid, child) = if daemon {
                (r.pid, None)
            } else {
                match self.take_over_now(&r, &spec, &fuse, &state) {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(pid = r.pid, error = %e, "cannot start a mount daemon on the held connection; the next NodeStageVolume mounts it again");
                        continue;
                    }
                }
            };
            let r = StagedRecord { pid, ..r };
            let k = keeper::Kept::new(fuse, state, spec, pid, child);
            self.watch(&k, r.clone());
            self.kept.lock().insert(r.volume_id.clone(), k);
            tracing::info!(pid, "keeping the volume's connection again");
        }
    }

    /// Starts a daemon with `--takeover` on a connection whose daemon died
    /// while no plugin ran (its descriptors came from the holder), under the
    /// volume's lock, and records it. When another keeper started one
    /// meanwhile, that one is kept. Never waits on the dead daemon's pid,
    /// which the system may have given to another process since.
    fn take_over_now(
        &self,
        r: &StagedRecord,
        spec: &keeper::DaemonSpec,
        fuse: &std::os::fd::OwnedFd,
        state: &std::os::fd::OwnedFd,
    ) -> std::io::Result<(u32, Option<std::process::Child>)> {
        let path = self.record_path(&r.volume_id);
        let _lock = keeper::lock_file(&path.with_extension("lock"))?;
        if let Some(now) = self.record(&r.volume_id) {
            if now.pid != r.pid
                && pid_alive(now.pid)
                && keeper::is_daemon_of(now.pid, &now.staging_path)
            {
                tracing::info!(
                    pid = now.pid,
                    "another keeper started a daemon on the connection already"
                );
                return Ok((now.pid, None));
            }
        }
        let child = keeper::spawn(spec, fuse, state, true)?;
        let pid = child.id();
        let record = StagedRecord { pid, ..r.clone() };
        write_record_at(&path, &record)
            .map_err(|s| std::io::Error::other(s.message().to_string()))?;
        self.held_takeovers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(
            pid,
            dead = r.pid,
            "the daemon died while no plugin ran; a new one takes the held connection over"
        );
        Ok((pid, Some(child)))
    }

    /// The descriptors of `r`'s connection from the holder, when one holds
    /// them for the same mount.
    fn fds_from_holder(
        &self,
        r: &StagedRecord,
    ) -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
        let path = holder::held_path(&self.record_path(&r.volume_id));
        let text = std::fs::read(&path).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "the daemon is gone and no holder holds the connection ({}: {e})",
                    path.display()
                ),
            )
        })?;
        let h: holder::HeldFile = serde_json::from_slice(&text).map_err(std::io::Error::other)?;
        if h.dev != r.dev {
            return Err(std::io::Error::other(format!(
                "the holder holds another connection ({}, the mount is {})",
                h.dev, r.dev
            )));
        }
        let fuse = keeper::pidfd_getfd(h.pid, h.fuse_fd)?;
        alces_client::takeover::check_fuse_device(&fuse)?;
        let state = keeper::pidfd_getfd(h.pid, h.state_fd)?;
        tracing::info!(
            holder = h.pid,
            "took the volume's descriptors back from the holder"
        );
        Ok((fuse, state))
    }

    fn spec(&self, r: &StagedRecord, secret: Arc<str>) -> keeper::DaemonSpec {
        keeper::DaemonSpec {
            bin: self.config.mount_bin.clone(),
            mountpoint: r.staging_path.clone(),
            master: r.master.clone(),
            subdir: r.subdir.clone(),
            read_only: r.read_only,
            secret,
            tls_flags: self.config.tls_flags.clone(),
            log: self.log_path(&r.volume_id),
        }
    }

    /// Supervises a kept connection: a daemon that dies is replaced with a
    /// takeover, and the record names the new daemon.
    fn watch(&self, k: &Arc<keeper::Kept>, record: StagedRecord) {
        let staging = record.staging_path.clone();
        let path = self.record_path(&record.volume_id);
        let metrics = self.metrics.clone();
        let span = tracing::info_span!("keeper", volume_id = %record.volume_id);
        let span2 = span.clone();
        let current_path = path.clone();
        let volume_id = record.volume_id.clone();
        let lock_path = path.with_extension("lock");
        k.supervise(keeper::Hooks {
            still_mounted: Box::new(move || {
                let _in = span.enter();
                sys::mount_at(&staging)
                    .ok()
                    .flatten()
                    .is_some_and(|m| sys::is_alces(&m))
            }),
            current: Box::new(move || {
                std::fs::read(&current_path)
                    .ok()
                    .and_then(|t| serde_json::from_slice::<StagedRecord>(&t).ok())
                    .filter(|r| r.volume_id == volume_id)
                    .map(|r| r.pid)
            }),
            restarted: Box::new(move |pid, pause| {
                let _in = span2.enter();
                let mut r = record.clone();
                r.pid = pid;
                if let Err(e) = write_record_at(&path, &r) {
                    tracing::warn!(error = %e.message(), "recording the new daemon");
                }
                if let Some(m) = metrics.get() {
                    m.takeover("daemon_died");
                }
                tracing::info!(pid, ?pause, "mount daemon replaced");
            }),
            lock_path,
        });
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
        write_record_at(&self.record_path(&r.volume_id), r)
    }

    fn path(&self, what: &str, p: &str) -> Result<PathBuf, Status> {
        sys::check_node_path(&self.config.kubelet_dir, what, p).map_err(invalid)
    }

    /// Whether the Alces mount at `path` answers (`Err` says why not).
    async fn healthy(&self, path: &Path) -> Result<sys::Usage, String> {
        sys::usage(path, STATS_TIMEOUT).await.map_err(|e| {
            if e.raw_os_error() == Some(libc::EACCES) {
                format!(
                    "the master refuses this mount's credential at {} ({e}): the volume's credential was revoked (the volume was deleted, or its credential replaced); unpublish and publish the volume again",
                    path.display()
                )
            } else {
                format!("the mount at {} is broken: {e}", path.display())
            }
        })
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
                        if let Some(k) = self.kept.lock().remove(&req.volume_id) {
                            k.stop();
                        }
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
        let secret = stage_token(
            &req.volume_id,
            &req.secrets,
            self.config.default_secret.as_ref(),
        )?;
        let mut record = StagedRecord {
            volume_id: req.volume_id.clone(),
            staging_path: staging.clone(),
            read_only,
            pid: 0,
            kept: true,
            master: id.cluster.master_address(),
            subdir: id.path().to_string(),
            dev: String::new(),
        };
        let spec = self.spec(&record, secret);
        let fuse = keeper::open_fuse().map_err(|e| Status::failed_precondition(e.to_string()))?;
        let source = format!("alces:{}{}", record.master, record.subdir);
        keeper::mount_fuse(&fuse, &staging, &source, read_only, true)
            .map_err(|e| io_status("mounting the volume", &e))?;
        record.dev = sys::mount_at(&staging)
            .ok()
            .flatten()
            .map(|m| m.dev)
            .unwrap_or_default();
        let note = keeper::KeeperNote {
            master: record.master.clone(),
            subdir: record.subdir.clone(),
            secret: spec.secret.to_string(),
        };
        let started = keeper::new_state("alces-mount-state").and_then(|state| {
            note.write(&state)?;
            keeper::spawn(&spec, &fuse, &state, false).map(|c| (state, c))
        });
        let (state, mut child) = match started {
            Ok(x) => x,
            Err(e) => {
                let _ = sys::unmount(&staging);
                return Err(Status::failed_precondition(format!(
                    "cannot start {}: {e}",
                    self.config.mount_bin.display()
                )));
            }
        };
        let pid = child.id();
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        // Serving once the daemon has answered the kernel's INIT and a statfs.
        loop {
            if sys::usage(&staging, Duration::from_millis(500))
                .await
                .is_ok()
            {
                break;
            }
            let failed = match child.try_wait() {
                Ok(Some(st)) => {
                    let tail =
                        std::fs::read_to_string(self.log_path(&req.volume_id)).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    let tail = tail.join(" | ");
                    if credential_refused(&tail) {
                        Some(Status::permission_denied(format!(
                            "the master refuses the credential of volume {id} (revoked, or the volume was deleted): {tail}; if the volume still exists, delete its Secret {}{} and have the controller issue a new one (CreateVolume again), or recreate the volume",
                            crate::controller::credentials::SECRET_PREFIX,
                            id.name
                        )))
                    } else {
                        Some(Status::unavailable(format!(
                            "the mount daemon for {id} exited ({st}) before serving: {tail}"
                        )))
                    }
                }
                _ if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    Some(Status::deadline_exceeded(format!(
                        "{} was not served within {MOUNT_TIMEOUT:?}",
                        staging.display()
                    )))
                }
                _ => None,
            };
            if let Some(status) = failed {
                let _ = sys::unmount(&staging);
                return Err(status);
            }
        }
        let record = StagedRecord { pid, ..record };
        self.write_record(&record)?;
        let k = keeper::Kept::new(fuse, state, spec, pid, Some(child));
        self.watch(&k, record);
        if let Some(old) = self.kept.lock().insert(req.volume_id.clone(), k) {
            old.stop();
        }
        tracing::info!(staging = %staging.display(), pid, read_only, "volume staged");
        Ok(())
    }

    async fn unstage(&self, req: pb::NodeUnstageVolumeRequest) -> Result<(), Status> {
        volume_id(&req.volume_id)?;
        let staging = self.path("staging_target_path", &req.staging_target_path)?;
        let _g = self.locks.lock(&req.volume_id)?;
        let mut record = self.record(&req.volume_id);
        // Stop supervising first: the unmount ends the daemon on purpose.
        if let Some(k) = self.kept.lock().remove(&req.volume_id) {
            k.stop();
            if let Some(r) = record.as_mut() {
                r.pid = k.pid();
            }
        }
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
            if pid_alive(r.pid) && keeper::is_daemon_of(r.pid, &r.staging_path) {
                // SAFETY: plain kill of a pid this node started for this volume.
                unsafe { libc::kill(r.pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir(&staging);
        let _ = std::fs::remove_file(self.record_path(&req.volume_id));
        let _ = std::fs::remove_file(self.record_path(&req.volume_id).with_extension("lock"));
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

/// Whether a daemon's last log lines say the master refused its credential.
fn credential_refused(log: &str) -> bool {
    log.contains("revoked") || log.contains("refuses this client's credential")
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
    fn stage_tokens_come_from_the_volume_secret_else_the_cluster_secret() {
        let id = "a1#alces/x#/csi/volumes/pvc-1";
        let m = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let tok = "alces-credential-7-00ff";
        assert_eq!(
            &*stage_token(id, &m(&[("credential", tok), ("volumeId", id)]), None).unwrap(),
            tok
        );
        // The credential wins over a cluster secret in the same Secret.
        assert_eq!(
            &*stage_token(id, &m(&[("credential", tok), ("secret", "s")]), None).unwrap(),
            tok
        );
        assert_eq!(
            &*stage_token(id, &m(&[("secret", " s \n")]), None).unwrap(),
            "s \n".trim()
        );
        let default: Arc<str> = Arc::from("d");
        assert_eq!(&*stage_token(id, &m(&[]), Some(&default)).unwrap(), "d");
        let long = format!("alces-credential-7-{}", "a".repeat(2000));
        for (bad, what) in [
            (m(&[]), "carries no secrets"),
            (m(&[("secret", " ")]), "is empty"),
            (m(&[("credential", "x")]), "not a credential token"),
            (
                m(&[("credential", "alces-credential-0-ab")]),
                "not a credential token",
            ),
            (
                m(&[("credential", "alces-credential-7-a b")]),
                "not a credential token",
            ),
            (m(&[("credential", &long)]), "not a credential token"),
            (
                m(&[
                    ("credential", tok),
                    ("volumeId", "a1#alces/x#/csi/volumes/pvc-2"),
                ]),
                "not of",
            ),
        ] {
            let e = stage_token(id, &bad, None).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains(what), "{}", e.message());
            assert!(e.message().contains("alces-vol-pvc-1"), "{}", e.message());
        }
    }

    #[test]
    fn refused_credentials_are_recognised_in_daemon_logs() {
        assert!(credential_refused(
            "cannot open a session with master m: PERMISSION_DENIED credential 3 revoked"
        ));
        assert!(!credential_refused("cannot reach the master"));
    }

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
