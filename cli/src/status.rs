//! `alces status`: the cluster as the master sees it.

use std::path::Path;

use alces_proto::pb::{ChunkserverStatus, ClusterStatus, Empty};
use serde_json::json;

use crate::args::Global;
use crate::connect::{admin, explain, local_dir_from_env};
use crate::procs;

/// Human-readable byte count.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Pid of the local chunkserver whose recorded address is `addr`, when an
/// `alces local` directory is known.
fn local_pid(dir: Option<&Path>, addr: &str) -> Option<i32> {
    let dir = dir?;
    for d in procs::process_dirs(dir) {
        let a = std::fs::read_to_string(d.join("address")).unwrap_or_default();
        if a.trim() == addr {
            return procs::read_pid(&d.join("pid")).filter(|p| procs::alive(*p));
        }
    }
    None
}

/// The status as JSON.
pub fn to_json(st: &ClusterStatus, dir: Option<&Path>) -> serde_json::Value {
    let counts = st.chunk_counts.unwrap_or_default();
    json!({
        "epoch": st.epoch,
        "metadata_version": st.metadata_version,
        "cluster_id": st.cluster_id,
        "role": st.role,
        "inodes": st.inodes,
        "files": st.files,
        "directories": st.directories,
        "chunks": st.chunks,
        "sessions": st.sessions,
        "reply_cache": {
            "entries": st.reply_cache_entries,
            "bytes": st.reply_cache_bytes,
        },
        "locks": {
            "held": st.locks_held,
            "waiters": st.lock_waiters,
        },
        "chunk_size": st.chunk_size,
        "default_goal": st.default_goal,
        "replications_in_flight": st.replications_in_flight,
        "total_bytes": st.total_bytes,
        "used_bytes": st.used_bytes,
        "free_bytes": st.free_bytes,
        "chunk_counts": {
            "missing": counts.missing,
            "under_goal": counts.under_goal,
            "at_goal": counts.at_goal,
            "over_goal": counts.over_goal,
        },
        "chunkservers": st.chunkservers.iter().map(|c| {
            let mut v = json!({
                "id": c.server_id,
                "address": c.address,
                "label": c.label,
                "connected": c.connected,
                "chunks": c.chunks,
                "total_bytes": c.total_bytes,
                "used_bytes": c.used_bytes,
                "free_bytes": c.free_bytes,
                "last_seen_ms": c.last_seen_ms,
                "draining": c.draining,
                "safe_to_remove": c.safe_to_remove,
                "chunks_to_move": c.chunks_to_move,
                "disks": c.disks.iter().map(|d| json!({
                    "path": d.path,
                    "total_bytes": d.total_bytes,
                    "used_bytes": d.used_bytes,
                    "free_bytes": d.free_bytes,
                    "chunks": d.chunks,
                    "damaged": d.damaged,
                    "corrupt_chunks": d.corrupt_chunks,
                })).collect::<Vec<_>>(),
            });
            // Set apart from the literal above (serde_json's macro recursion limit).
            v["disconnected_ms"] = json!(c.disconnected_ms);
            v["copies_count"] = json!(c.copies_count);
            v["copies_count_for_ms"] = json!(c.copies_count_for_ms);
            if let Some(pid) = local_pid(dir, &c.address) {
                v["pid"] = json!(pid);
            }
            v
        }).collect::<Vec<_>>(),
        "conditions": st.conditions,
        "sync_metaloggers": st.sync_metaloggers,
        "tuning": st.tuning.as_ref().map(|t| json!({
            "replication_rate": t.replication_rate,
            "replications_per_server": t.replications_per_server,
            "rebalance_threshold": t.rebalance_threshold,
            "chunkserver_timeout_secs": t.chunkserver_timeout_secs,
            "chunkserver_disconnect_ms": t.chunkserver_disconnect_ms,
            "session_timeout_secs": t.session_timeout_secs,
            "snapshot_interval_secs": t.snapshot_interval_secs,
            "sync_timeout_ms": t.sync_timeout_ms,
        })),
        "metaloggers": st.metaloggers.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "applied_version": m.applied_version,
            "lag": m.lag,
            "connected": m.connected,
        })).collect::<Vec<_>>(),
    })
}

