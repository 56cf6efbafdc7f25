//! Metadata leases: which sessions may cache what they were told about an
//! inode (its attributes, or a directory's entries), and the breaks a change
//! sends them before it is acknowledged. Held only while running: a restarted
//! or promoted master starts with none, and a client drops its cache whenever
//! its lease stream ends (see `client/ARCHITECTURE.md`, "Leases").

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use alces_proto::pb;
use tokio::sync::{mpsc, oneshot};

/// How long one renewal keeps a session's leases.
pub const LEASE: Duration = Duration::from_secs(4);

/// Most inodes one session may hold leases on; past it, the oldest grants are
/// not tracked any more and the session is told to drop everything (a break
/// of inode 0 means "all").
pub const MAX_PER_SESSION: usize = 1 << 20;

/// The outcome of a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The leases last another [`LEASE`] from now: answer it.
    Renewed,
    /// Not renewed while a break is unacknowledged: no answer (the client's
    /// leases lapse on their own unless it acknowledges).
    BreakPending,
    /// The session has no open stream.
    NoStream,
}

/// How long after a break an inode is not leased again: an inode that
/// sessions change in turn (a directory several mounts create files in) would
/// otherwise cost a break, and a wait for its acknowledgement, per change.
pub const HOT: Duration = Duration::from_secs(1);

/// Most inodes remembered as recently broken.
const MAX_HOT: usize = 100_000;

/// One session's lease stream.
struct Holder {
    /// Where breaks go; None once the stream ended.
    tx: Option<mpsc::UnboundedSender<pb::LeaseDown>>,
    /// Leases held are valid until then (the last renewal plus [`LEASE`]).
    expires: Instant,
    /// Breaks sent and not yet acknowledged.
    waiting: HashMap<u64, oneshot::Sender<()>>,
    /// Inodes this session holds leases on.
    inodes: HashSet<u64>,
    /// Which of the session's streams is the current one.
    stream: u64,
}

/// What a change waits for before it is acknowledged: one holder's
/// acknowledgement of a break, or the expiry of its leases.
pub struct BreakWait {
    /// Fires when the holder acknowledged (None: no stream, wait for expiry).
    pub acked: Option<oneshot::Receiver<()>>,
    /// The holder's leases have expired by then.
    pub expires: Instant,
}

impl BreakWait {
    /// Waits for the acknowledgement or the expiry, whichever comes first.
    pub async fn wait(self) {
        let until = tokio::time::Instant::from_std(self.expires);
        if let Some(rx) = self.acked {
            // Ok(Ok): acknowledged. Ok(Err): the stream ended without an
            // acknowledgement, so wait for the expiry. Err: expired.
            match tokio::time::timeout_at(until, rx).await {
                Ok(Ok(())) | Err(_) => return,
                Ok(Err(_)) => {}
            }
        }
        tokio::time::sleep_until(until).await;
    }
}

/// The lease table: holders by inode, streams by session.
#[derive(Default)]
pub struct Leases {
    sessions: HashMap<u64, Holder>,
    by_inode: HashMap<u64, Vec<u64>>,
    next_seq: u64,
    next_stream: u64,
    /// When inodes were last broken (see [`HOT`]).
    broken_at: HashMap<u64, Instant>,
}

impl Leases {
    /// Opens the lease stream of session `sid` (replacing an earlier one, whose
    /// unacknowledged breaks then wait for expiry); returns where its
    /// messages come from.
    pub fn open_stream(
        &mut self,
        sid: u64,
        now: Instant,
    ) -> (u64, mpsc::UnboundedReceiver<pb::LeaseDown>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.next_stream += 1;
        let id = self.next_stream;
        let h = self.sessions.entry(sid).or_insert_with(|| Holder {
            tx: None,
            expires: now,
            waiting: HashMap::new(),
            inodes: HashSet::new(),
            stream: 0,
        });
        h.tx = Some(tx);
        h.waiting.clear();
        h.stream = id;
        h.expires = h.expires.max(now + LEASE);
        (id, rx)
    }

    /// Ends the lease stream of `sid`: its leases stay until they expire (the
    /// client stops trusting its cache when it sees the stream end, but a change
    /// cannot know when that was).
    pub fn close_stream(&mut self, sid: u64, stream: u64) {
        if let Some(h) = self.sessions.get_mut(&sid).filter(|h| h.stream == stream) {
            h.tx = None;
            h.waiting.clear();
        }
    }

