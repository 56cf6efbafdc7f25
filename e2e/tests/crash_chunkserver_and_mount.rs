//! Losing a chunkserver within the goal, and losing the mount process.

use std::fs;
use std::time::Duration;

use alces_e2e::{pattern, wait_until, write_synced, Cluster, Options, Proc};

#[test]
fn crash_chunkserver_and_mount() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(3),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(21, 3 * 1024 * 1024 + 4321);
    let p = c.path("precious");
    write_synced(&p, &data).unwrap();
    let info = c.file_info("/precious").expect("FileInfo");
    assert_eq!(info.chunks.len(), 4);
    for ch in &info.chunks {
        assert_eq!(
            ch.copies.len(),
            3,
            "chunk {} has {} copies, goal 3",
            ch.index,
            ch.copies.len()
        );
    }

    // One chunkserver dies: data still readable (fresh mount, no page cache).
    c.kill9(Proc::Chunkserver(2));
    let fresh = c.mount_extra("mnt-fresh", &[]);
    assert!(
        fs::read(fresh.path.join("precious")).unwrap() == data,
        "wrong data with one chunkserver down"
    );
    // Writing still works with a chunkserver down.
    let q = c.path("after-cs-loss");
    write_synced(&q, &pattern(22, 1_500_000)).expect("write with a chunkserver down");
    assert!(fs::read(fresh.path.join("after-cs-loss")).unwrap() == pattern(22, 1_500_000));
    drop(fresh);

    // The mount process dies: the mount point reports ENOTCONN.
    c.kill9(Proc::Mount);
    wait_until(
        "the dead mount to report ENOTCONN",
        Duration::from_secs(10),
        || fs::metadata(&c.mnt).err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTCONN),
    );
    let out = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&c.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -uz: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.restart(Proc::Mount);
    assert!(fs::read(&p).unwrap() == data, "data changed after remount");
    assert!(fs::read(&q).unwrap() == pattern(22, 1_500_000));

    // The chunkserver comes back and the cluster is whole again.
    c.restart(Proc::Chunkserver(2));
    assert!(fs::read(&p).unwrap() == data);
}
