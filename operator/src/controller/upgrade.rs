//! Rolling upgrade (a new image or new settings): the StatefulSets use the
//! `OnDelete` strategy, and the operator replaces pods itself, one at a
//! time, in this order:
//! 1. chunkservers, each only while every chunkserver is ready and no chunk
//!    is missing or under its goal (so the one replaced had its chunks
//!    elsewhere, and is back before the next goes);
//! 2. metaloggers, each only while every metadata pod is ready and the
//!    master is healthy;
//! 3. the master last, by switchover to an up-to-date metalogger (one pause
//!    of about a switchover for clients, no error), after which the old
//!    master — now a metalogger — is replaced like the others.
//!
//! A change of `spec.tls` within TLS (another Secret, mutual TLS on or
//! off, a server name) is such a roll: old and new pods still trust each
//! other as long as the CA bundles overlap. Turning TLS on or off is not:
//! a plaintext peer and a TLS peer cannot talk (no listener serves both),
//! so a roll would stop at its first pod, which could reach nobody. Those
//! pods are replaced together instead (event `TLSSwitch`): the cluster
//! pauses while its pods restart, the master's pod comes back as a
//! metalogger with all it acknowledged, and the failover driver promotes
//! the most advanced metadata pod, as after any restart of every pod.

use std::collections::BTreeMap;

use alces_proto::pb;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;

use crate::builders::{self, CHUNKSERVER, METADATA, POOL_LABEL};
use crate::crd::AlcesCluster;
use crate::failover::decide::{Policy, Record};
use crate::failover::driver::{self, DriverState, RecordError};

use super::target::{pod_ready, KubeTarget};
use super::{Context, Error};

/// What this round of the upgrade did.
#[derive(Debug, Default)]
pub struct Step {
    /// Progress to report (None when nothing is outdated).
    pub progress: Option<String>,
    /// An event to publish (reason, note).
    pub event: Option<(&'static str, String)>,
}

fn revision(p: &Pod) -> Option<&str> {
    p.labels()
        .get("controller-revision-hash")
        .map(String::as_str)
}

fn update_revision(s: &StatefulSet) -> Option<&str> {
    s.status.as_ref()?.update_revision.as_deref()
}

/// False while the StatefulSet controller has not yet seen the latest change
/// of `s`: its `updateRevision` is then still the previous template's.
fn observed(s: &StatefulSet) -> bool {
    match (
        s.metadata.generation,
        s.status.as_ref().and_then(|st| st.observed_generation),
    ) {
        (Some(g), Some(o)) => o >= g,
        _ => true,
    }
}

/// True when pod `p` runs with TLS (its template's
/// [`builders::TLS_ANNOTATION`]).
fn runs_tls(p: &Pod) -> bool {
    p.annotations()
        .get(builders::TLS_ANNOTATION)
        .is_some_and(|v| v == "on")
}

/// Outdated pods of `sts` among `pods`, highest ordinal first.
fn outdated<'a>(sts: &StatefulSet, pods: &[&'a Pod]) -> Vec<&'a Pod> {
    let Some(rev) = update_revision(sts) else {
        return Vec::new();
    };
    let mut v: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| revision(p).is_some_and(|r| r != rev))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(builders::ordinal(&p.name_any()).unwrap_or(0)));
    v
}

/// What a round of the upgrade looks at: the cluster's StatefulSets as they
/// are, and the master's view of the data plane.
pub struct Observed<'a> {
    /// Each pool's StatefulSet (`None`: not created yet).
    pub pools: &'a [Option<StatefulSet>],
    /// The metadata StatefulSet.
    pub metadata: Option<&'a StatefulSet>,
    /// The master's status, when it answered.
    pub master: Option<&'a pb::ClusterStatus>,
}

