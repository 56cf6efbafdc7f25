//! The master's changelog commit: one small record written and made durable
//! with `fdatasync`, side by side for a file that grows with every record (the
//! old append) and for zero-filled space allocated ahead and overwritten (what
//! `master/src/changelog.rs` does). Files live in the system temp directory:
//! run it on the disk the master uses (`TMPDIR=/var/lib/alces cargo bench ...`).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, Criterion};

/// About the size of a framed create record.
const RECORD: [u8; 96] = [0x5a; 96];
/// Zeros allocated ahead, as the master's writer does.
const PREALLOCATE: u64 = 4 << 20;

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("changelog commit (96-byte record + fdatasync)");
    g.sample_size(30);

    let path = dir.path().join("append.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open");
    g.bench_function("append (file grows)", |b| {
        b.iter(|| {
            f.write_all(&RECORD).expect("write");
            f.sync_data().expect("fdatasync");
        })
    });

    let path = dir.path().join("prealloc.log");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut allocated = 0u64;
    let mut pos = 0u64;
    g.bench_function("overwrite preallocated zeros", |b| {
        b.iter(|| {
            let end = pos + RECORD.len() as u64;
            if end > allocated {
                let zeros = vec![0u8; PREALLOCATE as usize];
                f.write_all_at(&zeros, allocated).expect("preallocate");
                allocated += PREALLOCATE;
            }
            f.write_all_at(&RECORD, pos).expect("write");
            f.sync_data().expect("fdatasync");
            pos = end;
        })
    });
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
