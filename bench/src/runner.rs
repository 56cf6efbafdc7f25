//! One benchmark run: clean leftovers, start the systems, run the workloads, report.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cleanup::{self, interrupted, Guard};
use crate::cli::{RunArgs, SystemKind, Workload};
use crate::data::Pattern;
use crate::exec::{drop_caches, mount_points, pids_mentioning, stop_pid, unmount};
use crate::figures::{Figure, Results};
use crate::netns::{self, Netns};
use crate::report::{self, Machine};
use crate::systems::alces::{self, Alces};
use crate::systems::local::Local;
use crate::systems::moosefs::{self, Moosefs};
use crate::systems::noop::Noop;
use crate::systems::System;
use crate::workloads::{self, meta, rss, seq, small, Params};

/// Removes what a crashed run left under `work_dir`: mounts, processes, the namespace
/// and the directory itself.
pub fn clean_leftovers(work_dir: &Path) {
    let prefix = work_dir.to_string_lossy().into_owned();
    let mut mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(work_dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for m in &mounts {
        eprintln!("alces-bench: unmounting leftover {}", m.display());
        unmount(m);
    }
    for pid in pids_mentioning(&prefix) {
        eprintln!("alces-bench: stopping leftover process {pid}");
        stop_pid(pid, Duration::from_secs(30));
    }
    netns::delete();
    if work_dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(work_dir) {
            eprintln!("alces-bench: cannot remove {}: {e}", work_dir.display());
        }
    }
}

fn start(kind: SystemKind, args: &RunArgs, bin_dir: &Path) -> Result<Box<dyn System>> {
    let base = args.work_dir.join(match kind {
        SystemKind::Alces => "alces",
        SystemKind::AlcesTls => "alces-tls",
        SystemKind::Moosefs => "moosefs",
        SystemKind::Local => "local",
        SystemKind::Noop => "noop",
    });
    Ok(match kind {
        SystemKind::Alces | SystemKind::AlcesTls => {
            if !args.no_build {
                eprintln!("alces-bench: building the Alces binaries (cargo build --release)");
                alces::build()?;
            }
            // Alces::start takes the starting lock for each cluster it starts.
            Box::new(Alces::start(
                bin_dir.to_path_buf(),
                base,
                kind == SystemKind::AlcesTls,
            )?)
        }
        SystemKind::Moosefs => {
            moosefs::ensure_installed()?;
            Box::new(cleanup::starting("starting MooseFS", || {
                Moosefs::start(base)
            })?)
        }
        SystemKind::Local => Box::new(Local::start(base)?),
        SystemKind::Noop => Box::new(cleanup::starting("starting the no-op mount", || {
            Noop::start(base)
        })?),
    })
}

fn workload_name(w: Workload) -> &'static str {
    match w {
        Workload::Seq => "seq",
        Workload::Fio => "fio",
        Workload::Meta => "meta",
        Workload::Small => "small",
        Workload::Rss => "rss",
        Workload::Cpu => "cpu",
        Workload::Multi => "multi",
    }
}

