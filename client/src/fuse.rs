//! The FUSE filesystem served by `alces-mount`. Metadata operations, `write`
//! and `flush` run to the end on the FUSE thread that read them, over the
//! thread's own single-threaded runtime and master connection ([`AlcesFs`]'s
//! `inline`); reads, fsync, release and truncates are spawned as tasks on the
//! shared tokio runtime and reply from the task, since they wait on
//! chunkservers through it, and so are blocking lock waits (`setlk` with
//! `sleep`), which may last long. Locks are the master's (cluster-wide).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle as Fh, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use alces_proto::net::AuthChannel;
use alces_proto::pb::master_client::MasterClient;

use crate::cache::BoundedCache;
use crate::client::Client;
use crate::dirsnap::DirSnapshot;
use crate::error::Error;
use crate::file::FileHandle;
use crate::journal::{Journal, SOFT_CAP};
use crate::locks::{LockKind, LockSpec};
use crate::metrics::Metrics;
use crate::namespace::{rename_flags, Attr, Caller, FileType, NewNode, SetAttr, SetTime};
use crate::takeover::{is_resent, KernelInit};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// Readahead the kernel is asked to do.
pub const MAX_READAHEAD: u32 = 1 << 20;
/// Block size reported by stat and statfs.
const BLOCK_SIZE: u32 = 65536;
/// Most (inode, name) pairs remembered as having no such extended attribute.
const ABSENT_XATTRS: usize = 10_000;
/// Most inodes remembered as having no extended attribute at all.
const XATTR_FREE_INODES: usize = 100_000;
/// File handles carry the daemon's generation in their bits from here up, so
/// a daemon that takes over a connection never reuses a handle of the dead one.
const GENERATION_SHIFT: u32 = 40;
/// How recent an entry must be for a resent create/mkdir that finds it to
/// count as done by the dead daemon.
const RESENT_WINDOW_NS: i64 = 300_000_000_000;

/// Settings of the FUSE filesystem.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may cache attributes (while the master offers no
    /// metadata leases; with leases the kernel caches nothing and the
    /// client's lease cache answers, see `client/ARCHITECTURE.md`, "Leases").
    pub attr_ttl: Duration,
    /// How long the kernel may cache name lookups (as `attr_ttl`).
    pub entry_ttl: Duration,
    /// Handle generation: 0 for a daemon that mounted, one more than the dead
    /// daemon's for a takeover. File handles carry it.
    pub generation: u64,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            generation: 0,
        }
    }
}

struct Shared {
    client: Client,
    opts: FsOptions,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirSnapshot>>>,
    next_fh: AtomicU64,
    metrics: Option<Metrics>,
    /// Acknowledged writes not yet durable, for a daemon taking over.
    journal: Option<Arc<Journal>>,
    /// The kernel's INIT, once received.
    kernel_init: Arc<Mutex<Option<KernelInit>>>,
    /// Tells the kernel to drop cached pages and attributes of a file (set once
    /// the FUSE session exists).
    notifier: Arc<std::sync::OnceLock<Notifier>>,
    /// Extended attributes known to be absent (the kernel asks for
    /// `security.capability` before every write), kept for the attribute TTL.
    no_xattr: BoundedCache<(u64, Vec<u8>), ()>,
    /// Inodes the master last reported without any extended attribute, and when:
    /// a getxattr on them is answered ENODATA locally for the attribute TTL.
    xattr_free: BoundedCache<u64, ()>,
    /// Files whose journalled writes the replay gave up (see
    /// [`crate::replay`]): every fsync and flush of a handle an earlier
    /// daemon opened on them fails with EIO.
    lost_writes: std::collections::HashSet<u64>,
    /// Set by a graceful hand-over ([`Drainer::hand_over`]): requests read
    /// from now on are not served (the next daemon gets them resent).
    draining: std::sync::atomic::AtomicBool,
    /// Requests being served (counted by [`InFlight`]).
    in_flight: std::sync::atomic::AtomicUsize,
    /// The kernel agreed to READDIRPLUS: directories are listed with their
    /// entries' attributes (see [`Shared::snapshot`]).
    readdirplus: std::sync::atomic::AtomicBool,
}

/// Counts a request as being served while alive.
struct InFlight(Arc<Shared>);

