//! Prometheus metrics of the chunkserver (`alces_chunkserver_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-operation and per-disk metrics.
pub type Labels = Vec<(String, String)>;

/// Every metric the chunkserver exports. Cloning shares the underlying values.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Data bytes returned by Read.
    pub bytes_read: Counter,
    /// Data bytes stored by Write (local copy only).
    pub bytes_written: Counter,
    /// Requests served, by operation.
    pub ops: Family<Labels, Counter>,
    /// Requests that failed, by operation.
    pub errors: Family<Labels, Counter>,
    /// Blocks whose CRC32C did not match (reads and scrubbing).
    pub crc_failures: Counter,
    /// Chunks found damaged (CRC failure, short file, bad header).
    pub damaged_chunks: Counter,
    /// Bytes verified by the background scrubber.
    pub scrubbed_bytes: Counter,
    /// Chunks currently held.
    pub chunks: Gauge,
    /// Total bytes of each data directory's filesystem.
    pub disk_total_bytes: Family<Labels, Gauge>,
    /// Free bytes of each data directory's filesystem.
    pub disk_free_bytes: Family<Labels, Gauge>,
    /// 1 while registered with the master, else 0.
    pub master_connected: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("alces_chunkserver");
        r.register(
            "read_bytes",
            "Data bytes returned by Read",
            self.bytes_read.clone(),
        );
        r.register(
            "written_bytes",
            "Data bytes stored by Write on this server",
            self.bytes_written.clone(),
        );
        r.register("ops", "Requests served, by operation", self.ops.clone());
        r.register(
            "errors",
            "Requests that failed, by operation",
            self.errors.clone(),
        );
        r.register(
            "crc_failures",
            "Blocks whose CRC32C did not match",
            self.crc_failures.clone(),
        );
        r.register(
            "damaged_chunks",
            "Chunks found damaged and dropped",
            self.damaged_chunks.clone(),
        );
        r.register(
            "scrubbed_bytes",
            "Bytes verified by the background scrubber",
            self.scrubbed_bytes.clone(),
        );
        r.register("chunks", "Chunks held", self.chunks.clone());
        r.register(
            "disk_total_bytes",
            "Size of each data directory's filesystem",
            self.disk_total_bytes.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Free space of each data directory's filesystem",
            self.disk_free_bytes.clone(),
        );
        r.register(
            "master_connected",
            "1 while registered with the master",
            self.master_connected.clone(),
        );
    }

    /// Counts one request of `op`, failed or not.
    pub fn op(&self, op: &str, ok: bool) {
        let l = vec![("op".to_string(), op.to_string())];
        self.ops.get_or_create(&l).inc();
        if !ok {
            self.errors.get_or_create(&l).inc();
        }
    }
}