/// One repetition of workload `w` on `sys`.
fn run_one(
    w: Workload,
    sys: &mut dyn System,
    p: &Params,
    pat: &Pattern,
    rep: usize,
) -> Result<workloads::Figures> {
    let zeros = sys.reads_zeros();
    match w {
        Workload::Seq => seq::run(sys, p, pat, rep),
        Workload::Fio => workloads::fio::run(sys, p, pat),
        Workload::Meta => {
            let dir = sys.make_dir(&format!("meta-{rep}"), 2)?;
            Ok(meta::phases(&[dir], p.meta_files, p.meta_dirs)?
                .into_iter()
                .map(|(ph, v)| (Figure::Meta(ph), v))
                .collect())
        }
        Workload::Small => {
            let rel = format!("small-{rep}");
            let dir = sys.make_dir(&rel, 2)?;
            let r = small::phases(&[dir], p.small_files, p.small_size, pat, zeros, || {
                drop_caches()?;
                Ok(sys
                    .open_mounts(1)?
                    .into_iter()
                    .map(|r| r.join(&rel))
                    .collect())
            });
            sys.close_mounts();
            let (w, r) = r?;
            Ok(vec![(Figure::SmallWrite, w), (Figure::SmallRead, r)])
        }
        Workload::Multi => {
            let mrel = format!("multi-meta-{rep}");
            let srel = format!("multi-small-{rep}");
            sys.make_dir(&mrel, 2)?;
            sys.make_dir(&srel, 2)?;
            let roots = sys.open_mounts(p.mounts)?;
            let r = (|| -> Result<workloads::Figures> {
                let mdirs: Vec<PathBuf> = roots.iter().map(|r| r.join(&mrel)).collect();
                let mut out: workloads::Figures = meta::phases(&mdirs, p.meta_files, p.meta_dirs)?
                    .into_iter()
                    .map(|(ph, v)| (Figure::MultiMeta(ph), v))
                    .collect();
                let sdirs: Vec<PathBuf> = roots.iter().map(|r| r.join(&srel)).collect();
                let (w, r) =
                    small::phases(&sdirs, p.small_files, p.small_size, pat, zeros, || {
                        drop_caches()?;
                        Ok(sdirs.clone())
                    })?;
                out.push((Figure::MultiSmallWrite, w));
                out.push((Figure::MultiSmallRead, r));
                Ok(out)
            })();
            sys.close_mounts();
            r
        }
        Workload::Cpu => workloads::cpu::run(sys, p, pat, rep),
        Workload::Rss => Ok(rss::run(sys, p.rss_files)?
            .map(|v| vec![(Figure::RssPerFile, v)])
            .unwrap_or_default()),
    }
}

