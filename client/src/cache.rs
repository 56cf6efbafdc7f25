//! The one small cache type of the client: a map with a size cap and an
//! optional time to live, shared by the directory attributes kept after an
//! entry change, the close-to-open check and the mount's extended-attribute
//! answers.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A map of at most about `cap` entries, each stamped with the time it was
/// inserted. With a time to live an entry older than it is never returned.
/// When an insert finds the map over its cap, expired entries are dropped and,
/// if that was not enough, every entry is: a cache miss only costs a call.
pub(crate) struct BoundedCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    cap: usize,
    ttl: Option<Duration>,
}

impl<K: Hash + Eq, V: Clone> BoundedCache<K, V> {
    /// An empty cache of about `cap` entries; `ttl` = `None` keeps entries
    /// until they are replaced, removed or the cache is full.
    pub(crate) fn new(cap: usize, ttl: Option<Duration>) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            cap,
            ttl,
        }
    }

    fn fresh(&self, at: Instant) -> bool {
        self.ttl.is_none_or(|ttl| at.elapsed() < ttl)
    }

    fn make_room(&self, map: &mut HashMap<K, (V, Instant)>) {
        if map.len() <= self.cap {
            return;
        }
        if self.ttl.is_some() {
            map.retain(|_, (_, at)| self.fresh(*at));
        }
        if map.len() > self.cap {
            map.clear();
        }
    }

    /// Stores `value` for `key`; returns the value it replaced, if any was
    /// still fresh.
    pub(crate) fn insert(&self, key: K, value: V) -> Option<V> {
        let mut m = self.map.lock();
        self.make_room(&mut m);
        let old = m.insert(key, (value, Instant::now()))?;
        self.fresh(old.1).then_some(old.0)
    }

    /// Stores `value` for `key` unless `keep_old` says the value already there
    /// (fresh or not) wins over it.
    pub(crate) fn insert_unless(&self, key: K, value: V, keep_old: impl FnOnce(&V) -> bool) {
        let mut m = self.map.lock();
        self.make_room(&mut m);
        if m.get(&key).is_some_and(|(old, _)| keep_old(old)) {
            return;
        }
        m.insert(key, (value, Instant::now()));
    }

    /// The fresh value of `key`; an expired one is dropped.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let mut m = self.map.lock();
        let (v, at) = m.get(key)?;
        if self.fresh(*at) {
            return Some(v.clone());
        }
        m.remove(key);
        None
    }

    /// True when `key` has a fresh value.
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Removes `key` and returns its value if it was fresh (used once).
    pub(crate) fn take(&self, key: &K) -> Option<V> {
        let (v, at) = self.map.lock().remove(key)?;
        self.fresh(at).then_some(v)
    }

    /// Forgets `key`.
    pub(crate) fn remove(&self, key: &K) {
        self.map.lock().remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_entries_are_never_returned() {
        let c = BoundedCache::new(10, Some(Duration::ZERO));
        c.insert(1u64, "a");
        assert_eq!(c.get(&1), None);
        assert!(!c.contains(&1));
        c.insert(2, "b");
        assert_eq!(c.take(&2), None);
        assert_eq!(c.len(), 0, "a stale entry read or taken is dropped");
    }

    #[test]
    fn without_ttl_entries_stay_until_replaced() {
        let c = BoundedCache::new(10, None);
        assert_eq!(c.insert(1u64, (5u64, 7i64)), None);
        assert_eq!(c.insert(1, (5, 7)), Some((5, 7)));
        assert_eq!(c.get(&1), Some((5, 7)));
        c.remove(&1);
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_everything() {
        let c = BoundedCache::new(3, Some(Duration::from_secs(3600)));
        for k in 0..4u64 {
            c.insert(k, k);
        }
        assert_eq!(c.len(), 4, "the cap is checked before an insert");
        c.insert(9, 9);
        assert_eq!(c.len(), 1, "nothing expired, so everything went");
        assert_eq!(c.get(&9), Some(9));

        let short = BoundedCache::new(1, Some(Duration::ZERO));
        short.insert(1u64, 1u64);
        short.insert(2, 2);
        short.insert(3, 3);
        assert!(short.len() <= 2, "expired entries are dropped when full");
    }

    #[test]
    fn insert_unless_keeps_the_winning_old_value() {
        let c = BoundedCache::new(10, Some(Duration::from_secs(3600)));
        c.insert_unless(1u64, 5u64, |_| unreachable!("nothing there yet"));
        c.insert_unless(1, 3, |old| *old > 3);
        assert_eq!(c.get(&1), Some(5));
        c.insert_unless(1, 8, |old| *old > 8);
        assert_eq!(c.get(&1), Some(8));
    }
}
