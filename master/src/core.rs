//! The master's shared state and the commit path: the metadata, sessions and
//! chunk map behind one lock, the changelog writer, durability waits and
//! background snapshots. The domain operations (`domain`) are built on
//! it; it knows nothing of them (the periodic maintenance is
//! `domain::maintenance`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use alces_proto::pb::changelog_record::Op;
use alces_proto::pb::{self, ChangelogRecord};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::Status;

use crate::disk::changelog::{Durable, Writer};
use crate::disk::{datadir, snapshot};
use crate::metrics::Metrics;
use crate::runtime::chunkmap::{Adoption, ChunkMap};
use crate::runtime::replication::Hub;
use crate::runtime::sessions::Sessions;
use crate::state::error::{FsError, FsResult};
use crate::state::namespace::State;
use crate::state::ops::apply;
use crate::state::replies::{Reply, Tag};

/// Records after which a snapshot is taken even before the interval.
pub const SNAPSHOT_RECORDS: u64 = 1_000_000;

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Settings the running master needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client lease.
    pub session_timeout: Duration,
    /// Grace after a chunkserver's last heartbeat before its copies stop counting.
    pub chunkserver_timeout: Duration,
    /// Silence after which a chunkserver is shown disconnected (its copies
    /// still count until `chunkserver_timeout`).
    pub chunkserver_disconnect: Duration,
    /// Time between periodic snapshots.
    pub snapshot_interval: Duration,
    /// Pace of replication, drain and rebalancing.
    pub replication: crate::runtime::chunkmap::Policy,
    /// Metaloggers that must hold a mutation before it is acknowledged.
    pub sync_metaloggers: usize,
    /// How long a mutation waits for them before the master degrades.
    pub sync_timeout: Duration,
    /// The cluster secret presented to chunkservers (the master cuts chunks
    /// past a file's end itself).
    pub chunk_auth: Option<crate::core::ChunkAuth>,
    /// The cluster secret, signing the chunk access of credentials' sessions
    /// (`alces_proto::access`).
    pub access_secret: AccessSecret,
}

/// The cluster secret the chunk access of credentials is signed with.
#[derive(Clone)]
pub struct AccessSecret(pub std::sync::Arc<str>);

impl std::fmt::Debug for AccessSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessSecret(<cluster secret>)")
    }
}

/// The cluster secret the master presents to chunkservers when it cuts a chunk.
#[derive(Clone)]
pub struct ChunkAuth(pub alces_proto::auth::ClientAuth);

impl std::fmt::Debug for ChunkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkAuth(<cluster secret>)")
    }
}

/// Everything behind the master lock.
pub struct Inner {
    /// Replicated metadata.
    pub state: State,
    /// Client sessions.
    pub sessions: Sessions,
    /// Chunkservers and copies.
    pub chunks: ChunkMap,
    /// Version of the newest snapshot on disk.
    pub snapshot_version: u64,
    /// Orphans found at startup were purged (after one session timeout).
    pub startup_orphans_done: bool,
    /// Chunks that may hold bytes past their file's end, and open write sessions.
    pub tails: crate::runtime::tails::Tails,
    /// File locks and the requests waiting for one (never persisted).
    pub locks: crate::runtime::locks::LockTable,
    /// Metadata leases of client sessions (never persisted).
    pub leases: crate::runtime::leases::Leases,
    /// The session whose request is being committed: its own leases are not
    /// broken by its changes (the client updates its cache itself).
    pub author: Option<u64>,
    /// Lease breaks the changes committed under this lock hold must wait for
    /// before they are acknowledged (taken by [`Core::mutate`]).
    pub break_waits: Vec<crate::runtime::leases::BreakWait>,
}

/// Hands memory the allocator holds but no longer uses back to the system.
/// Encoding a snapshot allocates and frees a directory's worth of entries at a
/// time; without this the freed pages stay counted in the master's RSS.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it has no
    // preconditions and does not touch memory in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Limits the allocator to two heap arenas; called once at startup, before any