    /// Renews every lease of `sid`, unless a break it has not acknowledged is
    /// outstanding: a client that no longer hears the master (its answers are
    /// lost) may still be heard, and must not keep its leases alive while a
    /// change waits for them.
    pub fn renew(&mut self, sid: u64, now: Instant) -> Renewal {
        match self.sessions.get_mut(&sid) {
            Some(h) if h.tx.is_some() => {
                if !h.waiting.is_empty() {
                    return Renewal::BreakPending;
                }
                h.expires = now + LEASE;
                Renewal::Renewed
            }
            _ => Renewal::NoStream,
        }
    }

    /// Notes the acknowledgement of break `seq` by `sid`.
    pub fn ack(&mut self, sid: u64, seq: u64) {
        if let Some(tx) = self
            .sessions
            .get_mut(&sid)
            .and_then(|h| h.waiting.remove(&seq))
        {
            let _ = tx.send(());
        }
    }

    /// Grants `sid` leases on `inodes`, if its stream is open and its leases
    /// are current. True when granted (the answer may be cached).
    pub fn grant(&mut self, sid: u64, inodes: &[u64], now: Instant) -> bool {
        let Some(h) = self.sessions.get_mut(&sid) else {
            return false;
        };
        if h.tx.is_none() || h.expires <= now || h.inodes.len() + inodes.len() > MAX_PER_SESSION {
            return false;
        }
        let hot = |i: &u64| {
            self.broken_at
                .get(i)
                .is_some_and(|t| now.saturating_duration_since(*t) < HOT)
        };
        if inodes.iter().any(hot) {
            return false;
        }
        for &ino in inodes {
            if h.inodes.insert(ino) {
                self.by_inode.entry(ino).or_default().push(sid);
            }
        }
        true
    }

    /// True when some session holds a lease on one of `inodes`.
    pub fn any_held(&self, inodes: &[u64]) -> bool {
        !self.by_inode.is_empty() && inodes.iter().any(|i| self.by_inode.contains_key(i))
    }

    /// Breaks every lease on `inodes` held by a session other than `author`:
    /// sends each holder one break and returns what the change must wait for.
    /// Holders whose leases expired are dropped without waiting.
    pub fn break_leases(
        &mut self,
        inodes: &[u64],
        author: Option<u64>,
        now: Instant,
    ) -> Vec<BreakWait> {
        let mut per_session: HashMap<u64, Vec<u64>> = HashMap::new();
        for ino in inodes {
            let Some(holders) = self.by_inode.get_mut(ino) else {
                continue;
            };
            let before = holders.len();
            holders.retain(|&sid| {
                if Some(sid) == author {
                    return true;
                }
                per_session.entry(sid).or_default().push(*ino);
                false
            });
            if holders.len() != before {
                self.broken_at.insert(*ino, now);
            }
            if holders.is_empty() {
                self.by_inode.remove(ino);
            }
        }
        if self.broken_at.len() > MAX_HOT {
            self.broken_at
                .retain(|_, t| now.saturating_duration_since(*t) < HOT);
        }
        let mut waits = Vec::new();
        for (sid, inos) in per_session {
            let Some(h) = self.sessions.get_mut(&sid) else {
                continue;
            };
            for i in &inos {
                h.inodes.remove(i);
            }
            if h.expires <= now {
                continue;
            }
            self.next_seq += 1;
            let seq = self.next_seq;
            let acked = h.tx.as_ref().and_then(|tx| {
                let msg = pb::LeaseDown {
                    msg: Some(pb::lease_down::Msg::Break(pb::LeaseBreak {
                        seq,
                        inodes: inos,
                    })),
                };
                tx.send(msg).ok()?;
                let (otx, orx) = oneshot::channel();
                h.waiting.insert(seq, otx);
                Some(orx)
            });
            waits.push(BreakWait {
                acked,
                expires: h.expires,
            });
        }
        waits
    }

    /// Forgets session `sid` (closed or expired): its leases go with it.
    pub fn forget(&mut self, sid: u64) {
        if let Some(h) = self.sessions.remove(&sid) {
            for ino in h.inodes {
                if let Some(v) = self.by_inode.get_mut(&ino) {
                    v.retain(|&s| s != sid);
                    if v.is_empty() {
                        self.by_inode.remove(&ino);
                    }
                }
            }
        }
    }