impl InFlight {
    /// Counts a request in, or `None` when the daemon is handing over (the
    /// request must not be served).
    fn enter(s: &Arc<Shared>) -> Option<Self> {
        // Counted before the flag is read, so a hand-over that sees no request
        // in flight never misses one that is about to start.
        s.in_flight.fetch_add(1, Ordering::SeqCst);
        if s.draining.load(Ordering::SeqCst) {
            s.in_flight.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self(s.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps a request read after a hand-over began unanswered for good: the
/// FUSE thread that read it stops here (it reads nothing more), and when the
/// process exits the kernel resends the request to the next daemon. Never
/// returns; `_request` (the reply included) is never dropped, so no error is
/// sent.
fn hold_unanswered<T>(_request: T) -> ! {
    loop {
        std::thread::park();
    }
}

/// Ends the service of a handed-over connection gracefully (see
/// [`Drainer::hand_over`]). Taken from an [`AlcesFs`] before its session runs.
#[derive(Clone)]
pub struct Drainer {
    shared: Arc<Shared>,
}

/// What a graceful hand-over did.
#[derive(Debug, Clone, Copy)]
pub struct HandedOver {
    /// Requests that were being served when it began (all finished).
    pub finished: usize,
    /// Whether every buffered write reached the chunkservers and the journal
    /// was emptied.
    pub flushed: bool,
}

impl Drainer {
    /// Stops serving new requests (each FUSE thread keeps the first one it
    /// reads from now on unanswered: the kernel resends it to the next
    /// daemon, which runs it once), waits up to `wait` for the requests being
    /// served to finish, flushes every buffered write and, when that
    /// succeeded, empties the write journal: the next daemon has nothing to
    /// replay. The master session stays open for the next daemon to continue.
    pub async fn hand_over(&self, wait: Duration) -> HandedOver {
        let s = &self.shared;
        s.draining.store(true, Ordering::SeqCst);
        let finished = s.in_flight.load(Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while s.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let left = s.in_flight.load(Ordering::SeqCst);
        if left > 0 {
            tracing::warn!(left, "requests still being served after {wait:?}; handing over without them (the kernel resends them)");
        }
        let mark = s.journal.as_ref().map(|j| j.mark());
        let flushed = match s.client.flush_all().await {
            Ok(()) => {
                if let (Some(j), Some(_)) = (&s.journal, mark) {
                    if left == 0 {
                        if let Err(e) = j.clear() {
                            tracing::warn!(error = %e, "cannot empty the write journal; the next daemon replays it");
                        }
                    }
                }
                left == 0
            }
            Err(e) => {
                tracing::warn!(error = %e, "flushing before the hand-over failed; the journal keeps the writes for the next daemon");
                false
            }
        };
        HandedOver { finished, flushed }
    }
}

/// A FUSE thread's own single-threaded runtime and master connection (see
/// [`AlcesFs::inline`]).
struct ThreadRuntime {
    rt: tokio::runtime::Runtime,
    master: MasterClient<AuthChannel>,
    /// [`Client::master_connections`] when `master` was made.
    made_at: u64,
}

impl ThreadRuntime {
    fn new(client: &Client) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let made_at = client.master_connections();
        let master = {
            let _in = rt.enter();
            client
                .new_master_client()
                .map_err(|e| std::io::Error::other(e.to_string()))?
        };
        Ok(Self {
            rt,
            master,
            made_at,
        })
    }

    /// Makes the thread's master connection again when the shared one was
    /// replaced since (the master's address reached a peer that is not gRPC).
    fn refresh(&mut self, client: &Client) {
        let now = client.master_connections();
        if now == self.made_at {
            return;
        }
        let _in = self.rt.enter();
        if let Ok(m) = client.new_master_client() {
            self.master = m;
            self.made_at = now;
        }
    }
}

thread_local! {
    // Never dropped: a runtime dropped by a thread-local destructor may touch
    // tokio's own thread-locals after they are gone. FUSE threads end only when
    // the filesystem is unmounted, just before the process exits.
    static THREAD_RUNTIME: std::cell::RefCell<Option<std::mem::ManuallyDrop<ThreadRuntime>>> =
        const { std::cell::RefCell::new(None) };
}

/// The Alces FUSE filesystem.
pub struct AlcesFs {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for AlcesFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlcesFs")
            .field("client", &self.shared.client)
            .finish()
    }
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn kind_of(k: i32) -> fuser::FileType {
    match FileType::try_from(k).unwrap_or(FileType::Regular) {
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Regular | FileType::Unspecified => fuser::FileType::RegularFile,
    }
}

/// The process a request is for, with its supplementary groups.
fn caller(req: &Request) -> Caller {
    let mut c = Caller::new(req.uid(), req.gid(), req.pid());
    c.groups = crate::groups::of(c.pid, c.uid, c.gid);
    c
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(time_to_ns(t)),
    }
}

/// Converts FUSE rename flags to the master's; `None` for unsupported ones.
pub fn rename_flags_of(flags: u32) -> Option<u32> {
    let mut out = 0;
    if flags & libc::RENAME_NOREPLACE != 0 {
        out |= rename_flags::NOREPLACE;
    }
    if flags & libc::RENAME_EXCHANGE != 0 {
        out |= rename_flags::EXCHANGE;
    }
    if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
        return None;
    }
    Some(out)
}

/// The node type of a mknod mode, or `None` for an unsupported one.
pub fn mknod_kind(mode: u32) -> Option<FileType> {
    match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Some(FileType::Regular),
        libc::S_IFIFO => Some(FileType::Fifo),
        libc::S_IFSOCK => Some(FileType::Socket),
        libc::S_IFCHR => Some(FileType::CharDevice),
        libc::S_IFBLK => Some(FileType::BlockDevice),
        _ => None,
    }
}

/// What a resent create-like request wanted to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// A new node of this type.
    Kind(FileType),
    /// A new name for this inode (link).
    Link(u64),
}

/// Whether `existing`, found by a resent create/mknod/mkdir/symlink/link that
/// failed with EEXIST, is what the dead daemon made when it first ran the
/// request: a link to the same inode, or a node of the wanted type owned by
/// the caller and changed within the last five minutes. Anything else (an
/// older entry, another owner) is a genuine EEXIST.
pub fn resent_entry_done(existing: &Attr, want: Want, uid: u32, now_ns: i64) -> bool {
    match want {
        Want::Link(ino) => existing.inode == ino,
        Want::Kind(k) => {
            existing.kind == k as i32
                && existing.uid == uid
                && now_ns.saturating_sub(existing.ctime_ns) < RESENT_WINDOW_NS
        }
    }
}

/// Fits `value` into a reply buffer of `size` bytes as getxattr/listxattr must:
/// `Ok(None)` means "answer with the size", `Err` means `ERANGE`.
pub fn xattr_fit(value: &[u8], size: u32) -> Result<Option<&[u8]>, Errno> {
    if size == 0 {
        Ok(None)
    } else if value.len() > size as usize {
        Err(Errno::from_i32(libc::ERANGE))
    } else {
        Ok(Some(value))
    }
}

/// How often a blocked lock wait looks for a signal to the waiting thread.
const SIGNAL_CHECK: Duration = Duration::from_millis(200);

/// A lock request from the kernel's arguments (`typ` is `F_RDLCK`, `F_WRLCK`
/// or `F_UNLCK`; the range is inclusive, `OFFSET_MAX` meaning to the end).
fn lock_spec(
    inode: u64,
    owner: LockOwner,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> Result<LockSpec, Error> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        other => {
            return Err(Error::new(
                libc::EINVAL,
                format!("lock type {other} is not F_RDLCK, F_WRLCK or F_UNLCK"),
            ))
        }
    };
    if start > end {
        return Err(Error::new(
            libc::EINVAL,
            format!("lock range starts at {start}, after its end {end}"),
        ));
    }
    Ok(LockSpec {
        inode,
        owner: owner.0,
        kind,
        start,
        end,
        pid,
    })
}

/// True when thread `tid` has a signal pending that it neither blocks nor
/// ignores (read from `/proc/<tid>/status`; a thread that is gone counts as
/// interrupted: nobody waits for the answer).
fn signal_pending(tid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => pending_in_status(&status),
        Err(_) => true,
    }
}

