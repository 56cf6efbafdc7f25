//! Chunk store tests on real files in temporary directories.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alces_chunkserver::format::{chunk_path, ChunkHeader, DATA_OFFSET};
use alces_chunkserver::metrics::Metrics;
use alces_chunkserver::store::{ChunkStore, StoreError, VersionSpec};
use bytes::Bytes;

const BLOCK: u64 = 65536;

fn open(dirs: &[PathBuf]) -> Arc<ChunkStore> {
    Arc::new(ChunkStore::open(dirs, Metrics::default()).expect("store opens"))
}

fn create(v: u64) -> VersionSpec {
    VersionSpec {
        expected_version: 0,
        version: v,
        create: true,
        ..Default::default()
    }
}

fn session(expected: u64, v: u64) -> VersionSpec {
    VersionSpec {
        expected_version: expected,
        version: v,
        ..Default::default()
    }
}

/// Deterministic pseudo-random bytes.
fn pattern(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn apply_write(model: &mut Vec<u8>, offset: usize, data: &[u8]) {
    if model.len() < offset + data.len() {
        model.resize(offset + data.len(), 0);
    }
    model[offset..offset + data.len()].copy_from_slice(data);
}

async fn read_all(s: &Arc<ChunkStore>, id: u64, len: u64) -> Vec<u8> {
    s.read(id, 0, 0, len).await.expect("read succeeds").0
}

fn dir_files(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

#[tokio::test]
async fn round_trip_with_partial_blocks_survives_restart() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open(&dirs);
    let id = 0x42;
    let mut model = Vec::new();
    s.write(id, create(1), 0, Bytes::new()).await.unwrap();
    let writes: &[(usize, usize)] = &[
        (1000, 100_000),
        (70_000, 10),
        (300_000, 5), // leaves a zero gap
        (0, 1),
        (65_535, 2),       // straddles a block boundary
        (131_072, 65_536), // exactly one aligned block
        (299_990, 20),
    ];
    for (i, (off, len)) in writes.iter().enumerate() {
        let data = pattern(i as u64, *len);
        s.write(id, create(1), *off as u64, Bytes::from(data.clone()))
            .await
            .unwrap();
        apply_write(&mut model, *off, &data);
        assert_eq!(s.get(id).unwrap().length, model.len() as u64);
    }
    // Reads of arbitrary ranges, including past the stored length.
    let got = read_all(&s, id, model.len() as u64 + 5000).await;
    assert_eq!(&got[..model.len()], &model[..]);
    assert!(got[model.len()..].iter().all(|b| *b == 0));
    let (part, len) = s.read(id, 1, 65_000, 1_000).await.unwrap();
    assert_eq!(part, model[65_000..66_000]);
    assert_eq!(len, model.len() as u64);
    let file_len = std::fs::metadata(chunk_path(d.path(), id)).unwrap().len();
    assert_eq!(file_len, DATA_OFFSET + model.len() as u64);
    drop(s);

    let s = open(&dirs);
    assert_eq!(s.get(id).unwrap().length, model.len() as u64);
    assert_eq!(read_all(&s, id, model.len() as u64).await, model);
    let (chunks, bytes, damaged) = alces_chunkserver::scrubber::pass(&s, 0).await;
    assert_eq!((chunks, bytes, damaged), (1, model.len() as u64, 0));
}

#[tokio::test]
async fn truncate_shrinks_and_grows_with_zeros() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open(&dirs);
    let id = 7;
    let data = pattern(9, 200_000);
    s.write(id, create(1), 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    s.truncate(id, create(1), 100_000).await.unwrap();
    assert_eq!(s.get(id).unwrap().length, 100_000);
    let got = read_all(&s, id, 200_000).await;
    assert_eq!(&got[..100_000], &data[..100_000]);
    assert!(
        got[100_000..].iter().all(|b| *b == 0),
        "cut tail reads as zeros"
    );

    s.truncate(id, create(1), 300_000).await.unwrap();
    let got = read_all(&s, id, 300_000).await;
    assert_eq!(&got[..100_000], &data[..100_000]);
    assert!(
        got[100_000..].iter().all(|b| *b == 0),
        "grown part is zeros"
    );
    // A write in the grown area keeps the zeros around it.
    s.write(id, create(1), 250_000, Bytes::from_static(b"xyz"))
        .await
        .unwrap();
    s.truncate(id, create(1), 131_072).await.unwrap();
    s.truncate(id, create(1), 0).await.unwrap();
    assert_eq!(s.get(id).unwrap().length, 0);
    s.truncate(id, create(1), 70_000).await.unwrap();
    drop(s);
    let s = open(&dirs);
    assert_eq!(read_all(&s, id, 70_000).await, vec![0u8; 70_000]);
    let (_, _, damaged) = alces_chunkserver::scrubber::pass(&s, 0).await;
    assert_eq!(damaged, 0);
}

#[tokio::test]
async fn version_rule() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open(&dirs);
    let id = 99;
    // Unknown chunk without create.
    let e = s
        .write(id, session(1, 2), 0, Bytes::from_static(b"a"))
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);
    let e = s.read(id, 0, 0, 10).await.unwrap_err();
    assert_eq!(e.errno(), libc::ENOENT);

    s.write(id, create(1), 0, Bytes::from_static(b"one"))
        .await
        .unwrap();
    // expected_version matches: moves to the new version.
    s.write(id, session(1, 2), 0, Bytes::from_static(b"two"))
        .await
        .unwrap();
    assert_eq!(s.get(id).unwrap().version, 2);
    // Already at the version: written as is.
    s.write(id, session(1, 2), 3, Bytes::from_static(b"!"))
        .await
        .unwrap();
    // Neither: stale.
    let e = s
        .write(id, session(1, 3), 0, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::ESTALE);
    assert!(matches!(e, StoreError::Stale { have: 2, .. }));
    let e = s.truncate(id, session(5, 6), 0).await.unwrap_err();
    assert_eq!(e.errno(), libc::ESTALE);
    // Reads and syncs check the version too (0 = any).
    assert_eq!(s.read(id, 1, 0, 1).await.unwrap_err().errno(), libc::ESTALE);
    assert_eq!(s.sync(id, 1).await.unwrap_err().errno(), libc::ESTALE);
    s.sync(id, 2).await.unwrap();
    assert_eq!(s.read(id, 2, 0, 4).await.unwrap().0, b"two!");
    // Version 0 is never valid.
    assert_eq!(
        s.write(id, session(0, 0), 0, Bytes::new())
            .await
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    // A write past the largest chunk is refused.
    let e = s
        .write(
            id,
            session(1, 2),
            64 * 1024 * 1024,
            Bytes::from_static(b"x"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EINVAL);
    // The version bump is persisted in the header.
    let raw = std::fs::read(chunk_path(d.path(), id)).unwrap();
    let h = ChunkHeader::decode(&raw[..4096]).unwrap();
    assert_eq!((h.chunk_id, h.version, h.length), (id, 2, 4));

    // Delete only up to the given version.
    assert!(!s.delete(id, 1).await.unwrap());
    assert!(s.get(id).is_some());
    assert!(s.delete(id, 2).await.unwrap());
    assert!(s.get(id).is_none());
    assert!(!chunk_path(d.path(), id).exists());
    let deltas = s.take_deltas();
    assert!(deltas.removed.contains(&id));
    assert!(!deltas.changed.contains_key(&id));
}

#[tokio::test]
async fn corrupted_block_is_detected_and_never_returned() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open(&dirs);
    let id = 0x1234;
    let data = pattern(3, 3 * BLOCK as usize);
    s.write(id, create(1), 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    s.take_deltas();
    let path = chunk_path(d.path(), id);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[data[BLOCK as usize + 5] ^ 0xff], DATA_OFFSET + BLOCK + 5)
        .unwrap();
    drop(f);
    // Block 0 is untouched and still readable.
    assert_eq!(s.read(id, 1, 0, 100).await.unwrap().0, data[..100]);
    // Any read touching block 1 fails.
    let e = s.read(id, 1, BLOCK + 100, 10).await.unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains("CRC"), "{e}");
    // Dropped from the list, reported, moved aside.
    assert!(s.get(id).is_none());
    assert_eq!(
        s.read(id, 1, 0, 10).await.unwrap_err().errno(),
        libc::ENOENT
    );
    let deltas = s.take_deltas();
    assert!(deltas.damaged.contains(&id));
    assert!(!path.exists());
    assert_eq!(dir_files(&d.path().join("damaged")).len(), 1);
    assert_eq!(s.disk_infos()[0].corrupt_chunks, 1);
    assert_eq!(s.metrics().crc_failures.get(), 1);
}

