//! Small files: write many 16 KiB files, then read them back (checksums verified).
//! With several mounts each writes its share at the same time, and each reads the files
//! another mount wrote.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::rate;
use crate::data::{crc, Pattern};

/// Writes `files` files of `size` bytes into `write_dirs` (the same directory seen
/// through one mount each; one thread per mount), then calls `prepare_read` (which drops
/// caches and returns the directories to read through, as many as `write_dirs`), reads
/// every file back and returns (write, read) files/s. `zeros`: the filesystem returns
/// zeros instead of data.
pub fn phases(
    write_dirs: &[PathBuf],
    files: usize,
    size: usize,
    pat: &Pattern,
    zeros: bool,
    prepare_read: impl FnOnce() -> Result<Vec<PathBuf>>,
) -> Result<(f64, f64)> {
    let n = write_dirs.len();
    let content = |i: usize| {
        let mut b = vec![0u8; size];
        pat.fill(7, i as u64, &mut b);
        b
    };
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|t| {
                let dir = &write_dirs[t];
                s.spawn(move || -> Result<()> {
                    for i in (t..files).step_by(n) {
                        let p = dir.join(format!("s{i}"));
                        let mut f = std::fs::File::create(&p)
                            .with_context(|| format!("cannot create {}", p.display()))?;
                        f.write_all(&content(i))
                            .with_context(|| format!("cannot write {}", p.display()))?;
                    }
                    Ok(())
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a writer thread panicked"))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let write_rate = rate(files as f64, t0);

    let read_dirs = prepare_read()?;
    if read_dirs.len() != n {
        bail!("{n} writing mounts but {} reading mounts", read_dirs.len());
    }

    let m = read_dirs.len();
    let zero_crc = crc(&vec![0u8; size]);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..m)
            .map(|t| {
                let dir = &read_dirs[t];
                // Each reader takes the files written through the next mount.
                let from = (t + 1) % n.max(1);
                s.spawn(move || -> Result<()> {
                    let mut buf = Vec::with_capacity(size);
                    for i in (from..files).step_by(n) {
                        let p = dir.join(format!("s{i}"));
                        buf.clear();
                        std::fs::File::open(&p)
                            .and_then(|mut f| f.read_to_end(&mut buf))
                            .with_context(|| format!("cannot read {}", p.display()))?;
                        let want = if zeros { zero_crc } else { crc(&content(i)) };
                        if buf.len() != size || crc(&buf) != want {
                            bail!(
                                "data of {} does not verify ({} bytes read, {size} written)",
                                p.display(),
                                buf.len()
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
                    .unwrap_or_else(|_| bail!("a reader thread panicked"))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    let read_rate = rate(files as f64, t0);
    Ok((write_rate, read_rate))
}
