//! Bytes stored past a file's end: what the master knows of them at runtime
//! (the cuts themselves are made by [`crate::domain::tails`]).
//!
//! A chunk can hold data past its file's recorded end that no one will ever
//! record: a write session whose new length the master refused (EDQUOT), or a
//! client that died before closing its session. Those bytes must never become
//! readable: a later write past the end that leaves a gap, or an extending
//! truncate, would otherwise show them inside the file (a read returns the
//! bytes last written, or an error, never other bytes).
//!
//! The master keeps, at runtime, which chunks may hold such bytes (`dirty`) and
//! which client sessions have a write session open on each chunk (`writers`).
//! Before the file grows over a dirty chunk (a write session on it or on a
//! later chunk, an extending `SetAttr`, a snapshot sharing it), the master cuts
//! that chunk at the file's end itself: it opens a write session of its own
//! (a logged version bump, like any session) and sends `Truncate` through the
//! copies' chain. Only the master can know that no client still has a session
//! whose unrecorded data lies there: while another client has one open, bytes
//! past the end may be that client's writes, so the file grows over a dirty
//! chunk only once those sessions are closed (requests wait, then `EAGAIN`).
//!
//! Sources of `dirty`, each with the end of the bytes that may be there (once
//! the file's end reaches it they were recorded after all): a refused
//! `WriteChunkEnd` (the end it asked for); a client session closed or expired
//! with write sessions open (unknown: the whole chunk); a chunkserver
//! registering a copy longer than its file's end while no write session is
//! known on it (the copy's length; after a master restart write sessions are
//! known only once clients re-register, listing theirs, so these bytes are
//! not cut until one session timeout after the start). Shared chunks
//! (snapshots) are never cut in place; a snapshot first cuts the dirty chunks
//! of its source.
//!
//! A write session the master does not know (a client that has not
//! re-registered after a master restart) could still have its unrecorded data
//! cut. The master remembers each cut (`cuts`): a later `WriteChunkEnd` whose
//! length covers bytes past the cut, written in a session older than it, is
//! refused with EIO, so the loss is reported to the writer, never silently
//! turned into zeros.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use alces_proto::pb;

use crate::state::error::{FsError, FsResult};
use crate::state::namespace::State;

/// Which part of a file a request is about to make part of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// A write session on this chunk index: everything from the file's end up
    /// to and including that chunk.
    Chunk(u64),
    /// A new size: everything from the file's end up to it.
    Size(u64),
}

/// What must happen before a file grows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing: no chunk in the range may hold bytes past the end.
    Nothing,
    /// The chunk at this index must be cut at the file's end first.
    Cut(u64),
    /// Wait (why): a cut is running, or another client's write session may
    /// still own the bytes past the end.
    Wait(String),
}

/// Why a chunk may hold bytes past its file's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dirty {
    /// End (in the chunk) of the bytes that may be there; the chunk size when
    /// unknown. Once the file's end reaches it, they were recorded.
    bound: u64,
    /// Learnt only from a chunkserver's registration: until one session
    /// timeout after the master started, a client not yet back may still own
    /// (and record) them.
    registered: bool,
}

/// Runtime knowledge of chunks that may hold bytes past their file's end.
#[derive(Debug, Default)]
pub struct Tails {
    /// Chunk -> client session -> version of its open write session.
    writers: HashMap<u64, HashMap<u64, u64>>,
    /// Chunks that may hold bytes past their file's end that no open write
    /// session will record.
    dirty: HashMap<u64, Dirty>,
    /// Until then, bytes known only from registrations are not cut.
    grace_until: Option<Instant>,
    /// Chunks the master is cutting now.
    cutting: HashSet<u64>,
    /// Last cut of a chunk: (version of the cutting session, length).
    cuts: HashMap<u64, (u64, u64)>,
}

/// The end of the file inside the chunk at `index`: 0..=chunk size.
pub fn end_in_chunk(size: u64, index: u64, chunk_size: u64) -> u64 {
    size.saturating_sub(index.saturating_mul(chunk_size))
        .min(chunk_size)
}

/// Index of `chunk` in its creating file at or after the chunk holding the
/// file's end, with that end inside the chunk.
fn tail_position(st: &State, chunk: u64) -> Option<(u64, u64, u64)> {
    let meta = st.chunks.get(&chunk)?;
    let file = st.inodes.get(&meta.inode)?;
    let slots = file.chunks()?;
    let cs = st.chunk_size.max(1);
    let first = usize::try_from(file.size / cs).ok()?;
    let idx = slots.get(first..)?.iter().position(|c| *c == chunk)? + first;
    let idx = idx as u64;
    Some((meta.inode, idx, end_in_chunk(file.size, idx, cs)))
}

