//! The chunk store: chunk files over one or more data directories (one per disk),
//! the in-memory chunk list, per-chunk locks, and the changes to report to the
//! master.
//!
//! The synchronous `*_locked` methods do the file I/O and expect the caller to
//! hold the chunk's lock; the async methods take the lock and run the I/O on
//! tokio's blocking pool, so mutations of one chunk are serialised (reads of it
//! share the lock) while different chunks proceed in parallel. Locks are a fixed
//! array of sharded tokio read-write locks.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::checksum::{crc32c, crc32c_append};
use alces_proto::geometry::MAX_CHUNK_SIZE;
use alces_proto::pb::{ChunkInfo, DiskInfo};
use parking_lot::Mutex;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock as AsyncRwLock};

use crate::format::{
    blocks_for, chunk_path, parse_chunk_file_name, ChunkHeader, BLOCK, CHUNKS_DIR,
    CRC_TABLE_OFFSET, DAMAGED_DIR, DATA_OFFSET, HEADER_SIZE, TMP_DIR,
};
use crate::metrics::Metrics;
use crate::open_files::{OpenFiles, DEFAULT_OPEN_FILES};

/// Number of lock shards; chunks whose ids fall in one shard share a lock.
const LOCK_SHARDS: usize = 1024;
/// Largest read served on the calling task when the page cache holds it (see
/// [`ChunkStore::read`]).
pub const INLINE_READ_MAX: u64 = 256 * 1024;

/// How long the free space of the data directories is trusted when choosing
/// the disk of a new chunk.
const FREE_SPACE_TTL: Duration = Duration::from_secs(1);

/// A block of zeros, for CRCs of zero-filled ranges.
static ZEROS: [u8; BLOCK as usize] = [0u8; BLOCK as usize];

/// Why a chunk operation failed; each maps to an errno for the wire.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The chunk is not on this server.
    #[error("chunk {0:016x} does not exist on this chunkserver")]
    NotFound(u64),
    /// The local copy has another version than the request allows.
    #[error(
        "chunk {chunk_id:016x} is stale: this copy has version {have}, the request needs {want}"
    )]
    Stale {
        /// Chunk id.
        chunk_id: u64,
        /// Local version.
        have: u64,
        /// What the request asked for.
        want: String,
    },
    /// The request itself is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The chunk failed a checksum or size check; it was dropped and reported.
    #[error("chunk {chunk_id:016x} is damaged on this chunkserver ({reason}); it was dropped and reported to the master, read another copy")]
    Damaged {
        /// Chunk id.
        chunk_id: u64,
        /// What was wrong.
        reason: String,
    },
    /// No space left on the data directory.
    #[error("no space left on data directory {0}")]
    NoSpace(String),
    /// Any other I/O failure.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl StoreError {
    /// The errno this error travels as.
    pub fn errno(&self) -> i32 {
        match self {
            StoreError::NotFound(_) => libc::ENOENT,
            StoreError::Stale { .. } => libc::ESTALE,
            StoreError::Invalid(_) => libc::EINVAL,
            StoreError::Damaged { .. } => libc::EIO,
            StoreError::NoSpace(_) => libc::ENOSPC,
            StoreError::Io { .. } => libc::EIO,
        }
    }

    /// The error as a gRPC status carrying its errno.
    pub fn to_status(&self) -> tonic::Status {
        alces_proto::errno::status(self.errno(), self.to_string())
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            StoreError::NoSpace(path.display().to_string())
        } else {
            StoreError::Io {
                path: path.display().to_string(),
                source,
            }
        }
    }
}

/// Result of a chunk store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// What the store knows about one chunk it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Index of the data directory holding it.
    pub disk: u32,
    /// Current version.
    pub version: u64,
    /// Stored data length.
    pub length: u64,
}

/// The version part of a mutating request (see the VERSION RULE in chunk.proto).
#[derive(Clone, Copy, Debug, Default)]
pub struct VersionSpec {
    /// Version the chunk must have to be moved to `version`.
    pub expected_version: u64,
    /// Version of the write session.
    pub version: u64,
    /// Create the chunk when it does not exist.
    pub create: bool,
    /// Create it as a copy of this chunk (id, version); 0 = none.
    pub copy_from_chunk_id: u64,
    /// Version of the chunk to copy from.
    pub copy_from_version: u64,
}

/// When a newly created chunk file is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// Synced (file and directory entry) before the chunk counts as held: the
    /// master may count the copy as valid and delete another one right away.
    Synced,
    /// Left in the page cache until the next Sync of the chunk, as POSIX allows
    /// for data not yet fsynced (a killed process loses nothing; an OS crash
    /// may lose the file, which then reads as absent or damaged at startup).
    UntilSync,
}

/// Chunk changes not yet acknowledged by the master.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Deltas {
    /// Chunks created or changed (latest state).
    pub changed: HashMap<u64, ChunkInfo>,
    /// Chunks removed.
    pub removed: HashSet<u64>,
    /// Chunks found damaged and dropped.
    pub damaged: HashSet<u64>,
}

impl Deltas {
    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty() && self.damaged.is_empty()
    }
}

/// One data directory.
#[derive(Debug)]
pub struct Disk {
    /// The data directory.
    pub path: PathBuf,
    /// Chunks found damaged on it since startup.
    pub corrupt_chunks: AtomicU64,
}

/// Space of a filesystem as statvfs reports it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Space {
    /// Size in bytes.
    pub total: u64,
    /// Bytes available to this process.
    pub free: u64,
    /// Bytes in use.
    pub used: u64,
}

/// Space of the filesystem holding `path`.
pub fn statvfs(path: &Path) -> std::io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "path contains NUL"))?;
    // SAFETY: `st` is a plain C struct filled by statvfs; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let free = (st.f_bavail as u64).saturating_mul(frsize);
    let bfree = (st.f_bfree as u64).saturating_mul(frsize);
    Ok(Space {
        total,
        free,
        used: total.saturating_sub(bfree),
    })
}

