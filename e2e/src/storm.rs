//! A create/write/rename storm on a mount that keeps its own log of every
//! acknowledged operation, and checks that every logged operation is present.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{pattern, write_synced};

/// One operation that returned success (paths relative to the mount).
#[derive(Debug, Clone)]
pub enum Done {
    /// A file written and fsynced.
    File {
        /// Where it is.
        path: PathBuf,
        /// Seed of its [`pattern`] content.
        seed: u64,
        /// Its length.
        len: usize,
    },
    /// A directory created.
    Dir(PathBuf),
    /// A file written, fsynced, renamed, and its directory fsynced.
    Rename {
        /// Where it was written.
        from: PathBuf,
        /// Where it was renamed to.
        to: PathBuf,
        /// Seed of its [`pattern`] content.
        seed: u64,
        /// Its length.
        len: usize,
    },
}

/// Panics unless every operation of `log` is visible under `mnt`.
pub fn verify(mnt: &Path, log: &[Done]) {
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
pub fn walk(root: &Path) -> BTreeMap<PathBuf, (bool, u64)> {
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

/// A writer thread running operations until stopped.
pub struct Storm {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Done>>>,
    errors: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Storm {
    /// Creates, writes (fsynced) and renames under `mnt/rel` until stopped.
    pub fn start(mnt: PathBuf, rel: &str) -> Self {
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

    /// Operations acknowledged so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Stops the storm; returns the acknowledged operations and the errors.
    pub fn finish(mut self) -> (Vec<Done>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("storm thread");
        }
        let log = self.log.lock().unwrap().clone();
        let errors = self.errors.lock().unwrap().clone();
        (log, errors)
    }
}
