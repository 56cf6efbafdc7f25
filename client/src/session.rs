//! The session with the master and the connections: registration, lease
//! renewal, transparent reconnect, the retrying [`Session::call`] wrapper every
//! master call goes through, and the pool of chunkserver connections.
//!
//! This is the lowest layer of the client: it knows nothing of namespace calls
//! or open files. What a re-registration must tell the master about open files
//! comes from the layer above through [`OpenList`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use alces_proto::errno;
use alces_proto::net::AuthChannel;
use alces_proto::pb;
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::pb::master_client::MasterClient;
use parking_lot::Mutex;
use tonic::Status;

use crate::error::{Error, Result};
use crate::leases::MetaCache;

/// How to reach and use a filesystem.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Master address, `host:port` (re-resolved on every reconnect).
    pub master: String,
    /// Cluster secret (see `alces_proto::auth::load_secret`).
    pub secret: Arc<str>,
    /// TLS to the master and the chunkservers (plaintext by default).
    pub tls: alces_proto::tls::Tls,
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
    /// Open a lease stream with the master and cache names and attributes
    /// it leases (see [`crate::leases`]).
    pub leases: bool,
}

impl ClientConfig {
    /// A configuration with default tuning for `master` and `secret`.
    pub fn new(master: impl Into<String>, secret: Arc<str>) -> Self {
        Self {
            master: master.into(),
            secret,
            tls: alces_proto::tls::Tls::plain(),
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
            leases: true,
        }
    }
}

/// What a re-registration lists to the master about this client's open files,
/// provided by the open-file registry above this layer.
pub(crate) trait OpenList: Send + Sync {
    /// One entry per open handle: the master counts opens per session.
    fn open_inodes(&self) -> Vec<u64>;
    /// The chunk write sessions the client holds.
    fn write_sessions(&self) -> Vec<pb::OpenWriteSession>;
}

/// Longest pause between two attempts while the master is unreachable, so a
/// promoted master is reached at most this long after it starts serving.
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
struct SessionState {
    session_id: u64,
    root_inode: u64,
    chunk_size: u64,
    lease_secs: u32,
    read_only: bool,
    cluster_id: String,
    /// What a resume of the session must present (from the master).
    secret: Vec<u8>,
    /// Bumped on every successful (re-)registration.
    generation: u64,
}

/// A session of a dead process that this client continues (a takeover of
/// its FUSE connection): its id and secret, from the state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeSession {
    /// The session id.
    pub session_id: u64,
    /// Its secret, as the master gave it at registration.
    pub secret: Vec<u8>,
}

/// What a client continuing a dead process's session inherits from it.
#[derive(Clone, Debug, Default)]
pub struct Inherited {
    /// True when the master let the session be continued; false when it had
    /// ended (a new session was registered, and nothing is inherited).
    pub continued: bool,
    /// One entry per open the dead process held, by inode.
    pub open_inodes: Vec<u64>,
    /// The file locks the dead process held.
    pub held_locks: Vec<pb::HeldLock>,
}

struct SessionInner {
    config: ClientConfig,
    /// The runtime the client was connected on: background work (write-behind,
    /// read pieces, readahead) always runs there, whichever thread started it.
    rt: tokio::runtime::Handle,
    /// The shared master connection, replaced when it reaches a peer that is
    /// not a gRPC server ([`Session::drop_master_connection`]).
    master: Mutex<MasterClient<AuthChannel>>,
    /// Times the shared master connection was replaced: a FUSE thread's own
    /// connection made before the last replacement is made again.
    master_connections: AtomicU64,
    auth: alces_proto::auth::ClientAuth,
    state: Mutex<SessionState>,
    seen_epoch: AtomicU64,
    chunkservers: Mutex<HashMap<String, ChunkserverClient<AuthChannel>>>,
    /// The open files to list on re-registration (set once at connect).
    open_list: OnceLock<Weak<dyn OpenList>>,
    reconnect: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    /// Reconnects done (for metrics).
    reconnects: AtomicU64,
    /// Ids of tagged mutations (see [`Session::call_once`]).
    requests: Mutex<RequestIds>,
    /// The file locks this session holds, by (inode, lock owner), as the
    /// master last answered: re-asserted after every re-registration.
    held_locks: Mutex<HashMap<(u64, u64), Vec<pb::HeldLock>>>,
    /// Names and attributes leased by the master (see [`crate::leases`]),
    /// kept coherent by [`lease_loop`].
    cache: Arc<MetaCache>,
}

