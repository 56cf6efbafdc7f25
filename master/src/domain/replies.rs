//! Keeping the reply cache bounded over sessions: the outcomes of a session
//! that is closed or expired are dropped by a logged `ForgetRepliesOp` (so
//! metaloggers drop them too). What the cache is and its other bounds:
//! [`crate::state::replies`].

use alces_proto::pb;
use alces_proto::pb::changelog_record::Op;

use crate::core::{Core, Inner};

/// Logs `ForgetRepliesOp` for every session with cached outcomes that this
/// master does not know, once it has served for longer than the session
/// timeout: by then a session that was alive before a restart or a failover
/// has re-registered (the client renews three times per lease), so an unknown
/// one is closed or expired. Returns the last version committed.
pub fn forget_gone_sessions(core: &Core, inner: &mut Inner) -> Option<u64> {
    if core.started.elapsed() <= core.settings.session_timeout || core.hub.is_fenced() {
        return None;
    }
    let gone: Vec<u64> = inner
        .state
        .replies
        .sessions()
        .filter(|s| !inner.sessions.map.contains_key(s))
        .collect();
    let mut last = None;
    for session_id in gone {
        match core.commit(inner, Op::ForgetReplies(pb::ForgetRepliesOp { session_id })) {
            Ok(v) => {
                tracing::debug!(
                    session = session_id,
                    "reply cache of a gone session dropped"
                );
                last = Some(v);
            }
            Err(e) => {
                tracing::warn!(session = session_id, error = %e, "cannot drop the reply cache of a gone session");
                break;
            }
        }
    }
    last
}
