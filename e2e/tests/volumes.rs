//! Directory quotas, copy-on-write snapshots and the trash against a live
//! cluster: bad input, two mounts filling one quota, a snapshot under
//! concurrent writes, SIGKILL of the master during snapshot and in the middle
//! of a purge of thousands of trashed files, and the space of a snapshot and
//! its copies freed to the last chunk file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alces_e2e::{pattern, wait_until, write_synced, Cluster, Proc};

const MIB: u64 = 1 << 20;

fn fsck_ok(c: &Cluster) -> serde_json::Value {
    let v = c
        .cli_json(&["fsck"])
        .unwrap_or_else(|e| panic!("alces fsck: {e}"));
    assert_eq!(v["ok"], true, "consistency check: {v}");
    v
}

fn statvfs(p: &Path) -> libc::statvfs {
    let cp = alces_e2e::cpath(p);
    // SAFETY: statvfs(3) with a valid NUL-terminated path and an out struct.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(
            libc::statvfs(cp.as_ptr(), &mut s),
            0,
            "statvfs {}",
            p.display()
        );
        s
    }
}

/// Appends 64 KiB blocks (fsynced each) to `path` until the write fails;
/// returns the errno of the failure.
fn fill(path: &Path, seed: u64) -> i32 {
    let block = pattern(seed, 64 * 1024);
    let mut f = match fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => f,
        Err(e) => return e.raw_os_error().unwrap_or(0),
    };
    loop {
        if let Err(e) = f.write_all(&block).and_then(|_| f.sync_all()) {
            return e.raw_os_error().unwrap_or(0);
        }
    }
}

