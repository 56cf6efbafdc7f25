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
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let bad = |reason: String| {
            Some(BadTail {
                offset: pos as u64,
                reason,
            })
        };
        if data.len() - pos < FRAME_HEADER {
            return (
                out,
                bad(format!(
                    "{} trailing bytes, shorter than a record header",
                    data.len() - pos
                )),
            );
        }
        let mut len4 = [0u8; 4];
        len4.copy_from_slice(&data[pos..pos + 4]);
        let mut crc4 = [0u8; 4];
        crc4.copy_from_slice(&data[pos + 4..pos + 8]);
        let len = u32::from_le_bytes(len4) as usize;
        let crc = u32::from_le_bytes(crc4);
        if len > MAX_FRAME {
            return (out, bad(format!("record length {len} is implausible")));
        }
        let start = pos + FRAME_HEADER;
        if data.len() - start < len {
            return (
                out,
                bad(format!(
                    "record of {len} bytes is cut short at {} bytes",
                    data.len() - start
                )),
            );
        }
        let payload = &data[start..start + len];
        if crc32c(payload) != crc {
            return (out, bad("record checksum mismatch".to_string()));
        }
        out.push(payload);
        pos = start + len;
    }
    (out, None)
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
}
