//! The open files of a client: the registry of per-inode I/O states (one per
//! inode, shared by every handle), opening and creating files, and the calls
//! that combine a namespace call with what this client's open files know
//! (sizes grown by unflushed writes, truncation, flushing everything at close).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use alces_proto::pb;
use parking_lot::Mutex;

use crate::cache::BoundedCache;
use crate::error::{Error, Result};
use crate::file::{FileHandle, FileIo, FileState};
use crate::filesize::Ticket;
use crate::namespace::{attr_of, Attr, Caller, FileType, Namespace, NewNode, SetAttr};
use crate::session::OpenList;

/// Most files whose size and mtime at the last open are remembered.
const LAST_OPENS: usize = 100_000;

/// Every file this client has open, and the shared I/O state they use.
pub(crate) struct OpenFiles {
    /// What every open file shares.
    pub(crate) io: Arc<FileIo>,
    /// Per-inode I/O state, alive while a handle or background write holds it.
    files: Mutex<HashMap<u64, Weak<FileState>>>,
    /// Size and mtime of each file at its last open (close-to-open cache check).
    last_open: BoundedCache<u64, (u64, i64)>,
    /// Opens inherited from the dead process whose session this client
    /// continues, by inode (counted in `io`'s opens too, so a
    /// re-registration lists them).
    inherited: Mutex<HashMap<u64, u32>>,
}

impl OpenList for OpenFiles {
    fn open_inodes(&self) -> Vec<u64> {
        self.io.open_inodes()
    }

    fn write_sessions(&self) -> Vec<pb::OpenWriteSession> {
        self.live_states()
            .iter()
            .flat_map(|f| f.write_sessions())
            .map(|(chunk_id, version)| pb::OpenWriteSession { chunk_id, version })
            .collect()
    }
}

impl OpenFiles {
    /// No open files yet; files will be opened through `ns`.
    pub(crate) fn new(ns: Namespace) -> Self {
        Self {
            io: Arc::new(FileIo::new(ns)),
            files: Mutex::new(HashMap::new()),
            last_open: BoundedCache::new(LAST_OPENS, None),
            inherited: Mutex::new(HashMap::new()),
        }
    }

    /// Takes over the opens a dead process held in the session (one entry
    /// per open).
    pub(crate) fn inherit_opens(&self, inodes: &[u64]) {
        let mut m = self.inherited.lock();
        for ino in inodes {
            *m.entry(*ino).or_insert(0) += 1;
            self.io.count_open(*ino);
        }
    }