/// thread exists. The namespace is allocated by whichever worker thread runs a
/// mutation, and glibc gives each thread its own arena, so with the default
/// (eight per core) the permanent data ends up spread over several arenas, each
/// with its own free holes left by request buffers. The master serialises
/// mutations on its lock anyway, so more arenas buy it little concurrency.
/// Its effect is part of the `rss` figure of `alces-bench`.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any
    // other thread is started.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The master.
pub struct Core {
    /// State behind the lock (never held across an await).
    pub inner: Mutex<Inner>,
    writer: Mutex<Option<Writer>>,
    durable: watch::Receiver<Durable>,
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Settings.
    pub settings: Settings,
    /// Master epoch.
    pub epoch: u64,
    /// Metrics.
    pub metrics: Metrics,
    /// When the master started serving.
    pub started: Instant,
    /// Replication to metaloggers and fencing.
    pub hub: Hub,
}

impl Core {
    /// A master over recovered `state`, appending to the changelog in the data dir.
    pub fn new(
        state: State,
        snapshot_version: u64,
        epoch: u64,
        settings: Settings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let mut state = state;
        state.inodes.track_changes();
        let writer = Writer::start(
            &settings.data_dir,
            state.version + 1,
            state.version,
            metrics.fsync_seconds.clone(),
        )?;
        let durable = writer.durable();
        let hub = Hub::new(
            state.version + 1,
            settings.sync_metaloggers,
            settings.sync_timeout,
        );
        let tails = crate::runtime::tails::Tails::new(settings.session_timeout);
        Ok(Self {
            inner: Mutex::new(Inner {
                state,
                sessions: Sessions::default(),
                chunks: ChunkMap::default(),
                snapshot_version,
                startup_orphans_done: false,
                tails,
                locks: Default::default(),
                leases: Default::default(),
                author: None,
                break_waits: Vec::new(),
            }),
            writer: Mutex::new(Some(writer)),
            durable,
            snapshot_lock: tokio::sync::Mutex::new(()),
            settings,
            epoch,
            metrics,
            started: Instant::now(),
            hub,
        })
    }

    /// Decides the record of `op`, applies it and queues it for the changelog.
    /// Returns its version; the caller waits with [`Core::wait_durable`] before
    /// answering.
    pub fn commit(&self, inner: &mut Inner, op: Op) -> FsResult<u64> {
        self.commit_record(inner, op, |_| None)
    }

    /// Commits `op` for a request tagged `tag` (see [`crate::state::replies`]):
    /// `reply` computes the answer from the state right after the op, and that
    /// answer goes into the same changelog record and into the reply cache, so
    /// a retry of the request is answered with it. Untagged: as [`Core::commit`].
    pub fn commit_replied<R: Reply>(
        &self,
        inner: &mut Inner,
        op: Op,
        tag: Option<Tag>,
        reply: impl FnOnce(&Inner) -> FsResult<R>,
    ) -> FsResult<(u64, R)> {
        let mut answer = None;
        let v = self.commit_record(inner, op, |inner| {
            let r = reply(inner);
            let record = match (&r, tag) {
                (Ok(r), Some(t)) => Some(t.record(r.to_outcome())),
                _ => None,
            };
            answer = Some(r);
            record
        })?;
        match answer {
            Some(r) => Ok((v, r?)),
            None => Err(FsError::new(
                libc::EIO,
                "the reply of a committed change was not computed",
            )),
        }
    }

