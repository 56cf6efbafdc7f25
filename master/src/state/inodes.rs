//! The inode table: every inode by number, stored densely.
//!
//! Inode numbers are handed out in order (`State::next_inode`), so the table is
//! a vector of fixed-size pages indexed by number instead of a hash map: an
//! inode costs its own size and nothing for a key, buckets or spare capacity
//! (a hash map of a million inodes keeps two million buckets). A page whose
//! inodes are all gone is freed, so create/delete churn does not accumulate
//! memory. Numbers far beyond the dense range (only a corrupt or hostile
//! snapshot or record would carry one) go to a small side map, so any `u64`
//! still works.

use std::collections::HashMap;

use crate::state::inode::Inode;

/// Inodes per page.
const PAGE: usize = 1024;

/// How far past the current pages an inode number may be and still be stored
/// densely; beyond that it goes to the side map.
const DENSE_SLACK: u64 = 1 << 24;

struct Page {
    slots: Vec<Option<Inode>>,
    used: usize,
}

impl Page {
    fn new() -> Box<Self> {
        let mut slots = Vec::with_capacity(PAGE);
        slots.resize_with(PAGE, || None);
        Box::new(Self { slots, used: 0 })
    }
}

impl Clone for Page {
    fn clone(&self) -> Self {
        Self {
            slots: self.slots.clone(),
            used: self.used,
        }
    }
}

/// Every inode by number (see the module documentation).
#[derive(Clone, Default)]
pub struct InodeTable {
    pages: Vec<Option<Box<Page>>>,
    sparse: HashMap<u64, Inode>,
    len: usize,
    /// Inodes changed since the last [`InodeTable::take_touched`], while
    /// tracking is on (the master's table; a metalogger's replica does not
    /// track). Not part of the metadata: ignored by equality and snapshots.
    touched: Option<Vec<u64>>,
}

impl std::fmt::Debug for InodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for InodeTable {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(ino, i)| other.get(&ino) == Some(i))
    }
}

impl Eq for InodeTable {}

fn split(ino: u64) -> (usize, usize) {
    ((ino / PAGE as u64) as usize, (ino % PAGE as u64) as usize)
}

impl InodeTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn dense(&self, ino: u64) -> bool {
        ino < (self.pages.len() as u64) * PAGE as u64 + DENSE_SLACK
    }

    /// The inode `ino`.
    pub fn get(&self, ino: &u64) -> Option<&Inode> {
        let (p, s) = split(*ino);
        match self.pages.get(p) {
            Some(Some(page)) => page.slots[s].as_ref(),
            _ => self.sparse.get(ino),
        }
    }

    /// Starts noting which inodes change (see [`InodeTable::take_touched`]).
    pub fn track_changes(&mut self) {
        self.touched.get_or_insert_with(Vec::new);
    }

    /// The inodes changed (taken for changing, inserted or removed) since the
    /// last call, when tracking is on; may name an inode more than once, or
    /// one that was only looked at for changing.
    pub fn take_touched(&mut self) -> Vec<u64> {
        match &mut self.touched {
            Some(t) => std::mem::take(t),
            None => Vec::new(),
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(t) = &mut self.touched {
            t.push(ino);
        }
    }

    /// The inode `ino` for changing.
    pub fn get_mut(&mut self, ino: &u64) -> Option<&mut Inode> {
        self.touch(*ino);
        let (p, s) = split(*ino);
        match self.pages.get_mut(p) {
            Some(Some(page)) => page.slots[s].as_mut(),
            _ => self.sparse.get_mut(ino),
        }
    }

    /// True if `ino` exists.
    pub fn contains_key(&self, ino: &u64) -> bool {
        self.get(ino).is_some()
    }

    /// Stores `inode` as `ino`; returns the inode it replaces.
    pub fn insert(&mut self, ino: u64, inode: Inode) -> Option<Inode> {
        self.touch(ino);
        if !self.dense(ino) {
            let old = self.sparse.insert(ino, inode);
            if old.is_none() {
                self.len += 1;
            }
            return old;
        }
        let (p, s) = split(ino);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let page = self.pages[p].get_or_insert_with(Page::new);
        let old = page.slots[s].replace(inode);
        if old.is_none() {
            page.used += 1;
            self.len += 1;
        }
        old
    }

    /// Removes `ino`; frees its page when it was the page's last inode.
    pub fn remove(&mut self, ino: &u64) -> Option<Inode> {
        self.touch(*ino);
        let (p, s) = split(*ino);
        let old = match self.pages.get_mut(p) {
            Some(slot @ Some(_)) => {
                let page = slot.as_mut()?;
                let old = page.slots[s].take();
                if old.is_some() {
                    page.used -= 1;
                    if page.used == 0 {
                        *slot = None;
                    }
                }
                old
            }
            _ => self.sparse.remove(ino),
        };
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Number of inodes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is no inode.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every (number, inode), dense numbers in order, then the others.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Inode)> {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(p, page)| page.as_ref().map(|page| (p, page)))
            .flat_map(|(p, page)| {
                page.slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(s, i)| i.as_ref().map(|i| ((p * PAGE + s) as u64, i)))
            })
            .chain(self.sparse.iter().map(|(k, v)| (*k, v)))
    }

    /// Every inode number (see [`InodeTable::iter`]).
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(k, _)| k)
    }

    /// Every inode (see [`InodeTable::iter`]).
    pub fn values(&self) -> impl Iterator<Item = &Inode> {
        self.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::namespace::State;

    fn inode() -> Inode {
        State::format("c".into(), 1 << 20, 1, 0)
            .inodes
            .get(&1)
            .cloned()
            .unwrap()
    }

    #[test]
    fn insert_get_remove_and_pages_are_freed() {
        let mut t = InodeTable::new();
        for ino in 1..5000u64 {
            assert!(t.insert(ino, inode()).is_none());
        }
        assert_eq!(t.len(), 4999);
        assert!(
            t.insert(7, inode()).is_some(),
            "replacing returns the old one"
        );
        assert_eq!(t.len(), 4999);
        assert!(t.contains_key(&4999) && !t.contains_key(&5000) && !t.contains_key(&0));
        for ino in 1..4096u64 {
            assert!(t.remove(&ino).is_some());
        }
        assert!(t.remove(&1).is_none());
        assert_eq!(t.len(), 904);
        // Pages 0-3 are empty and freed; page 4 still holds inodes.
        assert!(t.pages[..4].iter().all(Option::is_none));
        assert!(t.pages[4].is_some());
        assert_eq!(
            t.keys().collect::<Vec<_>>(),
            (4096..5000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn huge_numbers_go_to_the_side_map() {
        let mut t = InodeTable::new();
        t.insert(3, inode());
        t.insert(u64::MAX, inode());
        t.insert(1 << 60, inode());
        assert_eq!(t.len(), 3);
        assert!(t.pages.len() <= 1, "no dense pages for huge numbers");
        assert!(t.get(&u64::MAX).is_some() && t.get_mut(&(1 << 60)).is_some());
        let mut keys: Vec<u64> = t.keys().collect();
        keys.sort();
        assert_eq!(keys, vec![3, 1 << 60, u64::MAX]);
        assert!(t.remove(&u64::MAX).is_some());
        assert_eq!(t.len(), 2);
        let mut u = InodeTable::new();
        u.insert(1 << 60, inode());
        u.insert(3, inode());
        assert_eq!(t, u, "equality ignores layout");
    }
}
