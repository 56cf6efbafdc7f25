//! What the master does for its metaloggers (the Replication service): the
//! snapshot a new or lagging metalogger starts from, the changelog batches it
//! follows, its durable-version reports, the planned step-down to it, and
//! `Identify` (who serves at an address).

use std::time::Duration;

use alces_proto::pb::{self, ChangelogRecord};
use tonic::Status;

use crate::core::{now_ns, Core};
use crate::disk::snapshot;

/// Longest a step-down waits for the new master's metalogger to catch up.
pub const STEP_DOWN_WAIT: Duration = Duration::from_secs(10);

/// Records per changelog batch streamed to a metalogger (a metalogger within
/// one batch of the master counts as caught up).
pub const BATCH_RECORDS: usize = 4096;

/// Checks a metalogger's id and fences this master when the metalogger has
/// seen a newer epoch.
pub fn check(core: &Core, id: &str, seen_epoch: u64) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument(
            "metalogger_id must be 1..=256 bytes: give the metalogger's id",
        ));
    }
    core.check_epoch(seen_epoch)
}

/// A snapshot of the current state for a metalogger: (version, encoded bytes).
/// Encoded under the lock like the master's own snapshots
/// ([`Core::snapshot`]), not cloned: a clone would double the namespace in
/// memory as millions of small allocations the allocator keeps.
pub fn snapshot(core: &Core) -> (u64, Vec<u8>) {
    let started = std::time::Instant::now();
    let g = core.inner.lock();
    let bytes = snapshot::encode(&g.state, now_ns());
    let version = g.state.version;
    drop(g);
    tracing::debug!(
        version,
        mutations_paused_ms = started.elapsed().as_millis() as u64,
        "snapshot encoded for a metalogger"
    );
    (version, bytes)
}

/// Checks that a metalogger can resume the changelog at `from` (the master
/// holds it in its window); else it must fetch a snapshot.
pub fn check_resume(core: &Core, from: u64) -> Result<(), Status> {
    let committed = core.hub.committed();
    if from == 0 || from > committed + 1 {
        return Err(Status::failed_precondition(format!(
            "from_version {from} is not held by this master (committed version {committed}): the metalogger's history differs; fetch a snapshot"
        )));
    }
    let first = core.hub.first();
    if from < first {
        return Err(Status::failed_precondition(format!(
            "metalogger is too far behind: version {from} is no longer held in memory (oldest {first}); fetch a snapshot"
        )));
    }
    Ok(())
}

/// Up to `max` records from `next` to `upto` (only records durable on the
/// master are sent, so a metalogger's history is always a prefix of what the
/// master can recover).
pub fn records(
    core: &Core,
    next: u64,
    upto: u64,
    max: usize,
) -> Result<Vec<ChangelogRecord>, Status> {
    core.hub.records_from(next, upto, max).map_err(|first| {
        Status::failed_precondition(format!(
            "metalogger is too far behind: version {next} is no longer held in memory (oldest {first}); fetch a snapshot"
        ))
    })
}

/// A changelog batch of `records`, with the master's version and the known
/// metaloggers (a promotion checks none of them holds more).
pub fn batch(core: &Core, records: Vec<ChangelogRecord>) -> pb::ChangelogBatch {
    let peers = core
        .hub
        .metaloggers()
        .into_iter()
        .filter(|(_, m)| !m.address.is_empty())
        .map(|(id, m)| pb::MetaloggerPeer {
            id,
            address: m.address,
        })
        .collect();
    pb::ChangelogBatch {
        epoch: core.epoch,
        records,
        master_version: core.hub.committed(),
        peers,
    }
}

/// A metalogger's durable version.
pub fn report(core: &Core, r: &pb::ReportAppliedRequest) -> pb::ReportAppliedReply {
    core.hub
        .report(&r.metalogger_id, &r.address, r.durable_version);
    pb::ReportAppliedReply {
        epoch: core.epoch,
        master_version: core.hub.committed(),
    }
}

/// A planned handover to metalogger `r.metalogger_id`: no more mutations are
/// accepted, and once it holds the last version the master is fenced by the
/// new epoch (the server loop then rejoins as a metalogger). When it does not
/// catch up within [`STEP_DOWN_WAIT`] the master resumes.
pub async fn step_down(core: &Core, r: &pb::StepDownRequest) -> Result<pb::StepDownReply, Status> {
    if r.new_epoch <= core.epoch {
        return Err(Status::invalid_argument(format!(
            "new_epoch {} must be higher than this master's epoch {}",
            r.new_epoch, core.epoch
        )));
    }
    // Under the lock so that no mutation commits after the last version.
    let last = {
        let g = core.inner.lock();
        core.hub.set_fence(0);
        g.state.version
    };
    tracing::warn!(
        last_version = last,
        metalogger = %r.metalogger_id,
        new_epoch = r.new_epoch,
        "stepping down: no more mutations accepted; waiting for the metalogger to hold the last version"
    );
    if !core
        .hub
        .wait_metalogger(&r.metalogger_id, last, STEP_DOWN_WAIT)
        .await
    {
        tracing::error!(
            metalogger = %r.metalogger_id,
            "the metalogger did not catch up within {STEP_DOWN_WAIT:?}: resuming service"
        );
        core.hub.unfence();
        return Err(Status::deadline_exceeded(format!(
            "metalogger {} did not reach version {last} within {STEP_DOWN_WAIT:?}; the master resumed",
            r.metalogger_id
        )));
    }
    core.hub.set_fence(r.new_epoch);
    Ok(pb::StepDownReply {
        last_version: last,
        epoch: core.epoch,
    })
}

/// Who this master is: `Identify`.
pub fn identify(core: &Core) -> pb::IdentifyReply {
    let (cluster_id, version) = {
        let g = core.inner.lock();
        (g.state.cluster_id.clone(), g.state.version)
    };
    pb::IdentifyReply {
        epoch: core.epoch,
        cluster_id,
        role: "master".to_string(),
        metadata_version: version,
        fenced: core.hub.is_fenced(),
    }
}
