//! Namespace calls: every call on names, attributes, directories and extended
//! attributes, each one master round trip through the session's retrying
//! [`Session::call`], plus the directory attributes those replies bring back
//! (kept for one GETATTR, see [`ClientConfig::dir_attr_ttl`](crate::ClientConfig::dir_attr_ttl)).
//!
//! The layer above (open files) adds what needs the I/O state: sizes known
//! from this client's own writes, truncation and opening files.

use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::pb;

use crate::cache::BoundedCache;
use crate::error::{Error, Result};
use crate::leases::{Cached, Ticket};
use crate::names::{validate_name, validate_symlink_target};
use crate::session::Session;

pub use alces_proto::pb::{Attr, DirEntry, FileType, StatfsReply};

/// Most directories whose attributes are kept after this client's own entry
/// changes.
const FRESH_DIRS: usize = 10_000;

/// Entries asked for per `Readdir` page (the master's largest page).
const READDIR_PAGE: u32 = 10_000;

/// The identity of the process on whose behalf a call is made.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Process id (informational).
    pub pid: u32,
}

impl Caller {
    /// A caller with `uid` and `gid` and no supplementary groups.
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Self {
            uid,
            gid,
            groups: Vec::new(),
            pid,
        }
    }

    /// The identity of the current process.
    pub fn current() -> Self {
        // SAFETY: these libc calls have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Self::new(uid, gid, std::process::id())
    }

    pub(crate) fn to_pb(&self) -> pb::Caller {
        pb::Caller {
            uid: self.uid,
            gid: self.gid,
            groups: self.groups.clone(),
            pid: self.pid,
        }
    }
}

/// A time to set on an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The master's current time.
    Now,
    /// Nanoseconds since the Unix epoch.
    At(i64),
}

/// Attribute changes of [`Client::setattr`](crate::Client::setattr); `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (07777).
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// New size (truncate or extend; done with chunk work as needed).
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<SetTime>,
    /// Modification time.
    pub mtime: Option<SetTime>,
    /// Change time (nanoseconds since the epoch).
    pub ctime: Option<i64>,
}

/// Flags of [`Client::rename`](crate::Client::rename) (Linux renameat2 values).
pub mod rename_flags {
    /// Fail with `EEXIST` when the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Swap source and target atomically.
    pub const EXCHANGE: u32 = 2;
}

/// What [`Client::mknod`](crate::Client::mknod) and
/// [`Client::create_open`](crate::Client::create_open) create in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode {
    /// Kind of node (`create_open` takes only [`FileType::Regular`]).
    pub kind: FileType,
    /// Permission bits (07777).
    pub mode: u32,
    /// Bits cleared from `mode`.
    pub umask: u32,
    /// Device number of a character or block device.
    pub rdev: u64,
    /// Fail with `EEXIST` when the name exists (`O_EXCL`); otherwise
    /// `create_open` opens an existing regular file.
    pub exclusive: bool,
}

impl NewNode {
    /// A regular file with permission bits `mode`, no umask, created
    /// exclusively.
    pub fn file(mode: u32) -> Self {
        Self {
            kind: FileType::Regular,
            mode,
            umask: 0,
            rdev: 0,
            exclusive: true,
        }
    }
}

/// Which entry removal [`Namespace::remove_entry`] does.
#[derive(Clone, Copy)]
enum Removal {
    Unlink,
    Rmdir,
}

/// The namespace calls of a session and the directory attributes their replies
/// brought back. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Namespace {
    pub(crate) session: Session,
    /// Directory attributes returned with this client's own entry changes, kept
    /// for one GETATTR (see [`ClientConfig::dir_attr_ttl`](crate::ClientConfig::dir_attr_ttl)).
    fresh_dirs: Arc<BoundedCache<u64, Attr>>,
}

fn name_bytes(name: &[u8]) -> Result<Vec<u8>> {
    validate_name(name)?;
    Ok(name.to_vec())
}

/// The attributes of a master reply.
pub(crate) fn attr_of(r: pb::AttrReply) -> Result<Attr> {
    r.attr
        .ok_or_else(|| Error::io("the master answered without attributes"))
}

impl Namespace {
    /// The namespace calls of `session`.
    pub(crate) fn new(session: Session) -> Self {
        let ttl = session.config().dir_attr_ttl;
        Self {
            session,
            fresh_dirs: Arc::new(BoundedCache::new(FRESH_DIRS, Some(ttl))),
        }
    }

