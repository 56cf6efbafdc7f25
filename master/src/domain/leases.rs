//! The `Leases` stream of one client session: opens the session's lease
//! stream in [`crate::runtime::leases::Leases`], answers renewals, forwards
//! breaks and notes their acknowledgements. When the stream ends (the client
//! went away, the connection broke) the session's leases stay until they
//! expire: a change waits for them at most that long.

use std::time::Instant;

use alces_proto::pb::{self, lease_down, lease_up};
use tokio::sync::mpsc;
use tonic::Status;

use crate::core::Core;
use crate::runtime::leases::{Renewal, LEASE};

/// Opens the lease stream of session `sid`; returns the stream's id (for
/// [`close`]) and the receiver of every break for it.
pub fn open(
    core: &Core,
    sid: u64,
) -> Result<(u64, mpsc::UnboundedReceiver<pb::LeaseDown>), Status> {
    let mut g = core.inner.lock();
    if !g.sessions.map.contains_key(&sid) {
        return Err(alces_proto::errno::session_unknown(sid));
    }
    Ok(g.leases.open_stream(sid, Instant::now()))
}

/// The first message of a lease stream.
pub fn hello() -> pb::LeaseDown {
    pb::LeaseDown {
        msg: Some(lease_down::Msg::LeaseMs(LEASE.as_millis() as u64)),
    }
}

/// Handles one message of session `sid`'s client; returns the answer to send,
/// if any, or an error naming what was wrong (which ends the stream).
pub fn handle(core: &Core, sid: u64, up: pb::LeaseUp) -> Result<Option<pb::LeaseDown>, Status> {
    match up.msg {
        Some(lease_up::Msg::Renew(n)) => {
            match core.inner.lock().leases.renew(sid, Instant::now()) {
                Renewal::Renewed => Ok(Some(pb::LeaseDown {
                    msg: Some(lease_down::Msg::Renewed(n)),
                })),
                Renewal::BreakPending => Ok(None),
                Renewal::NoStream => Err(Status::failed_precondition(
                    "the lease stream of this session was replaced by a newer one (or the session ended); open a new stream",
                )),
            }
        }
        Some(lease_up::Msg::Ack(seq)) => {
            core.inner.lock().leases.ack(sid, seq);
            Ok(None)
        }
        Some(lease_up::Msg::Hello(_)) => Err(Status::invalid_argument(
            "a lease stream sends hello once, as its first message",
        )),
        None => Err(Status::invalid_argument(
            "empty lease stream message: send renew or ack",
        )),
    }
}

/// The stream `stream` of session `sid` ended.
pub fn close(core: &Core, sid: u64, stream: u64) {
    core.inner.lock().leases.close_stream(sid, stream);
}
