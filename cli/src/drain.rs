//! `alces chunkserver drain|undrain ID`.

use alces_proto::pb::DrainRequest;
use serde_json::json;

use crate::args::Global;
use crate::connect::{admin, explain};

/// Starts (`drain`) or ends the drain of chunkserver `id`.
pub async fn run(global: &Global, id: u64, drain: bool) -> anyhow::Result<()> {
    let mut a = admin(global, None)?;
    let s = a
        .client
        .drain_chunkserver(DrainRequest {
            server_id: id,
            drain,
        })
        .await
        .map_err(|s| match alces_proto::errno::of(&s) {
            libc::ENOENT => anyhow::anyhow!("{}", s.message()),
            _ => explain(&a.addr, "DrainChunkserver", &s),
        })?
        .into_inner();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "id": s.server_id,
                "address": s.address,
                "draining": s.draining,
                "safe_to_remove": s.safe_to_remove,
                "chunks_to_move": s.chunks_to_move,
            }))?
        );
    } else if drain {
        println!(
            "chunkserver {} ({}) is draining: {} chunks to move; `alces status` says when it is safe to remove",
            s.server_id, s.address, s.chunks_to_move
        );
    } else {
        println!(
            "chunkserver {} ({}) is no longer draining",
            s.server_id, s.address
        );
    }
    Ok(())
}
