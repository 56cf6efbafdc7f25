//! Chunk and offset arithmetic: how a byte range of a file maps onto chunks.

/// A piece of a file range that falls inside one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkSpan {
    /// Index of the chunk in the file.
    pub index: u64,
    /// Offset of the piece inside the chunk.
    pub offset: u64,
    /// Length of the piece.
    pub len: u64,
    /// Offset of the piece from the start of the whole range.
    pub range_offset: u64,
}

/// Splits the file range `[offset, offset + len)` into per-chunk pieces.
pub fn split(offset: u64, len: u64, chunk_size: u64) -> Vec<ChunkSpan> {
    let mut out = Vec::new();
    if chunk_size == 0 {
        return out;
    }
    let mut pos = offset;
    let end = offset.saturating_add(len);
    while pos < end {
        let index = pos / chunk_size;
        let in_chunk = pos % chunk_size;
        let take = (chunk_size - in_chunk).min(end - pos);
        out.push(ChunkSpan {
            index,
            offset: in_chunk,
            len: take,
            range_offset: pos - offset,
        });
        pos += take;
    }
    out
}

/// Splits `[offset, offset + len)` into pieces of at most `piece` bytes that never
/// cross a multiple of `piece` boundary more than needed (used for read requests
/// to a chunkserver).
pub fn pieces(offset: u64, len: u64, piece: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = offset;
    let end = offset.saturating_add(len);
    while pos < end && piece > 0 {
        let take = piece.min(end - pos);
        out.push((pos, take));
        pos += take;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn split_across_boundaries() {
        let s = split(MIB - 10, 20, MIB);
        assert_eq!(
            s,
            vec![
                ChunkSpan {
                    index: 0,
                    offset: MIB - 10,
                    len: 10,
                    range_offset: 0
                },
                ChunkSpan {
                    index: 1,
                    offset: 0,
                    len: 10,
                    range_offset: 10
                },
            ]
        );
        let s = split(0, 3 * MIB, MIB);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|c| c.offset == 0 && c.len == MIB));
        assert_eq!(s[2].range_offset, 2 * MIB);
        assert!(split(5, 0, MIB).is_empty());
        let s = split(10 * MIB + 5, MIB, MIB);
        assert_eq!(s[0].index, 10);
        assert_eq!(s[1].index, 11);
        assert_eq!(s[0].len + s[1].len, MIB);
    }

    #[test]
    fn read_pieces() {
        assert_eq!(pieces(0, 10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert!(pieces(3, 0, 4).is_empty());
    }
}