/// The check of [`signal_pending`] on the text of a `/proc/<tid>/status`.
pub fn pending_in_status(status: &str) -> bool {
    let mask = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    let kill = 1u64 << (libc::SIGKILL - 1);
    pending & kill != 0 || pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

impl Shared {
    /// A lock was granted: what this mount cached of the file may be stale
    /// (another mount may have written it under its lock), so the kernel's
    /// pages and attributes and this client's readahead go.
    fn lock_granted(&self, ino: INodeNo, h: Option<&FileHandle>) {
        if let Some(h) = h {
            h.drop_read_caches();
        }
        if let Some(n) = self.notifier.get() {
            if let Err(e) = n.inval_inode(ino, 0, 0) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::debug!(error = %e, ino = ino.0, "dropping the kernel's cache of a locked file");
                }
            }
        }
    }

    fn real(&self, ino: INodeNo) -> u64 {
        if ino.0 == 1 {
            self.client.root()
        } else {
            ino.0
        }
    }

    fn fuse_ino(&self, real: u64) -> u64 {
        if real == self.client.root() {
            1
        } else {
            real
        }
    }

    fn fattr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: INodeNo(self.fuse_ino(a.inode)),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: ns_to_time(a.atime_ns),
            mtime: ns_to_time(a.mtime_ns),
            ctime: ns_to_time(a.ctime_ns),
            crtime: ns_to_time(a.ctime_ns),
            kind: kind_of(a.kind),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev as u32,
            blksize: BLOCK_SIZE,
            flags: 0,
        }
    }

    fn count(&self, op: &str, failed: bool) {
        if let Some(m) = &self.metrics {
            m.op(op, failed);
        }
    }

    fn file(&self, fh: Fh) -> Option<Arc<FileHandle>> {
        self.files.lock().get(&fh.0).cloned()
    }

    /// A new handle number: the generation, a counter, and the access mode
    /// (so a handle of a dead daemon can be reopened: [`Self::handle`]).
    fn new_fh(&self, flags: i32) -> u64 {
        let n = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let acc = (flags & libc::O_ACCMODE) as u64 & 3;
        (self.opts.generation << GENERATION_SHIFT) | (n << 2) | acc
    }

    fn add_file(&self, h: FileHandle) -> u64 {
        let fh = self.new_fh(h.flags());
        self.files.lock().insert(fh, Arc::new(h));
        fh
    }

    /// The open file `fh` of `ino`. A handle this daemon does not know was
    /// opened by a daemon that served the connection before (a takeover): the
    /// file is reopened ([`Client::reopen`]) with the access mode the handle
    /// carries (the kernel checked the permissions when the application
    /// opened it, and the master granted that open's accesses to the session,
    /// which a root-squashed mount needs as its root is not the file's user).
    async fn handle(&self, ino: INodeNo, fh: Fh) -> Result<Arc<FileHandle>, Error> {
        if let Some(h) = self.file(fh) {
            return Ok(h);
        }
        let acc = match (fh.0 & 3) as i32 {
            libc::O_WRONLY => libc::O_WRONLY,
            libc::O_RDWR => libc::O_RDWR,
            _ => libc::O_RDONLY,
        };
        let inode = self.real(ino);
        let h = Arc::new(
            self.client
                .reopen(inode, acc, &Caller::new(0, 0, 0))
                .await?,
        );
        tracing::info!(
            inode,
            fh = fh.0,
            "reopened a file handle of an earlier daemon"
        );
        let existing = {
            let mut files = self.files.lock();
            match files.get(&fh.0) {
                Some(e) => Some(e.clone()),
                None => {
                    files.insert(fh.0, h.clone());
                    None
                }
            }
        };
        match existing {
            Some(e) => {
                let _ = h.release().await;
                Ok(e)
            }
            None => Ok(h),
        }
    }

    /// EIO for a handle an earlier daemon opened on a file whose journalled
    /// writes were lost at the takeover.
    fn check_lost(&self, ino: INodeNo, fh: Fh) -> Result<(), Error> {
        let inode = self.real(ino);
        if fh.0 >> GENERATION_SHIFT != self.opts.generation && self.lost_writes.contains(&inode) {
            return Err(Error::new(
                libc::EIO,
                format!("writes to inode {inode} acknowledged by the previous mount daemon were lost (see its user.alces.lost-writes attribute)"),
            ));
        }
        Ok(())
    }

    /// Marks the journal before an operation that makes `inode`'s writes durable.
    fn journal_mark(&self) -> Option<u64> {
        self.journal.as_ref().map(|j| j.mark())
    }

    /// Frees the journal records of `inode` below `mark` once that operation succeeded.
    fn journal_settle(&self, inode: u64, mark: Option<u64>, ok: bool) {
        if let (Some(j), Some(m), true) = (&self.journal, mark, ok) {
            j.settle(inode, m);
        }
    }

    /// Journals a write the kernel is about to be told succeeded. A write that
    /// cannot be journalled is made durable instead (flushed); past
    /// [`SOFT_CAP`] live journal bytes the writer flushes its file.
    async fn journal_write(&self, h: &FileHandle, offset: u64, data: &[u8]) -> Result<(), Error> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let flush = match j.append(h.inode(), offset, data) {
            Ok(()) => j.live_bytes() > SOFT_CAP,
            Err(e) => {
                tracing::warn!(error = %e, "cannot journal a write; flushing it instead");
                true
            }
        };
        if flush {
            let mark = j.mark();
            h.flush().await?;
            j.settle(h.inode(), mark);
        }
        Ok(())
    }

    /// For a request the kernel resent after a takeover that failed with
    /// EEXIST: the entry, if the dead daemon evidently made it (see
    /// [`resent_entry_done`]).
    async fn resent_entry(
        &self,
        req_unique: u64,
        err: &Error,
        parent: u64,
        name: &[u8],
        c: &Caller,
        want: Want,
    ) -> Option<Attr> {
        if !is_resent(req_unique) || err.errno() != libc::EEXIST {
            return None;
        }
        let a = self.client.lookup(parent, name, c).await.ok()?;
        let now = time_to_ns(SystemTime::now());
        resent_entry_done(&a, want, c.uid, now).then(|| {
            tracing::info!(
                inode = a.inode,
                "a resent request had already been done by the previous daemon"
            );
            a
        })
    }

    /// How long the kernel may keep a name: nothing while the lease cache
    /// answers (the kernel learns of no break), else the mount's setting.
    fn entry_ttl(&self) -> Duration {
        if self.client.metadata_leases() {
            Duration::ZERO
        } else {
            self.opts.entry_ttl
        }
    }

    /// How long the kernel may keep attributes (as [`Shared::entry_ttl`]).
    fn attr_ttl(&self) -> Duration {
        if self.client.metadata_leases() {
            Duration::ZERO
        } else {
            self.opts.attr_ttl
        }
    }

    fn reply_entry(&self, op: &str, r: Result<Attr, Error>, reply: ReplyEntry) {
        match r {
            Ok(a) => {
                self.count(op, false);
                self.note_xattrs(&a);
                let a = self.client.with_local_size(a);
                reply.entry(&self.entry_ttl(), &self.fattr(&a), Generation(0));
            }
            Err(e) => {
                self.count(op, true);
                reply.error(errno(&e));
            }
        }
    }

    fn reply_empty(&self, op: &str, r: Result<(), Error>, reply: ReplyEmpty) {
        match r {
            Ok(()) => {
                self.count(op, false);
                reply.ok();
            }
            Err(e) => {
                self.count(op, true);
                // ENOLCK: a lock cap of the master, whose message names the
                // flag to raise; the application only sees the errno.
                if e.errno() == libc::EIO || e.errno() == libc::ENOLCK {
                    tracing::warn!(op, error = %e, "operation failed");
                }
                reply.error(errno(&e));
            }
        }
    }

    fn reply_attr(&self, op: &str, r: Result<Attr, Error>, reply: ReplyAttr) {
        match r {
            Ok(a) => {
                self.count(op, false);
                self.note_xattrs(&a);
                reply.attr(&self.attr_ttl(), &self.fattr(&a));
            }
            Err(e) => {
                self.count(op, true);
                reply.error(errno(&e));
            }
        }
    }

    fn xattr_known_absent(&self, ino: u64, name: &[u8]) -> bool {
        self.xattr_free.contains(&ino) || self.no_xattr.contains(&(ino, name.to_vec()))
    }

    /// Remembers whether the master reported `a` without extended attributes.
    fn note_xattrs(&self, a: &Attr) {
        if a.no_xattrs {
            self.xattr_free.insert(a.inode, ());
        } else {
            self.xattr_free.remove(&a.inode);
        }
    }

    fn set_xattr_absent(&self, ino: u64, name: &[u8], absent: bool) {
        if !absent {
            self.xattr_free.remove(&ino);
        }
        if absent {
            self.no_xattr.insert((ino, name.to_vec()), ());
        } else {
            self.no_xattr.remove(&(ino, name.to_vec()));
        }
    }

    /// Lists directory `ino` for an open directory handle. Once the kernel
    /// agreed to READDIRPLUS the listing carries every entry's attributes
    /// (whether the kernel then asks READDIR or READDIRPLUS, which it decides
    /// per call): they answer READDIRPLUS, and what the master leased fills
    /// the lease cache, so the LOOKUP/GETATTR of each name that follows a
    /// listing (`ls -l`, `find -type`, `du`) needs no master call.
    ///
    /// A directory the lease cache holds whole (made here, or listed whole,
    /// and unchanged since) is listed from the cache without a master call;
    /// the kernel has checked read permission on it (`default_permissions`).
    async fn snapshot(&self, ino: u64, caller: &Caller) -> Result<DirSnapshot, Error> {
        let plus = self.readdirplus.load(Ordering::Relaxed);
        let (entries, parent) = match self.client.cached_listing(ino) {
            Some(listed) => listed,
            None => self.client.readdir_all_as(ino, plus, caller).await?,
        };
        let root = self.client.root();
        let parent = if ino == root || parent == 0 {
            root
        } else {
            parent
        };
        Ok(DirSnapshot::new(ino, parent, entries))
    }
}

