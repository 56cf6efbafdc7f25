//! When new chunk files become durable, and the cache of open chunk files never
//! serving a file that was replaced, deleted or moved aside. Real files in
//! temporary directories.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alces_chunkserver::format::{chunk_path, ChunkHeader, DATA_OFFSET, HEADER_SIZE};
use alces_chunkserver::metrics::Metrics;
use alces_chunkserver::store::{ChunkStore, VersionSpec};
use bytes::Bytes;

fn open_with(dirs: &[PathBuf], open_files: usize) -> Arc<ChunkStore> {
    Arc::new(ChunkStore::open_with(dirs, Metrics::default(), open_files).expect("store opens"))
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

fn filled(byte: u8, n: usize) -> Vec<u8> {
    vec![byte; n]
}

/// File descriptors of this process open on files under `dir`.
fn fds_under(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's descriptors")
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .count()
}

#[tokio::test]
async fn a_new_chunk_is_durable_only_after_sync() {
    let d = tempfile::tempdir().unwrap();
    let s = open_with(&[d.path().to_path_buf()], 64);
    // Every chunk folder exists from the start.
    let folders = std::fs::read_dir(d.path().join("chunks")).unwrap().count();
    assert_eq!(folders, 256);
    // A folder gone missing is made again by the creation, and the sync then
    // covers the chunks/ directory as well.
    let id = 0x0105;
    std::fs::remove_dir(chunk_path(d.path(), id).parent().unwrap()).unwrap();
    s.write(id, create(1), 0, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    assert!(
        s.is_unsynced(id),
        "an empty session chunk is not synced at creation"
    );
    // Later writes and a version bump keep it pending until a Sync.
    s.write(id, session(1, 2), 5, Bytes::from_static(b" world"))
        .await
        .unwrap();
    assert!(s.is_unsynced(id));
    // A Sync of another version is refused and changes nothing.
    assert_eq!(s.sync(id, 1).await.unwrap_err().errno(), libc::ESTALE);
    assert!(s.is_unsynced(id));
    s.sync(id, 2).await.unwrap();
    assert!(
        !s.is_unsynced(id),
        "Sync made the file and its entry durable"
    );
    // A second folder-sharing chunk (folder exists already) and one made by a
    // truncate.
    s.write(0x0205, create(1), 0, Bytes::from_static(b"x"))
        .await
        .unwrap();
    s.truncate(0x0306, create(1), 1000).await.unwrap();
    assert!(s.is_unsynced(0x0205) && s.is_unsynced(0x0306));
    s.sync(0x0205, 0).await.unwrap();
    s.sync(0x0306, 1).await.unwrap();
    assert!(!s.is_unsynced(0x0205) && !s.is_unsynced(0x0306));
    assert_eq!(s.read(id, 2, 0, 11).await.unwrap().0, b"hello world");

    // Deleting a pending chunk forgets it.
    s.write(0x0407, create(1), 0, Bytes::from_static(b"y"))
        .await
        .unwrap();
    assert!(s.delete(0x0407, 0).await.unwrap());
    assert!(!s.is_unsynced(0x0407));

    // What a killed process leaves in the page cache is all there on restart.
    s.write(0x0508, create(1), 0, Bytes::from_static(b"unsynced"))
        .await
        .unwrap();
    drop(s);
    let s = open_with(&[d.path().to_path_buf()], 64);
    assert_eq!(s.read(0x0508, 1, 0, 8).await.unwrap().0, b"unsynced");
    assert!(!s.is_unsynced(0x0508), "what the scan finds is on disk");
    assert_eq!(s.read(id, 2, 0, 11).await.unwrap().0, b"hello world");
}

#[tokio::test]
async fn replicated_and_copied_chunks_are_synced_at_creation() {
    let d = tempfile::tempdir().unwrap();
    let s = open_with(&[d.path().to_path_buf()], 64);
    assert!(s.install(1, 3, filled(7, 100_000)).await.unwrap());
    assert!(
        !s.is_unsynced(1),
        "a replicated copy is durable before it is reported"
    );
    // An empty replicated copy too.
    assert!(s.install(2, 3, Vec::new()).await.unwrap());
    assert!(!s.is_unsynced(2));
    let cow = VersionSpec {
        expected_version: 0,
        version: 1,
        create: true,
        copy_from_chunk_id: 1,
        copy_from_version: 3,
    };
    s.write(3, cow, 10, Bytes::from_static(b"changed"))
        .await
        .unwrap();
    assert!(!s.is_unsynced(3), "a copy-on-write copy is durable");
    // A replicated copy replacing an unsynced session chunk clears the mark.
    s.write(4, create(1), 0, Bytes::from_static(b"old"))
        .await
        .unwrap();
    assert!(s.is_unsynced(4));
    assert!(s.install(4, 2, filled(9, 10)).await.unwrap());
    assert!(!s.is_unsynced(4));
}

#[tokio::test]
async fn a_cached_file_never_serves_a_replaced_chunk() {
    let d = tempfile::tempdir().unwrap();
    let s = open_with(&[d.path().to_path_buf()], 64);
    let id = 0x77;
    let old = filled(b'a', 150_000);
    s.write(id, create(1), 0, Bytes::from(old.clone()))
        .await
        .unwrap();
    assert_eq!(s.read(id, 1, 0, 150_000).await.unwrap().0, old);
    assert!(s.open_files() >= 1, "the file stays open");

    // Replaced by a replicated copy of a newer version.
    let new = filled(b'b', 100_000);
    assert!(s.install(id, 2, new.clone()).await.unwrap());
    let (got, len) = s.read(id, 2, 0, 150_000).await.unwrap();
    assert_eq!(len, 100_000);
    assert_eq!(&got[..100_000], &new[..]);
    assert!(got[100_000..].iter().all(|b| *b == 0));

    // A version bump keeps the same file; writes through it are read back.
    s.write(id, session(2, 3), 0, Bytes::from_static(b"ccc"))
        .await
        .unwrap();
    assert_eq!(s.read(id, 3, 0, 4).await.unwrap().0, b"cccb");

    // Shrunk and grown again: the cut-off bytes are gone.
    s.truncate(id, session(3, 3), 2).await.unwrap();
    s.truncate(id, session(3, 3), 10).await.unwrap();
    assert_eq!(s.read(id, 3, 0, 10).await.unwrap().0, b"cc\0\0\0\0\0\0\0\0");

    // Deleted, then created anew with other bytes.
    assert!(s.delete(id, 0).await.unwrap());
    assert_eq!(s.read(id, 0, 0, 1).await.unwrap_err().errno(), libc::ENOENT);
    s.write(id, create(1), 0, Bytes::from_static(b"fresh"))
        .await
        .unwrap();
    assert_eq!(s.read(id, 1, 0, 5).await.unwrap().0, b"fresh");

    // Moved aside as damaged, then replicated again.
    let path = chunk_path(d.path(), id);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"X", DATA_OFFSET).unwrap(); // CRC of block 0 fails now
    drop(f);
    assert_eq!(s.read(id, 1, 0, 5).await.unwrap_err().errno(), libc::EIO);
    assert!(s.install(id, 4, b"again".to_vec()).await.unwrap());
    assert_eq!(s.read(id, 4, 0, 5).await.unwrap().0, b"again");

    // What the store reads is what the file at the chunk's path holds.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[DATA_OFFSET as usize..], b"again");
}

#[tokio::test]
async fn open_files_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let bound = 8;
    let s = open_with(&[d.path().to_path_buf()], bound);
    for id in 1..=40u64 {
        s.write(id, create(1), 0, Bytes::from(filled(id as u8, 1000)))
            .await
            .unwrap();
        assert!(s.open_files() <= bound);
    }
    for id in 1..=40u64 {
        assert_eq!(
            s.read(id, 1, 0, 1000).await.unwrap().0,
            filled(id as u8, 1000)
        );
        assert!(s.open_files() <= bound);
    }
    assert_eq!(s.open_files(), bound);
    let open = fds_under(d.path());
    assert!(
        open <= bound,
        "{open} descriptors open on chunk files, more than the bound {bound}"
    );
    drop(s);
    assert_eq!(fds_under(d.path()), 0, "closing the store closes its files");

    // With no cache every operation opens and closes the file.
    let s = open_with(&[d.path().to_path_buf()], 0);
    s.write(100, create(1), 0, Bytes::from_static(b"plain"))
        .await
        .unwrap();
    s.sync(100, 1).await.unwrap();
    assert_eq!(s.read(100, 1, 0, 5).await.unwrap().0, b"plain");
    assert_eq!(s.read(5, 1, 0, 1000).await.unwrap().0, filled(5, 1000));
    assert_eq!(s.open_files(), 0);
    assert_eq!(fds_under(d.path()), 0);
}

