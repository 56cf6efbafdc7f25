//! Master resident memory per file: VmRSS of the master before and after creating many
//! empty files (mknod, from 4 threads in 4 directories).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cleanup::interrupted;
use crate::exec::vm_rss;
use crate::systems::System;

/// Threads creating files.
const THREADS: u64 = 4;

/// Creates `files` files and returns the master's bytes per file, or None when the
/// system has no master process.
pub fn run(sys: &mut dyn System, files: u64) -> Result<Option<f64>> {
    let Some(pid) = sys.master_pid() else {
        return Ok(None);
    };
    let dir = sys.make_dir("rss", 2)?;
    let before = vm_rss(pid)?;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let d = dir.join(format!("t{t}"));
                s.spawn(move || -> Result<()> {
                    std::fs::create_dir(&d)
                        .with_context(|| format!("cannot mkdir {}", d.display()))?;
                    for i in (t..files).step_by(THREADS as usize) {
                        if interrupted() {
                            bail!("interrupted");
                        }
                        let p = d.join(format!("{i}"));
                        let c = CString::new(p.as_os_str().as_bytes())?;
                        // SAFETY: c is a valid NUL-terminated path.
                        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFREG | 0o644, 0) };
                        if r != 0 {
                            bail!(
                                "mknod {} failed: {}",
                                p.display(),
                                std::io::Error::last_os_error()
                            );
                        }
                        if t == 0 && i % 100_000 == 0 && i > 0 {
                            eprintln!(
                                "alces-bench:   {:?}: {i} files in {:.0?}",
                                sys_name(pid),
                                t0.elapsed()
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a worker thread panicked"))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let count: u64 = (0..THREADS)
        .map(|t| {
            std::fs::read_dir(dir.join(format!("t{t}")))
                .map(|d| d.count() as u64)
                .unwrap_or(0)
        })
        .sum();
    if count != files {
        bail!(
            "{} holds {count} files, {files} were created",
            dir.display()
        );
    }
    let after = vm_rss(pid)?;
    Ok(Some(after.saturating_sub(before) as f64 / files as f64))
}

fn sys_name(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
