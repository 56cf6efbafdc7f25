//! File I/O: what every open file of a client shares ([`FileIo`]: the
//! write-behind budget, read slots, open-handle counts), the per-inode state
//! shared by every open handle of this client (write-behind buffer, write
//! sessions, chunk location cache) and the open [`FileHandle`] with its
//! readahead. It sits above the namespace calls and the session.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_proto::pb;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::chain;
use crate::error::{Error, Result};
use crate::filesize::{KnownSize, Ticket};
use crate::layout;
use crate::namespace::{Attr, Caller, Namespace};
use crate::readahead::ReadaheadWindow;
use crate::session::{ClientConfig, Session};
use crate::writebuf::{ChunkExtents, WriteBuffer};

/// Largest range read from a chunkserver in one call.
pub const READ_PIECE: u64 = 4 << 20;
/// Size of one readahead piece.
const READAHEAD_PIECE: u64 = 1 << 20;
/// How long a chunk location answer is reused.
const LOCATION_TTL: Duration = Duration::from_secs(1);
/// How long a write waits for the master to have chunkservers to write to.
const NO_SERVER_WAIT: Duration = Duration::from_secs(20);
/// Attempts at one chunk write or truncate (new write session each time).
const WRITE_ATTEMPTS: u32 = 6;

/// What every open file of a client shares: the namespace calls (and through
/// them the session), the write-behind budget, the read slots, the count of
/// open handles per inode and the I/O counters.
pub(crate) struct FileIo {
    /// Namespace calls (getattr, setattr, release) of the session.
    pub(crate) ns: Namespace,
    /// Write-behind bytes buffered over all files.
    pub(crate) buffered: AtomicU64,
    /// Chunk reads in flight over all files.
    read_slots: Arc<tokio::sync::Semaphore>,
    /// Chunk writes retried with a new write session.
    pub(crate) write_retries: AtomicU64,
    /// A chunkserver answered WriteMany with UNIMPLEMENTED: send ranges one by one.
    no_write_many: AtomicBool,
    /// Open handles per inode: the master counts opens per session, and a
    /// re-registration lists them again.
    open_inodes: Mutex<HashMap<u64, u32>>,
}

impl FileIo {
    /// The shared I/O state of the files opened through `ns`.
    pub(crate) fn new(ns: Namespace) -> Self {
        let reads = ns.session.config().max_parallel_reads.max(1);
        Self {
            ns,
            buffered: AtomicU64::new(0),
            read_slots: Arc::new(tokio::sync::Semaphore::new(reads)),
            write_retries: AtomicU64::new(0),
            no_write_many: AtomicBool::new(false),
            open_inodes: Mutex::new(HashMap::new()),
        }
    }

    /// The session the files are opened in.
    pub(crate) fn session(&self) -> &Session {
        &self.ns.session
    }

    /// The client's configuration.
    fn config(&self) -> &ClientConfig {
        self.ns.session.config()
    }

    /// Counts one more open handle of `inode`.
    pub(crate) fn count_open(&self, inode: u64) {
        *self.open_inodes.lock().entry(inode).or_insert(0) += 1;
    }

    /// One entry per open handle, for a re-registration.
    pub(crate) fn open_inodes(&self) -> Vec<u64> {
        self.open_inodes
            .lock()
            .iter()
            .flat_map(|(ino, n)| std::iter::repeat_n(*ino, *n as usize))
            .collect()
    }

    /// Releases one open handle of `inode`, locally and in the session.
    pub(crate) async fn release_inode(&self, inode: u64) -> Result<()> {
        {
            let mut m = self.open_inodes.lock();
            match m.get_mut(&inode) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    m.remove(&inode);
                }
                None => {}
            }
        }
        self.ns.release(inode).await
    }
}

/// A written chunk waiting for fsync: chunk id, version, replication chain
/// and the chunk access of a credential's session.
type Unsynced = (u64, u64, Vec<pb::ChunkLocation>, Option<pb::ChunkAccess>);
/// Result slot of a readahead piece.
type PieceRx = watch::Receiver<Option<Result<Bytes>>>;

/// An open write session on one chunk.
#[derive(Clone, Debug)]
struct WriteSession {
    chunk_id: u64,
    version: u64,
    old_version: u64,
    chain: Vec<pb::ChunkLocation>,
    copy_from_chunk_id: u64,
    copy_from_version: u64,
    /// What the chunkservers' calls carry when the session presents a
    /// credential (signed by the master).
    access: Option<pb::ChunkAccess>,
    /// End of the data written in this chunk during the session (and in
    /// sessions dropped after a failure before it).
    max_end: u64,
    modified: bool,
    /// Version of the oldest session whose data `max_end` covers.
    since: u64,
}

/// A chunk write in flight: its range (in the chunk) and completion signal.
struct InFlight {
    index: u64,
    start: u64,
    end: u64,
    done: watch::Receiver<bool>,
}

impl InFlight {
    /// True while the write's task has neither finished nor ended without
    /// finishing.
    fn running(&self) -> bool {
        // Closed is read before the value: the task sets the value before it
        // drops the sender, so a write that finished and ended in between is
        // never taken for one that ended without finishing.
        let closed = self.done.has_changed().is_err();
        !*self.done.borrow() && !closed
    }
}

struct WbState {
    buf: WriteBuffer,
    inflight: Vec<InFlight>,
    /// First error of a background write, reported on the next call.
    error: Option<Error>,
    /// The size with this client's writes and truncates.
    known: KnownSize,
    /// Bumped on every write or truncate (invalidates readahead).
    generation: u64,
}

impl WbState {
    /// Forgets the chunk writes that ended. A write whose task ended without
    /// saying it finished (it panicked) left its data unwritten: that becomes
    /// the file's error, reported by the next flush or fsync, instead of a
    /// wait for a signal that never comes.
    fn reap(&mut self, inode: u64) {
        let mut lost = None;
        self.inflight.retain(|f| {
            // Closed before the value, as in `InFlight::running`.
            let closed = f.done.has_changed().is_err();
            if *f.done.borrow() {
                return false;
            }
            if closed {
                lost = Some(f.index);
                return false;
            }
            true
        });
        if let Some(idx) = lost {
            tracing::error!(
                inode,
                chunk = idx,
                "a background write ended before its data reached the chunkservers"
            );
            self.error.get_or_insert(Error::io(format!(
                "the background write of chunk {idx} of inode {inode} ended before its data reached the chunkservers"
            )));
        }
    }
}

