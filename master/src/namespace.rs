//! The namespace held in memory: inodes of every kind, directory entries, xattrs,
//! the chunk table, and the read-only queries on them.
//!
//! Mutations live in [`crate::ops`]; this module only holds the data and answers
//! questions about it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use alces_proto::geometry::MAX_FILE_SIZE;
use alces_proto::pb::{self, FileType};

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

/// A namespace error: a Linux errno and a message saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsError {
    /// Linux errno sent to the client.
    pub errno: i32,
    /// What was wrong.
    pub message: String,
    /// Set when the error is "this master does not know session N".
    pub unknown_session: Option<u64>,
}

impl FsError {
    /// An error with `errno` and `message`.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        Self {
            errno,
            message: message.into(),
            unknown_session: None,
        }
    }

    /// The caller's session is unknown to this master (see
    /// [`alces_proto::errno::session_unknown`]).
    pub fn session_unknown(session_id: u64) -> Self {
        let status = alces_proto::errno::session_unknown(session_id);
        Self {
            errno: alces_proto::errno::of(&status),
            message: status.message().to_string(),
            unknown_session: Some(session_id),
        }
    }

    /// The gRPC status carrying this error.
    pub fn to_status(&self) -> tonic::Status {
        match self.unknown_session {
            Some(sid) => alces_proto::errno::session_unknown(sid),
            None => alces_proto::errno::status(self.errno, self.message.clone()),
        }
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (errno {})", self.message, self.errno)
    }
}

impl std::error::Error for FsError {}

impl From<FsError> for tonic::Status {
    fn from(e: FsError) -> Self {
        e.to_status()
    }
}

/// Result of namespace operations.
pub type FsResult<T> = Result<T, FsError>;

/// Shorthand for building an [`FsError`].
pub fn err<T>(errno: i32, message: impl Into<String>) -> FsResult<T> {
    Err(FsError::new(errno, message))
}

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

/// A page of directory entries (name, inode) and whether it ends the listing.
pub type DirPage<'a> = (Vec<(&'a [u8], u64)>, bool);

/// Extended attributes of one inode (boxed so inodes without any stay small).
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// A name in a directory: up to 16 bytes are stored inline (most names), so an
/// entry needs no allocation of its own.
pub type Name = smallvec::SmallVec<[u8; 16]>;

/// The entries of a directory by name.
pub type Entries = BTreeMap<Name, u64>;

/// What an inode holds besides its attributes. Every variant is one pointer
/// wide, so the inode stays small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Regular file: chunk id per chunk index (0 = hole).
    File(thin_vec::ThinVec<u64>),
    /// Directory: entries by name.
    Dir(Box<Entries>),
    /// Symbolic link target.
    Symlink(thin_vec::ThinVec<u8>),
    /// Character or block device number.
    Device(u64),
    /// Fifo or socket.
    Special,
}

/// Kind of an inode: the wire [`FileType`] without its "unspecified" value, one
/// byte wide instead of four (an inode is 8 bytes smaller with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Regular file.
    Regular = FileType::Regular as u8,
    /// Directory.
    Directory = FileType::Directory as u8,
    /// Symbolic link.
    Symlink = FileType::Symlink as u8,
    /// Named pipe.
    Fifo = FileType::Fifo as u8,
    /// Unix socket.
    Socket = FileType::Socket as u8,
    /// Character device.
    CharDevice = FileType::CharDevice as u8,
    /// Block device.
    BlockDevice = FileType::BlockDevice as u8,
}

impl Kind {
    /// The kind of a wire file type number; None for "unspecified" and
    /// numbers no file type has.
    pub fn from_wire(k: i32) -> Option<Self> {
        Some(match FileType::try_from(k).ok()? {
            FileType::Unspecified => return None,
            FileType::Regular => Self::Regular,
            FileType::Directory => Self::Directory,
            FileType::Symlink => Self::Symlink,
            FileType::Fifo => Self::Fifo,
            FileType::Socket => Self::Socket,
            FileType::CharDevice => Self::CharDevice,
            FileType::BlockDevice => Self::BlockDevice,
        })
    }
}

impl From<Kind> for FileType {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Regular => Self::Regular,
            Kind::Directory => Self::Directory,
            Kind::Symlink => Self::Symlink,
            Kind::Fifo => Self::Fifo,
            Kind::Socket => Self::Socket,
            Kind::CharDevice => Self::CharDevice,
            Kind::BlockDevice => Self::BlockDevice,
        }
    }
}

