//! The operator's Prometheus metrics (served on `/metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric of the operator.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Counter,
    /// Reconciles that failed.
    pub reconcile_errors: Counter,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Writes (create, patch, replace, delete) the reconciles sent to the API server.
    pub api_writes: Counter,
    /// Promotions made after a master failure.
    pub failovers: Counter,
    /// Seconds from the first unhealthy observation of the master to the
    /// promoted master receiving traffic.
    pub failover_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Metrics {
    /// Registers the metrics in `r`.
    pub fn new(r: &mut Registry) -> Self {
        let m = Self {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_duration: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            api_writes: Counter::default(),
            failovers: Counter::default(),
            failover_duration: Histogram::new([0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0]),
            leader: Gauge::default(),
        };
        r.register(
            "alces_operator_reconciles",
            "Reconciles run",
            m.reconciles.clone(),
        );
        r.register(
            "alces_operator_reconcile_errors",
            "Reconciles that failed",
            m.reconcile_errors.clone(),
        );
        r.register(
            "alces_operator_reconcile_duration_seconds",
            "Duration of a reconcile",
            m.reconcile_duration.clone(),
        );
        r.register(
            "alces_operator_api_writes",
            "Writes sent to the Kubernetes API by reconciles",
            m.api_writes.clone(),
        );
        r.register(
            "alces_operator_failovers",
            "Metalogger promotions after a master failure",
            m.failovers.clone(),
        );
        r.register(
            "alces_operator_failover_duration_seconds",
            "From the master first seen unhealthy to traffic on the promoted master",
            m.failover_duration.clone(),
        );
        r.register(
            "alces_operator_leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        m
    }
}