    /// Releases one inherited open of `inode`; false when none is left.
    pub(crate) async fn release_inherited(&self, inode: u64) -> Result<bool> {
        {
            let mut m = self.inherited.lock();
            match m.get_mut(&inode) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    m.remove(&inode);
                }
                None => return Ok(false),
            }
        }
        self.io.release_inode(inode).await.map(|()| true)
    }

    fn ns(&self) -> &Namespace {
        &self.io.ns
    }

    fn live_states(&self) -> Vec<Arc<FileState>> {
        self.files
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// The shared per-inode I/O state (write-behind, chunk location cache).
    fn file_state(&self, inode: u64) -> Arc<FileState> {
        let mut m = self.files.lock();
        if let Some(st) = m.get(&inode).and_then(|w| w.upgrade()) {
            return st;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let chunk_size = self.io.session().chunk_size();
        let st = Arc::new(FileState::new(self.io.clone(), inode, chunk_size));
        m.insert(inode, Arc::downgrade(&st));
        st
    }

    /// The I/O state of `inode` if this client has it open.
    fn open_state(&self, inode: u64) -> Option<Arc<FileState>> {
        self.files.lock().get(&inode)?.upgrade()
    }

    /// Attributes of `inode` with the size as this client knows it: including
    /// data it wrote but did not flush yet and its own truncates.
    pub(crate) async fn getattr_local(&self, inode: u64) -> Result<Attr> {
        // With leases the lease cache answers instead, kept coherent by the
        // master (the fresh-directory record is not).
        let leases = self.io.session().cache().supported();
        if !leases {
            if let Some(a) = self.ns().take_fresh_dir(inode) {
                return Ok(a);
            }
        }
        let st = self.open_state(inode);
        // The cache may answer unless this client wrote or truncated the
        // file while it is open: such changes reach the master with no break
        // for this session, and the size this client knows is combined below.
        if leases && st.as_ref().is_none_or(|st| !st.changed()) {
            return self.ns().getattr_cached(inode).await;
        }
        let ticket = st.as_ref().map(|st| st.ticket());
        let mut a = self.ns().getattr(inode).await?;
        if let (Some(st), Some(t)) = (st, ticket) {
            a.size = st.observe(t, a.size);
        }
        Ok(a)
    }

    /// Size of `inode` as this client knows it, while this client has the
    /// file open.
    pub(crate) fn local_size(&self, inode: u64) -> Option<u64> {
        Some(self.open_state(inode)?.known_size())
    }

    /// `attr` with the size grown to the size this client knows, while it has
    /// the file open.
    pub(crate) fn with_local_size(&self, mut attr: Attr) -> Attr {
        if let Some(size) = self.local_size(attr.inode) {
            attr.size = attr.size.max(size);
        }
        attr
    }

    /// Changes attributes. A size change truncates or extends the file (flushing
    /// this client's buffered writes first).
    pub(crate) async fn setattr(&self, inode: u64, set: &SetAttr, caller: &Caller) -> Result<Attr> {
        self.io.session().check_writable()?;
        self.ns().forget_fresh_dir(inode);
        let mut attr = None;
        if let Some(size) = set.size {
            let st = self.file_state(inode);
            attr = Some(st.truncate(size, caller).await?);
        }
        let st = self.open_state(inode);
        let ticket = st.as_ref().map(|st| st.ticket());
        let mut a = match Namespace::setattr_request(inode, set, caller) {
            Some(req) => self.ns().setattr_raw(req).await?,
            None => match attr {
                Some(a) => a,
                None => self.ns().getattr(inode).await?,
            },
        };
        if let (Some(st), Some(t)) = (st, ticket) {
            a.size = st.observe(t, a.size);
        }
        self.ns().changed(&[inode]);
        Ok(a)
    }

    /// Truncates or extends `inode` to `size` bytes.
    pub(crate) async fn truncate(&self, inode: u64, size: u64, caller: &Caller) -> Result<Attr> {
        self.io.session().check_writable()?;
        let r = self.file_state(inode).truncate(size, caller).await;
        self.ns().changed(&[inode]);
        r
    }

    /// Opens `inode` for I/O with open(2) `flags`. Fetches fresh attributes
    /// (close-to-open consistency) and marks the file open in the session.
    /// `reopen`: see [`crate::namespace`]'s `open`.
    pub(crate) async fn open(
        &self,
        inode: u64,
        flags: i32,
        caller: &Caller,
        reopen: bool,
    ) -> Result<FileHandle> {
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            self.io.session().check_writable()?;
        }
        let st = self.file_state(inode);
        let ticket = st.ticket();
        let mut r = self.ns().open(inode, flags, caller, reopen).await?;
        let first = r.first_chunk.take();
        let h = self.opened(&st, ticket, attr_of(r)?, flags, caller).await?;
        // After `opened`, which drops the locations cached by earlier opens; an
        // O_TRUNC open has just freed the chunk.
        if let Some(first) = first.filter(|_| flags & libc::O_TRUNC == 0) {
            st.seed_location(0, first);
        }
        Ok(h)
    }

    /// Creates (or, unless `node.exclusive`, finds) the regular file `name` in
    /// `parent` and opens it with open(2) `flags`, in one round trip to the
    /// master.
    pub(crate) async fn create_open(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        flags: i32,
        caller: &Caller,
    ) -> Result<FileHandle> {
        if node.kind != FileType::Regular {
            return Err(Error::new(
                libc::EINVAL,
                format!(
                    "create_open makes regular files only, not {:?}; use mknod",
                    node.kind
                ),
            ));
        }
        let r = self
            .ns()
            .mknod_call(parent, name, node, true, caller)
            .await?;
        let mut attr = attr_of(r)?;
        if attr.kind != FileType::Regular as i32 {
            let what = if attr.kind == FileType::Directory as i32 {
                libc::EISDIR
            } else {
                libc::EEXIST
            };
            return Err(Error::new(
                what,
                "the name exists and is not a regular file",
            ));
        }
        // The size the master answered can be combined with this client's own
        // writes only if no handle of this client had the file open while the
        // call was in flight; otherwise ask again with a ticket taken now.
        let had_state = self.open_state(attr.inode).is_some();
        let st = self.file_state(attr.inode);
        let ticket = st.ticket();
        if had_state {
            match self.ns().getattr(attr.inode).await {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.io.release_inode(attr.inode).await;
                    return Err(e);
                }
            }
        }
        self.opened(&st, ticket, attr, flags, caller).await
    }

    /// The local half of an open, after the master marked `attr.inode` open in
    /// this session: counts the handle, truncates for `O_TRUNC`, and decides
    /// whether the kernel may keep its page cache.
    async fn opened(
        &self,
        st: &Arc<FileState>,
        ticket: Ticket,
        mut attr: Attr,
        flags: i32,
        caller: &Caller,
    ) -> Result<FileHandle> {
        let inode = attr.inode;
        let acc = flags & libc::O_ACCMODE;
        self.io.count_open(inode);
        st.set_caller(caller);
        if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY && attr.size > 0 {
            match st.truncate(0, caller).await {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.io.release_inode(inode).await;
                    return Err(e);
                }
            }
        }
        attr.size = st.opened(ticket, &attr);
        let now = (attr.size, attr.mtime_ns);
        let keep_cache = self.last_open.insert(inode, now) == Some(now);
        Ok(FileHandle::new(st.clone(), attr, flags, keep_cache))
    }

    /// Flushes every open file's buffered writes; returns the first error.
    pub(crate) async fn flush_all(&self) -> Result<()> {
        let mut first_err = None;
        for st in self.live_states() {
            if let Err(e) = st.flush().await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
