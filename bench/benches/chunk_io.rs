//! The chunkserver's chunk I/O through `ChunkStore` (what a Read or Write call
//! does once it reached the server): a 4 KiB read of a chunk in the page cache, a
//! 4 KiB write into an existing chunk, 1 MiB reads and writes, and a small file's
//! whole life on one server (create the chunk empty, write 16 KiB, sync). Chunk
//! files live in the system temp directory: run it on the disk the chunkserver
//! uses (`TMPDIR=/var/lib/alces cargo bench -p alces-bench --bench chunk_io`).

use std::sync::Arc;

use alces_chunkserver::metrics::Metrics;
use alces_chunkserver::store::{ChunkStore, VersionSpec};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Size of the chunk the read and write figures work in.
const CHUNK: u64 = 64 * MIB;

fn spec(version: u64, create: bool) -> VersionSpec {
    VersionSpec {
        expected_version: version,
        version,
        create,
        ..Default::default()
    }
}

fn chunk_io(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store =
        Arc::new(ChunkStore::open(&[dir.path().to_path_buf()], Metrics::default()).expect("store"));
    // One full chunk to read and overwrite.
    let id = 1u64;
    let piece = Bytes::from(vec![0x5au8; MIB as usize]);
    rt.block_on(async {
        for i in 0..CHUNK / MIB {
            store
                .write(id, spec(1, true), i * MIB, piece.clone())
                .await
                .expect("fill");
        }
    });

    let mut g = c.benchmark_group("chunk io");
    g.sample_size(50);
    let mut at = 0u64;
    let mut next = |step: u64| {
        at = (at + 7 * step + 4096) % (CHUNK - step);
        at - at % 4096
    };
    g.throughput(Throughput::Bytes(4 * KIB));
    g.bench_function("read 4 KiB (page cache)", |b| {
        b.iter(|| {
            let off = next(4 * KIB);
            rt.block_on(store.read(id, 1, off, 4 * KIB)).expect("read")
        })
    });
    let small = Bytes::from(vec![0xa5u8; 4 * KIB as usize]);
    g.bench_function("write 4 KiB", |b| {
        b.iter(|| {
            let off = next(4 * KIB);
            rt.block_on(store.write(id, spec(1, false), off, small.clone()))
                .expect("write")
        })
    });
    g.throughput(Throughput::Bytes(MIB));
    g.bench_function("read 1 MiB (page cache)", |b| {
        b.iter(|| {
            let off = next(MIB);
            rt.block_on(store.read(id, 1, off, MIB)).expect("read")
        })
    });
    g.bench_function("write 1 MiB", |b| {
        b.iter(|| {
            let off = next(MIB);
            rt.block_on(store.write(id, spec(1, false), off, piece.clone()))
                .expect("write")
        })
    });
    g.throughput(Throughput::Elements(1));
    let file = Bytes::from(vec![0x33u8; 16 * KIB as usize]);
    let mut new_id = 1000u64;
    g.bench_function("small file: create chunk + write 16 KiB + sync", |b| {
        b.iter(|| {
            new_id += 1;
            rt.block_on(async {
                store
                    .write(new_id, spec(1, true), 0, file.clone())
                    .await
                    .expect("create");
                store.sync(new_id, 1).await.expect("sync");
            })
        })
    });
    g.bench_function("small file: create chunk + write 16 KiB (no sync)", |b| {
        b.iter(|| {
            new_id += 1;
            rt.block_on(store.write(new_id, spec(1, true), 0, file.clone()))
                .expect("create")
        })
    });
    g.finish();
}

criterion_group!(benches, chunk_io);
criterion_main!(benches);
