//! Master failover by promotion: SIGKILL of the master during a storm from two
//! mounts, then `alces promote`: every acknowledged operation is there, both
//! mounts see the same namespace and carry on. Also the planned switchover, in
//! which the old master rejoins as a metalogger.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use alces_e2e::{alive, pattern, wait_until, write_synced, Cluster, Options, Proc};

/// One operation that returned success (paths relative to the mount).
#[derive(Debug, Clone)]
enum Done {
    File {
        path: PathBuf,
        seed: u64,
        len: usize,
    },
    Dir(PathBuf),
    Rename {
        from: PathBuf,
        to: PathBuf,
        seed: u64,
        len: usize,
    },
}

fn verify(mnt: &Path, log: &[Done]) {
    for op in log {
        match op {
            Done::File { path, seed, len } => {
                let p = mnt.join(path);
                let got = fs::read(&p)
                    .unwrap_or_else(|e| panic!("acknowledged file {} is gone: {e}", p.display()));
                assert_eq!(got.len(), *len, "{}: wrong length", p.display());
                assert!(
                    got == pattern(*seed, *len),
                    "{}: wrong content",
                    p.display()
                );
            }
            Done::Dir(p) => {
                let p = mnt.join(p);
                assert!(p.is_dir(), "acknowledged directory {} is gone", p.display())
            }
            Done::Rename {
                from,
                to,
                seed,
                len,
            } => {
                assert!(
                    !mnt.join(from).exists(),
                    "renamed-away {} still exists",
                    from.display()
                );
                let p = mnt.join(to);
                let got = fs::read(&p)
                    .unwrap_or_else(|e| panic!("renamed file {} is gone: {e}", p.display()));
                assert!(
                    got == pattern(*seed, *len),
                    "{}: wrong content after rename",
                    p.display()
                );
            }
        }
    }
}

/// Every entry under `root`: relative path -> (is_dir, size).
fn walk(root: &Path) -> BTreeMap<PathBuf, (bool, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let e = e.expect("dir entry");
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            let rel = e.path().strip_prefix(root).expect("prefix").to_path_buf();
            if md.is_dir() {
                stack.push(e.path());
            }
            out.insert(rel, (md.is_dir(), if md.is_dir() { 0 } else { md.len() }));
        }
    }
    out
}

