//! Volumes and snapshots as directories of an Alces filesystem: their
//! metadata, creation under a temporary name, and removal of a whole tree.
//!
//! Layout under a root folder (StorageClass parameter `root`, default `/csi`):
//!
//! ```text
//! <root>/volumes/<name>               a volume: quota = capacity, goal, trash time
//! <root>/volumes/.creating-<name>     a volume being built (renamed into place when done)
//! <root>/snapshots/<name>             a copy-on-write snapshot of a volume
//! ```
//!
//! Each volume and snapshot directory carries its CSI metadata in the
//! extended attribute `trusted.alces.csi` (JSON). `trusted.*` attributes are
//! invisible to unprivileged users of a mount, so a pod cannot read or change
//! them through its volume.

use alces_client::{Attr, Caller, Client, FileType};
use serde::{Deserialize, Serialize};

use crate::params::VolumeParams;

/// Name of the extended attribute holding the CSI metadata.
pub const META_XATTR: &[u8] = b"trusted.alces.csi";
/// Mode of a new volume directory: every user of a pod may create files in it
/// (the kernel checks permissions below it).
pub const VOLUME_MODE: u32 = 0o777;

/// What a volume directory records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    /// The CSI name it was created for.
    pub name: String,
    /// Its parameters.
    pub params: VolumeParams,
    /// The content source it was made from (`snapshot:<id>` or `volume:<id>`).
    pub source: Option<String>,
    /// When it was created (ns since the epoch).
    pub created_ns: i64,
}

/// What a snapshot directory records about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The CSI name it was created for.
    pub name: String,
    /// Id of the volume it is a snapshot of.
    pub source_volume: String,
    /// When it was taken (ns since the epoch).
    pub created_ns: i64,
    /// Bytes of the volume when it was taken.
    pub size: u64,
}

/// The metadata of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Meta {
    /// A volume.
    Volume(VolumeMeta),
    /// A snapshot.
    Snapshot(SnapshotMeta),
}

/// The identity the controller acts as on the filesystem.
pub fn root_caller() -> Caller {
    Caller::new(0, 0, std::process::id())
}

/// Now, in ns since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Filesystem operations of the controller on one cluster.
pub struct Store {
    client: Client,
    caller: Caller,
}

/// A client error.
pub type Result<T> = std::result::Result<T, alces_client::Error>;

