//! Metadata: create, stat, list, rename and unlink empty files in one directory, then
//! mkdir of a directory tree, then lock/unlock pairs of a POSIX lock. With several
//! mounts, each mount works on its share of the names at the same time (and stats
//! the files another mount created).

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::rate;
use crate::figures::MetaPhase;

/// Runs every phase in `dirs_of` (the same existing directory seen through one mount
/// each; one thread per mount); returns ops/s per phase.
pub fn phases(dirs_of: &[PathBuf], files: usize, dirs: usize) -> Result<Vec<(MetaPhase, f64)>> {
    let n = dirs_of.len();
    let mine = |t: usize| (t..files).step_by(n);
    let mut out = Vec::new();

    let phase = |what: MetaPhase, ops: usize, f: &(dyn Fn(usize) -> Result<()> + Sync)| {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..n).map(|t| s.spawn(move || f(t))).collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("a worker thread panicked"))
                })
                .collect::<Result<Vec<()>>>()
        })
        .with_context(|| format!("metadata phase {what:?}"))?;
        Ok::<_, anyhow::Error>((what, rate(ops as f64, t0)))
    };

    out.push(phase(MetaPhase::Create, files, &|t| {
        for i in mine(t) {
            let p = dirs_of[t].join(format!("f{i}"));
            File::create(&p).with_context(|| format!("cannot create {}", p.display()))?;
        }
        Ok(())
    })?);
    out.push(phase(MetaPhase::Stat, files, &|t| {
        let other = (t + 1) % n;
        for i in mine(other) {
            let p = dirs_of[t].join(format!("f{i}"));
            let m =
                std::fs::metadata(&p).with_context(|| format!("cannot stat {}", p.display()))?;
            if !m.is_file() || m.len() != 0 {
                bail!("{} is not an empty file ({m:?})", p.display());
            }
        }
        Ok(())
    })?);
    out.push(phase(MetaPhase::List, files * n, &|t| {
        let mut count = 0;
        for e in std::fs::read_dir(&dirs_of[t])? {
            e?;
            count += 1;
        }
        if count != files {
            bail!(
                "{} lists {count} entries, {files} were created",
                dirs_of[t].display()
            );
        }
        Ok(())
    })?);
    out.push(phase(MetaPhase::Rename, files, &|t| {
        for i in mine(t) {
            let (a, b) = (
                dirs_of[t].join(format!("f{i}")),
                dirs_of[t].join(format!("g{i}")),
            );
            std::fs::rename(&a, &b).with_context(|| format!("cannot rename {}", a.display()))?;
        }
        Ok(())
    })?);
    out.push(phase(MetaPhase::Unlink, files, &|t| {
        for i in mine(t) {
            let p = dirs_of[t].join(format!("g{i}"));
            std::fs::remove_file(&p).with_context(|| format!("cannot unlink {}", p.display()))?;
        }
        Ok(())
    })?);
    let left = std::fs::read_dir(&dirs_of[0])?.count();
    if left != 0 {
        bail!(
            "{} still holds {left} entries after unlink",
            dirs_of[0].display()
        );
    }

    // mkdir tree: each mount builds its own subtree of dirs/n directories, as
    // ceil(sqrt(k)) top directories with the rest spread below them.
    let per = dirs.div_ceil(n);
    out.push(phase(MetaPhase::Mkdir, per * n, &|t| {
        let base = dirs_of[t].join(format!("tree{t}"));
        std::fs::create_dir(&base)?;
        let top = (per as f64).sqrt().ceil().max(1.0) as usize;
        let mut made = 0;
        for j in 0..top.min(per) {
            std::fs::create_dir(base.join(format!("d{j}")))?;
            made += 1;
        }
        let mut k = 0;
        while made < per {
            let p = base
                .join(format!("d{}", k % top))
                .join(format!("e{}", k / top));
            std::fs::create_dir(&p).with_context(|| format!("cannot mkdir {}", p.display()))?;
            made += 1;
            k += 1;
        }
        Ok(())
    })?);

    // Lock/unlock pairs: each mount takes and drops a write lock on a file of
    // its own (no contention), `files` pairs over all mounts.
    out.push(phase(MetaPhase::LockUnlock, files, &|t| {
        let p = dirs_of[t].join(format!("lock{t}"));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .with_context(|| format!("cannot open {}", p.display()))?;
        for _ in mine(t) {
            posix_lock(&f, libc::F_WRLCK)
                .with_context(|| format!("cannot lock {}", p.display()))?;
            posix_lock(&f, libc::F_UNLCK)
                .with_context(|| format!("cannot unlock {}", p.display()))?;
        }
        Ok(())
    })?);
    Ok(out)
}

/// fcntl(F_SETLK) of the whole of `f` (`typ`: F_WRLCK, F_RDLCK or F_UNLCK).
fn posix_lock(f: &File, typ: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed flock is a valid value; the fields are set below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: f is an open descriptor and fl a valid flock.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