    /// Looks up `name` in directory `parent`: answered from the lease cache
    /// when it holds the name (or knows it is missing), else by the master,
    /// whose leased answer is cached.
    pub(crate) async fn lookup(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Attr> {
        let name = name_bytes(name)?;
        let cache = self.session.cache();
        match cache.lookup(parent, &name) {
            Some(Cached::Found(a)) => return Ok(a),
            Some(Cached::Missing) => return Err(missing(parent, &name)),
            None => {}
        }
        let t = cache.ticket();
        let c = caller.to_pb();
        let r = self
            .session
            .call("lookup", |mut m, sid| {
                let req = pb::EntryRequest {
                    tag: None,
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    caller: Some(c.clone()),
                    negative_reply: true,
                };
                async move { m.lookup(req).await }
            })
            .await?;
        if r.leased {
            cache.put_lookup(t, parent, &name, r.attr.as_ref());
        } else if let Some(a) = &r.attr {
            cache.note_unleased(t, a);
        }
        r.attr.ok_or_else(|| missing(parent, &name))
    }

    /// Attributes of `inode`, from the lease cache when it holds them, else
    /// from the master (and cached when leased). Only for an inode this client
    /// does not have open: its own writes change the attributes without a
    /// break (see [`Namespace::getattr`]).
    pub(crate) async fn getattr_cached(&self, inode: u64) -> Result<Attr> {
        let cache = self.session.cache();
        if let Some(a) = cache.getattr(inode) {
            return Ok(a);
        }
        let t = cache.ticket();
        let r = self.getattr_call(inode).await?;
        if r.leased {
            if let Some(a) = &r.attr {
                cache.put_attr(t, a);
            }
        }
        attr_of(r)
    }

    /// Attributes of `inode`, from the master.
    pub(crate) async fn getattr(&self, inode: u64) -> Result<Attr> {
        attr_of(self.getattr_call(inode).await?)
    }

    async fn getattr_call(&self, inode: u64) -> Result<pb::AttrReply> {
        self.session
            .call("getattr", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: None,
                };
                async move { m.get_attr(req).await }
            })
            .await
    }

    /// After this client's own change of `inodes` (their attributes) that did
    /// not go through an entry call: drops them from the lease cache.
    pub(crate) fn changed(&self, inodes: &[u64]) {
        self.session.cache().invalidate(inodes);
    }

    /// After this client's own change of the entry `name` in `parent`,
    /// answered by `r`: the lease cache follows (see
    /// [`MetaCache::changed_entry`](crate::leases::MetaCache::changed_entry)).
    fn entry_changed(&self, t: Ticket, parent: u64, name: &[u8], r: &pb::AttrReply, dir: bool) {
        let (a, p) = (r.attr.as_ref(), r.parent.as_ref());
        self.session
            .cache()
            .changed_entry(t, parent, name, a, p, r.leased, dir);
    }

    /// After a failed change: an error the master chose leaves no trace, but
    /// one from the transport (EIO after retries) may hide a change that was
    /// made, so the whole lease cache is dropped.
    fn failed<T>(&self, r: &Result<T>) {
        if let Err(e) = r {
            if e.errno() == libc::EIO {
                self.session.cache().invalidate(&[0]);
            }
        }
    }

    /// Remembers directory attributes the master returned with an entry change.
    /// Of two answers for one directory the later change wins (higher ctime, then
    /// more links), whatever order the replies arrive in.
    fn note_dirs(&self, attrs: impl IntoIterator<Item = Option<Attr>>) {
        if self.session.config().dir_attr_ttl.is_zero() {
            return;
        }
        for a in attrs.into_iter().flatten() {
            let key = (a.ctime_ns, a.nlink);
            self.fresh_dirs
                .insert_unless(a.inode, a, |old| (old.ctime_ns, old.nlink) > key);
        }
    }

    /// The fresh attributes of directory `inode`, once, if recorded within the TTL.
    pub(crate) fn take_fresh_dir(&self, inode: u64) -> Option<Attr> {
        self.fresh_dirs.take(&inode)
    }

    /// Forgets recorded attributes of `inode` (it was changed some other way).
    pub(crate) fn forget_fresh_dir(&self, inode: u64) {
        self.fresh_dirs.remove(&inode);
    }

    /// The SetAttr request for the fields of `set` other than the size, or
    /// `None` when there are none.
    pub(crate) fn setattr_request(
        inode: u64,
        set: &SetAttr,
        caller: &Caller,
    ) -> Option<pb::SetAttrRequest> {
        let mut req = pb::SetAttrRequest {
            inode,
            caller: Some(caller.to_pb()),
            ..Default::default()
        };
        let mut valid = 0u32;
        if let Some(m) = set.mode {
            valid |= pb::SetAttrField::SetAttrMode as u32;
            req.mode = m & 0o7777;
        }
        if let Some(u) = set.uid {
            valid |= pb::SetAttrField::SetAttrUid as u32;
            req.uid = u;
        }
        if let Some(g) = set.gid {
            valid |= pb::SetAttrField::SetAttrGid as u32;
            req.gid = g;
        }
        match set.atime {
            Some(SetTime::Now) => valid |= pb::SetAttrField::SetAttrAtimeNow as u32,
            Some(SetTime::At(t)) => {
                valid |= pb::SetAttrField::SetAttrAtime as u32;
                req.atime_ns = t;
            }
            None => {}
        }
        match set.mtime {
            Some(SetTime::Now) => valid |= pb::SetAttrField::SetAttrMtimeNow as u32,
            Some(SetTime::At(t)) => {
                valid |= pb::SetAttrField::SetAttrMtime as u32;
                req.mtime_ns = t;
            }
            None => {}
        }
        if let Some(t) = set.ctime {
            valid |= pb::SetAttrField::SetAttrCtime as u32;
            req.ctime_ns = t;
        }
        req.valid = valid;
        (valid != 0).then_some(req)
    }

    pub(crate) async fn setattr_raw(&self, req: pb::SetAttrRequest) -> Result<Attr> {
        // Growing a file can wait while the master cuts bytes stored past its
        // old end, or answer EAGAIN while another client's write session may
        // own them: retried for a bounded time.
        let resize = req.valid & pb::SetAttrField::SetAttrSize as u32 != 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
                .session
                .call("setattr", |mut m, sid| {
                    let mut req = req.clone();
                    req.session_id = sid;
                    async move { m.set_attr(req).await }
                })
                .await;
            match r {
                Err(e) if resize && e.errno() == libc::EAGAIN && Instant::now() < deadline => {
                    tracing::debug!(inode = req.inode, error = %e, "size change must wait; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                r => {
                    // Its own change: no break comes for it.
                    self.changed(&[req.inode]);
                    return attr_of(r?);
                }
            }
        }
    }

    /// Creates a regular file, fifo, socket or device node.
    pub(crate) async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        caller: &Caller,
    ) -> Result<Attr> {
        attr_of(self.mknod_call(parent, name, node, false, caller).await?)
    }

    /// Mknod with `open` set: creates (or, unless exclusive, finds) the node and
    /// marks it open in the session in the same call.
    pub(crate) async fn mknod_call(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        open: bool,
        caller: &Caller,
    ) -> Result<pb::AttrReply> {
        let name = name_bytes(name)?;
        self.session.check_writable()?;
        let c = caller.to_pb();
        let node = *node;
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once("mknod", |mut m, sid, tag| {
                let req = pb::MknodRequest {
                    tag: Some(tag),
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    kind: node.kind as i32,
                    mode: node.mode,
                    umask: node.umask,
                    rdev: node.rdev,
                    caller: Some(c.clone()),
                    exclusive: node.exclusive,
                    open,
                };
                async move { m.mknod(req).await }
            })
            .await;
        self.failed(&r);
        let r = r?;
        self.entry_changed(t, parent, &name, &r, false);
        self.note_dirs([r.parent]);
        Ok(r)
    }

    /// Creates a directory.
    pub(crate) async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: &Caller,
    ) -> Result<Attr> {
        let name = name_bytes(name)?;
        self.session.check_writable()?;
        let c = caller.to_pb();
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once("mkdir", |mut m, sid, tag| {
                let req = pb::MkdirRequest {
                    tag: Some(tag),
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    mode,
                    umask,
                    caller: Some(c.clone()),
                };
                async move { m.mkdir(req).await }
            })
            .await;
        self.failed(&r);
        let r = r?;
        self.entry_changed(t, parent, &name, &r, true);
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Creates a symbolic link `name` in `parent` pointing at `target`.
    pub(crate) async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        let name = name_bytes(name)?;
        validate_symlink_target(target)?;
        self.session.check_writable()?;
        let c = caller.to_pb();
        let target = target.to_vec();
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once("symlink", |mut m, sid, tag| {
                let req = pb::SymlinkRequest {
                    tag: Some(tag),
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    target: target.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.symlink(req).await }
            })
            .await;
        self.failed(&r);
        let r = r?;
        self.entry_changed(t, parent, &name, &r, false);
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Creates a hard link to `inode` as `new_name` in `new_parent`.
    pub(crate) async fn link(
        &self,
        inode: u64,
        new_parent: u64,
        new_name: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        let name = name_bytes(new_name)?;
        self.session.check_writable()?;
        let c = caller.to_pb();
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once("link", |mut m, sid, tag| {
                let req = pb::LinkRequest {
                    tag: Some(tag),
                    session_id: sid,
                    inode,
                    new_parent,
                    new_name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.link(req).await }
            })
            .await;
        self.failed(&r);
        let r = r?;
        self.entry_changed(t, new_parent, &name, &r, false);
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Removes the non-directory entry `name` from `parent`.
    pub(crate) async fn unlink(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.remove_entry(Removal::Unlink, parent, name, caller)
            .await
    }

    /// Removes the empty directory `name` from `parent`.
    pub(crate) async fn rmdir(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.remove_entry(Removal::Rmdir, parent, name, caller)
            .await
    }

    async fn remove_entry(
        &self,
        how: Removal,
        parent: u64,
        name: &[u8],
        caller: &Caller,
    ) -> Result<()> {
        let name = name_bytes(name)?;
        self.session.check_writable()?;
        let c = caller.to_pb();
        let what = match how {
            Removal::Unlink => "unlink",
            Removal::Rmdir => "rmdir",
        };
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once(what, |mut m, sid, tag| {
                let req = pb::EntryRequest {
                    tag: Some(tag),
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    caller: Some(c.clone()),
                    negative_reply: false,
                };
                async move {
                    match how {
                        Removal::Unlink => m.unlink(req).await,
                        Removal::Rmdir => m.rmdir(req).await,
                    }
                }
            })
            .await;
        self.failed(&r);
        let r = r?;
        let cache = self.session.cache();
        cache.changed_entry(t, parent, &name, None, r.parent.as_ref(), r.leased, false);
        self.note_dirs([r.parent]);
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`; `flags` from [`rename_flags`].
    pub(crate) async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        caller: &Caller,
    ) -> Result<()> {
        let name = name_bytes(name)?;
        let new_name = name_bytes(new_name)?;
        if flags & !(rename_flags::NOREPLACE | rename_flags::EXCHANGE) != 0
            || flags == rename_flags::NOREPLACE | rename_flags::EXCHANGE
        {
            return Err(Error::new(
                libc::EINVAL,
                format!("unsupported rename flags {flags:#x}"),
            ));
        }
        self.session.check_writable()?;
        let c = caller.to_pb();
        let t = self.session.cache().ticket();
        let r = self
            .session
            .call_once("rename", |mut m, sid, tag| {
                let req = pb::RenameRequest {
                    tag: Some(tag),
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    new_parent,
                    new_name: new_name.clone(),
                    flags,
                    caller: Some(c.clone()),
                };
                async move { m.rename(req).await }
            })
            .await;
        self.failed(&r);
        let r = r?;
        // An exchange leaves both names taken: only dropped, never updated.
        let leased = r.leased && flags & rename_flags::EXCHANGE == 0;
        self.session.cache().renamed(
            t,
            parent,
            &name,
            new_parent,
            &new_name,
            r.parent.as_ref(),
            r.new_parent.as_ref().or(r.parent.as_ref()),
            leased,
        );
        self.note_dirs([r.parent, r.new_parent]);
        Ok(())
    }

    /// Target of the symbolic link `inode`.
    pub(crate) async fn readlink(&self, inode: u64) -> Result<Vec<u8>> {
        let r = self
            .session
            .call("readlink", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: None,
                };
                async move { m.readlink(req).await }
            })
            .await?;
        Ok(r.target)
    }

    /// One page of the directory `inode` in name order, after `after_name`.
    pub(crate) async fn readdir_page(
        &self,
        inode: u64,
        after_name: &[u8],
        limit: u32,
        plus: bool,
        caller: Option<&Caller>,
    ) -> Result<pb::ReaddirReply> {
        let after = after_name.to_vec();
        let caller = caller.map(Caller::to_pb);
        self.session
            .call("readdir", |mut m, sid| {
                let req = pb::ReaddirRequest {
                    session_id: sid,
                    inode,
                    after_name: after.clone(),
                    limit,
                    plus,
                    caller: caller.clone(),
                };
                async move { m.readdir(req).await }
            })
            .await
    }

    /// The whole directory `inode` (paging through it) and its parent inode.
    /// With `plus`, each entry comes with its attributes, and what the master
    /// leased goes to the lease cache (see
    /// [`MetaCache::put_listing`](crate::leases::MetaCache::put_listing)): a
    /// `stat` of every listed name then needs no master call.
    /// Directory `inode`'s whole listing (with attributes) and its parent from
    /// the lease cache, when the cache knows it whole (see
    /// [`MetaCache::listing`](crate::leases::MetaCache::listing)); None: list
    /// it with the master.
    pub(crate) fn cached_listing(&self, inode: u64) -> Option<(Vec<DirEntry>, u64)> {
        self.session.cache().listing(inode)
    }

    pub(crate) async fn readdir_all(
        &self,
        inode: u64,
        plus: bool,
        caller: Option<&Caller>,
    ) -> Result<(Vec<DirEntry>, u64)> {
        let cache = self.session.cache();
        // Taken before the first page: a break during any page voids it.
        let t = cache.ticket();
        let mut out: Vec<DirEntry> = Vec::new();
        let mut parent = 0;
        let mut every_page_leased = true;
        loop {
            let after = out.last().map(|e| e.name.clone()).unwrap_or_default();
            let mut page = self
                .readdir_page(inode, &after, READDIR_PAGE, plus, caller)
                .await?;
            parent = if page.parent != 0 {
                page.parent
            } else {
                parent
            };
            every_page_leased &= page.leased;
            if !page.leased {
                // Entries are leased only under the directory's lease.
                page.entries.iter_mut().for_each(|e| e.leased = false);
            }
            let n = page.entries.len();
            out.extend(page.entries);
            if page.eof || n == 0 {
                break;
            }
        }
        if plus {
            let leased: Vec<(&[u8], &Attr)> = out
                .iter()
                .filter(|e| e.leased)
                .filter_map(|e| e.attr.as_ref().map(|a| (e, a)))
                .filter(|(e, a)| a.inode == e.inode && e.inode != 0)
                .map(|(e, a)| (e.name.as_slice(), a))
                .collect();
            let complete = every_page_leased && leased.len() == out.len();
            cache.put_listing(t, inode, parent, &leased, complete);
        }
        Ok((out, parent))
    }

    /// Opens `inode` in the session (the master counts it open) and returns
    /// its fresh attributes and, for reading, chunk 0's locations. `reopen`
    /// asks the master to reopen a file the session already holds open with
    /// the accesses it granted then (`OpenRequest.reopen`).
    pub(crate) async fn open(
        &self,
        inode: u64,
        flags: i32,
        caller: &Caller,
        reopen: bool,
    ) -> Result<pb::AttrReply> {
        let c = caller.to_pb();
        self.session
            .call("open", |mut m, sid| {
                let req = pb::OpenRequest {
                    session_id: sid,
                    inode,
                    flags: flags as u32,
                    caller: Some(c.clone()),
                    reopen,
                };
                async move { m.open(req).await }
            })
            .await
    }

    /// Releases one open of `inode` in the session.
    pub(crate) async fn release(&self, inode: u64) -> Result<()> {
        self.session
            .call("release", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: None,
                };
                async move { m.release(req).await }
            })
            .await?;
        Ok(())
    }

    /// Space and inode counts of the filesystem.
    pub(crate) async fn statfs(&self) -> Result<StatfsReply> {
        self.statfs_at(self.session.root()).await
    }

    /// Space and inode counts seen from `inode`: the nearest directory quota at
    /// or above it when there is one (size = limit, usage = the tree's usage).
    pub(crate) async fn statfs_at(&self, inode: u64) -> Result<StatfsReply> {
        self.session
            .call("statfs", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: None,
                };
                async move { m.statfs(req).await }
            })
            .await
    }

    /// Value of extended attribute `name` of `inode`.
    pub(crate) async fn getxattr(
        &self,
        inode: u64,
        name: &[u8],
        caller: &Caller,
    ) -> Result<Vec<u8>> {
        let name = name.to_vec();
        let c = caller.to_pb();
        let r = self
            .session
            .call("getxattr", |mut m, sid| {
                let req = pb::XattrRequest {
                    tag: None,
                    session_id: sid,
                    inode,
                    name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.get_xattr(req).await }
            })
            .await?;
        Ok(r.value)
    }

    /// Sets extended attribute `name`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub(crate) async fn setxattr(
        &self,
        inode: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        caller: &Caller,
    ) -> Result<()> {
        self.session.check_writable()?;
        let name = name.to_vec();
        let value = value.to_vec();
        let c = caller.to_pb();
        let r = self
            .session
            .call_once("setxattr", |mut m, sid, tag| {
                let req = pb::SetXattrRequest {
                    tag: Some(tag),
                    session_id: sid,
                    inode,
                    name: name.clone(),
                    value: value.clone(),
                    flags,
                    caller: Some(c.clone()),
                };
                async move { m.set_xattr(req).await }
            })
            .await;
        self.changed(&[inode]);
        r.map(|_| ())
    }

    /// Names of the extended attributes of `inode`.
    pub(crate) async fn listxattr(&self, inode: u64, caller: &Caller) -> Result<Vec<Vec<u8>>> {
        let c = caller.to_pb();
        let r = self
            .session
            .call("listxattr", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: Some(c.clone()),
                };
                async move { m.list_xattr(req).await }
            })
            .await?;
        Ok(r.names)
    }

    /// Removes extended attribute `name` of `inode`.
    pub(crate) async fn removexattr(&self, inode: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.session.check_writable()?;
        let name = name.to_vec();
        let c = caller.to_pb();
        let r = self
            .session
            .call_once("removexattr", |mut m, sid, tag| {
                let req = pb::XattrRequest {
                    tag: Some(tag),
                    session_id: sid,
                    inode,
                    name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.remove_xattr(req).await }
            })
            .await;
        self.changed(&[inode]);
        r.map(|_| ())
    }

    /// Resolves a path relative to this client's root ("/a/b", "a/b"; symlinks
    /// are not followed) to its attributes.
    pub(crate) async fn resolve(&self, path: &str) -> Result<Attr> {
        let mut attr = self.getattr(self.session.root()).await?;
        let caller = Caller::current();
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(Error::new(
                    libc::EINVAL,
                    format!("path '{path}' contains '..'; use a normalised path"),
                ));
            }
            if attr.kind != FileType::Directory as i32 {
                return Err(Error::new(
                    libc::ENOTDIR,
                    format!("a component before '{comp}' in '{path}' is not a directory"),
                ));
            }
            attr = self
                .lookup(attr.inode, comp.as_bytes(), &caller)
                .await
                .map_err(|e| Error::new(e.errno(), format!("'{path}': {comp}: {}", e.message())))?;
        }
        Ok(attr)
    }

    /// Creates the directory `path` and any missing parents (like `mkdir -p`) and
    /// returns its attributes.
    pub(crate) async fn mkdir_p(&self, path: &str, mode: u32) -> Result<Attr> {
        let mut attr = self.getattr(self.session.root()).await?;
        let caller = Caller::current();
        for comp in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
            if comp == ".." {
                return Err(Error::new(
                    libc::EINVAL,
                    format!("path '{path}' contains '..'; use a normalised path"),
                ));
            }
            attr = match self.lookup(attr.inode, comp.as_bytes(), &caller).await {
                Ok(a) => a,
                Err(e) if e.errno() == libc::ENOENT => {
                    match self
                        .mkdir(attr.inode, comp.as_bytes(), mode, 0, &caller)
                        .await
                    {
                        Ok(a) => a,
                        Err(e) if e.errno() == libc::EEXIST => {
                            self.lookup(attr.inode, comp.as_bytes(), &caller).await?
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if attr.kind != FileType::Directory as i32 {
                return Err(Error::new(
                    libc::ENOTDIR,
                    format!("'{comp}' in '{path}' exists and is not a directory"),
                ));
            }
        }
        Ok(attr)
    }
}

/// The error of a name that does not exist.
fn missing(parent: u64, name: &[u8]) -> Error {
    Error::new(
        libc::ENOENT,
        format!(
            "no entry {:?} in directory {parent}",
            String::from_utf8_lossy(name)
        ),
    )
}
