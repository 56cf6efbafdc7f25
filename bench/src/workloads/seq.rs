//! Sequential write (goal 1 and 2) and sequential read, cold and warm.

use std::time::Instant;

use anyhow::Result;

use super::{rate, Figures, Params};
use crate::data::{read_file, verify, write_file, Pattern, BLOCK};
use crate::exec::drop_caches;
use crate::figures::Figure;
use crate::systems::System;

/// One repetition; `rep` makes the file names unique.
pub fn run(sys: &mut dyn System, p: &Params, pat: &Pattern, rep: usize) -> Result<Figures> {
    let mut out = Vec::new();
    let mib = (p.file_blocks as usize * BLOCK) as f64 / (1 << 20) as f64;
    let len = p.file_blocks * BLOCK as u64;
    let zeros = sys.reads_zeros();

    // Goal 1: written, then read back (untimed) to verify, then removed.
    let d1 = sys.make_dir("seq-g1", 1)?;
    let f1 = d1.join(format!("file-{rep}"));
    let t = Instant::now();
    let crc1 = write_file(pat, &f1, 1000 + rep as u64, p.file_blocks)?;
    out.push((Figure::SeqWriteG1, rate(mib, t)));
    verify(&f1, zeros, len, crc1, read_file(&f1)?)?;
    std::fs::remove_file(&f1)?;

    // Goal 2: written through the main mount, read through a fresh one.
    let rel = format!("seq-g2/file-{rep}");
    let d2 = sys.make_dir("seq-g2", 2)?;
    let f2 = d2.join(format!("file-{rep}"));
    let t = Instant::now();
    let crc2 = write_file(pat, &f2, 2000 + rep as u64, p.file_blocks)?;
    out.push((Figure::SeqWriteG2, rate(mib, t)));

    drop_caches()?;
    let roots = sys.open_mounts(1)?;
    let result = (|| -> Result<()> {
        let fresh = roots[0].join(&rel);
        let t = Instant::now();
        let got = read_file(&fresh)?;
        out.push((Figure::SeqReadCold, rate(mib, t)));
        verify(&fresh, zeros, len, crc2, got)?;
        let t = Instant::now();
        let got = read_file(&fresh)?;
        out.push((Figure::SeqReadWarm, rate(mib, t)));
        verify(&fresh, zeros, len, crc2, got)?;
        Ok(())
    })();
    sys.close_mounts();
    result?;
    std::fs::remove_file(&f2)?;
    Ok(out)
}
