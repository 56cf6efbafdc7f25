//! [`Client`], the public face of the library: connect with a
//! [`ClientConfig`], then make namespace calls, open files (each a
//! [`FileHandle`]) and volume calls (in `volumes`). It only composes the
//! layers below it: the session and connections (`session`), namespace calls
//! (`namespace`) and the open files (`open_files`, over `file`).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use alces_proto::net::AuthChannel;
use alces_proto::pb;
use alces_proto::pb::master_client::MasterClient;

use crate::error::Result;
use crate::file::FileHandle;
use crate::locks::{LockConflict, LockSpec, Locks};
use crate::namespace::{Attr, Caller, DirEntry, Namespace, NewNode, SetAttr, StatfsReply};
use crate::open_files::OpenFiles;
use crate::session::{ClientConfig, Inherited, OpenList, ResumeSession, Session};

/// A connected filesystem client. Cheap to clone; all clones share one session.
#[derive(Clone)]
pub struct Client {
    ns: Namespace,
    files: Arc<OpenFiles>,
    locks: Locks,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.ns.session.fmt(f)
    }
}

impl Client {
    /// Connects to the master and registers a session. Retries while the master is
    /// unreachable, for up to `config.reconnect_timeout`. Starts the lease
    /// renewal task on the current tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        Ok(Self::connect_continuing(config, None).await?.0)
    }

    /// [`Client::connect`], continuing the session of a dead process when
    /// `resume` is given (a takeover of its FUSE connection): the master keeps
    /// that session's open files (an unlinked file stays alive), its file
    /// locks and its reply cache. What was inherited is returned: each
    /// inherited open is released by [`Client::release_inherited`]. A session
    /// the master no longer has (expired, closed, or the secret does not
    /// match) is replaced by a new one and nothing is inherited.
    pub async fn connect_continuing(
        config: ClientConfig,
        resume: Option<ResumeSession>,
    ) -> Result<(Client, Inherited)> {
        let session = Session::new(config)?;
        let ns = Namespace::new(session.clone());
        let files = Arc::new(OpenFiles::new(ns.clone()));
        let list: Arc<dyn OpenList> = files.clone();
        session.set_open_list(Arc::downgrade(&list));
        let inherited = session.start_with(resume).await?;
        files.inherit_opens(&inherited.open_inodes);
        let locks = Locks::new(session);
        Ok((Client { ns, files, locks }, inherited))
    }

    /// Runs `f`, the handling of kernel FUSE request `unique` (if given): its
    /// first non-idempotent mutation carries a request id derived from
    /// `unique`, so the master answers the same request resent by the kernel
    /// to a daemon continuing this session with the first outcome.
    pub async fn as_request<F: Future>(&self, unique: Option<u64>, f: F) -> F::Output {
        self.ns.session.with_request(unique, f).await
    }

    /// Tags acknowledge no cached outcome for `window` (a daemon continuing a
    /// dead one's session: the kernel resends that daemon's requests).
    pub fn hold_acks(&self, window: std::time::Duration) {
        self.ns.session.hold_acks(window)
    }

    /// The secret of this client's session with the master (what a process
    /// continuing it must present, see [`Client::connect_continuing`]).
    pub fn session_secret(&self) -> Vec<u8> {
        self.ns.session.session_secret()
    }

    /// Releases one open of `inode` inherited from the process whose session
    /// this client continues (the kernel closed a handle that process had
    /// opened). Returns false, doing nothing, when no inherited open of
    /// `inode` is left.
    pub async fn release_inherited(&self, inode: u64) -> Result<bool> {
        self.files.release_inherited(inode).await
    }

    /// The configuration the client was connected with.
    pub fn config(&self) -> &ClientConfig {
        self.ns.session.config()
    }

    /// A new master client on its own connection, driven by the runtime this is
    /// called in (the connection is made on first use and remade after a failure).
    pub fn new_master_client(&self) -> Result<MasterClient<AuthChannel>> {
        self.ns.session.new_master_client()
    }

    /// How many times the shared master connection was replaced because the
    /// master's address answered with something that is not gRPC; a client from
    /// [`Client::new_master_client`] made when this was lower is worth making
    /// again.
    pub fn master_connections(&self) -> u64 {
        self.ns.session.master_connections()
    }

    /// Runs `f` with master calls going first through `master` (made by
    /// [`Client::new_master_client`] on the runtime that runs `f`). A FUSE thread
    /// that drives its own connection this way answers a call without handing it to
    /// another thread and back. A call that fails on `master` for a transport
    /// reason is retried at once on the shared connection, and from there on as
    /// usual.
    pub async fn with_master<F: Future>(
        &self,
        master: MasterClient<AuthChannel>,
        f: F,
    ) -> F::Output {
        self.ns.session.with_master(master, f).await
    }

    /// Inode of this client's root (the mounted subdirectory).
    pub fn root(&self) -> u64 {
        self.ns.session.root()
    }

    /// Chunk size of the filesystem.
    pub fn chunk_size(&self) -> u64 {
        self.ns.session.chunk_size()
    }

    /// Current session id.
    pub fn session_id(&self) -> u64 {
        self.ns.session.session_id()
    }

    /// Highest master epoch seen.
    pub fn epoch(&self) -> u64 {
        self.ns.session.epoch()
    }

    /// True when the session is read-only.
    pub fn is_read_only(&self) -> bool {
        self.ns.session.is_read_only()
    }

    /// How many times the session was re-registered after a lost connection.
    pub fn reconnects(&self) -> u64 {
        self.ns.session.reconnects()
    }

    /// True once the master accepted this session's lease stream: names and
    /// attributes are then answered from the lease cache, which the master
    /// keeps coherent across mounts, and the kernel should cache nothing
    /// itself (its timeouts would outlive a break).
    pub fn metadata_leases(&self) -> bool {
        self.ns.session.cache().supported()
    }

    /// Lookups and stats answered from the lease cache, and those that went
    /// to the master.
    pub fn lease_cache_counts(&self) -> (u64, u64) {
        self.ns.session.cache().counts()
    }

    /// How many chunk writes were retried with a new write session (stale
    /// version or failed chain).
    pub fn write_retries(&self) -> u64 {
        self.files.io.write_retries.load(Ordering::Relaxed)
    }

    /// Sets, changes or removes a cluster-wide file lock (flock, POSIX record
    /// lock or OFD lock) through open file `handle`. Without `wait` a
    /// conflicting lock fails with `EAGAIN`; with it the call returns once
    /// granted (`EDEADLK` when waiting would deadlock; drop the future to stop
    /// waiting).
    pub async fn set_lock(&self, spec: LockSpec, wait: bool, handle: u64) -> Result<()> {
        self.locks.set(spec, wait, handle).await
    }

    /// The first lock of another owner that conflicts with `spec`, if any.
    pub async fn get_lock(&self, spec: LockSpec) -> Result<Option<LockConflict>> {
        self.locks.get(spec).await
    }

    /// Removes every lock of `owner` on `inode` (no master call when this
    /// session holds none).
    pub async fn release_locks(&self, inode: u64, owner: u64) -> Result<()> {
        self.locks.release(inode, owner).await
    }

    /// The last close of open file `handle`: removes the locks still held by
    /// owners that set locks through it (the open file's own OFD locks and
    /// flocks; a process's POSIX locks already went at its close).
    pub async fn release_handle_locks(&self, handle: u64) -> Result<()> {
        self.locks.release_handle(handle).await
    }

    /// Bytes of write-behind data currently buffered over all files.
    pub fn buffered_bytes(&self) -> u64 {
        self.files.io.buffered.load(Ordering::Relaxed)
    }

    /// Creates a regular file, fifo, socket or device node.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        caller: &Caller,
    ) -> Result<Attr> {
        self.ns.mknod(parent, name, node, caller).await
    }

    /// Creates (or, unless `node.exclusive`, finds) the regular file `name` in
    /// `parent` and opens it with open(2) `flags`, in one round trip to the
    /// master. `node.kind` must be [`FileType::Regular`](crate::FileType).
    pub async fn create_open(
        &self,
        parent: u64,
        name: &[u8],
        node: &NewNode,
        flags: i32,
        caller: &Caller,
    ) -> Result<FileHandle> {
        self.files
            .create_open(parent, name, node, flags, caller)
            .await
    }

    /// Looks up `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Attr> {
        self.ns.lookup(parent, name, caller).await
    }

    /// Attributes of `inode`.
    pub async fn getattr(&self, inode: u64) -> Result<Attr> {
        self.ns.getattr(inode).await
    }

    /// Attributes of `inode` with the size as this client knows it: including
    /// data it wrote but did not flush yet and its own truncates.
    pub async fn getattr_local(&self, inode: u64) -> Result<Attr> {
        self.files.getattr_local(inode).await
    }

    /// Size of `inode` as this client knows it (see [`Client::getattr_local`]),
    /// while this client has the file open.
    pub fn local_size(&self, inode: u64) -> Option<u64> {
        self.files.local_size(inode)
    }

    /// `attr` (answered by the master at some point) with the size grown to the
    /// size this client knows, while it has the file open: the master may not
    /// have seen all of this client's writes when it answered.
    pub fn with_local_size(&self, attr: Attr) -> Attr {
        self.files.with_local_size(attr)
    }

    /// Changes attributes. A size change truncates or extends the file (flushing
    /// this client's buffered writes first).
    pub async fn setattr(&self, inode: u64, set: &SetAttr, caller: &Caller) -> Result<Attr> {
        self.files.setattr(inode, set, caller).await
    }

    /// Creates a directory.
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: &Caller,
    ) -> Result<Attr> {
        self.ns.mkdir(parent, name, mode, umask, caller).await
    }

    /// Creates a symbolic link `name` in `parent` pointing at `target`.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        self.ns.symlink(parent, name, target, caller).await
    }

    /// Creates a hard link to `inode` as `new_name` in `new_parent`.
    pub async fn link(
        &self,
        inode: u64,
        new_parent: u64,
        new_name: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        self.ns.link(inode, new_parent, new_name, caller).await
    }

    /// Removes the non-directory entry `name` from `parent`.
    pub async fn unlink(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.ns.unlink(parent, name, caller).await
    }

    /// Removes the empty directory `name` from `parent`.
    pub async fn rmdir(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.ns.rmdir(parent, name, caller).await
    }

    /// Renames `parent/name` to `new_parent/new_name`; `flags` from [`rename_flags`](crate::rename_flags).
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
        caller: &Caller,
    ) -> Result<()> {
        self.ns
            .rename(parent, name, new_parent, new_name, flags, caller)
            .await
    }

    /// Target of the symbolic link `inode`.
    pub async fn readlink(&self, inode: u64) -> Result<Vec<u8>> {
        self.ns.readlink(inode).await
    }

    /// One page of the directory `inode` in name order, after `after_name`.
    pub async fn readdir_page(
        &self,
        inode: u64,
        after_name: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<pb::ReaddirReply> {
        self.ns
            .readdir_page(inode, after_name, limit, plus, None)
            .await
    }

    /// The whole directory `inode` (paging through it) and its parent inode.
    pub async fn readdir_all(&self, inode: u64, plus: bool) -> Result<(Vec<DirEntry>, u64)> {
        self.ns.readdir_all(inode, plus, None).await
    }

    /// [`Self::readdir_all`] on behalf of `caller` (whose read permission a
    /// credential session's master checks).
    pub async fn readdir_all_as(
        &self,
        inode: u64,
        plus: bool,
        caller: &Caller,
    ) -> Result<(Vec<DirEntry>, u64)> {
        self.ns.readdir_all(inode, plus, Some(caller)).await
    }

    /// Directory `inode`'s whole listing with attributes, and its parent,
    /// from this session's lease cache when it holds the directory whole
    /// (made by this client or listed whole, unchanged since, every entry's
    /// attributes cached); None otherwise. It checks no permission: a caller
    /// answering for a user checks read access on the directory first (the
    /// mount's kernel does, with `default_permissions`).
    pub fn cached_listing(&self, inode: u64) -> Option<(Vec<DirEntry>, u64)> {
        self.ns.cached_listing(inode)
    }

    /// Opens `inode` for I/O with open(2) `flags`. Fetches fresh attributes
    /// (close-to-open consistency) and marks the file open in the session.
    pub async fn open(&self, inode: u64, flags: i32, caller: &Caller) -> Result<FileHandle> {
        self.files.open(inode, flags, caller, false).await
    }

    /// Opens again `inode`, which this session already holds open (a handle
    /// of a daemon this one took over, or the replay of its write journal),
    /// with open(2) `flags`. The master allows it without a permission check
    /// when it granted this session every access `flags` ask at an open the
    /// session still holds, so a root-squashed mount can continue a user's
    /// open of a file root may not open (or one chmodded since); otherwise it
    /// checks it as [`Self::open`].
    pub async fn reopen(&self, inode: u64, flags: i32, caller: &Caller) -> Result<FileHandle> {
        self.files.open(inode, flags, caller, true).await
    }

    /// Space and inode counts of the filesystem.
    pub async fn statfs(&self) -> Result<StatfsReply> {
        self.ns.statfs().await
    }

    /// Space and inode counts seen from `inode`: the nearest directory quota at
    /// or above it when there is one (size = limit, usage = the tree's usage).
    pub async fn statfs_at(&self, inode: u64) -> Result<StatfsReply> {
        self.ns.statfs_at(inode).await
    }

    /// Value of extended attribute `name` of `inode`.
    pub async fn getxattr(&self, inode: u64, name: &[u8], caller: &Caller) -> Result<Vec<u8>> {
        self.ns.getxattr(inode, name, caller).await
    }

    /// Sets extended attribute `name`; `flags` are XATTR_CREATE / XATTR_REPLACE.
    pub async fn setxattr(
        &self,
        inode: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        caller: &Caller,
    ) -> Result<()> {
        self.ns.setxattr(inode, name, value, flags, caller).await
    }

    /// Names of the extended attributes of `inode`.
    pub async fn listxattr(&self, inode: u64, caller: &Caller) -> Result<Vec<Vec<u8>>> {
        self.ns.listxattr(inode, caller).await
    }

    /// Removes extended attribute `name` of `inode`.
    pub async fn removexattr(&self, inode: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.ns.removexattr(inode, name, caller).await
    }

    /// Resolves a path relative to this client's root ("/a/b", "a/b"; symlinks
    /// are not followed) to its attributes.
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        self.ns.resolve(path).await
    }

    /// Creates the directory `path` and any missing parents (like `mkdir -p`) and
    /// returns its attributes.
    pub async fn mkdir_p(&self, path: &str, mode: u32) -> Result<Attr> {
        self.ns.mkdir_p(path, mode).await
    }

    /// Truncates or extends `inode` to `size` bytes.
    pub async fn truncate(&self, inode: u64, size: u64, caller: &Caller) -> Result<Attr> {
        self.files.truncate(inode, size, caller).await
    }

    /// Closes the session `session_id` of a process that died (a FUSE daemon
    /// whose connection this client takes over): its write sessions end, so
    /// this client can write the chunks they held at once.
    pub async fn close_dead_session(&self, session_id: u64) -> Result<()> {
        if session_id == 0 || session_id == self.session_id() {
            return Ok(());
        }
        self.ns.session.close_other(session_id).await
    }

    /// Flushes every file's buffered writes to the chunkservers (the session
    /// stays open).
    pub async fn flush_all(&self) -> Result<()> {
        self.files.flush_all().await
    }

    /// Flushes every file's buffered writes and closes the session with the master.
    pub async fn close(&self) -> Result<()> {
        let flushed = self.files.flush_all().await;
        self.ns.session.close().await;
        flushed
    }
}
