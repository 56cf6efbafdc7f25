//! The reply cache: the first outcome of every tagged non-idempotent request
//! (`RequestTag` in `master.proto`), by session and request id, so that a
//! retry of the same request is answered with it instead of running again.
//!
//! It is replicated metadata like the namespace: an outcome enters it only
//! with the changelog record of its mutation (`ChangelogRecord.reply`), so
//! the master, a restarted master replaying its changelog and every
//! metalogger hold the same cache at the same version, and snapshots carry it
//! (`SnapshotReplyEntry`). It is bounded:
//!
//! - a session's outcomes below the `acked_below` of its newest recorded
//!   request are dropped (the client has received those replies);
//! - `ForgetRepliesOp` drops a session's outcomes once it is closed or expired;
//! - at most [`MAX_PER_SESSION`] outcomes per session (beyond that the
//!   session's lowest request id goes) and [`MAX_ENTRIES`] in all (beyond that
//!   the oldest outcome goes). A retry of a dropped outcome runs again, as a
//!   request without a tag always does.
//!
//! Every rule is a function of the records applied, so eviction is the same
//! everywhere.

use std::collections::{BTreeMap, HashMap};

use alces_proto::pb::{self, reply_record::Outcome};

use crate::state::error::{err, FsResult};

/// Most outcomes kept for one session (a client has at most this many
/// mutations unanswered at once; beyond it the lowest id is dropped).
pub const MAX_PER_SESSION: usize = 4096;
/// Most outcomes kept in all (beyond it the oldest is dropped).
pub const MAX_ENTRIES: usize = 65_536;

/// One cached outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    /// Version of the changelog record that made it (a retry waits until that
    /// version is durable before answering).
    pub version: u64,
    /// The reply the request got.
    pub outcome: Outcome,
}

/// Bytes one entry costs in memory, as counted in the master's memory figure:
/// the entry, its key in the session's map, its place in the eviction order,
/// and tree node overhead.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Cached>() + 3 * 16 + 32;

/// The reply cache (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replies {
    by_session: HashMap<u64, BTreeMap<u64, Cached>>,
    /// (session, request) by the version that recorded it: the eviction order.
    order: BTreeMap<u64, (u64, u64)>,
}

// The cached messages hold no floating-point fields: equality is total.
impl Eq for Replies {}

/// Checks a reply record before anything is changed: a session and a request
/// id, an outcome, and an acknowledgement not past its own request.
pub fn check(r: &pb::ReplyRecord) -> FsResult<()> {
    if r.session_id == 0 || r.request_id == 0 {
        return err(
            libc::EINVAL,
            format!(
                "reply record with session {} and request id {}: both must be non-zero",
                r.session_id, r.request_id
            ),
        );
    }
    if r.outcome.is_none() {
        return err(
            libc::EINVAL,
            format!(
                "reply record of session {} request {} has no outcome",
                r.session_id, r.request_id
            ),
        );
    }
    if r.acked_below > r.request_id {
        return err(
            libc::EINVAL,
            format!(
                "reply record of session {} request {} acknowledges requests up to {}, past itself",
                r.session_id, r.request_id, r.acked_below
            ),
        );
    }
    Ok(())
}

impl Replies {
    /// The outcome of request `request_id` of session `session_id`, if kept.
    pub fn get(&self, session_id: u64, request_id: u64) -> Option<&Cached> {
        self.by_session.get(&session_id)?.get(&request_id)
    }

    /// Checks `r` ([`check`]) and that its request is not recorded already.
    pub fn check_new(&self, r: &pb::ReplyRecord) -> FsResult<()> {
        check(r)?;
        if self.get(r.session_id, r.request_id).is_some() {
            return err(
                libc::EINVAL,
                format!(
                    "reply record of session {} request {} is recorded already",
                    r.session_id, r.request_id
                ),
            );
        }
        Ok(())
    }

    /// Records `r` made by the record of `version` (checked by
    /// [`Replies::check_new`]), then drops what it acknowledges and what is
    /// over the caps.
    pub fn insert(&mut self, version: u64, r: &pb::ReplyRecord) {
        let Some(outcome) = r.outcome.clone() else {
            return;
        };
        let sid = r.session_id;
        let map = self.by_session.entry(sid).or_default();
        let acked: Vec<u64> = map.range(..r.acked_below).map(|(id, _)| *id).collect();
        for id in acked {
            if let Some(c) = map.remove(&id) {
                self.order.remove(&c.version);
            }
        }
        map.insert(r.request_id, Cached { version, outcome });
        self.order.insert(version, (sid, r.request_id));
        while map.len() > MAX_PER_SESSION {
            if let Some((_, c)) = map.pop_first() {
                self.order.remove(&c.version);
            }
        }
        while self.order.len() > MAX_ENTRIES {
            let Some((_, (s, id))) = self.order.pop_first() else {
                break;
            };
            if let Some(m) = self.by_session.get_mut(&s) {
                m.remove(&id);
                if m.is_empty() {
                    self.by_session.remove(&s);
                }
            }
        }
    }

