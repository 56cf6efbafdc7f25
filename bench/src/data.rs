//! The bytes the workloads write, and their checksums.
//!
//! One random 1 MiB pattern is made at start; every block written is that pattern with
//! its first 16 bytes replaced by (seed, block index), so no two blocks are equal while
//! generating them costs almost nothing next to the I/O being measured.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use alces_proto::checksum::{crc32c, crc32c_append};
use anyhow::{bail, Context, Result};

/// Size of one sequential-I/O block.
pub const BLOCK: usize = 1 << 20;

/// Generates blocks and small files.
pub struct Pattern {
    base: Vec<u8>,
}

impl Default for Pattern {
    fn default() -> Self {
        Self::new()
    }
}

impl Pattern {
    /// A fresh pseudo-random pattern.
    pub fn new() -> Pattern {
        let mut x: u64 = rand_seed();
        let mut base = Vec::with_capacity(BLOCK);
        while base.len() < BLOCK {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            base.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        Pattern { base }
    }

    /// Fills `buf` (at most [`BLOCK`] bytes) with block `idx` of stream `seed`.
    pub fn fill(&self, seed: u64, idx: u64, buf: &mut [u8]) {
        let n = buf.len().min(BLOCK);
        let off = (idx as usize).wrapping_mul(4096 + 64) % (BLOCK - n + 1);
        buf[..n].copy_from_slice(&self.base[off..off + n]);
        let mut stamp = [0u8; 16];
        stamp[..8].copy_from_slice(&seed.to_le_bytes());
        stamp[8..].copy_from_slice(&idx.to_le_bytes());
        let k = n.min(16);
        buf[..k].copy_from_slice(&stamp[..k]);
    }
}

fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    (t ^ (std::process::id() as u64).rotate_left(32)) | 1
}

/// CRC32C of `len` zero bytes (what the no-op filesystem returns).
pub fn zeros_crc(len: u64) -> u32 {
    let zeros = vec![0u8; BLOCK];
    let mut crc = 0;
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        crc = crc32c_append(crc, &zeros[..n]);
        left -= n as u64;
    }
    crc
}

/// Writes `blocks` blocks of stream `seed` to a new file at `path`, fsyncs it and returns
/// the CRC32C of what was written.
pub fn write_file(pat: &Pattern, path: &Path, seed: u64, blocks: u64) -> Result<u32> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut crc = 0;
    for i in 0..blocks {
        pat.fill(seed, i, &mut buf);
        crc = crc32c_append(crc, &buf);
        f.write_all(&buf)
            .with_context(|| format!("write of block {i} to {} failed", path.display()))?;
    }
    f.sync_all()
        .with_context(|| format!("fsync of {} failed", path.display()))?;
    Ok(crc)
}

/// Reads the whole file at `path` in [`BLOCK`] pieces; returns (bytes, CRC32C).
pub fn read_file(path: &Path) -> Result<(u64, u32)> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut crc = 0;
    let mut total = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read of {} at {total} failed", path.display()))?;
        if n == 0 {
            break;
        }
        crc = crc32c_append(crc, &buf[..n]);
        total += n as u64;
    }
    Ok((total, crc))
}

/// Checks that what was read is what was written (or zeros, for the no-op filesystem).
pub fn verify(
    what: &Path,
    zeros: bool,
    want_len: u64,
    want_crc: u32,
    got: (u64, u32),
) -> Result<()> {
    let want_crc = if zeros { zeros_crc(want_len) } else { want_crc };
    if got != (want_len, want_crc) {
        bail!(
            "data of {} does not verify: read {} bytes with CRC32C {:08x}, wrote {} bytes with CRC32C {:08x}",
            what.display(),
            got.0,
            got.1,
            want_len,
            want_crc
        );
    }
    Ok(())
}

/// CRC32C of one buffer.
pub fn crc(buf: &[u8]) -> u32 {
    crc32c(buf)
}
