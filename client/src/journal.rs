//! The write journal: every write the mount acknowledges is appended to the
//! state file (a memfd held with the FUSE descriptor by the keeper of the
//! connection) before the kernel hears it succeeded, and freed once a flush,
//! fsync, release or truncate of its inode has made it durable. A daemon that
//! takes over a connection replays the records still there before serving, so
//! data acknowledged to an application but still in a SIGKILLed daemon's
//! write-behind buffer is not lost, and an fsync resent to the new daemon only
//! succeeds for data that really reached the chunkservers.
//!
//! Layout, after the session record ([`crate::takeover::STATE_BYTES`]): records
//! aligned to [`PAGE`], each a [`HEADER`]-byte header (magic, length, inode,
//! offset, sequence number) followed by the data. The data is written first and
//! the header last, so a record torn by a crash has no header and is skipped (its
//! write was never acknowledged, so the kernel resends it). Freed records are
//! punched out (their pages read as zeros); when no record is live the file is
//! cut back to the record area's start.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use parking_lot::Mutex;

use crate::takeover::STATE_BYTES;

/// Records are aligned to this.
pub const PAGE: u64 = 4096;
/// Size of a record header.
pub const HEADER: u64 = 32;
const MAGIC: u32 = 0x314a_4c41; // "ALJ1"
/// Live journal bytes past which a writer flushes its own file (like the
/// write-behind cap), so the journal stays bounded.
pub const SOFT_CAP: u64 = 64 << 20;

/// A live record.
#[derive(Debug, Clone, Copy)]
struct Live {
    pos: u64,
    pages: u64,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    end: u64,
    seq: u64,
    live: HashMap<u64, Vec<Live>>,
    live_bytes: u64,
}

/// The write journal in the state file.
#[derive(Debug)]
pub struct Journal {
    file: File,
    inner: Mutex<Inner>,
}

/// A journalled write found in the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Alces inode (not the FUSE node id).
    pub inode: u64,
    /// File offset.
    pub offset: u64,
    /// Sequence number (order of acknowledgement).
    pub seq: u64,
    /// The bytes written.
    pub data: Vec<u8>,
}

fn pages_of(len: u64) -> u64 {
    (HEADER + len).div_ceil(PAGE)
}

impl Journal {
    /// A journal over `file` (a duplicate of the state file); starts empty:
    /// [`Self::scan`] what a previous daemon left first.
    pub fn new(file: File) -> io::Result<Self> {
        file.set_len(STATE_BYTES)?;
        Ok(Self {
            file,
            inner: Mutex::new(Inner {
                end: STATE_BYTES,
                ..Default::default()
            }),
        })
    }