    /// Applies `op` as the next record, adds the reply `reply` computes from
    /// the state after it (if any) to the record and the reply cache, and
    /// queues the record for the changelog.
    fn commit_record(
        &self,
        inner: &mut Inner,
        op: Op,
        reply: impl FnOnce(&Inner) -> Option<pb::ReplyRecord>,
    ) -> FsResult<u64> {
        if self.hub.is_fenced() {
            return Err(FsError::new(
                libc::EROFS,
                "this master has been replaced by a newer one (higher epoch) and accepts no changes",
            ));
        }
        if self.durable.borrow().failed {
            return Err(FsError::new(
                libc::EIO,
                "the metadata changelog cannot be written (disk error on the master); no changes are accepted",
            ));
        }
        let mut rec = ChangelogRecord {
            version: inner.state.version + 1,
            time_ns: now_ns(),
            op: Some(op),
            reply: None,
        };
        let applied = match apply(&mut inner.state, &rec) {
            Ok(a) => a,
            Err(e) => {
                inner.state.inodes.take_touched();
                return Err(e);
            }
        };
        let touched = inner.state.inodes.take_touched();
        if inner.leases.any_held(&touched) {
            let waits = inner
                .leases
                .break_leases(&touched, inner.author, Instant::now());
            inner.break_waits.extend(waits);
        }
        if let Some(r) = reply(inner) {
            // The master looked the request up in the cache under this lock
            // before deciding the op, so it is new; checked all the same, as
            // replay will check it.
            match inner.state.replies.check_new(&r) {
                Ok(()) => {
                    inner.state.replies.insert(rec.version, &r);
                    rec.reply = Some(r);
                }
                Err(e) => tracing::error!(error = %e, "reply not cached"),
            }
        }
        let queued = self
            .writer
            .lock()
            .as_ref()
            .ok_or_else(|| "the master is shutting down".to_string())
            .and_then(|w| w.append(&rec));
        if let Err(e) = queued {
            tracing::error!(error = %e, version = rec.version, "cannot queue a changelog record");
            return Err(FsError::new(
                libc::EIO,
                format!("metadata change not persisted: {e}"),
            ));
        }
        self.hub.push(&rec);
        inner.tails.forget(&applied.freed_chunks);
        inner.chunks.free_after(rec.version, applied.freed_chunks);
        Ok(rec.version)
    }

    /// The newest metadata version known to be durable in the changelog.
    pub fn durable_version(&self) -> u64 {
        self.durable.borrow().version
    }

