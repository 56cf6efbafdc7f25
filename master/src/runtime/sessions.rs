//! Client sessions: leases, the root and mode of each session, and which inodes
//! each session holds open (an unlinked file lives while it is open).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// One client session.
#[derive(Debug)]
pub struct Session {
    /// Root inode of the session (its subdirectory).
    pub root: u64,
    /// Mutations are refused with EROFS.
    pub read_only: bool,
    /// The credential the session was opened with (None: the cluster secret).
    pub credential: Option<u64>,
    /// Client-chosen name, for status.
    pub client_name: String,
    /// Client host name, for status.
    pub hostname: String,
    /// Last registration or renewal.
    pub renewed: Instant,
    /// Open count per inode.
    pub open: HashMap<u64, u32>,
    /// Credential sessions: the accesses (4 read, 2 write) the permission
    /// checks allowed at the opens of each inode still open, for its chunk
    /// calls, its reopens and its locks (`domain::permissions`). Kept by a
    /// takeover, and by a reconnect for the inodes the client still lists;
    /// never made from a client's list of opens; in memory only (a
    /// restarted master has none).
    pub granted: HashMap<u64, u8>,
    /// What a resume must present: 16 random bytes given at registration.
    /// `None` for a session adopted after a restart from a client that
    /// presented none (an older client), which any resume may continue.
    pub secret: Option<[u8; SECRET_BYTES]>,
}

/// Bytes of a session secret.
pub const SECRET_BYTES: usize = 16;

/// How many ended session ids a master remembers (to refuse their resume
/// with a clear error rather than adopting them as after a restart).
const ENDED_KEPT: usize = 65536;

/// Why a resume of a session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The session was closed or its lease expired on this master.
    Ended,
    /// The session is live and the secret does not match.
    Secret,
}

impl Session {
    /// Whether `presented` may resume this session.
    pub fn admits(&self, presented: &[u8]) -> bool {
        match &self.secret {
            None => true,
            Some(s) => {
                // Constant time in the secret's content.
                presented.len() == s.len()
                    && presented
                        .iter()
                        .zip(s.iter())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0
            }
        }
    }
}

/// Every session and the global open counts.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Sessions by id.
    pub map: HashMap<u64, Session>,
    open_count: HashMap<u64, u32>,
    /// Sessions closed or expired on this master, oldest first (bounded).
    ended: VecDeque<u64>,
    ended_set: HashSet<u64>,
}

impl Sessions {
    /// True when some session holds `ino` open.
    pub fn is_open(&self, ino: u64) -> bool {
        self.open_count.contains_key(&ino)
    }

    /// Marks `ino` open once more in session `sid`.
    pub fn open(&mut self, sid: u64, ino: u64) {
        if let Some(s) = self.map.get_mut(&sid) {
            *s.open.entry(ino).or_insert(0) += 1;
            *self.open_count.entry(ino).or_insert(0) += 1;
        }
    }

    /// Adds `mask` to what session `sid` was granted on `ino`, when it holds
    /// the inode open.
    pub fn grant(&mut self, sid: u64, ino: u64, mask: u8) {
        if let Some(s) = self.map.get_mut(&sid) {
            if s.open.contains_key(&ino) {
                *s.granted.entry(ino).or_insert(0) |= mask;
            }
        }
    }

    /// Releases one open of `ino` in `sid`; true when no session holds it anymore.
    pub fn release(&mut self, sid: u64, ino: u64) -> bool {
        let Some(s) = self.map.get_mut(&sid) else {
            return !self.is_open(ino);
        };
        match s.open.get_mut(&ino) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                s.open.remove(&ino);
                s.granted.remove(&ino);
            }
            None => return !self.is_open(ino),
        }
        self.drop_global(ino, 1)
    }

    fn drop_global(&mut self, ino: u64, n: u32) -> bool {
        match self.open_count.get_mut(&ino) {
            Some(c) if *c > n => {
                *c -= n;
                false
            }
            _ => {
                self.open_count.remove(&ino);
                true
            }
        }
    }

    /// Whether a resume of `sid` presenting `secret` is refused, and why.
    pub fn refusal(&self, sid: u64, secret: &[u8]) -> Option<Refusal> {
        match self.map.get(&sid) {
            Some(s) if s.admits(secret) => None,
            Some(_) => Some(Refusal::Secret),
            None if self.ended_set.contains(&sid) => Some(Refusal::Ended),
            None => None,
        }
    }

    /// Records that `sid` ended (closed or expired): a later resume is refused.
    pub fn mark_ended(&mut self, sid: u64) {
        if self.ended_set.insert(sid) {
            self.ended.push_back(sid);
            if self.ended.len() > ENDED_KEPT {
                if let Some(old) = self.ended.pop_front() {
                    self.ended_set.remove(&old);
                }
            }
        }
    }

    /// The inodes session `sid` holds open, one entry per open.
    pub fn opens_of(&self, sid: u64) -> Vec<u64> {
        let mut v = Vec::new();
        if let Some(s) = self.map.get(&sid) {
            for (ino, n) in &s.open {
                v.extend(std::iter::repeat_n(*ino, *n as usize));
            }
        }
        v.sort_unstable();
        v
    }

    /// Closes session `sid`; returns the inodes no session holds open anymore.
    pub fn close(&mut self, sid: u64) -> Vec<u64> {
        let mut freed = Vec::new();
        if let Some(s) = self.map.remove(&sid) {
            for (ino, n) in s.open {
                if self.drop_global(ino, n) {
                    freed.push(ino);
                }
            }
        }
        freed
    }

    /// Closes sessions not renewed within `lease`; returns (closed session ids,
    /// inodes no longer open anywhere).
    pub fn expire(&mut self, now: Instant, lease: Duration) -> (Vec<u64>, Vec<u64>) {
        let stale: Vec<u64> = self
            .map
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.renewed) > lease)
            .map(|(id, _)| *id)
            .collect();
        let mut freed = Vec::new();
        for sid in &stale {
            freed.extend(self.close(*sid));
            self.mark_ended(*sid);
        }
        (stale, freed)
    }
}