/// The ids of this client's tagged mutations: handed out in increasing order,
/// and the set still waiting for their reply (its lowest member tells the
/// master which outcomes it may forget).
#[derive(Debug, Default)]
struct RequestIds {
    last: u64,
    unanswered: BTreeSet<u64>,
    /// Until then, tags acknowledge nothing: a daemon that took over a
    /// connection does not know which requests of the dead one the kernel
    /// will resend, and their outcomes must stay cached until they are.
    hold_acks_until: Option<Instant>,
}

impl RequestIds {
    fn begin(&mut self) -> u64 {
        self.last += 1;
        self.unanswered.insert(self.last);
        self.last
    }

    fn tag(&self, id: u64) -> pb::RequestTag {
        let mut acked_below = self.unanswered.first().copied().unwrap_or(id).min(id);
        if self.hold_acks_until.is_some_and(|t| Instant::now() < t) {
            acked_below = acked_below.min(1);
        }
        pb::RequestTag { id, acked_below }
    }
}

/// Bit 62 marks a request id derived from a kernel FUSE request id (see
/// [`Session::with_request`]); ids counted by the client stay far below it.
const FUSE_REQUEST_ID: u64 = 1 << 62;

/// The request id a kernel FUSE request `unique` gives its mutation: the same
/// for the request the kernel resends after a takeover (bit 63 cleared).
pub(crate) fn request_id_of_fuse(unique: u64) -> u64 {
    (unique & !(1 << 63) & (FUSE_REQUEST_ID - 1)) | FUSE_REQUEST_ID
}

/// Marks a tagged request answered (or abandoned) when dropped.
struct Unanswered<'a> {
    ids: &'a Mutex<RequestIds>,
    id: u64,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        self.ids.lock().unanswered.remove(&self.id);
    }
}

/// The session with the master and the client's connections. Cheap to clone;
/// all clones share one session.
#[derive(Clone)]
pub(crate) struct Session {
    inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
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
    /// shared one (see [`Session::with_master`]).
    static TASK_MASTER: MasterClient<AuthChannel>;
    /// The request id the next tagged mutation of this task uses (see
    /// [`Session::with_request`]); taken by the first one.
    static TASK_REQUEST: std::cell::Cell<Option<u64>>;
}

/// True when the master no longer knows our session (it restarted or expired it):
/// re-registering with the same id fixes it.
fn session_lost(s: &Status) -> bool {
    errno::is_session_unknown(s)
}

/// A master client over `ch` that accepts the largest messages of the protocol.
fn master_client(ch: AuthChannel) -> MasterClient<AuthChannel> {
    MasterClient::new(ch)
        .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
}

enum RegisterError {
    Transient(Error),
    Fatal(Error),
}

impl Session {
    /// A session for `config`, not yet registered; background work will run on
    /// the current tokio runtime.
    pub(crate) fn new(config: ClientConfig) -> Result<Session> {
        let auth = alces_proto::auth::ClientAuth::new(&config.secret)
            .map_err(|e| Error::new(libc::EINVAL, e.to_string()))?
            .with_tls(&config.tls);
        let ch = alces_proto::net::channel(&config.master, &auth)
            .map_err(|e| Error::new(libc::EINVAL, format!("--master: {e}")))?;
        Ok(Session {
            inner: Arc::new(SessionInner {
                rt: tokio::runtime::Handle::current(),
                config,
                master: Mutex::new(master_client(ch)),
                master_connections: AtomicU64::new(0),
                auth,
                state: Mutex::new(SessionState {
                    session_id: 0,
                    root_inode: 1,
                    chunk_size: alces_proto::geometry::MAX_CHUNK_SIZE,
                    lease_secs: 30,
                    read_only: false,
                    cluster_id: String::new(),
                    secret: Vec::new(),
                    generation: 0,
                }),
                seen_epoch: AtomicU64::new(0),
                chunkservers: Mutex::new(HashMap::new()),
                open_list: OnceLock::new(),
                reconnect: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                reconnects: AtomicU64::new(0),
                requests: Mutex::new(RequestIds::default()),
                held_locks: Mutex::new(HashMap::new()),
                cache: Arc::new(MetaCache::new()),
            }),
        })
    }

