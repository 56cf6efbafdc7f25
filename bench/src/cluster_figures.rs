//! `alces-bench failover`, `repair` and `snapshot`: figures that need failure
//! injection or direct client-library calls on a whole local cluster, measured
//! with the end-to-end harness (`alces_e2e::figures`) and printed as markdown
//! tables.

use anyhow::{Context, Result};

use crate::cli::{FailoverArgs, RepairArgs, SnapshotArgs};
use crate::systems::alces::build;

/// Builds the release binaries unless `no_build`.
pub(crate) fn prepare(no_build: bool) -> Result<()> {
    if !no_build {
        eprintln!("alces-bench: building the Alces binaries (cargo build --release)");
        build()?;
    }
    Ok(())
}

/// Runs `f`, turning a panic of the harness (it panics on any failure, with a
/// message saying what failed) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T> {
    std::panic::catch_unwind(f).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        anyhow::anyhow!("{what} failed: {msg}")
    })
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

/// Measures the failover figures and returns the table.
pub fn failover(a: &FailoverArgs) -> Result<String> {
    prepare(a.no_build)?;
    eprintln!("alces-bench: failover figures (three local clusters, 1 metalogger each)");
    let mkdirs = usize::try_from(a.mkdirs).context("--mkdirs")?;
    let f = guarded("the failover measurement", move || {
        alces_e2e::figures::failover(mkdirs)
    })?;
    Ok(format!(
        "| failover figure | value |\n|---|---:|\n\
         | SIGKILL of the master -> first acknowledged write on the promoted metalogger (detection excluded) | {} ms |\n\
         | SIGKILL -> `alces promote` answered | {} ms |\n\
         | switchover pause reported by the new master | {} ms |\n\
         | longest gap between acknowledged client writes across the switchover | {} ms |\n\
         | mkdir rate, sync_metaloggers=0 | {:.0} /s |\n\
         | mkdir rate, sync_metaloggers=1 | {:.0} /s |\n\
         | sync_metaloggers=1 / sync_metaloggers=0 | {:.2}× |",
        ms(f.sigkill_to_first_write),
        ms(f.sigkill_to_promote_reply),
        f.switchover_pause_reported_ms,
        ms(f.switchover_longest_gap),
        f.mkdir_rate_sync0,
        f.mkdir_rate_sync1,
        f.mkdir_rate_sync1 / f.mkdir_rate_sync0.max(1e-9),
    ))
}

/// Measures the self-healing figures and returns the table.
pub fn repair(a: &RepairArgs) -> Result<String> {
    prepare(a.no_build)?;
    eprintln!(
        "alces-bench: repair figures ({} MiB at goal 2, 3 chunkservers, loss timeout {} s)",
        a.mib, a.loss_timeout
    );
    let (mib, timeout, base) = (a.mib, a.loss_timeout, a.baseline_secs);
    let f = guarded("the repair measurement", move || {
        alces_e2e::figures::repair(mib, timeout, base)
    })?;
    Ok(format!(
        "| repair figure | value |\n|---|---:|\n\
         | data at goal 2 before the loss | {} MiB |\n\
         | chunks on the killed chunkserver | {} |\n\
         | SIGKILL -> loss declared (chunkserver timeout {} s) | {:.1} s |\n\
         | SIGKILL -> every chunk back at goal | {:.1} s |\n\
         | re-replication after the loss was declared | {:.1} s |\n\
         | foreground fsynced writes, healthy | {:.1} MiB/s |\n\
         | foreground fsynced writes during the repair | {:.1} MiB/s ({:.2}× of healthy) |",
        f.data_mib,
        f.chunks_lost,
        f.loss_timeout_secs,
        f.loss_declared.as_secs_f64(),
        f.back_at_goal.as_secs_f64(),
        (f.back_at_goal.saturating_sub(f.loss_declared)).as_secs_f64(),
        f.healthy_write_mib_s,
        f.repair_write_mib_s,
        f.repair_write_mib_s / f.healthy_write_mib_s.max(1e-9),
    ))
}

/// Measures the snapshot figures and returns the table.
pub fn snapshot(a: &SnapshotArgs) -> Result<String> {
    prepare(a.no_build)?;
    eprintln!(
        "alces-bench: snapshot figures (a tree of {} files in 100 directories)",
        a.files
    );
    let files = a.files;
    let f = guarded("the snapshot measurement", move || {
        alces_e2e::figures::snapshot_scale(files)
    })?;
    if !f.consistent {
        anyhow::bail!("alces fsck found the reference counts or usage wrong after the snapshot");
    }
    Ok(format!(
        "| snapshot figure | value |\n|---|---:|\n\
         | snapshot of a tree of {} inodes (client-observed, includes the changelog fsync) | {:.0} ms |\n\
         | master resident memory per snapshot entry | {:.0} bytes |\n\
         | fsck afterwards | exact |",
        f.inodes,
        f.elapsed.as_secs_f64() * 1000.0,
        f.rss_bytes_per_entry,
    ))
}
