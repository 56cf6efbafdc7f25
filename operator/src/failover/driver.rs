//! Carries out [`decide`](super::decide::decide)'s decisions, in the order
//! that makes the Kubernetes API the one place of truth:
//!
//! 1. **record** the chosen pod and the new epoch (in the AlcesCluster
//!    status, with a resourceVersion precondition: of two operators racing,
//!    one write fails and that operator decides again from what it reads);
//! 2. **promote** the pod with exactly that epoch (`Metalogger.Promote`; the
//!    metalogger refuses an epoch it has already seen);
//! 3. **confirm** (clear the pending promotion in the status) and **route**
//!    traffic (the master Service selects that pod only).
//!
//! A restart between any two steps resumes from the status: a recorded
//! promotion is made again (same epoch) or confirmed if it happened.
//!
//! The driver is generic over [`Target`], so the same code drives a real
//! Kubernetes cluster (`crate::controller`) and a local cluster of processes
//! in the end-to-end tests.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::crd::Promotion;

use super::decide::{decide, kind, Decision, MasterHealth, PodView, Policy, Record};

/// What the target saw this round.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// Every metadata pod.
    pub pods: Vec<PodView>,
    /// The recorded master answers as an unfenced master at (at least) the
    /// recorded epoch, and its pod is present and ready.
    pub master_ok: bool,
    /// Its last answer carried `SyncMetaloggersDegraded`.
    pub master_degraded: bool,
}

/// A failed write of the record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Someone else changed the record first (resourceVersion precondition):
    /// read it again and decide again.
    #[error("the status changed meanwhile (another writer): deciding again")]
    Conflict,
    /// Any other failure.
    #[error("cannot record the decision: {0}")]
    Other(String),
}

/// What the driver acts on.
pub trait Target {
    /// Observes the metadata pods and the recorded master's health.
    fn observe(&mut self, rec: &Record) -> impl Future<Output = Observation> + Send;
    /// Writes the record, failing with [`RecordError::Conflict`] if it
    /// changed since it was read.
    fn record(&mut self, new: &Record) -> impl Future<Output = Result<(), RecordError>> + Send;
    /// Asks `p.pod` to become master with epoch `p.epoch`.
    fn promote(
        &mut self,
        p: &Promotion,
        force: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Sends master traffic to `pod`.
    fn route(&mut self, pod: &str) -> impl Future<Output = Result<(), String>> + Send;
}

/// What the driver remembers between rounds (in memory only: after a restart
/// the grace starts again, which only delays a failover).
#[derive(Debug, Default, Clone)]
pub struct DriverState {
    unhealthy_since: Option<Instant>,
    degraded: bool,
    /// When the failover in progress started (first unhealthy observation).
    failover_started: Option<Instant>,
}

/// What one round did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The master is healthy.
    Healthy(String),
    /// Waiting (reason).
    Waiting(String),
    /// A promotion was made and confirmed; traffic routed.
    Promoted {
        /// The promotion.
        promotion: Promotion,
        /// Time since the master was first seen unhealthy (failovers only).
        took: Option<Duration>,
    },
    /// A promotion was recorded but the pod did not do it (retried next round).
    PromoteFailed {
        /// The promotion.
        promotion: Promotion,
        /// The error.
        error: String,
    },
    /// A needed promotion was refused.
    Refused {
        /// Condition reason.
        reason: &'static str,
        /// Message.
        message: String,
    },
}

/// One round: observe, decide, act. Returns the record as it now is and what
/// happened.
pub async fn step<T: Target>(
    t: &mut T,
    rec: &Record,
    policy: &Policy,
    st: &mut DriverState,
    now: Instant,
    now_rfc3339: &str,
) -> Result<(Record, Outcome), RecordError> {
    let obs = t.observe(rec).await;
    if obs.master_ok {
        st.unhealthy_since = None;
        st.degraded = obs.master_degraded;
    } else if st.unhealthy_since.is_none() {
        st.unhealthy_since = Some(now);
        st.failover_started.get_or_insert(now);
    }
    let health = MasterHealth {
        healthy: obs.master_ok,
        unhealthy_for: st
            .unhealthy_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
        degraded: st.degraded,
    };
    let decision = decide(rec, &obs.pods, &health, policy, now_rfc3339);
    tracing::debug!(?decision, "failover decision");
    match decision {
        Decision::Keep(pod) => {
            st.failover_started = None;
            t.route(&pod).await.map_err(RecordError::Other)?;
            Ok((rec.clone(), Outcome::Healthy(pod)))
        }
        Decision::Wait(why) => Ok((rec.clone(), Outcome::Waiting(why))),
        Decision::Refuse { reason, message } => {
            Ok((rec.clone(), Outcome::Refused { reason, message }))
        }
        Decision::Promote(p) => {
            let recorded = Record {
                active: Some(p.pod.clone()),
                epoch: p.epoch,
                initialized: rec.initialized,
                promotion: Some(p.clone()),
            };
            t.record(&recorded).await?;
            tracing::warn!(pod = %p.pod, epoch = p.epoch, kind = %p.kind, from = ?p.from, "promotion recorded; promoting");
            promote_and_confirm(t, recorded, p, policy, st).await
        }
        Decision::Resume(p) => {
            tracing::warn!(pod = %p.pod, epoch = p.epoch, "resuming a recorded promotion");
            promote_and_confirm(t, rec.clone(), p, policy, st).await
        }
        Decision::Confirm(p) => confirm(t, rec, p, st).await,
    }
}

