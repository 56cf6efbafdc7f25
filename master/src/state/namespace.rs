//! The whole replicated metadata state ([`State`]): the inode table, the chunk
//! table, orphans, quotas, the trash, drains, and the read-only queries on
//! them (lookups, paths, directory pages, xattrs).
//!
//! Mutations live in [`crate::state::ops`]; this module only holds the data and
//! answers questions about it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use alces_proto::geometry::MAX_FILE_SIZE;
use alces_proto::pb;

use crate::state::error::{err, FsError, FsResult};
use crate::state::inode::{Body, Entries, Inode, Kind};
use crate::state::inodes::InodeTable;

/// Inode number of the filesystem root.
pub const ROOT_INODE: u64 = 1;
/// Longest entry name in bytes.
pub const MAX_NAME: usize = 255;
/// Longest symlink target in bytes.
pub const MAX_SYMLINK: usize = 4095;
/// Longest xattr name in bytes.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest xattr value in bytes.
pub const MAX_XATTR_VALUE: usize = 65536;
/// Most hard links one inode may have.
pub const MAX_LINKS: u32 = 65000;
/// Inode count reported as the filesystem's capacity.
pub const MAX_INODES: u64 = 1 << 32;

/// Checks an entry name: 1..=255 bytes, no '/', no NUL, not "." or "..".
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.is_empty() {
        return err(libc::EINVAL, "empty entry name");
    }
    if name.len() > MAX_NAME {
        return err(
            libc::ENAMETOOLONG,
            format!(
                "entry name is {} bytes, the limit is {MAX_NAME}",
                name.len()
            ),
        );
    }
    if name == b"." || name == b".." {
        return err(libc::EINVAL, "entry name cannot be '.' or '..'");
    }
    if name.iter().any(|&c| c == b'/' || c == 0) {
        return err(libc::EINVAL, "entry name contains '/' or NUL");
    }
    Ok(())
}

/// Printable form of a name for error messages.
pub fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// Checks that a path an administrator gives is absolute (EINVAL otherwise).
pub fn check_absolute(path: &str) -> FsResult<()> {
    if !path.starts_with('/') {
        return err(
            libc::EINVAL,
            format!("path '{path}' is not absolute: give it from the filesystem root"),
        );
    }
    Ok(())
}

/// A page of directory entries (name, inode) and whether it ends the listing.
pub type DirPage<'a> = (Vec<(&'a [u8], u64)>, bool);

/// What the master knows of one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Current version.
    pub version: u64,
    /// File the chunk was created for (its goal applies while it exists).
    pub inode: u64,
    /// File slots referencing the chunk (more than one after a snapshot:
    /// shared copy-on-write).
    pub refs: u32,
    /// Goal of the chunk when its creating file is gone (highest of its files).
    pub goal: u8,
}

/// Limits of one directory quota (0 = no limit) and its soft-limit state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Bytes that may be exceeded for the grace period.
    pub soft_bytes: u64,
    /// Bytes never exceeded.
    pub hard_bytes: u64,
    /// Inodes that may be exceeded for the grace period.
    pub soft_inodes: u64,
    /// Inodes never exceeded.
    pub hard_inodes: u64,
    /// How long a soft limit may be exceeded.
    pub grace_secs: u64,
    /// When a soft limit was first exceeded (ns), 0 while within them.
    pub soft_since: i64,
}

impl Quota {
    /// True when `u` is above a soft limit.
    pub fn soft_exceeded(&self, u: Usage) -> bool {
        (self.soft_bytes > 0 && u.bytes > self.soft_bytes)
            || (self.soft_inodes > 0 && u.inodes > self.soft_inodes)
    }
}

/// A trashed file (the trash id is its inode number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trashed {
    /// Path it had when deleted.
    pub path: Box<str>,
    /// When it was deleted (ns).
    pub deleted: i64,
    /// When it is freed (ns).
    pub expires: i64,
}

/// Bytes and inodes of a subtree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Logical bytes of regular files and symlinks.
    pub bytes: u64,
    /// Inodes.
    pub inodes: u64,
}