    /// Records left in `file` by a previous daemon, in acknowledgement order.
    pub fn scan(file: &File) -> io::Result<Vec<Record>> {
        let size = file.metadata()?.len();
        let mut out = Vec::new();
        let mut pos = STATE_BYTES;
        let mut h = [0u8; HEADER as usize];
        while pos + HEADER <= size {
            file.read_exact_at(&mut h, pos)?;
            let magic = u32::from_le_bytes(h[0..4].try_into().unwrap_or_default());
            let len = u64::from(u32::from_le_bytes(h[4..8].try_into().unwrap_or_default()));
            if magic != MAGIC || pos + HEADER + len > size {
                pos += PAGE;
                continue;
            }
            let inode = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
            let offset = u64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
            let seq = u64::from_le_bytes(h[24..32].try_into().unwrap_or_default());
            let mut data = vec![0u8; len as usize];
            file.read_exact_at(&mut data, pos + HEADER)?;
            out.push(Record {
                inode,
                offset,
                seq,
                data,
            });
            pos += pages_of(len) * PAGE;
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// The sequence number the next record gets: a flush that starts now makes
    /// durable every record below it.
    pub fn mark(&self) -> u64 {
        self.inner.lock().seq
    }

    /// Live bytes in the journal.
    pub fn live_bytes(&self) -> u64 {
        self.inner.lock().live_bytes
    }

    /// Appends a write of `data` at `offset` of `inode`; returns when it is in
    /// the state file.
    pub fn append(&self, inode: u64, offset: u64, data: &[u8]) -> io::Result<()> {
        let len = u32::try_from(data.len()).map_err(|_| io::Error::other("write too large"))?;
        let mut g = self.inner.lock();
        let pos = g.end;
        let pages = pages_of(u64::from(len));
        let seq = g.seq;
        self.file.write_all_at(data, pos + HEADER)?;
        let mut h = [0u8; HEADER as usize];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&len.to_le_bytes());
        h[8..16].copy_from_slice(&inode.to_le_bytes());
        h[16..24].copy_from_slice(&offset.to_le_bytes());
        h[24..32].copy_from_slice(&seq.to_le_bytes());
        self.file.write_all_at(&h, pos)?;
        g.end = pos + pages * PAGE;
        g.seq += 1;
        g.live_bytes += pages * PAGE;
        g.live
            .entry(inode)
            .or_default()
            .push(Live { pos, pages, seq });
        Ok(())
    }

    /// Frees the records of `inode` numbered below `mark` (a flush, fsync,
    /// release or truncate that began at `mark` succeeded).
    pub fn settle(&self, inode: u64, mark: u64) {
        let mut g = self.inner.lock();
        let Some(list) = g.live.get_mut(&inode) else {
            return;
        };
        let (done, keep): (Vec<Live>, Vec<Live>) = list.drain(..).partition(|l| l.seq < mark);
        *list = keep;
        if list.is_empty() {
            g.live.remove(&inode);
        }
        for l in &done {
            g.live_bytes -= l.pages * PAGE;
        }
        if g.live.is_empty() {
            // Nothing live: start again at the beginning.
            if self.file.set_len(STATE_BYTES).is_ok() {
                g.end = STATE_BYTES;
            }
            return;
        }
        for l in done {
            // SAFETY: plain fallocate on the open state file.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    l.pos as libc::off_t,
                    (l.pages * PAGE) as libc::off_t,
                )
            };
            if r != 0 {
                // Without hole punching the header must still go, or a later
                // daemon would replay old data.
                let _ = self.file.write_all_at(&[0u8; HEADER as usize], l.pos);
            }
        }
    }

    /// Forgets everything (the records were replayed and made durable).
    pub fn clear(&self) -> io::Result<()> {
        let mut g = self.inner.lock();
        self.file.set_len(STATE_BYTES)?;
        *g = Inner {
            end: STATE_BYTES,
            seq: g.seq,
            ..Default::default()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_survive_until_settled() {
        let f = tempfile::tempfile().unwrap();
        let j = Journal::new(f.try_clone().unwrap()).unwrap();
        j.append(7, 0, b"hello").unwrap();
        let m = j.mark();
        j.append(8, 100, &vec![1u8; 5000]).unwrap();
        j.append(7, 5, b" world").unwrap();
        let r = Journal::scan(&f).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].inode, r[0].offset, &r[0].data[..]),
            (7, 0, &b"hello"[..])
        );
        assert_eq!(r[1].data.len(), 5000);
        assert_eq!(r[2].seq, 2);
        // A flush of inode 7 that began before its second write frees the first only.
        j.settle(7, m);
        let r = Journal::scan(&f).unwrap();
        assert_eq!(r.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        j.settle(8, j.mark());
        j.settle(7, j.mark());
        assert!(Journal::scan(&f).unwrap().is_empty());
        assert_eq!(f.metadata().unwrap().len(), STATE_BYTES);
        assert_eq!(j.live_bytes(), 0);
    }

    #[test]
    fn a_record_without_its_header_is_skipped() {
        let f = tempfile::tempfile().unwrap();
        let j = Journal::new(f.try_clone().unwrap()).unwrap();
        j.append(1, 0, b"kept").unwrap();
        j.append(2, 0, b"torn").unwrap();
        // The second record's header never made it.
        f.write_all_at(&[0u8; HEADER as usize], STATE_BYTES + PAGE)
            .unwrap();
        let r = Journal::scan(&f).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].data, b"kept");
    }
}
