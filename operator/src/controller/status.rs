//! Conditions of the AlcesCluster status (`Available`, `Progressing`,
//! `Degraded`), computed from what a reconcile found. Pure functions.

use alces_proto::pb;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::crd::Condition;
use crate::failover::driver::Outcome;

/// Human-readable bytes (binary units).
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Capacity and used bytes as the status shows them: the previous values are
/// kept while both new ones are within 1% of the capacity of them, so disk
/// usage that moves with every write does not make every reconcile write
/// the status (the figures stay within 1% of the truth).
pub fn settle_bytes(old: (u64, u64), new: (u64, u64)) -> (u64, u64) {
    let slack = new.0.max(old.0) / 100;
    if old.0.abs_diff(new.0) <= slack && old.1.abs_diff(new.1) <= slack && old.0 > 0 {
        old
    } else {
        new
    }
}

fn cond(t: &str, status: bool, reason: &str, message: String, gen: Option<i64>) -> Condition {
    Condition {
        type_: t.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: None,
        observed_generation: gen,
    }
}

/// Keeps each condition's `lastTransitionTime` while its status does not
/// change, and stamps `now` on those that changed (so an unchanged status is
/// written never, a changed one once).
pub fn carry_times(old: &[Condition], mut new: Vec<Condition>, now: &str) -> Vec<Condition> {
    for c in &mut new {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.to_string()),
        };
    }
    new
}

/// Conditions of a spec that cannot be applied.
pub fn invalid(old: &[Condition], reason: &str, msg: &str, gen: Option<i64>) -> Vec<Condition> {
    let available = old
        .iter()
        .find(|c| c.type_ == "Available")
        .cloned()
        .unwrap_or_else(|| {
            cond(
                "Available",
                false,
                "NotCreated",
                "nothing was created yet".into(),
                gen,
            )
        });
    vec![
        available,
        cond(
            "Progressing",
            false,
            reason,
            "the spec is not applied until it is fixed".into(),
            gen,
        ),
        cond("Degraded", true, reason, msg.to_string(), gen),
    ]
}

/// Why metadata pods do not run, from their container states (an image that
/// cannot be pulled or a crash loop), if any.
pub fn pod_problems(pods: &[Pod]) -> Option<String> {
    let mut out = Vec::new();
    for p in pods {
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for cs in statuses {
            if let Some(w) = cs.state.and_then(|s| s.waiting) {
                let r = w.reason.unwrap_or_default();
                if matches!(
                    r.as_str(),
                    "ImagePullBackOff"
                        | "ErrImagePull"
                        | "CrashLoopBackOff"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                ) {
                    out.push(format!(
                        "{}: {r} ({})",
                        p.name_any(),
                        w.message.unwrap_or_default()
                    ));
                }
            }
        }
    }
    (!out.is_empty()).then(|| out.join("; "))
}

/// What the conditions are computed from.
pub struct Inputs<'a> {
    /// The previous conditions.
    pub old: &'a [Condition],
    /// The spec generation.
    pub generation: Option<i64>,
    /// The failover driver's round.
    pub outcome: &'a Outcome,
    /// The master's status (when healthy).
    pub master: Option<&'a pb::ClusterStatus>,
    /// Scale-downs that cannot go on.
    pub blocked: &'a [String],
    /// A rolling upgrade step in progress.
    pub upgrading: Option<&'a str>,
    /// A scale-down drains.
    pub draining: bool,
    /// Other things to report (e.g. no PodDisruptionBudget).
    pub notes: &'a [String],
    /// Pods that cannot run.
    pub pods_problem: Option<&'a str>,
    /// Metaloggers wanted.
    pub metaloggers: i32,
}

