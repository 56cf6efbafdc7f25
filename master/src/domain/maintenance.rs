//! The maintenance tick (once a second): expires client sessions and write
//! sessions, purges orphans and trash whose time ran out, disconnects silent
//! chunkservers, reconciles copies and plans replication, and refreshes the
//! gauges.

use std::time::Instant;

use crate::core::{Core, SNAPSHOT_RECORDS};
use crate::domain::volumes::purge_expired;
use crate::runtime::chunkmap::Liveness;
use crate::runtime::replication::chunkserver_quorum;

/// Periodic work: expires sessions, purges orphans, plans replication,
/// updates gauges. Returns whether a snapshot is due by record count.
pub fn tick(core: &Core) -> bool {
    let now = Instant::now();
    let mut g = core.inner.lock();
    let inner = &mut *g;
    inner.chunks.release_durable(core.durable_version());
    let (closed, released) = inner.sessions.expire(now, core.settings.session_timeout);
    for sid in &closed {
        let locks = inner.locks.release_session(*sid);
        inner.leases.forget(*sid);
        tracing::info!(session = sid, locks, "session lease expired: closed");
        inner.tails.session_gone(&inner.state, *sid);
    }
    core.purge_unused(inner, &released);
    purge_expired(core, inner);
    crate::domain::replies::forget_gone_sessions(core, inner);
    if !inner.startup_orphans_done
        && now.saturating_duration_since(core.started) > core.settings.session_timeout
    {
        inner.startup_orphans_done = true;
        let orphans: Vec<u64> = inner.state.orphans.iter().copied().collect();
        if !orphans.is_empty() {
            tracing::info!(count = orphans.len(), "purging orphans no client reclaimed");
        }
        core.purge_unused(inner, &orphans);
    }
    let adoptions = inner.chunks.tick(
        &inner.state,
        now,
        Liveness {
            disconnect: core.settings.chunkserver_disconnect,
            grace: core.settings.chunkserver_timeout,
        },
        core.settings.session_timeout * 4,
        &core.settings.replication,
    );
    core.adopt(inner, &adoptions);
    core.hub
        .set_isolated(!chunkserver_quorum(&inner.chunks, now));
    core.update_gauges(inner);
    inner.state.version - inner.snapshot_version >= SNAPSHOT_RECORDS
}
