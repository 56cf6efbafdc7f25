//! The operator's failover logic against real processes, without
//! Kubernetes: the same driver the controller runs (observe, decide, record,
//! promote, route), fed the health of a real local cluster (master, two
//! metaloggers with sync_metaloggers = 1, chunkservers, a FUSE mount running
//! a storm of acknowledged operations). The master is SIGKILLed; the driver
//! detects it, promotes the most advanced metalogger with the epoch it
//! recorded first, and every acknowledged operation is there afterwards.
//!
//! Prints (not asserted): SIGKILL -> first acknowledged operation through the
//! promoted master, with the driver's detection (grace 1 s, polled every
//! 100 ms) included. The figures with the operator's defaults are
//! `alces-bench operator-failover`.

use std::time::{Duration, Instant};

use alces_e2e::storm::{verify, Storm};
use alces_e2e::{wait_until, Cluster, Options, Proc};
use alces_operator::dataplane::DataPlane;
use alces_operator::failover::decide::Policy;
use alces_operator::failover::driver::{step, switchover, DriverState, Outcome};
use alces_operator::failover::local::LocalTarget;
use alces_proto::pb;

/// A local cluster (two metaloggers, sync_metaloggers = 1) and the driver's
/// view of it, with the master recorded as active at epoch 1.
fn cluster_and_target() -> (Cluster, LocalTarget) {
    let c = Cluster::start(Options {
        metaloggers: 2,
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    })
    .expect("start cluster");
    let local = LocalTarget::new(
        DataPlane::new(&c.secret())
            .expect("client auth")
            .with_tls(&c.tls),
        c.master.clone(),
        vec![
            ("master".into(), 0, None),
            ("ml1".into(), 1, Some(c.ml_addr(1))),
            ("ml2".into(), 2, Some(c.ml_addr(2))),
        ],
        1,
    );
    (c, local)
}

/// One round of the driver, as the controller runs it.
fn step_once(
    c: &Cluster,
    local: &mut LocalTarget,
    policy: &Policy,
    st: &mut DriverState,
) -> Outcome {
    let rec = local.stored.clone();
    let (_, o) = c
        .block_on(step(local, &rec, policy, st, Instant::now(), "t"))
        .expect("step");
    o
}

/// What one failover took.
struct Round {
    /// SIGKILL -> promotion confirmed.
    promoted_after: Duration,
    /// SIGKILL -> first operation acknowledged through the promoted master.
    first_ack: Duration,
    /// Acknowledged before the SIGKILL.
    acked_at_kill: usize,
}