    /// Tells the session where to find the open files a re-registration lists.
    pub(crate) fn set_open_list(&self, list: Weak<dyn OpenList>) {
        let _ = self.inner.open_list.set(list);
    }

    /// Registers the session, retrying while the master is unreachable for up
    /// to the configured reconnect timeout, then starts the lease renewal task
    /// on the current tokio runtime.
    /// Continues `resume` (a dead process's session) when given: the master keeps its open files and locks, which are
    /// returned. A session that can no longer be continued (it ended, or the
    /// secret does not match) is replaced by a new one, and nothing is
    /// inherited.
    pub(crate) async fn start_with(&self, resume: Option<ResumeSession>) -> Result<Inherited> {
        if let Some(r) = &resume {
            let mut s = self.inner.state.lock();
            s.session_id = r.session_id;
            s.secret = r.secret.clone();
        }
        let deadline = Instant::now() + self.inner.config.reconnect_timeout;
        let mut backoff = Duration::from_millis(100);
        let inherited = loop {
            match self.register(0, resume.is_some()).await {
                Ok(i) => break i,
                Err(RegisterError::Transient(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, master = %self.inner.config.master, "master not reachable yet, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
                Err(RegisterError::Transient(e)) | Err(RegisterError::Fatal(e)) => return Err(e),
            }
        };
        if !inherited.held_locks.is_empty() {
            let mut held = self.inner.held_locks.lock();
            for l in &inherited.held_locks {
                held.entry((l.inode, l.owner)).or_default().push(*l);
            }
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(renew_loop(weak));
        if self.inner.config.leases {
            tokio::spawn(lease_loop(Arc::downgrade(&self.inner)));
        }
        Ok(inherited)
    }

    /// Registers (or resumes) the session; `takeover` continues a dead
    /// process's session as [`Session::start_with`] says. A resume the master
    /// refuses (the session ended, or the secret does not match) is followed
    /// at once by the registration of a new session listing the open files.
    async fn register(
        &self,
        expected_generation: u64,
        takeover: bool,
    ) -> std::result::Result<Inherited, RegisterError> {
        let (session_id, secret, generation) = {
            let s = self.inner.state.lock();
            (s.session_id, s.secret.clone(), s.generation)
        };
        if generation != expected_generation {
            return Ok(Inherited::default());
        }
        let open = self.inner.open_list.get().and_then(Weak::upgrade);
        let (open_inodes, write_sessions) = match open {
            Some(o) => (o.open_inodes(), o.write_sessions()),
            None => (Vec::new(), Vec::new()),
        };
        let mut req = pb::RegisterSessionRequest {
            client_name: self.inner.config.client_name.clone(),
            subdir: self.inner.config.subdir.clone(),
            read_only: self.inner.config.read_only,
            session_id,
            open_inodes,
            hostname: hostname(),
            seen_epoch: self.inner.seen_epoch.load(Ordering::SeqCst),
            write_sessions,
            session_secret: secret,
            takeover,
        };
        let mut answer = self.master().register_session(req.clone()).await;
        if let Err(s) = &answer {
            if session_id != 0 && errno::is_session_ended(s) {
                tracing::warn!(session = session_id, reason = %s.message(), "the session cannot be resumed; registering a new one and opening the files again");
                req.session_id = 0;
                req.session_secret = Vec::new();
                req.takeover = false;
                answer = self.master().register_session(req).await;
            }
        }
        let reply = match answer {
            Ok(r) => r.into_inner(),
            Err(s) if errno::is_transient(&s) => {
                self.drop_master_connection(&s);
                return Err(RegisterError::Transient(Error::new(
                    libc::EIO,
                    format!(
                        "master {} unreachable: {}",
                        self.inner.config.master,
                        s.message()
                    ),
                )));
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
        let resumed = {
            let mut s = self.inner.state.lock();
            if !s.cluster_id.is_empty() && s.cluster_id != reply.cluster_id {
                return Err(RegisterError::Fatal(Error::io(format!(
                "master {} serves cluster {} but this client was using cluster {}; refusing to mix filesystems",
                self.inner.config.master, reply.cluster_id, s.cluster_id
            ))));
            }
            if s.generation > 0 && s.root_inode != reply.root_inode {
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
            s.secret = reply.session_secret;
            s.generation += 1;
            let resumed = (s.generation > 1).then_some(s.session_id);
            if resumed.is_some() {
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
            resumed
        };
        if let Some(sid) = resumed {
            self.reassert_locks(sid).await;
        }
        Ok(Inherited {
            continued: takeover && reply.session_id == session_id,
            open_inodes: reply.open_inodes,
            held_locks: reply.held_locks,
        })
    }

    /// Tells a master this session re-registered with the file locks it
    /// holds (a restarted or promoted master knows none; it grants no new
    /// lock until its clients had the time to re-assert theirs).
    async fn reassert_locks(&self, session_id: u64) {
        let locks: Vec<pb::HeldLock> = self
            .inner
            .held_locks
            .lock()
            .values()
            .flatten()
            .cloned()
            .collect();
        if locks.is_empty() {
            return;
        }
        let n = locks.len();
        let req = pb::ReassertLocksRequest { session_id, locks };
        match self.master().reassert_locks(req).await {
            Ok(r) => {
                let lost = r.into_inner().lost;
                if lost.is_empty() {
                    tracing::info!(locks = n, "file locks re-asserted");
                }
                for l in lost {
                    tracing::error!(inode = l.inode, owner = l.owner, start = l.start, end = l.end, "a file lock could not be re-asserted (another client holds a conflicting one): the process holding it no longer has it");
                    let mut held = self.inner.held_locks.lock();
                    if let Some(v) = held.get_mut(&(l.inode, l.owner)) {
                        v.retain(|h| h != &l);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.message(), "re-asserting file locks failed; they are re-asserted at the next re-registration")
            }
        }
    }

    /// Records the locks `owner` holds on `inode` as the master answered
    /// (empty: none).
    pub(crate) fn note_locks(&self, inode: u64, owner: u64, held: Vec<pb::HeldLock>) {
        let mut m = self.inner.held_locks.lock();
        if held.is_empty() {
            m.remove(&(inode, owner));
        } else {
            m.insert((inode, owner), held);
        }
    }

    /// Adds a lock `owner` may hold on `inode` (a wait cancelled while the
    /// master may have granted it), so a close releases it.
    pub(crate) fn note_maybe_lock(&self, lock: pb::HeldLock) {
        self.inner
            .held_locks
            .lock()
            .entry((lock.inode, lock.owner))
            .or_default()
            .push(lock);
    }

    /// True when `owner` may hold a lock on `inode`.
    pub(crate) fn holds_locks(&self, inode: u64, owner: u64) -> bool {
        self.inner.held_locks.lock().contains_key(&(inode, owner))
    }

    async fn reregister(&self, failed_generation: u64) -> std::result::Result<(), RegisterError> {
        let _g = self.inner.reconnect.lock().await;
        self.register(failed_generation, false).await.map(|_| ())
    }

    /// Starts background work on the runtime the client was connected on.
    pub(crate) fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.rt.spawn(f)
    }

    /// The shared master client.
    fn master(&self) -> MasterClient<AuthChannel> {
        self.inner.master.lock().clone()
    }

    /// After a call failed with `s`: when the answer was not gRPC (another
    /// service behind the master's address, such as an HTTP server answering
    /// 404), replaces the shared connection, which would otherwise stay up and
    /// keep reaching that peer; the new one connects (and resolves the address)
    /// again on its next call. Connection failures need nothing: the channel
    /// connects again by itself.
    fn drop_master_connection(&self, s: &Status) {
        if !errno::is_not_grpc(s) {
            return;
        }
        // Made on the session's runtime: a channel's connection is driven by the
        // runtime it is made on, and a FUSE thread's runtime runs only while that
        // thread answers a request.
        let made = {
            let _rt = self.inner.rt.enter();
            alces_proto::net::channel(&self.inner.config.master, &self.inner.auth)
        };
        let Ok(ch) = made else {
            return;
        };
        let mut m = self.inner.master.lock();
        *m = master_client(ch);
        let n = self.inner.master_connections.fetch_add(1, Ordering::SeqCst) + 1;
        tracing::warn!(master = %self.inner.config.master, error = %s.message(), replaced = n, "the master's address answered with something that is not gRPC; connecting again");
    }

    /// How many times the shared master connection was replaced; a connection
    /// from [`Session::new_master_client`] made when this was lower should be
    /// made again.
    pub(crate) fn master_connections(&self) -> u64 {
        self.inner.master_connections.load(Ordering::SeqCst)
    }

    /// A new master client on its own connection, driven by the runtime this is
    /// called in (the connection is made on first use and remade after a failure).
    pub(crate) fn new_master_client(&self) -> Result<MasterClient<AuthChannel>> {
        let ch = alces_proto::net::channel(&self.inner.config.master, &self.inner.auth)
            .map_err(|e| Error::new(libc::EINVAL, format!("--master: {e}")))?;
        Ok(master_client(ch))
    }

    /// Runs `f` with master calls going first through `master` (made by
    /// [`Session::new_master_client`] on the runtime that runs `f`). A FUSE thread
    /// that drives its own connection this way answers a call without handing it to
    /// another thread and back. A call that fails on `master` for a transport
    /// reason is retried at once on the shared connection, and from there on as
    /// usual.
    pub(crate) async fn with_master<F: Future>(
        &self,
        master: MasterClient<AuthChannel>,
        f: F,
    ) -> F::Output {
        TASK_MASTER.scope(master, f).await
    }

    /// Calls the master, retrying transient failures (and a lost session) with
    /// backoff and re-registration for up to the configured reconnect timeout.
    /// Within [`Session::with_master`] the first attempt goes through the task's
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
                        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
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
                None => (self.master(), false),
            };
            match f(master, sid).await {
                Ok(r) => return Ok(r.into_inner()),
                // The task's own connection may have been closed while it sat idle:
                // try the shared one at once before backing off.
                Err(s) if own && errno::is_transient(&s) => {
                    tracing::debug!(what, error = %s.message(), "call on the task's own master connection failed, retrying on the shared one");
                }
                Err(s) if errno::is_transient(&s) || session_lost(&s) => {
                    if !own {
                        self.drop_master_connection(&s);
                    }
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
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                    reregister = Some(generation);
                }
                Err(s) => return Err(Error::from_status(&s)),
            }
        }
    }

    /// Runs `f` (the handling of one kernel FUSE request) with its first
    /// non-idempotent mutation tagged with an id derived from the kernel's
    /// request id `unique` ([`request_id_of_fuse`]) instead of a counted one.
    /// The id counts as unanswered until `f` ends (the reply reached the
    /// kernel), so the master keeps the outcome for a resent request until
    /// then. Without `unique`, `f` runs as is.
    pub(crate) async fn with_request<F: Future>(&self, unique: Option<u64>, f: F) -> F::Output {
        let Some(unique) = unique else {
            return f.await;
        };
        let id = request_id_of_fuse(unique);
        let ids = &self.inner.requests;
        ids.lock().unanswered.insert(id);
        let _pending = Unanswered { ids, id };
        TASK_REQUEST.scope(std::cell::Cell::new(Some(id)), f).await
    }

    /// Tags acknowledge nothing for `window`: for a daemon that continues a
    /// dead one's session, whose requests the kernel resends.
    pub(crate) fn hold_acks(&self, window: Duration) {
        self.inner.requests.lock().hold_acks_until = Some(Instant::now() + window);
    }

    /// [`Session::call`] for a non-idempotent mutation: `f` also gets the
    /// request's tag, the same id on every retry (also after a reconnect to a
    /// new master), so the master answers a retry of a request that already
    /// ran with its first outcome instead of running it again.
    pub(crate) async fn call_once<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut(MasterClient<AuthChannel>, u64, pb::RequestTag) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let ids = &self.inner.requests;
        let given = TASK_REQUEST.try_with(|c| c.take()).ok().flatten();
        let (id, _pending) = match given {
            Some(id) => (id, None),
            None => {
                let id = ids.lock().begin();
                (id, Some(Unanswered { ids, id }))
            }
        };
        self.call(what, |m, sid| {
            let tag = ids.lock().tag(id);
            f(m, sid, tag)
        })
        .await
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

    /// The configuration the session was made with.
    pub(crate) fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Inode of this client's root (the mounted subdirectory).
    pub(crate) fn root(&self) -> u64 {
        self.inner.state.lock().root_inode
    }

    /// Chunk size of the filesystem.
    pub(crate) fn chunk_size(&self) -> u64 {
        self.inner.state.lock().chunk_size
    }

    /// Current session id.
    pub(crate) fn session_id(&self) -> u64 {
        self.inner.state.lock().session_id
    }

    /// The current session's secret (what a resume must present).
    pub(crate) fn session_secret(&self) -> Vec<u8> {
        self.inner.state.lock().secret.clone()
    }

    /// Highest master epoch seen.
    pub(crate) fn epoch(&self) -> u64 {
        self.inner.seen_epoch.load(Ordering::SeqCst)
    }

    /// True when the session is read-only.
    pub(crate) fn is_read_only(&self) -> bool {
        self.inner.state.lock().read_only
    }

    /// How many times the session was re-registered after a lost connection.
    pub(crate) fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// Fails with `EROFS` when the session is read-only.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.is_read_only() {
            return Err(Error::new(
                libc::EROFS,
                "the filesystem is mounted read-only",
            ));
        }
        Ok(())
    }

    /// Closes another session `sid` (a dead process's whose work this one
    /// continues): its open files are released and its write sessions end.
    pub(crate) async fn close_other(&self, sid: u64) -> Result<()> {
        self.master()
            .close_session(pb::SessionRef { session_id: sid })
            .await
            .map(|_| ())
            .map_err(|s| Error::new(libc::EIO, format!("closing session {sid}: {}", s.message())))
    }

    /// The cache of leased names and attributes.
    pub(crate) fn cache(&self) -> &MetaCache {
        &self.inner.cache
    }

    /// Stops lease renewal and closes the session with the master (errors are
    /// ignored: an unclosed session expires).
    pub(crate) async fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let sid = self.session_id();
        let _ = self
            .master()
            .close_session(pb::SessionRef { session_id: sid })
            .await;
    }
}

/// How often the lease stream renews the leases, as a part of their length.
const RENEWALS_PER_LEASE: u32 = 4;

/// Keeps the session's lease stream open (see [`crate::leases`]): opens it,
/// renews the leases, applies the master's breaks and acknowledges them, and
/// when the stream ends for any reason drops the whole cache before opening a
/// new one. Ends when the session is closed or the master does not offer
/// leases (an older master: nothing is ever cached then).
async fn lease_loop(weak: Weak<SessionInner>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.closed.load(Ordering::SeqCst) {
            return;
        }
        let session = Session { inner };
        let opened = Instant::now();
        match lease_stream(&session).await {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    "the master offers no metadata leases; names and attributes are not cached"
                );
                session.cache().reset();
                return;
            }
            Err(s) => {
                tracing::debug!(error = %s.message(), "lease stream ended");
            }
        }
        session.cache().reset();
        if opened.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        drop(session);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
    }
}