    /// Sessions with a lease stream or leases (for the metrics and tests).
    pub fn holders(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv_break(rx: &mut mpsc::UnboundedReceiver<pb::LeaseDown>) -> pb::LeaseBreak {
        match rx.try_recv().expect("a break was sent").msg {
            Some(pb::lease_down::Msg::Break(b)) => b,
            other => panic!("expected a break, got {other:?}"),
        }
    }

    #[test]
    fn a_change_breaks_other_holders_only() {
        let now = Instant::now();
        let mut l = Leases::default();
        let (_, mut rx1) = l.open_stream(1, now);
        let (_, mut rx2) = l.open_stream(2, now);
        assert!(l.grant(1, &[10, 11], now));
        assert!(l.grant(2, &[10], now));
        let waits = l.break_leases(&[10], Some(2), now);
        assert_eq!(waits.len(), 1, "only session 1 is broken");
        let b = recv_break(&mut rx1);
        assert_eq!(b.inodes, vec![10]);
        assert!(rx2.try_recv().is_err(), "the author is not broken");
        // Broken once: a second change of 10 sends session 1 nothing more.
        assert!(l.break_leases(&[10], Some(2), now).is_empty());
        // 11 is still held.
        assert_eq!(l.break_leases(&[11], None, now).len(), 1);
    }

    #[test]
    fn a_recently_broken_inode_is_not_leased_again_for_a_while() {
        let now = Instant::now();
        let mut l = Leases::default();
        let (_, mut rx1) = l.open_stream(1, now);
        let (_, _rx2) = l.open_stream(2, now);
        assert!(l.grant(1, &[10], now));
        assert_eq!(l.break_leases(&[10], Some(2), now).len(), 1);
        let b = recv_break(&mut rx1);
        l.ack(1, b.seq);
        assert!(!l.grant(1, &[10], now), "hot: not leased");
        assert!(!l.grant(1, &[10, 11], now), "nor together with another");
        assert!(l.grant(1, &[11], now));
        let later = now + HOT;
        assert_eq!(l.renew(1, later), Renewal::Renewed);
        assert!(l.grant(1, &[10], later), "leased again after a while");
    }

    #[test]
    fn no_grant_without_a_stream_or_after_expiry() {
        let now = Instant::now();
        let mut l = Leases::default();
        assert!(!l.grant(1, &[5], now), "no stream, no lease");
        let (id, _rx) = l.open_stream(1, now);
        assert!(
            !l.grant(1, &[5], now + LEASE),
            "expired leases grant nothing"
        );
        assert_eq!(l.renew(1, now + LEASE), Renewal::Renewed);
        assert!(l.grant(1, &[5], now + LEASE));
        l.close_stream(1, id + 1);
        assert_eq!(
            l.renew(1, now + LEASE),
            Renewal::Renewed,
            "an older stream's end changes nothing"
        );
        l.close_stream(1, id);
        assert_eq!(
            l.renew(1, now + LEASE),
            Renewal::NoStream,
            "a closed stream renews nothing"
        );
        // A closed stream's lease is still waited for, until it expires.
        let w = l.break_leases(&[5], None, now + LEASE);
        assert_eq!(w.len(), 1);
        assert!(w[0].acked.is_none());
    }

    #[tokio::test]
    async fn an_ack_ends_the_wait() {
        let now = Instant::now();
        let mut l = Leases::default();
        let (_, mut rx) = l.open_stream(7, now);
        l.grant(7, &[3], now);
        let mut w = l.break_leases(&[3], None, now);
        let b = recv_break(&mut rx);
        assert_eq!(
            l.renew(7, now),
            Renewal::BreakPending,
            "no renewal while a break is unacknowledged"
        );
        l.ack(7, b.seq);
        assert_eq!(l.renew(7, now), Renewal::Renewed);
        let w = w.pop().unwrap();
        assert!(w.acked.is_some());
        w.acked.unwrap().await.expect("acknowledged");
        l.forget(7);
        assert_eq!(l.holders(), 0);
        assert!(!l.any_held(&[3]));
    }
}
