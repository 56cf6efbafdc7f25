//! CPU per operation: the user + system CPU time of every process of the
//! filesystem (metadata server, chunkservers, metaloggers, mounts), sampled from
//! `/proc/<pid>/stat` before and after each phase and divided by the operations
//! of the phase: create and stat of empty files, write and read (caches dropped)
//! of 16 KiB files, and write + fsync of 1 MiB files. One mount, the main one.
//! Systems whose work runs in no separate process (a local directory, the
//! in-process no-op filesystem) have no figures here.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{bail, Context, Result};

use super::{small, Figures, Params};
use crate::cpu::{self, Role};
use crate::data::{read_file, verify, write_file, Pattern};
use crate::exec::drop_caches;
use crate::figures::{CpuOp, Figure};
use crate::systems::System;

/// One repetition; `rep` makes the names unique.
pub fn run(sys: &mut dyn System, p: &Params, pat: &Pattern, rep: usize) -> Result<Figures> {
    let pids = sys.processes();
    if pids.is_empty() {
        return Ok(Vec::new());
    }
    let zeros = sys.reads_zeros();
    let dir = sys.make_dir(&format!("cpu-{rep}"), 2)?;
    let mut out = Vec::new();
    let mut add = |op: CpuOp, used: BTreeMap<Role, f64>, ops: usize| {
        for (role, secs) in used {
            // Microseconds of CPU per operation.
            out.push((Figure::CpuPerOp(op, role), secs * 1e6 / ops.max(1) as f64));
        }
    };

    let files = p.meta_files;
    let before = cpu::sample(&pids);
    for i in 0..files {
        let f = dir.join(format!("e{i}"));
        File::create(&f).with_context(|| format!("cannot create {}", f.display()))?;
    }
    let after = cpu::sample(&pids);
    add(CpuOp::Create, cpu::used(&before, &after), files);

    let before = after;
    for i in 0..files {
        let f = dir.join(format!("e{i}"));
        let m = std::fs::metadata(&f).with_context(|| format!("cannot stat {}", f.display()))?;
        if !m.is_file() || m.len() != 0 {
            bail!("{} is not an empty file ({m:?})", f.display());
        }
    }
    let after = cpu::sample(&pids);
    add(CpuOp::Stat, cpu::used(&before, &after), files);

    // 16 KiB files: the write phase ends where the read phase's preparation
    // starts (dropping the page cache, so reads reach the filesystem).
    let small_dir = dir.join("small");
    std::fs::create_dir(&small_dir)
        .with_context(|| format!("cannot create {}", small_dir.display()))?;
    let marks = RefCell::new(Vec::new());
    marks.borrow_mut().push(cpu::sample(&pids));
    small::phases(
        std::slice::from_ref(&small_dir),
        p.small_files,
        p.small_size,
        pat,
        zeros,
        || {
            marks.borrow_mut().push(cpu::sample(&pids));
            drop_caches()?;
            marks.borrow_mut().push(cpu::sample(&pids));
            Ok(vec![small_dir.clone()])
        },
    )?;
    marks.borrow_mut().push(cpu::sample(&pids));
    let m = marks.into_inner();
    add(CpuOp::SmallWrite, cpu::used(&m[0], &m[1]), p.small_files);
    add(CpuOp::SmallRead, cpu::used(&m[2], &m[3]), p.small_files);

    // 1 MiB files, each written and fsynced.
    let big = p.file_blocks as usize;
    let mut crcs = Vec::with_capacity(big);
    let before = cpu::sample(&pids);
    for i in 0..big {
        crcs.push(write_file(
            pat,
            &dir.join(format!("m{i}")),
            3000 + i as u64,
            1,
        )?);
    }
    let after = cpu::sample(&pids);
    add(CpuOp::MibWrite, cpu::used(&before, &after), big);
    for (i, c) in crcs.into_iter().enumerate() {
        let f = dir.join(format!("m{i}"));
        verify(&f, zeros, crate::data::BLOCK as u64, c, read_file(&f)?)?;
    }
    Ok(out)
}