#[test]
fn quotas_bad_input_two_mounts_and_df() {
    let c = Cluster::start_default();
    fs::create_dir(c.path("v")).unwrap();
    fs::create_dir(c.path("u")).unwrap();
    write_synced(&c.path("u/data"), &pattern(1, 300_000)).unwrap();
    let v = c.path("v").to_string_lossy().into_owned();
    let u = c.path("u").to_string_lossy().into_owned();

    // Bad input: clear errors.
    let e = c
        .cli_json(&["quota", "set", &v, "--bytes", "-5"])
        .unwrap_err();
    assert!(e.contains("--bytes '-5'"), "{e}");
    let e = c
        .cli_json(&["quota", "set", &v, "--bytes", "99999999T"])
        .unwrap_err();
    assert!(e.contains("too large"), "{e}");
    let e = c
        .cli_json(&["quota", "set", &v, "--bytes", "2000000T"])
        .unwrap_err();
    assert!(e.contains("larger than the largest accepted"), "{e}");
    let e = c
        .cli_json(&["quota", "set", &v, "--inodes", "-1"])
        .unwrap_err();
    assert!(e.contains("--inodes '-1'"), "{e}");
    let e = c.cli_json(&["quota", "set", &v]).unwrap_err();
    assert!(e.contains("at least one limit"), "{e}");
    let e = c
        .cli_json(&[
            "quota",
            "set",
            &v,
            "--bytes",
            "1MiB",
            "--soft-bytes",
            "2MiB",
        ])
        .unwrap_err();
    assert!(e.contains("above the hard limit"), "{e}");
    let file = c.path("u/data").to_string_lossy().into_owned();
    let e = c
        .cli_json(&["quota", "set", &file, "--bytes", "1MiB"])
        .unwrap_err();
    assert!(e.contains("not a directory"), "{e}");
    let e = c
        .cli_json(&["quota", "set", &u, "--bytes", "1000"])
        .unwrap_err();
    assert!(e.contains("below the current usage"), "{e}");
    let e = c.cli_json(&["quota", "get", &u]).unwrap_err();
    assert!(e.contains("has no quota"), "{e}");

    // du from the master's counters.
    let du = c.cli_json(&["du", &u]).unwrap();
    assert_eq!(
        (du["bytes"].as_u64(), du["inodes"].as_u64()),
        (Some(300_000), Some(2))
    );

    // Two mounts fill one 4 MiB quota at once: never more than the limit stored.
    let limit = 4 * MIB;
    let q = c
        .cli_json(&["quota", "set", &v, "--bytes", "4MiB", "--inodes", "1000"])
        .unwrap();
    assert_eq!(q["hard_bytes"].as_u64(), Some(limit));
    let other = c.mount_extra("second", &[]);
    let (pa, pb) = (c.path("v/a"), other.path.join("v/b"));
    let ta = std::thread::spawn(move || fill(&pa, 2));
    let tb = std::thread::spawn(move || fill(&pb, 3));
    let (ea, eb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!((ea, eb), (libc::EDQUOT, libc::EDQUOT));
    let stored =
        fs::metadata(c.path("v/a")).unwrap().len() + fs::metadata(c.path("v/b")).unwrap().len();
    assert!(
        stored <= limit,
        "{stored} bytes stored under a {limit} byte quota"
    );
    let q = c.cli_json(&["quota", "get", &v]).unwrap();
    assert_eq!(q["used_bytes"].as_u64(), Some(stored));
    eprintln!("two mounts filled {stored} of {limit} quota bytes");
    // A full quota refuses a new write past the end but allows a create.
    let e = fill(&c.path("v/c"), 4);
    assert_eq!(e, libc::EDQUOT);

    // df: the quota is the size, its usage the usage (statfs of an inode under
    // it, and a mount of the directory).
    let s = statvfs(&c.path("v/a"));
    assert_eq!(s.f_blocks * s.f_frsize, limit);
    let used = (s.f_blocks - s.f_bfree) * s.f_frsize;
    assert!(
        used.abs_diff(stored) <= s.f_frsize,
        "df used {used}, stored {stored}"
    );
    assert_eq!(s.f_files, 1000);
    let sub = c.mount_extra("vol", &["--subdir", "/v"]);
    let s = statvfs(&sub.path);
    assert_eq!(s.f_blocks * s.f_frsize, limit);
    let df = alces_e2e::run_ok("df", &["-B1", &sub.path.to_string_lossy()], Path::new("/"));
    assert!(df.contains(&limit.to_string()), "df shows the quota: {df}");

    // Inode limit: creates beyond it fail with EDQUOT.
    fs::create_dir(c.path("n")).unwrap();
    let n = c.path("n").to_string_lossy().into_owned();
    c.cli_json(&["quota", "set", &n, "--inodes", "3"]).unwrap();
    for i in 0..3 {
        fs::File::create(c.path(&format!("n/f{i}"))).unwrap();
    }
    let e = fs::File::create(c.path("n/f3")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));
    // A move into the full tree is refused too; a hard link elsewhere is not.
    fs::File::create(c.path("u/x")).unwrap();
    let e = fs::rename(c.path("u/x"), c.path("n/x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT));

    // The client library sees the same quota; removing it lifts the limit.
    let cl = c.client();
    let q = c.block_on(cl.quota_get("/n")).expect("quota_get");
    assert_eq!((q.hard_inodes, q.used_inodes), (3, 3));
    c.block_on(cl.quota_remove("/n")).expect("quota_remove");
    fs::File::create(c.path("n/f3")).unwrap();
    let e = c.cli_json(&["quota", "rm", &n]).unwrap_err();
    assert!(e.contains("has no quota"), "{e}");
    drop(sub);
    drop(other);
    fsck_ok(&c);
}

/// One logged write of the writer: file index, seed, when it started and when
/// its fsync returned.
#[derive(Clone, Copy, Debug)]
struct Logged {
    file: usize,
    seed: u64,
    started: Instant,
    done: Option<Instant>,
}

#[test]
fn snapshot_of_a_tree_under_writes_is_consistent_to_one_moment() {
    let c = Cluster::start_default();
    const FILES: usize = 64;
    let size = MIB as usize;
    fs::create_dir(c.path("t")).unwrap();
    for i in 0..FILES {
        write_synced(&c.path(&format!("t/f{i:02}")), &pattern(i as u64, size)).unwrap();
    }
    let other = c.mount_extra("writer", &[]);
    let log: Arc<Mutex<Vec<Logged>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop, root) = (log.clone(), stop.clone(), other.path.join("t"));
        std::thread::spawn(move || {
            let mut seed = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                seed += 1;
                let file = (seed as usize * 7) % FILES;
                let idx = {
                    let mut l = log.lock().unwrap();
                    l.push(Logged {
                        file,
                        seed,
                        started: Instant::now(),
                        done: None,
                    });
                    l.len() - 1
                };
                let p = root.join(format!("f{file:02}"));
                let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
                f.write_all(&pattern(seed, size)).unwrap();
                f.sync_all().unwrap();
                drop(f);
                log.lock().unwrap()[idx].done = Some(Instant::now());
            }
        })
    };
    wait_until(
        "the writer to finish 10 writes",
        Duration::from_secs(60),
        || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|l| l.done.is_some())
                .count()
                >= 10
        },
    );
    let t0 = Instant::now();
    let snap = c.cli_json(&[
        "snapshot",
        &c.path("t").to_string_lossy(),
        &c.path("snap").to_string_lossy(),
    ]);
    let t1 = Instant::now();
    let snap = snap.unwrap_or_else(|e| panic!("alces snapshot: {e}"));
    assert_eq!(snap["inodes"].as_u64(), Some(FILES as u64 + 1));
    // Keep writing after the snapshot: every write now copies a shared chunk.
    wait_until("10 more writes", Duration::from_secs(60), || {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.done.is_some_and(|d| d > t1))
            .count()
            >= 10
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let log = log.lock().unwrap().clone();
    for i in 0..FILES {
        // Allowed contents: the last write done before the snapshot started,
        // or one that overlapped the snapshot call.
        let mut allowed: Vec<u64> = Vec::new();
        let before = log
            .iter()
            .filter(|l| l.file == i && l.done.is_some_and(|d| d < t0))
            .map(|l| l.seed)
            .next_back()
            .unwrap_or(i as u64);
        allowed.push(before);
        allowed.extend(
            log.iter()
                .filter(|l| l.file == i && l.started < t1 && l.done.is_none_or(|d| d >= t0))
                .map(|l| l.seed),
        );
        let got = fs::read(c.path(&format!("snap/f{i:02}"))).unwrap();
        assert!(
            allowed.iter().any(|s| pattern(*s, size) == got),
            "snapshot of f{i:02} matches none of the writes {allowed:?} at snapshot time"
        );
        // The live file has the writer's last write.
        let last = log
            .iter()
            .filter(|l| l.file == i)
            .map(|l| l.seed)
            .next_back()
            .unwrap_or(i as u64);
        assert!(
            fs::read(c.path(&format!("t/f{i:02}"))).unwrap() == pattern(last, size),
            "live f{i:02} does not hold the last write"
        );
    }
    let v = fsck_ok(&c);
    eprintln!("after the snapshot and writes: {v}");
    // Errors: into its own subtree, onto an existing path, missing source.
    let e = c
        .cli_json(&[
            "snapshot",
            &c.path("t").to_string_lossy(),
            &c.path("t/inner").to_string_lossy(),
        ])
        .unwrap_err();
    assert!(e.contains("into its own subtree"), "{e}");
    let e = c
        .cli_json(&[
            "snapshot",
            &c.path("t").to_string_lossy(),
            &c.path("snap").to_string_lossy(),
        ])
        .unwrap_err();
    assert!(e.contains("already exists"), "{e}");
    let e = c
        .cli_json(&["snapshot", "--fs-path", "/missing", "/x"])
        .unwrap_err();
    assert!(e.contains("snapshot source '/missing'"), "{e}");
    // A file snapshot through the client library.
    let cl = c.client();
    c.block_on(cl.snapshot("/t/f00", "/f00.snap"))
        .expect("file snapshot");
    assert_eq!(
        fs::read(c.path("f00.snap")).unwrap(),
        fs::read(c.path("t/f00")).unwrap()
    );
    drop(other);
}