impl Tails {
    /// Empty knowledge for a master that started now: clients re-register their
    /// write sessions within `grace` (one session timeout).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace_until: Instant::now().checked_add(grace),
            ..Default::default()
        }
    }

    fn mark(&mut self, chunk: u64, bound: u64, registered: bool) {
        let d = self
            .dirty
            .entry(chunk)
            .or_insert(Dirty { bound, registered });
        d.bound = d.bound.max(bound);
        d.registered &= registered;
    }

    /// True when the master may cut `chunk`, whose file ends at `end` in it
    /// (`Err`: why it must wait).
    pub fn may_cut(&self, chunk: u64, end: u64) -> Result<bool, String> {
        let Some(d) = self.dirty.get(&chunk) else {
            return Ok(false);
        };
        if d.bound <= end {
            return Ok(false);
        }
        if self.cutting.contains(&chunk) {
            return Err(format!("chunk {chunk} is being cut at its file's end"));
        }
        if self.writers.get(&chunk).is_some_and(|w| !w.is_empty()) {
            return Err(format!(
                "chunk {chunk} may hold bytes past its file's end that were never recorded, and a client has a write session open on it; retry once it is closed"
            ));
        }
        if d.registered && self.grace_until.is_some_and(|t| Instant::now() < t) {
            return Err(format!(
                "chunk {chunk} holds bytes past its file's end, and the master started less than a session timeout ago: a client not back yet may still record them"
            ));
        }
        Ok(true)
    }

    /// The master started cutting `chunk` (requests growing over it wait).
    pub fn cut_started(&mut self, chunk: u64) {
        self.cutting.insert(chunk);
    }

    /// The master's cut of `chunk` ended: with `Some((version, length))` it
    /// succeeded (the chunk is clean, and the cut is remembered for
    /// [`Tails::check_claim`]); with `None` it failed and the chunk stays dirty.
    pub fn cut_ended(&mut self, chunk: u64, done: Option<(u64, u64)>) {
        self.cutting.remove(&chunk);
        if let Some(cut) = done {
            self.dirty.remove(&chunk);
            self.cuts.insert(chunk, cut);
        }
    }

    /// True when a client session has a write session open on `chunk`.
    pub fn has_writers(&self, chunk: u64) -> bool {
        self.writers.get(&chunk).is_some_and(|w| !w.is_empty())
    }

    /// True while the master is cutting `chunk`.
    pub fn is_cutting(&self, chunk: u64) -> bool {
        self.cutting.contains(&chunk)
    }

    /// True when some chunk may hold unrecorded bytes past its file's end.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A client session opened a write session on `chunk` at `version`.
    pub fn opened(&mut self, chunk: u64, session: u64, version: u64) {
        let w = self.writers.entry(chunk).or_default();
        let v = w.entry(session).or_insert(version);
        *v = (*v).max(version);
    }

    /// A client session closed its write session on `chunk` (`version` 0: a
    /// client that does not say which, so any).
    pub fn ended(&mut self, chunk: u64, session: u64, version: u64) {
        if let Some(w) = self.writers.get_mut(&chunk) {
            if w.get(&session)
                .is_some_and(|v| version == 0 || version >= *v)
            {
                w.remove(&session);
            }
            if w.is_empty() {
                self.writers.remove(&chunk);
            }
        }
    }

    /// True when the master knows anything of `chunk` here: a write session
    /// open on it, bytes past its end, or a cut (running or done).
    pub fn knows(&self, chunk: u64) -> bool {
        self.writers.contains_key(&chunk)
            || self.dirty.contains_key(&chunk)
            || self.cutting.contains(&chunk)
            || self.cuts.contains_key(&chunk)
    }

    /// The master created `chunk` again, empty, at `version` (its creation was
    /// logged but no copy of it ever reached a chunkserver the master knows):
    /// remembered as a cut to length 0, so a write session older than
    /// `version` that claims bytes in it (a client not back yet that wrote into
    /// a copy the master never saw) is told its write is lost.
    pub fn started_afresh(&mut self, chunk: u64, version: u64) {
        self.dirty.remove(&chunk);
        self.cuts.insert(chunk, (version, 0));
    }

    /// The master refused the length a write session on `chunk` asked for (its
    /// data ends at `end` in the chunk): its bytes past the file's end stay
    /// unrecorded.
    pub fn refused(&mut self, chunk: u64, end: u64) {
        self.mark(chunk, end, false);
    }

    /// A client session is gone (closed or expired): its open write sessions
    /// will never record their data.
    pub fn session_gone(&mut self, st: &State, session: u64) {
        let mut left = Vec::new();
        self.writers.retain(|chunk, w| {
            if w.remove(&session).is_some() {
                left.push(*chunk);
            }
            !w.is_empty()
        });
        for chunk in left {
            if tail_position(st, chunk).is_some_and(|(_, _, end)| end < st.chunk_size) {
                self.mark(chunk, st.chunk_size, false);
                tracing::info!(
                    chunk,
                    session,
                    "a client left with a write session open: the chunk will be cut at its file's end before the file grows over it"
                );
            }
        }
    }

    /// Forgets chunks removed from the chunk table.
    pub fn forget(&mut self, chunks: &[u64]) {
        for c in chunks {
            self.writers.remove(c);
            self.dirty.remove(c);
            self.cuts.remove(c);
        }
    }

    /// A chunkserver registered these copies: one longer than its file's end
    /// while no write session is known on it holds bytes no one will record.
    pub fn registered(&mut self, st: &State, chunks: &[pb::ChunkInfo]) {
        for c in chunks {
            if self.writers.contains_key(&c.chunk_id) {
                continue;
            }
            let Some(meta) = st.chunks.get(&c.chunk_id) else {
                continue;
            };
            if c.version < meta.version || meta.refs > 1 {
                continue;
            }
            if let Some((inode, index, end)) = tail_position(st, c.chunk_id) {
                if c.length > end {
                    tracing::info!(
                        chunk = c.chunk_id,
                        inode,
                        index,
                        length = c.length,
                        end,
                        "a copy holds bytes past its file's end: it will be cut before the file grows over them"
                    );
                    self.mark(c.chunk_id, c.length, true);
                }
            }
        }
    }

    /// True when `chunk` may hold unrecorded bytes past its file's end.
    pub fn is_dirty(&self, chunk: u64) -> bool {
        self.dirty.contains_key(&chunk)
    }

    /// Index of a chunk of `file` at or past its end that may hold bytes past
    /// the end (a snapshot cuts those before sharing them).
    pub fn dirty_tail(&self, st: &State, file: u64) -> Option<u64> {
        if self.dirty.is_empty() {
            return None;
        }
        let f = st.inodes.get(&file)?;
        let slots = f.chunks()?;
        let cs = st.chunk_size.max(1);
        let first = usize::try_from(f.size / cs).ok()?;
        let i = slots.get(first..)?.iter().enumerate().position(|(i, c)| {
            let end = end_in_chunk(f.size, (first + i) as u64, cs);
            self.dirty.get(c).is_some_and(|d| d.bound > end)
        })?;
        Some((first + i) as u64)
    }

    /// Refuses a `WriteChunkEnd` length whose bytes the master cut after the
    /// session at `version` wrote them (`claim`: end of the data in the chunk).
    pub fn check_claim(&self, chunk: u64, version: u64, claim: u64) -> FsResult<()> {
        match self.cuts.get(&chunk) {
            Some((cut_version, length)) if version != 0 && version < *cut_version && claim > *length => {
                Err(FsError::new(
                    libc::EIO,
                    format!(
                        "bytes {length}..{claim} of chunk {chunk} written in write session {version} were cut by the master at session {cut_version} (the session was unknown to it, e.g. after a master restart): the write is lost"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// What must happen before `session` makes `growth` part of file `inode`.
    pub fn need(&self, st: &State, session: u64, inode: u64, growth: Growth) -> Need {
        if self.dirty.is_empty() {
            return Need::Nothing;
        }
        let Some(f) = st.inodes.get(&inode) else {
            return Need::Nothing;
        };
        let Some(slots) = f.chunks() else {
            return Need::Nothing;
        };
        let cs = st.chunk_size.max(1);
        let first = f.size / cs;
        let last = match growth {
            Growth::Chunk(i) => i,
            Growth::Size(n) if n > f.size => (n - 1) / cs,
            Growth::Size(_) => return Need::Nothing,
        };
        let upto = last.min((slots.len() as u64).saturating_sub(1));
        for idx in first..=upto {
            let Some(&chunk) = slots.get(idx as usize) else {
                break;
            };
            if chunk == 0 || st.chunks.get(&chunk).is_none_or(|m| m.refs > 1) {
                continue;
            }
            // This client's own session: it writes where it writes.
            if self
                .writers
                .get(&chunk)
                .is_some_and(|w| w.contains_key(&session))
            {
                continue;
            }
            match self.may_cut(chunk, end_in_chunk(f.size, idx, cs)) {
                Ok(true) => return Need::Cut(idx),
                Ok(false) => {}
                Err(why) => return Need::Wait(format!("inode {inode}: {why}")),
            }
        }
        Need::Nothing
    }
}

/// The error a request gets when a chunk it would grow the file over became
/// dirty after [`settle`] (the client retries).
pub fn recheck(
    tails: &Tails,
    st: &State,
    session: u64,
    inode: u64,
    growth: Growth,
) -> FsResult<()> {
    match tails.need(st, session, inode, growth) {
        Need::Nothing => Ok(()),
        Need::Cut(i) => Err(FsError::new(
            libc::EAGAIN,
            format!("chunk {i} of inode {inode} must first be cut at the file's end; retry"),
        )),
        Need::Wait(why) => Err(FsError::new(libc::EAGAIN, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ops::{apply, prepare_create, NewInode, Owner};
    use alces_proto::pb::changelog_record::Op;
    use alces_proto::pb::{ChangelogRecord, FileType};

    const CS: u64 = 1 << 20;

    fn run(st: &mut State, op: Op) {
        let rec = ChangelogRecord {
            reply: None,
            version: st.version + 1,
            time_ns: 1000 + st.version as i64,
            op: Some(op),
        };
        apply(st, &rec).expect("apply");
    }

    /// A file of `size` bytes with chunks at `indexes`; returns (inode, chunk ids).
    fn file(st: &mut State, name: &str, size: u64, indexes: &[u64]) -> (u64, Vec<u64>) {
        let op = prepare_create(
            st,
            &NewInode {
                parent: crate::state::namespace::ROOT_INODE,
                name: name.as_bytes(),
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                owner: Owner { uid: 1, gid: 1 },
                target: b"",
            },
        )
        .expect("create");
        let ino = match &op {
            Op::Create(c) => c.inode,
            _ => unreachable!("a create op"),
        };
        run(st, op);
        let mut ids = Vec::new();
        for idx in indexes {
            let id = st.next_chunk_id;
            run(
                st,
                Op::WriteChunk(pb::WriteChunkOp {
                    inode: ino,
                    chunk_index: *idx,
                    chunk_id: id,
                    version: 1,
                    created: true,
                    copy_from_chunk_id: 0,
                }),
            );
            ids.push(id);
        }
        run(
            st,
            Op::WriteChunkEnd(pb::WriteChunkEndOp {
                inode: ino,
                file_size: size,
                modified: true,
            }),
        );
        (ino, ids)
    }

    #[test]
    fn growth_over_a_dirty_chunk_cuts_or_waits_for_other_writers() {
        let mut st = State::format("t".into(), CS, 2, 1000);
        // Ends 4096 bytes into chunk 0; chunk 1 wholly past the end.
        let (ino, ids) = file(&mut st, "f", 4096, &[0, 1]);
        let mut t = Tails::default();
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(3)), Need::Nothing);
        t.refused(ids[1], CS);
        // Writing inside the file, or shrinking, touches nothing past the end.
        assert_eq!(t.need(&st, 1, ino, Growth::Size(100)), Need::Nothing);
        // A write in chunk 0 leaves chunk 1 outside the file.
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(0)), Need::Nothing);
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(1)), Need::Cut(1));
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(5)), Need::Cut(1));
        assert_eq!(t.need(&st, 1, ino, Growth::Size(CS + 1)), Need::Cut(1));
        assert_eq!(t.need(&st, 1, ino, Growth::Size(CS)), Need::Nothing);
        t.refused(ids[0], 70_000);
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(0)), Need::Cut(0));
        // Another client's open write session may own the bytes: wait.
        t.opened(ids[0], 2, 5);
        assert!(matches!(
            t.need(&st, 1, ino, Growth::Chunk(0)),
            Need::Wait(_)
        ));
        // The client's own session writes where it writes.
        assert_eq!(t.need(&st, 2, ino, Growth::Chunk(0)), Need::Nothing);
        t.ended(ids[0], 2, 5);
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(0)), Need::Cut(0));
        t.cutting.insert(ids[0]);
        assert!(matches!(
            t.need(&st, 1, ino, Growth::Chunk(0)),
            Need::Wait(_)
        ));
        t.cutting.remove(&ids[0]);
        t.forget(&ids);
        assert_eq!(t.need(&st, 1, ino, Growth::Chunk(5)), Need::Nothing);
    }

    #[test]
    fn registered_bytes_wait_for_clients_and_recorded_ones_are_left() {
        let mut st = State::format("t".into(), CS, 2, 1000);
        let (ino, ids) = file(&mut st, "f", 4096, &[0]);
        let mut t = Tails::new(Duration::from_secs(3600));
        let info = pb::ChunkInfo {
            chunk_id: ids[0],
            version: 1,
            disk: 0,
            length: 70_000,
        };
        t.registered(&st, &[info]);
        // Right after a start, a client not back yet may own the bytes.
        assert!(matches!(
            t.need(&st, 1, ino, Growth::Chunk(0)),
            Need::Wait(_)
        ));
        // It comes back and records them: nothing to cut.
        run(
            &mut st,
            Op::WriteChunkEnd(pb::WriteChunkEndOp {
                inode: ino,
                file_size: 70_000,
                modified: true,
            }),
        );
        assert_eq!(t.need(&st, 1, ino, Growth::Size(CS)), Need::Nothing);
        assert_eq!(t.dirty_tail(&st, ino), None);
        // A refusal is definite: cut at once.
        t.refused(ids[0], 100_000);
        assert_eq!(t.need(&st, 1, ino, Growth::Size(CS)), Need::Cut(0));
        assert_eq!(t.dirty_tail(&st, ino), Some(0));
    }

    #[test]
    fn a_client_leaving_or_a_long_copy_marks_the_chunk() {
        let mut st = State::format("t".into(), CS, 2, 1000);
        let (ino, ids) = file(&mut st, "f", CS + 10, &[0, 1]);
        let mut t = Tails::default();
        // A client with sessions on a full chunk and on the last one leaves.
        t.opened(ids[0], 7, 2);
        t.opened(ids[1], 7, 2);
        t.session_gone(&st, 7);
        assert!(!t.is_dirty(ids[0]), "chunk 0 is wholly inside the file");
        assert!(t.is_dirty(ids[1]));
        assert_eq!(t.dirty_tail(&st, ino), Some(1));
        t.forget(&ids);
        // Registration: a copy longer than the file's end, no session known.
        let info = |id: u64, length: u64| pb::ChunkInfo {
            chunk_id: id,
            version: 1,
            disk: 0,
            length,
        };
        t.registered(&st, &[info(ids[0], CS), info(ids[1], 10)]);
        assert_eq!(t.dirty_tail(&st, ino), None);
        t.opened(ids[1], 7, 2);
        t.registered(&st, &[info(ids[1], 4096)]);
        assert!(!t.is_dirty(ids[1]), "an open session may own the bytes");
        t.ended(ids[1], 7, 2);
        t.registered(&st, &[info(ids[1], 4096)]);
        assert!(t.is_dirty(ids[1]));
    }

    #[test]
    fn writers_end_only_with_their_latest_session() {
        let mut t = Tails::default();
        t.opened(7, 1, 3);
        t.opened(7, 1, 5);
        t.ended(7, 1, 4);
        assert!(
            t.writers.contains_key(&7),
            "an older session's end keeps the newer open"
        );
        t.ended(7, 1, 5);
        assert!(!t.writers.contains_key(&7));
        t.opened(7, 2, 9);
        t.ended(7, 2, 0);
        assert!(!t.writers.contains_key(&7), "version 0 ends any");
    }

    #[test]
    fn claims_over_a_later_cut_are_refused() {
        let mut t = Tails::default();
        t.cuts.insert(7, (10, 4096));
        assert!(t.check_claim(7, 9, 4096).is_ok(), "nothing past the cut");
        assert_eq!(t.check_claim(7, 9, 5000).unwrap_err().errno, libc::EIO);
        assert!(t.check_claim(7, 10, 5000).is_ok(), "written after the cut");
        assert!(t.check_claim(7, 0, 5000).is_ok(), "version not told");
        t.forget(&[7]);
        assert!(t.check_claim(7, 9, 5000).is_ok());
    }

    #[test]
    fn ends_inside_chunks() {
        assert_eq!(end_in_chunk(4096, 0, 65536), 4096);
        assert_eq!(end_in_chunk(4096, 1, 65536), 0);
        assert_eq!(end_in_chunk(200_000, 1, 65536), 65536);
        assert_eq!(end_in_chunk(u64::MAX, 3, 65536), 65536);
    }
}
