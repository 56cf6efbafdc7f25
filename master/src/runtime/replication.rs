//! The master side of metadata replication: the window of recent changelog
//! records metaloggers stream from, the table of metaloggers and the versions
//! they hold durably, the `sync_metaloggers` acknowledgement rule, and fencing
//! (a master that stepped down or saw a higher epoch accepts no mutation).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use alces_proto::pb::{self, ChangelogRecord};
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::Status;

use crate::runtime::chunkmap::ChunkMap;
use crate::runtime::window::RecordWindow;

/// Bytes of recent records kept in memory (encoded) for metaloggers to resume
/// from. A metalogger further behind fetches a fresh snapshot. Bounded in bytes,
/// not records, so that the window is a fixed cost and not a share of the
/// memory per file.
pub const WINDOW_BYTES: usize = 16 << 20;

/// A chunkserver heard (registration or heartbeat, every second) within this
/// long counts as reachable for [`chunkserver_quorum`].
pub const QUORUM_WINDOW: Duration = Duration::from_secs(3);

/// How often a mutation waiting for sync metaloggers looks again at whether the
/// master may degrade (the chunkserver quorum changes without any event).
const RECHECK: Duration = Duration::from_millis(200);

/// True when this master is not cut off from the cluster: more than half of the
/// chunkservers it knows were heard within [`QUORUM_WINDOW`]. Known servers are
/// every server registered since the master started, connected or lost, except
/// lost servers being drained (retired by an administrator); a server lost
/// without a drain keeps counting, so a master left with a minority never
/// regains the quorum by timing the others out. No server known: no quorum.
pub fn chunkserver_quorum(chunks: &ChunkMap, now: Instant) -> bool {
    let (mut known, mut fresh) = (0usize, 0usize);
    for s in chunks.servers.values() {
        if s.draining && !s.counted {
            continue;
        }
        known += 1;
        if s.connected && now.saturating_duration_since(s.last_seen) <= QUORUM_WINDOW {
            fresh += 1;
        }
    }
    fresh > 0 && fresh * 2 > known
}

/// Why a master stopped accepting mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fence {
    /// True once the master accepts no more mutations.
    pub fenced: bool,
    /// The higher epoch that replaced this master (0 if unknown).
    pub newer_epoch: u64,
}

/// One metalogger as the master knows it.
#[derive(Debug, Clone)]
pub struct Metalogger {
    /// gRPC address of its Metalogger service.
    pub address: String,
    /// Highest version it holds durably.
    pub durable: u64,
    /// Changelog streams open from it.
    pub streams: usize,
    /// Last stream open or report.
    pub last_seen: Instant,
}

/// Replication state shared by the commit path and the Replication service.
pub struct Hub {
    window: Mutex<RecordWindow>,
    committed: watch::Sender<u64>,
    metaloggers: Mutex<BTreeMap<String, Metalogger>>,
    acks: watch::Sender<u64>,
    /// Metaloggers that must hold a mutation before it is acknowledged.
    pub sync: usize,
    /// How long a mutation waits for them before the master degrades.
    pub sync_timeout: Duration,
    degraded: AtomicBool,
    /// No chunkserver quorum (as of the last check): degrading is not allowed.
    isolated: AtomicBool,
    /// A mutation is waiting because the master may not degrade (logged once).
    isolated_wait: AtomicBool,
    /// Highest version acknowledged to a client (durable, and held by the sync
    /// metaloggers unless degraded).
    acked: AtomicU64,
    fence: watch::Sender<Fence>,
}

impl Hub {
    /// A hub whose next record has version `next_version`.
    pub fn new(next_version: u64, sync: usize, sync_timeout: Duration) -> Self {
        Self {
            window: Mutex::new(RecordWindow::new(next_version, WINDOW_BYTES)),
            committed: watch::Sender::new(next_version.saturating_sub(1)),
            metaloggers: Mutex::new(BTreeMap::new()),
            acks: watch::Sender::new(0),
            sync,
            sync_timeout,
            degraded: AtomicBool::new(false),
            isolated: AtomicBool::new(false),
            isolated_wait: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            fence: watch::Sender::new(Fence::default()),
        }
    }

    /// Adds a committed record (called in version order under the master lock).
    pub fn push(&self, rec: &ChangelogRecord) {
        self.window.lock().push(rec);
        self.committed.send_replace(rec.version);
    }

    /// Highest committed version.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Receiver of the highest committed version.
    pub fn committed_rx(&self) -> watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// Oldest version still held in memory.
    pub fn first(&self) -> u64 {
        self.window.lock().first()
    }