    /// Receiver of the version durable in the master's own changelog.
    pub fn durable_rx(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// Waits until `version` is durable in the changelog.
    pub async fn wait_durable(&self, version: u64) -> Result<(), Status> {
        let mut rx = self.durable.clone();
        let reached = rx
            .wait_for(|d| d.version >= version || d.failed)
            .await
            .map(|d| d.version >= version)
            .unwrap_or(false);
        match reached {
            true => {
                self.hub
                    .wait_sync(version, || self.chunkserver_quorum())
                    .await?;
                self.hub.note_acked(version);
                Ok(())
            }
            false => Err(alces_proto::errno::status(
                libc::EIO,
                "the metadata change could not be made durable: the master's changelog write failed",
            )),
        }
    }

    /// True while more than half of the known chunkservers were heard recently
    /// (see [`crate::runtime::replication::chunkserver_quorum`]).
    pub fn chunkserver_quorum(&self) -> bool {
        crate::runtime::replication::chunkserver_quorum(&self.inner.lock().chunks, Instant::now())
    }

    /// Runs `f` under the lock, then waits for the version it committed (if any).
    pub async fn mutate<R>(
        &self,
        f: impl FnOnce(&Core, &mut Inner) -> FsResult<(Option<u64>, R)>,
    ) -> Result<R, Status> {
        self.mutate_by(None, f).await
    }

    /// As [`Core::mutate`] for a change made by session `author` (None: by
    /// nobody's request): other sessions' leases on what it changes are broken
    /// and the answer waits until they acknowledged or expired.
    async fn mutate_by<R>(
        &self,
        author: Option<u64>,
        f: impl FnOnce(&Core, &mut Inner) -> FsResult<(Option<u64>, R)>,
    ) -> Result<R, Status> {
        if self.hub.is_fenced() {
            return Err(Status::unavailable(
                "this master is stepping down or was replaced by a newer one; retry against the current master",
            ));
        }
        let (res, waits) = {
            let mut g = self.inner.lock();
            // Breaks of changes committed outside `mutate` (maintenance) were
            // sent; nobody waits for them.
            g.break_waits.clear();
            g.author = author;
            let res = f(self, &mut g);
            g.author = None;
            (res, std::mem::take(&mut g.break_waits))
        };
        let breaks = async {
            for w in waits {
                w.wait().await;
            }
        };
        let (v, r) = match res {
            Ok(vr) => vr,
            Err(e) => {
                breaks.await;
                return Err(e.into());
            }
        };
        let durable = async {
            match v {
                Some(v) => self.wait_durable(v).await,
                None => Ok(()),
            }
        };
        let (d, ()) = tokio::join!(durable, breaks);
        d?;
        Ok(r)
    }

    /// Runs `f` under the lock for writable session `session` (see
    /// [`Core::check_writable`]), then waits for the version it committed.
    pub async fn mutate_as<R>(
        &self,
        session: u64,
        f: impl FnOnce(&Core, &mut Inner) -> FsResult<(Option<u64>, R)>,
    ) -> Result<R, Status> {
        self.mutate_by(Some(session), |core, inner| {
            core.check_writable(inner, session)?;
            f(core, inner)
        })
        .await
    }

    /// Commits `op` for writable session `session`, waits until it is durable
    /// and answers with `reply` of the state after it.
    pub async fn commit_as<R>(
        &self,
        session: u64,
        op: Op,
        reply: impl FnOnce(&Inner) -> FsResult<R>,
    ) -> Result<R, Status> {
        self.mutate_as(session, |core, inner| {
            let v = core.commit(inner, op)?;
            Ok((Some(v), reply(inner)?))
        })
        .await
    }

    /// As [`Core::commit_as`] for a request tagged `tag`: a retry of a request
    /// that already ran is answered with its first reply (once that is
    /// durable), without running `op` again.
    pub async fn commit_as_once<R: Reply>(
        &self,
        session: u64,
        op: Op,
        tag: Option<Tag>,
        reply: impl FnOnce(&Inner) -> FsResult<R>,
    ) -> Result<R, Status> {
        self.mutate_as(session, |core, inner| {
            if let Some((v, r)) = core.cached_reply::<R>(inner, tag)? {
                return Ok((Some(v), r));
            }
            let (v, r) = core.commit_replied(inner, op, tag, reply)?;
            Ok((Some(v), r))
        })
        .await
    }

    /// The first outcome of the request tagged `tag`, when it already ran (a
    /// retry), counted in `alces_master_reply_cache_hits_total`.
    pub fn cached_reply<R: Reply>(
        &self,
        inner: &Inner,
        tag: Option<Tag>,
    ) -> FsResult<Option<(u64, R)>> {
        let r = inner.state.replies.answer::<R>(tag)?;
        if r.is_some() {
            self.metrics.reply_cache_hits.inc();
        }
        Ok(r)
    }

    /// Runs `f` under the lock, for a read that also changes what is only
    /// known while running (lease grants); commits nothing.
    pub fn locked<T>(&self, f: impl FnOnce(&mut Inner) -> FsResult<T>) -> Result<T, Status> {
        let mut g = self.inner.lock();
        f(&mut g).map_err(Status::from)
    }

    /// Runs the read-only `f` under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Inner) -> FsResult<T>) -> Result<T, Status> {
        let g = self.inner.lock();
        f(&g).map_err(Status::from)
    }

    /// Fences this master when a peer has seen a newer epoch than its
    /// own: a newer master exists, so this one accepts no more mutations.
    pub fn check_epoch(&self, seen: u64) -> Result<(), Status> {
        if seen > self.epoch {
            if !self.hub.is_fenced() {
                tracing::error!(
                    epoch = self.epoch,
                    newer = seen,
                    "a peer has seen a newer master epoch: this master is deposed and stops accepting mutations"
                );
            }
            self.hub.set_fence(seen);
            return Err(Status::failed_precondition(format!(
                "this master's epoch {} is older than epoch {seen} already seen: it has been replaced by a newer master",
                self.epoch
            )));
        }
        Ok(())
    }