#[tokio::test]
async fn partial_write_over_corrupt_block_fails() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&[d.path().to_path_buf()]);
    let id = 5;
    s.write(id, create(1), 0, Bytes::from(pattern(1, 1000)))
        .await
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(chunk_path(d.path(), id))
        .unwrap();
    f.write_all_at(b"\0\0\0\0", DATA_OFFSET + 500).unwrap();
    drop(f);
    // Keeping the old bytes of a corrupt block would launder the corruption.
    let e = s
        .write(id, create(1), 10, Bytes::from_static(b"ab"))
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(s.get(id).is_none());
}

#[tokio::test]
async fn truncated_file_is_damaged() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&[d.path().to_path_buf()]);
    let id = 77;
    s.write(id, create(1), 0, Bytes::from(pattern(2, 200_000)))
        .await
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(chunk_path(d.path(), id))
        .unwrap();
    f.set_len(DATA_OFFSET + 1000).unwrap();
    drop(f);
    // Even a read of the intact first bytes fails: the file is not what its header says.
    let e = s.read(id, 1, 0, 10).await.unwrap_err();
    assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
    assert!(e.to_string().contains("bytes"), "{e}");
    assert!(s.take_deltas().damaged.contains(&id));
}

#[tokio::test]
async fn bad_header_at_startup_moves_file_to_damaged() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open(&dirs);
    s.write(1, create(3), 0, Bytes::from_static(b"good"))
        .await
        .unwrap();
    s.write(2, create(3), 0, Bytes::from_static(b"bad"))
        .await
        .unwrap();
    drop(s);
    let bad = chunk_path(d.path(), 2);
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(b"XX", 20).unwrap(); // inside the header: its CRC fails
    drop(f);
    // A file too short to hold a header.
    let short = chunk_path(d.path(), 3);
    std::fs::create_dir_all(short.parent().unwrap()).unwrap();
    std::fs::write(&short, b"tiny").unwrap();

    // A good chunk file in the wrong folder is moved where it belongs.
    let good = chunk_path(d.path(), 1);
    let stray = d.path().join("chunks/zz/0000000000000001.chunk");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::rename(&good, &stray).unwrap();

    let s = open(&dirs);
    assert_eq!(s.get(1).unwrap().version, 3);
    assert!(good.exists() && !stray.exists());
    assert_eq!(s.read(1, 3, 0, 4).await.unwrap().0, b"good");
    assert!(s.get(2).is_none());
    assert!(s.get(3).is_none());
    assert!(!bad.exists() && !short.exists());
    let moved = dir_files(&d.path().join("damaged"));
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(moved
        .iter()
        .any(|n| n.starts_with("0000000000000002.chunk")));
    assert_eq!(s.chunk_list().len(), 1);
}

