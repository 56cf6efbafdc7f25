//! The lease cache: names (positive and negative) and attributes the master
//! leased to this session, so a lookup or stat of a recently seen name needs
//! no round trip. Pure bookkeeping: the session's lease stream
//! (`session::lease_loop`) feeds it renewals, breaks and resets; the
//! namespace reads and fills it.
//!
//! What may be cached, and when:
//! - only answers the master marked `leased`, and only while the leases are
//!   current (renewed within the lease length, measured from when the renewal
//!   was sent, so never longer than the master counts them);
//! - an answer is stored only if no break, reset or change of this client
//!   happened while its call was in flight (the [`Ticket`] taken before the
//!   call still matches): a break that overtakes the answer it invalidates
//!   cannot leave a stale entry behind;
//! - a break (another session changed an inode), a change this client made
//!   itself, and the end of the stream all drop what they touch before
//!   anything else is answered from the cache.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use alces_proto::pb::{Attr, DirEntry};
use parking_lot::Mutex;

/// Most names (positive and negative) kept; past it, everything is dropped.
pub const MAX_NAMES: usize = 200_000;

/// How long the attributes of an unleased lookup answer may serve the
/// kernel's GETATTR that follows it.
pub const RECENT: Duration = Duration::from_millis(100);

/// Most inodes whose last invalidation is remembered (past it, every call
/// in flight is treated as overtaken).
const MAX_INVALIDATED: usize = 100_000;

/// Most unleased answers kept for their GETATTR.
const MAX_RECENT: usize = 10_000;

/// Taken before a call whose answer may be cached: the answer is stored only
/// if nothing was invalidated meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(u64);

/// What the cache answers for a name.
#[derive(Clone, Debug, PartialEq)]
pub enum Cached {
    /// The name exists with these attributes.
    Found(Attr),
    /// The name does not exist.
    Missing,
}

/// What is known of one directory's entries.
#[derive(Default)]
struct Dir {
    /// By name: the child's inode, or None (no such name).
    names: HashMap<Box<[u8]>, Option<u64>>,
    /// Every name of the directory is in `names` (it was made by this client,
    /// and nobody else changed it since): a name not there does not exist.
    complete: bool,
    /// The directory's parent, when known (0: not known): what ".." of a
    /// listing answered from here names.
    parent: u64,
}

#[derive(Default)]
struct State {
    /// Bumped by every invalidation.
    generation: u64,
    /// Answers of calls whose ticket is older than this are not stored (set
    /// when everything was dropped).
    floor: u64,
    /// The generation at which each inode was last invalidated: answers
    /// about it from calls with an older ticket are not stored.
    invalidated: HashMap<u64, u64>,
    /// The leases are current until then; None while the stream is down.
    valid_until: Option<Instant>,
    /// The master supports leases (a stream was opened once).
    supported: bool,
    /// Entries by directory.
    entries: HashMap<u64, Dir>,
    names: usize,
    attrs: HashMap<u64, Attr>,
    /// Attributes of unleased lookup answers, each for the one GETATTR the
    /// kernel sends right after a LOOKUP (see [`MetaCache::note_unleased`]).
    recent: HashMap<u64, (Instant, Attr)>,
    hits: u64,
    misses: u64,
}