/// I/O state of one inode, shared by every handle this client has open on it.
pub(crate) struct FileState {
    io: Arc<FileIo>,
    inode: u64,
    chunk_size: u64,
    wb: Mutex<WbState>,
    /// Held by flush, fsync and truncate, so one of them never returns while
    /// another still has this file's data or write sessions on the way.
    flush_lock: tokio::sync::Mutex<()>,
    /// Open write sessions by chunk index (never locked across an await, so a
    /// re-registration can list them while a session is being opened).
    sessions: Mutex<HashMap<u64, WriteSession>>,
    /// Held while a write session is opened, so two tasks never open two.
    opening: tokio::sync::Mutex<()>,
    /// Sessions dropped after a failure with data written, by chunk index: the
    /// next session of that chunk tells the master their length (a dropped
    /// session's length must not be forgotten).
    dropped: Mutex<HashMap<u64, WriteSession>>,
    /// Chunks written since the last fsync: index -> (chunk id, version, chain).
    unsynced: Mutex<HashMap<u64, Unsynced>>,
    locations: Mutex<HashMap<u64, (Instant, pb::ReadChunkReply)>>,
    write_slots: Arc<tokio::sync::Semaphore>,
    /// The process that last opened or truncated the file: its chunk calls
    /// carry it, for a credential session's permission check on the master.
    caller: Mutex<Option<pb::Caller>>,
    /// Written or truncated through this client while open: the master
    /// changed its attributes without breaking this session's lease, so they
    /// are asked of the master while the file is open, and each release drops
    /// them from the lease cache.
    changed: std::sync::atomic::AtomicBool,
}