/// One lease stream, until it ends.
async fn lease_stream(session: &Session) -> std::result::Result<(), Status> {
    let cache = session.inner.cache.clone();
    let sid = session.session_id();
    let (up, rx) = tokio::sync::mpsc::channel::<pb::LeaseUp>(64);
    let hello = pb::LeaseUp {
        msg: Some(pb::lease_up::Msg::Hello(pb::SessionRef { session_id: sid })),
    };
    up.send(hello)
        .await
        .map_err(|_| Status::internal("lease stream closed"))?;
    let sent = Instant::now();
    let mut down = session
        .master()
        .leases(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let lease = match down.message().await?.and_then(|m| m.msg) {
        Some(pb::lease_down::Msg::LeaseMs(ms)) if ms > 0 => Duration::from_millis(ms),
        other => {
            return Err(Status::internal(format!(
                "the master opened the lease stream with {other:?} instead of the lease length"
            )))
        }
    };
    cache.stream_opened(sent + lease);
    tracing::debug!(?lease, "lease stream open");
    let mut renewals: HashMap<u64, Instant> = HashMap::new();
    let mut next = 0u64;
    let mut tick = tokio::time::interval(lease / RENEWALS_PER_LEASE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if session.inner.closed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                next += 1;
                renewals.insert(next, Instant::now());
                // Renewals not answered within a lease are of no use any more.
                renewals.retain(|_, t| t.elapsed() < lease);
                let msg = pb::LeaseUp { msg: Some(pb::lease_up::Msg::Renew(next)) };
                if up.send(msg).await.is_err() {
                    return Ok(());
                }
            }
            m = down.message() => {
                let Some(m) = m? else { return Ok(()) };
                match m.msg {
                    Some(pb::lease_down::Msg::Renewed(n)) => {
                        if let Some(t) = renewals.remove(&n) {
                            cache.renewed(t, lease);
                        }
                    }
                    Some(pb::lease_down::Msg::Break(b)) => {
                        cache.invalidate(&b.inodes);
                        let ack = pb::LeaseUp { msg: Some(pb::lease_up::Msg::Ack(b.seq)) };
                        if up.send(ack).await.is_err() {
                            return Ok(());
                        }
                    }
                    other => {
                        return Err(Status::internal(format!(
                            "unexpected message on the lease stream: {other:?}"
                        )))
                    }
                }
            }
        }
    }
}