/// Chunks on local disks.
pub struct ChunkStore {
    disks: Vec<Disk>,
    chunks: Mutex<HashMap<u64, ChunkMeta>>,
    deltas: Mutex<Deltas>,
    locks: Vec<Arc<AsyncRwLock<()>>>,
    metrics: Metrics,
    open_files: OpenFiles,
    /// Whether reads try the page cache without waiting first (cleared when the
    /// filesystem does not support it).
    nowait_reads: std::sync::atomic::AtomicBool,
    /// Chunks created empty for a write session whose file and directory entry
    /// are not yet synced: the next Sync makes them durable. The value says
    /// whether the creation also made the chunk's `chunks/<xx>` folder.
    unsynced: Mutex<HashMap<u64, bool>>,
    /// Free bytes per disk and when they were measured.
    free_space: Mutex<Option<(Instant, Vec<u64>)>>,
}

/// Holds the lock(s) of the chunk(s) an operation works on.
pub struct ChunkGuard {
    _shared: Option<OwnedRwLockReadGuard<()>>,
    _exclusive: Vec<OwnedRwLockWriteGuard<()>>,
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Io {
        path: "<blocking task>".to_string(),
        source: std::io::Error::other(format!("blocking I/O task failed: {e}")),
    }
}

impl ChunkStore {
    /// Opens the store over `dirs` (creating their folders) and scans them for
    /// chunks. Files with a bad header are moved to `<dir>/damaged/`. Keeps up
    /// to `DEFAULT_OPEN_FILES` (1024) chunk files open.
    pub fn open(dirs: &[PathBuf], metrics: Metrics) -> anyhow::Result<Self> {
        Self::open_with(dirs, metrics, DEFAULT_OPEN_FILES)
    }

