//! Which server of a replication chain failed, from the status a chunk write,
//! truncate or sync answered, and the time limits of chunk calls.

use std::time::Duration;

use alces_proto::pb::ChunkLocation;

/// Metadata key (decimal server id) by which a chunkserver names the chain
/// server further down that failed (the chunkserver's wire contract).
pub const FAILED_SERVER_KEY: &str = "x-alces-failed-server";
/// How long one chunk write or truncate (through the whole chain) may take
/// before the first server counts as failed. Longer than the chunkservers'
/// forward timeout, so a failure further down is named by the chain.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read piece may take before the next copy is tried.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Errnos that say nothing about a server's health: the request itself was
/// refused (stale version, no space, bad input).
fn not_a_server_failure(errno: i32) -> bool {
    matches!(
        errno,
        libc::ESTALE | libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EINVAL | libc::EFBIG
    )
}

/// The id of the chain server that failed for `status` answered by `chain[0]`,
/// if a server failed (rather than the request being refused).
pub fn failed_server(status: &tonic::Status, chain: &[ChunkLocation]) -> Option<u64> {
    if let Some(id) = status
        .metadata()
        .get(FAILED_SERVER_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return chain.iter().any(|l| l.server_id == id).then_some(id);
    }
    if not_a_server_failure(alces_proto::errno::of(status)) {
        return None;
    }
    chain.first().map(|l| l.server_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(id: u64) -> ChunkLocation {
        ChunkLocation {
            server_id: id,
            address: format!("h{id}:1"),
            label: String::new(),
        }
    }

    #[test]
    fn attribution() {
        let chain = vec![loc(1), loc(2), loc(3)];
        let unavailable = tonic::Status::unavailable("connection refused");
        assert_eq!(failed_server(&unavailable, &chain), Some(1));
        let stale = alces_proto::errno::status(libc::ESTALE, "stale");
        assert_eq!(failed_server(&stale, &chain), None);
        let mut down = alces_proto::errno::status(libc::EIO, "chain server 3 failed");
        down.metadata_mut()
            .insert(FAILED_SERVER_KEY, "3".parse().unwrap());
        assert_eq!(failed_server(&down, &chain), Some(3));
        // A server not in the chain is not blamed.
        let mut other = alces_proto::errno::status(libc::EIO, "x");
        other
            .metadata_mut()
            .insert(FAILED_SERVER_KEY, "9".parse().unwrap());
        assert_eq!(failed_server(&other, &chain), None);
        assert_eq!(failed_server(&unavailable, &[]), None);
    }
}
