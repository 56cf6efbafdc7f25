//! Bytes a writer stored past a file's end but never recorded (its mount was
//! SIGKILLed mid-write) never show inside the file when another mount later
//! writes past the end leaving a gap, or extends the file over them: a read
//! returns the bytes last written, or an error, never other bytes.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use alces_e2e::{pattern, wait_until, write_synced, Cluster, Options};

const MIB: u64 = 1 << 20;
/// Chunk file header + CRC table before the data (see the chunk file layout).
const DATA_OFFSET: u64 = 8192;

/// Waits until every copy of chunk `index` of `fs_path` stores `len` bytes.
fn wait_stored(c: &Cluster, fs_path: &str, index: u64, len: u64) {
    wait_until(
        &format!("chunk {index} of {fs_path} to store {len} bytes on every copy"),
        Duration::from_secs(30),
        || {
            let Ok(info) = c.file_info(fs_path) else {
                return false;
            };
            let Some(ch) = info.chunks.iter().find(|ch| ch.index == index) else {
                return false;
            };
            let copies = c.chunk_copies(ch.chunk_id);
            copies.len() >= 2
                && copies
                    .iter()
                    .all(|p| fs::metadata(p).is_ok_and(|m| m.len() >= DATA_OFFSET + len))
        },
    );
}

/// Asserts `data` is `head`, then zeros up to `gap_end`, then `tail`.
fn assert_gap(what: &str, data: &[u8], head: &[u8], gap_end: usize, tail: &[u8]) {
    assert_eq!(data.len(), gap_end + tail.len(), "{what}: size");
    assert!(
        data[..head.len()] == head[..],
        "{what}: the synced head is intact"
    );
    let gap = &data[head.len()..gap_end];
    assert!(
        gap.iter().all(|b| *b == 0),
        "{what}: a killed writer's unrecorded bytes show in the gap ({} non-zero bytes, first at {})",
        gap.iter().filter(|b| **b != 0).count(),
        head.len() + gap.iter().position(|b| *b != 0).unwrap_or(0)
    );
    assert!(
        data[gap_end..] == tail[..],
        "{what}: the new bytes read back"
    );
}

#[test]
fn a_killed_writers_bytes_never_show_when_another_mount_grows_the_file() {
    let c = Cluster::start(Options {
        // A short lease: the master notices the killed mount within seconds.
        env: vec![("ALCES_SESSION_TIMEOUT".into(), "3".into())],
        ..Default::default()
    })
    .expect("start cluster");
    let head = pattern(1, 4096);
    for name in ["gap", "grow", "next"] {
        write_synced(&c.path(name), &head).unwrap();
    }
    let writer = c.mount_extra("writer", &[]);
    // The killed mount's writes: a full first chunk (the head rewritten as it
    // is, then new bytes past the end) and a full second chunk wholly past the
    // end. A chunk whose buffered data reaches its end is sent at once; the
    // write session stays open and the new size is never recorded.
    let mut files = Vec::new();
    for (name, at) in [("gap", 0), ("grow", 0), ("next", MIB)] {
        let mut data = pattern(2, MIB as usize);
        if at == 0 {
            data[..head.len()].copy_from_slice(&head);
        }
        let f = fs::OpenOptions::new()
            .write(true)
            .open(writer.path.join(name))
            .unwrap();
        f.write_all_at(&data, at).unwrap();
        files.push(f);
    }
    wait_stored(&c, "/gap", 0, MIB);
    wait_stored(&c, "/grow", 0, MIB);
    wait_stored(&c, "/next", 1, MIB);
    let sessions = c.status().expect("status").sessions;
    // SAFETY: kill(2) on the pid of the mount this test started.
    unsafe {
        libc::kill(writer.pid(), libc::SIGKILL);
    }
    drop(files);
    drop(writer);
    wait_until(
        "the master to close the killed mount's session",
        Duration::from_secs(30),
        || c.status().is_ok_and(|s| s.sessions < sessions),
    );
    for name in ["gap", "grow", "next"] {
        assert_eq!(
            fs::metadata(c.path(name)).unwrap().len(),
            4096,
            "{name}: the killed writer never recorded a new size"
        );
    }

    // Another mount writes past the end inside the chunk holding it.
    let tail = pattern(3, 1000);
    let gap_at = 600_000;
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("gap"))
        .unwrap();
    f.write_all_at(&tail, gap_at as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_gap(
        "gap",
        &fs::read(c.path("gap")).unwrap(),
        &head,
        gap_at,
        &tail,
    );

    // Another mount extends the file (truncate) over the killed writer's bytes.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(c.path("grow"))
        .unwrap();
    f.set_len(MIB + 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_gap(
        "grow",
        &fs::read(c.path("grow")).unwrap(),
        &head,
        (MIB + 100) as usize,
        &[],
    );

    // Another mount writes past a chunk wholly past the end that holds them.
    let at = 2 * MIB + 10;
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(c.path("next"))
        .unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&tail).unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut data = Vec::new();
    f.read_to_end(&mut data).unwrap();
    assert_gap("next", &data, &head, at as usize, &tail);
    let v = c.cli_json(&["fsck"]).expect("fsck");
    assert_eq!(v["ok"], true, "consistency check: {v}");
}
