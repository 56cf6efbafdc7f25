//! Replaying the journalled writes of a dead daemon (see [`crate::journal`])
//! before its connection is served again, retrying what fails.
//!
//! Each file is replayed as a whole (reopened as root, [`Client::reopen`]:
//! the master allows it for the write access it granted the session's open;
//! every record written again in order, flushed, released), so a failed attempt is simply repeated: the
//! same bytes go to the same offsets. Files that fail are tried again with a
//! backoff doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`], each wait
//! logged with what it waits for, until the deadline; a file deleted meanwhile
//! is dropped. A file still failing at the deadline (a chunk whose every copy
//! is lost, a full quota) is given up: the result lists it, with its error, so
//! the caller can mark it and tell the applications; the other files are
//! replayed all the same, and the daemon serves.

use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::Error;
use crate::journal::Record;
use crate::namespace::Caller;

/// First pause before a failed file is tried again.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A file whose journalled writes could not be replayed by the deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWrites {
    /// The file (Alces inode).
    pub inode: u64,
    /// Journalled bytes not written.
    pub bytes: u64,
    /// Lowest offset they covered.
    pub start: u64,
    /// Offset just past the highest byte they covered.
    pub end: u64,
    /// The last error, and how many attempts were made.
    pub error: String,
}

impl LostWrites {
    /// A one-line description, also the value of the mark
    /// ([`LOST_WRITES_XATTR`]) put on the file.
    pub fn describe(&self) -> String {
        format!(
            "{} acknowledged bytes at offsets {}..{} were lost when the mount daemon was replaced: {}",
            self.bytes, self.start, self.end, self.error
        )
    }
}

/// The extended attribute that marks a file whose acknowledged writes were
/// lost at a takeover (value: [`LostWrites::describe`]).
pub const LOST_WRITES_XATTR: &[u8] = b"user.alces.lost-writes";

/// What a replay did.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Files whose writes are durable again.
    pub files: usize,
    /// Files deleted meanwhile (their writes dropped).
    pub gone: Vec<u64>,
    /// Files given up at the deadline.
    pub lost: Vec<LostWrites>,
}

enum FileOutcome {
    Done,
    Gone,
}

/// Replays `records` through `client`, retrying failed files until
/// `deadline` has passed since the start (see the module's description).
pub async fn replay(client: &Client, records: &[Record], deadline: Duration) -> Replayed {
    let started = Instant::now();
    let mut pending: Vec<u64> = Vec::new();
    for r in records {
        if !pending.contains(&r.inode) {
            pending.push(r.inode);
        }
    }
    let mut out = Replayed::default();
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0u32;
    while !pending.is_empty() {
        attempts += 1;
        let mut failed: Vec<(u64, Error)> = Vec::new();
        for &inode in &pending {
            let left = deadline
                .saturating_sub(started.elapsed())
                .max(FIRST_BACKOFF);
            let mine = records.iter().filter(move |r| r.inode == inode);
            let r = with_deadline(inode, left, replay_file(client, inode, mine)).await;
            match r {
                Ok(FileOutcome::Done) => out.files += 1,
                Ok(FileOutcome::Gone) => {
                    tracing::warn!(
                        inode,
                        "a journalled file is gone; its unflushed writes are dropped"
                    );
                    out.gone.push(inode);
                }
                Err(e) => failed.push((inode, e)),
            }
        }
        if failed.is_empty() {
            break;
        }
        if started.elapsed() + backoff > deadline {
            for (inode, e) in failed {
                let mine: Vec<&Record> = records.iter().filter(|r| r.inode == inode).collect();
                let lost = LostWrites {
                    inode,
                    bytes: mine.iter().map(|r| r.data.len() as u64).sum(),
                    start: mine.iter().map(|r| r.offset).min().unwrap_or(0),
                    end: mine
                        .iter()
                        .map(|r| r.offset + r.data.len() as u64)
                        .max()
                        .unwrap_or(0),
                    error: format!("{e} (after {attempts} attempts in {:?})", started.elapsed()),
                };
                tracing::error!(inode, bytes = lost.bytes, start = lost.start, end = lost.end, error = %lost.error, "giving up the replay of a file's journalled writes: the file is marked and every fsync and close of a descriptor opened before the takeover fails with EIO");
                out.lost.push(lost);
            }
            break;
        }
        let (inode, e) = &failed[0];
        tracing::warn!(
            files = failed.len(),
            inode,
            error = %e,
            wait = ?backoff,
            left = ?deadline.saturating_sub(started.elapsed()),
            "journal replay waits: a file's journalled writes cannot be written yet; trying again"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        pending = failed.into_iter().map(|(i, _)| i).collect();
    }
    out
}

/// Runs one attempt for at most `left`, logging every [`WAIT_LOG`] what it
/// still waits for.
async fn with_deadline(
    inode: u64,
    left: Duration,
    attempt: impl std::future::Future<Output = Result<FileOutcome, Error>>,
) -> Result<FileOutcome, Error> {
    let start = tokio::time::Instant::now();
    let end = start + left;
    tokio::pin!(attempt);
    let mut tick = tokio::time::interval_at(start + WAIT_LOG, WAIT_LOG);
    loop {
        tokio::select! {
            r = &mut attempt => return r,
            _ = tokio::time::sleep_until(end) => {
                return Err(Error::io("still not written when the replay deadline passed"));
            }
            _ = tick.tick() => {
                tracing::warn!(inode, waited = ?start.elapsed(), left = ?end.saturating_duration_since(tokio::time::Instant::now()), "journal replay waits: the file's journalled writes are not written yet (no chunkserver holding a copy answers, or the master is unreachable)");
            }
        }
    }
}

/// How often a replay attempt that waits says so.
const WAIT_LOG: Duration = Duration::from_secs(1);

async fn replay_file<'a>(
    client: &Client,
    inode: u64,
    records: impl Iterator<Item = &'a Record>,
) -> Result<FileOutcome, Error> {
    let root = Caller::new(0, 0, 0);
    // A reopen: the dead daemon's open of the file is still the session's,
    // with the write access the master granted it (root on a root-squashed
    // mount could not open the user's file otherwise).
    let h = match client.reopen(inode, libc::O_WRONLY, &root).await {
        Ok(h) => h,
        Err(e) if matches!(e.errno(), libc::ENOENT | libc::ESTALE) => return Ok(FileOutcome::Gone),
        Err(e) => return Err(Error::new(e.errno(), format!("opening: {e}"))),
    };
    let mut r = Ok(());
    for rec in records {
        r = h.write(rec.offset, &rec.data).await.map(|_| ());
        if r.is_err() {
            break;
        }
    }
    if r.is_ok() {
        r = h.flush().await;
    }
    let _ = h.release().await;
    r.map(|()| FileOutcome::Done)
}
