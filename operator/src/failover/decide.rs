//! Which metadata pod should be the master: a pure function of what was
//! observed and what the status records, so every case is a line of a table
//! test.
//!
//! Invariants it keeps:
//! - an epoch is only ever proposed higher than every epoch recorded or seen
//!   by any reachable pod, so a promotion can never reuse one;
//! - a promotion that could lose acknowledged mutations is refused (unless
//!   the spec forces it): with `sync_metaloggers = K >= 1`, every acknowledged
//!   mutation is durable on K metaloggers (or on the master, whose own data
//!   holds everything it acknowledged), so the most advanced reachable pod
//!   holds them all when fewer than K metaloggers are unreachable, or when the
//!   old master itself is back (as a metalogger with its own data) — and not
//!   when the master was seen degraded (acknowledging without them);
//! - a filesystem is only formatted when the status says it never was AND
//!   every metadata pod answers and holds no metadata.

use std::time::Duration;

use crate::crd::Promotion;

/// Role a metadata pod reports (Metalogger.Status `role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Following (or trying to follow) the master.
    Metalogger,
    /// Being promoted.
    Promoting,
    /// Serving as master.
    Master,
}

impl Role {
    /// Parses the wire spelling; unknown roles are treated as metaloggers.
    pub fn parse(s: &str) -> Self {
        match s {
            "master" => Role::Master,
            "promoting" => Role::Promoting,
            _ => Role::Metalogger,
        }
    }
}

/// What one metadata pod reported (or that it did not answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its StatefulSet ordinal.
    pub ordinal: i32,
    /// Answered Metalogger.Status.
    pub reachable: bool,
    /// Reported role.
    pub role: Role,
    /// Highest version it holds durably.
    pub durable_version: u64,
    /// Highest epoch it has seen.
    pub seen_epoch: u64,
    /// Holds metadata at all.
    pub holds_metadata: bool,
}

impl PodView {
    /// A pod that did not answer.
    pub fn unreachable(name: &str, ordinal: i32) -> Self {
        Self {
            name: name.to_string(),
            ordinal,
            reachable: false,
            role: Role::Metalogger,
            durable_version: 0,
            seen_epoch: 0,
            holds_metadata: false,
        }
    }
}

/// The active master's health as the driver measured it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasterHealth {
    /// It answers Admin.Status as an unfenced master at least at the recorded
    /// epoch, and its pod is not gone or unready.
    pub healthy: bool,
    /// How long it has been continuously unhealthy (zero when healthy).
    pub unhealthy_for: Duration,
    /// The last status it gave said it acknowledged without its sync
    /// metaloggers (`SyncMetaloggersDegraded`).
    pub degraded: bool,
}

/// The recorded truth (the AlcesCluster status).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The pod recorded as master.
    pub active: Option<String>,
    /// The recorded epoch.
    pub epoch: u64,
    /// The filesystem was created.
    pub initialized: bool,
    /// A promotion recorded but not confirmed.
    pub promotion: Option<Promotion>,
}

/// Failover settings from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Failover allowed.
    pub enabled: bool,
    /// How long the master must be unhealthy first.
    pub grace: Duration,
    /// Promote even if acknowledged mutations may be lost.
    pub force: bool,
    /// `sync_metaloggers` in effect.
    pub sync_metaloggers: u32,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The recorded master is healthy: keep traffic on it.
    Keep(String),
    /// Nothing to do yet; the reason says what is awaited.
    Wait(String),
    /// Record this promotion, then make it.
    Promote(Promotion),
    /// The recorded promotion was not confirmed: ask its pod again.
    Resume(Promotion),
    /// The recorded promotion happened: clear it and route traffic.
    Confirm(Promotion),
    /// A promotion is needed but would be unsafe or is not allowed.
    Refuse {
        /// Condition reason (`NoMetalogger`, `FailoverUnsafe`, `FailoverDisabled`).
        reason: &'static str,
        /// What is wrong and what the user can do.
        message: String,
    },
}

/// Kinds of promotion recorded in [`Promotion::kind`].
pub mod kind {
    /// A new filesystem.
    pub const BOOTSTRAP: &str = "Bootstrap";
    /// The master failed.
    pub const FAILOVER: &str = "Failover";
    /// A planned handover (upgrade, request).
    pub const SWITCHOVER: &str = "Switchover";
    /// The status was lost but pods hold metadata: the most advanced one is
    /// made master again.
    pub const RECOVER: &str = "Recover";
}