impl State {
    fn current(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|t| now < t)
    }

    /// True when nothing about `inodes` was invalidated since ticket `t` was
    /// taken.
    fn fresh(&self, t: Ticket, inodes: &[u64]) -> bool {
        t.0 >= self.floor
            && inodes
                .iter()
                .all(|i| self.invalidated.get(i).is_none_or(|g| *g <= t.0))
    }

    /// Marks `inodes` invalidated now (after bumping the generation).
    fn mark(&mut self, inodes: &[u64]) {
        if self.invalidated.len() + inodes.len() > MAX_INVALIDATED {
            self.invalidated.clear();
            self.floor = self.generation;
        }
        for &i in inodes {
            self.invalidated.insert(i, self.generation);
        }
    }

    fn drop_all(&mut self) {
        self.generation += 1;
        self.floor = self.generation;
        self.invalidated.clear();
        self.entries.clear();
        self.attrs.clear();
        self.recent.clear();
        self.names = 0;
    }

    fn drop_inode(&mut self, ino: u64) {
        self.attrs.remove(&ino);
        self.recent.remove(&ino);
        if let Some(d) = self.entries.remove(&ino) {
            self.names -= d.names.len();
        }
    }

    fn put_name(&mut self, parent: u64, name: &[u8], child: Option<u64>) {
        if self
            .entries
            .entry(parent)
            .or_default()
            .names
            .insert(name.into(), child)
            .is_none()
        {
            self.names += 1;
        }
    }

    fn take_name(&mut self, parent: u64, name: &[u8]) -> Option<Option<u64>> {
        let d = self.entries.get_mut(&parent)?;
        let old = d.names.remove(name);
        if old.is_some() {
            self.names -= 1;
        }
        old
    }
}

/// A name that is never answered from a directory's completeness.
fn is_dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// The lease cache of one session (see the module documentation).
#[derive(Default)]
pub struct MetaCache {
    state: Mutex<State>,
}

impl MetaCache {
    /// An empty cache with no current leases.
    pub fn new() -> Self {
        Self::default()
    }

