//! The window of recent changelog records metaloggers resume from, kept encoded.
//!
//! Records are stored in their wire encoding, packed into blocks of
//! [`BLOCK_BYTES`], and the window drops whole blocks from its front. Keeping
//! them as decoded structs would cost one small allocation per name or op and
//! free them in the order records age out: a steady stream of medium-lived
//! allocations interleaved with the namespace's permanent ones, which leaves
//! the allocator's heap fragmented (free but resident memory, as glibc's
//! `malloc_stats` shows after a million creates). A block dropped from the front is
//! reused as the next block at the back, so a full window allocates nothing.

use std::collections::VecDeque;

use alces_proto::pb::ChangelogRecord;
use prost::Message;

/// Bytes of encoded records per block.
pub const BLOCK_BYTES: usize = 256 << 10;

/// One block: consecutive records, encoded back to back.
struct Block {
    /// Version of the first record in the block.
    first: u64,
    /// The encoded records.
    data: Vec<u8>,
    /// Start of each record in `data` (record `i` ends where `i + 1` starts).
    starts: Vec<u32>,
}

impl Block {
    fn bytes(&self) -> usize {
        self.data.capacity() + self.starts.capacity() * std::mem::size_of::<u32>()
    }

    fn record(&self, i: usize) -> &[u8] {
        let start = self.starts[i] as usize;
        let end = self
            .starts
            .get(i + 1)
            .map_or(self.data.len(), |&e| e as usize);
        &self.data[start..end]
    }
}

/// Consecutive committed records, bounded in bytes (see the module documentation).
pub struct RecordWindow {
    /// Version of the first record held (or of the next one when empty).
    first: u64,
    blocks: VecDeque<Block>,
    /// Records held.
    count: usize,
    /// Memory held by `blocks`.
    bytes: usize,
    /// Most bytes held before old blocks are dropped.
    limit: usize,
    /// A dropped block kept for reuse.
    spare: Option<Block>,
}

impl RecordWindow {
    /// An empty window whose next record has version `next_version`, holding at
    /// most `limit` bytes (at least one block, whatever the limit).
    pub fn new(next_version: u64, limit: usize) -> Self {
        Self {
            first: next_version,
            blocks: VecDeque::new(),
            count: 0,
            bytes: 0,
            limit,
            spare: None,
        }
    }

    /// Version of the oldest record held (the next version when empty).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Number of records held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }

    /// Memory held, counted against the limit.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the next record (its version must follow the last one held).
    pub fn push(&mut self, rec: &ChangelogRecord) {
        let len = rec.encoded_len();
        let next = self.first + self.count as u64;
        debug_assert_eq!(rec.version, next, "window records are consecutive");
        let fits = self
            .blocks
            .back()
            .is_some_and(|b| b.data.capacity() - b.data.len() >= len);
        if !fits {
            let mut b = self.spare.take().unwrap_or_else(|| Block {
                first: 0,
                data: Vec::new(),
                starts: Vec::new(),
            });
            b.first = next;
            b.data.clear();
            b.starts.clear();
            // A record larger than a block gets a block of its own size.
            b.data.reserve_exact(BLOCK_BYTES.max(len));
            self.bytes += b.bytes();
            self.blocks.push_back(b);
        }
        let b = self.blocks.back_mut().expect("a block was just ensured");
        let before = b.bytes();
        b.starts.push(b.data.len() as u32);
        rec.encode(&mut b.data)
            .expect("a block has room for the record");
        self.bytes = self.bytes + b.bytes() - before;
        self.count += 1;
        while self.bytes > self.limit && self.blocks.len() > 1 {
            let old = self.blocks.pop_front().expect("more than one block");
            self.bytes -= old.bytes();
            self.first += old.starts.len() as u64;
            self.count -= old.starts.len();
            // Keep one block of the usual size for reuse; a large one is freed.
            if old.data.capacity() <= BLOCK_BYTES {
                self.spare = Some(old);
            }
        }
    }

