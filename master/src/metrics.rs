//! Prometheus metrics of the master (`alces_master_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of the per-RPC counter: `rpc` and `result` (ok / error).
pub type RpcLabels = Vec<(String, String)>;

/// Every metric the master exports.
#[derive(Clone)]
pub struct Metrics {
    /// Calls per RPC and result.
    pub rpcs: Family<RpcLabels, Counter>,
    /// Current metadata version.
    pub metadata_version: Gauge,
    /// Inodes in the namespace.
    pub inodes: Gauge,
    /// Chunks in the chunk table.
    pub chunks: Gauge,
    /// Connected chunkservers.
    pub chunkservers: Gauge,
    /// Open client sessions.
    pub sessions: Gauge,
    /// Latency of each changelog group commit (write + fdatasync).
    pub fsync_seconds: Histogram,
    /// Outcomes kept in the reply cache.
    pub reply_cache_entries: Gauge,
    /// Estimated memory the reply cache holds (bytes).
    pub reply_cache_bytes: Gauge,
    /// File locks held (each range once).
    pub locks: Gauge,
    /// Blocking lock requests waiting.
    pub lock_waiters: Gauge,
    /// Lock requests refused by a cap, by `cap` (session / total).
    pub lock_cap_refusals: Family<RpcLabels, Counter>,
    /// Retried mutations answered from the reply cache.
    pub reply_cache_hits: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `reg`.
    pub fn new(reg: &mut Registry) -> Self {
        let m = Self {
            rpcs: Family::default(),
            metadata_version: Gauge::default(),
            inodes: Gauge::default(),
            chunks: Gauge::default(),
            chunkservers: Gauge::default(),
            sessions: Gauge::default(),
            fsync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            reply_cache_entries: Gauge::default(),
            reply_cache_bytes: Gauge::default(),
            locks: Gauge::default(),
            lock_waiters: Gauge::default(),
            lock_cap_refusals: Family::default(),
            reply_cache_hits: Counter::default(),
        };
        reg.register(
            "alces_master_reply_cache_hits",
            "Retried mutations answered with their first outcome from the reply cache",
            m.reply_cache_hits.clone(),
        );
        reg.register(
            "alces_master_rpc",
            "gRPC calls by rpc and result",
            m.rpcs.clone(),
        );
        reg.register(
            "alces_master_metadata_version",
            "Current metadata version",
            m.metadata_version.clone(),
        );
        reg.register(
            "alces_master_inodes",
            "Inodes in the namespace",
            m.inodes.clone(),
        );
        reg.register(
            "alces_master_chunks",
            "Chunks in the chunk table",
            m.chunks.clone(),
        );
        reg.register(
            "alces_master_chunkservers_connected",
            "Connected chunkservers",
            m.chunkservers.clone(),
        );
        reg.register(
            "alces_master_sessions",
            "Open client sessions",
            m.sessions.clone(),
        );
        reg.register(
            "alces_master_reply_cache_entries",
            "Outcomes of tagged mutations kept for retries (reply cache)",
            m.reply_cache_entries.clone(),
        );
        reg.register(
            "alces_master_reply_cache_bytes",
            "Estimated memory held by the reply cache",
            m.reply_cache_bytes.clone(),
        );
        reg.register(
            "alces_master_locks",
            "File locks held (flock and POSIX ranges, each range once)",
            m.locks.clone(),
        );
        reg.register(
            "alces_master_lock_waiters",
            "Blocking lock requests waiting for a conflicting lock to go",
            m.lock_waiters.clone(),
        );
        reg.register(
            "alces_master_lock_cap_refusals",
            "Lock requests refused with ENOLCK by a cap, by cap (session: --max-locks-per-session, total: --max-locks)",
            m.lock_cap_refusals.clone(),
        );
        reg.register(
            "alces_master_changelog_fsync_seconds",
            "Latency of a changelog group commit (write and fdatasync)",
            m.fsync_seconds.clone(),
        );
        m
    }

    /// Counts one lock request refused by `cap` (`session` or `total`).
    pub fn lock_cap_refused(&self, cap: &str) {
        self.lock_cap_refusals
            .get_or_create(&vec![("cap".to_string(), cap.to_string())])
            .inc();
    }

    /// Counts one call of `rpc`.
    pub fn count(&self, rpc: &str, ok: bool) {
        self.rpcs
            .get_or_create(&vec![
                ("rpc".to_string(), rpc.to_string()),
                (
                    "result".to_string(),
                    if ok { "ok" } else { "error" }.to_string(),
                ),
            ])
            .inc();
    }
}