impl FileState {
    /// True once this client wrote or truncated the file through this state.
    pub(crate) fn changed(&self) -> bool {
        self.changed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn new(io: Arc<FileIo>, inode: u64, chunk_size: u64) -> Self {
        let slots = io.config().max_parallel_writes.max(1);
        Self {
            io,
            inode,
            chunk_size,
            wb: Mutex::new(WbState {
                buf: WriteBuffer::new(chunk_size),
                inflight: Vec::new(),
                error: None,
                known: KnownSize::default(),
                generation: 0,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            dropped: Mutex::new(HashMap::new()),
            caller: Mutex::new(None),
            unsynced: Mutex::new(HashMap::new()),
            locations: Mutex::new(HashMap::new()),
            write_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            changed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Records an open whose attributes were asked for with `ticket`; returns
    /// the size to report.
    pub(crate) fn opened(&self, ticket: Ticket, attr: &Attr) -> u64 {
        let size = self.observe(ticket, attr.size);
        self.locations.lock().clear();
        size
    }

    /// True while written data is buffered or on its way to the chunkservers.
    fn dirty(&self) -> bool {
        let wb = self.wb.lock();
        !wb.buf.is_empty() || wb.inflight.iter().any(InFlight::running)
    }

    /// Taken before asking the master for attributes; see [`FileState::observe`].
    pub(crate) fn ticket(&self) -> Ticket {
        self.wb.lock().known.ticket()
    }

    /// Combines the size the master answered to a request sent with `ticket`
    /// with this client's writes and truncates; returns the file's size.
    pub(crate) fn observe(&self, ticket: Ticket, master_size: u64) -> u64 {
        self.wb.lock().known.observe(ticket, master_size)
    }

    /// The file's size as this client knows it.
    pub(crate) fn known_size(&self) -> u64 {
        self.wb.lock().known.size()
    }

    fn generation(&self) -> u64 {
        self.wb.lock().generation
    }

    /// Forgets what this client read of the file (readahead, chunk
    /// locations): another client may have changed it (a lock was granted).
    pub(crate) fn drop_read_caches(&self) {
        self.wb.lock().generation += 1;
        self.locations.lock().clear();
    }

    fn take_error(&self) -> Result<()> {
        match self.wb.lock().error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Buffers a write; sends full chunks in the background.
    async fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> Result<usize> {
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.take_error()?;
        self.io.session().check_writable()?;
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= alces_proto::geometry::MAX_FILE_SIZE)
            .ok_or_else(|| Error::new(libc::EFBIG, "write past the largest file size (16 TiB)"))?;
        if data.is_empty() {
            return Ok(0);
        }
        let threshold = self.io.config().write_flush_bytes.max(64 * 1024);
        {
            let mut wb = self.wb.lock();
            let before = wb.buf.buffered_bytes();
            wb.buf.insert(offset, data);
            let after = wb.buf.buffered_bytes();
            if after >= before {
                self.io
                    .buffered
                    .fetch_add(after - before, Ordering::Relaxed);
            } else {
                self.io
                    .buffered
                    .fetch_sub(before - after, Ordering::Relaxed);
            }
            wb.known.wrote(end);
            wb.generation += 1;
            for idx in wb.buf.ready_chunks(threshold) {
                self.spawn_chunk_write(&mut wb, idx);
            }
        }
        if self.io.buffered.load(Ordering::Relaxed) > self.io.config().write_buffer_bytes {
            // Backpressure: send this file's data and wait for it.
            self.flush_data().await?;
        }
        Ok(data.len())
    }

    fn spawn_chunk_write(self: &Arc<Self>, wb: &mut WbState, idx: u64) {
        let extents = wb.buf.take_chunk(idx);
        if extents.is_empty() {
            return;
        }
        let bytes: u64 = extents.iter().map(|(_, d)| d.len() as u64).sum();
        let start = extents.first().map(|e| e.0).unwrap_or(0);
        let end = extents.last().map(|(s, d)| s + d.len() as u64).unwrap_or(0);
        wb.reap(self.inode);
        let waits: Vec<watch::Receiver<bool>> = wb
            .inflight
            .iter()
            .filter(|f| f.index == idx && f.start < end && start < f.end)
            .map(|f| f.done.clone())
            .collect();
        let (tx, rx) = watch::channel(false);
        wb.inflight.push(InFlight {
            index: idx,
            start,
            end,
            done: rx,
        });
        let me = self.clone();
        self.io.session().spawn(async move {
            for mut w in waits {
                let _ = w.wait_for(|d| *d).await;
            }
            let r = match me.write_slots.clone().acquire_owned().await {
                Ok(_permit) => me.write_chunk_extents(idx, &extents).await,
                Err(_) => Err(Error::io("write slots closed")),
            };
            me.io.buffered.fetch_sub(bytes, Ordering::Relaxed);
            me.locations.lock().remove(&idx);
            if let Err(e) = r {
                tracing::warn!(inode = me.inode, chunk = idx, error = %e, "background write failed");
                me.wb.lock().error.get_or_insert(e);
            }
            let _ = tx.send(true);
        });
    }

    /// Remembers `caller` as the process the file's chunk calls are for.
    pub(crate) fn set_caller(&self, caller: &Caller) {
        *self.caller.lock() = Some(caller.to_pb());
    }

    /// Opens (or reuses) the write session of chunk `idx`.
    async fn session(&self, idx: u64) -> Result<WriteSession> {
        let _opening = self.opening.lock().await;
        if let Some(s) = self.sessions.lock().get(&idx) {
            return Ok(s.clone());
        }
        let inode = self.inode;
        let caller = self.caller.lock().clone();
        // Right after a master restart or promotion no chunkserver may be registered
        // yet: the master answers ENOSPC/EAGAIN until they are back, so wait a bounded
        // time. An EAGAIN still there at the end is an I/O error to the application
        // (write and fsync on a blocking descriptor never mean "try again").
        let deadline = Instant::now() + self.io.config().reconnect_timeout.min(NO_SERVER_WAIT);
        let mut backoff = Duration::from_millis(100);
        let r = loop {
            let r = self
                .io
                .session()
                .call("write chunk", |mut m, sid| {
                    let req = pb::ChunkRequest {
                        session_id: sid,
                        inode,
                        chunk_index: idx,
                        caller: caller.clone(),
                    };
                    async move { m.write_chunk(req).await }
                })
                .await;
            match r {
                Err(e)
                    if matches!(e.errno(), libc::ENOSPC | libc::EAGAIN)
                        && Instant::now() < deadline =>
                {
                    tracing::debug!(inode, chunk = idx, error = %e, "the master has no chunkserver for this write yet, or a copy of the chunk is being made; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) if e.errno() == libc::EAGAIN => {
                    return Err(Error::io(format!(
                        "chunk {idx} of inode {inode}: {} (waited {} s)",
                        e.message(),
                        self.io
                            .config()
                            .reconnect_timeout
                            .min(NO_SERVER_WAIT)
                            .as_secs()
                    )));
                }
                r => break r?,
            }
        };
        if r.chain.is_empty() {
            return Err(Error::new(
                libc::ENOSPC,
                format!("the master gave no chunkserver to write chunk {idx} of inode {inode}"),
            ));
        }
        let mut s = WriteSession {
            chunk_id: r.chunk_id,
            version: r.version,
            old_version: r.old_version,
            chain: r.chain,
            copy_from_chunk_id: r.copy_from_chunk_id,
            copy_from_version: r.copy_from_version,
            access: r.access,
            max_end: 0,
            modified: false,
            since: r.version,
        };
        if let Some(d) = self.dropped.lock().remove(&idx) {
            s.max_end = d.max_end;
            s.modified = d.modified;
            s.since = d.since;
        }
        self.sessions.lock().insert(idx, s.clone());
        Ok(s)
    }

    /// The write sessions open on this file (chunk id, version), also those
    /// dropped with data whose length the master has not been told yet.
    pub(crate) fn write_sessions(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = self
            .sessions
            .lock()
            .values()
            .map(|s| (s.chunk_id, s.version))
            .collect();
        out.extend(
            self.dropped
                .lock()
                .values()
                .map(|s| (s.chunk_id, s.version)),
        );
        out
    }

    /// Forgets session `s` of chunk `idx` (after ESTALE) unless a newer one
    /// replaced it; the length it wrote goes to the next session of the chunk.
    async fn drop_session(&self, idx: u64, s: &WriteSession) {
        let mut sessions = self.sessions.lock();
        if sessions
            .get(&idx)
            .is_some_and(|cur| cur.version == s.version && cur.chunk_id == s.chunk_id)
        {
            if let Some(cur) = sessions.remove(&idx) {
                if cur.modified {
                    let mut dropped = self.dropped.lock();
                    let d = dropped.entry(idx).or_insert_with(|| cur.clone());
                    d.max_end = d.max_end.max(cur.max_end);
                    d.since = d.since.min(cur.since);
                    d.modified = true;
                }
            }
        }
    }

    /// Records data written up to `end` of chunk `idx` in session `s`. False when
    /// the session was closed meanwhile (a concurrent flush): the caller must
    /// then tell the master the size itself.
    async fn note_written(&self, idx: u64, s: &WriteSession, end: u64) -> bool {
        self.unsynced.lock().insert(
            idx,
            (s.chunk_id, s.version, s.chain.clone(), s.access.clone()),
        );
        let mut sessions = self.sessions.lock();
        match sessions.get_mut(&idx) {
            Some(cur) if cur.chunk_id == s.chunk_id && cur.version == s.version => {
                cur.max_end = cur.max_end.max(end);
                cur.modified = true;
                true
            }
            _ => false,
        }
    }

    /// Writes the extents of one chunk through its replication chain, opening a
    /// new write session on a stale version or a failed chain.
    async fn write_chunk_extents(&self, idx: u64, extents: &ChunkExtents) -> Result<()> {
        let mut last_err = Error::io("no attempt made");
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            let mut s = self.session(idx).await?;
            let mut failed = None;
            // End of the data whose session was closed before it was recorded.
            let mut unrecorded = 0;
            let mut dropped: Vec<u64> = Vec::new();
            for unit in write_units(extents) {
                loop {
                    match self.send_unit(&s, &unit).await {
                        Ok(()) => break,
                        // A server of the chain failed: finish this unit on
                        // the others (same versions, so servers that missed
                        // it catch up); the session is then closed naming
                        // the failed server, and the master moves the
                        // version on without it.
                        Err((e, Some(bad))) if s.chain.len() > 1 => {
                            tracing::warn!(inode = self.inode, chunk = idx, server = bad, error = %e, "chunkserver failed during a write: continuing without it");
                            s.chain.retain(|l| l.server_id != bad);
                            dropped.push(bad);
                        }
                        Err((e, _)) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if failed.is_some() {
                    break;
                }
                let end = unit
                    .iter()
                    .map(|(o, d)| o + d.len() as u64)
                    .max()
                    .unwrap_or(0);
                if !self.note_written(idx, &s, end).await {
                    unrecorded = unrecorded.max(end);
                }
            }
            if !dropped.is_empty() {
                self.end_failed_session(idx, &s, &dropped).await;
            }
            match failed {
                None => {
                    if unrecorded > 0 {
                        let mut ended = s.clone();
                        ended.modified = true;
                        ended.max_end = unrecorded;
                        self.end_session(idx, &ended).await?;
                    }
                    return Ok(());
                }
                Some(e) => {
                    tracing::debug!(inode = self.inode, chunk = idx, error = %e, attempt, "chunk write failed; opening a new write session");
                    self.drop_session(idx, &s).await;
                    if !retryable_chunk_error(&e) {
                        return Err(e);
                    }
                    self.io.write_retries.fetch_add(1, Ordering::Relaxed);
                    last_err = e;
                }
            }
        }
        Err(Error::io(format!(
            "writing chunk {idx} of inode {} failed after {WRITE_ATTEMPTS} attempts: {}",
            self.inode,
            last_err.message()
        )))
    }

    /// Closes session `s` of chunk `idx` after chain servers failed, telling the
    /// master which (it drops their copies and the next session gets a new
    /// version without them).
    async fn end_failed_session(&self, idx: u64, s: &WriteSession, failed: &[u64]) {
        let mut current = {
            let mut sessions = self.sessions.lock();
            match sessions.get(&idx) {
                Some(cur) if cur.chunk_id == s.chunk_id && cur.version == s.version => {
                    sessions.remove(&idx)
                }
                _ => None,
            }
        }
        .unwrap_or_else(|| WriteSession {
            modified: false,
            max_end: 0,
            ..s.clone()
        });
        current.chain = s.chain.clone();
        if let Some(u) = self.unsynced.lock().get_mut(&idx) {
            if u.0 == s.chunk_id && u.1 == s.version {
                u.2.retain(|l| !failed.contains(&l.server_id));
            }
        }
        if let Err(e) = self.end_session_with(idx, &current, failed).await {
            tracing::warn!(inode = self.inode, chunk = idx, error = %e, "cannot report failed chunkservers to the master");
        }
    }

    /// Sends one write through the chain of `s`; on failure also names the
    /// chain server that failed, if one did.
    /// Sends one unit of [`write_units`]: a single range with Write, several
    /// with WriteMany (falling back to one Write per range on a chunkserver
    /// without WriteMany).
    async fn send_unit(
        &self,
        s: &WriteSession,
        unit: &[(u64, Bytes)],
    ) -> std::result::Result<(), (Error, Option<u64>)> {
        if let [(off, data)] = unit {
            return self.send_write(s, *off, data.clone()).await;
        }
        if !self.io.no_write_many.load(Ordering::Relaxed) {
            match self.send_write_many(s, unit).await {
                Err((e, None)) if e.errno() == libc::ENOSYS => {
                    tracing::info!("a chunkserver lacks WriteMany: sending ranges one by one");
                    self.io.no_write_many.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        for (off, data) in unit {
            self.send_write(s, *off, data.clone()).await?;
        }
        Ok(())
    }

    async fn send_write_many(
        &self,
        s: &WriteSession,
        unit: &[(u64, Bytes)],
    ) -> std::result::Result<(), (Error, Option<u64>)> {
        let first = &s.chain[0];
        let mut cs = self
            .io
            .session()
            .chunkserver(&first.address)
            .map_err(|e| (e, None))?;
        let req = pb::WriteManyRequest {
            chunk_id: s.chunk_id,
            expected_version: s.old_version,
            version: s.version,
            create: s.old_version == 0,
            extents: unit
                .iter()
                .map(|(offset, data)| pb::WriteExtent {
                    offset: *offset,
                    data: data.clone(),
                })
                .collect(),
            chain: s.chain[1..].to_vec(),
            copy_from_chunk_id: s.copy_from_chunk_id,
            copy_from_version: s.copy_from_version,
            access: s.access.clone(),
        };
        let st = match tokio::time::timeout(chain::WRITE_TIMEOUT, cs.write_many(req)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(st)) if st.code() == tonic::Code::Unimplemented => {
                return Err((Error::new(libc::ENOSYS, st.message().to_string()), None))
            }
            Ok(Err(st)) => st,
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "no answer within {} s",
                chain::WRITE_TIMEOUT.as_secs()
            )),
        };
        Err((
            chunk_error("write", s.chunk_id, &first.address, &st),
            chain::failed_server(&st, &s.chain),
        ))
    }

    async fn send_write(
        &self,
        s: &WriteSession,
        offset: u64,
        data: Bytes,
    ) -> std::result::Result<(), (Error, Option<u64>)> {
        let first = &s.chain[0];
        let mut cs = self
            .io
            .session()
            .chunkserver(&first.address)
            .map_err(|e| (e, None))?;
        let req = pb::WriteRequest {
            chunk_id: s.chunk_id,
            expected_version: s.old_version,
            version: s.version,
            create: s.old_version == 0,
            offset,
            data,
            chain: s.chain[1..].to_vec(),
            copy_from_chunk_id: s.copy_from_chunk_id,
            copy_from_version: s.copy_from_version,
            access: s.access.clone(),
        };
        let st = match tokio::time::timeout(chain::WRITE_TIMEOUT, cs.write(req)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(st)) => st,
            Err(_) => tonic::Status::deadline_exceeded(format!(
                "no answer within {} s",
                chain::WRITE_TIMEOUT.as_secs()
            )),
        };
        Err((
            chunk_error("write", s.chunk_id, &first.address, &st),
            chain::failed_server(&st, &s.chain),
        ))
    }

    /// Waits until every buffered write reached the chunkservers (also those
    /// sent by other tasks).
    async fn flush_data(self: &Arc<Self>) -> Result<()> {
        loop {
            let waits: Vec<watch::Receiver<bool>> = {
                let mut wb = self.wb.lock();
                for idx in wb.buf.chunk_indices() {
                    self.spawn_chunk_write(&mut wb, idx);
                }
                wb.reap(self.inode);
                wb.inflight.iter().map(|f| f.done.clone()).collect()
            };
            if waits.is_empty() {
                break;
            }
            for mut w in waits {
                // An error means the task is gone (it panicked): nothing to wait for.
                let _ = w.wait_for(|d| *d).await;
            }
        }
        self.take_error()
    }

    /// Closes every open write session, telling the master the file size.
    async fn close_sessions(&self) -> Result<()> {
        let mut sessions: Vec<(u64, WriteSession)> = self.sessions.lock().drain().collect();
        // Dropped sessions no later session took over (every retry failed):
        // their data is on the chunkservers all the same.
        sessions.extend(self.dropped.lock().drain());
        let mut first_err = None;
        for (idx, s) in sessions {
            if let Err(e) = self.end_session(idx, &s).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn end_session(&self, idx: u64, s: &WriteSession) -> Result<Attr> {
        self.end_session_with(idx, s, &[]).await
    }

    async fn end_session_with(&self, idx: u64, s: &WriteSession, failed: &[u64]) -> Result<Attr> {
        let inode = self.inode;
        let failed = failed.to_vec();
        let file_size = if s.modified {
            idx * self.chunk_size + s.max_end
        } else {
            0
        };
        let chunk_id = s.chunk_id;
        let modified = s.modified;
        let (version, written_since) = (s.version, s.since);
        let r = self
            .io
            .session()
            .call("write chunk end", |mut m, sid| {
                let req = pb::WriteChunkEndRequest {
                    session_id: sid,
                    inode,
                    chunk_index: idx,
                    chunk_id,
                    file_size,
                    failed_servers: failed.clone(),
                    modified,
                    version,
                    written_since,
                };
                async move { m.write_chunk_end(req).await }
            })
            .await?;
        r.attr
            .ok_or_else(|| Error::io("the master answered WriteChunkEnd without attributes"))
    }

    /// Sends buffered writes and closes the write sessions; reports any error of
    /// a background write since the last call.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<()> {
        let _g = self.flush_lock.lock().await;
        self.flush_locked().await
    }

    /// [`FileState::flush`] with the flush lock held.
    async fn flush_locked(self: &Arc<Self>) -> Result<()> {
        let mark = self.wb.lock().known.mark();
        let r = self.flush_data().await;
        let c = self.close_sessions().await;
        r.and(c)?;
        self.wb.lock().known.flushed(mark);
        Ok(())
    }

    /// [`FileState::flush`] plus a sync of every written chunk on every copy.
    pub(crate) async fn fsync(self: &Arc<Self>) -> Result<()> {
        let _g = self.flush_lock.lock().await;
        let mark = self.wb.lock().known.mark();
        let r = self.flush_data().await;
        // Sync before closing the sessions, so WriteChunkEnd follows durable data.
        let chunks: Vec<(u64, Unsynced)> = self.unsynced.lock().drain().collect();
        let mut sync_err = None;
        for (_idx, (chunk_id, version, mut chain, access)) in chunks {
            let res = loop {
                let Some(first) = chain.first().cloned() else {
                    break Ok(());
                };
                let mut cs = match self.io.session().chunkserver(&first.address) {
                    Ok(cs) => cs,
                    Err(e) => break Err(e),
                };
                let call = cs.sync(pb::SyncRequest {
                    chunk_id,
                    version,
                    chain: chain[1..].to_vec(),
                    access: access.clone(),
                });
                let st = match tokio::time::timeout(chain::WRITE_TIMEOUT, call).await {
                    Ok(Ok(_)) => break Ok(()),
                    Ok(Err(st)) => st,
                    Err(_) => tonic::Status::deadline_exceeded("sync not answered"),
                };
                match chain::failed_server(&st, &chain) {
                    // A failed server's copy is dropped by the master; the
                    // others must still be durable.
                    Some(bad) if chain.len() > 1 => {
                        tracing::warn!(
                            chunk = chunk_id,
                            server = bad,
                            "chunkserver failed during a sync: syncing the others"
                        );
                        chain.retain(|l| l.server_id != bad);
                    }
                    _ => break Err(chunk_error("sync", chunk_id, &first.address, &st)),
                }
            };
            match res {
                Ok(_) => {}
                // The chunk moved on to a newer version (a later writer owns its
                // durability) or was freed by a truncate.
                Err(e) if matches!(e.errno(), libc::ESTALE | libc::ENOENT) => {}
                Err(e) => {
                    sync_err.get_or_insert(e);
                }
            }
        }
        let c = self.close_sessions().await;
        r.and(c)?;
        self.wb.lock().known.flushed(mark);
        match sync_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Truncates or extends the file to `size`.
    pub(crate) async fn truncate(self: &Arc<Self>, size: u64, caller: &Caller) -> Result<Attr> {
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if size > alces_proto::geometry::MAX_FILE_SIZE {
            return Err(Error::new(
                libc::EFBIG,
                "size past the largest file size (16 TiB)",
            ));
        }
        let _g = self.flush_lock.lock().await;
        self.flush_locked().await?;
        self.set_caller(caller);
        let attr = self.io.ns.getattr(self.inode).await?;
        if attr.kind != pb::FileType::Regular as i32 {
            return Err(Error::new(
                libc::EINVAL,
                "only regular files can be truncated",
            ));
        }
        // Shrinking cuts the chunk holding the new end. Growing needs no chunk
        // work here: bytes stored past the old end (a write the master refused
        // with EDQUOT, or a client that died before recording the new size)
        // are cut by the master before it grows the file, as only it knows
        // whether another client's write session may still own them.
        let cs = self.chunk_size;
        let edge = Some(size).filter(|e| size < attr.size && e % cs != 0);
        if let Some(edge) = edge {
            let idx = edge / cs;
            let cut = edge % cs;
            let mut done = false;
            let mut last_err = Error::io("no attempt made");
            for attempt in 0..WRITE_ATTEMPTS {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                let s = self.session(idx).await?;
                let first = &s.chain[0];
                let res = async {
                    let mut cs = self.io.session().chunkserver(&first.address)?;
                    cs.truncate(pb::TruncateRequest {
                        chunk_id: s.chunk_id,
                        expected_version: s.old_version,
                        version: s.version,
                        create: s.old_version == 0,
                        length: cut,
                        chain: s.chain[1..].to_vec(),
                        copy_from_chunk_id: s.copy_from_chunk_id,
                        copy_from_version: s.copy_from_version,
                        access: s.access.clone(),
                    })
                    .await
                    .map_err(|st| chunk_error("truncate", s.chunk_id, &first.address, &st))
                }
                .await;
                match res {
                    Ok(_) => {
                        self.unsynced.lock().insert(
                            idx,
                            (s.chunk_id, s.version, s.chain.clone(), s.access.clone()),
                        );
                        let mut ended = s.clone();
                        ended.modified = true;
                        ended.max_end = 0;
                        self.sessions.lock().remove(&idx);
                        self.end_session(idx, &ended).await?;
                        done = true;
                        break;
                    }
                    Err(e) => {
                        self.drop_session(idx, &s).await;
                        if !retryable_chunk_error(&e) {
                            return Err(e);
                        }
                        last_err = e;
                    }
                }
            }
            if !done {
                return Err(Error::io(format!(
                    "truncating chunk {idx} of inode {} failed: {}",
                    self.inode,
                    last_err.message()
                )));
            }
        }
        let attr = self
            .io
            .ns
            .setattr_raw(pb::SetAttrRequest {
                inode: self.inode,
                valid: pb::SetAttrField::SetAttrSize as u32,
                size,
                caller: Some(pb::Caller {
                    uid: caller.uid,
                    gid: caller.gid,
                    groups: caller.groups.clone(),
                    pid: caller.pid,
                }),
                ..Default::default()
            })
            .await?;
        {
            let mut wb = self.wb.lock();
            wb.known.truncated(size);
            wb.generation += 1;
        }
        // Chunks past the new end are freed by the master: nothing left to sync.
        let last = size.div_ceil(self.chunk_size);
        self.unsynced.lock().retain(|idx, _| *idx < last);
        self.locations.lock().clear();
        Ok(attr)
    }

    /// Caches the location of chunk `idx` the master sent with another reply.
    pub(crate) fn seed_location(&self, idx: u64, r: pb::ReadChunkReply) {
        self.locations.lock().insert(idx, (Instant::now(), r));
    }

    /// Location of chunk `idx` (cached briefly unless `fresh`).
    async fn chunk_info(&self, idx: u64, fresh: bool) -> Result<pb::ReadChunkReply> {
        if !fresh {
            if let Some((t, r)) = self.locations.lock().get(&idx) {
                if t.elapsed() < LOCATION_TTL {
                    return Ok(r.clone());
                }
            }
        }
        let inode = self.inode;
        let ticket = self.ticket();
        let caller = self.caller.lock().clone();
        let r = self
            .io
            .session()
            .call("read chunk", |mut m, sid| {
                let req = pb::ChunkRequest {
                    session_id: sid,
                    inode,
                    chunk_index: idx,
                    caller: caller.clone(),
                };
                async move { m.read_chunk(req).await }
            })
            .await?;
        self.observe(ticket, r.file_size);
        self.locations
            .lock()
            .insert(idx, (Instant::now(), r.clone()));
        Ok(r)
    }

    /// Reads `[offset, offset + len)` straight from the chunkservers (after
    /// sending this client's buffered writes), short at the end of the file.
    pub(crate) async fn read_range(self: &Arc<Self>, offset: u64, len: u64) -> Result<Bytes> {
        if self.dirty() {
            self.flush().await?;
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        // Refreshes the known size when the cached answer is too old. Reads are
        // clipped at the size as this client knows it, never at a size the
        // master sent before this client's own writes (a short read inside the
        // file makes the kernel shrink it).
        self.chunk_info(offset / self.chunk_size, false).await?;
        let size = self.known_size();
        if offset >= size {
            return Ok(Bytes::new());
        }
        let len = len.min(size - offset);
        let spans = layout::split(offset, len, self.chunk_size);
        if let [span] = &spans[..] {
            if let [(p_off, p_len)] = layout::pieces(span.offset, span.len, READ_PIECE)[..] {
                // One piece (most reads): read it in this task, and hand its bytes
                // on as they are when they fill the range.
                let data = self.read_chunk_piece(span.index, p_off, p_len).await?;
                if data.len() as u64 == len {
                    return Ok(data);
                }
                let mut out = BytesMut::zeroed(len as usize);
                let n = data.len().min(out.len());
                out[..n].copy_from_slice(&data[..n]);
                return Ok(out.freeze());
            }
        }
        let mut out = BytesMut::zeroed(len as usize);
        let mut tasks = Vec::new();
        for span in spans {
            for (p_off, p_len) in layout::pieces(span.offset, span.len, READ_PIECE) {
                let me = self.clone();
                let at = span.range_offset + (p_off - span.offset);
                let idx = span.index;
                tasks.push((
                    at,
                    self.io
                        .session()
                        .spawn(async move { me.read_chunk_piece(idx, p_off, p_len).await }),
                ));
            }
        }
        for (at, t) in tasks {
            let data = t
                .await
                .map_err(|e| Error::io(format!("read task failed: {e}")))??;
            let at = at as usize;
            let n = data.len().min(out.len() - at);
            out[at..at + n].copy_from_slice(&data[..n]);
        }
        Ok(out.freeze())
    }

    /// Reads one piece of a chunk, falling over to the next copy on any error.
    async fn read_chunk_piece(&self, idx: u64, offset: u64, len: u64) -> Result<Bytes> {
        let _slot = self
            .io
            .read_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::io("read slots closed"))?;
        let mut last_err = None;
        // Three rounds over the copies; a chunk with no copy on a connected
        // chunkserver (right after a master restart or promotion, before they
        // registered again) is asked for again until the same bounded wait as a
        // write's.
        let deadline = Instant::now() + self.io.config().reconnect_timeout.min(NO_SERVER_WAIT);
        let mut round = 0u32;
        loop {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(200 * u64::from(round.min(5)))).await;
            }
            let info = self.chunk_info(idx, round > 0).await?;
            if info.chunk_id == 0 {
                return Ok(Bytes::from(vec![0u8; len as usize]));
            }
            for loc in &info.locations {
                let res = async {
                    let mut cs = self.io.session().chunkserver(&loc.address)?;
                    let call = cs.read(pb::ReadRequest {
                        chunk_id: info.chunk_id,
                        version: info.version,
                        offset,
                        length: len as u32,
                        access: info.access.clone(),
                    });
                    match tokio::time::timeout(chain::READ_TIMEOUT, call).await {
                        Ok(r) => {
                            r.map_err(|st| chunk_error("read", info.chunk_id, &loc.address, &st))
                        }
                        Err(_) => Err(Error::io(format!(
                            "read of chunk {:016x} on {}: no answer within {} s",
                            info.chunk_id,
                            loc.address,
                            chain::READ_TIMEOUT.as_secs()
                        ))),
                    }
                }
                .await;
                match res {
                    Ok(r) => {
                        let data = r.into_inner().data;
                        if data.len() as u64 >= len {
                            return Ok(data.slice(..len as usize));
                        }
                        // Bytes past the chunk's stored length read as zeros.
                        let mut b = BytesMut::zeroed(len as usize);
                        b[..data.len()].copy_from_slice(&data);
                        return Ok(b.freeze());
                    }
                    Err(e) => {
                        tracing::debug!(chunk = info.chunk_id, server = %loc.address, error = %e, "read from copy failed; trying the next");
                        last_err = Some(e);
                    }
                }
            }
            round += 1;
            if info.locations.is_empty() {
                last_err = Some(Error::io(format!(
                    "chunk {} of inode {} has no valid copy",
                    info.chunk_id, self.inode
                )));
                if Instant::now() < deadline {
                    continue;
                }
            }
            if round >= 3 {
                break;
            }
        }
        let e = last_err.unwrap_or_else(|| Error::io("no copy could be read"));
        Err(Error::io(format!(
            "reading chunk {idx} of inode {}: no copy could be read: {}",
            self.inode,
            e.message()
        )))
    }
}

/// True for errors worth a new write session and another attempt.
fn retryable_chunk_error(e: &Error) -> bool {
    !matches!(
        e.errno(),
        libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EINVAL | libc::EFBIG
    )
}

fn chunk_error(what: &str, chunk_id: u64, addr: &str, st: &tonic::Status) -> Error {
    let e = Error::from_status(st);
    Error::new(
        e.errno(),
        format!("{what} of chunk {chunk_id:016x} on {addr}: {}", e.message()),
    )
}

/// A readahead piece being fetched or fetched.
struct Piece {
    start: u64,
    len: u64,
    rx: PieceRx,
}

struct ReadaheadState {
    window: ReadaheadWindow,
    pieces: VecDeque<Piece>,
    generation: u64,
    end: u64,
}

/// An open file: reads (with readahead), buffered writes, flush, fsync, truncate.
///
/// Close it with [`FileHandle::release`]; dropping it without releasing leaves
/// the file marked open in the session until the session ends.
pub struct FileHandle {
    state: Arc<FileState>,
    attr: Attr,
    flags: i32,
    keep_cache: bool,
    ra: Mutex<ReadaheadState>,
}

impl std::fmt::Debug for FileHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileHandle")
            .field("inode", &self.state.inode)
            .field("flags", &self.flags)
            .finish()
    }
}

impl FileHandle {
    pub(crate) fn new(state: Arc<FileState>, attr: Attr, flags: i32, keep_cache: bool) -> Self {
        let max = state.io.config().readahead_bytes;
        Self {
            state,
            attr,
            flags,
            keep_cache,
            ra: Mutex::new(ReadaheadState {
                window: ReadaheadWindow::new(max),
                pieces: VecDeque::new(),
                generation: 0,
                end: 0,
            }),
        }
    }

    /// Inode of the file.
    pub fn inode(&self) -> u64 {
        self.state.inode
    }

    /// Attributes fetched when the file was opened.
    pub fn attr(&self) -> &Attr {
        &self.attr
    }

    /// open(2) flags the file was opened with.
    pub fn flags(&self) -> i32 {
        self.flags
    }

    /// True when size and mtime were unchanged since this client last opened the
    /// file, so cached pages may be kept (close-to-open consistency).
    pub fn keep_cache(&self) -> bool {
        self.keep_cache
    }

    /// Reads up to `len` bytes at `offset`; shorter only at the end of the file.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        if self.state.dirty() {
            self.state.flush().await?;
        }
        let generation = self.state.generation();
        let size_hint = self.state.known_size();
        let wanted: Vec<(u64, u64, PieceRx)> = {
            let mut ra = self.ra.lock();
            let window = ra.window.on_read(offset, len);
            if ra.generation != generation {
                ra.pieces.clear();
                ra.generation = generation;
            }
            if window == 0 {
                ra.pieces.clear();
                Vec::new()
            } else {
                while ra.pieces.front().is_some_and(|p| p.start + p.len <= offset) {
                    ra.pieces.pop_front();
                }
                if ra.pieces.front().is_some_and(|p| p.start > offset) {
                    ra.pieces.clear();
                }
                if ra.pieces.is_empty() {
                    ra.end = offset;
                }
                let target = offset + len + window;
                // Prefetch to the target, but not far past the known size.
                let limit = target.min(size_hint.max(offset + len) + READAHEAD_PIECE);
                while ra.end < limit {
                    let start = ra.end;
                    let plen = readahead_piece_len(start);
                    let (tx, rx) = watch::channel(None);
                    let st = self.state.clone();
                    self.state.io.session().spawn(async move {
                        let r = st.read_range(start, plen).await;
                        let _ = tx.send(Some(r));
                    });
                    ra.pieces.push_back(Piece {
                        start,
                        len: plen,
                        rx,
                    });
                    ra.end = start + plen;
                }
                ra.pieces
                    .iter()
                    .filter(|p| p.start < offset + len && offset < p.start + p.len)
                    .map(|p| (p.start, p.len, p.rx.clone()))
                    .collect()
            }
        };
        let covered = wanted.first().is_some_and(|p| p.0 <= offset)
            && wanted.last().is_some_and(|p| p.0 + p.1 >= offset + len);
        if covered {
            let mut out = BytesMut::with_capacity(len as usize);
            let mut ok = true;
            for (start, plen, mut rx) in wanted {
                let r = match rx.wait_for(|v| v.is_some()).await {
                    Ok(v) => v.clone(),
                    Err(_) => None,
                };
                match r {
                    Some(Ok(data)) => {
                        let from = offset.max(start) - start;
                        let to = (offset + len).min(start + plen) - start;
                        if from as usize >= data.len() {
                            break;
                        }
                        let to = (to as usize).min(data.len());
                        out.extend_from_slice(&data[from as usize..to]);
                        if (data.len() as u64) < plen {
                            break; // end of file
                        }
                    }
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            if ok {
                return Ok(out.freeze());
            }
            self.ra.lock().pieces.clear();
        }
        self.state.read_range(offset, len).await
    }

    /// Forgets what was read ahead and where the chunks were: another client
    /// may have changed the file since (this process was just granted a lock).
    pub fn drop_read_caches(&self) {
        self.state.drop_read_caches();
        self.ra.lock().pieces.clear();
    }

    /// Writes `data` at `offset` (buffered; sent in the background). An error of
    /// an earlier background write of this file is returned here.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<usize> {
        let n = self.state.write(offset, data).await?;
        Ok(n)
    }

    /// Sends buffered writes and closes write sessions (the master learns the size).
    pub async fn flush(&self) -> Result<()> {
        self.state.flush().await
    }

    /// Flushes and makes written data and the file size durable.
    pub async fn fsync(&self) -> Result<()> {
        self.state.fsync().await
    }

    /// Truncates or extends the file.
    pub async fn truncate(&self, size: u64, caller: &Caller) -> Result<Attr> {
        self.state.io.session().check_writable()?;
        self.state.truncate(size, caller).await
    }

    /// Flushes and releases the file in the session. Returns a pending write error.
    pub async fn release(&self) -> Result<()> {
        let r = self.state.flush().await;
        let rel = self.state.io.release_inode(self.state.inode).await;
        if self.state.changed() {
            self.state.io.ns.changed(&[self.state.inode]);
        }
        r.and(rel)
    }
}

/// Most bytes one WriteMany carries.
const WRITE_MANY_BYTES: u64 = 1 << 20;
/// Most ranges one WriteMany carries.
const WRITE_MANY_RANGES: usize = 256;

/// Cuts the extents of one chunk into the units sent in one call each: a large
/// extent in pieces of [`READ_PIECE`] (one Write each), runs of small ones
/// together (one WriteMany of at most [`WRITE_MANY_BYTES`] and
/// [`WRITE_MANY_RANGES`]).
fn write_units(extents: &ChunkExtents) -> Vec<Vec<(u64, Bytes)>> {
    let mut units: Vec<Vec<(u64, Bytes)>> = Vec::new();
    let mut batch: Vec<(u64, Bytes)> = Vec::new();
    let mut batch_bytes = 0u64;
    for (off, data) in extents {
        let len = data.len() as u64;
        if len >= WRITE_MANY_BYTES {
            if !batch.is_empty() {
                units.push(std::mem::take(&mut batch));
                batch_bytes = 0;
            }
            for (p_off, p_len) in layout::pieces(*off, len, READ_PIECE) {
                let rel = (p_off - off) as usize;
                units.push(vec![(p_off, data.slice(rel..rel + p_len as usize))]);
            }
            continue;
        }
        if batch_bytes + len > WRITE_MANY_BYTES || batch.len() >= WRITE_MANY_RANGES {
            units.push(std::mem::take(&mut batch));
            batch_bytes = 0;
        }
        batch.push((*off, data.clone()));
        batch_bytes += len;
    }
    if !batch.is_empty() {
        units.push(batch);
    }
    units
}

/// Length of the readahead piece starting at `start`: up to the next multiple of
/// the piece size, so pieces stay aligned.
fn readahead_piece_len(start: u64) -> u64 {
    READAHEAD_PIECE - start % READAHEAD_PIECE
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk write whose task ended without signalling (it panicked) is
    /// not waited for again, and the file reports the lost data; finished
    /// and running writes are told apart from it.
    #[test]
    fn a_write_task_that_ended_without_finishing_is_an_error_not_a_wait() {
        let mut wb = WbState {
            buf: WriteBuffer::new(1 << 20),
            inflight: Vec::new(),
            error: None,
            known: KnownSize::default(),
            generation: 0,
        };
        let (done_tx, done) = watch::channel(false);
        done_tx.send(true).unwrap();
        drop(done_tx);
        let (running_tx, running) = watch::channel(false);
        let (dead_tx, dead) = watch::channel(false);
        drop(dead_tx);
        for (index, rx) in [(0, done), (1, running), (2, dead)] {
            wb.inflight.push(InFlight {
                index,
                start: 0,
                end: 1,
                done: rx,
            });
        }
        assert!(wb.inflight[1].running());
        assert!(!wb.inflight[0].running() && !wb.inflight[2].running());
        wb.reap(42);
        let left: Vec<u64> = wb.inflight.iter().map(|f| f.index).collect();
        assert_eq!(left, vec![1], "only the running write is kept");
        let e = wb.error.take().expect("the lost write is the file's error");
        assert_eq!(e.errno(), libc::EIO);
        assert!(e.to_string().contains("chunk 2 of inode 42"), "{e}");
        drop(running_tx);
    }

    fn ext(off: u64, len: usize) -> (u64, Bytes) {
        (off, Bytes::from(vec![7u8; len]))
    }

    /// Small scattered ranges travel together, large ones alone in pieces, and
    /// nothing is lost or reordered.
    #[test]
    fn write_units_batch_small_ranges_and_split_large_ones() {
        let mut extents: ChunkExtents = (0..300).map(|i| ext(i * 8192, 4096)).collect();
        extents.push(ext(10 << 20, 9 << 20));
        extents.push(ext(30 << 20, 4096));
        let units = write_units(&extents);
        // 300 small ranges: 256 + 44, then the large one in 3 pieces, then 1.
        let sizes: Vec<usize> = units.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![256, 44, 1, 1, 1, 1]);
        assert_eq!(units[2][0].1.len() as u64, READ_PIECE);
        assert_eq!(units[4][0].1.len() as u64, (9 << 20) - 2 * READ_PIECE);
        let flat: Vec<(u64, usize)> = units.iter().flatten().map(|(o, d)| (*o, d.len())).collect();
        let total: usize = flat.iter().map(|(_, l)| l).sum();
        assert_eq!(total, 301 * 4096 + (9 << 20));
        assert!(flat.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
        // A batch stops at 1 MiB.
        let big: ChunkExtents = (0..8).map(|i| ext(i << 20, 300 << 10)).collect();
        assert!(write_units(&big).iter().all(|u| u
            .iter()
            .map(|(_, d)| d.len() as u64)
            .sum::<u64>()
            <= WRITE_MANY_BYTES));
    }
}