impl PartialEq<FileType> for Kind {
    fn eq(&self, other: &FileType) -> bool {
        FileType::from(*self) == *other
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Kind of the inode.
    pub kind: Kind,
    /// Permission bits (07777).
    pub mode: u16,
    /// Copies per chunk (1-9).
    pub goal: u8,
    /// Hard link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Length in bytes.
    pub size: u64,
    /// Access time, ns since the Unix epoch.
    pub atime: i64,
    /// Modification time.
    pub mtime: i64,
    /// Change time.
    pub ctime: i64,
    /// Directory holding the (latest) entry of this inode; the root is its own parent.
    pub parent: u64,
    /// Kind-specific contents.
    pub body: Body,
    /// Extended attributes, if any.
    pub xattrs: Option<Box<Xattrs>>,
}

impl Inode {
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    /// Directory entries, if a directory.
    pub fn entries(&self) -> Option<&Entries> {
        match &self.body {
            Body::Dir(e) => Some(e),
            _ => None,
        }
    }

    /// Chunk ids, if a regular file.
    pub fn chunks(&self) -> Option<&[u64]> {
        match &self.body {
            Body::File(c) => Some(c),
            _ => None,
        }
    }

    /// Device number for device nodes, else 0.
    pub fn rdev(&self) -> u64 {
        match self.body {
            Body::Device(d) => d,
            _ => 0,
        }
    }

    /// Wire attributes of this inode.
    pub fn attr(&self, ino: u64) -> pb::Attr {
        pb::Attr {
            inode: ino,
            kind: self.kind as i32,
            mode: u32::from(self.mode),
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            atime_ns: self.atime,
            mtime_ns: self.mtime,
            ctime_ns: self.ctime,
            rdev: self.rdev(),
            goal: u32::from(self.goal),
            no_xattrs: self.xattrs.as_ref().is_none_or(|x| x.is_empty()),
        }
    }
}

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
    pub inodes: crate::inodes::InodeTable,
    /// Every chunk by id.
    pub chunks: HashMap<u64, ChunkMeta>,
    /// Inodes without links kept while open (or until reclaimed after a restart).
    pub orphans: BTreeSet<u64>,
    /// Directory quotas by directory inode.
    pub quotas: BTreeMap<u64, crate::volumes::Quota>,
    /// Trashed files by inode (the trash id).
    pub trash: BTreeMap<u64, crate::volumes::Trashed>,
    /// Trash times (seconds) set on directories; subtrees inherit them.
    pub trash_times: BTreeMap<u64, u64>,
    /// Chunkservers being drained (by server id): logged so that a drain
    /// survives master restarts and failovers.
    pub draining: BTreeSet<u64>,
    /// Recursive usage of every directory's subtree (kept incrementally, not
    /// persisted: rebuilt when a snapshot is loaded).
    pub usage: HashMap<u64, crate::volumes::Usage>,
}

impl State {
    /// A new filesystem: an empty root directory (0755, uid 0, gid 0).
    pub fn format(cluster_id: String, chunk_size: u64, goal: u32, now: i64) -> Self {
        let mut inodes = crate::inodes::InodeTable::new();
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

    /// Every wire file type maps to a kind and back; "unspecified" and numbers
    /// no file type has are refused.
    #[test]
    fn kinds_round_trip_with_the_wire_file_types() {
        for k in 1..=7 {
            let kind = Kind::from_wire(k).unwrap_or_else(|| panic!("file type {k}"));
            assert_eq!(FileType::from(kind) as i32, k);
            assert_eq!(kind as i32, k, "same numbers as the wire enum");
            assert!(kind == FileType::try_from(k).unwrap());
        }
        for bad in [0, 8, -1, i32::MAX] {
            assert_eq!(Kind::from_wire(bad), None, "file type {bad}");
        }
        assert_eq!(std::mem::size_of::<Kind>(), 1);
    }

    #[test]
    fn inodes_stay_small() {
        // Memory per file is benchmarked: keep the fixed part of an inode compact.
        let size = std::mem::size_of::<Inode>();
        assert!(size <= 80, "Inode grew to {size} bytes");
        assert_eq!(
            std::mem::size_of::<Body>(),
            16,
            "every Body variant is one pointer"
        );
        assert_eq!(
            std::mem::size_of::<Option<Inode>>(),
            size,
            "an empty inode slot costs no more than an inode"
        );
    }

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
