//! Whole-cluster figures that need the harness (failure injection, direct
//! client-library calls): failover, self-healing and snapshots.
//! `alces-bench failover`, `alces-bench repair` and `alces-bench snapshot` run
//! them and print the tables; nothing here asserts a timing.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alces_client::{Caller, FileType, NewNode};

use crate::{pattern, wait_until, write_synced, Cluster, Options, Proc};

const MIB: u64 = 1024 * 1024;

/// Creates directories (each one a durable, acknowledged mutation) until
/// stopped, recording when each was acknowledged.
struct Ticker {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(dir: PathBuf) -> Self {
        fs::create_dir_all(&dir).expect("ticker dir");
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let thread = {
            let (stop, acks) = (stop.clone(), acks.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    if fs::create_dir(dir.join(format!("t{i}"))).is_ok() {
                        acks.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Instant::now());
                    }
                }
            })
        };
        Self {
            stop,
            acks,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn last(&self) -> Option<Instant> {
        self.acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    }

    fn finish(mut self) -> Vec<Instant> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("ticker thread");
        }
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Failover figures (issue: metaloggers and failover).
#[derive(Debug, Clone)]
pub struct FailoverFigures {
    /// SIGKILL of the master to the first acknowledged write on the promoted
    /// metalogger (the promotion is issued right after the kill: detection is
    /// excluded).
    pub sigkill_to_first_write: Duration,
    /// SIGKILL to the promote call's reply.
    pub sigkill_to_promote_reply: Duration,
    /// The switchover pause the promoted metalogger reported.
    pub switchover_pause_reported_ms: u64,
    /// The longest gap between two acknowledged client writes across the
    /// switchover.
    pub switchover_longest_gap: Duration,
    /// mkdir/s with `sync_metaloggers = 0`.
    pub mkdir_rate_sync0: f64,
    /// mkdir/s with `sync_metaloggers = 1`.
    pub mkdir_rate_sync1: f64,
}