#[tokio::test]
async fn what_an_os_crash_leaves_of_a_new_chunk_is_dropped_at_startup() {
    let d = tempfile::tempdir().unwrap();
    let dirs = vec![d.path().to_path_buf()];
    let s = open_with(&dirs, 64);
    s.write(1, create(2), 0, Bytes::from_static(b"kept"))
        .await
        .unwrap();
    s.sync(1, 2).await.unwrap();
    drop(s);
    // The rename reached the disk but none of the data did.
    let empty = chunk_path(d.path(), 2);
    std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
    std::fs::write(&empty, b"").unwrap();
    // Only the header reached the disk, not the CRC table.
    let header_only = chunk_path(d.path(), 3);
    std::fs::create_dir_all(header_only.parent().unwrap()).unwrap();
    let h = ChunkHeader {
        chunk_id: 3,
        version: 1,
        length: 0,
    };
    std::fs::write(&header_only, h.encode()).unwrap();
    assert_eq!(std::fs::metadata(&header_only).unwrap().len(), HEADER_SIZE);
    // A header torn in the middle.
    let torn = chunk_path(d.path(), 4);
    std::fs::create_dir_all(torn.parent().unwrap()).unwrap();
    std::fs::write(&torn, &h.encode()[..20]).unwrap();
    // A file being built when the machine went down.
    let tmp = d.path().join("tmp").join("0000000000000005.1.tmp");
    std::fs::write(&tmp, b"partial").unwrap();

    let s = open_with(&dirs, 64);
    assert_eq!(s.read(1, 2, 0, 4).await.unwrap().0, b"kept");
    for id in [2, 3, 4, 5] {
        assert!(s.get(id).is_none(), "chunk {id} counts as absent");
        assert_eq!(s.read(id, 0, 0, 1).await.unwrap_err().errno(), libc::ENOENT);
    }
    assert_eq!(s.chunk_list().len(), 1);
    assert!(!empty.exists() && !header_only.exists() && !torn.exists());
    assert!(!tmp.exists(), "tmp/ is cleared");
    let damaged = std::fs::read_dir(d.path().join("damaged")).unwrap().count();
    assert_eq!(damaged, 3);
    // The slots are usable again.
    s.write(2, create(1), 0, Bytes::from_static(b"new"))
        .await
        .unwrap();
    assert_eq!(s.read(2, 1, 0, 3).await.unwrap().0, b"new");
}