impl AlcesFs {
    /// A filesystem over `client`, running its work on `rt`.
    pub fn new(
        client: Client,
        rt: tokio::runtime::Handle,
        opts: FsOptions,
        metrics: Option<Metrics>,
    ) -> Self {
        let ttl = opts.attr_ttl;
        Self {
            shared: Arc::new(Shared {
                client,
                opts,
                files: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                metrics,
                journal: None,
                kernel_init: Arc::new(Mutex::new(None)),
                notifier: Arc::new(std::sync::OnceLock::new()),
                no_xattr: BoundedCache::new(ABSENT_XATTRS, Some(ttl)),
                xattr_free: BoundedCache::new(XATTR_FREE_INODES, Some(ttl)),
                lost_writes: Default::default(),
                draining: Default::default(),
                in_flight: Default::default(),
                readdirplus: Default::default(),
            }),
            rt,
        }
    }

    /// Journals every acknowledged write in `journal` (see [`crate::journal`]).
    pub fn with_journal(mut self, journal: Arc<Journal>) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.journal = Some(journal);
        }
        self
    }

    /// Marks files whose journalled writes were lost at the takeover (Alces
    /// inodes): every fsync and flush (close) of a descriptor opened before
    /// the takeover fails with EIO, so the application learns that writes it
    /// was told succeeded are not in the file.
    pub fn with_lost_writes(mut self, inodes: impl IntoIterator<Item = u64>) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.lost_writes.extend(inodes);
        }
        self
    }

    /// Where the kernel's INIT is put once received (for the session record).
    pub fn kernel_init(&self) -> Arc<Mutex<Option<KernelInit>>> {
        self.shared.kernel_init.clone()
    }

    /// Where the FUSE session's notifier is put once the session exists: a
    /// granted lock drops the kernel's cached pages of the file through it.
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<Notifier>> {
        self.shared.notifier.clone()
    }

    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(flight) = InFlight::enter(&self.shared) else {
            hold_unanswered(f)
        };
        let fut = f(self.shared.clone());
        self.rt.spawn(async move {
            fut.await;
            drop(flight);
        });
    }

    /// The handle that ends the service gracefully (see [`Drainer`]).
    pub fn drainer(&self) -> Drainer {
        Drainer {
            shared: self.shared.clone(),
        }
    }

    /// Runs a metadata operation to the end on the calling FUSE thread, with its
    /// master calls on the thread's own connection driven by the thread's own
    /// runtime: the request and its reply never wait for another thread to wake
    /// (about a quarter of a master call's latency on a small machine). Background
    /// work an operation starts (chunk writes of the write-behind buffer) runs on
    /// the shared runtime all the same. Reads, fsync and release, which wait on
    /// chunkservers through the shared runtime, use [`Self::spawn`].
    fn inline<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.inline_inner(None, f)
    }

    /// [`Self::inline`] for a request that makes one non-idempotent mutation:
    /// the mutation's id in the master's reply cache is derived from the
    /// kernel's request id `unique`, which a resent request keeps, so the
    /// request resent to a daemon that took over the connection gets the
    /// reply cached for the dead daemon's attempt.
    fn inline_tagged<F, Fut>(&self, unique: u64, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.inline_inner(Some(unique), f)
    }

    fn inline_inner<F, Fut>(&self, unique: Option<u64>, f: F)
    where
        F: FnOnce(Arc<Shared>) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Some(_flight) = InFlight::enter(&self.shared) else {
            hold_unanswered(f)
        };
        let shared = self.shared.clone();
        THREAD_RUNTIME.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                match ThreadRuntime::new(&shared.client) {
                    Ok(t) => *slot = Some(std::mem::ManuallyDrop::new(t)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start a FUSE thread's runtime; serving on the shared one");
                    }
                }
            }
            if let Some(t) = slot.as_mut() {
                t.refresh(&shared.client);
            }
            match slot.as_ref() {
                Some(t) => {
                    let fut = shared.client.with_master(
                        t.master.clone(),
                        shared.client.as_request(unique, f(shared.clone())),
                    );
                    t.rt.block_on(fut);
                }
                None => {
                    let fut = shared.client.as_request(unique, f(shared.clone()));
                    self.rt.block_on(fut);
                }
            }
        });
    }
}