/// The three conditions.
pub fn conditions(i: &Inputs) -> Vec<Condition> {
    let gen = i.generation;
    let available = match (i.outcome, i.master) {
        (Outcome::Healthy(p), Some(_)) => cond(
            "Available",
            true,
            "MasterServing",
            format!("master {p} serves"),
            gen,
        ),
        (Outcome::Promoted { promotion, .. }, _) => cond(
            "Available",
            true,
            "MasterServing",
            format!("master {} serves (just promoted)", promotion.pod),
            gen,
        ),
        (Outcome::Waiting(w), _) => cond("Available", false, "NoMaster", w.clone(), gen),
        (Outcome::Refused { reason, message }, _) => {
            cond("Available", false, reason, message.clone(), gen)
        }
        (Outcome::PromoteFailed { error, .. }, _) => {
            cond("Available", false, "FailoverInProgress", error.clone(), gen)
        }
        (Outcome::Healthy(p), None) => cond(
            "Available",
            false,
            "NoMaster",
            format!("master {p} does not answer"),
            gen,
        ),
    };
    let progressing = if let Some(u) = i.upgrading {
        cond("Progressing", true, "RollingUpgrade", u.to_string(), gen)
    } else if matches!(
        i.outcome,
        Outcome::Waiting(_) | Outcome::PromoteFailed { .. }
    ) {
        cond(
            "Progressing",
            true,
            "FailoverInProgress",
            "choosing or promoting a master".into(),
            gen,
        )
    } else if i.draining {
        cond(
            "Progressing",
            true,
            "Draining",
            "chunkservers are drained before they are removed".into(),
            gen,
        )
    } else {
        cond(
            "Progressing",
            false,
            "Stable",
            "nothing in progress".into(),
            gen,
        )
    };
    let mut degraded: Option<(&str, String)> = None;
    if let Outcome::Refused { reason, message } = i.outcome {
        degraded = Some((reason, message.clone()));
    } else if let Some(p) = i.pods_problem {
        degraded = Some(("PodsCannotRun", p.to_string()));
    } else if let Some(b) = i.blocked.first() {
        degraded = Some(("ScaleDownBlocked", b.clone()));
    } else if let Some(m) = i.master {
        let k = m.chunk_counts.unwrap_or_default();
        if k.missing > 0 {
            degraded = Some((
                "ChunksMissing",
                format!("{} chunks have no valid copy", k.missing),
            ));
        } else if k.under_goal > 0 {
            degraded = Some((
                "ChunksUnderGoal",
                format!(
                    "{} chunks have fewer copies than their goal (re-replication runs)",
                    k.under_goal
                ),
            ));
        } else if let Some(c) = m.conditions.first() {
            // The master's own conditions, e.g. "SyncMetaloggersDegraded: ...".
            degraded = Some(("MasterCondition", c.clone()));
        } else if i.metaloggers > 0 && m.metaloggers.iter().filter(|x| x.connected).count() == 0 {
            degraded = Some((
                "NoMetalogger",
                "no metalogger follows the master: a failover now would find nothing to promote"
                    .into(),
            ));
        }
    }
    if degraded.is_none() {
        if let Some(n) = i.notes.first() {
            degraded = Some(("NoDisruptionBudget", n.clone()));
        }
    }
    let degraded = match degraded {
        Some((r, m)) => cond("Degraded", true, r, m, gen),
        None => cond(
            "Degraded",
            false,
            "AsExpected",
            "all as expected".into(),
            gen,
        ),
    };
    let _ = i.old;
    vec![available, progressing, degraded]
}

#[cfg(test)]
mod tests {
    use super::settle_bytes;

    #[test]
    fn byte_counts_move_in_the_status_only_past_one_percent_of_the_capacity() {
        let gib = 1u64 << 30;
        let old = (100 * gib, 40 * gib);
        // Within 1%: kept (no status write).
        assert_eq!(settle_bytes(old, (100 * gib, 40 * gib + gib / 2)), old);
        // Past it: the new figures.
        let moved = (100 * gib, 42 * gib);
        assert_eq!(settle_bytes(old, moved), moved);
        // A chunkserver joined: the capacity moved.
        let grown = (150 * gib, 40 * gib);
        assert_eq!(settle_bytes(old, grown), grown);
        // Nothing known before: the new figures.
        assert_eq!(settle_bytes((0, 0), (1, 1)), (1, 1));
    }
}
