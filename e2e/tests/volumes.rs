//! Directory quotas, copy-on-write snapshots and the trash against a live
//! cluster: bad input, two mounts filling one quota, a snapshot under
//! concurrent writes, and SIGKILL of the master during snapshot and purge.

use std::collections::HashMap;
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
    for i in 0..400 {
        if i % 2 == 0 {
            fs::remove_file(tree.join(format!("f{i}"))).unwrap();
        }
    }
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

    // SIGKILL the master during a trash purge.
    assert!(trash_ids(&c).len() >= 200);
    let mut purge = std::process::Command::new(alces_e2e::bin("alces"));
    purge.args(["trash", "purge"]);
    for (k, v) in c.env() {
        purge.env(k, v);
    }
    let before = trash_ids(&c).len();
    let mut child = purge.spawn().unwrap();
    // Kill it once the purge has visibly started (or finished).
    wait_until("the purge to start", Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_)))
            || c.cli_json(&["trash", "list"])
                .map(|v| v.as_array().map_or(0, |a| a.len()) < before)
                .unwrap_or(false)
    });
    c.kill9(Proc::Master);
    let _ = child.wait();
    c.restart(Proc::Master);
    fsck_ok(&c);
    let left = trash_ids(&c).len();
    eprintln!("{left} trash entries left after the purge was killed");
    let r = c.cli_json(&["trash", "purge"]).unwrap();
    assert_eq!(r["purged"].as_u64(), Some(left as u64));
    assert!(trash_ids(&c).is_empty());
    wait_space_freed(&c);
    // Status agrees with the disks once the data is freed.
    let st = c.status().expect("status");
    let on_disk: u64 = (1..=c.opts.chunkservers)
        .flat_map(|i| c.chunk_files(i))
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    eprintln!(
        "status used {} bytes, chunk files {} bytes",
        st.used_bytes, on_disk
    );
}
