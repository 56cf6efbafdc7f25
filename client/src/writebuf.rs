//! Write-behind buffer of one file: written ranges kept per chunk, coalesced with
//! overlapping and adjacent ranges (newer bytes win), until they are sent to the
//! chunkservers.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::layout;

/// Buffered, not yet sent writes of one file.
#[derive(Debug)]
pub struct WriteBuffer {
    chunk_size: u64,
    /// chunk index -> (offset in chunk -> data), extents disjoint and not adjacent.
    chunks: BTreeMap<u64, BTreeMap<u64, Vec<u8>>>,
    bytes: u64,
}

/// Extents of one chunk taken out of the buffer to be written: (offset in chunk, data).
pub type ChunkExtents = Vec<(u64, Bytes)>;

impl WriteBuffer {
    /// An empty buffer for a file with chunks of `chunk_size` bytes.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            chunks: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Bytes currently buffered.
    pub fn buffered_bytes(&self) -> u64 {
        self.bytes
    }

    /// True when nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes buffered for chunk `index`.
    #[cfg(test)]
    pub fn chunk_bytes(&self, index: u64) -> u64 {
        self.chunks
            .get(&index)
            .map(|m| m.values().map(|v| v.len() as u64).sum())
            .unwrap_or(0)
    }

    /// Adds the write of `data` at file offset `offset`.
    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        for span in layout::split(offset, data.len() as u64, self.chunk_size) {
            let start = span.range_offset as usize;
            let piece = &data[start..start + span.len as usize];
            self.insert_extent(span.index, span.offset, piece);
        }
    }

    fn insert_extent(&mut self, index: u64, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        let extents = self.chunks.entry(index).or_default();
        // Extents that overlap or touch [off, end].
        let touching: Vec<u64> = extents
            .range(..=end)
            .filter(|(s, v)| **s + v.len() as u64 >= off)
            .map(|(s, _)| *s)
            .collect();
        let mut new_start = off;
        let mut new_end = end;
        let mut old = Vec::with_capacity(touching.len());
        for s in touching {
            if let Some(v) = extents.remove(&s) {
                self.bytes -= v.len() as u64;
                new_start = new_start.min(s);
                new_end = new_end.max(s + v.len() as u64);
                old.push((s, v));
            }
        }
        let len = (new_end - new_start) as usize;
        let mut merged = match old.first() {
            Some((s, _)) if *s == new_start => {
                let (_, mut v) = old.remove(0);
                v.resize(len, 0);
                v
            }
            _ => vec![0u8; len],
        };
        for (s, v) in &old {
            let at = (s - new_start) as usize;
            merged[at..at + v.len()].copy_from_slice(v);
        }
        let at = (off - new_start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.bytes += merged.len() as u64;
        extents.insert(new_start, merged);
    }

    /// Chunks holding at least `threshold` buffered bytes, or whose buffered data
    /// reaches the end of the chunk (sequential writing moved on).
    pub fn ready_chunks(&self, threshold: u64) -> Vec<u64> {
        self.chunks
            .iter()
            .filter(|(_, m)| {
                let total: u64 = m.values().map(|v| v.len() as u64).sum();
                let reaches_end = m
                    .iter()
                    .next_back()
                    .is_some_and(|(s, v)| s + v.len() as u64 == self.chunk_size);
                total >= threshold || (reaches_end && total >= threshold / 4)
            })
            .map(|(i, _)| *i)
            .collect()
    }

    /// Indices of the chunks with buffered data, in order.
    pub fn chunk_indices(&self) -> Vec<u64> {
        self.chunks.keys().copied().collect()
    }

    /// Removes and returns the buffered extents of chunk `index`.
    pub fn take_chunk(&mut self, index: u64) -> ChunkExtents {
        let Some(m) = self.chunks.remove(&index) else {
            return Vec::new();
        };
        m.into_iter()
            .map(|(s, v)| {
                self.bytes -= v.len() as u64;
                (s, Bytes::from(v))
            })
            .collect()
    }

    /// Removes and returns everything buffered, per chunk.
    #[cfg(test)]
    pub fn take_all(&mut self) -> Vec<(u64, ChunkExtents)> {
        let idx: Vec<u64> = self.chunks.keys().copied().collect();
        idx.into_iter().map(|i| (i, self.take_chunk(i))).collect()
    }

    /// End offset (in the file) of the last buffered byte, if any.
    #[cfg(test)]
    pub fn end(&self) -> Option<u64> {
        let (idx, m) = self.chunks.iter().next_back()?;
        let (s, v) = m.iter().next_back()?;
        Some(idx * self.chunk_size + s + v.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_writes_coalesce() {
        let mut b = WriteBuffer::new(1 << 20);
        for i in 0..16u64 {
            b.insert(i * 4096, &[i as u8; 4096]);
        }
        assert_eq!(b.buffered_bytes(), 65536);
        let ext = b.take_chunk(0);
        assert_eq!(ext.len(), 1);
        assert_eq!(ext[0].0, 0);
        assert_eq!(ext[0].1.len(), 65536);
        assert_eq!(ext[0].1[4096 * 3], 3);
        assert!(b.is_empty());
        assert_eq!(b.buffered_bytes(), 0);
    }

    #[test]
    fn overlapping_newer_wins_and_gaps_stay_apart() {
        let mut b = WriteBuffer::new(1 << 20);
        b.insert(100, &[1; 100]);
        b.insert(1000, &[2; 10]);
        b.insert(150, &[3; 100]); // overlaps first, extends it to 250
        b.insert(50, &[4; 60]); // prepends 50..110
        let ext = b.take_chunk(0);
        assert_eq!(ext.len(), 2);
        assert_eq!(ext[0].0, 50);
        let d = &ext[0].1;
        assert_eq!(d.len(), 200);
        assert_eq!(d[0], 4);
        assert_eq!(d[59], 4);
        assert_eq!(d[60], 1); // offset 110
        assert_eq!(d[99], 1); // offset 149
        assert_eq!(d[100], 3); // offset 150
        assert_eq!(ext[1], (1000, Bytes::from(vec![2u8; 10])));
    }

    #[test]
    fn writes_split_at_chunk_boundaries() {
        let cs = 1 << 20;
        let mut b = WriteBuffer::new(cs);
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        b.insert(cs - 1000, &data);
        assert_eq!(b.chunk_bytes(0), 1000);
        assert_eq!(b.chunk_bytes(1), 2000);
        assert_eq!(b.end(), Some(cs + 2000));
        assert_eq!(b.ready_chunks(4 << 20), Vec::<u64>::new());
        assert_eq!(b.ready_chunks(1000), vec![0, 1]);
        let all = b.take_all();
        assert_eq!(all[0].0, 0);
        assert_eq!(all[0].1[0].0, cs - 1000);
        assert_eq!(all[1].1[0].1[0], data[1000]);
    }
}