    /// Checks and records `r` (changelog replay and snapshot loading).
    pub fn record(&mut self, version: u64, r: &pb::ReplyRecord) -> FsResult<()> {
        self.check_new(r)?;
        self.insert(version, r);
        Ok(())
    }

    /// Drops every outcome of session `session_id`; returns how many.
    pub fn forget(&mut self, session_id: u64) -> usize {
        let Some(map) = self.by_session.remove(&session_id) else {
            return 0;
        };
        for c in map.values() {
            self.order.remove(&c.version);
        }
        map.len()
    }

    /// Sessions with outcomes kept.
    pub fn sessions(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_session.keys().copied()
    }

    /// Outcomes kept.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Estimated bytes of memory the cache holds ([`ENTRY_BYTES`] per outcome).
    pub fn bytes(&self) -> usize {
        self.len() * ENTRY_BYTES
    }

    /// Every outcome as the record that would recreate it, oldest first (what
    /// a snapshot writes; loading them in this order rebuilds the same cache).
    pub fn records(&self) -> impl Iterator<Item = (u64, pb::ReplyRecord)> + '_ {
        self.order.iter().filter_map(|(v, (s, id))| {
            let c = self.get(*s, *id)?;
            Some((
                *v,
                pb::ReplyRecord {
                    session_id: *s,
                    request_id: *id,
                    acked_below: 0,
                    outcome: Some(c.outcome.clone()),
                },
            ))
        })
    }
}

/// A tagged request's place in the reply cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The asking session.
    pub session_id: u64,
    /// The request id within it.
    pub request_id: u64,
    /// The session's requests below this id have had their replies.
    pub acked_below: u64,
}

/// The tag of a request of session `session_id`: `None` when it carries none
/// (or id 0: no cache); refused when it acknowledges past its own id.
pub fn tag(session_id: u64, t: Option<&pb::RequestTag>) -> FsResult<Option<Tag>> {
    let Some(t) = t.filter(|t| t.id != 0) else {
        return Ok(None);
    };
    if t.acked_below > t.id {
        return err(
            libc::EINVAL,
            format!(
                "request tag {} says requests below {} were answered, which includes itself: acked_below must not exceed the request's own id",
                t.id, t.acked_below
            ),
        );
    }
    Ok(Some(Tag {
        session_id,
        request_id: t.id,
        acked_below: t.acked_below,
    }))
}

impl Tag {
    /// The record of `outcome` for this request.
    pub fn record(&self, outcome: Outcome) -> pb::ReplyRecord {
        pb::ReplyRecord {
            session_id: self.session_id,
            request_id: self.request_id,
            acked_below: self.acked_below,
            outcome: Some(outcome),
        }
    }
}

/// A reply type the cache can hold.
pub trait Reply: Sized {
    /// The outcome to keep for this reply.
    fn to_outcome(&self) -> Outcome;
    /// The reply of a kept outcome, if it is of this type.
    fn from_outcome(o: &Outcome) -> Option<Self>;
}

impl Reply for pb::AttrReply {
    fn to_outcome(&self) -> Outcome {
        // Only what a namespace mutation answers (never a chunk location).
        Outcome::Attr(pb::AttrReply {
            attr: self.attr,
            parent: self.parent,
            first_chunk: None,
            // A lease is granted to the call that ran, never to a retry.
            leased: false,
        })
    }
    fn from_outcome(o: &Outcome) -> Option<Self> {
        match o {
            Outcome::Attr(a) => Some(a.clone()),
            _ => None,
        }
    }
}

impl Reply for pb::EntryChangeReply {
    fn to_outcome(&self) -> Outcome {
        Outcome::Entry(pb::EntryChangeReply {
            leased: false,
            ..*self
        })
    }
    fn from_outcome(o: &Outcome) -> Option<Self> {
        match o {
            Outcome::Entry(e) => Some(*e),
            _ => None,
        }
    }
}

impl Reply for pb::Empty {
    fn to_outcome(&self) -> Outcome {
        Outcome::Empty(pb::Empty {})
    }
    fn from_outcome(o: &Outcome) -> Option<Self> {
        match o {
            Outcome::Empty(_) => Some(pb::Empty {}),
            _ => None,
        }
    }
}