    /// Like [`ChunkStore::open`], keeping at most `open_files` chunk files open
    /// between operations (0: open the file for every operation).
    pub fn open_with(
        dirs: &[PathBuf],
        metrics: Metrics,
        open_files: usize,
    ) -> anyhow::Result<Self> {
        if dirs.is_empty() {
            anyhow::bail!("no data directory given: pass at least one --data-dir");
        }
        for (i, d) in dirs.iter().enumerate() {
            if dirs[..i].contains(d) {
                anyhow::bail!(
                    "data directory {} is given twice; pass each disk once",
                    d.display()
                );
            }
        }
        let mut disks = Vec::new();
        for d in dirs {
            for sub in [CHUNKS_DIR, DAMAGED_DIR, TMP_DIR] {
                let p = d.join(sub);
                std::fs::create_dir_all(&p).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot create {}: {e}; check that the data directory exists and is writable",
                        p.display()
                    )
                })?;
            }
            // All 256 chunk folders exist from the start (durably), so creating
            // a chunk never has to make (and sync) its folder.
            let mut made = false;
            for low in 0..=0xffu64 {
                let folder = chunk_path(d, low);
                let folder = folder.parent().unwrap_or(d);
                match std::fs::create_dir(folder) {
                    Ok(()) => made = true,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => anyhow::bail!(
                        "cannot create {}: {e}; check that the data directory is writable",
                        folder.display()
                    ),
                }
            }
            if made {
                let root = d.join(CHUNKS_DIR);
                sync_dir(&root)
                    .map_err(|e| anyhow::anyhow!("cannot sync {}: {e}", root.display()))?;
            }
            // Partial chunk files from an interrupted build are worthless.
            if let Ok(rd) = std::fs::read_dir(d.join(TMP_DIR)) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            disks.push(Disk {
                path: d.clone(),
                corrupt_chunks: AtomicU64::new(0),
            });
        }
        let store = Self {
            disks,
            chunks: Mutex::new(HashMap::new()),
            deltas: Mutex::new(Deltas::default()),
            locks: (0..LOCK_SHARDS)
                .map(|_| Arc::new(AsyncRwLock::new(())))
                .collect(),
            metrics,
            open_files: OpenFiles::new(open_files),
            nowait_reads: std::sync::atomic::AtomicBool::new(true),
            unsynced: Mutex::new(HashMap::new()),
            free_space: Mutex::new(None),
        };
        store.scan();
        Ok(store)
    }

    fn scan(&self) {
        for (di, disk) in self.disks.iter().enumerate() {
            let root = disk.path.join(CHUNKS_DIR);
            let Ok(subdirs) = std::fs::read_dir(&root) else {
                tracing::error!(dir = %root.display(), "cannot list chunk folder");
                continue;
            };
            for sub in subdirs.flatten() {
                let Ok(files) = std::fs::read_dir(sub.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let path = f.path();
                    let name = f.file_name().to_string_lossy().to_string();
                    let Some(id) = parse_chunk_file_name(&name) else {
                        tracing::warn!(file = %path.display(), "ignoring a file that is not named like a chunk");
                        continue;
                    };
                    let canonical = chunk_path(&disk.path, id);
                    if path != canonical {
                        if canonical.exists() {
                            tracing::warn!(file = %path.display(), "chunk file in the wrong folder duplicates {}; moving it to damaged/", canonical.display());
                            move_to_damaged(&disk.path, &path);
                            continue;
                        }
                        tracing::warn!(file = %path.display(), to = %canonical.display(), "chunk file in the wrong folder; moving it where it belongs");
                        let moved = canonical
                            .parent()
                            .map(std::fs::create_dir_all)
                            .unwrap_or(Ok(()))
                            .and_then(|_| std::fs::rename(&path, &canonical));
                        if let Err(e) = moved {
                            tracing::error!(file = %path.display(), error = %e, "cannot move chunk file; ignoring it");
                            continue;
                        }
                    }
                    match read_header(&canonical, id) {
                        Ok(h) => self.adopt_scanned(di as u32, h),
                        Err(reason) => {
                            tracing::error!(file = %path.display(), %reason, "chunk file has a bad header; moving it to damaged/");
                            self.metrics.damaged_chunks.inc();
                            disk.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
                            move_to_damaged(&disk.path, &canonical);
                        }
                    }
                }
            }
        }
        let n = self.chunks.lock().len();
        self.metrics.chunks.set(n as i64);
        tracing::info!(chunks = n, disks = self.disks.len(), "chunk scan done");
    }

    fn adopt_scanned(&self, disk: u32, h: ChunkHeader) {
        let mut chunks = self.chunks.lock();
        let meta = ChunkMeta {
            disk,
            version: h.version,
            length: h.length,
        };
        if let Some(old) = chunks.get(&h.chunk_id).copied() {
            if old.disk == disk {
                // The same file, seen again after it was moved into its folder.
                return;
            }
            // The same chunk on two disks: keep the newer copy.
            let (keep, drop_disk) = if old.version >= h.version {
                (old, disk)
            } else {
                (meta, old.disk)
            };
            let drop_path = chunk_path(&self.disks[drop_disk as usize].path, h.chunk_id);
            tracing::warn!(chunk = format!("{:016x}", h.chunk_id), dropped = %drop_path.display(), "chunk found on two disks; moving the older copy to damaged/");
            move_to_damaged(&self.disks[drop_disk as usize].path, &drop_path);
            chunks.insert(h.chunk_id, keep);
        } else {
            chunks.insert(h.chunk_id, meta);
        }
    }

    /// The data directories.
    pub fn disks(&self) -> &[Disk] {
        &self.disks
    }

    /// The metrics the store updates.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the store holds about `chunk_id`.
    pub fn get(&self, chunk_id: u64) -> Option<ChunkMeta> {
        self.chunks.lock().get(&chunk_id).copied()
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.chunks.lock().len()
    }

    /// True when no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every chunk held, for a full report to the master.
    pub fn chunk_list(&self) -> Vec<ChunkInfo> {
        self.chunks
            .lock()
            .iter()
            .map(|(id, m)| info(*id, m))
            .collect()
    }

    /// True while `chunk_id` was created empty for a write session and not
    /// synced since: its file and directory entry may not survive an OS crash.
    pub fn is_unsynced(&self, chunk_id: u64) -> bool {
        self.unsynced.lock().contains_key(&chunk_id)
    }

    /// Number of chunk files kept open now.
    pub fn open_files(&self) -> usize {
        self.open_files.len()
    }

    /// Chunk ids held (for the scrubber).
    pub fn chunk_ids(&self) -> Vec<u64> {
        self.chunks.lock().keys().copied().collect()
    }

    /// Space and chunk counts of every data directory.
    pub fn disk_infos(&self) -> Vec<DiskInfo> {
        let mut per_disk = vec![0u64; self.disks.len()];
        for m in self.chunks.lock().values() {
            if let Some(c) = per_disk.get_mut(m.disk as usize) {
                *c += 1;
            }
        }
        self.disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (space, damaged) = match statvfs(&d.path) {
                    Ok(s) => (s, false),
                    Err(_) => (Space::default(), true),
                };
                DiskInfo {
                    path: d.path.display().to_string(),
                    total_bytes: space.total,
                    used_bytes: space.used,
                    free_bytes: space.free,
                    chunks: per_disk[i],
                    damaged,
                    corrupt_chunks: d.corrupt_chunks.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Takes the changes not yet reported (they are cleared).
    pub fn take_deltas(&self) -> Deltas {
        std::mem::take(&mut *self.deltas.lock())
    }

    /// Gives back changes whose report failed; newer changes of the same chunk win.
    pub fn restore_deltas(&self, old: Deltas) {
        let mut d = self.deltas.lock();
        let newer = |d: &Deltas, id: &u64| {
            d.changed.contains_key(id) || d.removed.contains(id) || d.damaged.contains(id)
        };
        for (id, ci) in old.changed {
            if !newer(&d, &id) {
                d.changed.insert(id, ci);
            }
        }
        for id in old.removed {
            if !newer(&d, &id) {
                d.removed.insert(id);
            }
        }
        for id in old.damaged {
            if !newer(&d, &id) {
                d.damaged.insert(id);
            }
        }
    }

    /// Clears unreported changes (after a full report of the chunk list).
    pub fn clear_deltas(&self) {
        *self.deltas.lock() = Deltas::default();
    }

    fn note_changed(&self, chunk_id: u64, m: &ChunkMeta) {
        let mut d = self.deltas.lock();
        d.removed.remove(&chunk_id);
        d.damaged.remove(&chunk_id);
        d.changed.insert(chunk_id, info(chunk_id, m));
    }

    fn note_removed(&self, chunk_id: u64) {
        let mut d = self.deltas.lock();
        d.changed.remove(&chunk_id);
        d.damaged.remove(&chunk_id);
        d.removed.insert(chunk_id);
    }

    fn set_meta(&self, chunk_id: u64, m: ChunkMeta) {
        let n = {
            let mut c = self.chunks.lock();
            c.insert(chunk_id, m);
            c.len()
        };
        self.metrics.chunks.set(n as i64);
        self.note_changed(chunk_id, &m);
    }

    fn path_of(&self, chunk_id: u64, m: &ChunkMeta) -> PathBuf {
        chunk_path(&self.disks[m.disk as usize].path, chunk_id)
    }

    /// Drops a damaged chunk: out of the list, its file moved to `damaged/`,
    /// reported to the master. Returns the error to answer with.
    pub fn mark_damaged(&self, chunk_id: u64, reason: String) -> StoreError {
        let removed = {
            let mut c = self.chunks.lock();
            let r = c.remove(&chunk_id);
            self.metrics.chunks.set(c.len() as i64);
            r
        };
        self.forget_file(chunk_id);
        self.unsynced.lock().remove(&chunk_id);
        if let Some(m) = removed {
            let disk = &self.disks[m.disk as usize];
            disk.corrupt_chunks.fetch_add(1, Ordering::Relaxed);
            tracing::error!(chunk = format!("{chunk_id:016x}"), disk = %disk.path.display(), %reason, "chunk is damaged; dropping it and reporting it to the master");
            move_to_damaged(&disk.path, &chunk_path(&disk.path, chunk_id));
            self.metrics.damaged_chunks.inc();
            let mut d = self.deltas.lock();
            d.changed.remove(&chunk_id);
            d.removed.remove(&chunk_id);
            d.damaged.insert(chunk_id);
        }
        StoreError::Damaged { chunk_id, reason }
    }

    // ----- locking -----

    fn shard(&self, chunk_id: u64) -> usize {
        // Spread consecutive ids (the master allocates them in order).
        (chunk_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as usize % LOCK_SHARDS
    }

    /// Locks `chunk_id` for reading (shared with other readers).
    pub async fn lock_shared(&self, chunk_id: u64) -> ChunkGuard {
        let g = self.locks[self.shard(chunk_id)].clone().read_owned().await;
        ChunkGuard {
            _shared: Some(g),
            _exclusive: Vec::new(),
        }
    }

    /// Locks `chunk_id` (and `other` too when non-zero, without deadlocking)
    /// for a mutation.
    pub async fn lock(&self, chunk_id: u64, other: u64) -> ChunkGuard {
        let mut shards = vec![self.shard(chunk_id)];
        if other != 0 {
            shards.push(self.shard(other));
        }
        shards.sort_unstable();
        shards.dedup();
        let mut guards = Vec::with_capacity(shards.len());
        for s in shards {
            guards.push(self.locks[s].clone().write_owned().await);
        }
        ChunkGuard {
            _shared: None,
            _exclusive: guards,
        }
    }

    /// Runs `f` on the blocking pool while holding `guard`.
    async fn run_guarded<T, F>(self: &Arc<Self>, guard: ChunkGuard, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ChunkStore) -> StoreResult<T> + Send + 'static,
    {
        let store = self.clone();
        // The guard moves into the blocking task so a cancelled request cannot
        // release the lock while its I/O still runs.
        tokio::task::spawn_blocking(move || {
            let r = f(&store);
            drop(guard);
            r
        })
        .await
        .map_err(join_err)?
    }

    async fn run_locked<T, F>(self: &Arc<Self>, chunk_id: u64, other: u64, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ChunkStore) -> StoreResult<T> + Send + 'static,
    {
        let guard = self.lock(chunk_id, other).await;
        self.run_guarded(guard, f).await
    }

    async fn run_shared<T, F>(self: &Arc<Self>, chunk_id: u64, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ChunkStore) -> StoreResult<T> + Send + 'static,
    {
        let guard = self.lock_shared(chunk_id).await;
        self.run_guarded(guard, f).await
    }

    // ----- async operations -----

    /// Reads `length` bytes at `offset` (zeros past the stored length); returns
    /// the data and the chunk's stored length. `version` 0 accepts any version.
    ///
    /// A read of at most [`INLINE_READ_MAX`] bytes whose blocks are all in the
    /// page cache is served on the calling task (`preadv2` with `RWF_NOWAIT`),
    /// saving the hand-off to the blocking pool and back; anything that would wait
    /// for the disk, or a chunk locked by a writer, goes to the blocking pool.
    pub async fn read(
        self: &Arc<Self>,
        chunk_id: u64,
        version: u64,
        offset: u64,
        length: u64,
    ) -> StoreResult<(Vec<u8>, u64)> {
        if length <= INLINE_READ_MAX && self.nowait_reads.load(Ordering::Relaxed) {
            if let Ok(g) = self.locks[self.shard(chunk_id)].clone().try_read_owned() {
                let r = self.read_with(chunk_id, version, offset, length, true);
                drop(g);
                match r {
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.run_shared(chunk_id, move |s| {
            s.read_locked(chunk_id, version, offset, length)
        })
        .await
    }

    /// Writes `data` at `offset` under the version rule.
    pub async fn write(
        self: &Arc<Self>,
        chunk_id: u64,
        spec: VersionSpec,
        offset: u64,
        data: bytes::Bytes,
    ) -> StoreResult<ChunkMeta> {
        self.run_locked(chunk_id, spec.copy_from_chunk_id, move |s| {
            s.write_locked(chunk_id, &spec, offset, &data)
        })
        .await
    }

    /// Writes several `(offset, data)` ranges in order, under one lock and one
    /// version check (see [`ChunkStore::write`]).
    pub async fn write_many(
        self: &Arc<Self>,
        chunk_id: u64,
        spec: VersionSpec,
        extents: Vec<(u64, bytes::Bytes)>,
    ) -> StoreResult<ChunkMeta> {
        self.run_locked(chunk_id, spec.copy_from_chunk_id, move |s| {
            let mut last = None;
            for (offset, data) in &extents {
                last = Some(s.write_locked(chunk_id, &spec, *offset, data)?);
            }
            match last {
                Some(m) => Ok(m),
                None => s.write_locked(chunk_id, &spec, 0, &[]),
            }
        })
        .await
    }

    /// Sets the chunk's length under the version rule.
    pub async fn truncate(
        self: &Arc<Self>,
        chunk_id: u64,
        spec: VersionSpec,
        length: u64,
    ) -> StoreResult<ChunkMeta> {
        self.run_locked(chunk_id, spec.copy_from_chunk_id, move |s| {
            s.truncate_locked(chunk_id, &spec, length)
        })
        .await
    }

    /// Flushes the chunk to stable storage; `version` 0 accepts any version.
    pub async fn sync(self: &Arc<Self>, chunk_id: u64, version: u64) -> StoreResult<()> {
        self.run_locked(chunk_id, 0, move |s| s.sync_locked(chunk_id, version))
            .await
    }

    /// Deletes the chunk if its version is at most `max_version` (0 = any);
    /// returns whether it was deleted.
    pub async fn delete(self: &Arc<Self>, chunk_id: u64, max_version: u64) -> StoreResult<bool> {
        self.run_locked(chunk_id, 0, move |s| s.delete_locked(chunk_id, max_version))
            .await
    }

    /// Stores a full copy of a chunk fetched from elsewhere (replication),
    /// unless this server already has that version or a newer one.
    pub async fn install(
        self: &Arc<Self>,
        chunk_id: u64,
        version: u64,
        data: Vec<u8>,
    ) -> StoreResult<bool> {
        self.run_locked(chunk_id, 0, move |s| {
            if let Some(m) = s.get(chunk_id) {
                if m.version >= version {
                    return Ok(false);
                }
            }
            s.create_file(chunk_id, version, &data, Durability::Synced)?;
            Ok(true)
        })
        .await
    }

    /// Verifies the CRCs of `nblocks` blocks from block `first` (and the header
    /// when `first` is 0); returns the bytes checked, `None` past the end or when
    /// the chunk is gone. A failure marks the chunk damaged.
    pub async fn verify_blocks(
        self: &Arc<Self>,
        chunk_id: u64,
        first: u64,
        nblocks: u64,
    ) -> StoreResult<Option<u64>> {
        self.run_shared(chunk_id, move |s| {
            let Some(m) = s.get(chunk_id) else {
                return Ok(None);
            };
            if first == 0 {
                // The header is cached in memory while serving; check the file's.
                let path = s.path_of(chunk_id, &m);
                match read_header(&path, chunk_id) {
                    Ok(h) if h.version == m.version && h.length == m.length => {}
                    Ok(h) => {
                        return Err(s.mark_damaged(
                            chunk_id,
                            format!(
                                "header says version {} length {}, expected version {} length {}",
                                h.version, h.length, m.version, m.length
                            ),
                        ))
                    }
                    Err(reason) => return Err(s.mark_damaged(chunk_id, reason)),
                }
            }
            let start = first.saturating_mul(BLOCK);
            if start >= m.length {
                return Ok(None);
            }
            let len = nblocks.saturating_mul(BLOCK).min(m.length - start);
            s.read_locked(chunk_id, 0, start, len)?;
            Ok(Some(len))
        })
        .await
    }

    // ----- synchronous operations (caller holds the chunk lock) -----

    /// The open file of the chunk (kept open between operations). A file opened
    /// anew is checked to be as long as its header says.
    fn file(&self, chunk_id: u64, m: &ChunkMeta, write: bool) -> StoreResult<Arc<File>> {
        if let Some(f) = self.open_files.get(chunk_id, m.disk, write) {
            return Ok(f);
        }
        let path = self.path_of(chunk_id, m);
        let open = |write: bool| OpenOptions::new().read(true).write(write).open(&path);
        // Open for writing too when allowed, so later writes reuse the file.
        let mut res = open(true);
        if res.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EMFILE) {
            tracing::warn!(
                open = self.open_files.len(),
                "out of file descriptors; closing the cached chunk files (lower --open-files or raise the limit)"
            );
            self.open_files.clear();
            res = open(true);
        }
        let (f, writable) = match res {
            Ok(f) => (f, true),
            Err(e)
                if !write
                    && (e.kind() == ErrorKind::PermissionDenied
                        || e.raw_os_error() == Some(libc::EROFS)) =>
            {
                (
                    open(false).map_err(|e| self.open_error(chunk_id, &path, e))?,
                    false,
                )
            }
            Err(e) => return Err(self.open_error(chunk_id, &path, e)),
        };
        self.check_size(chunk_id, m, &f)?;
        let f = Arc::new(f);
        self.open_files
            .insert(chunk_id, m.disk, f.clone(), writable);
        Ok(f)
    }

    fn open_error(&self, chunk_id: u64, path: &Path, e: std::io::Error) -> StoreError {
        if e.kind() == ErrorKind::NotFound {
            self.mark_damaged(chunk_id, format!("file {} is missing", path.display()))
        } else {
            StoreError::io(path, e)
        }
    }

    /// Closes the chunk's cached file: done before its file is replaced,
    /// removed or moved, so a stale file is never read or written.
    fn forget_file(&self, chunk_id: u64) {
        self.open_files.remove(chunk_id);
    }

    /// Checks the file is as long as the header says.
    fn check_size(&self, chunk_id: u64, m: &ChunkMeta, f: &File) -> StoreResult<()> {
        let path = self.path_of(chunk_id, m);
        let size = f.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if size < DATA_OFFSET + m.length {
            return Err(self.mark_damaged(
                chunk_id,
                format!(
                    "file is {size} bytes but its header says {} data bytes (needs {})",
                    m.length,
                    DATA_OFFSET + m.length
                ),
            ));
        }
        Ok(())
    }

    /// Reads the stored data range `[start, end)` (must be within the length,
    /// block-aligned at `start`) and verifies every block's CRC.
    fn read_verified(
        &self,
        chunk_id: u64,
        m: &ChunkMeta,
        f: &File,
        start: u64,
        end: u64,
    ) -> StoreResult<Vec<u8>> {
        self.read_verified_with(chunk_id, m, f, start, end, false)
            .map(|b| b.expect("a blocking read always completes"))
    }

    /// [`Self::read_verified`]; with `cached_only`, `Ok(None)` when the data is not
    /// all in the page cache.
    fn read_verified_with(
        &self,
        chunk_id: u64,
        m: &ChunkMeta,
        f: &File,
        start: u64,
        end: u64,
        cached_only: bool,
    ) -> StoreResult<Option<Vec<u8>>> {
        debug_assert!(start.is_multiple_of(BLOCK) && end <= m.length);
        let path = self.path_of(chunk_id, m);
        let mut buf = vec![0u8; (end - start) as usize];
        let b0 = start / BLOCK;
        let nb = blocks_for(end - start);
        let mut raw = vec![0u8; (nb * 4) as usize];
        let read = pread_exact(f, &mut buf, DATA_OFFSET + start, cached_only).and_then(|got| {
            Ok(got && pread_exact(f, &mut raw, CRC_TABLE_OFFSET + b0 * 4, cached_only)?)
        });
        match read {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // The filesystem cannot read without waiting: stop trying.
                self.nowait_reads.store(false, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(self.read_error(chunk_id, m, &path, e)),
        }
        let crcs: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(bad) = self.check_blocks(chunk_id, &buf, b0, &crcs) {
            return Err(bad);
        }
        Ok(Some(buf))
    }

    /// The error for a failed read of chunk `chunk_id`'s file: a file shorter than
    /// its header says is damaged.
    fn read_error(
        &self,
        chunk_id: u64,
        m: &ChunkMeta,
        path: &Path,
        e: std::io::Error,
    ) -> StoreError {
        if e.kind() == ErrorKind::UnexpectedEof {
            return self.mark_damaged(
                chunk_id,
                format!(
                    "file is shorter than its header says ({} data bytes)",
                    m.length
                ),
            );
        }
        StoreError::io(path, e)
    }

    /// Checks every block of `buf` (starting at block `b0`) against `crcs`; the
    /// damage error of the first mismatch.
    fn check_blocks(&self, chunk_id: u64, buf: &[u8], b0: u64, crcs: &[u32]) -> Option<StoreError> {
        for (i, chunk) in buf.chunks(BLOCK as usize).enumerate() {
            let crc = crc32c(chunk);
            if crc != crcs[i] {
                self.metrics.crc_failures.inc();
                return Some(self.mark_damaged(
                    chunk_id,
                    format!(
                        "CRC mismatch in block {} (stored {:#010x}, computed {crc:#010x})",
                        b0 + i as u64,
                        crcs[i]
                    ),
                ));
            }
        }
        None
    }

    /// See [`ChunkStore::read`].
    pub fn read_locked(
        &self,
        chunk_id: u64,
        version: u64,
        offset: u64,
        length: u64,
    ) -> StoreResult<(Vec<u8>, u64)> {
        self.read_with(chunk_id, version, offset, length, false)
            .map(|r| r.expect("a blocking read always completes"))
    }

    /// [`ChunkStore::read_locked`]; with `cached_only`, `Ok(None)` when the data
    /// is not all in the page cache (nothing waited for the disk).
    fn read_with(
        &self,
        chunk_id: u64,
        version: u64,
        offset: u64,
        length: u64,
        cached_only: bool,
    ) -> StoreResult<Option<(Vec<u8>, u64)>> {
        let m = self.get(chunk_id).ok_or(StoreError::NotFound(chunk_id))?;
        if version != 0 && m.version != version {
            return Err(StoreError::Stale {
                chunk_id,
                have: m.version,
                want: version.to_string(),
            });
        }
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= MAX_CHUNK_SIZE)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "read of {length} bytes at offset {offset} goes past the largest chunk size {MAX_CHUNK_SIZE}"
                ))
            })?;
        let mut out = vec![0u8; length as usize];
        let stored_end = end.min(m.length);
        if offset < stored_end {
            let f = self.file(chunk_id, &m, false)?;
            let start = offset / BLOCK * BLOCK;
            let region_end = (stored_end.div_ceil(BLOCK) * BLOCK).min(m.length);
            let Some(buf) =
                self.read_verified_with(chunk_id, &m, &f, start, region_end, cached_only)?
            else {
                return Ok(None);
            };
            let from = (offset - start) as usize;
            let n = (stored_end - offset) as usize;
            out[..n].copy_from_slice(&buf[from..from + n]);
        }
        Ok(Some((out, m.length)))
    }

    /// Applies the version rule, creating (or copying) the chunk when asked.
    fn prepare(&self, chunk_id: u64, spec: &VersionSpec) -> StoreResult<ChunkMeta> {
        if spec.version == 0 {
            return Err(StoreError::Invalid(
                "version 0 is not a valid chunk version; ask the master for a write session"
                    .to_string(),
            ));
        }
        if spec.version < spec.expected_version {
            return Err(StoreError::Invalid(format!(
                "version {} is lower than expected_version {}; versions only grow",
                spec.version, spec.expected_version
            )));
        }
        match self.get(chunk_id) {
            Some(m) if m.version == spec.version => Ok(m),
            Some(m) if m.version == spec.expected_version => {
                let new = ChunkMeta {
                    version: spec.version,
                    ..m
                };
                let f = self.file(chunk_id, &m, true)?;
                self.write_header(chunk_id, &new, &f)?;
                let path = self.path_of(chunk_id, &m);
                // The new version is durable before any data of the session lands.
                f.sync_data().map_err(|e| StoreError::io(&path, e))?;
                self.set_meta(chunk_id, new);
                Ok(new)
            }
            Some(m) => Err(StoreError::Stale {
                chunk_id,
                have: m.version,
                want: format!("{} or {}", spec.expected_version, spec.version),
            }),
            None if !spec.create => Err(StoreError::NotFound(chunk_id)),
            None if spec.copy_from_chunk_id != 0 => {
                let src = spec.copy_from_chunk_id;
                if src == chunk_id {
                    return Err(StoreError::Invalid(
                        "copy_from_chunk_id is the chunk itself".to_string(),
                    ));
                }
                let sm = self.get(src).ok_or(StoreError::NotFound(src))?;
                let (data, _) = self.read_locked(src, spec.copy_from_version, 0, sm.length)?;
                self.create_file(chunk_id, spec.version, &data, Durability::Synced)
            }
            // The empty file of a new write session becomes durable with the
            // session's first Sync (see `sync_locked`).
            None => self.create_file(chunk_id, spec.version, &[], Durability::UntilSync),
        }
    }

    fn write_header(&self, chunk_id: u64, m: &ChunkMeta, f: &File) -> StoreResult<()> {
        let h = ChunkHeader {
            chunk_id,
            version: m.version,
            length: m.length,
        };
        f.write_all_at(&h.encode(), 0)
            .map_err(|e| StoreError::io(&self.path_of(chunk_id, m), e))
    }

    /// Index of the disk with the most free space (measured at most once per
    /// [`FREE_SPACE_TTL`]).
    fn pick_disk(&self) -> u32 {
        if self.disks.len() == 1 {
            return 0;
        }
        let mut cached = self.free_space.lock();
        let fresh = matches!(&*cached, Some((at, _)) if at.elapsed() < FREE_SPACE_TTL);
        if !fresh {
            let free = self
                .disks
                .iter()
                .map(|d| statvfs(&d.path).map(|s| s.free).unwrap_or(0))
                .collect();
            *cached = Some((Instant::now(), free));
        }
        let mut best = (0u32, 0u64);
        if let Some((_, free)) = &*cached {
            for (i, f) in free.iter().enumerate() {
                if i == 0 || *f > best.1 {
                    best = (i as u32, *f);
                }
            }
        }
        best.0
    }

    /// Creates a chunk file holding `data` (replacing any previous copy): built
    /// in `tmp/`, then renamed into place. With [`Durability::Synced`] the file
    /// and its directory entry are synced before it counts as held; with
    /// [`Durability::UntilSync`] that is left to the next `sync_locked`.
    fn create_file(
        &self,
        chunk_id: u64,
        version: u64,
        data: &[u8],
        durability: Durability,
    ) -> StoreResult<ChunkMeta> {
        if data.len() as u64 > MAX_CHUNK_SIZE {
            return Err(StoreError::Invalid(format!(
                "chunk data of {} bytes exceeds the largest chunk size {MAX_CHUNK_SIZE}",
                data.len()
            )));
        }
        let synced = durability == Durability::Synced;
        let old = self.get(chunk_id);
        let disk = old.map(|m| m.disk).unwrap_or_else(|| self.pick_disk());
        let dir = &self.disks[disk as usize].path;
        let tmp = dir
            .join(TMP_DIR)
            .join(format!("{chunk_id:016x}.{version}.tmp"));
        let meta = ChunkMeta {
            disk,
            version,
            length: data.len() as u64,
        };
        let build = || -> std::io::Result<File> {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            let mut head = ChunkHeader {
                chunk_id,
                version,
                length: meta.length,
            }
            .encode();
            let mut table = vec![0u8; (DATA_OFFSET - CRC_TABLE_OFFSET) as usize];
            for (i, b) in data.chunks(BLOCK as usize).enumerate() {
                table[i * 4..i * 4 + 4].copy_from_slice(&crc32c(b).to_le_bytes());
            }
            head.extend_from_slice(&table);
            f.write_all_at(&head, 0)?;
            f.write_all_at(data, DATA_OFFSET)?;
            if synced {
                f.sync_all()?;
            }
            Ok(f)
        };
        let file = match build() {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::io(&tmp, e));
            }
        };
        let dst = chunk_path(dir, chunk_id);
        let parent = dst.parent().map(Path::to_path_buf).unwrap_or_default();
        // The previous copy's open file must never serve the new one.
        self.forget_file(chunk_id);
        let place = || -> std::io::Result<bool> {
            // The chunk's folder usually exists: try the rename first.
            let made_dir = match std::fs::rename(&tmp, &dst) {
                Ok(()) => false,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    std::fs::create_dir_all(&parent)?;
                    std::fs::rename(&tmp, &dst)?;
                    true
                }
                Err(e) => return Err(e),
            };
            if synced {
                sync_dir(&parent)?;
                if made_dir {
                    sync_dir(parent.parent().unwrap_or(&parent))?;
                }
            }
            Ok(made_dir)
        };
        let made_dir = match place() {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::io(&dst, e));
            }
        };
        {
            let mut u = self.unsynced.lock();
            if synced {
                u.remove(&chunk_id);
            } else {
                u.insert(chunk_id, made_dir);
            }
        }
        self.open_files.insert(chunk_id, disk, Arc::new(file), true);
        self.set_meta(chunk_id, meta);
        Ok(meta)
    }

    /// See [`ChunkStore::write`].
    pub fn write_locked(
        &self,
        chunk_id: u64,
        spec: &VersionSpec,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<ChunkMeta> {
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= MAX_CHUNK_SIZE)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "write of {len} bytes at offset {offset} goes past the largest chunk size {MAX_CHUNK_SIZE}"
                ))
            })?;
        let m = self.prepare(chunk_id, spec)?;
        if len == 0 {
            return Ok(m);
        }
        let path = self.path_of(chunk_id, &m);
        let f = self.file(chunk_id, &m, true)?;
        let old_len = m.length;
        let new_len = old_len.max(end);
        let start = offset.min(old_len);
        let b0 = start / BLOCK;
        let b1 = (end - 1) / BLOCK;
        let buf_start = b0 * BLOCK;
        let buf_end = ((b1 + 1) * BLOCK).min(new_len);
        let mut buf = vec![0u8; (buf_end - buf_start) as usize];
        // Blocks at the edges keep old bytes: read and verify them first so a
        // corrupt block is never given a fresh CRC.
        let mut edges = vec![b0];
        if b1 != b0 {
            edges.push(b1);
        }
        for b in edges {
            let bs = b * BLOCK;
            if bs >= old_len {
                continue;
            }
            let keeps_old = bs < offset || (bs + BLOCK).min(old_len) > end;
            if !keeps_old {
                continue;
            }
            let be = (bs + BLOCK).min(old_len);
            let old = self.read_verified(chunk_id, &m, &f, bs, be)?;
            let at = (bs - buf_start) as usize;
            buf[at..at + old.len()].copy_from_slice(&old);
        }
        let at = (offset - buf_start) as usize;
        buf[at..at + data.len()].copy_from_slice(data);
        let mut table = Vec::with_capacity(((b1 - b0 + 1) * 4) as usize);
        for b in buf.chunks(BLOCK as usize) {
            table.extend_from_slice(&crc32c(b).to_le_bytes());
        }
        f.write_all_at(&buf, DATA_OFFSET + buf_start)
            .map_err(|e| StoreError::io(&path, e))?;
        f.write_all_at(&table, CRC_TABLE_OFFSET + b0 * 4)
            .map_err(|e| StoreError::io(&path, e))?;
        let new = ChunkMeta {
            length: new_len,
            ..m
        };
        if new_len != old_len {
            self.write_header(chunk_id, &new, &f)?;
        }
        self.set_meta(chunk_id, new);
        self.metrics.bytes_written.inc_by(len);
        Ok(new)
    }

    /// See [`ChunkStore::truncate`].
    pub fn truncate_locked(
        &self,
        chunk_id: u64,
        spec: &VersionSpec,
        length: u64,
    ) -> StoreResult<ChunkMeta> {
        if length > MAX_CHUNK_SIZE {
            return Err(StoreError::Invalid(format!(
                "truncate to {length} bytes exceeds the largest chunk size {MAX_CHUNK_SIZE}"
            )));
        }
        let m = self.prepare(chunk_id, spec)?;
        let old_len = m.length;
        if length == old_len {
            return Ok(m);
        }
        let path = self.path_of(chunk_id, &m);
        let f = self.file(chunk_id, &m, true)?;
        let io = |e| StoreError::io(&path, e);
        if length < old_len {
            // The block the cut falls in keeps a prefix: verify, then re-CRC it.
            let lb = length / BLOCK;
            let bs = lb * BLOCK;
            let crc = if !length.is_multiple_of(BLOCK) {
                let old = self.read_verified(chunk_id, &m, &f, bs, (bs + BLOCK).min(old_len))?;
                Some(crc32c(&old[..(length - bs) as usize]))
            } else {
                None
            };
            f.set_len(DATA_OFFSET + length).map_err(io)?;
            if let Some(crc) = crc {
                f.write_all_at(&crc.to_le_bytes(), CRC_TABLE_OFFSET + lb * 4)
                    .map_err(io)?;
            }
        } else {
            let lb = old_len / BLOCK;
            let mut table = Vec::new();
            let mut b = lb;
            if !old_len.is_multiple_of(BLOCK) {
                let bs = lb * BLOCK;
                let old = self.read_verified(chunk_id, &m, &f, bs, old_len)?;
                let grown = (bs + BLOCK).min(length) - old_len;
                let crc = crc32c_append(crc32c(&old), &ZEROS[..grown as usize]);
                table.extend_from_slice(&crc.to_le_bytes());
                b += 1;
            }
            let zero_block_crc = crc32c(&ZEROS);
            while b * BLOCK < length {
                let n = (length - b * BLOCK).min(BLOCK);
                let crc = if n == BLOCK {
                    zero_block_crc
                } else {
                    crc32c(&ZEROS[..n as usize])
                };
                table.extend_from_slice(&crc.to_le_bytes());
                b += 1;
            }
            f.set_len(DATA_OFFSET + length).map_err(io)?;
            f.write_all_at(&table, CRC_TABLE_OFFSET + lb * 4)
                .map_err(io)?;
        }
        let new = ChunkMeta { length, ..m };
        self.write_header(chunk_id, &new, &f)?;
        self.set_meta(chunk_id, new);
        Ok(new)
    }

    /// See [`ChunkStore::sync`].
    pub fn sync_locked(&self, chunk_id: u64, version: u64) -> StoreResult<()> {
        let m = self.get(chunk_id).ok_or(StoreError::NotFound(chunk_id))?;
        if version != 0 && m.version != version {
            return Err(StoreError::Stale {
                chunk_id,
                have: m.version,
                want: version.to_string(),
            });
        }
        let f = self.file(chunk_id, &m, true)?;
        let path = self.path_of(chunk_id, &m);
        let io = |e| StoreError::io(&path, e);
        let Some(made_dir) = self.unsynced.lock().get(&chunk_id).copied() else {
            return f.sync_data().map_err(io);
        };
        // Created for this write session and never synced: the whole file, its
        // directory entry (and the folder's, if the creation made the folder).
        f.sync_all().map_err(io)?;
        let parent = path.parent().unwrap_or(&path);
        sync_dir(parent).map_err(|e| StoreError::io(parent, e))?;
        if made_dir {
            let grand = parent.parent().unwrap_or(parent);
            sync_dir(grand).map_err(|e| StoreError::io(grand, e))?;
        }
        self.unsynced.lock().remove(&chunk_id);
        Ok(())
    }

    /// See [`ChunkStore::delete`].
    pub fn delete_locked(&self, chunk_id: u64, max_version: u64) -> StoreResult<bool> {
        let Some(m) = self.get(chunk_id) else {
            return Ok(false);
        };
        if max_version != 0 && m.version > max_version {
            tracing::info!(
                chunk = format!("{chunk_id:016x}"),
                local = m.version,
                max_version,
                "not deleting a chunk newer than the delete command allows"
            );
            return Ok(false);
        }
        let path = self.path_of(chunk_id, &m);
        self.forget_file(chunk_id);
        self.unsynced.lock().remove(&chunk_id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&path, e)),
        }
        let n = {
            let mut c = self.chunks.lock();
            c.remove(&chunk_id);
            c.len()
        };
        self.metrics.chunks.set(n as i64);
        self.note_removed(chunk_id);
        Ok(true)
    }
}

