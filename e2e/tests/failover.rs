//! Master failover by promotion: SIGKILL of the master during a storm from two
//! mounts, then `alces promote`: every acknowledged operation is there, both
//! mounts see the same namespace and carry on. Also the planned switchover, in
//! which the old master rejoins as a metalogger.

use std::fs;
use std::time::Duration;

use alces_e2e::storm::{verify, walk, Storm};
use alces_e2e::{alive, wait_until, Cluster, Options, Proc};

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