/// The whole replicated metadata state: what snapshots hold and changelog records
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Metadata version: the version of the last applied changelog record.
    pub version: u64,
    /// Cluster id, created with the filesystem.
    pub cluster_id: String,
    /// Chunk size the filesystem was created with.
    pub chunk_size: u64,
    /// Next inode number to hand out.
    pub next_inode: u64,
    /// Next chunk id to hand out.
    pub next_chunk_id: u64,
    /// Every inode by number.
    pub inodes: InodeTable,
    /// Every chunk by id.
    pub chunks: HashMap<u64, ChunkMeta>,
    /// Inodes without links kept while open (or until reclaimed after a restart).
    pub orphans: BTreeSet<u64>,
    /// Directory quotas by directory inode.
    pub quotas: BTreeMap<u64, Quota>,
    /// Trashed files by inode (the trash id).
    pub trash: BTreeMap<u64, Trashed>,
    /// Trash times (seconds) set on directories; subtrees inherit them.
    pub trash_times: BTreeMap<u64, u64>,
    /// Chunkservers being drained (by server id): logged so that a drain
    /// survives master restarts and failovers.
    pub draining: BTreeSet<u64>,
    /// Credentials issued by this cluster (export rules), revoked ones included.
    pub credentials: crate::state::credentials::Credentials,
    /// The first outcomes of tagged requests (the reply cache).
    pub replies: crate::state::replies::Replies,
    /// Recursive usage of every directory's subtree (kept incrementally, not
    /// persisted: rebuilt when a snapshot is loaded).
    pub usage: HashMap<u64, Usage>,
}

/// Most directory levels walked from an inode up to a session's root before
/// the walk gives up (refusing the inode).
pub const MAX_SUBTREE_DEPTH: usize = 4096;

impl State {
    /// A new filesystem: an empty root directory (0755, uid 0, gid 0).
    pub fn format(cluster_id: String, chunk_size: u64, goal: u32, now: i64) -> Self {
        let mut inodes = InodeTable::new();
        inodes.insert(
            ROOT_INODE,
            Inode {
                kind: Kind::Directory,
                mode: 0o755,
                goal: goal.clamp(1, alces_proto::geometry::MAX_GOAL) as u8,
                nlink: 2,
                uid: 0,
                gid: 0,
                size: 0,
                atime: now,
                mtime: now,
                ctime: now,
                parent: ROOT_INODE,
                body: Body::Dir(Box::default()),
                xattrs: None,
            },
        );
        Self {
            version: 0,
            cluster_id,
            chunk_size,
            next_inode: ROOT_INODE + 1,
            next_chunk_id: 1,
            inodes,
            chunks: HashMap::new(),
            orphans: BTreeSet::new(),
            quotas: BTreeMap::new(),
            trash: BTreeMap::new(),
            trash_times: BTreeMap::new(),
            draining: BTreeSet::new(),
            credentials: Default::default(),
            replies: Default::default(),
            usage: HashMap::new(),
        }
    }