async fn renew_loop(weak: Weak<SessionInner>) {
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
        let client = Session { inner };
        let r = client
            .master()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_increase_and_acknowledge_below_the_oldest_unanswered() {
        let ids = Mutex::new(RequestIds::default());
        let a = ids.lock().begin();
        let b = ids.lock().begin();
        assert_eq!((a, b), (1, 2));
        // Both unanswered: each retry of either says nothing below 1 is pending.
        assert_eq!(
            ids.lock().tag(b),
            pb::RequestTag {
                id: 2,
                acked_below: 1
            }
        );
        {
            let _answered = Unanswered { ids: &ids, id: a };
        }
        // 1 answered: 2's retries now let the master forget it.
        assert_eq!(
            ids.lock().tag(b),
            pb::RequestTag {
                id: 2,
                acked_below: 2
            }
        );
        let c = ids.lock().begin();
        assert_eq!(
            ids.lock().tag(c),
            pb::RequestTag {
                id: 3,
                acked_below: 2
            }
        );
        drop(Unanswered { ids: &ids, id: b });
        drop(Unanswered { ids: &ids, id: c });
        assert!(ids.lock().unanswered.is_empty());
        // A tag never acknowledges its own request.
        assert_eq!(
            ids.lock().tag(7),
            pb::RequestTag {
                id: 7,
                acked_below: 7
            }
        );
    }
}
