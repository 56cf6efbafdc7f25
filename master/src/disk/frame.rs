//! Record framing shared by changelog and snapshot files:
//! `[u32 LE payload length][u32 LE crc32c(payload)][payload]`.

use alces_proto::checksum::crc32c;

/// Bytes of the frame header.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a frame may carry; a larger length means corruption.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Appends `payload` framed to `out`.
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Where and why reading frames stopped before the end of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTail {
    /// Offset of the first byte that is not part of a valid frame.
    pub offset: u64,
    /// What was wrong there.
    pub reason: String,
}

/// Splits `data` into frame payloads; stops at the first invalid frame and says
/// where (a torn or corrupt tail).
pub fn split(data: &[u8]) -> (Vec<&[u8]>, Option<BadTail>) {
    split_inner(data, false).0
}

/// Like [`split`], for files whose frames are never empty and that may be
/// preallocated with zeros: a zero-length header followed only by zeros is the
/// clean end of the data. Also returns where the valid frames end.
pub fn split_preallocated(data: &[u8]) -> (Vec<&[u8]>, Option<BadTail>, usize) {
    let ((frames, bad), end) = split_inner(data, true);
    (frames, bad, end)
}

fn split_inner(data: &[u8], zero_end: bool) -> ((Vec<&[u8]>, Option<BadTail>), usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        if zero_end && data[pos..data.len().min(pos + 4)].iter().all(|b| *b == 0) {
            // Only checked when the length field reads zero, so this stays linear.
            if data[pos..].iter().all(|b| *b == 0) {
                return ((out, None), pos);
            }
            return (
                (
                    out,
                    Some(BadTail {
                        offset: pos as u64,
                        reason: "empty record followed by data".to_string(),
                    }),
                ),
                pos,
            );
        }
        let bad = |reason: String| {
            Some(BadTail {
                offset: pos as u64,
                reason,
            })
        };
        if data.len() - pos < FRAME_HEADER {
            return (
                (
                    out,
                    bad(format!(
                        "{} trailing bytes, shorter than a record header",
                        data.len() - pos
                    )),
                ),
                pos,
            );
        }
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&data[pos..pos + 4]);
        let mut crc4 = [0u8; 4];
        crc4.copy_from_slice(&data[pos + 4..pos + 8]);
        let len = u32::from_le_bytes(len4) as usize;
        let crc = u32::from_le_bytes(crc4);
        if len > MAX_FRAME {
            return (
                (out, bad(format!("record length {len} is implausible"))),
                pos,
            );
        }
        let start = pos + FRAME_HEADER;
        if data.len() - start < len {
            return (
                (
                    out,
                    bad(format!(
                        "record of {len} bytes is cut short at {} bytes",
                        data.len() - start
                    )),
                ),
                pos,
            );
        }
        let payload = &data[start..start + len];
        if crc32c(payload) != crc {
            return ((out, bad("record checksum mismatch".to_string())), pos);
        }
        out.push(payload);
        pos = start + len;
    }
    ((out, None), pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        encode(b"hello", &mut buf);
        encode(b"", &mut buf);
        encode(b"world!", &mut buf);
        let (recs, bad) = split(&buf);
        assert_eq!(recs, vec![&b"hello"[..], &b""[..], &b"world!"[..]]);
        assert!(bad.is_none());

        let cut = &buf[..buf.len() - 2];
        let (recs, bad) = split(cut);
        assert_eq!(recs.len(), 2);
        assert_eq!(bad.unwrap().offset, 21);

        let mut flipped = buf.clone();
        flipped[10] ^= 0x40;
        let (recs, bad) = split(&flipped);
        assert!(recs.is_empty());
        let bad = bad.unwrap();
        assert_eq!(bad.offset, 0);
        assert!(bad.reason.contains("checksum"));
    }

    #[test]
    fn a_zero_tail_is_the_clean_end_of_preallocated_frames() {
        let mut buf = Vec::new();
        encode(b"hello", &mut buf);
        encode(b"world!", &mut buf);
        let end = buf.len();
        buf.resize(end + 4096, 0);
        let (recs, bad, at) = split_preallocated(&buf);
        assert_eq!(recs, vec![&b"hello"[..], &b"world!"[..]]);
        assert!(bad.is_none());
        assert_eq!(at, end);

        // Fewer zeros than a header are still the end.
        let (recs, bad, at) = split_preallocated(&buf[..end + 3]);
        assert_eq!((recs.len(), bad, at), (2, None, end));

        // A torn record inside the preallocated space is a bad tail.
        let mut torn = buf.clone();
        torn[end..end + 4].copy_from_slice(&9u32.to_le_bytes());
        let (recs, bad, at) = split_preallocated(&torn);
        assert_eq!(recs.len(), 2);
        assert_eq!(at, end);
        assert!(bad.unwrap().reason.contains("checksum"));

        // Data after an empty header is not a clean end.
        let mut junk = buf.clone();
        junk[end + 100] = 1;
        let (_, bad, _) = split_preallocated(&junk);
        assert_eq!(bad.unwrap().offset, end as u64);
    }
}