#[tokio::test]
async fn copy_on_write_create() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let s = open(&[d1.path().to_path_buf(), d2.path().to_path_buf()]);
    let src = pattern(5, 150_000);
    s.write(10, create(4), 0, Bytes::from(src.clone()))
        .await
        .unwrap();
    let spec = VersionSpec {
        expected_version: 0,
        version: 1,
        create: true,
        copy_from_chunk_id: 10,
        copy_from_version: 4,
    };
    s.write(11, spec, 70_000, Bytes::from_static(b"changed"))
        .await
        .unwrap();
    let mut want = src.clone();
    want[70_000..70_007].copy_from_slice(b"changed");
    assert_eq!(read_all(&s, 11, 150_000).await, want);
    assert_eq!(read_all(&s, 10, 150_000).await, src, "source untouched");
    assert_eq!(s.get(11).unwrap().version, 1);
    // A copy from a version the source does not have is stale.
    let bad = VersionSpec {
        copy_from_version: 3,
        ..spec
    };
    assert_eq!(
        s.write(12, bad, 0, Bytes::new()).await.unwrap_err().errno(),
        libc::ESTALE
    );
    // A copy from a missing chunk: not found.
    let missing = VersionSpec {
        copy_from_chunk_id: 999,
        ..spec
    };
    assert_eq!(
        s.truncate(13, missing, 0).await.unwrap_err().errno(),
        libc::ENOENT
    );
    let infos = s.disk_infos();
    assert_eq!(infos.len(), 2);
    assert_eq!(infos.iter().map(|d| d.chunks).sum::<u64>(), 2);
}