fn highest_epoch(rec: &Record, pods: &[PodView]) -> u64 {
    let seen = pods
        .iter()
        .filter(|p| p.reachable)
        .map(|p| p.seen_epoch)
        .max()
        .unwrap_or(0);
    let recorded = rec.promotion.as_ref().map_or(0, |p| p.epoch);
    rec.epoch.max(seen).max(recorded)
}

/// The most advanced reachable pod holding metadata (ties: the old master,
/// then the lowest ordinal).
fn best<'a>(pods: &'a [PodView], old: Option<&str>) -> Option<&'a PodView> {
    pods.iter()
        .filter(|p| p.reachable && p.holds_metadata && p.role == Role::Metalogger)
        .max_by(|a, b| {
            (a.durable_version, Some(a.name.as_str()) == old, -a.ordinal).cmp(&(
                b.durable_version,
                Some(b.name.as_str()) == old,
                -b.ordinal,
            ))
        })
}

/// Decides what to do about the master. `now_rfc3339` stamps new promotions.
pub fn decide(
    rec: &Record,
    pods: &[PodView],
    health: &MasterHealth,
    policy: &Policy,
    now_rfc3339: &str,
) -> Decision {
    if let Some(p) = &rec.promotion {
        let target = pods.iter().find(|v| v.name == p.pod);
        match target {
            Some(t) if t.reachable && t.role == Role::Master && t.seen_epoch >= p.epoch => {
                return Decision::Confirm(p.clone());
            }
            Some(t) if t.reachable && t.seen_epoch < p.epoch && t.role != Role::Master => {
                return Decision::Resume(p.clone());
            }
            Some(t) if t.reachable && t.role == Role::Metalogger && t.seen_epoch >= p.epoch => {
                // The pod moved past the recorded epoch without becoming
                // master (another promotion): the same choice, a fresh epoch.
                return Decision::Promote(Promotion {
                    epoch: highest_epoch(rec, pods) + 1,
                    decided_at: Some(now_rfc3339.to_string()),
                    ..p.clone()
                });
            }
            Some(t) if t.reachable && t.role == Role::Promoting => {
                return Decision::Wait(format!("{} is being promoted", p.pod));
            }
            _ => {
                // Unreachable, gone, or it moved past this epoch without
                // becoming master: give it the grace, then decide anew with
                // a higher epoch.
                if p.kind == kind::BOOTSTRAP || health.unhealthy_for < policy.grace {
                    return Decision::Wait(format!(
                        "promotion of {} to epoch {} not confirmed yet",
                        p.pod, p.epoch
                    ));
                }
            }
        }
    }
    let Some(active) = rec.active.as_deref().filter(|_| rec.initialized) else {
        return first_master(rec, pods, now_rfc3339);
    };
    if health.healthy && rec.promotion.is_none() {
        return Decision::Keep(active.to_string());
    }
    if !policy.enabled {
        return Decision::Refuse {
            reason: "FailoverDisabled",
            message: format!(
                "the master {active} is unhealthy and spec.failover.enabled is false: promote a metalogger by hand (alces promote) or enable failover"
            ),
        };
    }
    if health.unhealthy_for < policy.grace {
        return Decision::Wait(format!(
            "master {active} unhealthy for {:?} (grace {:?})",
            health.unhealthy_for, policy.grace
        ));
    }
    let Some(cand) = best(pods, Some(active)) else {
        return Decision::Refuse {
            reason: "NoMetalogger",
            message: format!(
                "the master {active} is down and no metadata pod holding metadata answers: nothing can be promoted until one is back"
            ),
        };
    };
    let old_back = pods
        .iter()
        .any(|p| p.name == active && p.reachable && p.holds_metadata);
    let unreachable = pods
        .iter()
        .filter(|p| p.name != active && !p.reachable)
        .count() as u32;
    let k = policy.sync_metaloggers;
    let safe = old_back || (k >= 1 && !health.degraded && unreachable < k);
    if !safe && !policy.force && k >= 1 {
        let why = if health.degraded {
            "the master was acknowledging without its sync metaloggers (SyncMetaloggersDegraded)"
                .to_string()
        } else {
            format!("{unreachable} metalogger(s) do not answer and sync_metaloggers is {k}, so the mutations acknowledged last may be only on them")
        };
        return Decision::Refuse {
            reason: "FailoverUnsafe",
            message: format!(
                "not promoting {} (version {}): {why}. Bring those pods or the master {active} back, or set spec.failover.force to accept losing them",
                cand.name, cand.durable_version
            ),
        };
    }
    Decision::Promote(Promotion {
        pod: cand.name.clone(),
        epoch: highest_epoch(rec, pods) + 1,
        kind: kind::FAILOVER.to_string(),
        from: Some(active.to_string()),
        decided_at: Some(now_rfc3339.to_string()),
    })
}