    /// A ticket for a call about to be made.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.state.lock().generation)
    }

    /// True once the master accepted a lease stream of this session: the
    /// kernel is then given no cache time of its own (this cache, which the
    /// master keeps coherent, answers instead).
    pub fn supported(&self) -> bool {
        self.state.lock().supported
    }

    /// The stream is open: leases may be granted from now on; `until` is when
    /// they lapse unless renewed.
    pub fn stream_opened(&self, until: Instant) {
        let mut s = self.state.lock();
        s.supported = true;
        s.valid_until = Some(until);
    }

    /// A renewal sent at `sent` was answered: the leases last until
    /// `sent + lease`.
    pub fn renewed(&self, sent: Instant, lease: Duration) {
        let mut s = self.state.lock();
        let until = sent + lease;
        if s.valid_until.is_some_and(|t| t < until) {
            s.valid_until = Some(until);
        }
    }

    /// The stream ended (or this client cannot tell whether its leases still
    /// hold): nothing cached is trusted any more.
    pub fn reset(&self) {
        let mut s = self.state.lock();
        s.valid_until = None;
        s.drop_all();
    }

    /// The master broke the leases on `inodes` (inode 0: all of them), or this
    /// client changed them: drop their attributes and, for directories, their
    /// entries.
    pub fn invalidate(&self, inodes: &[u64]) {
        let mut s = self.state.lock();
        if inodes.contains(&0) {
            s.drop_all();
            return;
        }
        s.generation += 1;
        s.mark(inodes);
        for &i in inodes {
            s.drop_inode(i);
        }
    }

    /// This client changed the entry `name` of `parent`, in a call made with
    /// ticket `t`: `now` is what the name holds after the change (None: it was
    /// removed), `parent_attr` the directory's attributes after it, and
    /// `leased` says the master granted leases on both with the answer. When
    /// nothing else was invalidated during the call, the cache is updated to
    /// the state after the change (a complete directory stays complete);
    /// otherwise the name, the directory's attributes and the inode the name
    /// held are dropped (everything, when that inode is not known here).
    #[allow(clippy::too_many_arguments)]
    pub fn changed_entry(
        &self,
        t: Ticket,
        parent: u64,
        name: &[u8],
        now: Option<&Attr>,
        parent_attr: Option<&Attr>,
        leased: bool,
        made_dir: bool,
    ) {
        let mut s = self.state.lock();
        let old = s
            .entries
            .get(&parent)
            .and_then(|d| d.names.get(name))
            .copied();
        let mut touched = vec![parent];
        touched.extend(now.map(|a| a.inode));
        touched.extend(old.flatten());
        let ok = leased && s.fresh(t, &touched) && s.current(Instant::now());
        s.generation += 1;
        s.mark(&touched);
        match (s.take_name(parent, name), now) {
            (Some(Some(c)), _) => s.drop_inode(c),
            (_, Some(_)) => {}
            // A removed name this client did not know (or thought missing):
            // its inode's attributes may be cached under its number.
            (_, None) => {
                s.drop_all();
                return;
            }
        }
        if let Some(a) = now {
            s.attrs.remove(&a.inode);
            s.recent.remove(&a.inode);
        }
        s.attrs.remove(&parent);
        s.recent.remove(&parent);
        if !ok {
            if let Some(d) = s.entries.get_mut(&parent) {
                d.complete = false;
            }
            return;
        }
        s.put_name(parent, name, now.map(|a| a.inode));
        if let Some(a) = now {
            s.attrs.insert(a.inode, *a);
            // A directory made here with a leased answer is empty: every
            // lookup in it can be answered until someone else changes it.
            if made_dir {
                let d = s.entries.entry(a.inode).or_default();
                d.complete = true;
                d.parent = parent;
            }
        }
        if let Some(p) = parent_attr {
            s.attrs.insert(parent, *p);
        }
    }

    /// This client renamed `name` in `parent` to `new_name` in `new_parent`
    /// (replacing what was there). Everything the rename touched is dropped
    /// (the moved inode's ctime, the replaced inode's links, both
    /// directories' attributes); the names are updated when nothing else was
    /// invalidated during the call and both directories were leased with the
    /// answer, and everything is dropped when the moved or replaced inode is
    /// not known here.
    #[allow(clippy::too_many_arguments)]
    pub fn renamed(
        &self,
        t: Ticket,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        parent_attr: Option<&Attr>,
        new_parent_attr: Option<&Attr>,
        leased: bool,
    ) {
        let mut s = self.state.lock();
        let look = |s: &State, p: u64, n: &[u8]| {
            s.entries
                .get(&p)
                .and_then(|d| d.names.get(n))
                .copied()
                .flatten()
        };
        let mut touched = vec![parent, new_parent];
        touched.extend(look(&s, parent, name));
        touched.extend(look(&s, new_parent, new_name));
        let ok = leased && s.fresh(t, &touched) && s.current(Instant::now());
        s.generation += 1;
        s.mark(&touched);
        let moved = s.take_name(parent, name);
        let new_complete = s.entries.get(&new_parent).is_some_and(|d| d.complete);
        let replaced = match s.take_name(new_parent, new_name) {
            None if new_complete => Some(None),
            r => r,
        };
        let (Some(Some(m)), Some(r)) = (moved, replaced) else {
            s.drop_all();
            return;
        };
        s.drop_inode(m);
        if let Some(r) = r {
            s.drop_inode(r);
        }
        s.attrs.remove(&parent);
        s.recent.remove(&parent);
        s.attrs.remove(&new_parent);
        s.recent.remove(&new_parent);
        if !ok {
            for p in [parent, new_parent] {
                if let Some(d) = s.entries.get_mut(&p) {
                    d.complete = false;
                }
            }
            return;
        }
        s.put_name(parent, name, None);
        s.put_name(new_parent, new_name, Some(m));
        for (p, a) in [(parent, parent_attr), (new_parent, new_parent_attr)] {
            if let Some(a) = a.filter(|a| a.inode == p) {
                s.attrs.insert(p, *a);
            }
        }
    }

    /// The cached answer for `name` in `parent`, if the leases are current.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<Cached> {
        let mut s = self.state.lock();
        if !s.current(Instant::now()) {
            return None;
        }
        let r = match s.entries.get(&parent) {
            Some(d) => match d.names.get(name) {
                Some(None) => Some(Cached::Missing),
                Some(Some(c)) => s.attrs.get(c).copied().map(Cached::Found),
                None if d.complete && !is_dot(name) => Some(Cached::Missing),
                None => None,
            },
            None => None,
        };
        match r {
            Some(_) => s.hits += 1,
            None => s.misses += 1,
        }
        r
    }

    /// Keeps the attributes of an unleased lookup answer (taken with `t`) for
    /// the one GETATTR of the same inode the kernel sends right after the
    /// LOOKUP of a path walk (the kernel caches nothing itself while leases
    /// are in use, so a stat is a LOOKUP and a GETATTR): that GETATTR is part
    /// of the same system call, and is answered with what the master said a
    /// moment before, within [`RECENT`].
    pub fn note_unleased(&self, t: Ticket, attr: &Attr) {
        let mut s = self.state.lock();
        if !s.fresh(t, &[attr.inode]) {
            return;
        }
        if s.recent.len() >= MAX_RECENT {
            s.recent.clear();
        }
        s.recent.insert(attr.inode, (Instant::now(), *attr));
    }

    /// The cached attributes of `ino`, if the leases are current, or those of
    /// a lookup answer just given (once).
    pub fn getattr(&self, ino: u64) -> Option<Attr> {
        let mut s = self.state.lock();
        let now = Instant::now();
        if let Some((at, a)) = s.recent.remove(&ino) {
            if now.saturating_duration_since(at) < RECENT {
                s.hits += 1;
                return Some(a);
            }
        }
        if !s.current(now) {
            return None;
        }
        let r = s.attrs.get(&ino).copied();
        match r {
            Some(_) => s.hits += 1,
            None => s.misses += 1,
        }
        r
    }

    /// Stores a leased lookup answer (`None`: the name does not exist) taken
    /// with `t`. False when it was not stored.
    pub fn put_lookup(&self, t: Ticket, parent: u64, name: &[u8], attr: Option<&Attr>) -> bool {
        let mut s = self.state.lock();
        let inodes = [parent, attr.map_or(parent, |a| a.inode)];
        if !s.fresh(t, &inodes) || !s.current(Instant::now()) {
            return false;
        }
        if s.names >= MAX_NAMES {
            s.drop_all();
            return false;
        }
        s.put_name(parent, name, attr.map(|a| a.inode));
        if let Some(a) = attr {
            s.attrs.insert(a.inode, *a);
        }
        true
    }

    /// Stores leased attributes taken with `t`. False when not stored.
    pub fn put_attr(&self, t: Ticket, attr: &Attr) -> bool {
        let mut s = self.state.lock();
        if !s.fresh(t, &[attr.inode]) || !s.current(Instant::now()) {
            return false;
        }
        if s.attrs.len() >= MAX_NAMES {
            s.drop_all();
            return false;
        }
        s.attrs.insert(attr.inode, *attr);
        true
    }

    /// Stores a directory listing with attributes taken with `t` (one ticket
    /// for all its pages): `entries` are the (name, attributes) the master
    /// leased one by one, `complete` says the master leased the directory's
    /// entries with every page and every listed entry is in `entries`, so a
    /// name not listed does not exist. Nothing of the directory is stored
    /// when it was invalidated during the listing, and no entry whose inode
    /// was; the count of entries stored is returned. A listing larger than
    /// the cache stores nothing; one that does not fit beside what is
    /// cached first makes room by dropping the rest.
    pub fn put_listing(
        &self,
        t: Ticket,
        dir: u64,
        parent: u64,
        entries: &[(&[u8], &Attr)],
        complete: bool,
    ) -> usize {
        let mut s = self.state.lock();
        if !s.fresh(t, &[dir]) || !s.current(Instant::now()) || entries.len() > MAX_NAMES {
            return 0;
        }
        if s.names + entries.len() > MAX_NAMES || s.attrs.len() + entries.len() > MAX_NAMES {
            // Forgetting answers makes nothing stale: no ticket is voided.
            s.entries.clear();
            s.attrs.clear();
            s.names = 0;
        }
        let mut stored = 0;
        for (name, a) in entries {
            if is_dot(name) || !s.fresh(t, &[a.inode]) {
                continue;
            }
            s.put_name(dir, name, Some(a.inode));
            s.attrs.insert(a.inode, **a);
            stored += 1;
        }
        if complete && stored == entries.len() {
            let d = s.entries.entry(dir).or_default();
            d.complete = true;
            d.parent = parent;
        }
        stored
    }

    /// The whole listing of directory `dir` from the cache, with every
    /// entry's attributes, and its parent, when the leases are current, the
    /// directory is complete here (made by this client or listed whole under
    /// a lease, and nobody changed it since: the master breaks the lease
    /// before acknowledging a change by anyone else), its parent is known and
    /// every entry's attributes are cached. Entries come in the master's
    /// order (by name, bytewise), "." and ".." left out. None: ask the master.
    pub fn listing(&self, dir: u64) -> Option<(Vec<DirEntry>, u64)> {
        let mut s = self.state.lock();
        if !s.current(Instant::now()) {
            return None;
        }
        let listed = match s.entries.get(&dir) {
            Some(d) if d.complete && d.parent != 0 => {
                let mut out = Vec::with_capacity(d.names.len());
                let mut whole = true;
                for (name, child) in &d.names {
                    let Some(ino) = child else { continue };
                    if is_dot(name) {
                        continue;
                    }
                    let Some(a) = s.attrs.get(ino) else {
                        whole = false;
                        break;
                    };
                    out.push(DirEntry {
                        name: name.to_vec(),
                        inode: *ino,
                        kind: a.kind,
                        attr: Some(*a),
                        leased: true,
                    });
                }
                whole.then_some((out, d.parent))
            }
            _ => None,
        };
        match listed {
            Some((mut out, parent)) => {
                s.hits += 1;
                drop(s);
                out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                Some((out, parent))
            }
            None => {
                s.misses += 1;
                None
            }
        }
    }

    /// Answers from the cache and misses so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.hits, s.misses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            inode: ino,
            size,
            ..Default::default()
        }
    }

    fn live() -> MetaCache {
        let c = MetaCache::new();
        c.stream_opened(Instant::now() + Duration::from_secs(60));
        c
    }

    #[test]
    fn nothing_is_cached_without_a_stream() {
        let c = MetaCache::new();
        let t = c.ticket();
        assert!(!c.put_lookup(t, 1, b"a", Some(&attr(2, 0))));
        assert!(!c.put_attr(t, &attr(2, 0)));
        assert_eq!(c.lookup(1, b"a"), None);
        assert!(!c.supported());
    }

    #[test]
    fn positive_and_negative_entries_are_answered() {
        let c = live();
        let t = c.ticket();
        assert!(c.put_lookup(t, 1, b"a", Some(&attr(2, 5))));
        assert!(c.put_lookup(t, 1, b"b", None));
        assert_eq!(c.lookup(1, b"a"), Some(Cached::Found(attr(2, 5))));
        assert_eq!(c.lookup(1, b"b"), Some(Cached::Missing));
        assert_eq!(c.lookup(1, b"c"), None);
        assert_eq!(c.getattr(2), Some(attr(2, 5)));
    }

    #[test]
    fn an_answer_overtaken_by_a_break_is_not_stored() {
        let c = live();
        let t = c.ticket();
        c.invalidate(&[2]);
        assert!(!c.put_lookup(t, 1, b"a", Some(&attr(2, 5))));
        assert!(!c.put_attr(t, &attr(2, 5)));
        assert_eq!(c.lookup(1, b"a"), None);
        c.invalidate(&[0]);
        assert!(
            !c.put_attr(t, &attr(9, 5)),
            "everything dropped: no old answer is stored"
        );
        let t = c.ticket();
        c.invalidate(&[3]);
        assert!(
            c.put_attr(t, &attr(2, 5)),
            "another inode's break does not matter"
        );
    }

    #[test]
    fn a_break_drops_a_directory_and_an_inode() {
        let c = live();
        let t = c.ticket();
        c.put_lookup(t, 1, b"a", Some(&attr(2, 5)));
        c.put_lookup(t, 3, b"x", Some(&attr(4, 1)));
        c.invalidate(&[1]);
        assert_eq!(c.lookup(1, b"a"), None, "the directory's entries went");
        assert_eq!(
            c.getattr(2),
            Some(attr(2, 5)),
            "its child's attributes stay"
        );
        c.invalidate(&[4]);
        assert_eq!(c.lookup(3, b"x"), None, "a name without attributes misses");
        c.invalidate(&[0]);
        assert_eq!(c.getattr(2), None, "inode 0 drops everything");
    }

    #[test]
    fn own_changes_update_or_drop_what_they_touch() {
        let c = live();
        let t = c.ticket();
        c.put_lookup(t, 1, b"a", Some(&attr(2, 5)));
        c.put_lookup(t, 1, b"b", None);
        c.put_lookup(t, 9, b"z", Some(&attr(8, 5)));
        // A leased create: the new entry and the directory's attributes.
        let t = c.ticket();
        c.changed_entry(
            t,
            1,
            b"b",
            Some(&attr(3, 0)),
            Some(&attr(1, 0)),
            true,
            false,
        );
        assert_eq!(c.lookup(1, b"b"), Some(Cached::Found(attr(3, 0))));
        assert_eq!(c.getattr(1), Some(attr(1, 0)));
        // An unleased removal: dropped, not updated.
        let t = c.ticket();
        c.changed_entry(t, 1, b"a", None, Some(&attr(1, 0)), false, false);
        assert_eq!(c.getattr(2), None);
        assert_eq!(c.getattr(1), None, "the parent's attributes went");
        assert_eq!(c.lookup(1, b"a"), None);
        // A call overtaken by an invalidation stores nothing.
        let t = c.ticket();
        c.invalidate(&[1]);
        c.changed_entry(t, 1, b"c", Some(&attr(4, 0)), None, true, false);
        assert_eq!(c.lookup(1, b"c"), None);
        // An invalidation of an unrelated inode does not.
        let t = c.ticket();
        c.invalidate(&[77]);
        c.changed_entry(t, 1, b"e", Some(&attr(5, 0)), None, true, false);
        assert_eq!(c.lookup(1, b"e"), Some(Cached::Found(attr(5, 0))));
        assert_eq!(c.getattr(8), Some(attr(8, 5)), "unrelated entries stay");
        // A removed name not known here: its inode may be cached by number.
        c.changed_entry(c.ticket(), 1, b"unknown", None, None, true, false);
        assert_eq!(c.getattr(8), None);
    }

    #[test]
    fn a_whole_directory_is_listed_from_the_cache_until_anything_in_it_is_unknown() {
        let c = live();
        let t = c.ticket();
        c.changed_entry(t, 1, b"d", Some(&attr(5, 0)), Some(&attr(1, 0)), true, true);
        assert_eq!(
            c.listing(5),
            Some((vec![], 1)),
            "made here: empty, parent known"
        );
        for (name, ino) in [(&b"zz"[..], 7), (b"a", 6), (b"m", 8)] {
            let t = c.ticket();
            c.changed_entry(
                t,
                5,
                name,
                Some(&attr(ino, 0)),
                Some(&attr(5, 0)),
                true,
                false,
            );
        }
        let t = c.ticket();
        c.changed_entry(t, 5, b"m", None, Some(&attr(5, 0)), true, false);
        let (listed, parent) = c.listing(5).expect("complete");
        assert_eq!(parent, 1);
        let names: Vec<(&[u8], u64)> = listed.iter().map(|e| (&e.name[..], e.inode)).collect();
        assert_eq!(
            names,
            vec![(&b"a"[..], 6), (b"zz", 7)],
            "by name, the removed one gone"
        );
        assert!(listed
            .iter()
            .all(|e| e.attr.is_some_and(|a| a.inode == e.inode)));
        // An entry whose attributes are not cached: ask the master.
        c.invalidate(&[7]);
        assert_eq!(c.listing(5), None);
        assert!(c.put_attr(c.ticket(), &attr(7, 3)));
        assert_eq!(c.listing(5).map(|(l, _)| l.len()), Some(2));
        // Another session changed the directory: its lease was broken.
        c.invalidate(&[5]);
        assert_eq!(c.listing(5), None);
        // A listing leased whole is answered too; one with no parent is not.
        let (a, b) = (attr(6, 0), attr(7, 0));
        assert_eq!(
            c.put_listing(c.ticket(), 5, 1, &[(b"a", &a), (b"b", &b)], true),
            2
        );
        assert_eq!(c.listing(5).map(|(l, p)| (l.len(), p)), Some((2, 1)));
        assert_eq!(c.put_listing(c.ticket(), 9, 0, &[(b"a", &a)], true), 1);
        assert_eq!(c.listing(9), None);
        // Leases lapsed: nothing.
        c.reset();
        assert_eq!(c.listing(5), None);
    }

    #[test]
    fn a_directory_made_here_answers_every_name_until_broken() {
        let c = live();
        let t = c.ticket();
        c.changed_entry(t, 1, b"d", Some(&attr(5, 0)), Some(&attr(1, 0)), true, true);
        assert_eq!(c.lookup(5, b"anything"), Some(Cached::Missing));
        assert_eq!(c.lookup(5, b".."), None, "dot names are never guessed");
        let t = c.ticket();
        c.changed_entry(
            t,
            5,
            b"f",
            Some(&attr(6, 0)),
            Some(&attr(5, 0)),
            true,
            false,
        );
        assert_eq!(c.lookup(5, b"f"), Some(Cached::Found(attr(6, 0))));
        assert_eq!(c.lookup(5, b"g"), Some(Cached::Missing), "still complete");
        // A rename within it keeps it complete.
        let t = c.ticket();
        c.renamed(t, 5, b"f", 5, b"g", Some(&attr(5, 0)), None, true);
        assert_eq!(c.lookup(5, b"f"), Some(Cached::Missing));
        assert_eq!(c.lookup(5, b"g"), None, "the moved inode's attributes went");
        assert!(c.put_attr(c.ticket(), &attr(6, 0)));
        assert_eq!(c.lookup(5, b"g"), Some(Cached::Found(attr(6, 0))));
        // Another session changed it.
        c.invalidate(&[5]);
        assert_eq!(c.lookup(5, b"h"), None);
    }

    #[test]
    fn a_leased_listing_answers_its_names_and_their_absence() {
        let c = live();
        let (a, b) = (attr(2, 5), attr(3, 7));
        let t = c.ticket();
        assert_eq!(c.put_listing(t, 1, 1, &[(b"a", &a), (b"b", &b)], true), 2);
        assert_eq!(c.lookup(1, b"a"), Some(Cached::Found(a)));
        assert_eq!(c.getattr(3), Some(b));
        assert_eq!(c.lookup(1, b"c"), Some(Cached::Missing), "complete");
        assert_eq!(c.lookup(1, b".."), None);
        // Another session adds a name: the directory's entries go, the
        // children's attributes stay.
        c.invalidate(&[1]);
        assert_eq!(c.lookup(1, b"c"), None);
        assert_eq!(c.getattr(2), Some(a));
        // An incomplete listing (an entry was not leased) answers only
        // what it has.
        let t = c.ticket();
        assert_eq!(c.put_listing(t, 1, 1, &[(b"a", &a)], false), 1);
        assert_eq!(c.lookup(1, b"a"), Some(Cached::Found(a)));
        assert_eq!(c.lookup(1, b"c"), None);
    }

    #[test]
    fn a_listing_overtaken_by_a_break_stores_nothing_stale() {
        let c = live();
        let (a, b) = (attr(2, 5), attr(3, 7));
        // The directory changed during the listing: nothing of it.
        let t = c.ticket();
        c.invalidate(&[1]);
        assert_eq!(c.put_listing(t, 1, 1, &[(b"a", &a), (b"b", &b)], true), 0);
        assert_eq!(c.lookup(1, b"a"), None);
        assert_eq!(c.getattr(2), None);
        // One entry changed during the listing: all but that one, and the
        // directory is not complete.
        let t = c.ticket();
        c.invalidate(&[3]);
        assert_eq!(c.put_listing(t, 1, 1, &[(b"a", &a), (b"b", &b)], true), 1);
        assert_eq!(c.lookup(1, b"a"), Some(Cached::Found(a)));
        assert_eq!(c.lookup(1, b"b"), None);
        assert_eq!(c.getattr(3), None);
        assert_eq!(c.lookup(1, b"zz"), None, "not complete");
        // Everything dropped during the listing, or no current leases.
        let t = c.ticket();
        c.invalidate(&[0]);
        assert_eq!(c.put_listing(t, 1, 1, &[(b"a", &a)], true), 0);
        let idle = MetaCache::new();
        assert_eq!(
            idle.put_listing(idle.ticket(), 1, 1, &[(b"a", &a)], true),
            0
        );
        // Dot names are never stored.
        assert_eq!(c.put_listing(c.ticket(), 1, 1, &[(b"..", &a)], true), 0);
        assert_eq!(c.lookup(1, b".."), None);
    }

    #[test]
    fn a_listing_larger_than_the_cache_is_not_stored_and_a_full_cache_makes_room() {
        let c = live();
        let names: Vec<Vec<u8>> = (0..=MAX_NAMES)
            .map(|i| i.to_string().into_bytes())
            .collect();
        let attrs: Vec<Attr> = (0..=MAX_NAMES as u64).map(|i| attr(i + 10, 0)).collect();
        let all: Vec<(&[u8], &Attr)> = names.iter().map(|n| n.as_slice()).zip(&attrs).collect();
        assert_eq!(c.put_listing(c.ticket(), 1, 1, &all, true), 0, "too large");
        let most = &all[..MAX_NAMES - 1];
        assert_eq!(c.put_listing(c.ticket(), 1, 1, most, true), MAX_NAMES - 1);
        assert_eq!(c.put_listing(c.ticket(), 2, 1, &all[..2], true), 2);
        assert_eq!(c.lookup(2, b"1"), Some(Cached::Found(attrs[1])));
        assert_eq!(c.lookup(1, b"5"), None, "room was made");
    }

    #[test]
    fn a_rename_of_unknown_names_drops_everything() {
        let c = live();
        c.put_attr(c.ticket(), &attr(8, 1));
        c.renamed(c.ticket(), 1, b"x", 1, b"y", None, None, true);
        assert_eq!(c.getattr(8), None);
    }

    #[test]
    fn expiry_and_reset_stop_answers() {
        let c = MetaCache::new();
        let now = Instant::now();
        c.stream_opened(now + Duration::from_millis(1));
        let t = c.ticket();
        c.put_attr(t, &attr(2, 5));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.getattr(2), None, "lapsed leases answer nothing");
        c.stream_opened(Instant::now() + Duration::from_secs(60));
        let t = c.ticket();
        assert!(c.put_attr(t, &attr(2, 5)));
        c.reset();
        assert_eq!(c.getattr(2), None);
        assert!(
            !c.put_attr(c.ticket(), &attr(2, 5)),
            "no stream after a reset"
        );
        assert!(c.supported(), "the master still supports leases");
    }

    #[test]
    fn an_unleased_answer_serves_one_getattr() {
        let c = MetaCache::new();
        c.note_unleased(c.ticket(), &attr(4, 9));
        assert_eq!(c.getattr(4), Some(attr(4, 9)));
        assert_eq!(c.getattr(4), None, "once");
        c.note_unleased(c.ticket(), &attr(4, 9));
        c.invalidate(&[4]);
        assert_eq!(c.getattr(4), None, "a break drops it");
        let t = c.ticket();
        c.invalidate(&[4]);
        c.note_unleased(t, &attr(4, 9));
        assert_eq!(c.getattr(4), None, "overtaken by an invalidation");
    }

    #[test]
    fn renewals_only_extend() {
        let c = MetaCache::new();
        let now = Instant::now();
        c.renewed(now, Duration::from_secs(60));
        assert_eq!(c.getattr(1), None, "a renewal does not open a stream");
        c.stream_opened(now + Duration::from_secs(10));
        c.renewed(now, Duration::from_secs(1));
        let t = c.ticket();
        assert!(c.put_attr(t, &attr(1, 1)));
        assert!(c.getattr(1).is_some(), "an older renewal does not shorten");
    }
}
