//! Random 4 KiB reads and writes with fio (psync engine, O_DIRECT, 1 or 16 threads).
//!
//! The file is written first by the harness (untimed); its data is not re-verified after
//! the random writes: fio's own error count must be zero.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{Figures, Params};
use crate::data::{write_file, Pattern};
use crate::exec::run as run_cmd;
use crate::figures::Figure;
use crate::systems::System;

/// Installs fio with apt-get when it is missing; returns its version.
pub fn ensure_installed() -> Result<String> {
    if run_cmd(Command::new("fio").arg("--version")).is_err() {
        eprintln!("alces-bench: installing fio from Debian");
        run_cmd(Command::new("apt-get").args(["update", "-q"]))?;
        run_cmd(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "fio"]),
        )
        .context("cannot install fio (apt-get install fio)")?;
    }
    Ok(run_cmd(Command::new("fio").arg("--version"))?
        .trim()
        .to_owned())
}

/// Runs one fio job on `file`; returns its IOPS.
fn fio(file: &Path, size: u64, write: bool, depth: usize, seconds: u64) -> Result<f64> {
    let rw = if write { "randwrite" } else { "randread" };
    let mut c = Command::new("fio");
    c.arg("--name=alces-bench")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .args([
            "--bs=4k",
            "--ioengine=psync",
            "--direct=1",
            "--thread",
            "--group_reporting",
            "--time_based",
            "--norandommap",
            "--randrepeat=0",
            "--output-format=json",
        ])
        .arg(format!("--rw={rw}"))
        .arg(format!("--numjobs={depth}"))
        .arg(format!("--runtime={seconds}"));
    if write {
        c.arg("--end_fsync=1");
    }
    let out = run_cmd(&mut c)?;
    // fio may print warnings before the JSON document.
    let json = out.find('{').map(|i| &out[i..]).unwrap_or(&out);
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("unreadable fio output: {out}"))?;
    let job = &v["jobs"][0];
    let err = job["error"].as_i64().unwrap_or(-1);
    if err != 0 {
        bail!(
            "fio {rw} x{depth} on {} reported error {err}",
            file.display()
        );
    }
    let iops = job[if write { "write" } else { "read" }]["iops"]
        .as_f64()
        .context("no iops in fio's output")?;
    if iops <= 0.0 {
        bail!("fio {rw} x{depth} on {} did no I/O", file.display());
    }
    Ok(iops)
}

/// One repetition.
pub fn run(sys: &mut dyn System, p: &Params, pat: &Pattern) -> Result<Figures> {
    let dir = sys.make_dir("fio", 2)?;
    let file = dir.join("file");
    let size = p.file_blocks << 20;
    if std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) != size {
        write_file(pat, &file, 3000, p.file_blocks)?;
    }
    let mut out = Vec::new();
    for (fig, write, depth) in [
        (Figure::RandReadQd1, false, 1),
        (Figure::RandReadQd16, false, 16),
        (Figure::RandWriteQd1, true, 1),
        (Figure::RandWriteQd16, true, 16),
    ] {
        out.push((fig, fio(&file, size, write, depth, p.fio_seconds)?));
    }
    Ok(out)
}