fn mkdir_rate(sync: u32, n: usize) -> f64 {
    let c = Cluster::start(Options {
        env: vec![("ALCES_SYNC_METALOGGERS".into(), sync.to_string())],
        ..Options::default()
    })
    .expect("start cluster");
    // Measure a settled cluster: every chunkserver registered and heard.
    crate::wait_until(
        "the new cluster to report no conditions",
        Duration::from_secs(20),
        || c.status().is_ok_and(|st| st.conditions.is_empty()),
    );
    let root = c.path(&format!("rate{sync}"));
    fs::create_dir(&root).expect("mkdir");
    for i in 0..50 {
        fs::create_dir(root.join(format!("w{i}"))).expect("mkdir (warm-up)");
    }
    let t = Instant::now();
    for i in 0..n {
        fs::create_dir(root.join(format!("d{i}"))).expect("mkdir");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let st = c.status().expect("status");
    assert!(
        st.conditions.is_empty(),
        "the cluster reported conditions while measuring: {:?}",
        st.conditions
    );
    rate
}

/// Measures [`FailoverFigures`] on local clusters (3 chunkservers, 1
/// metalogger); `mkdirs` directories are created for each rate.
pub fn failover(mkdirs: usize) -> FailoverFigures {
    // 1. SIGKILL -> first acknowledged write on the promoted metalogger.
    let c = Cluster::start_default();
    let t = Ticker::start(c.path("kill"));
    wait_until("50 writes", Duration::from_secs(60), || t.count() >= 50);
    c.wait_ml_caught_up(1, Duration::from_secs(30));
    let killed = Instant::now();
    c.kill9(Proc::Master);
    // Replies the old master sent just before the signal may still land after
    // `killed`: only acknowledgements after it was reaped come from the new one.
    let dead = Instant::now();
    let out = c.promote(1, &[]);
    let promoted = killed.elapsed();
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "a write on the promoted master",
        Duration::from_secs(120),
        || t.last().is_some_and(|a| a > dead),
    );
    let acks = t.finish();
    let first = acks
        .iter()
        .find(|a| **a > dead)
        .copied()
        .expect("a write after the kill");
    drop(c);

    // 2. Switchover pause.
    let c = Cluster::start_default();
    let t = Ticker::start(c.path("switch"));
    wait_until("50 writes", Duration::from_secs(60), || t.count() >= 50);
    let before = Instant::now();
    let out = c.promote(1, &["--switchover", "--json"]);
    assert!(
        out.status.success(),
        "switchover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("promote --json prints JSON");
    let n = t.count();
    wait_until(
        "writes after the switchover",
        Duration::from_secs(60),
        || t.count() >= n + 50,
    );
    let acks = t.finish();
    let gap = acks
        .windows(2)
        .filter(|w| w[1] > before)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    drop(c);

    FailoverFigures {
        sigkill_to_first_write: first.duration_since(killed),
        sigkill_to_promote_reply: promoted,
        switchover_pause_reported_ms: reply["pause_ms"].as_u64().unwrap_or(0),
        switchover_longest_gap: gap,
        mkdir_rate_sync0: mkdir_rate(0, mkdirs),
        mkdir_rate_sync1: mkdir_rate(1, mkdirs),
    }
}

/// Self-healing figures (issue: replication and self-healing).
#[derive(Debug, Clone)]
pub struct RepairFigures {
    /// Data written before the loss (goal 2), MiB.
    pub data_mib: u64,
    /// Chunks the lost chunkserver held.
    pub chunks_lost: u64,
    /// Chunkserver timeout used, seconds.
    pub loss_timeout_secs: u64,
    /// SIGKILL to the master declaring the chunkserver lost.
    pub loss_declared: Duration,
    /// SIGKILL to every chunk back at goal.
    pub back_at_goal: Duration,
    /// Foreground fsynced write throughput on the healthy cluster, MiB/s.
    pub healthy_write_mib_s: f64,
    /// The same during the repair, MiB/s.
    pub repair_write_mib_s: f64,
}

/// Writes `path` in 4 MiB pieces with an fsync every 16 MiB until `stop`,
/// publishing the total bytes made durable (the file starts over at 2 GiB).
fn writer(path: PathBuf, stop: Arc<AtomicBool>, durable: Arc<AtomicU64>) -> std::io::Result<()> {
    let piece = pattern(7, 4 * MIB as usize);
    let mut f = fs::File::create(&path)?;
    let (mut in_file, mut total) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        f.write_all(&piece)?;
        in_file += piece.len() as u64;
        total += piece.len() as u64;
        if in_file % (16 * MIB) == 0 {
            f.sync_data()?;
            durable.store(total, Ordering::Relaxed);
        }
        if in_file >= 2048 * MIB {
            f = fs::File::create(&path)?;
            in_file = 0;
        }
    }
    f.sync_data()
}