/// No master recorded: create the filesystem, or (status lost, data kept)
/// make the most advanced pod master again.
fn first_master(rec: &Record, pods: &[PodView], now: &str) -> Decision {
    if pods.is_empty() {
        return Decision::Wait("no metadata pod exists yet".into());
    }
    if let Some(p) = pods.iter().find(|p| !p.reachable) {
        return Decision::Wait(format!(
            "waiting for every metadata pod to answer before choosing the first master ({} does not)",
            p.name
        ));
    }
    if let Some(m) = pods.iter().find(|p| p.role == Role::Master) {
        // A master already serves (e.g. the status was lost): adopt it by
        // recording it, with its epoch.
        return Decision::Confirm(Promotion {
            pod: m.name.clone(),
            epoch: m.seen_epoch.max(rec.epoch),
            kind: kind::RECOVER.to_string(),
            from: None,
            decided_at: Some(now.to_string()),
        });
    }
    let epoch = highest_epoch(rec, pods) + 1;
    if rec.initialized || pods.iter().any(|p| p.holds_metadata || p.seen_epoch > 0) {
        return match best(pods, None) {
            Some(b) => Decision::Promote(Promotion {
                pod: b.name.clone(),
                epoch,
                kind: kind::RECOVER.to_string(),
                from: None,
                decided_at: Some(now.to_string()),
            }),
            None => Decision::Refuse {
                reason: "NoMetalogger",
                message: "the filesystem exists (status or epochs say so) but no metadata pod holds its metadata: restore a metadata disk".into(),
            },
        };
    }
    let first = pods
        .iter()
        .min_by_key(|p| p.ordinal)
        .expect("pods is not empty");
    Decision::Promote(Promotion {
        pod: first.name.clone(),
        epoch,
        kind: kind::BOOTSTRAP.to_string(),
        from: None,
        decided_at: Some(now.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn ml(name: &str, ord: i32, v: u64, epoch: u64) -> PodView {
        PodView {
            name: name.into(),
            ordinal: ord,
            reachable: true,
            role: Role::Metalogger,
            durable_version: v,
            seen_epoch: epoch,
            holds_metadata: true,
        }
    }
    fn fresh(name: &str, ord: i32) -> PodView {
        PodView {
            holds_metadata: false,
            ..ml(name, ord, 0, 0)
        }
    }
    fn master(name: &str, ord: i32, epoch: u64) -> PodView {
        PodView {
            role: Role::Master,
            ..ml(name, ord, 100, epoch)
        }
    }
    fn down(name: &str, ord: i32) -> PodView {
        PodView::unreachable(name, ord)
    }
    fn rec(active: &str, epoch: u64) -> Record {
        Record {
            active: Some(active.into()),
            epoch,
            initialized: true,
            promotion: None,
        }
    }
    fn policy(k: u32) -> Policy {
        Policy {
            enabled: true,
            grace: Duration::from_secs(5),
            force: false,
            sync_metaloggers: k,
        }
    }
    fn dead(secs: u64) -> MasterHealth {
        MasterHealth {
            healthy: false,
            unhealthy_for: Duration::from_secs(secs),
            degraded: false,
        }
    }
    fn ok() -> MasterHealth {
        MasterHealth {
            healthy: true,
            ..Default::default()
        }
    }
    fn promoted(d: &Decision) -> (&str, u64, &str) {
        match d {
            Decision::Promote(p) => (p.pod.as_str(), p.epoch, p.kind.as_str()),
            other => panic!("expected a promotion, got {other:?}"),
        }
    }
    fn refused(d: &Decision) -> &'static str {
        match d {
            Decision::Refuse { reason, .. } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn healthy_master_is_kept() {
        let pods = [master("c-0", 0, 3), ml("c-1", 1, 100, 3)];
        let d = decide(&rec("c-0", 3), &pods, &ok(), &policy(1), NOW);
        assert_eq!(d, Decision::Keep("c-0".into()));
    }

    #[test]
    fn dead_master_within_grace_waits() {
        let pods = [down("c-0", 0), ml("c-1", 1, 100, 3)];
        let d = decide(&rec("c-0", 3), &pods, &dead(2), &policy(1), NOW);
        assert!(matches!(d, Decision::Wait(_)), "{d:?}");
    }

    #[test]
    fn dead_master_after_grace_promotes_the_most_advanced_metalogger() {
        let pods = [down("c-0", 0), ml("c-1", 1, 90, 3), ml("c-2", 2, 100, 3)];
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(1), NOW);
        assert_eq!(promoted(&d), ("c-2", 4, kind::FAILOVER));
    }

    #[test]
    fn the_new_epoch_is_above_every_epoch_seen_or_recorded() {
        // A pod saw epoch 7 (an earlier promotion the status does not show).
        let pods = [down("c-0", 0), ml("c-1", 1, 100, 7), ml("c-2", 2, 100, 3)];
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(1), NOW);
        assert_eq!(promoted(&d).1, 8);
    }

    #[test]
    fn lagging_candidate_is_refused_when_the_metaloggers_that_may_hold_more_are_unreachable() {
        // K = 1, two metaloggers: the one that answers may be behind the one
        // that does not (it may hold the acknowledged tail alone).
        let pods = [down("c-0", 0), ml("c-1", 1, 90, 3), down("c-2", 2)];
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(1), NOW);
        assert_eq!(refused(&d), "FailoverUnsafe");
        // K = 2: one unreachable of two is fewer than K, so a holder of every
        // acknowledged mutation answers.
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(2), NOW);
        assert_eq!(promoted(&d).0, "c-1");
    }

    #[test]
    fn forced_promotion_accepts_the_risk() {
        let pods = [down("c-0", 0), ml("c-1", 1, 90, 3), down("c-2", 2)];
        let mut p = policy(1);
        p.force = true;
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &p, NOW);
        assert_eq!(promoted(&d), ("c-1", 4, kind::FAILOVER));
    }

    #[test]
    fn degraded_master_makes_failover_unsafe() {
        let pods = [down("c-0", 0), ml("c-1", 1, 100, 3), ml("c-2", 2, 100, 3)];
        let mut h = dead(6);
        h.degraded = true;
        let d = decide(&rec("c-0", 3), &pods, &h, &policy(1), NOW);
        assert_eq!(refused(&d), "FailoverUnsafe");
    }

    #[test]
    fn restarted_master_pod_with_its_own_data_is_preferred_and_safe() {
        // The master pod came back as a metalogger with its data; a metalogger
        // is unreachable and the master was degraded: still safe, because the
        // old master holds everything it acknowledged.
        let pods = [ml("c-0", 0, 120, 3), ml("c-1", 1, 100, 3), down("c-2", 2)];
        let mut h = dead(6);
        h.degraded = true;
        let d = decide(&rec("c-0", 3), &pods, &h, &policy(1), NOW);
        assert_eq!(promoted(&d), ("c-0", 4, kind::FAILOVER));
        // Ties go to the old master.
        let pods = [ml("c-0", 0, 100, 3), ml("c-1", 1, 100, 3)];
        assert_eq!(
            promoted(&decide(&rec("c-0", 3), &pods, &dead(6), &policy(1), NOW)).0,
            "c-0"
        );
    }

    #[test]
    fn sync_zero_promotes_the_most_advanced_anyway() {
        let pods = [down("c-0", 0), ml("c-1", 1, 90, 3), down("c-2", 2)];
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(0), NOW);
        assert_eq!(promoted(&d).0, "c-1");
    }

    #[test]
    fn no_metalogger_is_reported() {
        let pods = [down("c-0", 0), down("c-1", 1), fresh("c-2", 2)];
        let d = decide(&rec("c-0", 3), &pods, &dead(6), &policy(1), NOW);
        assert_eq!(refused(&d), "NoMetalogger");
    }

    #[test]
    fn failover_disabled_is_reported() {
        let pods = [down("c-0", 0), ml("c-1", 1, 100, 3)];
        let mut p = policy(1);
        p.enabled = false;
        let d = decide(&rec("c-0", 3), &pods, &dead(60), &p, NOW);
        assert_eq!(refused(&d), "FailoverDisabled");
    }

    #[test]
    fn bootstrap_formats_only_when_every_pod_is_fresh() {
        let empty = Record::default();
        let pods = [fresh("c-0", 0), fresh("c-1", 1), fresh("c-2", 2)];
        let d = decide(&empty, &pods, &dead(0), &policy(1), NOW);
        assert_eq!(promoted(&d), ("c-0", 1, kind::BOOTSTRAP));
        // One pod not answering: wait, never format without seeing them all.
        let pods = [fresh("c-0", 0), down("c-1", 1)];
        assert!(matches!(
            decide(&empty, &pods, &dead(0), &policy(1), NOW),
            Decision::Wait(_)
        ));
        // A pod holds metadata (status lost, disks kept): recover it, no format.
        let pods = [fresh("c-0", 0), ml("c-1", 1, 55, 4)];
        assert_eq!(
            promoted(&decide(&empty, &pods, &dead(0), &policy(1), NOW)),
            ("c-1", 5, kind::RECOVER)
        );
        // A master already serves: adopted as it is.
        let pods = [master("c-0", 0, 6), ml("c-1", 1, 55, 6)];
        match decide(&empty, &pods, &dead(0), &policy(1), NOW) {
            Decision::Confirm(p) => assert_eq!((p.pod.as_str(), p.epoch), ("c-0", 6)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn initialized_cluster_without_metadata_is_never_formatted() {
        let r = Record {
            initialized: true,
            epoch: 2,
            ..Default::default()
        };
        let pods = [fresh("c-0", 0), fresh("c-1", 1)];
        assert_eq!(
            refused(&decide(&r, &pods, &dead(0), &policy(1), NOW)),
            "NoMetalogger"
        );
    }

    fn pending(pod: &str, epoch: u64, k: &str) -> Record {
        Record {
            active: Some(pod.into()),
            epoch,
            initialized: k != kind::BOOTSTRAP,
            promotion: Some(Promotion {
                pod: pod.into(),
                epoch,
                kind: k.into(),
                from: Some("c-0".into()),
                decided_at: Some(NOW.into()),
            }),
        }
    }

    #[test]
    fn operator_restarted_after_recording_resumes_the_promotion() {
        // Recorded, Promote never reached the pod.
        let r = pending("c-1", 4, kind::FAILOVER);
        let pods = [down("c-0", 0), ml("c-1", 1, 100, 3)];
        match decide(&r, &pods, &dead(1), &policy(1), NOW) {
            Decision::Resume(p) => assert_eq!((p.pod.as_str(), p.epoch), ("c-1", 4)),
            other => panic!("{other:?}"),
        }
        // Recorded and done, Service not moved yet: confirm.
        let pods = [down("c-0", 0), master("c-1", 1, 4)];
        assert!(matches!(
            decide(&r, &pods, &dead(1), &policy(1), NOW),
            Decision::Confirm(_)
        ));
        // Bootstrap recorded, the pod still fresh: resume it.
        let r = pending("c-0", 1, kind::BOOTSTRAP);
        let pods = [fresh("c-0", 0), fresh("c-1", 1)];
        assert!(matches!(
            decide(&r, &pods, &dead(0), &policy(1), NOW),
            Decision::Resume(_)
        ));
    }

    #[test]
    fn recorded_target_lost_is_replaced_with_a_higher_epoch_after_the_grace() {
        let r = pending("c-1", 4, kind::FAILOVER);
        let pods = [down("c-0", 0), down("c-1", 1), ml("c-2", 2, 100, 3)];
        assert!(matches!(
            decide(&r, &pods, &dead(2), &policy(2), NOW),
            Decision::Wait(_)
        ));
        let d = decide(&r, &pods, &dead(6), &policy(2), NOW);
        assert_eq!(promoted(&d), ("c-2", 5, kind::FAILOVER));
    }
}