/// One round of the rolling upgrade.
pub async fn step(
    ctx: &Context,
    c: &AlcesCluster,
    target: &mut KubeTarget,
    seen: Observed<'_>,
    rec: &Record,
    policy: &Policy,
    dstate: &mut DriverState,
) -> Result<Step, Error> {
    let Observed {
        pools,
        metadata,
        master: ms,
    } = seen;
    // Right after a template change a StatefulSet whose controller has not
    // caught up still names the old revision: its pods would look up to date
    // and the round would go on to the next role (seen on a real cluster: a
    // metalogger replaced beside the first chunkserver). Wait for it; its
    // status update triggers the next round.
    if pools.iter().flatten().chain(metadata).any(|s| !observed(s)) {
        return Ok(Step::default());
    }
    let ns = c.namespace().unwrap_or_default();
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let sel = format!(
        "app.kubernetes.io/name=alces,app.kubernetes.io/instance={}",
        c.name_any()
    );
    let all = pod_api
        .list(&ListParams::default().labels(&sel))
        .await?
        .items;
    // TLS turned on or off: every pod on the other side goes at once.
    let want_tls = c.spec.tls.is_some();
    let switching: Vec<&Pod> = all
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && runs_tls(p) != want_tls)
        .collect();
    if !switching.is_empty() {
        for p in &switching {
            ctx.metrics.api_writes.inc();
            match pod_api
                .delete(&p.name_any(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (from, to) = if want_tls {
            ("plaintext", "TLS")
        } else {
            ("TLS", "plaintext")
        };
        let names: Vec<String> = switching.iter().map(|p| p.name_any()).collect();
        return Ok(Step {
            progress: Some(format!(
                "switching from {from} to {to}: {} pod(s) replaced together (plaintext and TLS pods cannot talk to each other)",
                names.len()
            )),
            event: Some((
                "TLSSwitch",
                format!(
                    "switching from {from} to {to}: replacing {} together; the cluster pauses until they are back and the master is promoted again",
                    names.join(", ")
                ),
            )),
        });
    }
    let by_component = |comp: &str| -> Vec<&Pod> {
        all.iter()
            .filter(|p| {
                p.labels()
                    .get("app.kubernetes.io/component")
                    .map(String::as_str)
                    == Some(comp)
            })
            .collect()
    };
    let cs_pods = by_component(CHUNKSERVER);
    let mut cs_outdated = Vec::new();
    for s in pools.iter().flatten() {
        let pool = s.labels().get(POOL_LABEL).cloned().unwrap_or_default();
        let mine: Vec<&Pod> = cs_pods
            .iter()
            .copied()
            .filter(|p| p.labels().get(POOL_LABEL) == Some(&pool))
            .collect();
        cs_outdated.extend(outdated(s, &mine));
    }
    if !cs_outdated.is_empty() {
        let all_ready = cs_pods.iter().all(|p| pod_ready(p));
        let healthy = ms.is_some_and(|m| {
            m.chunk_counts
                .is_some_and(|k| k.missing == 0 && k.under_goal == 0)
        });
        let progress = format!(
            "rolling upgrade: {} chunkserver(s) to replace, one at a time",
            cs_outdated.len()
        );
        if !(all_ready && healthy) {
            return Ok(Step {
                progress: Some(format!(
                    "{progress}; waiting until every chunkserver is ready and every chunk is at its goal"
                )),
                event: None,
            });
        }
        let p = cs_outdated[0];
        ctx.metrics.api_writes.inc();
        pod_api
            .delete(&p.name_any(), &DeleteParams::default())
            .await?;
        return Ok(Step {
            progress: Some(progress),
            event: Some((
                "UpgradingChunkserver",
                format!("replacing {} with the new template", p.name_any()),
            )),
        });
    }
    let Some(md) = metadata else {
        return Ok(Step::default());
    };
    let md_pods = by_component(METADATA);
    let md_outdated = outdated(md, &md_pods);
    if md_outdated.is_empty() {
        return Ok(Step::default());
    }
    let active = rec.active.as_deref().unwrap_or_default();
    let all_ready = md_pods.iter().all(|p| pod_ready(p));
    let progress = format!(
        "rolling upgrade: {} metadata pod(s) to replace (the master last, by switchover)",
        md_outdated.len()
    );
    if !(all_ready && target.master_ok) || rec.promotion.is_some() {
        return Ok(Step {
            progress: Some(format!(
                "{progress}; waiting until every metadata pod is ready and the master is healthy"
            )),
            event: None,
        });
    }
    if let Some(p) = md_outdated.iter().find(|p| p.name_any() != active) {
        ctx.metrics.api_writes.inc();
        pod_api
            .delete(&p.name_any(), &DeleteParams::default())
            .await?;
        return Ok(Step {
            progress: Some(progress),
            event: Some((
                "UpgradingMetalogger",
                format!("replacing {} with the new template", p.name_any()),
            )),
        });
    }
    // Only the master is outdated: hand over to an up-to-date metalogger.
    let rev: BTreeMap<String, bool> = md_pods
        .iter()
        .map(|p| {
            (
                p.name_any(),
                md_outdated.iter().any(|o| o.name_any() == p.name_any()),
            )
        })
        .collect();
    let Some(to) = md_pods
        .iter()
        .filter(|p| p.name_any() != active && !rev.get(&p.name_any()).copied().unwrap_or(true))
        .min_by_key(|p| builders::ordinal(&p.name_any()).unwrap_or(i32::MAX))
    else {
        return Ok(Step {
            progress: Some(format!("{progress}; no up-to-date metalogger to hand the master over to (metaloggers.replicas is 0?)")),
            event: None,
        });
    };
    let to = to.name_any();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    match driver::switchover(target, rec, &to, policy, dstate, &now).await {
        Ok((_, o)) => Ok(Step {
            progress: Some(progress),
            event: Some((
                "Switchover",
                format!("master handed over from {active} to {to} for the upgrade: {o:?}"),
            )),
        }),
        Err(RecordError::Conflict) => Ok(Step {
            progress: Some(progress),
            event: None,
        }),
        Err(RecordError::Other(e)) => Err(Error::Other(e)),
    }
}
