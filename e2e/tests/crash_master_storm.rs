//! SIGKILL of the master in the middle of a storm of creates and writes: the mount
//! pauses and carries on, and every operation acknowledged before, during or after
//! the crash is there with the right content.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alces_e2e::{pattern, wait_until, write_synced, Cluster, Proc};

/// One operation that returned success.
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

fn verify(log: &[Done]) {
    for op in log {
        match op {
            Done::File { path, seed, len } => {
                let got = fs::read(path).unwrap_or_else(|e| {
                    panic!("acknowledged file {} is gone: {e}", path.display())
                });
                assert_eq!(got.len(), *len, "{}: wrong length", path.display());
                assert!(
                    got == pattern(*seed, *len),
                    "{}: wrong content",
                    path.display()
                );
            }
            Done::Dir(p) => assert!(p.is_dir(), "acknowledged directory {} is gone", p.display()),
            Done::Rename {
                from,
                to,
                seed,
                len,
            } => {
                assert!(
                    !from.exists(),
                    "renamed-away {} still exists",
                    from.display()
                );
                let got = fs::read(to)
                    .unwrap_or_else(|e| panic!("renamed file {} is gone: {e}", to.display()));
                assert!(
                    got == pattern(*seed, *len),
                    "{}: wrong content after rename",
                    to.display()
                );
            }
        }
    }
}

#[test]
fn crash_master_storm() {
    let c = Cluster::start_default();
    let root = c.path("storm");
    fs::create_dir(&root).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let log: Arc<Mutex<Vec<Done>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (stop, count, log, errors, root) = (
            stop.clone(),
            count.clone(),
            log.clone(),
            errors.clone(),
            root.clone(),
        );
        std::thread::spawn(move || {
            let mut i: u64 = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let r: std::io::Result<Done> = (|| {
                    match i % 5 {
                        0 => {
                            let d = root.join(format!("dir-{i}"));
                            fs::create_dir(&d)?;
                            Ok(Done::Dir(d))
                        }
                        4 => {
                            let len = (i as usize * 7919) % 300_000;
                            let from = root.join(format!("tmp-{i}"));
                            let to = root.join(format!("renamed-{i}"));
                            write_synced(&from, &pattern(i, len))?;
                            fs::rename(&from, &to)?;
                            // The rename is durable once the directory is fsynced.
                            fs::File::open(&root)?.sync_all()?;
                            Ok(Done::Rename {
                                from,
                                to,
                                seed: i,
                                len,
                            })
                        }
                        _ => {
                            let len = (i as usize * 104_729) % 1_500_000;
                            let p = root.join(format!("file-{i}"));
                            write_synced(&p, &pattern(i, len))?;
                            Ok(Done::File {
                                path: p,
                                seed: i,
                                len,
                            })
                        }
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
    wait_until(
        "20 operations before the crash",
        Duration::from_secs(120),
        || count.load(Ordering::SeqCst) >= 20,
    );
    c.kill9(Proc::Master);
    let at_crash = count.load(Ordering::SeqCst);
    c.restart(Proc::Master);
    wait_until(
        "20 more operations after the master restart",
        Duration::from_secs(120),
        || count.load(Ordering::SeqCst) >= at_crash + 20,
    );
    // A second crash right in the middle of the storm.
    c.kill9(Proc::Master);
    c.restart(Proc::Master);
    let n = count.load(Ordering::SeqCst);
    wait_until(
        "operations to resume after the second restart",
        Duration::from_secs(120),
        || count.load(Ordering::SeqCst) >= n + 10,
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer thread");
    let errs = errors.lock().unwrap().clone();
    assert!(
        errs.is_empty(),
        "operations failed instead of pausing across the master restart: {errs:?}"
    );
    let done = log.lock().unwrap().clone();
    verify(&done);
    // Everything acknowledged survives yet another crash with no traffic.
    c.kill9(Proc::Master);
    c.restart(Proc::Master);
    verify(&done);
    let through_other = c.mount_extra("mnt-check", &[]);
    let moved: Vec<Done> = done
        .iter()
        .map(|d| {
            let re = |p: &PathBuf| through_other.path.join(p.strip_prefix(&c.mnt).unwrap());
            match d {
                Done::File { path, seed, len } => Done::File {
                    path: re(path),
                    seed: *seed,
                    len: *len,
                },
                Done::Dir(p) => Done::Dir(re(p)),
                Done::Rename {
                    from,
                    to,
                    seed,
                    len,
                } => Done::Rename {
                    from: re(from),
                    to: re(to),
                    seed: *seed,
                    len: *len,
                },
            }
        })
        .collect();
    verify(&moved);
    println!(
        "{} acknowledged operations verified across three master crashes",
        done.len()
    );
}
