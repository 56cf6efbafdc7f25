//! `alces-csi hold`: a second keeper of every staged volume's descriptors, in
//! a process (on Kubernetes, a container) of its own. It takes a copy of each
//! kept connection's `/dev/fuse` descriptor and state memfd from the running
//! daemon (`pidfd_getfd`) and holds it, so a connection survives its daemon
//! and the node plugin dying together (a container restart kills every
//! process of the container); the restarted plugin takes the descriptors back
//! from the holder and starts a daemon with `--takeover`. Each held volume has
//! a file `<record>.held` (JSON [`HeldFile`]) in the state directory naming
//! the holder's pid and descriptor numbers.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::keeper;
use super::StagedRecord;

/// How often the holder looks for new or gone volumes.
pub const SCAN_EVERY: Duration = Duration::from_millis(200);

/// What a holder publishes about a volume it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFile {
    /// The holder's pid.
    pub pid: u32,
    /// Its descriptor of the FUSE connection.
    pub fuse_fd: i32,
    /// Its descriptor of the state memfd.
    pub state_fd: i32,
    /// The mount's device (major:minor) the descriptors belong to.
    pub dev: String,
}

struct Held {
    _fuse: OwnedFd,
    _state: OwnedFd,
    dev: String,
    file: PathBuf,
}

/// Where the holder file of the record `record_path` is.
pub fn held_path(record_path: &Path) -> PathBuf {
    record_path.with_extension("held")
}

/// One pass: takes copies of the descriptors of volumes not held yet (or
/// staged again on a new connection), drops those of volumes gone.
fn scan(dir: &Path, held: &mut HashMap<PathBuf, Held>) {
    let mut seen = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let Some(r) = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<StagedRecord>(&t).ok())
            else {
                continue;
            };
            if !r.kept || r.dev.is_empty() {
                continue;
            }
            seen.push(path.clone());
            if held.get(&path).is_some_and(|h| h.dev == r.dev) {
                continue;
            }
            if !keeper::is_daemon_of(r.pid, &r.staging_path) {
                tracing::debug!(volume_id = %r.volume_id, pid = r.pid, "the recorded daemon is not running (yet)");
                continue;
            }
            match keeper::recover_fds(r.pid) {
                Ok((fuse, state)) => {
                    let file = held_path(&path);
                    let hf = HeldFile {
                        pid: std::process::id(),
                        fuse_fd: fuse.as_raw_fd(),
                        state_fd: state.as_raw_fd(),
                        dev: r.dev.clone(),
                    };
                    let tmp = file.with_extension("held-tmp");
                    let ok = serde_json::to_vec(&hf)
                        .map_err(std::io::Error::other)
                        .and_then(|d| std::fs::write(&tmp, d))
                        .and_then(|()| std::fs::rename(&tmp, &file));
                    if let Err(e) = ok {
                        tracing::warn!(error = %e, file = %file.display(), "cannot publish a held volume");
                        continue;
                    }
                    tracing::info!(volume_id = %r.volume_id, dev = %r.dev, "holding the volume's connection");
                    held.insert(
                        path,
                        Held {
                            _fuse: fuse,
                            _state: state,
                            dev: r.dev,
                            file,
                        },
                    );
                }
                Err(e) => {
                    tracing::debug!(volume_id = %r.volume_id, pid = r.pid, error = %e, "cannot take the descriptors (yet)");
                }
            }
        }
    }
    held.retain(|path, h| {
        let keep = seen.contains(path);
        if !keep {
            let _ = std::fs::remove_file(&h.file);
            tracing::info!(record = %path.display(), "volume unstaged; its descriptors are released");
        }
        keep
    });
}

/// Runs the holder over `state_dir` until SIGTERM/SIGINT.
pub async fn run(state_dir: PathBuf) -> anyhow::Result<()> {
    let dir = state_dir.join("volumes");
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    tracing::info!(state_dir = %state_dir.display(), "holding the descriptors of staged volumes");
    let mut held = HashMap::new();
    let stop = alces_telemetry::shutdown_signal();
    tokio::pin!(stop);
    loop {
        scan(&dir, &mut held);
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(SCAN_EVERY) => {}
        }
    }
    // Exiting releases the copies; the node plugin and the daemons keep theirs.
    for h in held.values() {
        let _ = std::fs::remove_file(&h.file);
    }
    Ok(())
}
