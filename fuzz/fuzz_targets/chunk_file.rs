//! A chunk file on a chunkserver's disk: its header alone, then the whole
//! file found by the store's start-up scan and read back. A file the store
//! keeps must never return bytes whose block CRC does not match (the store
//! refuses them), and a bad file must not stop the store from opening.
#![no_main]

use alces_chunkserver::format::{chunk_path, ChunkHeader};
use alces_chunkserver::metrics::Metrics;
use alces_chunkserver::store::ChunkStore;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ChunkHeader::decode(data) {
        assert_eq!(ChunkHeader::decode(&h.encode()), Ok(h));
    }
    // On tmpfs when there is one: the store syncs what it creates.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let path = chunk_path(dir.path(), 7);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    let store = ChunkStore::open(&[dir.path().to_path_buf()], Metrics::default())
        .expect("a store opens over a directory holding a bad chunk file");
    if let Some(meta) = store.get(7) {
        let _ = store.read_locked(7, meta.version, 0, 1 << 20);
        let _ = store.read_locked(7, 0, 65536 - 7, 200_000);
    }
});