    /// Up to `max` records from `from` to `upto` (empty when none yet); `Err`
    /// with the oldest version held when `from` is older.
    pub fn records_from(
        &self,
        from: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<ChangelogRecord>, u64> {
        self.window.lock().records_from(from, upto, max)
    }

    /// The current fence.
    pub fn fence(&self) -> Fence {
        *self.fence.borrow()
    }

    /// True when mutations are refused.
    pub fn is_fenced(&self) -> bool {
        self.fence.borrow().fenced
    }

    /// Receiver of the fence (to react to deposition).
    pub fn fence_rx(&self) -> watch::Receiver<Fence> {
        self.fence.subscribe()
    }

    /// Stops mutations; `newer_epoch` is the epoch that replaces this master.
    pub fn set_fence(&self, newer_epoch: u64) {
        self.fence.send_modify(|f| {
            f.fenced = true;
            f.newer_epoch = f.newer_epoch.max(newer_epoch);
        });
    }

    /// Accepts mutations again (a step-down that did not complete).
    pub fn unfence(&self) {
        self.fence.send_modify(|f| {
            if f.newer_epoch == 0 {
                f.fenced = false;
            }
        });
    }

    /// True while acknowledgements do not wait for `sync` metaloggers.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::SeqCst)
    }

    /// True while the master last found itself without its chunkserver quorum.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    /// Records whether the master has its chunkserver quorum (shown in the status).
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
        if !isolated {
            self.isolated_wait.store(false, Ordering::SeqCst);
        }
    }

    /// Records that `version` was acknowledged to a client.
    pub fn note_acked(&self, version: u64) {
        self.acked.fetch_max(version, Ordering::SeqCst);
    }

    /// Highest version acknowledged to a client by this master.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Records that metalogger `id` opened (`+1`) or closed (`-1`) a stream.
    pub fn stream_open(&self, id: &str, open: bool) {
        let mut m = self.metaloggers.lock();
        let e = m.entry(id.to_string()).or_insert_with(|| Metalogger {
            address: String::new(),
            durable: 0,
            streams: 0,
            last_seen: Instant::now(),
        });
        if open {
            e.streams += 1;
        } else {
            e.streams = e.streams.saturating_sub(1);
        }
        e.last_seen = Instant::now();
        drop(m);
        self.acks.send_modify(|n| *n += 1);
    }

    /// Records a metalogger's durable version.
    pub fn report(&self, id: &str, address: &str, durable: u64) {
        let mut m = self.metaloggers.lock();
        let e = m.entry(id.to_string()).or_insert_with(|| Metalogger {
            address: String::new(),
            durable: 0,
            streams: 0,
            last_seen: Instant::now(),
        });
        e.address = address.to_string();
        e.durable = durable;
        e.last_seen = Instant::now();
        drop(m);
        self.acks.send_modify(|n| *n += 1);
    }

    /// Metaloggers known, by id.
    pub fn metaloggers(&self) -> BTreeMap<String, Metalogger> {
        self.metaloggers.lock().clone()
    }

    /// Waits until `version` is durable on metalogger `id`, up to `timeout`.
    pub async fn wait_metalogger(&self, id: &str, version: u64, timeout: Duration) -> bool {
        let mut rx = self.acks.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .metaloggers
                .lock()
                .get(id)
                .is_some_and(|m| m.durable >= version)
            {
                return true;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    fn count(&self, version: u64) -> (usize, usize) {
        let m = self.metaloggers.lock();
        let held = m
            .values()
            .filter(|x| x.streams > 0 && x.durable >= version)
            .count();
        let connected = m.values().filter(|x| x.streams > 0).count();
        (held, connected)
    }

    /// Waits until `sync` metaloggers hold `version` durably.
    ///
    /// Fewer than `sync` connected, or no acknowledgement within
    /// `sync_timeout` (at least [`QUORUM_WINDOW`]): the master degrades (loud error log, status condition)
    /// and acknowledges after its own fsync until enough metaloggers are
    /// connected again — but only while `quorum()` says it still reaches a
    /// majority of its chunkservers. A master cut off from its metaloggers and
    /// most chunkservers (a partition, the situation in which a metalogger gets
    /// promoted) never acknowledges without them: the mutation waits, and fails
    /// with UNAVAILABLE (never acknowledged) if a newer master deposes this one
    /// meanwhile, so the client retries against the new master.
    pub async fn wait_sync(&self, version: u64, quorum: impl Fn() -> bool) -> Result<(), Status> {
        if self.sync == 0 {
            return Ok(());
        }
        let mut acks = self.acks.subscribe();
        let mut fence = self.fence.subscribe();
        // At least the quorum window: a mutation that was already waiting when
        // the master got cut off must find the quorum gone when it would
        // degrade, not a majority heard just before the cut.
        let deadline = tokio::time::Instant::now() + self.sync_timeout.max(QUORUM_WINDOW);
        loop {
            let (held, connected) = self.count(version);
            if held >= self.sync {
                if self.degraded.swap(false, Ordering::SeqCst) {
                    tracing::warn!(
                        sync_metaloggers = self.sync,
                        "enough metaloggers hold the changelog again: acknowledgements wait for them again"
                    );
                }
                self.isolated_wait.store(false, Ordering::SeqCst);
                return Ok(());
            }
            let f = self.fence();
            if f.newer_epoch > 0 {
                return Err(Status::unavailable(format!(
                    "this master was replaced by a newer one (epoch {}) before the change reached {} metalogger(s): it was not acknowledged and is dropped here; retry against the current master",
                    f.newer_epoch, self.sync
                )));
            }
            let now = tokio::time::Instant::now();
            let may_degrade = now >= deadline || (connected < self.sync && self.degraded());
            if may_degrade {
                if quorum() {
                    self.set_isolated(false);
                    if !self.degraded.swap(true, Ordering::SeqCst) {
                        tracing::error!(
                            sync_metaloggers = self.sync,
                            holding = held,
                            connected,
                            timeout_ms = self.sync_timeout.as_millis() as u64,
                            "SYNC METALOGGERS DEGRADED: fewer metaloggers than sync_metaloggers hold new mutations; acknowledging after the master's own fsync only (a failover now may lose acknowledged mutations)"
                        );
                    }
                    return Ok(());
                }
                self.isolated.store(true, Ordering::SeqCst);
                if !self.isolated_wait.swap(true, Ordering::SeqCst) {
                    tracing::error!(
                        sync_metaloggers = self.sync,
                        holding = held,
                        connected,
                        "SYNC METALOGGERS UNREACHABLE AND NO CHUNKSERVER QUORUM: this master may be cut off from the cluster (a metalogger may be promoted meanwhile), so it does not degrade: mutations wait unacknowledged until enough metaloggers hold them"
                    );
                }
            }
            let pause = if may_degrade {
                RECHECK
            } else {
                deadline.saturating_duration_since(now)
            };
            tokio::select! {
                r = acks.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(RECHECK).await;
                    }
                }
                r = fence.changed() => {
                    if r.is_err() {
                        tokio::time::sleep(RECHECK).await;
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Status rows of the metaloggers, lag against `version`.
    pub fn status(&self, version: u64) -> Vec<pb::MetaloggerStatus> {
        self.metaloggers
            .lock()
            .iter()
            .map(|(id, m)| pb::MetaloggerStatus {
                id: id.clone(),
                address: m.address.clone(),
                applied_version: m.durable,
                lag: version.saturating_sub(m.durable),
                connected: m.streams > 0,
            })
            .collect()
    }

    /// Conditions for `alces status`.
    pub fn conditions(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.degraded() {
            out.push(format!(
                "SyncMetaloggersDegraded: fewer than {} metaloggers hold new mutations; acknowledgements do not wait for them",
                self.sync
            ));
        }
        if self.sync > 0 && self.isolated.load(Ordering::SeqCst) {
            out.push(format!(
                "NoChunkserverQuorum: no majority of the chunkservers heard within {} s; mutations are acknowledged only once {} metaloggers hold them (never degraded)",
                QUORUM_WINDOW.as_secs(),
                self.sync
            ));
        }
        let f = self.fence();
        if f.fenced {
            out.push(format!(
                "Fenced: this master accepts no mutations (replaced by epoch {})",
                f.newer_epoch
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The window holds a bounded number of bytes whatever the number of
    /// records; a resume point that fell out of it is refused with the oldest
    /// version held, and ranges inside it come back in order.
    #[test]
    fn the_window_is_bounded_in_bytes() {
        let hub = Hub::new(1, 0, Duration::from_secs(1));
        let rec = |v: u64| ChangelogRecord {
            reply: None,
            version: v,
            time_ns: 1,
            op: Some(pb::changelog_record::Op::Purge(pb::PurgeOp { inode: v })),
        };
        let n = 2 * WINDOW_BYTES / rec(1).encoded_len();
        for v in 1..=n as u64 {
            hub.push(&rec(v));
        }
        let first = hub.first();
        assert!(first > 1, "old records were dropped");
        let w = hub.window.lock();
        assert!(w.bytes() <= WINDOW_BYTES, "{} bytes held", w.bytes());
        assert_eq!(w.len() as u64, n as u64 - first + 1);
        drop(w);
        assert_eq!(hub.records_from(first - 1, n as u64, 10), Err(first));
        let got = hub.records_from(first + 5, n as u64, 3).unwrap();
        assert_eq!(
            got.iter().map(|r| r.version).collect::<Vec<_>>(),
            vec![first + 5, first + 6, first + 7]
        );
        assert!(hub
            .records_from(n as u64 + 1, n as u64, 10)
            .unwrap()
            .is_empty());
    }
}
