//! Measures (prints, does not assert) the time to snapshot a tree of 100,000
//! files and the master's memory per snapshot entry, on a local cluster.
//!
//! Build the binaries first with the same profile, then run:
//!   cargo build --release --workspace --bins
//!   cargo run --release -p alces-e2e --example snapshot_scale [FILES]

use std::time::Instant;

use alces_client::{Caller, FileType};
use alces_e2e::{Cluster, Proc};

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

fn main() {
    let files: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let c = Cluster::start_default();
    let cl = c.client();
    let caller = Caller::new(0, 0, 0);
    let started = Instant::now();
    c.block_on(async {
        let top = cl.mkdir_p("/tree", 0o755).await.expect("mkdir /tree");
        // 100 directories of files/100 files each, created 64 at a time.
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
                        FileType::Regular,
                        0o644,
                        0,
                        0,
                        true,
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
    println!(
        "created {files} files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let pid = c.pid(Proc::Master).expect("master pid");
    let before = rss_kib(pid);
    let t = Instant::now();
    let r = c
        .block_on(cl.snapshot("/tree", "/tree.snap"))
        .expect("snapshot");
    let elapsed = t.elapsed();
    let after = rss_kib(pid);
    println!(
        "snapshot of {} inodes: {:.1} ms (client-observed, includes the changelog fsync)",
        r.inodes,
        elapsed.as_secs_f64() * 1000.0
    );
    println!(
        "master RSS {before} KiB -> {after} KiB: {:.0} bytes per snapshot entry",
        (after.saturating_sub(before) * 1024) as f64 / r.inodes as f64
    );
    let v = c.block_on(cl.check_consistency()).expect("fsck");
    println!("consistency check ok: {}", v.ok);
}