impl AlcesFs {
    /// The listing of open directory handle `fh`; a handle of an earlier
    /// daemon (after a takeover) has the directory listed again.
    fn dir_snapshot(&self, req: &Request, ino: INodeNo, fh: Fh) -> Result<Arc<DirSnapshot>, Errno> {
        if let Some(s) = self.shared.dirs.lock().get(&fh.0).cloned() {
            return Ok(s);
        }
        let mut got = None;
        let slot = &mut got;
        let c = caller(req);
        self.inline(|s| async move {
            *slot = Some(s.snapshot(s.real(ino), &c).await);
        });
        match got {
            Some(Ok(snap)) => {
                let snap = Arc::new(snap);
                self.shared.dirs.lock().insert(fh.0, snap.clone());
                Ok(snap)
            }
            Some(Err(e)) => Err(errno(&e)),
            None => Err(Errno::from_i32(libc::EIO)),
        }
    }
}

impl Filesystem for AlcesFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        let offered_readahead = match config.set_max_readahead(MAX_READAHEAD) {
            Ok(offered) => offered,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let abi = config.kernel_abi();
        *self.shared.kernel_init.lock() = Some(KernelInit {
            major: abi.0,
            minor: abi.1,
            max_readahead: offered_readahead,
            flags: config.capabilities().bits(),
        });
        let _ = config.set_max_background(64);
        for cap in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_BIG_WRITES,
            // Locks go to the master (cluster-wide) instead of staying in
            // this kernel: POSIX record locks, and flock (which the kernel
            // sends as a whole-file lock owned by the open file description).
            InitFlags::FUSE_POSIX_LOCKS,
            InitFlags::FUSE_FLOCK_LOCKS,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks FUSE capability");
            }
        }
        // Listings with attributes, the kernel choosing per call (AUTO): the
        // first call of a listing, and later ones only while names of the
        // directory are being looked up (see client/ARCHITECTURE.md,
        // "Directory listings").
        let plus = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS)
            .is_ok();
        if plus
            && config
                .add_capabilities(InitFlags::FUSE_READDIRPLUS_AUTO)
                .is_err()
        {
            tracing::debug!("kernel lacks READDIRPLUS_AUTO: every listing call is READDIRPLUS");
        }
        self.shared.readdirplus.store(plus, Ordering::Relaxed);
        tracing::info!("FUSE session initialised");
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        self.inline(move |s| async move {
            let r = s.client.lookup(s.real(parent), &name, &c).await;
            s.reply_entry("lookup", r, reply);
        });
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {}

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<Fh>, reply: ReplyAttr) {
        self.inline(move |s| async move {
            let r = s.client.getattr_local(s.real(ino)).await;
            s.reply_attr("getattr", r, reply);
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<Fh>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = caller(req);
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(time_to_ns),
        };
        let op = move |s: Arc<Shared>| async move {
            let ino = s.real(ino);
            // A size change flushes the file's writes first: they are durable after.
            let mark = size.and_then(|_| s.journal_mark());
            let r = s.client.setattr(ino, &set, &c).await;
            s.journal_settle(ino, mark, r.is_ok());
            s.reply_attr("setattr", r, reply);
        };
        // A size change goes through the file's write-behind state.
        if size.is_some() {
            self.spawn(op);
        } else {
            self.inline(op);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.inline(move |s| async move {
            match s.client.readlink(s.real(ino)).await {
                Ok(t) => {
                    s.count("readlink", false);
                    reply.data(&t);
                }
                Err(e) => {
                    s.count("readlink", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = mknod_kind(mode) else {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        };
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        let unique = req.unique().0;
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s
                .client
                .mknod(
                    s.real(parent),
                    &name,
                    &NewNode {
                        kind,
                        mode: mode & 0o7777,
                        umask,
                        rdev: u64::from(rdev),
                        exclusive: true,
                    },
                    &c,
                )
                .await;
            let r = match r {
                Err(e) => match s
                    .resent_entry(unique, &e, s.real(parent), &name, &c, Want::Kind(kind))
                    .await
                {
                    Some(a) => Ok(a),
                    None => Err(e),
                },
                ok => ok,
            };
            s.reply_entry("mknod", r, reply);
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        let unique = req.unique().0;
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s
                .client
                .mkdir(s.real(parent), &name, mode & 0o7777, umask, &c)
                .await;
            let r = match r {
                Err(e) => match s
                    .resent_entry(
                        unique,
                        &e,
                        s.real(parent),
                        &name,
                        &c,
                        Want::Kind(FileType::Directory),
                    )
                    .await
                {
                    Some(a) => Ok(a),
                    None => Err(e),
                },
                ok => ok,
            };
            s.reply_entry("mkdir", r, reply);
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        let resent = is_resent(req.unique().0);
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s.client.unlink(s.real(parent), &name, &c).await;
            // Resent after a takeover: the dead daemon removed it already.
            let r = r.or_else(|e| {
                if resent && e.errno() == libc::ENOENT {
                    Ok(())
                } else {
                    Err(e)
                }
            });
            s.reply_empty("unlink", r, reply);
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        let resent = is_resent(req.unique().0);
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s.client.rmdir(s.real(parent), &name, &c).await;
            let r = r.or_else(|e| {
                if resent && e.errno() == libc::ENOENT {
                    Ok(())
                } else {
                    Err(e)
                }
            });
            s.reply_empty("rmdir", r, reply);
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = link_name.as_bytes().to_vec();
        let target = target.as_os_str().as_bytes().to_vec();
        let c = caller(req);
        let unique = req.unique().0;
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s.client.symlink(s.real(parent), &name, &target, &c).await;
            let r = match r {
                Err(e) => match s
                    .resent_entry(
                        unique,
                        &e,
                        s.real(parent),
                        &name,
                        &c,
                        Want::Kind(FileType::Symlink),
                    )
                    .await
                {
                    Some(a) => Ok(a),
                    None => Err(e),
                },
                ok => ok,
            };
            s.reply_entry("symlink", r, reply);
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let Some(flags) = rename_flags_of(flags.bits()) else {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        };
        let name = name.as_bytes().to_vec();
        let newname = newname.as_bytes().to_vec();
        let c = caller(req);
        let resent = is_resent(req.unique().0);
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s
                .client
                .rename(
                    s.real(parent),
                    &name,
                    s.real(newparent),
                    &newname,
                    flags,
                    &c,
                )
                .await;
            // Resent after a takeover: the source is gone and the target is
            // there, so the dead daemon did it.
            let r = match r {
                Err(e) if resent && e.errno() == libc::ENOENT => {
                    match s.client.lookup(s.real(newparent), &newname, &c).await {
                        Ok(_) => Ok(()),
                        Err(_) => Err(e),
                    }
                }
                r => r,
            };
            s.reply_empty("rename", r, reply);
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname.as_bytes().to_vec();
        let c = caller(req);
        let unique = req.unique().0;
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s
                .client
                .link(s.real(ino), s.real(newparent), &name, &c)
                .await;
            let r = match r {
                Err(e) => match s
                    .resent_entry(
                        unique,
                        &e,
                        s.real(newparent),
                        &name,
                        &c,
                        Want::Link(s.real(ino)),
                    )
                    .await
                {
                    Some(a) => Ok(a),
                    None => Err(e),
                },
                ok => ok,
            };
            s.reply_entry("link", r, reply);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        self.inline(move |s| async move {
            let real = s.real(ino);
            let open_here = s.files.lock().values().any(|h| h.inode() == real);
            match s.client.open(real, flags.0, &c).await {
                // The kernel opened a name it cached, but another mount removed
                // that file meanwhile (nobody here holds it open): ESTALE makes
                // the kernel look the name up again and open (or create) what
                // is there now.
                Ok(h) if h.attr().nlink == 0 && !open_here => {
                    if let Err(e) = h.release().await {
                        tracing::debug!(error = %e, "closing a removed file opened through a stale name");
                    }
                    s.count("open", true);
                    reply.error(Errno::from_i32(libc::ESTALE));
                }
                Ok(h) => {
                    let fl = if h.keep_cache() {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    let fh = s.add_file(h);
                    s.count("open", false);
                    reply.opened(Fh(fh), fl);
                }
                Err(e) => {
                    s.count("open", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |s| async move {
            let h = match s.handle(ino, fh).await {
                Ok(h) => h,
                Err(e) => {
                    s.count("read", true);
                    reply.error(errno(&e));
                    return;
                }
            };
            match h.read(offset, u64::from(size)).await {
                Ok(d) => {
                    s.count("read", false);
                    if let Some(m) = &s.metrics {
                        m.read_bytes.inc_by(d.len() as u64);
                    }
                    reply.data(&d);
                }
                Err(e) => {
                    s.count("read", true);
                    tracing::warn!(inode = h.inode(), offset, error = %e, "read failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Most writes only fill the write-behind buffer: done on this thread, with
        // no copy of the request's bytes but the one into the buffer.
        self.inline(move |s| async move {
            let h = match s.handle(ino, fh).await {
                Ok(h) => h,
                Err(e) => {
                    s.count("write", true);
                    reply.error(errno(&e));
                    return;
                }
            };
            let r = match h.write(offset, data).await {
                Ok(n) => s.journal_write(&h, offset, &data[..n]).await.map(|()| n),
                Err(e) => Err(e),
            };
            match r {
                Ok(n) => {
                    s.count("write", false);
                    if let Some(m) = &s.metrics {
                        m.written_bytes.inc_by(n as u64);
                    }
                    reply.written(n as u32);
                }
                Err(e) => {
                    s.count("write", true);
                    tracing::warn!(inode = h.inode(), offset, error = %e, "write failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.inline(move |s| async move {
            // A handle of an earlier daemon has nothing buffered here: its
            // journalled writes were replayed and flushed before serving.
            let r = match s.file(fh) {
                Some(h) => {
                    let mark = s.journal_mark();
                    let r = h.flush().await;
                    s.journal_settle(h.inode(), mark, r.is_ok());
                    r
                }
                None => Ok(()),
            };
            let r = r.and(s.check_lost(ino, fh));
            // POSIX: any close by a process releases its locks on the file
            // (the kernel sends FLUSH with the process's lock owner on every
            // close, also of a dying process's files).
            let unlocked = s.client.release_locks(s.real(ino), lock_owner.0).await;
            let r = r.and(unlocked);
            s.reply_empty("flush", r, reply);
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |s| async move {
            // The last close of an open file description releases the locks
            // it owns: its flock (the owner the kernel passes) and its OFD
            // locks, which the kernel drops without telling the filesystem
            // (the owners noted on the handle; see `locks::HandleOwners`).
            if let Some(owner) = lock_owner {
                if let Err(e) = s.client.release_locks(s.real(ino), owner.0).await {
                    tracing::warn!(error = %e, "releasing a flock at close failed");
                }
            }
            if let Err(e) = s.client.release_handle_locks(fh.0).await {
                tracing::warn!(error = %e, "releasing an open file's locks at close failed");
            }
            let h = s.files.lock().remove(&fh.0);
            let mut r = match h {
                Some(h) => {
                    let mark = s.journal_mark();
                    let r = h.release().await;
                    s.journal_settle(h.inode(), mark, r.is_ok());
                    r
                }
                None => Ok(()),
            };
            // A handle an earlier daemon opened: its open in the session this
            // daemon continues ends now.
            if fh.0 >> GENERATION_SHIFT != s.opts.generation {
                if let Err(e) = s.client.release_inherited(s.real(ino)).await {
                    r = r.and(Err(e));
                }
            }
            s.reply_empty("release", r, reply);
        });
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: Fh, _datasync: bool, reply: ReplyEmpty) {
        self.spawn(move |s| async move {
            let r = match s.file(fh) {
                Some(h) => {
                    let mark = s.journal_mark();
                    let r = h.fsync().await;
                    s.journal_settle(h.inode(), mark, r.is_ok());
                    r
                }
                // A handle of an earlier daemon: its journalled writes were
                // replayed and flushed before serving.
                None => Ok(()),
            };
            let r = r.and(s.check_lost(ino, fh));
            s.reply_empty("fsync", r, reply);
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        self.inline(move |s| async move {
            match s.snapshot(s.real(ino), &c).await {
                Ok(snap) => {
                    let fh = s.new_fh(0);
                    s.dirs.lock().insert(fh, Arc::new(snap));
                    s.count("opendir", false);
                    reply.opened(Fh(fh), FopenFlags::empty());
                }
                Err(e) => {
                    s.count("opendir", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: Fh, offset: u64, mut reply: ReplyDirectory) {
        let snap = match self.dir_snapshot(req, ino, fh) {
            Ok(snap) => snap,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        for (next, e) in snap.entries_from(offset) {
            let ino = INodeNo(self.shared.fuse_ino(e.inode));
            if reply.add(
                ino,
                next,
                kind_of(e.kind as i32),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        self.shared.count("readdir", false);
        reply.ok();
    }

    /// Every entry (but "." and "..") the kernel takes from a READDIRPLUS
    /// reply counts as a LOOKUP of it; this daemon keeps no per-inode lookup
    /// count (inodes are the master's numbers and FORGET frees nothing), so
    /// there is nothing to balance. Attributes come from the listing, and
    /// are given the timeout of a LOOKUP answer.
    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let snap = match self.dir_snapshot(req, ino, fh) {
            Ok(snap) => snap,
            Err(e) => {
                reply.error(e);
                return;
            }
        };
        self.inline(move |s| async move {
            let dir = s.real(ino);
            let mut dots: Option<Attr> = None;
            for (next, e) in snap.entries_from(offset) {
                let attr = match (&e.attr, e.name.as_slice()) {
                    // The kernel does not link "." and ".." (it skips
                    // their attributes): the directory's when known (a
                    // directory removed while open has none; only its
                    // kind is sent then).
                    (_, b"." | b"..") => {
                        let a = match dots {
                            Some(a) => a,
                            None => {
                                *dots.insert(s.client.getattr_local(dir).await.unwrap_or(Attr {
                                    inode: dir,
                                    kind: FileType::Directory as i32,
                                    ..Default::default()
                                }))
                            }
                        };
                        Attr {
                            inode: e.inode,
                            ..a
                        }
                    }
                    (Some(a), _) => *a,
                    // A listing without attributes (names only, as a
                    // credential session without search permission gets):
                    // one call per entry.
                    (None, _) => match s.client.getattr_local(e.inode).await {
                        Ok(a) => a,
                        // Removed since the listing.
                        Err(err) if err.errno() == libc::ENOENT => continue,
                        Err(err) => {
                            s.count("readdirplus", true);
                            reply.error(errno(&err));
                            return;
                        }
                    },
                };
                s.note_xattrs(&attr);
                let fa = s.fattr(&s.client.with_local_size(attr));
                let ino = INodeNo(s.fuse_ino(e.inode));
                if reply.add(
                    ino,
                    next,
                    OsStr::from_bytes(&e.name),
                    &s.entry_ttl(),
                    &fa,
                    Generation(0),
                ) {
                    break;
                }
            }
            s.count("readdirplus", false);
            reply.ok();
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: Fh,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.dirs.lock().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: Fh, _datasync: bool, reply: ReplyEmpty) {
        // Namespace mutations are durable in the master's changelog when acknowledged.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.inline(move |s| async move {
            match s.client.statfs_at(s.real(ino)).await {
                Ok(st) => {
                    let b = u64::from(BLOCK_SIZE);
                    s.count("statfs", false);
                    reply.statfs(
                        st.total_bytes / b,
                        st.free_bytes / b,
                        st.avail_bytes / b,
                        st.total_inodes,
                        st.free_inodes,
                        BLOCK_SIZE,
                        crate::names::MAX_NAME_LEN as u32,
                        BLOCK_SIZE,
                    );
                }
                Err(e) => {
                    s.count("statfs", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        let name = name.as_bytes().to_vec();
        let value = value.to_vec();
        let c = caller(req);
        self.inline_tagged(req.unique().0, move |s| async move {
            let ino = s.real(ino);
            s.set_xattr_absent(ino, &name, false);
            let r = s
                .client
                .setxattr(ino, &name, &value, flags as u32, &c)
                .await;
            // Again after the call: an attribute reply that left the master before
            // the change may have marked the inode xattr-free meanwhile.
            s.set_xattr_absent(ino, &name, false);
            s.reply_empty("setxattr", r, reply);
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        self.inline(move |s| async move {
            let ino = s.real(ino);
            if s.xattr_known_absent(ino, &name) {
                s.count("getxattr", true);
                reply.error(Errno::from_i32(libc::ENODATA));
                return;
            }
            match s.client.getxattr(ino, &name, &c).await {
                Ok(v) => {
                    s.count("getxattr", false);
                    match xattr_fit(&v, size) {
                        Ok(None) => reply.size(v.len() as u32),
                        Ok(Some(d)) => reply.data(d),
                        Err(e) => reply.error(e),
                    }
                }
                Err(e) => {
                    s.count("getxattr", true);
                    if e.errno() == libc::ENODATA {
                        s.set_xattr_absent(ino, &name, true);
                    }
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let c = caller(req);
        self.inline(move |s| async move {
            match s.client.listxattr(s.real(ino), &c).await {
                Ok(names) => {
                    s.count("listxattr", false);
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    match xattr_fit(&buf, size) {
                        Ok(None) => reply.size(buf.len() as u32),
                        Ok(Some(d)) => reply.data(d),
                        Err(e) => reply.error(e),
                    }
                }
                Err(e) => {
                    s.count("listxattr", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        self.inline_tagged(req.unique().0, move |s| async move {
            let r = s.client.removexattr(s.real(ino), &name, &c).await;
            s.reply_empty("removexattr", r, reply);
        });
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // Permission checks are done by the kernel (default_permissions); this
        // only confirms the inode exists.
        self.inline(move |s| async move {
            let r = s.client.getattr(s.real(ino)).await.map(|_| ());
            s.reply_empty("access", r, reply);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.as_bytes().to_vec();
        let c = caller(req);
        let unique = req.unique().0;
        self.inline_tagged(req.unique().0, move |s| async move {
            let exclusive = flags & libc::O_EXCL != 0;
            let r = s
                .client
                .create_open(
                    s.real(parent),
                    &name,
                    &NewNode {
                        mode: mode & 0o7777,
                        umask,
                        exclusive,
                        ..NewNode::file(0)
                    },
                    flags,
                    &c,
                )
                .await;
            // Resent after a takeover, the file the dead daemon made is there:
            // open it as that create would have.
            let r = match r {
                Err(e) => match s
                    .resent_entry(
                        unique,
                        &e,
                        s.real(parent),
                        &name,
                        &c,
                        Want::Kind(FileType::Regular),
                    )
                    .await
                {
                    Some(a) => {
                        s.client
                            .open(
                                a.inode,
                                flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC),
                                &c,
                            )
                            .await
                    }
                    None => Err(e),
                },
                ok => ok,
            };
            match r {
                Ok(h) => {
                    let attr = *h.attr();
                    let fh = s.add_file(h);
                    s.count("create", false);
                    s.note_xattrs(&attr);
                    reply.created(
                        &s.entry_ttl(),
                        &s.fattr(&attr),
                        Generation(0),
                        Fh(fh),
                        FopenFlags::empty(),
                    );
                }
                Err(e) => {
                    s.count("create", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: Fh,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.inline(move |s| async move {
            let r = match lock_spec(s.real(ino), lock_owner, start, end, typ, pid) {
                Ok(spec) => s.client.get_lock(spec).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(Some(c)) => {
                    s.count("getlk", false);
                    let typ = if c.write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(c.start, c.end, typ, c.pid);
                }
                Ok(None) => {
                    s.count("getlk", false);
                    reply.locked(start, end, libc::F_UNLCK, 0);
                }
                Err(e) => {
                    s.count("getlk", true);
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Fh,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let caller_tid = req.pid();
        let op = move |s: Arc<Shared>| async move {
            let spec = match lock_spec(s.real(ino), lock_owner, start, end, typ, pid) {
                Ok(spec) => spec,
                Err(e) => return s.reply_empty("setlk", Err(e), reply),
            };
            // What this process wrote goes out before its lock changes hands
            // (another mount that locks next reads it).
            let h = s.file(fh);
            if let Some(h) = &h {
                if let Err(e) = h.flush().await {
                    return s.reply_empty("setlk", Err(e), reply);
                }
            }
            if !sleep || spec.kind == LockKind::Unlock {
                let r = s.client.set_lock(spec, false, fh.0).await;
                if r.is_ok() && spec.kind != LockKind::Unlock {
                    s.lock_granted(ino, h.as_deref());
                }
                return s.reply_empty("setlk", r, reply);
            }
            // A blocking wait. fuser answers the kernel's FUSE_INTERRUPT
            // itself (ENOSYS, after which the kernel sends none), so a signal
            // to the waiting thread is seen here instead: its pending signals
            // are checked in /proc while the call waits, and a pending one
            // that is neither blocked nor ignored (SIGKILL included) cancels
            // the wait with EINTR.
            let wait = s.client.set_lock(spec, true, fh.0);
            tokio::pin!(wait);
            let r = loop {
                tokio::select! {
                    r = &mut wait => break r,
                    _ = tokio::time::sleep(SIGNAL_CHECK) => {
                        if signal_pending(caller_tid) {
                            break Err(Error::new(libc::EINTR, "interrupted by a signal while waiting for a lock"));
                        }
                    }
                }
            };
            if r.is_ok() {
                s.lock_granted(ino, h.as_deref());
            }
            s.reply_empty("setlkw", r, reply);
        };
        if sleep {
            self.spawn(op);
        } else {
            self.inline(op);
        }
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: Fh,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            reply.error(Errno::from_i32(libc::EOPNOTSUPP));
            return;
        }
        let c = caller(req);
        self.spawn(move |s| async move {
            let r = async {
                let ino = s.real(ino);
                let end = offset
                    .checked_add(length)
                    .ok_or_else(|| Error::new(libc::EFBIG, "fallocate range overflows"))?;
                let a = s.client.getattr_local(ino).await?;
                if end > a.size {
                    s.client.truncate(ino, end, &c).await?;
                }
                Ok(())
            }
            .await;
            s.reply_empty("fallocate", r, reply);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        for ns in [0i64, 1, 1_700_000_000_123_456_789, -5_000_000_001] {
            assert_eq!(time_to_ns(ns_to_time(ns)), ns);
        }
    }

    #[test]
    fn rename_and_mknod_flags() {
        assert_eq!(rename_flags_of(0), Some(0));
        assert_eq!(
            rename_flags_of(libc::RENAME_NOREPLACE),
            Some(rename_flags::NOREPLACE)
        );
        assert_eq!(
            rename_flags_of(libc::RENAME_EXCHANGE),
            Some(rename_flags::EXCHANGE)
        );
        assert_eq!(rename_flags_of(libc::RENAME_WHITEOUT), None);
        assert_eq!(mknod_kind(libc::S_IFIFO | 0o644), Some(FileType::Fifo));
        assert_eq!(mknod_kind(0o644), Some(FileType::Regular));
        assert_eq!(mknod_kind(libc::S_IFDIR | 0o755), None);
    }

    #[test]
    fn resent_requests_found_done_only_when_evidently_ours() {
        let now = 1_000_000_000_000_000i64;
        let a = Attr {
            inode: 9,
            kind: FileType::Directory as i32,
            uid: 1000,
            ctime_ns: now - 1_000_000_000,
            ..Default::default()
        };
        assert!(resent_entry_done(
            &a,
            Want::Kind(FileType::Directory),
            1000,
            now
        ));
        // Another owner, another type, or an old entry: a genuine EEXIST.
        assert!(!resent_entry_done(
            &a,
            Want::Kind(FileType::Directory),
            1001,
            now
        ));
        assert!(!resent_entry_done(
            &a,
            Want::Kind(FileType::Regular),
            1000,
            now
        ));
        assert!(!resent_entry_done(
            &a,
            Want::Kind(FileType::Directory),
            1000,
            now + RESENT_WINDOW_NS
        ));
        assert!(resent_entry_done(&a, Want::Link(9), 0, now));
        assert!(!resent_entry_done(&a, Want::Link(8), 0, now));
    }

    #[test]
    fn pending_signals_from_proc_status() {
        let status = |pnd: &str, shd: &str, blk: &str, ign: &str| {
            format!("Name:\tx\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0000000000000000\n")
        };
        let zero = "0000000000000000";
        // (name, SigPnd, ShdPnd, SigBlk, SigIgn, interrupted)
        let cases = [
            ("nothing pending", zero, zero, zero, zero, false),
            (
                "SIGINT to the process",
                zero,
                "0000000000000002",
                zero,
                zero,
                true,
            ),
            (
                "SIGUSR1 to the thread",
                "0000000000000200",
                zero,
                zero,
                zero,
                true,
            ),
            (
                "SIGINT blocked",
                zero,
                "0000000000000002",
                "0000000000000002",
                zero,
                false,
            ),
            (
                "SIGCHLD ignored",
                zero,
                "0000000000010000",
                zero,
                "0000000000010000",
                false,
            ),
            (
                "SIGKILL always",
                zero,
                "0000000000000100",
                "fffffffffffffeff",
                zero,
                true,
            ),
        ];
        for (name, pnd, shd, blk, ign, want) in cases {
            assert_eq!(
                pending_in_status(&status(pnd, shd, blk, ign)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn xattr_sizes() {
        assert_eq!(xattr_fit(b"abc", 0), Ok(None));
        assert_eq!(xattr_fit(b"abc", 3), Ok(Some(&b"abc"[..])));
        assert_eq!(xattr_fit(b"abc", 2), Err(Errno::from_i32(libc::ERANGE)));
    }
}