fn trash_ids(c: &Cluster) -> HashMap<String, u64> {
    c.cli_json(&["trash", "list"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["id"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Chunk files on every chunkserver's disks: chunk id -> copies.
fn disk_chunks(c: &Cluster) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for p in (1..=c.opts.chunkservers).flat_map(|i| c.chunk_files(i)) {
        let id = p
            .file_stem()
            .and_then(|s| u64::from_str_radix(&s.to_string_lossy(), 16).ok())
            .unwrap_or_else(|| panic!("chunk file name {}", p.display()));
        *out.entry(id).or_insert(0) += 1;
    }
    out
}

/// Bytes of every chunk file on every chunkserver's disks.
fn disk_chunk_bytes(c: &Cluster) -> u64 {
    (1..=c.opts.chunkservers)
        .flat_map(|i| c.chunk_files(i))
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Copies each chunk has at the default goal.
const GOAL: usize = 2;

/// Waits until the chunk files on the disks are exactly `expected` (each with
/// the goal's copies, no other chunk file) and the master's chunk table and
/// its view of the chunkservers hold exactly those too; returns the chunk
/// files' bytes.
fn wait_disks_exactly(c: &Cluster, what: &str, expected: &BTreeSet<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let disk = disk_chunks(c);
        let fsck = c.cli_json(&["fsck"]).unwrap_or_default();
        let on_disk: BTreeSet<u64> = disk.keys().copied().collect();
        if on_disk == *expected
            && disk.values().all(|n| *n == GOAL)
            && fsck["ok"] == true
            && fsck["chunks"].as_u64() == Some(expected.len() as u64)
            && fsck["chunks_on_servers"] == fsck["chunks"]
            && fsck["unknown_chunks_on_servers"] == 0
        {
            return disk_chunk_bytes(c);
        }
        let last = format!(
            "{} chunk ids on disk ({} expected), leaked {:?}, missing {:?}, copies {:?}, fsck {fsck}",
            on_disk.len(),
            expected.len(),
            on_disk.difference(expected).take(5).collect::<Vec<_>>(),
            expected.difference(&on_disk).take(5).collect::<Vec<_>>(),
            disk.iter().filter(|(_, n)| **n != GOAL).take(5).collect::<Vec<_>>(),
        );
        assert!(
            Instant::now() < deadline,
            "{what}: the chunk files on disk never matched the referenced chunks: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Chunk ids of the file at `fs_path` (from the filesystem root).
fn file_chunks(c: &Cluster, fs_path: &str) -> Vec<u64> {
    c.file_info(fs_path)
        .unwrap_or_else(|e| panic!("file info {fs_path}: {e}"))
        .chunks
        .iter()
        .map(|ch| ch.chunk_id)
        .collect()
}

/// Space figures that must come back exactly once freed data is gone.
#[derive(Debug, PartialEq, Eq)]
struct Space {
    /// Chunk ids on the disks.
    chunks: BTreeSet<u64>,
    /// Bytes of the chunk files.
    chunk_bytes: u64,
    /// Chunks in the master's table (`alces status`).
    status_chunks: u64,
    /// `df` of the volume (its quota): used bytes and used inodes.
    df_used: (u64, u64),
    /// `du` of the volume: bytes and inodes.
    du: (u64, u64),
    /// Bytes the whole namespace accounts.
    namespace_bytes: u64,
}

/// Measures [`Space`] once the disks hold exactly the chunk table's chunks.
fn space(c: &Cluster, vol: &str, expected: &BTreeSet<u64>) -> Space {
    let chunk_bytes = wait_disks_exactly(c, vol, expected);
    let s = statvfs(&c.path(vol.trim_start_matches('/')));
    let du = c
        .cli_json(&["du", &c.path(vol.trim_start_matches('/')).to_string_lossy()])
        .unwrap();
    let fsck = fsck_ok(c);
    Space {
        chunks: expected.clone(),
        chunk_bytes,
        status_chunks: c.status().expect("status").chunks,
        df_used: ((s.f_blocks - s.f_bfree) * s.f_frsize, s.f_files - s.f_ffree),
        du: (
            du["bytes"].as_u64().unwrap_or(u64::MAX),
            du["inodes"].as_u64().unwrap_or(u64::MAX),
        ),
        namespace_bytes: fsck["namespace_bytes"].as_u64().unwrap_or(u64::MAX),
    }
}

/// Distinct chunk ids in chunk files on every chunkserver's disks.
fn chunk_ids_on_disk(c: &Cluster) -> std::collections::HashSet<String> {
    (1..=c.opts.chunkservers)
        .flat_map(|i| c.chunk_files(i))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect()
}

fn wait_space_freed(c: &Cluster) {
    wait_until(
        "chunk files on disk to match the chunk table",
        Duration::from_secs(60),
        || {
            let v = match c.cli_json(&["fsck"]) {
                Ok(v) => v,
                Err(_) => return false,
            };
            v["ok"] == true
                && v["unknown_chunks_on_servers"] == 0
                && v["chunks_on_servers"] == v["chunks"]
                && chunk_ids_on_disk(c).len() as u64 == v["chunks"].as_u64().unwrap_or(u64::MAX)
        },
    );
}

#[test]
fn trash_restore_expiry_and_master_crashes() {
    let c = Cluster::start_default();
    fs::create_dir(c.path("d")).unwrap();
    let data = pattern(9, 1_500_000);
    write_synced(&c.path("d/f"), &data).unwrap();

    // Deleted: in the trash with its path; restore by id.
    let t = c
        .cli_json(&["trash", "time", "get", &c.path("d").to_string_lossy()])
        .unwrap();
    assert_eq!(t["seconds"].as_u64(), Some(24 * 3600));
    // `set` answers in JSON too (and setting the default again changes nothing).
    let t = c
        .cli_json(&[
            "trash",
            "time",
            "set",
            &c.path("d").to_string_lossy(),
            "86400",
        ])
        .unwrap();
    assert_eq!(t["seconds"].as_u64(), Some(24 * 3600));
    fs::remove_file(c.path("d/f")).unwrap();
    let ids = trash_ids(&c);
    let id = ids["/d/f"];
    let du = c.cli_json(&["du", &c.path("d").to_string_lossy()]).unwrap();
    assert_eq!(du["bytes"].as_u64(), Some(0));
    // Restoring onto a path that exists now fails clearly; --to restores elsewhere.
    fs::write(c.path("d/f"), b"new").unwrap();
    let e = c
        .cli_json(&["trash", "restore", &id.to_string()])
        .unwrap_err();
    assert!(e.contains("exists now"), "{e}");
    let e = c.cli_json(&["trash", "restore", "123456789"]).unwrap_err();
    assert!(e.contains("trash id 123456789 does not exist"), "{e}");
    let e = c.cli_json(&["trash", "restore", "not-an-id"]).unwrap_err();
    assert!(e.contains("neither a trash id"), "{e}");
    c.cli_json(&[
        "trash",
        "restore",
        "/d/f",
        "--to",
        &c.path("d/f.old").to_string_lossy(),
    ])
    .unwrap();
    assert_eq!(fs::read(c.path("d/f.old")).unwrap(), data);
    assert!(trash_ids(&c).is_empty());

    // Trash time 0: deletes free at once; a short trash time runs out.
    let z = c.path("zero");
    fs::create_dir(&z).unwrap();
    let o = c.cli(&["trash", "time", "set", &z.to_string_lossy(), "0"]);
    assert!(o.status.success());
    write_synced(&z.join("g"), &pattern(5, 100_000)).unwrap();
    fs::remove_file(z.join("g")).unwrap();
    assert!(!trash_ids(&c).contains_key("/zero/g"));
    let s = c.path("short");
    fs::create_dir(&s).unwrap();
    assert!(c
        .cli(&["trash", "time", "set", &s.to_string_lossy(), "1"])
        .status
        .success());
    write_synced(&s.join("h"), &pattern(6, 100_000)).unwrap();
    fs::remove_file(s.join("h")).unwrap();
    wait_until("the trash time to run out", Duration::from_secs(30), || {
        !trash_ids(&c).contains_key("/short/h")
    });
    wait_space_freed(&c);

    // SIGKILL the master during a snapshot of a tree.
    let tree = c.path("tree");
    fs::create_dir(&tree).unwrap();
    for i in 0..400 {
        write_synced(&tree.join(format!("f{i}")), &pattern(i, 3000)).unwrap();
    }
    let cl = c.client();
    let mut removed: BTreeSet<u64> = BTreeSet::new();
    for i in 0..400 {
        if i % 2 == 0 {
            removed.extend(file_chunks(&c, &format!("/tree/f{i}")));
            fs::remove_file(tree.join(format!("f{i}"))).unwrap();
        }
    }
    // Every chunk is still referenced (the removed files are in the trash).
    let before: BTreeSet<u64> = disk_chunks(&c).keys().copied().collect();
    wait_disks_exactly(&c, "before the snapshot", &before);
    let mut snap = std::process::Command::new(alces_e2e::bin("alces"));
    snap.args(["snapshot", "--fs-path", "/tree", "/tree.snap"]);
    for (k, v) in c.env() {
        snap.env(k, v);
    }
    let mut child = snap.spawn().unwrap();
    c.kill9(Proc::Master);
    let _ = child.wait();
    c.restart(Proc::Master);
    fsck_ok(&c);
    let src = c.block_on(cl.du("/tree")).expect("du");
    match c.block_on(cl.du("/tree.snap")) {
        Ok(d) => assert_eq!((d.bytes, d.inodes), (src.bytes, src.inodes)),
        Err(e) => assert_eq!(e.errno(), libc::ENOENT, "{e}"),
    }
    // A snapshot copies no data: whether or not it was applied, the disks hold
    // exactly the chunks they held before.
    wait_disks_exactly(&c, "after the killed snapshot", &before);

    // Purging the trash frees exactly the removed files' chunks.
    let n = trash_ids(&c).len();
    assert!(n >= 200, "{n} trash entries");
    let r = c.cli_json(&["trash", "purge"]).unwrap();
    assert_eq!(r["purged"].as_u64(), Some(n as u64));
    assert!(trash_ids(&c).is_empty());
    let left: BTreeSet<u64> = before.difference(&removed).copied().collect();
    let bytes = wait_disks_exactly(&c, "after the purge", &left);
    wait_space_freed(&c);
    // Status agrees with the disks once the data is freed.
    let st = c.status().expect("status");
    assert_eq!(st.chunks, left.len() as u64);
    eprintln!(
        "status used {} bytes (the disks' statvfs), chunk files {bytes} bytes",
        st.used_bytes
    );
}

/// Writes `files` files of a few KiB under `dir` (an existing directory,
/// from the filesystem root) through the client library, 16 at a time.
fn write_files(c: &Cluster, cl: &alces_client::Client, dir: &str, files: usize) {
    let caller = alces_client::Caller::current();
    c.block_on(async {
        let parent = cl.resolve(dir).await.expect("resolve").inode;
        let slots = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..files {
            let (cl, slots, caller) = (cl.clone(), slots.clone(), caller.clone());
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                let name = format!("f{i}");
                let a = cl
                    .mknod(
                        parent,
                        name.as_bytes(),
                        &alces_client::NewNode {
                            kind: alces_client::FileType::Regular,
                            mode: 0o644,
                            umask: 0,
                            rdev: 0,
                            exclusive: true,
                        },
                        &caller,
                    )
                    .await?;
                let h = cl.open(a.inode, libc::O_RDWR, &caller).await?;
                h.write(0, &pattern(i as u64, 1000 + 3 * i)).await?;
                h.flush().await?;
                h.release().await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("write a file");
        }
    });
}

/// Unlinks `f0..f{files}` in each of `dirs`, then the directories, 16 at a time.
fn remove_files(c: &Cluster, cl: &alces_client::Client, dirs: &[String], files: usize) {
    let caller = alces_client::Caller::current();
    c.block_on(async {
        let slots = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = tokio::task::JoinSet::new();
        for d in dirs {
            let parent = cl.resolve(d).await.expect("resolve").inode;
            for i in 0..files {
                let (cl, slots, caller) = (cl.clone(), slots.clone(), caller.clone());
                tasks.spawn(async move {
                    let _slot = slots.acquire_owned().await.expect("semaphore");
                    cl.unlink(parent, format!("f{i}").as_bytes(), &caller).await
                });
            }
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("task").expect("unlink");
        }
        for d in dirs {
            let (parent, name) = d.rsplit_once('/').expect("absolute path");
            let parent = cl
                .resolve(if parent.is_empty() { "/" } else { parent })
                .await
                .expect("resolve")
                .inode;
            cl.rmdir(parent, name.as_bytes(), &caller)
                .await
                .expect("rmdir");
        }
    });
}

/// SIGKILL of the master in the middle of a trash purge of thousands of files
/// sharing chunks (a tree and four snapshots of it). Expired entries are
/// freed at most 1000 per second, so the test sees the purge under way and
/// kills the master there. After the restart the reference counts and usage
/// are exact; the purge then finishes and the disks, the status, `df` and
/// `du` are back to what they were before the files were written.
#[test]
fn sigkill_in_the_middle_of_a_trash_purge() {
    const FILES: usize = 1000;
    const COPIES: usize = 5;
    /// At most this many trash entries are freed per second.
    const PER_TICK: usize = 1000;
    const TRASH_SECS: u64 = 15;
    let c = Cluster::start_default();
    fs::create_dir(c.path("vol")).unwrap();
    let vol = c.path("vol").to_string_lossy().into_owned();
    c.cli_json(&["quota", "set", &vol, "--bytes", "1GiB"])
        .unwrap();
    write_synced(&c.path("vol/keep"), &pattern(1, 1_500_000)).unwrap();
    let base_chunks: BTreeSet<u64> = file_chunks(&c, "/vol/keep").into_iter().collect();
    let base = space(&c, "/vol", &base_chunks);

    let cl = c.client();
    c.block_on(cl.mkdir_p("/vol/p0", 0o755)).expect("mkdir");
    write_files(&c, &cl, "/vol/p0", FILES);
    let dirs: Vec<String> = (0..COPIES).map(|k| format!("/vol/p{k}")).collect();
    for d in &dirs[1..] {
        c.block_on(cl.snapshot("/vol/p0", d)).expect("snapshot");
    }
    let v = fsck_ok(&c);
    assert_eq!(v["shared_chunks"].as_u64(), Some(FILES as u64), "{v}");
    c.block_on(cl.trash_time_set("/vol", TRASH_SECS))
        .expect("trash time");
    let t0 = Instant::now();
    remove_files(&c, &cl, &dirs, FILES);
    let total = FILES * COPIES;
    let trashed = c.block_on(cl.trash_list()).expect("trash list").len();
    assert_eq!(
        trashed,
        total,
        "every removed file is in the trash (removing took {:?} of the {TRASH_SECS} s trash time)",
        t0.elapsed()
    );

    // Kill the master once two seconds' worth of entries are freed (their
    // records are durable: the next batch came a second later) and at least
    // two more seconds' worth are left.
    let mut at_kill = 0;
    wait_until(
        "the purge to be under way",
        Duration::from_secs(TRASH_SECS + 60),
        || {
            let n = c.block_on(cl.trash_list()).map_or(total, |l| l.len());
            assert!(
                n >= 2 * PER_TICK,
                "the purge went past the middle before the test saw it ({n} entries left)"
            );
            at_kill = n;
            total - n >= 2 * PER_TICK
        },
    );
    c.kill9(Proc::Master);
    eprintln!("master killed with {at_kill} of {total} trash entries left");
    c.restart(Proc::Master);
    let v = fsck_ok(&c);
    let left = v["trash_entries"].as_u64().unwrap_or(u64::MAX) as usize;
    eprintln!("after the restart: {v}");
    assert!(
        left <= total - PER_TICK,
        "the purge's first second was lost ({left} of {total} entries left)"
    );
    wait_until(
        "the restarted master to finish the purge",
        Duration::from_secs(60),
        || c.block_on(cl.trash_list()).is_ok_and(|l| l.is_empty()),
    );
    let after = space(&c, "/vol", &base_chunks);
    assert_eq!(after, base, "space after the purge");
}

/// A snapshot, an overwrite of the source (copy-on-write), removal of both
/// sides and the trash expiry: every chunk file goes away, and the status,
/// `df` and `du` are back to what they were before.
#[test]
fn snapshot_overwrite_and_removal_free_every_chunk() {
    let c = Cluster::start_default();
    fs::create_dir(c.path("vol")).unwrap();
    let vol = c.path("vol").to_string_lossy().into_owned();
    c.cli_json(&["quota", "set", &vol, "--bytes", "1GiB"])
        .unwrap();
    write_synced(&c.path("vol/keep"), &pattern(1, 1_500_000)).unwrap();
    let base_chunks: BTreeSet<u64> = file_chunks(&c, "/vol/keep").into_iter().collect();
    let base = space(&c, "/vol", &base_chunks);

    fs::create_dir(c.path("vol/s")).unwrap();
    let a = pattern(2, (3 * MIB + MIB / 2) as usize);
    let b = pattern(3, 300_000);
    write_synced(&c.path("vol/s/a"), &a).unwrap();
    write_synced(&c.path("vol/s/b"), &b).unwrap();
    let mut written = base_chunks.clone();
    written.extend(file_chunks(&c, "/vol/s/a"));
    written.extend(file_chunks(&c, "/vol/s/b"));
    assert_eq!(written.len(), base_chunks.len() + 5);
    let snap = c
        .cli_json(&[
            "snapshot",
            &c.path("vol/s").to_string_lossy(),
            &c.path("vol/s.snap").to_string_lossy(),
        ])
        .unwrap();
    assert_eq!(snap["inodes"].as_u64(), Some(3));
    wait_disks_exactly(&c, "after the snapshot", &written);
    assert_eq!(fsck_ok(&c)["shared_chunks"].as_u64(), Some(5));

    // Overwrite the middle of a (chunks 1 and 2) and all of b: copy-on-write.
    let mut a2 = a.clone();
    let mid = pattern(4, (MIB + 1000) as usize);
    a2[MIB as usize + 10..MIB as usize + 10 + mid.len()].copy_from_slice(&mid);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(c.path("vol/s/a"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &mid, MIB + 10).unwrap();
        f.sync_all().unwrap();
    }
    let b2 = pattern(5, 300_000);
    write_synced(&c.path("vol/s/b"), &b2).unwrap();
    assert!(fs::read(c.path("vol/s/a")).unwrap() == a2);
    assert!(fs::read(c.path("vol/s/b")).unwrap() == b2);
    assert!(
        fs::read(c.path("vol/s.snap/a")).unwrap() == a,
        "the snapshot kept a"
    );
    assert!(
        fs::read(c.path("vol/s.snap/b")).unwrap() == b,
        "the snapshot kept b"
    );
    let mut all = written.clone();
    all.extend(file_chunks(&c, "/vol/s/a"));
    all.extend(file_chunks(&c, "/vol/s/b"));
    assert_eq!(all.len(), written.len() + 3, "three chunks were copied");
    wait_disks_exactly(&c, "after the overwrite", &all);
    assert_eq!(fsck_ok(&c)["shared_chunks"].as_u64(), Some(2));

    // Remove both sides; the trash time runs out; everything is freed.
    assert!(c.cli(&["trash", "time", "set", &vol, "1"]).status.success());
    fs::remove_dir_all(c.path("vol/s")).unwrap();
    fs::remove_dir_all(c.path("vol/s.snap")).unwrap();
    wait_until("the trash time to run out", Duration::from_secs(30), || {
        trash_ids(&c).is_empty()
    });
    let after = space(&c, "/vol", &base_chunks);
    assert_eq!(
        after, base,
        "space after removing the snapshot and its source"
    );
}

/// A client opens a write session on a chunk shared with a snapshot and dies
/// before any write (its `WriteChunk` is sent by hand, never followed by a
/// chunkserver write): the file keeps its data, a later write through the
/// mount lands on top of it, the snapshot is unchanged, the copy exists on as
/// many chunkservers as the goal asks and the consistency check is exact.
#[test]
fn a_copy_on_write_session_abandoned_before_any_write_loses_nothing() {
    use alces_proto::pb::{self, master_client::MasterClient};

    let c = Cluster::start_default();
    let old = pattern(21, 300_000);
    write_synced(&c.path("f"), &old).unwrap();
    c.cli_json(&[
        "snapshot",
        &c.path("f").to_string_lossy(),
        &c.path("f.snap").to_string_lossy(),
    ])
    .unwrap();
    let shared = file_chunks(&c, "/f");
    assert_eq!(shared, file_chunks(&c, "/f.snap"));
    let inode = c.file_info("/f").unwrap().attr.unwrap().inode;

    // The dead client: a session and a WriteChunk on the shared chunk, then
    // nothing (the session is left to expire).
    let reply = c.block_on(async {
        let mut m = MasterClient::new(c.channel(&c.master));
        let s = m
            .register_session(pb::RegisterSessionRequest::default())
            .await
            .expect("RegisterSession")
            .into_inner();
        m.write_chunk(pb::ChunkRequest {
            session_id: s.session_id,
            inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .expect("WriteChunk on a shared chunk")
        .into_inner()
    });
    assert_ne!(reply.chunk_id, shared[0], "a shared chunk is never written");
    assert!(!reply.chain.is_empty());

    // Through the mount (another client): a write into the middle of the
    // chunk, then the whole file read back, through the mount and through a
    // fresh client (nothing cached from before).
    let mut new = old.clone();
    let patch = pattern(22, 5000);
    new[100_000..105_000].copy_from_slice(&patch);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(c.path("f"))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &patch, 100_000)
            .expect("write through the mount after the abandoned session");
        f.sync_all()
            .expect("fsync through the mount after the abandoned session");
    }
    assert!(
        fs::read(c.path("f")).unwrap() == new,
        "the file lost data of its shared chunk"
    );
    let cl = c.client();
    let caller = alces_client::Caller::current();
    let read = c.block_on(async {
        let h = cl.open(inode, libc::O_RDONLY, &caller).await?;
        let data = h.read(0, old.len() as u64 + 10).await?;
        h.release().await?;
        Ok::<_, alces_client::Error>(data)
    });
    let read = read.unwrap_or_else(|e| panic!("read after the abandoned session: {e}"));
    assert!(read[..] == new[..], "a fresh client reads other bytes");
    assert!(
        fs::read(c.path("f.snap")).unwrap() == old,
        "the snapshot kept its data"
    );
    let now = file_chunks(&c, "/f");
    assert_ne!(now[0], shared[0]);
    let info = c.file_info("/f").unwrap();
    assert_eq!(info.chunks[0].copies.len(), 2, "{info:?}");
    let v = fsck_ok(&c);
    assert_eq!(v["shared_chunks"].as_u64(), Some(0), "{v}");
    // On disk: the snapshot's chunk and the file's copy, two copies each (the
    // copy that was abandoned, if any other, is deleted).
    let expected: BTreeSet<u64> = [shared[0], now[0]].into_iter().collect();
    wait_disks_exactly(&c, "after the copy-on-write", &expected);
}
