//! A FUSE filesystem that does nothing: it keeps names and sizes in memory, accepts
//! writes without storing them and returns zeros on read. Its figures are the ceiling of
//! FUSE itself on this kernel, with the same FUSE settings as `alces-mount`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::Mutex;

/// How long the kernel may cache attributes and entries (as `alces-mount`'s default).
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request (as `alces-mount`).
const MAX_WRITE: u32 = 1 << 20;
/// Kernel readahead (as `alces-mount`).
const MAX_READAHEAD: u32 = 1 << 20;
/// A buffer of zeros replies are cut from.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

struct Node {
    dir: bool,
    size: u64,
    nlink: u32,
    mode: u16,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    children: BTreeMap<OsString, u64>,
}

#[derive(Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
}

/// The namespace of a no-op filesystem; clones share it, so several mounts of the same
/// [`NoopFs`] see the same names (like several clients of one cluster).
#[derive(Clone)]
pub struct NoopFs {
    state: Arc<Mutex<State>>,
}

impl Default for NoopFs {
    fn default() -> Self {
        Self::new()
    }
}

impl NoopFs {
    /// An empty filesystem (a root directory).
    pub fn new() -> NoopFs {
        let mut st = State {
            next: 2,
            ..State::default()
        };
        st.nodes.insert(1, node(true, 0o777, 0, 0));
        NoopFs {
            state: Arc::new(Mutex::new(st)),
        }
    }

    fn attr_of(ino: u64, n: &Node) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: if n.dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: n.mode,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        }
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let st = self.state.lock();
        st.nodes
            .get(&ino)
            .map(|n| Self::attr_of(ino, n))
            .ok_or(Errno::ENOENT)
    }

    fn add(
        &self,
        req: &Request,
        parent: u64,
        name: &OsStr,
        dir: bool,
        mode: u32,
    ) -> Result<FileAttr, Errno> {
        let mut st = self.state.lock();
        let ino = st.next;
        let p = st.nodes.get_mut(&parent).ok_or(Errno::ENOENT)?;
        if !p.dir {
            return Err(Errno::ENOTDIR);
        }
        if p.children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        p.children.insert(name.to_owned(), ino);
        if dir {
            p.nlink += 1;
        }
        st.next += 1;
        let n = node(dir, (mode & 0o7777) as u16, req.uid(), req.gid());
        let a = Self::attr_of(ino, &n);
        st.nodes.insert(ino, n);
        Ok(a)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut st = self.state.lock();
        let ino = *st
            .nodes
            .get(&parent)
            .and_then(|p| p.children.get(name))
            .ok_or(Errno::ENOENT)?;
        let n = st.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        if n.dir != dir {
            return Err(if dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        if dir && !n.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        st.nodes.remove(&ino);
        if let Some(p) = st.nodes.get_mut(&parent) {
            p.children.remove(name);
            if dir {
                p.nlink -= 1;
            }
        }
        Ok(())
    }
}

fn node(dir: bool, mode: u16, uid: u32, gid: u32) -> Node {
    Node {
        dir,
        size: 0,
        nlink: if dir { 2 } else { 1 },
        mode,
        uid,
        gid,
        mtime: SystemTime::now(),
        children: BTreeMap::new(),
    }
}

impl Filesystem for NoopFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        for cap in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_BIG_WRITES,
        ] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = {
            let st = self.state.lock();
            st.nodes
                .get(&parent.0)
                .and_then(|p| p.children.get(name))
                .and_then(|i| st.nodes.get(i).map(|n| Self::attr_of(*i, n)))
        };
        match found {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.state.lock();
        let Some(n) = st.nodes.get_mut(&ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        if let Some(m) = mode {
            n.mode = (m & 0o7777) as u16;
        }
        if let Some(u) = uid {
            n.uid = u;
        }
        if let Some(g) = gid {
            n.gid = g;
        }
        if let Some(s) = size {
            n.size = s;
        }
        n.mtime = SystemTime::now();
        reply.attr(&TTL, &Self::attr_of(ino.0, n));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.add(req, parent.0, name, false, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.add(req, parent.0, name, true, mode) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.state.lock();
        let Some(ino) = st
            .nodes
            .get_mut(&parent.0)
            .and_then(|p| p.children.remove(name))
        else {
            reply.error(Errno::ENOENT);
            return;
        };
        let replaced = match st.nodes.get_mut(&newparent.0) {
            Some(np) => np.children.insert(newname.to_owned(), ino),
            None => None,
        };
        if let Some(old) = replaced {
            st.nodes.remove(&old);
        }
        reply.ok();
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = self
            .state
            .lock()
            .nodes
            .get(&ino.0)
            .map(|n| n.size)
            .unwrap_or(0);
        let n = len.saturating_sub(offset).min(size as u64) as usize;
        reply.data(&ZEROS[..n.min(ZEROS.len())]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(n) = self.state.lock().nodes.get_mut(&ino.0) {
            n.size = n.size.max(offset + data.len() as u64);
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.state.lock();
        let Some(d) = st.nodes.get(&ino.0) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let dots = [
            (ino.0, FileType::Directory, OsStr::new(".")),
            (1, FileType::Directory, OsStr::new("..")),
        ];
        let entries = dots.into_iter().chain(d.children.iter().map(|(name, i)| {
            let kind = match st.nodes.get(i) {
                Some(n) if n.dir => FileType::Directory,
                _ => FileType::RegularFile,
            };
            (*i, kind, name.as_os_str())
        }));
        for (idx, (i, kind, name)) in entries.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(i), idx as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 30, 1 << 30, 1 << 30, 1 << 20, 1 << 20, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.add(req, parent.0, name, false, mode) {
            Ok(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}