fn info(chunk_id: u64, m: &ChunkMeta) -> ChunkInfo {
    ChunkInfo {
        chunk_id,
        version: m.version,
        disk: m.disk,
        length: m.length,
    }
}

/// Syncs the directory `dir` (its entries: files created or renamed in it).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads `n` CRC table entries from block `first`.
/// Reads exactly `buf.len()` bytes at `off`; `Ok(true)` when done. With
/// `cached_only`, reads only what the page cache holds (`preadv2` with
/// `RWF_NOWAIT`): `Ok(false)` when the rest would have to wait for the disk.
fn pread_exact(f: &File, buf: &mut [u8], off: u64, cached_only: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    if !cached_only {
        f.read_exact_at(buf, off)?;
        return Ok(true);
    }
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let at = libc::off_t::try_from(off + done as u64)
            .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
        // SAFETY: `iov` describes `rest`, which is valid for writes of its length,
        // and the descriptor is open for the call's duration.
        let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        done += n as usize;
    }
    Ok(true)
}

/// Reads and checks the header of the chunk file at `path` named for `chunk_id`.
fn read_header(path: &Path, chunk_id: u64) -> Result<ChunkHeader, String> {
    let f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let size = f.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    let mut b = vec![0u8; HEADER_SIZE as usize];
    f.read_exact_at(&mut b, 0)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let h = ChunkHeader::decode(&b)?;
    if h.chunk_id != chunk_id {
        return Err(format!(
            "header names chunk {:016x} but the file is named for {chunk_id:016x}",
            h.chunk_id
        ));
    }
    if size < DATA_OFFSET + h.length {
        return Err(format!(
            "file is {size} bytes but its header says {} data bytes",
            h.length
        ));
    }
    Ok(h)
}

