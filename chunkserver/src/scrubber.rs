//! The background scrubber: reads every chunk's blocks at a bounded rate and
//! verifies their CRCs; a damaged chunk is dropped and reported to the master.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{ChunkStore, StoreError};

/// Blocks verified per lock hold (1 MiB), so writers never wait long.
const BLOCKS_PER_STEP: u64 = 16;

/// Runs one pass after another over every chunk at `bytes_per_sec` (0 = off).
pub async fn run(store: Arc<ChunkStore>, bytes_per_sec: u64) {
    if bytes_per_sec == 0 {
        tracing::info!("background scrubbing disabled");
        return;
    }
    loop {
        let started = Instant::now();
        let (chunks, bytes, damaged) = pass(&store, bytes_per_sec).await;
        let secs = started.elapsed().as_secs();
        if damaged > 0 {
            tracing::warn!(
                chunks,
                bytes,
                damaged,
                secs,
                "scrub pass found damaged chunks"
            );
        } else {
            tracing::debug!(chunks, bytes, secs, "scrub pass done");
        }
        // An empty store would spin: wait a little between passes.
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Verifies every chunk once; returns (chunks, bytes, damaged chunks).
pub async fn pass(store: &Arc<ChunkStore>, bytes_per_sec: u64) -> (u64, u64, u64) {
    let mut ids = store.chunk_ids();
    ids.sort_unstable();
    let (mut nchunks, mut nbytes, mut ndamaged) = (0u64, 0u64, 0u64);
    for id in ids {
        nchunks += 1;
        let mut block = 0u64;
        loop {
            let t = Instant::now();
            match store.verify_blocks(id, block, BLOCKS_PER_STEP).await {
                Ok(None) => break,
                Ok(Some(n)) => {
                    nbytes += n;
                    store.metrics().scrubbed_bytes.inc_by(n);
                    block += BLOCKS_PER_STEP;
                    if bytes_per_sec > 0 {
                        let want = Duration::from_secs_f64(n as f64 / bytes_per_sec as f64);
                        if let Some(rest) = want.checked_sub(t.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                    }
                }
                Err(StoreError::Damaged { .. }) => {
                    ndamaged += 1;
                    break;
                }
                Err(StoreError::NotFound(_)) => break,
                Err(e) => {
                    tracing::warn!(chunk = format!("{id:016x}"), error = %e, "scrubber cannot read chunk");
                    break;
                }
            }
        }
    }
    (nchunks, nbytes, ndamaged)
}
