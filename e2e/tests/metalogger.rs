//! Metalogger restarts: SIGKILL while streaming, SIGKILL while a snapshot is
//! being sent to it, and a corrupt tail of its local changelog. Each time it
//! catches up; at the end it is promoted and every acknowledged operation is
//! there, which proves its replica has no gap.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use alces_e2e::storm::{verify, Storm};
use alces_e2e::{changelog_records_end, wait_until, Cluster, Proc};

const ML: Proc = Proc::Metalogger(1);

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

fn newest_changelog(dir: &std::path::Path) -> PathBuf {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .expect("metalogger data dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("changelog."))
                && fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false)
        })
        .collect();
    logs.sort();
    logs.pop()
        .expect("a non-empty changelog in the metalogger's data dir")
}

#[test]
fn metalogger_survives_kills_and_a_corrupt_tail_without_a_gap() {
    let c = Cluster::start_default();
    let storm = Storm::start(c.mnt.clone(), "m");
    let step = |n: usize, what: &str| {
        let at = storm.count();
        wait_until(what, Duration::from_secs(120), || storm.count() >= at + n);
    };
    step(20, "20 operations");

    // 1. SIGKILL while streaming; the master carries on; restart catches up.
    c.kill9(ML);
    step(10, "10 operations while the metalogger is down");
    c.restart(ML);
    c.wait_ml_caught_up(1, Duration::from_secs(60));

    // 2. SIGKILL while the master sends it a snapshot: drop its local data so
    //    the restart must download one, and kill it as soon as the master
    //    starts sending.
    step(10, "10 more operations");
    c.kill9(ML);
    let data = c.ml_data(1);
    for e in fs::read_dir(&data).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("snapshot.") || n.starts_with("changelog.") {
            fs::remove_file(e.path()).unwrap();
        }
    }
    let master_log = c.log(Proc::Master);
    let sent = count(
        &fs::read_to_string(&master_log).unwrap(),
        "sending a snapshot",
    );
    c.restart_nowait(ML);
    wait_until(
        "the master to start sending a snapshot",
        Duration::from_secs(60),
        || {
            count(
                &fs::read_to_string(&master_log).unwrap(),
                "sending a snapshot",
            ) > sent
        },
    );
    c.kill9(ML);
    step(10, "10 operations after the interrupted download");
    c.restart(ML);
    c.wait_ml_caught_up(1, Duration::from_secs(60));

    // 3. Corrupt the tail of its newest changelog: detected, cut, re-fetched.
    step(10, "10 more operations");
    c.wait_ml_caught_up(1, Duration::from_secs(60));
    c.kill9(ML);
    let victim = newest_changelog(&data);
    let len = changelog_records_end(&victim);
    let f = fs::OpenOptions::new().write(true).open(&victim).unwrap();
    f.set_len(len - 5).unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&victim).unwrap();
    f.write_all(b"\xde\xad\xbe\xef garbage").unwrap();
    drop(f);
    c.restart(ML);
    // The master may still list the killed process as connected, so `restart`
    // can return before the new one has read its changelog: poll its log.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(c.log(ML))
        .unwrap_or_default()
        .contains("torn or corrupt tail")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the corrupt changelog tail was not detected within 60 s:\n{}",
            alces_e2e::tail(&c.log(ML), 30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.wait_ml_caught_up(1, Duration::from_secs(60));

    // The replica is complete: stop the storm, let it catch up, promote it.
    let (log, errors) = storm.finish();
    assert!(errors.is_empty(), "operations failed: {errors:?}");
    c.wait_ml_caught_up(1, Duration::from_secs(60));
    c.kill9(Proc::Master);
    let out = c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify(&c.mnt, &log);
    fs::write(c.path("after-promotion"), b"ok").unwrap();
    assert_eq!(fs::read(c.path("after-promotion")).unwrap(), b"ok");
    println!(
        "{} acknowledged operations present on the promoted metalogger",
        log.len()
    );
}