    /// The inode `ino`, or ENOENT.
    pub fn get(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes
            .get(&ino)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("inode {ino} does not exist")))
    }

    /// The inode `ino` for changing, or ENOENT.
    pub fn get_mut(&mut self, ino: u64) -> FsResult<&mut Inode> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("inode {ino} does not exist")))
    }

    /// The entries of directory `ino` (ENOENT, ENOTDIR).
    pub fn dir(&self, ino: u64) -> FsResult<&Entries> {
        self.get(ino)?
            .entries()
            .ok_or_else(|| FsError::new(libc::ENOTDIR, format!("inode {ino} is not a directory")))
    }

    /// Attributes of `ino`.
    pub fn attr(&self, ino: u64) -> FsResult<pb::Attr> {
        Ok(self.get(ino)?.attr(ino))
    }

    /// Looks `name` up in directory `parent` ("." and ".." included).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<u64> {
        let entries = self.dir(parent)?;
        if name == b"." {
            return Ok(parent);
        }
        if name == b".." {
            return Ok(self.get(parent)?.parent);
        }
        check_name(name)?;
        entries.get(name).copied().ok_or_else(|| {
            FsError::new(
                libc::ENOENT,
                format!("no entry '{}' in directory {parent}", show(name)),
            )
        })
    }

    /// Whether `ino` lies in the subtree of directory `root`: a directory when
    /// `root` is among its ancestors (one parent each); any other inode when one
    /// of the directories holding a link to it does. The recorded parent (the
    /// directory of its latest link) is tried first; a multiply-linked inode
    /// whose recorded parent is outside is looked for in every directory (rare:
    /// a hard link across the subtree's boundary made by a wider credential).
    /// An orphan (unlinked but open) counts by the directory it was removed from.
    pub fn in_subtree(&self, root: u64, ino: u64) -> bool {
        let st = self;
        if root == ROOT_INODE || ino == root {
            return true;
        }
        let Ok(i) = st.get(ino) else {
            return false;
        };
        if i.is_dir() {
            return st.dir_in_subtree(root, ino);
        }
        if st.dir_in_subtree(root, i.parent) {
            return true;
        }
        i.nlink > 1
            && st.inodes.iter().any(|(d, di)| {
                di.entries().is_some_and(|e| e.values().any(|&c| c == ino))
                    && st.dir_in_subtree(root, d)
            })
    }

    /// Whether directory `dir` is `root` or below it (at most [`MAX_SUBTREE_DEPTH`] levels).
    fn dir_in_subtree(&self, root: u64, dir: u64) -> bool {
        let st = self;
        let mut cur = dir;
        for _ in 0..MAX_SUBTREE_DEPTH {
            if cur == root {
                return true;
            }
            if cur == ROOT_INODE {
                return false;
            }
            match st.inodes.get(&cur) {
                Some(i) => cur = i.parent,
                None => return false,
            }
        }
        false
    }

    /// True when directory `ancestor` is `node` or one of its ancestors.
    pub fn is_ancestor(&self, ancestor: u64, node: u64) -> bool {
        let mut cur = node;
        for _ in 0..=self.inodes.len() {
            if cur == ancestor {
                return true;
            }
            if cur == ROOT_INODE {
                return false;
            }
            match self.inodes.get(&cur) {
                Some(i) => cur = i.parent,
                None => return false,
            }
        }
        false
    }

    /// Resolves an absolute path from inode `root` ("" and "/" are `root`).
    pub fn resolve(&self, root: u64, path: &str) -> FsResult<u64> {
        let mut cur = root;
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                if cur != root {
                    cur = self.get(cur)?.parent;
                }
                continue;
            }
            let ino = self.dir(cur).map_err(|_| {
                FsError::new(
                    libc::ENOTDIR,
                    format!("path '{path}': a component before '{comp}' is not a directory"),
                )
            })?;
            cur = ino.get(comp.as_bytes()).copied().ok_or_else(|| {
                FsError::new(
                    libc::ENOENT,
                    format!("path '{path}': '{comp}' does not exist"),
                )
            })?;
        }
        Ok(cur)
    }

    /// Resolves an absolute path an administrator or a tool gives (`alces
    /// goal`, quotas, snapshots, the trash, `du`, file info): EINVAL when it is
    /// not absolute or contains NUL, else the errors of [`State::resolve`],
    /// which name the path and the component that failed.
    pub fn resolve_absolute(&self, path: &str) -> FsResult<u64> {
        check_absolute(path)?;
        if path.contains('\0') {
            return err(
                libc::EINVAL,
                format!("path '{}' contains NUL", path.replace('\0', "\\0")),
            );
        }
        self.resolve(ROOT_INODE, path)
    }

    /// Target of symlink `ino` (EINVAL when not a symlink).
    pub fn readlink(&self, ino: u64) -> FsResult<&[u8]> {
        match &self.get(ino)?.body {
            Body::Symlink(t) => Ok(t),
            _ => err(libc::EINVAL, format!("inode {ino} is not a symbolic link")),
        }
    }

    /// Up to `limit` entries of directory `ino` after `after` (name order), and
    /// whether the listing is complete.
    pub fn readdir(&self, ino: u64, after: &[u8], limit: usize) -> FsResult<DirPage<'_>> {
        use std::ops::Bound;
        let entries = self.dir(ino)?;
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let mut out = Vec::new();
        let mut it = entries.range::<[u8], _>((start, Bound::Unbounded));
        for (name, child) in it.by_ref() {
            out.push((&name[..], *child));
            if out.len() >= limit {
                break;
            }
        }
        let eof = it.next().is_none();
        Ok((out, eof))
    }

    /// Value of xattr `name` of `ino` (ENODATA when missing).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<&[u8]> {
        let inode = self.get(ino)?;
        inode
            .xattrs
            .as_ref()
            .and_then(|x| x.get(name))
            .map(|v| &v[..])
            .ok_or_else(|| {
                FsError::new(
                    libc::ENODATA,
                    format!("inode {ino} has no extended attribute '{}'", show(name)),
                )
            })
    }

    /// Names of the xattrs of `ino`.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        let inode = self.get(ino)?;
        Ok(inode
            .xattrs
            .as_ref()
            .map(|x| x.keys().map(|k| k.to_vec()).collect())
            .unwrap_or_default())
    }

    /// Highest chunk index a file may have with this filesystem's chunk size.
    pub fn max_chunk_index(&self) -> u64 {
        MAX_FILE_SIZE.div_ceil(self.chunk_size.max(1))
    }

    /// Counts of (inodes, regular files, directories).
    pub fn counts(&self) -> (u64, u64, u64) {
        let mut files = 0;
        let mut dirs = 0;
        for i in self.inodes.values() {
            match i.kind {
                Kind::Regular => files += 1,
                Kind::Directory => dirs += 1,
                _ => {}
            }
        }
        (self.inodes.len() as u64, files, dirs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve() {
        let st = State::format("c".into(), 1 << 20, 1, 0);
        assert_eq!(st.resolve(ROOT_INODE, "/").unwrap(), ROOT_INODE);
        assert_eq!(st.resolve(ROOT_INODE, "").unwrap(), ROOT_INODE);
        assert_eq!(st.resolve(ROOT_INODE, "/./..").unwrap(), ROOT_INODE);
        assert_eq!(
            st.resolve(ROOT_INODE, "/x").unwrap_err().errno,
            libc::ENOENT
        );
        assert!(check_name(b"ok").is_ok());
    }
}
