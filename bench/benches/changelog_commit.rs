//! The master's changelog commit, measured on the real writer
//! (`alces_master::disk::changelog::Writer`): records appended, then waited
//! for until the writer thread has written them and made them durable with
//! `fdatasync` into space it allocated ahead. Two shapes: one small record per
//! commit (a lone mutation), and 64 records per commit (the group commit of
//! concurrent mutations). Files live in the system temp directory: run it on
//! the disk the master uses (`TMPDIR=/var/lib/alces cargo bench ...`).

use alces_master::disk::changelog::Writer;
use alces_proto::pb::{self, changelog_record::Op, ChangelogRecord};
use criterion::{criterion_group, criterion_main, Criterion};
use prometheus_client::metrics::histogram::Histogram;

/// A create record of about the size the master logs for a small file.
fn record(version: u64) -> ChangelogRecord {
    ChangelogRecord {
        reply: None,
        version,
        time_ns: 1_700_000_000_000_000_000,
        op: Some(Op::Create(pb::CreateOp {
            parent: 1,
            name: format!("file-{version:012}").into_bytes(),
            inode: version + 1,
            kind: pb::FileType::Regular as i32,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            rdev: 0,
            symlink_target: Vec::new(),
        })),
    }
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let writer = Writer::start(dir.path(), 1, 0, Histogram::new([0.001])).expect("writer");
    let mut durable = writer.durable();
    let mut next = 1u64;
    let mut g = c.benchmark_group("changelog commit (real writer, fdatasync)");
    g.sample_size(30);
    for batch in [1u64, 64] {
        g.bench_function(format!("{batch} record(s) per commit"), |b| {
            b.iter(|| {
                for _ in 0..batch {
                    writer.append(&record(next)).expect("append");
                    next += 1;
                }
                let last = next - 1;
                let ok = rt
                    .block_on(durable.wait_for(|d| d.version >= last || d.failed))
                    .map(|d| !d.failed)
                    .unwrap_or(false);
                assert!(ok, "the changelog write failed");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
