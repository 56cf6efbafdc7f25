//! The driver's [`Target`] for a cluster of local processes, without
//! Kubernetes: "pods" are the master and the metaloggers at fixed gRPC
//! addresses, the record lives in memory with a version (standing in for the
//! resourceVersion precondition), and routing is a no-op because a promoted
//! metalogger takes over the master's address (`--promote-listen`). The
//! end-to-end failover test and `alces-bench operator-failover` drive a local
//! cluster through it with the controller's own [`step`](super::driver::step).

use alces_proto::pb;

use crate::crd::Promotion;
use crate::dataplane::DataPlane;

use super::decide::{PodView, Record, Role};
use super::driver::{Observation, RecordError, Target};

/// A local cluster as the driver sees it.
pub struct LocalTarget {
    /// gRPC to the daemons.
    pub dp: DataPlane,
    /// The master's address (Admin service), the same before and after a
    /// promotion.
    pub master: String,
    /// The metadata "pods": name, ordinal, Metalogger service address (None
    /// for the original master process, which has none).
    pub pods: Vec<(String, i32, Option<String>)>,
    /// The record.
    pub stored: Record,
    /// Its version, bumped by every write.
    pub version: u64,
    /// Promotions asked for, in order.
    pub promoted: Vec<Promotion>,
    read_version: u64,
    master_ok: bool,
}

impl LocalTarget {
    /// A target over `master` and `pods`, recording `pods[0]` as the master at
    /// `epoch` (an initialized filesystem).
    pub fn new(
        dp: DataPlane,
        master: String,
        pods: Vec<(String, i32, Option<String>)>,
        epoch: u64,
    ) -> Self {
        let active = pods.first().map(|p| p.0.clone());
        Self {
            dp,
            master,
            pods,
            stored: Record {
                active,
                epoch,
                initialized: true,
                promotion: None,
            },
            version: 0,
            promoted: Vec::new(),
            read_version: 0,
            master_ok: false,
        }
    }
}

impl Target for LocalTarget {
    async fn observe(&mut self, rec: &Record) -> Observation {
        self.read_version = self.version;
        let mut pods = Vec::new();
        for (name, ord, addr) in &self.pods {
            let view = match addr {
                Some(a) => match self.dp.metalogger_status(a).await {
                    Ok(i) => PodView {
                        name: name.clone(),
                        ordinal: *ord,
                        reachable: true,
                        role: Role::parse(&i.role),
                        durable_version: i.durable_version,
                        seen_epoch: i.seen_epoch,
                        holds_metadata: i.holds_metadata,
                    },
                    Err(_) => PodView::unreachable(name, *ord),
                },
                None => PodView::unreachable(name, *ord),
            };
            pods.push(view);
        }
        let (ok, degraded) = match self.dp.master_status(&self.master).await {
            Ok(s) => (
                s.role == "master"
                    && s.epoch >= rec.epoch
                    && !s.conditions.iter().any(|c| c.starts_with("Fenced")),
                s.conditions
                    .iter()
                    .any(|c| c.starts_with("SyncMetaloggersDegraded")),
            ),
            Err(_) => (false, false),
        };
        self.master_ok = ok;
        Observation {
            pods,
            master_ok: ok,
            master_degraded: degraded,
        }
    }

    async fn record(&mut self, new: &Record) -> Result<(), RecordError> {
        if self.read_version != self.version {
            return Err(RecordError::Conflict);
        }
        self.version += 1;
        self.read_version = self.version;
        self.stored = new.clone();
        Ok(())
    }

    async fn promote(&mut self, p: &Promotion, force: bool) -> Result<(), String> {
        let addr = self
            .pods
            .iter()
            .find(|(n, _, _)| *n == p.pod)
            .and_then(|(_, _, a)| a.clone())
            .ok_or_else(|| format!("{} has no metalogger address", p.pod))?;
        self.promoted.push(p.clone());
        self.dp
            .promote(
                &addr,
                pb::PromoteRequest {
                    // As on Kubernetes: a planned switchover while the
                    // master is healthy makes it step down first.
                    switchover: p.kind == super::decide::kind::SWITCHOVER && self.master_ok,
                    force,
                    epoch: p.epoch,
                    bootstrap: false,
                },
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn route(&mut self, _pod: &str) -> Result<(), String> {
        Ok(())
    }
}