struct Storm {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Done>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Storm {
    /// Creates, writes (fsynced) and renames under `mnt/rel` until stopped.
    fn start(mnt: PathBuf, rel: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let log: Arc<Mutex<Vec<Done>>> = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let rel = PathBuf::from(rel);
        fs::create_dir_all(mnt.join(&rel)).expect("storm dir");
        let thread = {
            let (stop, count, log, errors) =
                (stop.clone(), count.clone(), log.clone(), errors.clone());
            std::thread::spawn(move || {
                let root = mnt.join(&rel);
                let mut i: u64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let r: std::io::Result<Done> = (|| match i % 5 {
                        0 => {
                            let d = format!("dir-{i}");
                            fs::create_dir(root.join(&d))?;
                            Ok(Done::Dir(rel.join(d)))
                        }
                        4 => {
                            let len = (i as usize * 7919) % 200_000;
                            let (from, to) = (format!("tmp-{i}"), format!("renamed-{i}"));
                            write_synced(&root.join(&from), &pattern(i, len))?;
                            fs::rename(root.join(&from), root.join(&to))?;
                            fs::File::open(&root)?.sync_all()?;
                            Ok(Done::Rename {
                                from: rel.join(from),
                                to: rel.join(to),
                                seed: i,
                                len,
                            })
                        }
                        _ => {
                            let len = (i as usize * 104_729) % 700_000;
                            let p = format!("file-{i}");
                            write_synced(&root.join(&p), &pattern(i, len))?;
                            Ok(Done::File {
                                path: rel.join(p),
                                seed: i,
                                len,
                            })
                        }
                    })();
                    match r {
                        Ok(d) => {
                            log.lock().unwrap().push(d);
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => errors.lock().unwrap().push(format!("op {i}: {e}")),
                    }
                }
            })
        };
        Self {
            stop,
            count,
            log,
            errors,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn finish(mut self) -> (Vec<Done>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("storm thread");
        }
        let log = self.log.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (log, errors)
    }
}

fn sync_options() -> Options {
    Options {
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    }
}

#[test]
fn sigkill_master_during_storm_then_promote() {
    let c = Cluster::start(sync_options()).expect("start cluster");
    let second = c.mount_extra("mnt-b", &[]);
    let a = Storm::start(c.mnt.clone(), "a");
    let b = Storm::start(second.path.clone(), "b");
    wait_until(
        "30 operations from each mount",
        Duration::from_secs(120),
        || a.count() >= 30 && b.count() >= 30,
    );
    let t0 = std::time::Instant::now();
    c.kill9(Proc::Master);
    eprintln!("killed after {:?}", t0.elapsed());
    let out = c.promote(1, &[]);
    eprintln!("promoted after {:?}", t0.elapsed());
    assert!(
        out.status.success(),
        "promote failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let st = c.status().expect("promoted master answers");
    assert_eq!(st.epoch, 2, "promotion must raise the epoch");
    let (na, nb) = (a.count(), b.count());
    wait_until(
        "both mounts to carry on after the promotion",
        Duration::from_secs(120),
        || a.count() >= na + 20 && b.count() >= nb + 20,
    );
    let (la, ea) = a.finish();
    let (lb, eb) = b.finish();
    assert!(
        ea.is_empty() && eb.is_empty(),
        "operations failed instead of pausing: {ea:?} {eb:?}"
    );
    // Every acknowledged operation, through both mounts.
    for m in [&c.mnt, &second.path] {
        verify(m, &la);
        verify(m, &lb);
    }
    // Both mounts see one consistent namespace, and the master agrees on counts.
    let wa = walk(&c.mnt);
    let wb = walk(&second.path);
    assert_eq!(wa, wb, "the two mounts disagree about the namespace");
    let st = c.status().expect("status");
    let dirs = wa.values().filter(|(d, _)| *d).count() as u64 + 1;
    assert_eq!(
        st.directories, dirs,
        "directory count differs from the walk"
    );
    assert_eq!(
        st.files,
        wa.len() as u64 + 1 - dirs,
        "file count differs from the walk"
    );
    println!(
        "{} + {} acknowledged operations verified after promotion",
        la.len(),
        lb.len()
    );
}

#[test]
fn promote_refuses_while_master_alive_and_switchover_moves_the_role() {
    let c = Cluster::start(Options {
        metaloggers: 2,
        ..Options::default()
    })
    .expect("start cluster");
    fs::write(c.path("before"), b"x").unwrap();
    let out = c.promote(1, &[]);
    assert!(
        !out.status.success(),
        "promotion with a live master must be refused"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("alive"), "unclear refusal: {err}");

    let old_master = c.pid(Proc::Master).expect("master pid");
    let a = Storm::start(c.mnt.clone(), "s");
    wait_until("20 operations", Duration::from_secs(60), || a.count() >= 20);
    let out = c.promote(1, &["--switchover", "--json"]);
    assert!(
        out.status.success(),
        "switchover failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
    assert_eq!(reply["epoch"], 2);
    let n = a.count();
    wait_until("the storm to carry on", Duration::from_secs(60), || {
        a.count() >= n + 20
    });
    let (log, errors) = a.finish();
    assert!(
        errors.is_empty(),
        "operations failed across the switchover: {errors:?}"
    );
    verify(&c.mnt, &log);
    assert_eq!(fs::read(c.path("before")).unwrap(), b"x");
    // The old master process became a metalogger of the new one.
    assert!(
        alive(old_master),
        "the old master process exited instead of rejoining"
    );
    wait_until(
        "the old master to stream as a metalogger",
        Duration::from_secs(60),
        || {
            c.status()
                .map(|s| s.epoch == 2 && s.metaloggers.iter().filter(|m| m.connected).count() >= 2)
                .unwrap_or(false)
        },
    );
    let log = fs::read_to_string(c.log(Proc::Master)).unwrap();
    assert!(
        log.contains("DEPOSED"),
        "the old master did not log its deposition"
    );
    println!("switchover pause: {} ms", reply["pause_ms"]);
}