/// A planned switchover to `pod` (rolling upgrade, a user's request): the
/// same record → promote → confirm order, with a switchover Promote (the old
/// master steps down and the pod catches up with it first).
pub async fn switchover<T: Target>(
    t: &mut T,
    rec: &Record,
    pod: &str,
    policy: &Policy,
    st: &mut DriverState,
    now_rfc3339: &str,
) -> Result<(Record, Outcome), RecordError> {
    let obs = t.observe(rec).await;
    let seen = obs.pods.iter().map(|p| p.seen_epoch).max().unwrap_or(0);
    let p = Promotion {
        pod: pod.to_string(),
        epoch: rec.epoch.max(seen) + 1,
        kind: kind::SWITCHOVER.to_string(),
        from: rec.active.clone(),
        decided_at: Some(now_rfc3339.to_string()),
    };
    let recorded = Record {
        active: Some(p.pod.clone()),
        epoch: p.epoch,
        initialized: rec.initialized,
        promotion: Some(p.clone()),
    };
    t.record(&recorded).await?;
    tracing::warn!(pod = %p.pod, epoch = p.epoch, from = ?p.from, "switchover recorded; promoting");
    promote_and_confirm(t, recorded, p, policy, st).await
}

async fn promote_and_confirm<T: Target>(
    t: &mut T,
    recorded: Record,
    p: Promotion,
    policy: &Policy,
    st: &mut DriverState,
) -> Result<(Record, Outcome), RecordError> {
    if let Err(error) = t.promote(&p, policy.force).await {
        tracing::error!(pod = %p.pod, epoch = p.epoch, %error, "promotion failed; it stays recorded and is retried");
        return Ok((
            recorded,
            Outcome::PromoteFailed {
                promotion: p,
                error,
            },
        ));
    }
    confirm(t, &recorded, p, st).await
}