/// The status as a human-readable report.
pub fn to_text(st: &ClusterStatus, dir: Option<&Path>) -> String {
    let counts = st.chunk_counts.unwrap_or_default();
    let mut out = String::new();
    out += &format!(
        "cluster {}  role {}  epoch {}  metadata version {}\n",
        st.cluster_id, st.role, st.epoch, st.metadata_version
    );
    out += &format!(
        "inodes {} (files {}, directories {})  sessions {}  chunk size {}  default goal {}\n",
        st.inodes,
        st.files,
        st.directories,
        st.sessions,
        human_bytes(st.chunk_size),
        st.default_goal
    );
    out += &format!(
        "reply cache: {} entries, {}\n",
        st.reply_cache_entries,
        human_bytes(st.reply_cache_bytes)
    );
    out += &format!(
        "locks: {} held, {} waiting\n",
        st.locks_held, st.lock_waiters
    );
    out += &format!(
        "space: total {}  used {}  free {}\n",
        human_bytes(st.total_bytes),
        human_bytes(st.used_bytes),
        human_bytes(st.free_bytes)
    );
    if let Some(t) = &st.tuning {
        out += &format!(
            "tuning: replication {}/s, {} per server, rebalance above {} points; chunkserver timeout {} s (shown disconnected after {} ms); session timeout {} s; at most {} file locks per session, {} in all\n",
            t.replication_rate,
            t.replications_per_server,
            t.rebalance_threshold,
            t.chunkserver_timeout_secs,
            t.chunkserver_disconnect_ms,
            t.session_timeout_secs,
            t.max_locks_per_session,
            t.max_locks
        );
    }
    out += &format!(
        "chunks {}: missing {}  under goal {}  at goal {}  over goal {}  replicating {}\n\n",
        st.chunks,
        counts.missing,
        counts.under_goal,
        counts.at_goal,
        counts.over_goal,
        st.replications_in_flight
    );
    out += &format!(
        "{:<20} {:<22} {:>7} {:<8} {:>5} {:>10} {:>10} {:>8} {:<36} {}\n",
        "CHUNKSERVER",
        "ADDRESS",
        "PID",
        "LABEL",
        "DISKS",
        "USED",
        "TOTAL",
        "CHUNKS",
        "CONNECTED",
        "DRAIN"
    );
    for c in &st.chunkservers {
        let pid = local_pid(dir, &c.address)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<20} {:<22} {:>7} {:<8} {:>5} {:>10} {:>10} {:>8} {:<36} {}\n",
            c.server_id,
            c.address,
            pid,
            if c.label.is_empty() { "-" } else { &c.label },
            c.disks.len(),
            human_bytes(c.used_bytes),
            human_bytes(c.total_bytes),
            c.chunks,
            connection(c),
            match (c.draining, c.safe_to_remove) {
                (false, _) => "-".to_string(),
                (true, true) => "drained: safe to remove".to_string(),
                (true, false) => format!("draining: {} chunks to move", c.chunks_to_move),
            }
        );
    }
    for c in &st.conditions {
        out += &format!("CONDITION: {c}\n");
    }
    if st.metaloggers.is_empty() {
        out += "\nmetaloggers: none\n";
    } else {
        out += &format!(
            "\nsync_metaloggers {}\n{:<20} {:<22} {:>12} {:>8} {:<9}\n",
            st.sync_metaloggers, "METALOGGER", "ADDRESS", "APPLIED", "LAG", "CONNECTED"
        );
        for m in &st.metaloggers {
            out += &format!(
                "{:<20} {:<22} {:>12} {:>8} {:<9}\n",
                m.id,
                m.address,
                m.applied_version,
                m.lag,
                if m.connected { "yes" } else { "NO" }
            );
        }
    }
    out
}

/// `alces status`.
pub async fn run(global: &Global) -> anyhow::Result<()> {
    let mut a = admin(global, None)?;
    let st = a
        .client
        .status(Empty {})
        .await
        .map_err(|s| explain(&a.addr, "Status", &s))?
        .into_inner();
    let dir = local_dir_from_env();
    if global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&st, dir.as_deref()))?
        );
    } else {
        print!("{}", to_text(&st, dir.as_deref()));
    }
    Ok(())
}

/// The CONNECTED column: "yes", or since when it is not and whether its
/// copies still count (the grace before re-replication).
fn connection(c: &ChunkserverStatus) -> String {
    let secs = |ms: u64| ms.div_ceil(1000);
    match (c.connected, c.copies_count) {
        (true, _) => "yes".to_string(),
        (false, true) => format!(
            "NO for {} s; copies count {} s more",
            secs(c.disconnected_ms),
            secs(c.copies_count_for_ms)
        ),
        (false, false) => format!(
            "NO for {} s; lost: its chunks are re-replicated",
            secs(c.last_seen_ms)
        ),
    }
}
