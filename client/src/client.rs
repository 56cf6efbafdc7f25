//! The client session with the master: registration, lease renewal, transparent
//! reconnect, and every namespace call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use alces_proto::errno;
use alces_proto::net::AuthChannel;
use alces_proto::pb;
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::pb::master_client::MasterClient;
use parking_lot::Mutex;
use tonic::Status;

use crate::error::{Error, Result};
use crate::file::{FileHandle, FileState};
use crate::filesize::Ticket;
use crate::names::{validate_name, validate_symlink_target};

pub use alces_proto::pb::{Attr, DirEntry, FileType, StatfsReply};

/// How to reach and use a filesystem.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Master address, `host:port` (re-resolved on every reconnect).
    pub master: String,
    /// Cluster secret (see `alces_proto::auth::load_secret`).
    pub secret: Arc<str>,
    /// Subdirectory of the filesystem used as this client's root ("/" = all).
    pub subdir: String,
    /// Open a read-only session: every mutation fails with `EROFS`.
    pub read_only: bool,
    /// Name of this client shown by the master (e.g. "alces-mount /mnt/x").
    pub client_name: String,
    /// How long a call keeps retrying while the master is unreachable before it
    /// fails with `EIO`.
    pub reconnect_timeout: Duration,
    /// Cap of write-behind data buffered in memory over all open files.
    pub write_buffer_bytes: u64,
    /// Buffered bytes of one chunk that trigger sending them in the background.
    pub write_flush_bytes: u64,
    /// Largest readahead window of one open file (0 disables readahead).
    pub readahead_bytes: u64,
    /// Chunk reads (of up to 4 MiB) in flight at once over all files.
    pub max_parallel_reads: usize,
    /// Chunk writes in flight at once per file.
    pub max_parallel_writes: usize,
    /// How long the attributes of a directory that the master returned with this
    /// client's own change of it (create, unlink, rename...) may answer a GETATTR
    /// instead of asking the master again. Use the mount's attribute timeout: it
    /// is the same staleness the kernel's attribute cache already allows.
    pub dir_attr_ttl: Duration,
}

