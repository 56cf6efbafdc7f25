//! The chunkserver's identity and what it remembers about the cluster: its
//! server id, the cluster id it joined, and the highest master epoch seen.
//!
//! Files (plain decimal or text, one line):
//! - `<every data dir>/server_id`: random u64 created once; each disk carries it.
//! - `<first data dir>/cluster_id`: the cluster id of the first master that accepted us.
//! - `<first data dir>/seen_epoch`: the highest master epoch seen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Name of the server id file.
pub const SERVER_ID_FILE: &str = "server_id";
/// Name of the cluster id file.
pub const CLUSTER_ID_FILE: &str = "cluster_id";
/// Name of the highest-seen-epoch file.
pub const SEEN_EPOCH_FILE: &str = "seen_epoch";

/// Identity of this chunkserver and its memory of the cluster.
pub struct Identity {
    /// Stable server id.
    pub server_id: u64,
    first_dir: PathBuf,
    cluster_id: Mutex<Option<String>>,
    seen_epoch: AtomicU64,
}

/// Writes `content` to `dir/name` atomically (temp file, fsync, rename).
fn write_atomic(dir: &Path, name: &str, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dst)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    res.map_err(|e| anyhow::anyhow!("cannot write {}: {e}", dst.display()))
}

fn read_trimmed(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

fn parse_u64(path: &Path, s: &str) -> anyhow::Result<u64> {
    s.parse().map_err(|_| {
        anyhow::anyhow!(
            "{} holds '{s}', not a number; fix or remove the file",
            path.display()
        )
    })
}

impl Identity {
    /// Loads (or creates) the identity from the data directories.
    pub fn load(dirs: &[PathBuf]) -> anyhow::Result<Self> {
        let first = dirs
            .first()
            .ok_or_else(|| anyhow::anyhow!("no data directory given: pass --data-dir"))?;
        for d in dirs {
            std::fs::create_dir_all(d).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create data directory {}: {e}; pass a writable --data-dir",
                    d.display()
                )
            })?;
        }
        let mut found = None;
        for d in dirs {
            let p = d.join(SERVER_ID_FILE);
            if let Some(s) = read_trimmed(&p)? {
                let id = parse_u64(&p, &s)?;
                match found {
                    None => found = Some(id),
                    Some(f) if f != id => tracing::warn!(
                        file = %p.display(),
                        this = id,
                        using = f,
                        "data directory carries another server id (a disk moved between servers?); using the first one"
                    ),
                    _ => {}
                }
            }
        }
        let server_id = match found {
            Some(id) => id,
            None => {
                let id = loop {
                    let r: u64 = rand::random();
                    if r != 0 {
                        break r;
                    }
                };
                tracing::info!(server_id = id, "new chunkserver identity created");
                id
            }
        };
        for d in dirs {
            let p = d.join(SERVER_ID_FILE);
            if read_trimmed(&p)?.is_none() {
                write_atomic(d, SERVER_ID_FILE, &format!("{server_id}\n"))?;
            }
        }
        let cluster_id = read_trimmed(&first.join(CLUSTER_ID_FILE))?.filter(|s| !s.is_empty());
        let ep = first.join(SEEN_EPOCH_FILE);
        let seen_epoch = match read_trimmed(&ep)? {
            Some(s) => parse_u64(&ep, &s)?,
            None => 0,
        };
        Ok(Self {
            server_id,
            first_dir: first.clone(),
            cluster_id: Mutex::new(cluster_id),
            seen_epoch: AtomicU64::new(seen_epoch),
        })
    }

    /// The highest master epoch seen.
    pub fn seen_epoch(&self) -> u64 {
        self.seen_epoch.load(Ordering::SeqCst)
    }

    /// The cluster id joined, if any.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.lock().clone()
    }

    /// Checks a master's epoch against the highest seen, remembering a higher one.
    pub fn check_epoch(&self, epoch: u64) -> anyhow::Result<()> {
        let seen = self.seen_epoch();
        if epoch < seen {
            anyhow::bail!(
                "master has epoch {epoch}, lower than the highest seen ({seen}): it is a deposed master; refusing it"
            );
        }
        if epoch > seen {
            write_atomic(&self.first_dir, SEEN_EPOCH_FILE, &format!("{epoch}\n"))?;
            self.seen_epoch.fetch_max(epoch, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Checks a master's cluster id; the first one seen is remembered.
    pub fn check_cluster(&self, cluster_id: &str) -> anyhow::Result<()> {
        let mut cur = self.cluster_id.lock();
        match cur.as_deref() {
            Some(c) if c == cluster_id => Ok(()),
            Some(c) => anyhow::bail!(
                "master belongs to cluster '{cluster_id}' but this chunkserver joined cluster '{c}' ({}); point --master at the right cluster, or use empty data directories to join a new one",
                self.first_dir.join(CLUSTER_ID_FILE).display()
            ),
            None => {
                if cluster_id.is_empty() {
                    anyhow::bail!("master sent an empty cluster id");
                }
                write_atomic(&self.first_dir, CLUSTER_ID_FILE, &format!("{cluster_id}\n"))?;
                tracing::info!(cluster_id, "joined cluster");
                *cur = Some(cluster_id.to_string());
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_checks() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        let id = Identity::load(&dirs).unwrap();
        assert_ne!(id.server_id, 0);
        id.check_cluster("c1").unwrap();
        id.check_epoch(3).unwrap();
        assert!(id
            .check_cluster("c2")
            .unwrap_err()
            .to_string()
            .contains("c1"));
        assert!(id.check_epoch(2).is_err());

        let again = Identity::load(&dirs).unwrap();
        assert_eq!(again.server_id, id.server_id);
        assert_eq!(again.seen_epoch(), 3);
        assert_eq!(again.cluster_id().as_deref(), Some("c1"));
        let copy = std::fs::read_to_string(b.path().join(SERVER_ID_FILE)).unwrap();
        assert_eq!(copy.trim(), id.server_id.to_string());
        std::fs::write(a.path().join(SEEN_EPOCH_FILE), "x").unwrap();
        assert!(Identity::load(&dirs).is_err());
    }
}
