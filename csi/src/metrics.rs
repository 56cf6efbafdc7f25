//! Prometheus metrics of the driver (`alces_csi_...`): per-RPC counts and
//! latencies, mounts by state, daemon restarts and takeovers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an RPC count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `/csi.v1.Controller/CreateVolume`, ...
    pub method: String,
    /// gRPC status code name (`Ok`, `NotFound`, ...).
    pub code: String,
}

/// Labels of an RPC latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The RPC.
    pub method: String,
}

/// Labels of a mount-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `serving`, `restarting`, `handing_over`, `broken`.
    pub state: String,
}

/// Labels of a takeover count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TakeoverLabels {
    /// `crash` (a daemon died and was replaced), `handover` (an upgrade), or
    /// `adopted` (a running daemon taken under a new mount service).
    pub kind: String,
}

/// The driver's metrics.
#[derive(Clone)]
pub struct CsiMetrics {
    /// RPCs served, by method and status code.
    pub rpcs: Family<RpcLabels, Counter>,
    /// RPC latency in seconds, by method.
    pub latency: Family<MethodLabels, Histogram>,
    /// Mounts by state (mount service).
    pub mounts: Family<StateLabels, Gauge>,
    /// Takeovers of a kernel FUSE connection by a new mount daemon.
    pub takeovers: Family<TakeoverLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl CsiMetrics {
    /// New metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            rpcs: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            mounts: Family::default(),
            takeovers: Family::default(),
        };
        registry.register(
            "alces_csi_rpcs",
            "CSI RPCs served, by method and code",
            m.rpcs.clone(),
        );
        registry.register(
            "alces_csi_rpc_seconds",
            "CSI RPC latency, by method",
            m.latency.clone(),
        );
        registry.register(
            "alces_csi_mounts",
            "FUSE mounts of staged volumes, by state",
            m.mounts.clone(),
        );
        registry.register(
            "alces_csi_takeovers",
            "kernel FUSE connections handed to a new mount daemon, by kind",
            m.takeovers.clone(),
        );
        m
    }

    /// Records one RPC.
    pub fn rpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(seconds);
    }

    /// Counts a takeover of `kind`.
    pub fn takeover(&self, kind: &str) {
        self.takeovers
            .get_or_create(&TakeoverLabels { kind: kind.into() })
            .inc();
    }

    /// Sets the number of mounts in each state.
    pub fn set_mounts(&self, counts: &[(&str, i64)]) {
        for (state, n) in counts {
            self.mounts
                .get_or_create(&StateLabels {
                    state: (*state).into(),
                })
                .set(*n);
        }
    }
}