/// Runs `alces-bench all`; returns the process exit status.
pub fn run(args: RunArgs) -> Result<i32> {
    {
        let work_dir = args.work_dir.clone();
        cleanup::install(move || clean_leftovers(&work_dir));
    }
    let mut p = if args.quick {
        Params::quick()
    } else {
        Params::full()
    };
    if let Some(n) = args.rss_files {
        p.rss_files = n;
    }
    if let Some(s) = args.fio_seconds {
        p.fio_seconds = s;
    }
    if let Some(m) = args.file_mib {
        p.file_blocks = m.max(1);
    }
    let reps = args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let workloads: Vec<Workload> = if args.only.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::ALL
            .into_iter()
            .filter(|w| args.only.contains(w))
            .collect()
    };
    let kinds: Vec<SystemKind> = if args.system.is_empty() {
        SystemKind::ALL.to_vec()
    } else {
        SystemKind::ALL
            .into_iter()
            .filter(|s| args.system.contains(s))
            .collect()
    };
    let bin_dir = match &args.alces_bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
            .context("cannot find the directory of this executable; pass --alces-bin-dir")?,
    };

    let started = Instant::now();
    clean_leftovers(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("cannot create {}", args.work_dir.display()))?;
    let wd = args.work_dir.clone();
    let _work_guard = Guard::new(format!("work directory {}", wd.display()), move || {
        let _ = std::fs::remove_dir_all(&wd);
    });
    let mut machine = Machine::describe();
    if workloads.contains(&Workload::Fio) {
        machine
            .versions
            .push(("fio".into(), workloads::fio::ensure_installed()?));
    }
    let _netns = cleanup::starting("creating the network namespace", Netns::create)
        .context("cannot create the network namespace")?;

    let mut results = Results::default();
    let mut systems: Vec<Box<dyn System>> = Vec::new();
    phase("starting systems");
    for kind in kinds {
        if interrupted() {
            break;
        }
        eprintln!("alces-bench: starting {}", kind.title());
        match start(kind, &args, &bin_dir) {
            Ok(s) => {
                machine.versions.push((kind.title().into(), s.version()));
                systems.push(s);
            }
            Err(e) => {
                eprintln!("alces-bench: {} not available: {e:#}", kind.title());
                results.unavailable.insert(kind, format!("{e:#}"));
            }
        }
    }

    let pat = Pattern::new();
    let mut failed: BTreeSet<(SystemKind, &'static str)> = BTreeSet::new();
    phase("running workloads");
    for &w in &workloads {
        let name = workload_name(w);
        let w_reps = if w == Workload::Rss { 1 } else { reps };
        for rep in 0..w_reps {
            for sys in systems.iter_mut() {
                let kind = sys.kind();
                if failed.contains(&(kind, name)) || interrupted() {
                    continue;
                }
                eprintln!(
                    "alces-bench: {name} rep {}/{w_reps} on {} ({:.0?} so far)",
                    rep + 1,
                    kind.title(),
                    started.elapsed()
                );
                match run_one(w, sys.as_mut(), &p, &pat, rep) {
                    Ok(figs) => {
                        for (f, v) in figs {
                            results.add(f, kind, v);
                        }
                    }
                    Err(e) => {
                        eprintln!("alces-bench: {name} on {} failed: {e:#}", kind.title());
                        results.errors.push((kind, format!("{name}: {e:#}")));
                        failed.insert((kind, name));
                    }
                }
            }
        }
        for sys in &systems {
            if !failed.contains(&(sys.kind(), name)) {
                results.completed.push((sys.kind(), name));
            }
        }
    }
    drop(systems);

    let mut mode = if args.quick {
        format!("quick (tiny sizes, {reps} repetition(s); timings not meaningful)")
    } else {
        format!("full, {reps} repetitions, median (min–max)")
    };
    if !args.only.is_empty() {
        let names: Vec<String> = args
            .only
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect();
        mode.push_str(&format!("; only the {} workloads", names.join(", ")));
    }
    if let Some(s) = args.fio_seconds {
        mode.push_str(&format!("; fio runs {s} s per figure"));
    }
    phase("writing results");
    let doc = report::document(&machine, &results, &mode);
    println!("{doc}");
    if !args.quick && !interrupted() {
        match report::write_results(&args.results_dir, &machine, &doc) {
            Ok(path) => eprintln!("alces-bench: results written to {}", path.display()),
            Err(e) => eprintln!("alces-bench: {e:#}"),
        }
    }
    eprintln!("alces-bench: finished in {:.0?}", started.elapsed());

    let is_alces = |k: &SystemKind| matches!(k, SystemKind::Alces | SystemKind::AlcesTls);
    let alces_missing = results.unavailable.keys().any(is_alces);
    let others_missing = results.unavailable.keys().any(|k| !is_alces(k));
    let alces_errors = results.errors.iter().any(|(k, _)| is_alces(k));
    let other_errors = results.errors.iter().any(|(k, _)| !is_alces(k));
    let failed_run = interrupted()
        || others_missing
        || other_errors
        || (args.require_alces && (alces_missing || alces_errors));
    Ok(if failed_run { 1 } else { 0 })
}

/// Runs `alces-bench cleanup`.
pub fn cleanup(work_dir: &Path) {
    clean_leftovers(work_dir);
    eprintln!("alces-bench: cleaned {}", work_dir.display());
}

/// Environment variable naming a phase the run waits in until a signal
/// arrives (tests interrupt a run in a phase however short it is).
pub const HOLD_ENV: &str = "ALCES_BENCH_HOLD";

/// Announces a phase of the run on stderr (`alces-bench: phase NAME`) and,
/// when [`HOLD_ENV`] names it, waits there until SIGINT or SIGTERM.
fn phase(name: &str) {
    eprintln!("alces-bench: phase {name}");
    if std::env::var(HOLD_ENV).is_ok_and(|h| h == name) {
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