impl ClientConfig {
    /// A configuration with default tuning for `master` and `secret`.
    pub fn new(master: impl Into<String>, secret: Arc<str>) -> Self {
        Self {
            master: master.into(),
            secret,
            subdir: "/".into(),
            read_only: false,
            client_name: "alces-client".into(),
            reconnect_timeout: Duration::from_secs(120),
            write_buffer_bytes: 64 << 20,
            write_flush_bytes: 4 << 20,
            readahead_bytes: 16 << 20,
            max_parallel_reads: 16,
            max_parallel_writes: 4,
            dir_attr_ttl: Duration::from_secs(1),
        }
    }
}

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

    fn to_pb(&self) -> pb::Caller {
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

/// Attribute changes of [`Client::setattr`]; `None` leaves a field alone.
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

/// Flags of [`Client::rename`] (Linux renameat2 values).
pub mod rename_flags {
    /// Fail with `EEXIST` when the target exists.
    pub const NOREPLACE: u32 = 1;
    /// Swap source and target atomically.
    pub const EXCHANGE: u32 = 2;
}

#[derive(Clone, Debug)]
struct SessionState {
    session_id: u64,
    root_inode: u64,
    chunk_size: u64,
    lease_secs: u32,
    read_only: bool,
    cluster_id: String,
    /// Bumped on every successful (re-)registration.
    generation: u64,
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    /// The runtime the client was connected on: background work (write-behind,
    /// read pieces, readahead) always runs there, whichever thread started it.
    rt: tokio::runtime::Handle,
    master: MasterClient<AuthChannel>,
    auth: alces_proto::auth::ClientAuth,
    state: Mutex<SessionState>,
    seen_epoch: AtomicU64,
    open_inodes: Mutex<HashMap<u64, u32>>,
    chunkservers: Mutex<HashMap<String, ChunkserverClient<AuthChannel>>>,
    files: Mutex<HashMap<u64, Weak<FileState>>>,
    /// Size and mtime of each file at its last open (close-to-open cache check).
    last_open: Mutex<HashMap<u64, (u64, i64)>>,
    /// Directory attributes returned with this client's own entry changes, kept
    /// for one GETATTR (see [`ClientConfig::dir_attr_ttl`]).
    fresh_dirs: Mutex<HashMap<u64, (Attr, Instant)>>,
    reconnect: tokio::sync::Mutex<()>,
    /// Write-behind bytes buffered over all files.
    pub(crate) buffered: AtomicU64,
    pub(crate) read_slots: Arc<tokio::sync::Semaphore>,
    closed: AtomicBool,
    /// Reconnects done (for metrics).
    pub(crate) reconnects: AtomicU64,
    /// Chunk writes retried with a new write session.
    pub(crate) write_retries: AtomicU64,
    /// A chunkserver answered WriteMany with UNIMPLEMENTED: send ranges one by one.
    pub(crate) no_write_many: AtomicBool,
}

/// A connected filesystem client. Cheap to clone; all clones share one session.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.state.lock();
        f.debug_struct("Client")
            .field("master", &self.inner.config.master)
            .field("session_id", &s.session_id)
            .field("root_inode", &s.root_inode)
            .finish()
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

tokio::task_local! {
    /// A master client that calls made in this task use first instead of the
    /// shared one (see [`Client::with_master`]).
    static TASK_MASTER: MasterClient<AuthChannel>;
}

/// True when the master no longer knows our session (it restarted or expired it):
/// re-registering with the same id fixes it.
fn session_lost(s: &Status) -> bool {
    errno::is_session_unknown(s)
}

fn name_bytes(name: &[u8]) -> Result<Vec<u8>> {
    validate_name(name)?;
    Ok(name.to_vec())
}

impl Client {
    /// Connects to the master and registers a session. Retries while the master is
    /// unreachable, for up to `config.reconnect_timeout`. Starts the lease
    /// renewal task on the current tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let auth = alces_proto::auth::ClientAuth::new(&config.secret)
            .map_err(|e| Error::new(libc::EINVAL, e.to_string()))?;
        let ch = alces_proto::net::channel(&config.master, &auth)
            .map_err(|e| Error::new(libc::EINVAL, format!("--master: {e}")))?;
        let master = MasterClient::new(ch)
            .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
        let inner = Arc::new(Inner {
            rt: tokio::runtime::Handle::current(),
            read_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_parallel_reads.max(1),
            )),
            config,
            master,
            auth,
            state: Mutex::new(SessionState {
                session_id: 0,
                root_inode: 1,
                chunk_size: alces_proto::geometry::MAX_CHUNK_SIZE,
                lease_secs: 30,
                read_only: false,
                cluster_id: String::new(),
                generation: 0,
            }),
            seen_epoch: AtomicU64::new(0),
            open_inodes: Mutex::new(HashMap::new()),
            chunkservers: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            last_open: Mutex::new(HashMap::new()),
            fresh_dirs: Mutex::new(HashMap::new()),
            reconnect: tokio::sync::Mutex::new(()),
            buffered: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            write_retries: AtomicU64::new(0),
            no_write_many: AtomicBool::new(false),
        });
        let client = Client { inner };
        let deadline = Instant::now() + client.inner.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match client.register(0).await {
                Ok(()) => break,
                Err(RegisterError::Transient(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, master = %client.inner.config.master, "master not reachable yet, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                }
                Err(RegisterError::Transient(e)) | Err(RegisterError::Fatal(e)) => return Err(e),
            }
        }
        let weak = Arc::downgrade(&client.inner);
        tokio::spawn(renew_loop(weak));
        Ok(client)
    }

    async fn register(&self, expected_generation: u64) -> std::result::Result<(), RegisterError> {
        let (session_id, generation) = {
            let s = self.inner.state.lock();
            (s.session_id, s.generation)
        };
        if generation != expected_generation {
            return Ok(());
        }
        // One entry per open handle: the master counts opens per session.
        let open_inodes: Vec<u64> = self
            .inner
            .open_inodes
            .lock()
            .iter()
            .flat_map(|(ino, n)| std::iter::repeat_n(*ino, *n as usize))
            .collect();
        let files: Vec<Arc<FileState>> = self
            .inner
            .files
            .lock()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        let write_sessions = files
            .iter()
            .flat_map(|f| f.write_sessions())
            .map(|(chunk_id, version)| pb::OpenWriteSession { chunk_id, version })
            .collect();
        let req = pb::RegisterSessionRequest {
            client_name: self.inner.config.client_name.clone(),
            subdir: self.inner.config.subdir.clone(),
            read_only: self.inner.config.read_only,
            session_id,
            open_inodes,
            hostname: hostname(),
            seen_epoch: self.inner.seen_epoch.load(Ordering::SeqCst),
            write_sessions,
        };
        let reply = match self.inner.master.clone().register_session(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if errno::is_transient(&s) => {
                return Err(RegisterError::Transient(Error::new(
                    libc::EIO,
                    format!(
                        "master {} unreachable: {}",
                        self.inner.config.master,
                        s.message()
                    ),
                )))
            }
            Err(s) => {
                let e = Error::from_status(&s);
                return Err(RegisterError::Fatal(Error::new(
                    e.errno(),
                    format!(
                        "master {} refused the session: {}",
                        self.inner.config.master,
                        e.message()
                    ),
                )));
            }
        };
        let seen = self.inner.seen_epoch.load(Ordering::SeqCst);
        if reply.epoch < seen {
            // A deposed master: keep retrying until the real one answers.
            return Err(RegisterError::Transient(Error::io(format!(
                "master {} has epoch {} lower than the {seen} already seen; refusing it",
                self.inner.config.master, reply.epoch
            ))));
        }
        let chunk_size =
            alces_proto::geometry::validate_chunk_size(reply.chunk_size).map_err(|e| {
                RegisterError::Fatal(Error::io(format!(
                    "master sent an unusable chunk size: {e}"
                )))
            })?;
        let mut s = self.inner.state.lock();
        if !s.cluster_id.is_empty() && s.cluster_id != reply.cluster_id {
            return Err(RegisterError::Fatal(Error::io(format!(
                "master {} serves cluster {} but this client was using cluster {}; refusing to mix filesystems",
                self.inner.config.master, reply.cluster_id, s.cluster_id
            ))));
        }
        if s.session_id != 0 && s.root_inode != reply.root_inode {
            tracing::warn!(
                old = s.root_inode,
                new = reply.root_inode,
                "root inode changed after reconnect"
            );
        }
        self.inner
            .seen_epoch
            .fetch_max(reply.epoch, Ordering::SeqCst);
        s.session_id = reply.session_id;
        s.root_inode = reply.root_inode;
        s.chunk_size = chunk_size;
        s.lease_secs = reply.lease_secs.max(1);
        s.read_only = reply.read_only || self.inner.config.read_only;
        s.cluster_id = reply.cluster_id;
        s.generation += 1;
        if s.generation > 1 {
            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                session = s.session_id,
                epoch = reply.epoch,
                "session re-registered with the master"
            );
        } else {
            tracing::info!(
                session = s.session_id,
                root = s.root_inode,
                chunk_size,
                "session registered with the master"
            );
        }
        Ok(())
    }

    async fn reregister(&self, failed_generation: u64) -> std::result::Result<(), RegisterError> {
        let _g = self.inner.reconnect.lock().await;
        self.register(failed_generation).await
    }

    /// Starts background work on the runtime the client was connected on.
    pub(crate) fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.rt.spawn(f)
    }

    /// A new master client on its own connection, driven by the runtime this is
    /// called in (the connection is made on first use and remade after a failure).
    pub fn new_master_client(&self) -> Result<MasterClient<AuthChannel>> {
        let ch = alces_proto::net::channel(&self.inner.config.master, &self.inner.auth)
            .map_err(|e| Error::new(libc::EINVAL, format!("--master: {e}")))?;
        Ok(MasterClient::new(ch)
            .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES))
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
        TASK_MASTER.scope(master, f).await
    }

    /// Calls the master, retrying transient failures (and a lost session) with
    /// backoff and re-registration for up to the configured reconnect timeout.
    /// Within [`Client::with_master`] the first attempt goes through the task's
    /// own connection.
    pub(crate) async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(MasterClient<AuthChannel>, u64) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.inner.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(50);
        let mut reregister: Option<u64> = None;
        let mut task_master = TASK_MASTER.try_with(Clone::clone).ok();
        loop {
            if let Some(generation) = reregister.take() {
                match self.reregister(generation).await {
                    Ok(()) => {}
                    Err(RegisterError::Fatal(e)) => return Err(e),
                    Err(RegisterError::Transient(e)) => {
                        if Instant::now() >= deadline {
                            return Err(Error::io(format!("{what}: {}", e.message())));
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(3));
                        reregister = Some(generation);
                        continue;
                    }
                }
            }
            let (sid, generation) = {
                let s = self.inner.state.lock();
                (s.session_id, s.generation)
            };
            let (master, own) = match task_master.take() {
                Some(m) => (m, true),
                None => (self.inner.master.clone(), false),
            };
            match f(master, sid).await {
                Ok(r) => return Ok(r.into_inner()),
                // The task's own connection may have been closed while it sat idle:
                // try the shared one at once before backing off.
                Err(s) if own && errno::is_transient(&s) => {
                    tracing::debug!(what, error = %s.message(), "call on the task's own master connection failed, retrying on the shared one");
                }
                Err(s) if errno::is_transient(&s) || session_lost(&s) => {
                    if Instant::now() >= deadline {
                        return Err(Error::io(format!(
                            "{what}: master {} unreachable for {:?}: {}",
                            self.inner.config.master,
                            self.inner.config.reconnect_timeout,
                            s.message()
                        )));
                    }
                    tracing::debug!(what, error = %s.message(), "master call failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(3));
                    reregister = Some(generation);
                }
                Err(s) => return Err(Error::from_status(&s)),
            }
        }
    }

    /// The chunkserver client for `addr` (cached).
    pub(crate) fn chunkserver(&self, addr: &str) -> Result<ChunkserverClient<AuthChannel>> {
        let mut m = self.inner.chunkservers.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ch = alces_proto::net::channel(addr, &self.inner.auth)
            .map_err(|e| Error::io(format!("chunkserver address from the master: {e}")))?;
        let c = ChunkserverClient::new(ch)
            .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Inode of this client's root (the mounted subdirectory).
    pub fn root(&self) -> u64 {
        self.inner.state.lock().root_inode
    }

    /// Chunk size of the filesystem.
    pub fn chunk_size(&self) -> u64 {
        self.inner.state.lock().chunk_size
    }

    /// Current session id.
    pub fn session_id(&self) -> u64 {
        self.inner.state.lock().session_id
    }

    /// Highest master epoch seen.
    pub fn epoch(&self) -> u64 {
        self.inner.seen_epoch.load(Ordering::SeqCst)
    }

    /// True when the session is read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.state.lock().read_only
    }

    /// How many times the session was re-registered after a lost connection.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// How many chunk writes were retried with a new write session (stale
    /// version or failed chain).
    pub fn write_retries(&self) -> u64 {
        self.inner.write_retries.load(Ordering::Relaxed)
    }

    /// Bytes of write-behind data currently buffered over all files.
    pub fn buffered_bytes(&self) -> u64 {
        self.inner.buffered.load(Ordering::Relaxed)
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::new(
                libc::EROFS,
                "the filesystem is mounted read-only",
            ));
        }
        Ok(())
    }

    /// Looks up `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<Attr> {
        let name = name_bytes(name)?;
        let c = caller.to_pb();
        let r = self
            .call("lookup", |mut m, sid| {
                let req = pb::EntryRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.lookup(req).await }
            })
            .await?;
        attr_of(r)
    }

    /// Attributes of `inode`.
    pub async fn getattr(&self, inode: u64) -> Result<Attr> {
        let r = self
            .call("getattr", |mut m, sid| {
                let req = pb::InodeRequest {
                    session_id: sid,
                    inode,
                    caller: None,
                };
                async move { m.get_attr(req).await }
            })
            .await?;
        attr_of(r)
    }

    /// Attributes of `inode` with the size as this client knows it: including
    /// data it wrote but did not flush yet and its own truncates.
    pub async fn getattr_local(&self, inode: u64) -> Result<Attr> {
        if let Some(a) = self.take_fresh_dir(inode) {
            return Ok(a);
        }
        let st = self.open_state(inode);
        let ticket = st.as_ref().map(|st| st.ticket());
        let mut a = self.getattr(inode).await?;
        if let (Some(st), Some(t)) = (st, ticket) {
            a.size = st.observe(t, a.size);
        }
        Ok(a)
    }

    /// Remembers directory attributes the master returned with an entry change.
    /// Of two answers for one directory the later change wins (higher ctime, then
    /// more links), whatever order the replies arrive in.
    fn note_dirs(&self, attrs: impl IntoIterator<Item = Option<Attr>>) {
        let ttl = self.inner.config.dir_attr_ttl;
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut m = self.inner.fresh_dirs.lock();
        if m.len() > 10_000 {
            m.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        }
        for a in attrs.into_iter().flatten() {
            match m.get(&a.inode) {
                Some((old, _)) if (old.ctime_ns, old.nlink) > (a.ctime_ns, a.nlink) => {}
                _ => {
                    m.insert(a.inode, (a, now));
                }
            }
        }
    }

    /// The fresh attributes of directory `inode`, once, if recorded within the TTL.
    fn take_fresh_dir(&self, inode: u64) -> Option<Attr> {
        let (a, at) = self.inner.fresh_dirs.lock().remove(&inode)?;
        (at.elapsed() < self.inner.config.dir_attr_ttl).then_some(a)
    }

    /// Forgets recorded attributes of `inode` (it was changed some other way).
    fn forget_fresh_dir(&self, inode: u64) {
        self.inner.fresh_dirs.lock().remove(&inode);
    }

    /// Size of `inode` as this client knows it (see [`Client::getattr_local`]),
    /// while this client has the file open.
    pub fn local_size(&self, inode: u64) -> Option<u64> {
        Some(self.open_state(inode)?.known_size())
    }

    /// `attr` (answered by the master at some point) with the size grown to the
    /// size this client knows, while it has the file open: the master may not
    /// have seen all of this client's writes when it answered.
    pub fn with_local_size(&self, mut attr: Attr) -> Attr {
        if let Some(size) = self.local_size(attr.inode) {
            attr.size = attr.size.max(size);
        }
        attr
    }

    /// The I/O state of `inode` if this client has it open.
    fn open_state(&self, inode: u64) -> Option<Arc<FileState>> {
        self.inner.files.lock().get(&inode)?.upgrade()
    }

    /// Changes attributes. A size change truncates or extends the file (flushing
    /// this client's buffered writes first).
    pub async fn setattr(&self, inode: u64, set: &SetAttr, caller: &Caller) -> Result<Attr> {
        self.check_writable()?;
        self.forget_fresh_dir(inode);
        let mut attr = None;
        if let Some(size) = set.size {
            let st = self.file_state(inode);
            attr = Some(st.truncate(size, caller).await?);
        }
        let st = self.open_state(inode);
        let ticket = st.as_ref().map(|st| st.ticket());
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
        let mut a = if valid == 0 {
            match attr {
                Some(a) => a,
                None => self.getattr(inode).await?,
            }
        } else {
            req.valid = valid;
            self.setattr_raw(req).await?
        };
        if let (Some(st), Some(t)) = (st, ticket) {
            a.size = st.observe(t, a.size);
        }
        Ok(a)
    }

    pub(crate) async fn setattr_raw(&self, req: pb::SetAttrRequest) -> Result<Attr> {
        // Growing a file can wait while the master cuts bytes stored past its
        // old end, or answer EAGAIN while another client's write session may
        // own them: retried for a bounded time.
        let resize = req.valid & pb::SetAttrField::SetAttrSize as u32 != 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
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
                r => return attr_of(r?),
            }
        }
    }

    /// Creates a regular file, fifo, socket or device node.
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: FileType,
        mode: u32,
        umask: u32,
        rdev: u64,
        exclusive: bool,
        caller: &Caller,
    ) -> Result<Attr> {
        let r = self
            .mknod_call(
                parent, name, kind, mode, umask, rdev, exclusive, false, caller,
            )
            .await?;
        attr_of(r)
    }

    /// Creates (or, unless `exclusive`, finds) the regular file `name` in `parent`
    /// and opens it with open(2) `flags`, in one round trip to the master.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_open(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        exclusive: bool,
        caller: &Caller,
    ) -> Result<FileHandle> {
        let r = self
            .mknod_call(
                parent,
                name,
                FileType::Regular,
                mode,
                umask,
                0,
                exclusive,
                true,
                caller,
            )
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
            match self.getattr(attr.inode).await {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.release_inode(attr.inode).await;
                    return Err(e);
                }
            }
        }
        self.opened(&st, ticket, attr, flags, caller).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn mknod_call(
        &self,
        parent: u64,
        name: &[u8],
        kind: FileType,
        mode: u32,
        umask: u32,
        rdev: u64,
        exclusive: bool,
        open: bool,
        caller: &Caller,
    ) -> Result<pb::AttrReply> {
        let name = name_bytes(name)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("mknod", |mut m, sid| {
                let req = pb::MknodRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    kind: kind as i32,
                    mode,
                    umask,
                    rdev,
                    caller: Some(c.clone()),
                    exclusive,
                    open,
                };
                async move { m.mknod(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        Ok(r)
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
        let name = name_bytes(name)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("mkdir", |mut m, sid| {
                let req = pb::MkdirRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    mode,
                    umask,
                    caller: Some(c.clone()),
                };
                async move { m.mkdir(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Creates a symbolic link `name` in `parent` pointing at `target`.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        let name = name_bytes(name)?;
        validate_symlink_target(target)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let target = target.to_vec();
        let r = self
            .call("symlink", |mut m, sid| {
                let req = pb::SymlinkRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    target: target.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.symlink(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Creates a hard link to `inode` as `new_name` in `new_parent`.
    pub async fn link(
        &self,
        inode: u64,
        new_parent: u64,
        new_name: &[u8],
        caller: &Caller,
    ) -> Result<Attr> {
        let name = name_bytes(new_name)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("link", |mut m, sid| {
                let req = pb::LinkRequest {
                    session_id: sid,
                    inode,
                    new_parent,
                    new_name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.link(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        attr_of(r)
    }

    /// Removes the non-directory entry `name` from `parent`.
    pub async fn unlink(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        let name = name_bytes(name)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("unlink", |mut m, sid| {
                let req = pb::EntryRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.unlink(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub async fn rmdir(&self, parent: u64, name: &[u8], caller: &Caller) -> Result<()> {
        let name = name_bytes(name)?;
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("rmdir", |mut m, sid| {
                let req = pb::EntryRequest {
                    session_id: sid,
                    parent,
                    name: name.clone(),
                    caller: Some(c.clone()),
                };
                async move { m.rmdir(req).await }
            })
            .await?;
        self.note_dirs([r.parent]);
        Ok(())
    }

    /// Renames `parent/name` to `new_parent/new_name`; `flags` from [`rename_flags`].
    pub async fn rename(
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
        self.check_writable()?;
        let c = caller.to_pb();
        let r = self
            .call("rename", |mut m, sid| {
                let req = pb::RenameRequest {
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
            .await?;
        self.note_dirs([r.parent, r.new_parent]);
        Ok(())
    }

    /// Target of the symbolic link `inode`.
    pub async fn readlink(&self, inode: u64) -> Result<Vec<u8>> {
        let r = self
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
    pub async fn readdir_page(
        &self,
        inode: u64,
        after_name: &[u8],
        limit: u32,
        plus: bool,
    ) -> Result<pb::ReaddirReply> {
        let after = after_name.to_vec();
        self.call("readdir", |mut m, sid| {
            let req = pb::ReaddirRequest {
                session_id: sid,
                inode,
                after_name: after.clone(),
                limit,
                plus,
            };
            async move { m.readdir(req).await }
        })
        .await
    }

    /// The whole directory `inode` (paging through it) and its parent inode.
    pub async fn readdir_all(&self, inode: u64, plus: bool) -> Result<(Vec<DirEntry>, u64)> {
        let mut out: Vec<DirEntry> = Vec::new();
        let mut parent = 0;
        loop {
            let after = out.last().map(|e| e.name.clone()).unwrap_or_default();
            let page = self.readdir_page(inode, &after, 10_000, plus).await?;
            parent = if page.parent != 0 {
                page.parent
            } else {
                parent
            };
            let n = page.entries.len();
            out.extend(page.entries);
            if page.eof || n == 0 {
                break;
            }
        }
        Ok((out, parent))
    }

    /// Opens `inode` for I/O with open(2) `flags`. Fetches fresh attributes
    /// (close-to-open consistency) and marks the file open in the session.
    pub async fn open(&self, inode: u64, flags: i32, caller: &Caller) -> Result<FileHandle> {
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY {
            self.check_writable()?;
        }
        let c = caller.to_pb();
        let st = self.file_state(inode);
        let ticket = st.ticket();
        let mut r = self
            .call("open", |mut m, sid| {
                let req = pb::OpenRequest {
                    session_id: sid,
                    inode,
                    flags: flags as u32,
                    caller: Some(c.clone()),
                };
                async move { m.open(req).await }
            })
            .await?;
        let first = r.first_chunk.take();
        let h = self.opened(&st, ticket, attr_of(r)?, flags, caller).await?;
        // After `opened`, which drops the locations cached by earlier opens; an
        // O_TRUNC open has just freed the chunk.
        if let Some(first) = first.filter(|_| flags & libc::O_TRUNC == 0) {
            st.seed_location(0, first);
        }
        Ok(h)
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
        *self.inner.open_inodes.lock().entry(inode).or_insert(0) += 1;
        if flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY && attr.size > 0 {
            match st.truncate(0, caller).await {
                Ok(a) => attr = a,
                Err(e) => {
                    let _ = self.release_inode(inode).await;
                    return Err(e);
                }
            }
        }
        attr.size = st.opened(ticket, &attr);
        let keep_cache = {
            let mut m = self.inner.last_open.lock();
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(inode, (attr.size, attr.mtime_ns)) == Some((attr.size, attr.mtime_ns))
        };
        Ok(FileHandle::new(st.clone(), attr, flags, keep_cache))
    }

    pub(crate) async fn release_inode(&self, inode: u64) -> Result<()> {
        let last = {
            let mut m = self.inner.open_inodes.lock();
            match m.get_mut(&inode) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    m.remove(&inode);
                    true
                }
                None => false,
            }
        };
        let _ = last;
        self.call("release", |mut m, sid| {
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
    pub async fn statfs(&self) -> Result<StatfsReply> {
        self.statfs_at(self.root()).await
    }

    /// Space and inode counts seen from `inode`: the nearest directory quota at
    /// or above it when there is one (size = limit, usage = the tree's usage).
    pub async fn statfs_at(&self, inode: u64) -> Result<StatfsReply> {
        self.call("statfs", |mut m, sid| {
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
    pub async fn getxattr(&self, inode: u64, name: &[u8], caller: &Caller) -> Result<Vec<u8>> {
        let name = name.to_vec();
        let c = caller.to_pb();
        let r = self
            .call("getxattr", |mut m, sid| {
                let req = pb::XattrRequest {
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
    pub async fn setxattr(
        &self,
        inode: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
        caller: &Caller,
    ) -> Result<()> {
        self.check_writable()?;
        let name = name.to_vec();
        let value = value.to_vec();
        let c = caller.to_pb();
        self.call("setxattr", |mut m, sid| {
            let req = pb::SetXattrRequest {
                session_id: sid,
                inode,
                name: name.clone(),
                value: value.clone(),
                flags,
                caller: Some(c.clone()),
            };
            async move { m.set_xattr(req).await }
        })
        .await?;
        Ok(())
    }

    /// Names of the extended attributes of `inode`.
    pub async fn listxattr(&self, inode: u64, caller: &Caller) -> Result<Vec<Vec<u8>>> {
        let c = caller.to_pb();
        let r = self
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
    pub async fn removexattr(&self, inode: u64, name: &[u8], caller: &Caller) -> Result<()> {
        self.check_writable()?;
        let name = name.to_vec();
        let c = caller.to_pb();
        self.call("removexattr", |mut m, sid| {
            let req = pb::XattrRequest {
                session_id: sid,
                inode,
                name: name.clone(),
                caller: Some(c.clone()),
            };
            async move { m.remove_xattr(req).await }
        })
        .await?;
        Ok(())
    }

    /// Resolves a path relative to this client's root ("/a/b", "a/b"; symlinks
    /// are not followed) to its attributes.
    pub async fn resolve(&self, path: &str) -> Result<Attr> {
        let mut attr = self.getattr(self.root()).await?;
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
    pub async fn mkdir_p(&self, path: &str, mode: u32) -> Result<Attr> {
        let mut attr = self.getattr(self.root()).await?;
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

    /// Truncates or extends `inode` to `size` bytes.
    pub async fn truncate(&self, inode: u64, size: u64, caller: &Caller) -> Result<Attr> {
        self.check_writable()?;
        self.file_state(inode).truncate(size, caller).await
    }

    /// Flushes every file's buffered writes and closes the session with the master.
    pub async fn close(&self) -> Result<()> {
        let states: Vec<Arc<FileState>> = self
            .inner
            .files
            .lock()
            .values()
            .filter_map(|w| w.upgrade())
            .collect();
        let mut first_err = None;
        for st in states {
            if let Err(e) = st.flush().await {
                first_err.get_or_insert(e);
            }
        }
        self.inner.closed.store(true, Ordering::SeqCst);
        let sid = self.session_id();
        let _ = self
            .inner
            .master
            .clone()
            .close_session(pb::SessionRef { session_id: sid })
            .await;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The shared per-inode I/O state (write-behind, chunk location cache).
    pub(crate) fn file_state(&self, inode: u64) -> Arc<FileState> {
        let mut m = self.inner.files.lock();
        if let Some(st) = m.get(&inode).and_then(|w| w.upgrade()) {
            return st;
        }
        m.retain(|_, w| w.strong_count() > 0);
        let st = Arc::new(FileState::new(self.clone(), inode, self.chunk_size()));
        m.insert(inode, Arc::downgrade(&st));
        st
    }
}

pub(crate) enum RegisterError {
    Transient(Error),
    Fatal(Error),
}

fn attr_of(r: pb::AttrReply) -> Result<Attr> {
    r.attr
        .ok_or_else(|| Error::io("the master answered without attributes"))
}

async fn renew_loop(weak: Weak<Inner>) {
    loop {
        let (lease, sid, generation) = match weak.upgrade() {
            Some(inner) => {
                if inner.closed.load(Ordering::SeqCst) {
                    return;
                }
                let s = inner.state.lock();
                (s.lease_secs, s.session_id, s.generation)
            }
            None => return,
        };
        let period =
            Duration::from_millis(u64::from(lease) * 1000 / 3).max(Duration::from_millis(200));
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let client = Client { inner };
        let r = client
            .inner
            .master
            .clone()
            .renew_session(pb::SessionRef { session_id: sid })
            .await;
        match r {
            Ok(reply) => {
                let epoch = reply.into_inner().epoch;
                let seen = client.inner.seen_epoch.load(Ordering::SeqCst);
                if epoch < seen {
                    tracing::warn!(
                        epoch,
                        seen,
                        "master answered with a lower epoch than seen; re-registering"
                    );
                    let _ = client.reregister(generation).await;
                } else {
                    client.inner.seen_epoch.fetch_max(epoch, Ordering::SeqCst);
                }
            }
            Err(s) => {
                tracing::warn!(error = %s.message(), "lease renewal failed; re-registering the session");
                match client.reregister(generation).await {
                    Ok(()) => {}
                    Err(RegisterError::Transient(e)) | Err(RegisterError::Fatal(e)) => {
                        tracing::warn!(error = %e, "re-registration failed; will retry");
                    }
                }
            }
        }
    }
}
