//! Failover figures, printed (not asserted): run in release for numbers worth
//! quoting:
//!
//! ```sh
//! cargo build --release --bins
//! cargo test --release -p alces-e2e --test failover_bench -- --nocapture --test-threads=1
//! ```
//!
//! - time from SIGKILL of the master to the first acknowledged write on the
//!   promoted metalogger (promote issued right after the kill: no detection);
//! - the switchover pause (reported by the metalogger, and the longest gap
//!   between two acknowledged writes seen by a client);
//! - metadata operations per second with `sync_metaloggers=1` as a ratio of the
//!   rate with 0.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use alces_e2e::{wait_until, Cluster, Options, Proc};

/// Creates small fsynced files until stopped, recording when each was acknowledged.
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
                        acks.lock().unwrap().push(Instant::now());
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
        self.acks.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<Instant> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("ticker");
        }
        self.acks.lock().unwrap().clone()
    }
}

fn mkdir_rate(sync: u32) -> f64 {
    let c = Cluster::start(Options {
        env: vec![("ALCES_SYNC_METALOGGERS".into(), sync.to_string())],
        ..Options::default()
    })
    .expect("start cluster");
    let root = c.path(&format!("rate{sync}"));
    fs::create_dir(&root).unwrap();
    // Warm up, then measure.
    for i in 0..50 {
        fs::create_dir(root.join(format!("w{i}"))).unwrap();
    }
    let n = 2000;
    let t = Instant::now();
    for i in 0..n {
        fs::create_dir(root.join(format!("d{i}"))).unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let st = c.status().expect("status");
    assert!(
        st.conditions.is_empty(),
        "unexpected conditions: {:?}",
        st.conditions
    );
    rate
}

#[test]
fn failover_figures() {
    // 1. SIGKILL -> first acknowledged write on the promoted metalogger.
    let c = Cluster::start_default();
    let t = Ticker::start(c.path("kill"));
    wait_until("50 writes", Duration::from_secs(60), || t.count() >= 50);
    c.wait_ml_caught_up(1, Duration::from_secs(30));
    let killed = Instant::now();
    c.kill9(Proc::Master);
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
        || t.acks.lock().unwrap().last().is_some_and(|a| *a > killed),
    );
    let acks = t.finish();
    let first = acks
        .iter()
        .find(|a| **a > killed)
        .expect("a write after the kill");
    let failover = first.duration_since(killed);
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
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
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

    // 3. Metadata op rate with sync_metaloggers 1 vs 0.
    let r0 = mkdir_rate(0);
    let r1 = mkdir_rate(1);

    println!("FIGURE sigkill_to_first_write_ms {}", failover.as_millis());
    println!(
        "FIGURE sigkill_to_promote_reply_ms {}",
        promoted.as_millis()
    );
    println!("FIGURE switchover_pause_reported_ms {}", reply["pause_ms"]);
    println!(
        "FIGURE switchover_longest_client_gap_ms {}",
        gap.as_millis()
    );
    println!("FIGURE mkdir_per_s_sync0 {r0:.0}");
    println!("FIGURE mkdir_per_s_sync1 {r1:.0}");
    println!("FIGURE sync1_over_sync0_ratio {:.2}", r1 / r0);
}