/// SIGKILLs the master `kill_after` after a healthy round of the driver,
/// then steps the driver as the controller does (every `poll` while the
/// master is healthy, every `busy` once it is not) until it promotes, and
/// waits for the storm's next acknowledged operation.
fn kill_and_fail_over(
    c: &Cluster,
    local: &mut LocalTarget,
    policy: &Policy,
    st: &mut DriverState,
    storm: &Storm,
    (poll, busy, kill_after): (Duration, Duration, Duration),
) -> Round {
    std::thread::sleep(kill_after);
    c.kill9(Proc::Master);
    let killed = Instant::now();
    let acked_at_kill = storm.count();
    // The next periodic round comes `poll` after the last healthy one.
    std::thread::sleep(poll.saturating_sub(kill_after));
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no promotion within 60 s"
        );
        match step_once(c, local, policy, st) {
            Outcome::Promoted { .. } => break,
            Outcome::Refused { reason, message } => panic!("refused ({reason}): {message}"),
            Outcome::Healthy(_) => std::thread::sleep(poll),
            _ => std::thread::sleep(busy),
        }
    }
    let promoted_after = killed.elapsed();
    while storm.count() <= acked_at_kill {
        assert!(
            killed.elapsed() < Duration::from_secs(120),
            "no operation acknowledged after the promotion"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Round {
        promoted_after,
        first_ack: killed.elapsed(),
        acked_at_kill,
    }
}

#[test]
fn driver_promotes_a_metalogger_after_sigkill_of_the_master_and_nothing_acknowledged_is_lost() {
    let (c, mut local) = cluster_and_target();
    let policy = Policy {
        enabled: true,
        grace: Duration::from_secs(1),
        force: false,
        sync_metaloggers: 1,
    };
    let storm = Storm::start(c.mnt.clone(), "s");
    wait_until(
        "40 acknowledged operations",
        Duration::from_secs(120),
        || storm.count() >= 40,
    );
    let mut st = DriverState::default();
    // Healthy: the driver keeps the master, records nothing.
    let o = step_once(&c, &mut local, &policy, &mut st);
    assert_eq!(o, Outcome::Healthy("master".into()));
    assert_eq!(local.version, 0, "a healthy round writes nothing");

    let fast = Duration::from_millis(100);
    let round = kill_and_fail_over(
        &c,
        &mut local,
        &policy,
        &mut st,
        &storm,
        (fast, fast, Duration::ZERO),
    );
    assert!(round.acked_at_kill >= 40);
    let p = local
        .promoted
        .last()
        .cloned()
        .expect("a promotion was made");
    assert_eq!(p.epoch, 2, "the epoch is the recorded one");
    assert_eq!(local.stored.epoch, 2);
    assert_eq!(local.stored.active.as_deref(), Some(p.pod.as_str()));
    assert!(
        local.stored.promotion.is_none(),
        "the promotion was confirmed"
    );
    let st_master = c.status().expect("the promoted master answers");
    assert_eq!(
        st_master.epoch, 2,
        "the new master took exactly the recorded epoch"
    );
    let n = storm.count();
    wait_until("the storm to carry on", Duration::from_secs(60), || {
        storm.count() >= n + 20
    });
    let (log, errors) = storm.finish();
    assert!(
        errors.is_empty(),
        "operations failed instead of pausing: {errors:?}"
    );
    verify(&c.mnt, &log);
    // A second promotion with the same epoch is refused by the metalogger
    // that remains: epochs are never reused.
    let other = if p.pod == "ml1" { 2 } else { 1 };
    let again = c.block_on(local.dp.promote(
        &c.ml_addr(other),
        pb::PromoteRequest {
            epoch: 2,
            force: true,
            ..Default::default()
        },
    ));
    let err = again.expect_err("a used epoch must be refused").to_string();
    assert!(err.contains("epoch 2"), "unclear refusal: {err}");
    println!(
        "operator failover: {} acknowledged operations verified; promoted {} after {:.0} ms; first acknowledged operation through it {:.0} ms after the SIGKILL (detection grace {} ms)",
        log.len(),
        p.pod,
        round.promoted_after.as_secs_f64() * 1000.0,
        round.first_ack.as_secs_f64() * 1000.0,
        policy.grace.as_millis()
    );
}

/// The last steps of a rolling upgrade against real processes: the master is
/// handed over by the driver's switchover (record, `Promote{switchover}`,
/// confirm; the old master steps down once the metalogger holds its last
/// version) to a caught-up metalogger while a storm of operations runs: none
/// fails, nothing acknowledged is lost, the new master holds the recorded
/// epoch. Then the other metalogger is replaced (SIGKILL and restart, as the
/// upgrade replaces a pod) and catches up with the new master.
#[test]
fn upgrade_hands_the_master_over_by_switchover_without_an_error() {
    let (c, mut local) = cluster_and_target();
    let policy = Policy {
        enabled: true,
        grace: Duration::from_secs(1),
        force: false,
        sync_metaloggers: 1,
    };
    let storm = Storm::start(c.mnt.clone(), "u");
    wait_until(
        "30 acknowledged operations",
        Duration::from_secs(120),
        || storm.count() >= 30,
    );
    let mut st = DriverState::default();
    assert_eq!(
        step_once(&c, &mut local, &policy, &mut st),
        Outcome::Healthy("master".into())
    );
    c.wait_ml_caught_up(1, Duration::from_secs(60));
    let rec = local.stored.clone();
    let t0 = Instant::now();
    let (rec, outcome) = c
        .block_on(switchover(&mut local, &rec, "ml1", &policy, &mut st, "t"))
        .expect("record the switchover");
    let took = t0.elapsed();
    assert!(
        matches!(&outcome, Outcome::Promoted { promotion, .. } if promotion.kind == "Switchover"),
        "{outcome:?}"
    );
    assert_eq!((rec.active.as_deref(), rec.epoch), (Some("ml1"), 2));
    assert!(rec.promotion.is_none(), "the switchover was confirmed");
    let p = local.promoted.last().cloned().expect("a promotion");
    assert_eq!((p.pod.as_str(), p.epoch), ("ml1", 2));
    let n = storm.count();
    wait_until("the storm to carry on", Duration::from_secs(60), || {
        storm.count() >= n + 20
    });
    assert_eq!(
        c.status().expect("the new master answers").epoch,
        2,
        "the new master took exactly the recorded epoch"
    );
    let (log, errors) = storm.finish();
    assert!(
        errors.is_empty(),
        "operations failed across the switchover: {errors:?}"
    );
    verify(&c.mnt, &log);
    // The next pod of the upgrade: the other metalogger, replaced.
    c.kill9(Proc::Metalogger(2));
    c.restart(Proc::Metalogger(2));
    c.wait_ml_caught_up(2, Duration::from_secs(60));
    println!(
        "operator switchover: {} acknowledged operations verified; the driver's switchover took {:.0} ms",
        log.len(),
        took.as_secs_f64() * 1000.0
    );
}