    /// Up to `max` records from version `from` to `upto` (empty when none yet);
    /// `Err` with the oldest version held when `from` is older.
    pub fn records_from(
        &self,
        from: u64,
        upto: u64,
        max: usize,
    ) -> Result<Vec<ChangelogRecord>, u64> {
        if from < self.first {
            return Err(self.first);
        }
        let want = (upto + 1).saturating_sub(from).min(max as u64) as usize;
        let mut out = Vec::with_capacity(want.min(1024));
        // The block holding `from`: the last one starting at or before it.
        let idx = self.blocks.partition_point(|b| b.first <= from);
        if idx == 0 {
            return Ok(out);
        }
        let mut next = from;
        for b in self.blocks.range(idx - 1..) {
            let mut i = (next - b.first) as usize;
            while i < b.starts.len() && out.len() < want {
                // Blocks only hold what push encoded, so this cannot fail.
                let rec = ChangelogRecord::decode(b.record(i))
                    .expect("the window holds records it encoded itself");
                out.push(rec);
                i += 1;
                next += 1;
            }
            if out.len() >= want {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alces_proto::pb;

    fn rec(v: u64, name_len: usize) -> ChangelogRecord {
        ChangelogRecord {
            reply: None,
            version: v,
            time_ns: 1,
            op: Some(pb::changelog_record::Op::Create(pb::CreateOp {
                parent: 1,
                name: vec![b'n'; name_len],
                inode: v,
                ..Default::default()
            })),
        }
    }

    /// Ranges across block boundaries come back whole and in order, a resume
    /// point older than the window is refused with the oldest version held, and
    /// one beyond the newest gives nothing.
    #[test]
    fn ranges_span_blocks_and_old_versions_are_refused() {
        let mut w = RecordWindow::new(10, 8 * BLOCK_BYTES);
        let n = 3 * BLOCK_BYTES / rec(1, 100).encoded_len();
        for v in 10..10 + n as u64 {
            w.push(&rec(v, 100));
        }
        assert!(w.blocks.len() >= 3, "{} blocks", w.blocks.len());
        assert_eq!(w.first(), 10);
        let last = 9 + n as u64;
        let all = w.records_from(10, last, usize::MAX).unwrap();
        assert_eq!(all.len(), n);
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r, &rec(10 + i as u64, 100));
        }
        let mid = w.blocks[1].first;
        let got = w.records_from(mid - 2, last, 5).unwrap();
        assert_eq!(
            got.iter().map(|r| r.version).collect::<Vec<_>>(),
            (mid - 2..mid + 3).collect::<Vec<_>>()
        );
        assert_eq!(w.records_from(9, last, 1), Err(10));
        assert!(w.records_from(last + 1, last + 5, 10).unwrap().is_empty());
        assert_eq!(w.records_from(last - 1, last - 1, 10).unwrap().len(), 1);
    }

    /// The window never holds more than its limit, drops whole blocks from its
    /// front, and a record bigger than a block is kept whole.
    #[test]
    fn the_window_is_bounded_and_keeps_big_records_whole() {
        let limit = 3 * BLOCK_BYTES;
        let mut w = RecordWindow::new(1, limit);
        let mut v = 1;
        for _ in 0..10 * BLOCK_BYTES / 200 {
            w.push(&rec(v, 150));
            v += 1;
        }
        assert!(w.bytes() <= limit, "{} bytes held", w.bytes());
        assert!(w.first() > 1, "old records were dropped");
        assert_eq!(w.first() + w.len() as u64, v);
        let big = rec(v, 2 * BLOCK_BYTES);
        w.push(&big);
        assert_eq!(w.records_from(v, v, 1).unwrap(), vec![big]);
        v += 1;
        w.push(&rec(v, 10));
        assert_eq!(w.records_from(v, v, 1).unwrap(), vec![rec(v, 10)]);
        assert_eq!(w.first() + w.len() as u64, v + 1);
    }
}