impl Replies {
    /// The first outcome of the tagged request, as its reply type with the
    /// version that recorded it; `None` when the request has not run (or its
    /// outcome was dropped). A request id used before by a call of another
    /// kind is refused: the client reused an id.
    pub fn answer<R: Reply>(&self, tag: Option<Tag>) -> FsResult<Option<(u64, R)>> {
        let Some(t) = tag else { return Ok(None) };
        let Some(c) = self.get(t.session_id, t.request_id) else {
            return Ok(None);
        };
        match R::from_outcome(&c.outcome) {
            Some(r) => Ok(Some((c.version, r))),
            None => err(
                libc::EINVAL,
                format!(
                    "request id {} of session {} was already used by a call of another kind: request ids must not be reused",
                    t.request_id, t.session_id
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sid: u64, id: u64, acked_below: u64) -> pb::ReplyRecord {
        pb::ReplyRecord {
            session_id: sid,
            request_id: id,
            acked_below,
            outcome: Some(Outcome::Empty(pb::Empty {})),
        }
    }

    #[test]
    fn acknowledged_outcomes_are_dropped() {
        let mut r = Replies::default();
        r.record(1, &rec(7, 1, 1)).unwrap();
        r.record(2, &rec(7, 2, 1)).unwrap();
        r.record(3, &rec(8, 1, 1)).unwrap();
        assert_eq!(r.len(), 3);
        // Session 7 has had the replies of 1 and 2: both go, session 8 stays.
        r.record(4, &rec(7, 5, 3)).unwrap();
        assert!(r.get(7, 1).is_none() && r.get(7, 2).is_none());
        assert_eq!(r.get(7, 5).map(|c| c.version), Some(4));
        assert!(r.get(8, 1).is_some());
        assert_eq!(r.len(), 2);
        assert_eq!(r.forget(7), 1);
        assert_eq!(r.forget(7), 0);
        assert_eq!(r.sessions().collect::<Vec<_>>(), vec![8]);
        assert_eq!(r.bytes(), ENTRY_BYTES);
    }

    #[test]
    fn caps_drop_the_lowest_id_of_a_session_and_the_oldest_overall() {
        let mut r = Replies::default();
        for id in 1..=(MAX_PER_SESSION as u64 + 2) {
            r.record(id, &rec(1, id, 1)).unwrap();
        }
        assert_eq!(r.len(), MAX_PER_SESSION);
        assert!(r.get(1, 1).is_none() && r.get(1, 2).is_none());
        assert!(r.get(1, 3).is_some());
        let mut v = MAX_PER_SESSION as u64 + 2;
        let mut sid = 2;
        while r.len() < MAX_ENTRIES {
            for id in 1..=64 {
                v += 1;
                r.record(v, &rec(sid, id, 1)).unwrap();
            }
            sid += 1;
        }
        assert_eq!(r.len(), MAX_ENTRIES);
        v += 1;
        r.record(v, &rec(sid, 1, 1)).unwrap();
        assert_eq!(r.len(), MAX_ENTRIES);
        // The oldest outcome overall (session 1's lowest id kept) went.
        assert!(r.get(1, 3).is_none());
        assert!(r.get(1, 4).is_some());
        assert!(r.get(sid, 1).is_some());
    }

    #[test]
    fn bad_records_are_refused_with_what_is_wrong() {
        let mut r = Replies::default();
        let e = r.record(1, &rec(0, 1, 0)).unwrap_err();
        assert!(e.message.contains("must be non-zero"), "{e}");
        let e = r.record(1, &rec(1, 0, 0)).unwrap_err();
        assert!(e.message.contains("must be non-zero"), "{e}");
        let mut no_outcome = rec(1, 1, 0);
        no_outcome.outcome = None;
        let e = r.record(1, &no_outcome).unwrap_err();
        assert!(e.message.contains("no outcome"), "{e}");
        let e = r.record(1, &rec(1, 3, 4)).unwrap_err();
        assert!(e.message.contains("past itself"), "{e}");
        r.record(1, &rec(1, 3, 1)).unwrap();
        let e = r.record(2, &rec(1, 3, 1)).unwrap_err();
        assert!(e.message.contains("recorded already"), "{e}");
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn answers_match_the_call_and_tags_are_checked() {
        let mut r = Replies::default();
        let t = tag(
            5,
            Some(&pb::RequestTag {
                id: 9,
                acked_below: 2,
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.answer::<pb::Empty>(Some(t)).unwrap(), None);
        r.record(3, &t.record(pb::EntryChangeReply::default().to_outcome()))
            .unwrap();
        assert_eq!(
            r.answer::<pb::EntryChangeReply>(Some(t)).unwrap(),
            Some((3, pb::EntryChangeReply::default()))
        );
        let e = r.answer::<pb::AttrReply>(Some(t)).unwrap_err();
        assert!(e.message.contains("must not be reused"), "{e}");
        assert_eq!(tag(5, None).unwrap(), None);
        assert_eq!(tag(5, Some(&pb::RequestTag::default())).unwrap(), None);
        let e = tag(
            5,
            Some(&pb::RequestTag {
                id: 3,
                acked_below: 4,
            }),
        )
        .unwrap_err();
        assert!(e.message.contains("acked_below"), "{e}");
    }

    #[test]
    fn records_rebuild_the_same_cache() {
        let mut r = Replies::default();
        for (v, (s, id)) in [(1, 1), (1, 2), (2, 1), (1, 3)].into_iter().enumerate() {
            r.record(v as u64 + 1, &rec(s, id, 1)).unwrap();
        }
        let mut again = Replies::default();
        for (v, rec) in r.records() {
            again.record(v, &rec).unwrap();
        }
        assert_eq!(again, r);
    }
}