/// Runs the writer while `window` runs; `window` reads the durable byte count
/// through its argument and returns the measured window's length and the
/// count at its start. Returns MiB/s made durable in the window.
fn throughput(
    c: &Cluster,
    name: &str,
    window: impl FnOnce(&dyn Fn() -> u64) -> (Duration, u64),
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let durable = Arc::new(AtomicU64::new(0));
    let path = c.path(name);
    let h = {
        let (stop, durable) = (stop.clone(), durable.clone());
        std::thread::spawn(move || writer(path, stop, durable))
    };
    let (elapsed, start) = window(&|| durable.load(Ordering::Relaxed));
    let bytes = durable.load(Ordering::Relaxed).saturating_sub(start);
    stop.store(true, Ordering::Relaxed);
    h.join()
        .expect("writer thread")
        .expect("foreground write failed");
    let _ = fs::remove_file(c.path(name));
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Measures [`RepairFigures`] on a local cluster (3 chunkservers, goal 2, 64
/// MiB chunks, chunkserver timeout `loss_timeout_secs`): writes `data_mib`,
/// SIGKILLs a chunkserver and times the way back to goal, with a foreground
/// writer measured for `baseline_secs` before and during the repair.
pub fn repair(data_mib: u64, loss_timeout_secs: u64, baseline_secs: u64) -> RepairFigures {
    let c = Cluster::start(Options {
        metaloggers: 0,
        chunkservers: 3,
        goal: Some(2),
        chunk_size: Some("64MiB".into()),
        env: vec![(
            "ALCES_CHUNKSERVER_TIMEOUT".into(),
            loss_timeout_secs.to_string(),
        )],
        ..Options::default()
    })
    .expect("cluster");

    let healthy = throughput(&c, "baseline", |bytes| {
        std::thread::sleep(Duration::from_secs(2));
        let start = bytes();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(baseline_secs));
        (t.elapsed(), start)
    });

    let data = pattern(1, (data_mib * MIB) as usize);
    write_synced(&c.path("data"), &data).expect("write the data set");
    drop(data);
    c.wait_at_goal(Duration::from_secs(600));

    let victim = c.server_id(&c.cs_addr(3));
    let held = c
        .status()
        .expect("status")
        .chunkservers
        .iter()
        .find(|s| s.server_id == victim)
        .map_or(0, |s| s.chunks);
    let killed = Instant::now();
    c.kill9(Proc::Chunkserver(3));
    let mut detected = Duration::ZERO;
    let mut to_goal = Duration::ZERO;
    let during = throughput(&c, "during", |bytes| {
        // Repair starts when the loss is declared; the window ends at goal.
        while c.status().is_ok_and(|s| {
            s.chunkservers
                .iter()
                .any(|x| x.server_id == victim && x.copies_count)
        }) {
            std::thread::sleep(Duration::from_millis(100));
        }
        detected = killed.elapsed();
        let start = bytes();
        let repair = Instant::now();
        loop {
            if let Ok(h) = c.health() {
                if h.under_goal == 0 && h.missing == 0 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        to_goal = killed.elapsed();
        (repair.elapsed(), start)
    });
    RepairFigures {
        data_mib,
        chunks_lost: held,
        loss_timeout_secs,
        loss_declared: detected,
        back_at_goal: to_goal,
        healthy_write_mib_s: healthy,
        repair_write_mib_s: during,
    }
}

/// Snapshot figures (issue: quotas, trash and snapshots).
#[derive(Debug, Clone)]
pub struct SnapshotFigures {
    /// Inodes in the snapshot (the files, their 100 directories and the top).
    pub inodes: u64,
    /// Time of the snapshot call as the client sees it (includes the
    /// changelog fsync).
    pub elapsed: Duration,
    /// Growth of the master's resident memory per snapshot entry, bytes.
    pub rss_bytes_per_entry: f64,
    /// `alces fsck` found reference counts and usage exact afterwards.
    pub consistent: bool,
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Creates a tree of `files` empty files in 100 directories through the
/// client library, then snapshots it once and measures [`SnapshotFigures`].
pub fn snapshot_scale(files: u64) -> SnapshotFigures {
    let c = Cluster::start_default();
    let cl = c.client();
    let caller = Caller::new(0, 0, 0);
    c.block_on(async {
        let top = cl.mkdir_p("/tree", 0o755).await.expect("mkdir /tree");
        let per_dir = files.div_ceil(100);
        let mut dirs = Vec::new();
        for d in 0..100u64 {
            let a = cl
                .mkdir(top.inode, format!("d{d:03}").as_bytes(), 0o755, 0, &caller)
                .await
                .expect("mkdir");
            dirs.push(a.inode);
        }
        let mut n = 0u64;
        let mut batch = Vec::new();
        'outer: for (d, dir) in dirs.iter().enumerate() {
            for f in 0..per_dir {
                if n >= files {
                    break 'outer;
                }
                n += 1;
                let (cl, caller, dir) = (cl.clone(), caller.clone(), *dir);
                batch.push(tokio::spawn(async move {
                    cl.mknod(
                        dir,
                        format!("f{d:03}-{f:06}").as_bytes(),
                        &NewNode {
                            kind: FileType::Regular,
                            mode: 0o644,
                            umask: 0,
                            rdev: 0,
                            exclusive: true,
                        },
                        &caller,
                    )
                    .await
                    .expect("create file")
                }));
                if batch.len() >= 64 {
                    for t in batch.drain(..) {
                        t.await.expect("task");
                    }
                }
            }
        }
        for t in batch.drain(..) {
            t.await.expect("task");
        }
    });
    let pid = c.pid(Proc::Master).expect("master pid");
    let before = rss_kib(pid);
    let t = Instant::now();
    let r = c
        .block_on(cl.snapshot("/tree", "/tree.snap"))
        .expect("snapshot");
    let elapsed = t.elapsed();
    let after = rss_kib(pid);
    let v = c.block_on(cl.check_consistency()).expect("fsck");
    SnapshotFigures {
        inodes: r.inodes,
        elapsed,
        rss_bytes_per_entry: (after.saturating_sub(before) * 1024) as f64 / r.inodes.max(1) as f64,
        consistent: v.ok,
    }
}