#[tokio::test]
async fn scrubber_finds_corruption() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&[d.path().to_path_buf()]);
    for id in 1..=3u64 {
        s.write(id, create(1), 0, Bytes::from(pattern(id, 100_000)))
            .await
            .unwrap();
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(chunk_path(d.path(), 2))
        .unwrap();
    f.write_all_at(b"corrupt", DATA_OFFSET + 90_000).unwrap();
    drop(f);
    s.take_deltas();
    // A header changed behind the server's back is caught too.
    s.write(4, create(2), 0, Bytes::from_static(b"four"))
        .await
        .unwrap();
    let stale = ChunkHeader {
        chunk_id: 4,
        version: 1,
        length: 4,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .open(chunk_path(d.path(), 4))
        .unwrap()
        .write_all_at(&stale.encode(), 0)
        .unwrap();
    let (chunks, _, damaged) = alces_chunkserver::scrubber::pass(&s, 1 << 30).await;
    assert_eq!((chunks, damaged), (4, 2));
    assert!(s.get(4).is_none());
    assert!(s.get(2).is_none());
    let deltas = s.take_deltas();
    let mut damaged: Vec<u64> = deltas.damaged.into_iter().collect();
    damaged.sort_unstable();
    assert_eq!(damaged, vec![2, 4]);
}

#[tokio::test]
async fn concurrent_writes_to_one_chunk_are_serialised() {
    let d = tempfile::tempdir().unwrap();
    let s = open(&[d.path().to_path_buf()]);
    s.write(1, create(1), 0, Bytes::new()).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let s = s.clone();
        // Overlapping unaligned writes racing on shared blocks.
        tasks.push(tokio::spawn(async move {
            let data = vec![i as u8 + 1; 5000];
            s.write(1, create(1), i * 4000, Bytes::from(data)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Every block's CRC matches: no torn read-modify-write.
    let (_, _, damaged) = alces_chunkserver::scrubber::pass(&s, 0).await;
    assert_eq!(damaged, 0);
    assert_eq!(s.get(1).unwrap().length, 15 * 4000 + 5000);
}

#[tokio::test]
async fn random_writes_and_truncates_match_a_model() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let mut s = open(&dirs);
    let id = 0xabc;
    let mut model: Vec<u8> = Vec::new();
    s.write(id, create(1), 0, Bytes::new()).await.unwrap();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = move |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % m
    };
    for step in 0..300u64 {
        match next(10) {
            0 => {
                let len = next(600_000);
                s.truncate(id, create(1), len).await.unwrap();
                model.resize(len as usize, 0);
            }
            1 => {
                // Restart: the scan must see the same chunk.
                drop(s);
                s = open(&dirs);
            }
            _ => {
                let off = next(500_000) as usize;
                let max = if next(2) == 0 { 100 } else { 200_000 };
                let len = 1 + next(max) as usize;
                let data = pattern(step, len);
                s.write(id, create(1), off as u64, Bytes::from(data.clone()))
                    .await
                    .unwrap();
                apply_write(&mut model, off, &data);
            }
        }
        assert_eq!(s.get(id).unwrap().length, model.len() as u64, "step {step}");
        let off = next(model.len() as u64 + 1);
        let len = next(300_000);
        let (got, _) = s.read(id, 1, off, len).await.unwrap();
        for (i, b) in got.iter().enumerate() {
            let want = model.get(off as usize + i).copied().unwrap_or(0);
            assert_eq!(*b, want, "step {step}: byte {}", off as usize + i);
        }
    }
    assert_eq!(read_all(&s, id, model.len() as u64).await, model);
    let (_, _, damaged) = alces_chunkserver::scrubber::pass(&s, 0).await;
    assert_eq!(damaged, 0);
}

#[tokio::test]
async fn reads_are_right_whether_or_not_the_page_cache_holds_the_chunk() {
    use std::os::fd::AsRawFd;
    // On the repository's disk, not a tmpfs (whose pages cannot be evicted).
    let d = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
    let s = open(&[d.path().to_path_buf()]);
    let id = 77;
    let data = pattern(9, 8 * BLOCK as usize);
    s.write(id, create(1), 0, Bytes::from(data.clone()))
        .await
        .unwrap();
    s.sync(id, 1).await.unwrap();
    let evict = || {
        let f = std::fs::File::open(chunk_path(d.path(), id)).unwrap();
        // SAFETY: a valid open descriptor; advice has no memory effects.
        let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(r, 0);
    };
    let small = alces_chunkserver::store::INLINE_READ_MAX / 4;
    let large = alces_chunkserver::store::INLINE_READ_MAX * 2;
    for (what, off, len, drop_cache) in [
        (
            "small, evicted (blocking pool)",
            3 * BLOCK + 17,
            small,
            true,
        ),
        ("small, cached (calling task)", 3 * BLOCK + 17, small, false),
        ("large, evicted", 100, large, true),
        ("past the stored end", 8 * BLOCK - 10, 4096, true),
    ] {
        if drop_cache {
            evict();
        }
        let (got, len_stored) = s.read(id, 1, off, len).await.unwrap();
        assert_eq!(len_stored, 8 * BLOCK, "{what}");
        let end = (off + len).min(8 * BLOCK) as usize;
        assert_eq!(got.len(), len as usize, "{what}");
        assert!(
            got[..end - off as usize] == data[off as usize..end],
            "{what}"
        );
        assert!(got[end - off as usize..].iter().all(|b| *b == 0), "{what}");
    }
}
