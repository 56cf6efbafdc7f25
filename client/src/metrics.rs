//! Prometheus metrics of a mount (`alces_client_...`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of the per-operation counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// FUSE operation name.
    pub op: String,
}

/// Counters of a mount.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Operations served, by operation.
    pub ops: Family<OpLabels, Counter>,
    /// Operations that failed, by operation.
    pub errors: Family<OpLabels, Counter>,
    /// Bytes returned by reads.
    pub read_bytes: Counter,
    /// Bytes accepted by writes.
    pub written_bytes: Counter,
}

impl Metrics {
    /// New counters registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register("alces_client_ops", "FUSE operations served", m.ops.clone());
        registry.register(
            "alces_client_errors",
            "FUSE operations that failed",
            m.errors.clone(),
        );
        registry.register(
            "alces_client_read_bytes",
            "bytes returned by reads",
            m.read_bytes.clone(),
        );
        registry.register(
            "alces_client_written_bytes",
            "bytes accepted by writes",
            m.written_bytes.clone(),
        );
        m
    }

    /// Counts one operation and whether it failed.
    pub fn op(&self, op: &str, failed: bool) {
        let l = OpLabels { op: op.to_string() };
        self.ops.get_or_create(&l).inc();
        if failed {
            self.errors.get_or_create(&l).inc();
        }
    }
}