impl Store {
    /// Operations through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            caller: root_caller(),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Attributes of `path`, or `None` when it does not exist.
    pub async fn find(&self, path: &str) -> Result<Option<Attr>> {
        match self.client.resolve(path).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.errno() == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Attributes of `name` in directory `parent`, or `None`.
    pub async fn find_in(&self, parent: u64, name: &str) -> Result<Option<Attr>> {
        match self
            .client
            .lookup(parent, name.as_bytes(), &self.caller)
            .await
        {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.errno() == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `path` and its parents as needed (mode 0755).
    pub async fn folder(&self, path: &str) -> Result<Attr> {
        self.client.mkdir_p(path, 0o755).await
    }

    /// Makes directory `name` in `parent` for a volume (mode 0777).
    pub async fn mkdir(&self, parent: u64, name: &str) -> Result<Attr> {
        self.client
            .mkdir(parent, name.as_bytes(), VOLUME_MODE, 0, &self.caller)
            .await
    }

    /// The metadata of `inode`, or `None` when it has none (or unreadable
    /// metadata, which is logged).
    pub async fn meta(&self, inode: u64) -> Result<Option<Meta>> {
        match self.client.getxattr(inode, META_XATTR, &self.caller).await {
            Ok(v) => match serde_json::from_slice(&v) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    tracing::warn!(inode, error = %e, "unreadable CSI metadata; treating the directory as foreign");
                    Ok(None)
                }
            },
            Err(e) if e.errno() == libc::ENODATA || e.errno() == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Records `meta` on `inode`.
    pub async fn set_meta(&self, inode: u64, meta: &Meta) -> Result<()> {
        let v = serde_json::to_vec(meta)
            .map_err(|e| alces_client::Error::io(format!("encoding metadata: {e}")))?;
        self.client
            .setxattr(inode, META_XATTR, &v, 0, &self.caller)
            .await
    }

    /// Renames `from` to `to` inside `parent`, refusing to replace `to`.
    pub async fn rename(&self, parent: u64, from: &str, to: &str) -> Result<()> {
        self.client
            .rename(
                parent,
                from.as_bytes(),
                parent,
                to.as_bytes(),
                alces_client::rename_flags::NOREPLACE,
                &self.caller,
            )
            .await
    }

    /// Names in directory `inode` after `after` (name order), at most `limit`,
    /// without `.`, `..` and hidden entries (those being built).
    pub async fn list(
        &self,
        inode: u64,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<(String, u64)>, bool)> {
        let mut out = Vec::new();
        let mut cursor = after.as_bytes().to_vec();
        loop {
            let page = self
                .client
                .readdir_page(inode, &cursor, limit.max(1), false)
                .await?;
            let n = page.entries.len();
            if let Some(last) = page.entries.last() {
                cursor = last.name.clone();
            }
            for e in page.entries {
                if e.name.first() == Some(&b'.') || e.kind != FileType::Directory as i32 {
                    continue;
                }
                if let Ok(name) = String::from_utf8(e.name) {
                    out.push((name, e.inode));
                }
            }
            if page.eof || n == 0 {
                return Ok((out, true));
            }
            if out.len() >= limit as usize {
                return Ok((out, false));
            }
        }
    }

    /// Removes directory `name` of `parent` and everything below it. Files go
    /// to the trash for the trash time in force there (set it to 0 first to
    /// purge). Idempotent: entries already gone are skipped, and an interrupted
    /// removal is finished by the next call.
    pub async fn remove_tree(&self, parent: u64, name: &str) -> Result<u64> {
        let Some(top) = self.find_in(parent, name).await? else {
            return Ok(0);
        };
        let mut removed = 0u64;
        // Directories being emptied: (parent, name, inode).
        let mut stack: Vec<(u64, Vec<u8>, u64)> =
            vec![(parent, name.as_bytes().to_vec(), top.inode)];
        while let Some((p, n, d)) = stack.last().cloned() {
            let page = match self.client.readdir_page(d, b"", 1000, false).await {
                Ok(p) => p,
                Err(e) if e.errno() == libc::ENOENT => {
                    stack.pop();
                    continue;
                }
                Err(e) => return Err(e),
            };
            let entries: Vec<_> = page
                .entries
                .into_iter()
                .filter(|e| e.name != b"." && e.name != b"..")
                .collect();
            if entries.is_empty() {
                match self.client.rmdir(p, &n, &self.caller).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.errno() == libc::ENOENT => {}
                    Err(e) => return Err(e),
                }
                stack.pop();
                continue;
            }
            for e in entries {
                if e.kind == FileType::Directory as i32 {
                    stack.push((d, e.name, e.inode));
                    break;
                }
                match self.client.unlink(d, &e.name, &self.caller).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.errno() == libc::ENOENT => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::OnDelete;

    #[test]
    fn metadata_round_trips() {
        let m = Meta::Volume(VolumeMeta {
            name: "pvc-1".into(),
            params: VolumeParams {
                goal: Some(2),
                trash_secs: None,
                on_delete: OnDelete::Purge,
                labels: Default::default(),
            },
            source: Some("snapshot:a1#h:1#/csi/snapshots/s".into()),
            created_ns: 5,
        });
        let v = serde_json::to_vec(&m).unwrap();
        assert!(String::from_utf8_lossy(&v).contains("\"kind\":\"volume\""));
        assert_eq!(serde_json::from_slice::<Meta>(&v).unwrap(), m);
    }
}
