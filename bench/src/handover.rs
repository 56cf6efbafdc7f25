//! `alces-bench handover`: what serving a mount the way the CSI node plugin does
//! (a handed-over `/dev/fuse` descriptor, `alces-mount --fuse-fd --state-fd`,
//! every write journalled in the state memfd) costs against a plain
//! `alces-mount` mount of the same local cluster, measured in one run
//! (`alces_e2e::handover`) and printed as a markdown table of ratios.

use anyhow::Result;

use crate::cli::HandoverArgs;
use crate::cluster_figures::{guarded, prepare};

/// Measures the handed-over mount against a plain one and returns the table.
pub fn handover(a: &HandoverArgs) -> Result<String> {
    prepare(a.no_build)?;
    eprintln!(
        "alces-bench: handed-over mount vs plain mount ({} MiB files, {} files per metadata round, {} rounds)",
        a.mib, a.files, a.reps
    );
    let (mib, files, reps) = (a.mib, a.files, a.reps);
    let f = guarded("the handover measurement", move || {
        alces_e2e::handover::handover(mib, files, reps)
    })?;
    let row = |what: &str, unit: &str, p: alces_e2e::handover::Pair| {
        format!(
            "| {what} | {:.1} {unit} | {:.1} {unit} | {:.2}× |",
            p.plain,
            p.handed,
            p.handed / p.plain.max(1e-9)
        )
    };
    Ok([
        "| workload (best of the rounds) | plain `alces-mount` | handed over (`--fuse-fd --state-fd`, write journal) | handed / plain |".to_string(),
        "|---|---:|---:|---:|".to_string(),
        row(&format!("sequential write of {} MiB + fsync", f.mib), "MiB/s", f.seq_write),
        row(&format!("sequential read of {} MiB written by the other mount", f.mib), "MiB/s", f.seq_read),
        row(&format!("create + stat + unlink ({} files)", f.files), "files/s", f.metadata),
        String::new(),
        "| replacing the daemon of an idle mount (median of the rounds) | from the signal to a listing by the next daemon |".to_string(),
        "|---|---:|".to_string(),
        format!("| graceful hand-over (SIGTERM: drain, flush, exit) | {:.0} ms |", f.handover_ms),
        format!("| takeover (SIGKILL) | {:.0} ms |", f.takeover_ms),
    ]
    .join("\n"))
}
