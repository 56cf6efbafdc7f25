//! Measures self-healing on a local cluster (3 chunkservers, goal 2, 64 MiB
//! chunks): the time from a chunkserver's loss (SIGKILL) to every chunk being
//! back at goal for DATA_MIB of data (default 1024), and the foreground write
//! throughput during that repair as a ratio of the throughput without it.
//! Prints the figures; asserts nothing about them.
//!
//! Usage: `cargo build --release --workspace --bins &&
//! cargo run --release -p alces-e2e --bin repair-figures [DATA_MIB]`

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_e2e::{pattern, write_synced, Cluster, Options, Proc};

const MIB: u64 = 1024 * 1024;
/// Seconds without heartbeats before the master declares a chunkserver lost.
const LOSS_TIMEOUT_SECS: u64 = 10;

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
/// count at its start (the window ends when it returns). Returns MiB/s made
/// durable in the window.
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
    let bytes = durable.load(Ordering::Relaxed) - start;
    stop.store(true, Ordering::Relaxed);
    h.join()
        .expect("writer thread")
        .expect("foreground write failed");
    let _ = fs::remove_file(c.path(name));
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

fn main() {
    let data_mib: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("DATA_MIB must be a number of MiB"))
        .unwrap_or(1024);
    let c = Cluster::start(Options {
        metaloggers: 0,
        chunkservers: 3,
        goal: Some(2),
        chunk_size: "64MiB".into(),
        env: vec![(
            "ALCES_CHUNKSERVER_TIMEOUT".into(),
            LOSS_TIMEOUT_SECS.to_string(),
        )],
    })
    .expect("cluster");
    println!("cluster up in {}", c.dir.display());

    let base = throughput(&c, "baseline", |bytes| {
        std::thread::sleep(Duration::from_secs(5));
        let start = bytes();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(30));
        (t.elapsed(), start)
    });
    println!("foreground write throughput, healthy cluster: {base:.1} MiB/s");

    let data = pattern(1, (data_mib * MIB) as usize);
    let t = Instant::now();
    write_synced(&c.path("data"), &data).expect("write the data set");
    println!(
        "wrote {data_mib} MiB (goal 2) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
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
    println!("SIGKILLed chunkserver 3 holding {held} chunks");
    let mut detected = Duration::ZERO;
    let mut to_goal = Duration::ZERO;
    let during = throughput(&c, "during", |bytes| {
        // Repair starts when the loss is declared; the window ends at goal.
        while c.status().is_ok_and(|s| {
            s.chunkservers
                .iter()
                .any(|x| x.server_id == victim && x.connected)
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
    println!(
        "loss declared after {:.1} s (--chunkserver-timeout {LOSS_TIMEOUT_SECS})",
        detected.as_secs_f64()
    );
    println!(
        "time from the loss to back at goal for {data_mib} MiB: {:.1} s ({:.1} s of re-replication after the loss was declared)",
        to_goal.as_secs_f64(),
        (to_goal - detected).as_secs_f64()
    );
    println!(
        "foreground write throughput during repair: {during:.1} MiB/s = {:.2} of the healthy {base:.1} MiB/s",
        during / base
    );
}