    /// Refuses mutations from read-only sessions and from sessions this master
    /// does not know (the client re-registers, so its read-only flag is known
    /// again before anything changes).
    pub fn check_writable(&self, inner: &Inner, session_id: u64) -> FsResult<()> {
        match inner.sessions.map.get(&session_id) {
            Some(s) if s.read_only => Err(FsError::new(
                libc::EROFS,
                format!("session {session_id} is read-only"),
            )),
            Some(_) => Ok(()),
            None => Err(FsError::session_unknown(session_id)),
        }
    }

    /// Purges inodes that have no link and are no longer open.
    pub fn purge_unused(&self, inner: &mut Inner, inodes: &[u64]) -> Option<u64> {
        let mut last = None;
        for ino in inodes {
            if inner.state.orphans.contains(ino) && !inner.sessions.is_open(*ino) {
                match self.commit(inner, Op::Purge(pb::PurgeOp { inode: *ino })) {
                    Ok(v) => last = Some(v),
                    Err(e) => tracing::error!(inode = ino, error = %e, "cannot purge an orphan"),
                }
            }
        }
        last
    }

    /// Logs chunk version adoptions.
    pub fn adopt(&self, inner: &mut Inner, adoptions: &[Adoption]) {
        for (id, version) in adoptions {
            let current = inner.state.chunks.get(id).map(|c| c.version);
            if current.is_some_and(|c| c != *version) {
                let op = Op::SetChunkVersion(pb::SetChunkVersionOp {
                    chunk_id: *id,
                    version: *version,
                });
                if let Err(e) = self.commit(inner, op) {
                    tracing::error!(chunk = id, error = %e, "cannot adopt a chunk version");
                }
            }
        }
    }

    /// Refreshes the state gauges.
    pub fn update_gauges(&self, inner: &Inner) {
        self.metrics
            .metadata_version
            .set(i64::try_from(inner.state.version).unwrap_or(i64::MAX));
        self.metrics.inodes.set(inner.state.inodes.len() as i64);
        self.metrics.chunks.set(inner.state.chunks.len() as i64);
        self.metrics.chunkservers.set(
            inner
                .chunks
                .servers
                .values()
                .filter(|s| s.connected)
                .count() as i64,
        );
        self.metrics.sessions.set(inner.sessions.map.len() as i64);
        self.metrics
            .reply_cache_entries
            .set(inner.state.replies.len() as i64);
        self.metrics
            .reply_cache_bytes
            .set(inner.state.replies.bytes() as i64);
        self.metrics.locks.set(inner.locks.len() as i64);
        self.metrics.lock_waiters.set(inner.locks.waiting() as i64);
    }

    /// Writes a snapshot of the current state in the background (unless nothing
    /// changed since the last one), rotates the changelog and prunes old files.
    pub async fn snapshot(&self) -> anyhow::Result<()> {
        let _one = self.snapshot_lock.lock().await;
        // The state is encoded under the lock (one large buffer) rather than
        // cloned: a clone doubles the namespace in memory as millions of small
        // allocations, which the allocator keeps after they are freed.
        let started = Instant::now();
        let (bytes, version) = {
            let g = self.inner.lock();
            if g.state.version == g.snapshot_version {
                return Ok(());
            }
            let bytes = snapshot::encode(&g.state, now_ns());
            if let Some(w) = self.writer.lock().as_ref() {
                w.rotate(g.state.version + 1)
                    .map_err(|e| anyhow::anyhow!(e))?;
            }
            (bytes, g.state.version)
        };
        let paused_ms = started.elapsed().as_millis() as u64;
        let dir = self.settings.data_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            snapshot::write_encoded(&dir, version, &bytes)?;
            drop(bytes);
            // Off the async workers: trimming walks the whole heap.
            release_free_memory();
            datadir::prune(&dir)
        })
        .await
        .map_err(|e| anyhow::anyhow!("snapshot task failed: {e}"))??;
        self.inner.lock().snapshot_version = version;
        tracing::info!(
            version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            mutations_paused_ms = paused_ms,
            "snapshot written"
        );
        Ok(())
    }

    /// Flushes and stops the changelog writer (after the final snapshot).
    pub fn stop_writer(&self) {
        let w = self.writer.lock().take();
        if let Some(mut w) = w {
            w.stop();
        }
    }
}