/// Moves a chunk file into `<data_dir>/damaged/` (removing it if that fails).
fn move_to_damaged(data_dir: &Path, path: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "chunk".to_string());
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let dst = data_dir.join(DAMAGED_DIR).join(format!("{name}.{stamp}"));
    if let Err(e) = std::fs::rename(path, &dst) {
        tracing::error!(file = %path.display(), error = %e, "cannot move a damaged chunk file to damaged/; removing it");
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Drops `f`'s clean pages from the page cache.
    fn evict(f: &File) {
        f.sync_all().unwrap();
        // SAFETY: a valid open descriptor; advice has no memory effects.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0, "posix_fadvise");
    }

    #[test]
    fn a_cached_only_read_never_waits_for_the_disk() {
        // On the repository's disk, not a tmpfs (whose pages cannot be evicted).
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let mut buf = vec![0u8; 8192];

        evict(&f);
        assert!(
            !pread_exact(&f, &mut buf, 65536, true).unwrap(),
            "an evicted range must not be read without waiting"
        );
        // A blocking read brings it in; then the cached-only read succeeds.
        assert!(pread_exact(&f, &mut buf, 65536, false).unwrap());
        assert_eq!(buf, data[65536..65536 + 8192]);
        buf.fill(0);
        assert!(pread_exact(&f, &mut buf, 65536, true).unwrap());
        assert_eq!(buf, data[65536..65536 + 8192]);
        // Past the end is an error either way, never a short success.
        let mut tail = vec![0u8; 100];
        for cached_only in [false, true] {
            let e = pread_exact(&f, &mut tail, (1 << 20) - 50, cached_only).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
        }
    }
}
