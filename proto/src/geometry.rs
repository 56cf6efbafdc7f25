//! Chunk and block geometry shared by the master, chunkservers and clients.

/// Size of a checksummed block inside a chunk.
pub const BLOCK_SIZE: u64 = 64 * 1024;
/// Largest (and default) chunk size.
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest chunk size a cluster may be configured with (for tests).
pub const MIN_CHUNK_SIZE: u64 = 1024 * 1024;
/// Largest number of blocks in one chunk.
pub const MAX_BLOCKS: u64 = MAX_CHUNK_SIZE / BLOCK_SIZE;
/// Largest goal (copies per chunk).
pub const MAX_GOAL: u32 = 9;
/// Largest file size the namespace accepts (as ext4: 16 TiB).
pub const MAX_FILE_SIZE: u64 = 16 * 1024 * 1024 * 1024 * 1024;

/// Checks a configured chunk size: a multiple of [`BLOCK_SIZE`] between
/// [`MIN_CHUNK_SIZE`] and [`MAX_CHUNK_SIZE`].
pub fn validate_chunk_size(size: u64) -> Result<u64, String> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) || !size.is_multiple_of(BLOCK_SIZE) {
        return Err(format!(
            "chunk size {size} is invalid: it must be a multiple of {BLOCK_SIZE} between {MIN_CHUNK_SIZE} (1 MiB) and {MAX_CHUNK_SIZE} (64 MiB)"
        ));
    }
    Ok(size)
}

/// Parses a byte size such as `4096`, `64KiB`, `1MiB`, `64M` or `2G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("'{s}' is not a size: expected a number with an optional unit such as 64MiB")
    })?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "'{s}' has an unknown unit '{other}': use B, KiB, MiB, GiB or TiB"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    #[test]
    fn chunk_size_bounds() {
        assert!(validate_chunk_size(MIN_CHUNK_SIZE).is_ok());
        assert!(validate_chunk_size(MAX_CHUNK_SIZE).is_ok());
        assert!(validate_chunk_size(MIN_CHUNK_SIZE - BLOCK_SIZE).is_err());
        assert!(validate_chunk_size(MAX_CHUNK_SIZE + BLOCK_SIZE).is_err());
        assert!(validate_chunk_size(MIN_CHUNK_SIZE + 1).is_err());
    }
}
