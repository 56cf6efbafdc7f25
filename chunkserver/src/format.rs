//! The on-disk chunk file format and where chunk files live in a data directory.
//!
//! A chunk file is `<data-dir>/chunks/<last 2 hex digits of id>/<id as 016x>.chunk`:
//!
//! | bytes        | content |
//! |--------------|---------|
//! | 0..8         | magic `ALCESCHK` |
//! | 8..12        | format version (u32 LE, currently 1) |
//! | 12..16       | reserved, zero |
//! | 16..24       | chunk id (u64 LE) |
//! | 24..32       | chunk version (u64 LE) |
//! | 32..40       | data length in bytes (u64 LE) |
//! | 40..44       | CRC32C of bytes 0..40 (u32 LE) |
//! | 44..4096     | zero |
//! | 4096..8192   | CRC table: 1024 x u32 LE, CRC32C of each 64 KiB block |
//! | 8192..       | data, `length` bytes |
//!
//! The CRC of block `i` covers the stored bytes of that block only, that is
//! `[i * 64 KiB, min((i + 1) * 64 KiB, length))`; entries of blocks past the
//! length are meaningless. The file is exactly `8192 + length` bytes long; a
//! shorter file is damaged.

use std::path::{Path, PathBuf};

use alces_proto::geometry::{BLOCK_SIZE, MAX_BLOCKS, MAX_CHUNK_SIZE};

/// Magic bytes opening every chunk file.
pub const MAGIC: &[u8; 8] = b"ALCESCHK";
/// Chunk file format version written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the header area.
pub const HEADER_SIZE: u64 = 4096;
/// Offset of the CRC table.
pub const CRC_TABLE_OFFSET: u64 = 4096;
/// Size of the CRC table (one u32 per block of the largest chunk).
pub const CRC_TABLE_SIZE: u64 = MAX_BLOCKS * 4;
/// Offset of the first data byte.
pub const DATA_OFFSET: u64 = 8192;
/// Block size, re-exported for the store.
pub const BLOCK: u64 = BLOCK_SIZE;
/// Name of the folder holding chunk files inside a data directory.
pub const CHUNKS_DIR: &str = "chunks";
/// Name of the folder damaged chunk files are moved to.
pub const DAMAGED_DIR: &str = "damaged";
/// Name of the folder for chunk files being built (cleared at startup).
pub const TMP_DIR: &str = "tmp";

/// The decoded header of a chunk file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Chunk id.
    pub chunk_id: u64,
    /// Chunk version.
    pub version: u64,
    /// Data length in bytes.
    pub length: u64,
}

impl ChunkHeader {
    /// Encodes the header into its 4096-byte on-disk form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE as usize];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.chunk_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.version.to_le_bytes());
        b[32..40].copy_from_slice(&self.length.to_le_bytes());
        let crc = alces_proto::checksum::crc32c(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header; the error says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Self, String> {
        if b.len() < 44 {
            return Err(format!(
                "header is {} bytes, shorter than the 44 bytes of a chunk header",
                b.len()
            ));
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic: not an Alces chunk file".to_string());
        }
        let fv = u32::from_le_bytes(le4(&b[8..12]));
        if fv != FORMAT_VERSION {
            return Err(format!(
                "chunk format version {fv} is not supported (this build reads {FORMAT_VERSION})"
            ));
        }
        let stored = u32::from_le_bytes(le4(&b[40..44]));
        let crc = alces_proto::checksum::crc32c(&b[0..40]);
        if stored != crc {
            return Err(format!(
                "header checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
            ));
        }
        let h = Self {
            chunk_id: u64::from_le_bytes(le8(&b[16..24])),
            version: u64::from_le_bytes(le8(&b[24..32])),
            length: u64::from_le_bytes(le8(&b[32..40])),
        };
        if h.length > MAX_CHUNK_SIZE {
            return Err(format!(
                "header length {} exceeds the largest chunk size {MAX_CHUNK_SIZE}",
                h.length
            ));
        }
        if h.version == 0 {
            return Err("header version is 0, which no chunk may have".to_string());
        }
        Ok(h)
    }
}

fn le4(s: &[u8]) -> [u8; 4] {
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    a
}

fn le8(s: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    a
}

/// Path of a chunk file relative to its data directory.
pub fn chunk_rel_path(chunk_id: u64) -> PathBuf {
    PathBuf::from(CHUNKS_DIR)
        .join(format!("{:02x}", chunk_id & 0xff))
        .join(format!("{chunk_id:016x}.chunk"))
}

/// Path of a chunk file inside `data_dir`.
pub fn chunk_path(data_dir: &Path, chunk_id: u64) -> PathBuf {
    data_dir.join(chunk_rel_path(chunk_id))
}

/// Parses a chunk file name (`<016x>.chunk`) back into its id.
pub fn parse_chunk_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".chunk")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Number of blocks holding `length` bytes.
pub fn blocks_for(length: u64) -> u64 {
    length.div_ceil(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_checks() {
        let h = ChunkHeader {
            chunk_id: 0x1234,
            version: 7,
            length: 100_000,
        };
        let mut b = h.encode();
        assert_eq!(b.len(), 4096);
        assert_eq!(ChunkHeader::decode(&b).unwrap(), h);
        b[30] ^= 1;
        assert!(ChunkHeader::decode(&b).unwrap_err().contains("checksum"));
        b[0] = b'X';
        assert!(ChunkHeader::decode(&b).unwrap_err().contains("magic"));
        assert!(ChunkHeader::decode(&b[..10]).is_err());
    }

    #[test]
    fn paths() {
        assert_eq!(
            chunk_rel_path(0xabcdef),
            PathBuf::from("chunks/ef/0000000000abcdef.chunk")
        );
        assert_eq!(
            parse_chunk_file_name("0000000000abcdef.chunk"),
            Some(0xabcdef)
        );
        assert_eq!(parse_chunk_file_name("abc.chunk"), None);
        assert_eq!(blocks_for(0), 0);
        assert_eq!(blocks_for(1), 1);
        assert_eq!(blocks_for(65536), 1);
        assert_eq!(blocks_for(65537), 2);
    }
}