async fn confirm<T: Target>(
    t: &mut T,
    rec: &Record,
    p: Promotion,
    st: &mut DriverState,
) -> Result<(Record, Outcome), RecordError> {
    let done = Record {
        active: Some(p.pod.clone()),
        epoch: p.epoch,
        initialized: true,
        promotion: None,
    };
    if &done != rec {
        t.record(&done).await?;
    }
    t.route(&p.pod).await.map_err(RecordError::Other)?;
    let took = if p.kind == kind::BOOTSTRAP {
        None
    } else {
        st.failover_started.take().map(|s| s.elapsed())
    };
    st.unhealthy_since = None;
    tracing::warn!(pod = %p.pod, epoch = p.epoch, kind = %p.kind, ?took, "promotion confirmed; master traffic routed to it");
    Ok((done, Outcome::Promoted { promotion: p, took }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::decide::Role;

    /// A fake cluster: pods that answer as scripted, a record with a
    /// version (for the precondition), and a log of the driver's calls.
    #[derive(Default)]
    struct Fake {
        pods: Vec<PodView>,
        master_ok: bool,
        stored: Record,
        version: u64,
        read_version: u64,
        conflict_once: bool,
        promote_fails: bool,
        calls: Vec<String>,
    }

    impl Target for Fake {
        async fn observe(&mut self, _rec: &Record) -> Observation {
            self.read_version = self.version;
            Observation {
                pods: self.pods.clone(),
                master_ok: self.master_ok,
                master_degraded: false,
            }
        }
        async fn record(&mut self, new: &Record) -> Result<(), RecordError> {
            if self.conflict_once {
                self.conflict_once = false;
                self.version += 1;
            }
            if self.read_version != self.version {
                self.calls.push("record-conflict".into());
                return Err(RecordError::Conflict);
            }
            self.version += 1;
            self.read_version = self.version;
            self.stored = new.clone();
            self.calls.push(format!(
                "record {:?} {} {}",
                new.active,
                new.epoch,
                new.promotion.is_some()
            ));
            Ok(())
        }
        async fn promote(&mut self, p: &Promotion, _force: bool) -> Result<(), String> {
            self.calls.push(format!("promote {} {}", p.pod, p.epoch));
            if self.promote_fails {
                return Err("unreachable".into());
            }
            for v in &mut self.pods {
                if v.name == p.pod {
                    v.role = Role::Master;
                    v.seen_epoch = p.epoch;
                }
            }
            Ok(())
        }
        async fn route(&mut self, pod: &str) -> Result<(), String> {
            self.calls.push(format!("route {pod}"));
            Ok(())
        }
    }

    fn pod(name: &str, ord: i32, reachable: bool, v: u64) -> PodView {
        PodView {
            name: name.into(),
            ordinal: ord,
            reachable,
            role: Role::Metalogger,
            durable_version: v,
            seen_epoch: 2,
            holds_metadata: reachable,
        }
    }

    fn policy() -> Policy {
        Policy {
            enabled: true,
            grace: Duration::from_secs(3),
            force: false,
            sync_metaloggers: 1,
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn failover_records_first_then_promotes_then_routes() {
        run(async {
            let mut f = Fake {
                pods: vec![
                    pod("c-0", 0, false, 0),
                    pod("c-1", 1, true, 50),
                    pod("c-2", 2, true, 40),
                ],
                ..Default::default()
            };
            let rec = Record {
                active: Some("c-0".into()),
                epoch: 2,
                initialized: true,
                promotion: None,
            };
            let mut st = DriverState::default();
            let t0 = Instant::now();
            let (r, o) = step(&mut f, &rec, &policy(), &mut st, t0, "t")
                .await
                .expect("step");
            assert!(matches!(o, Outcome::Waiting(_)), "{o:?}");
            assert!(f.calls.is_empty());
            let (r, o) = step(
                &mut f,
                &r,
                &policy(),
                &mut st,
                t0 + Duration::from_secs(4),
                "t",
            )
            .await
            .expect("step");
            assert!(matches!(o, Outcome::Promoted { .. }), "{o:?}");
            assert_eq!(
                f.calls,
                [
                    "record Some(\"c-1\") 3 true",
                    "promote c-1 3",
                    "record Some(\"c-1\") 3 false",
                    "route c-1"
                ]
            );
            assert_eq!(r.active.as_deref(), Some("c-1"));
            assert_eq!(r.epoch, 3);
            assert!(r.promotion.is_none());
        });
    }

    #[test]
    fn a_conflicting_writer_stops_the_promotion_before_promote() {
        run(async {
            let mut f = Fake {
                pods: vec![pod("c-0", 0, false, 0), pod("c-1", 1, true, 50)],
                conflict_once: true,
                ..Default::default()
            };
            let rec = Record {
                active: Some("c-0".into()),
                epoch: 2,
                initialized: true,
                promotion: None,
            };
            let mut st = DriverState::default();
            let t0 = Instant::now();
            let _ = step(&mut f, &rec, &policy(), &mut st, t0, "t").await;
            let r = step(
                &mut f,
                &rec,
                &policy(),
                &mut st,
                t0 + Duration::from_secs(4),
                "t",
            )
            .await;
            assert!(matches!(r, Err(RecordError::Conflict)), "{r:?}");
            assert_eq!(f.calls, ["record-conflict"], "no promote after a lost race");
        });
    }

    #[test]
    fn a_failed_promote_stays_recorded_and_is_resumed_with_the_same_epoch() {
        run(async {
            let mut f = Fake {
                pods: vec![pod("c-0", 0, false, 0), pod("c-1", 1, true, 50)],
                promote_fails: true,
                ..Default::default()
            };
            let rec = Record {
                active: Some("c-0".into()),
                epoch: 2,
                initialized: true,
                promotion: None,
            };
            let mut st = DriverState::default();
            let t0 = Instant::now();
            let _ = step(&mut f, &rec, &policy(), &mut st, t0, "t").await;
            let (r, o) = step(
                &mut f,
                &rec,
                &policy(),
                &mut st,
                t0 + Duration::from_secs(4),
                "t",
            )
            .await
            .expect("step");
            assert!(matches!(o, Outcome::PromoteFailed { .. }), "{o:?}");
            assert_eq!(r.promotion.as_ref().map(|p| p.epoch), Some(3));
            // The operator restarts: a fresh driver state, the record as stored.
            f.promote_fails = false;
            let mut st = DriverState::default();
            let stored = f.stored.clone();
            let (r, o) = step(
                &mut f,
                &stored,
                &policy(),
                &mut st,
                t0 + Duration::from_secs(5),
                "t",
            )
            .await
            .expect("step");
            assert!(matches!(o, Outcome::Promoted { .. }), "{o:?}");
            assert_eq!((r.active.as_deref(), r.epoch), (Some("c-1"), 3));
            assert_eq!(
                f.calls
                    .iter()
                    .filter(|c| c.starts_with("promote"))
                    .collect::<Vec<_>>(),
                ["promote c-1 3", "promote c-1 3"]
            );
        });
    }
}
