//! A bounded cache of open chunk files, least recently used out first, so that
//! reads and writes of a chunk do not open and close its file every time.
//!
//! An entry is keyed by chunk id and remembers the disk its file was opened on.
//! The store drops a chunk's entry before anything replaces, deletes or moves
//! that chunk's file (always under the chunk's exclusive lock), so an entry
//! always refers to the file now at the chunk's path: a read through it never
//! returns the bytes of a file that was replaced. Changes made in place (writes,
//! `set_len`, a new version in the header) go through the same open file and
//! need no invalidation.
//!
//! Files are handed out as `Arc<File>`: evicting an entry while an operation
//! still uses its file only closes the file when that operation is done.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::Arc;

use parking_lot::Mutex;

/// Default number of chunk files kept open.
pub const DEFAULT_OPEN_FILES: usize = 1024;

/// How many chunk files to keep open when `wanted` are asked for: raises the
/// process's soft limit on open files to its hard limit, then keeps at most half
/// of the limit for chunk files (sockets and other files need the rest).
pub fn fd_budget(wanted: usize) -> usize {
    // SAFETY: getrlimit/setrlimit only read and write the plain struct given.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return wanted;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let cap = usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX);
    if wanted > cap {
        tracing::warn!(
            wanted,
            kept = cap,
            limit = lim.rlim_cur,
            "--open-files is more than half the limit on open files; keeping fewer chunk files open (raise the limit with ulimit -n)"
        );
        return cap;
    }
    wanted
}

struct Entry {
    disk: u32,
    file: Arc<File>,
    writable: bool,
    tick: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Last use (tick) -> chunk id, oldest first.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl Inner {
    fn remove(&mut self, chunk_id: u64) -> Option<Entry> {
        let e = self.entries.remove(&chunk_id)?;
        self.order.remove(&e.tick);
        Some(e)
    }
}

/// Open chunk files, at most `capacity` of them (0 keeps none open).
pub struct OpenFiles {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl OpenFiles {
    /// An empty cache holding at most `capacity` files.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Number of files open now.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// True when no file is kept open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The open file of `chunk_id` on `disk`, if cached and (when `write`)
    /// opened for writing; marks it as just used. An entry for another disk is
    /// dropped.
    pub fn get(&self, chunk_id: u64, disk: u32, write: bool) -> Option<Arc<File>> {
        let mut g = self.inner.lock();
        let inner = &mut *g;
        let e = inner.entries.get_mut(&chunk_id)?;
        if e.disk != disk {
            inner.remove(chunk_id);
            return None;
        }
        if write && !e.writable {
            return None;
        }
        inner.tick += 1;
        inner.order.remove(&e.tick);
        e.tick = inner.tick;
        inner.order.insert(e.tick, chunk_id);
        Some(e.file.clone())
    }

    /// Keeps `file` open as the file of `chunk_id` on `disk` (replacing any
    /// previous entry), closing the least recently used files beyond the bound.
    pub fn insert(&self, chunk_id: u64, disk: u32, file: Arc<File>, writable: bool) {
        if self.capacity == 0 {
            return;
        }
        let mut g = self.inner.lock();
        let inner = &mut *g;
        inner.remove(chunk_id);
        inner.tick += 1;
        let tick = inner.tick;
        inner.entries.insert(
            chunk_id,
            Entry {
                disk,
                file,
                writable,
                tick,
            },
        );
        inner.order.insert(tick, chunk_id);
        while inner.entries.len() > self.capacity {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
    }

    /// Forgets (and closes, once no operation uses it) the file of `chunk_id`.
    pub fn remove(&self, chunk_id: u64) {
        self.inner.lock().remove(chunk_id);
    }

    /// Forgets every file (to give file descriptors back when the process runs
    /// out of them).
    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.entries.clear();
        g.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<File> {
        Arc::new(tempfile::tempfile().expect("temporary file"))
    }

    #[test]
    fn bounded_and_least_recently_used_out_first() {
        let c = OpenFiles::new(2);
        c.insert(1, 0, file(), true);
        c.insert(2, 0, file(), true);
        assert!(c.get(1, 0, false).is_some()); // 2 is now the oldest
        c.insert(3, 0, file(), true);
        assert_eq!(c.len(), 2);
        assert!(c.get(2, 0, false).is_none());
        assert!(c.get(1, 0, true).is_some());
        assert!(c.get(3, 0, true).is_some());
    }

    #[test]
    fn other_disk_read_only_removed_and_disabled() {
        let c = OpenFiles::new(4);
        c.insert(1, 0, file(), false);
        assert!(c.get(1, 0, true).is_none(), "read-only entry for a write");
        assert!(c.get(1, 0, false).is_some());
        assert!(c.get(1, 1, false).is_none(), "entry of another disk");
        assert!(c.is_empty(), "the other disk's entry is dropped");
        c.insert(2, 0, file(), true);
        c.remove(2);
        assert!(c.get(2, 0, false).is_none());
        c.insert(3, 0, file(), true);
        c.clear();
        assert!(c.is_empty());
        let off = OpenFiles::new(0);
        off.insert(1, 0, file(), true);
        assert!(off.is_empty());
    }
}
