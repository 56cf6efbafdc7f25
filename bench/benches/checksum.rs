//! CRC32C throughput over the 64 KiB blocks chunk files are checksummed in.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn crc32c_blocks(c: &mut Criterion) {
    let block: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i * 2_654_435_761) as u8)
        .collect();
    let mut g = c.benchmark_group("crc32c");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("64KiB block", |b| {
        b.iter(|| alces_proto::checksum::crc32c(std::hint::black_box(&block)))
    });
    let chunk_part: Vec<u8> = block.iter().cycle().take(1 << 20).copied().collect();
    g.throughput(Throughput::Bytes(chunk_part.len() as u64));
    g.bench_function("1MiB write as 16 block CRCs", |b| {
        b.iter(|| {
            std::hint::black_box(&chunk_part)
                .chunks(64 * 1024)
                .map(alces_proto::checksum::crc32c)
                .fold(0u32, |acc, c| acc ^ c)
        })
    });
    g.finish();
}

criterion_group!(benches, crc32c_blocks);
criterion_main!(benches);
