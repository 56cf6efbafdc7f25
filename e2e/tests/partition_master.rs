//! The master is partitioned away from everyone, a metalogger is promoted, the
//! partition heals: the old master never acknowledged a write after the
//! promotion, and it rejoins as a metalogger of the new master.
//!
//! How the partition is built: the master runs in its own network namespace,
//! joined to the host by a veth pair; chunkservers, metaloggers and mounts run
//! in the host namespace. They all reach the master through a floating address
//! (a second address on the namespace's side of the veth), the way MooseFS
//! users put the master behind a ucarp VIP and the way a Kubernetes Service
//! follows the active master pod. Cutting the link (host side down) partitions
//! the master. The failover then does what ucarp (or the Service) and the
//! operator do: the floating address comes up in the host namespace (a dummy
//! interface) and `alces promote` makes the metalogger holding the most the
//! master on that same address (`--promote-listen`), so clients and
//! chunkservers find it without any change. Healing brings the link back up
//! while the namespace still holds the address (both sides hold the VIP until
//! ucarp on the old node sees the other one), then the old side releases it.
//!
//! What is checked:
//! - a writer keeps writing through the host's mount across the partition and
//!   the promotion (its own log of acknowledged operations), with no error, and
//!   every acknowledged operation is on the new master afterwards;
//! - a client inside the master's partition (a mount whose connections are made
//!   in the namespace) creates a directory: with `sync_metaloggers = 1` the old
//!   master, cut off from its metaloggers and from its chunkservers, must not
//!   acknowledge it (it does not degrade without a chunkserver quorum). The
//!   mkdir returns only after the address was released, i.e. through the new
//!   master, after the old one was deposed;
//! - the old master logs the highest version it ever acknowledged: not beyond
//!   the promotion version; the tail it wrote after the promotion (which holds
//!   the in-partition mkdir) is moved aside, never merged;
//! - the old master finds the new master at the master address, rejoins as its
//!   metalogger, and `alces status` shows it streaming with lag 0; the
//!   namespace passes the consistency check.

use std::fs;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use alces_e2e::master_netns::{changelog_records, FloatingIp};
use alces_e2e::netns::Netns;
use alces_e2e::storm::{verify, Storm};
use alces_e2e::{wait_until, Cluster, Options, Proc};
use alces_proto::pb::changelog_record::Op;

type Outcome = (Result<(), String>, Instant);

fn pending(rx: &mpsc::Receiver<Outcome>) -> bool {
    matches!(rx.try_recv(), Err(mpsc::TryRecvError::Empty))
}

#[test]
fn partitioned_master_never_acknowledges_after_promotion_and_rejoins() {
    let ns = Netns::new().expect("a network namespace with a veth pair (needs root and ip)");
    let vip = ns.ip(3);
    let mut c = Cluster::start(Options {
        metaloggers: 2,
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    })
    .expect("start cluster");
    c.move_master_to_netns(&ns, &vip);
    assert_eq!(
        c.master,
        format!("{vip}:{}", c.master.rsplit_once(':').unwrap().1)
    );
    // A client inside the master's partition.
    let island = c.mount_extra_wrapped("mnt-island", &ns.net_only_wrapper(), &[]);
    fs::create_dir(island.path.join("island-before"))
        .expect("mkdir through the in-namespace mount");

    let storm = Storm::start(c.mnt.clone(), "w");
    wait_until(
        "30 operations before the partition",
        Duration::from_secs(120),
        || storm.count() >= 30,
    );

    // The partition.
    ns.cut();
    let island_dir = island.path.join("island-dir");
    let (tx, rx) = mpsc::channel::<Outcome>();
    std::thread::spawn(move || {
        let r = fs::create_dir(&island_dir).map_err(|e| e.to_string());
        let _ = tx.send((r, Instant::now()));
    });
    // Failure detection: both metaloggers lose the master's stream (5 s).
    wait_until(
        "both metaloggers to lose the master",
        Duration::from_secs(60),
        || (1..=2).all(|i| c.ml_status(i).is_ok_and(|s| !s.master_connected)),
    );
    assert!(
        pending(&rx),
        "the partitioned master acknowledged a mkdir no metalogger holds"
    );

    // The floating address moves to the host; the metalogger holding the most
    // is promoted on it.
    let fip = FloatingIp::take(&vip).expect("the floating address in the host namespace");
    let (best, held) = (1..=2)
        .map(|i| {
            (
                i,
                c.ml_status(i).expect("metalogger status").durable_version,
            )
        })
        .max_by_key(|(_, v)| *v)
        .expect("two metaloggers");
    let out = c.promote(best, &["--json"]);
    assert!(
        out.status.success(),
        "promote ml{best} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("promote JSON");
    assert_eq!(reply["epoch"], 2, "{reply}");
    let promoted = reply["version"].as_u64().expect("promotion version");
    assert_eq!(
        promoted, held,
        "the promoted metalogger serves what it held"
    );

    // The writer carries on through the new master at the same address.
    let n = storm.count();
    wait_until(
        "the writer to carry on after the promotion",
        Duration::from_secs(120),
        || storm.count() >= n + 20,
    );
    assert_eq!(c.status().expect("new master status").epoch, 2);
    assert!(
        pending(&rx),
        "the partitioned master acknowledged a mkdir after the promotion"
    );

    // Heal. Both sides hold the floating address until the old one releases it.
    ns.heal();
    wait_until(
        "the healed link to carry traffic to the namespace",
        Duration::from_secs(30),
        || {
            std::net::TcpStream::connect_timeout(
                &format!("{}:1", ns.ns_ip).parse().expect("address"),
                Duration::from_millis(500),
            )
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        },
    );
    assert!(
        pending(&rx),
        "the old master acknowledged a mkdir after the partition healed"
    );
    let released = Instant::now();
    ns.del_addr(&vip);

    // The old master finds the new one at the master address and rejoins.
    let rejoined = format!("{}:", ns.ns_ip);
    wait_until(
        "the old master to follow the new one as a metalogger with lag 0",
        Duration::from_secs(120),
        || {
            c.status().is_ok_and(|s| {
                s.epoch == 2
                    && s.metaloggers
                        .iter()
                        .any(|m| m.address.starts_with(&rejoined) && m.connected && m.lag == 0)
            })
        },
    );
    let status = c.status_json().expect("alces status --json");
    println!("status after the rejoin: {}", status["metaloggers"]);

    // The in-partition mkdir went through only via the new master.
    let (r, done) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the in-partition mkdir to finish after the heal");
    r.expect("the in-partition mkdir, retried against the new master, succeeds");
    assert!(
        done >= released,
        "the in-partition mkdir returned before the old master lost the address"
    );
    assert!(c.path("island-dir").is_dir());
    assert!(c.path("island-before").is_dir());

    // Every operation the writer saw acknowledged is on the new master.
    let (log, errors) = storm.finish();
    assert!(
        errors.is_empty(),
        "operations failed instead of pausing: {errors:?}"
    );
    verify(&c.mnt, &log);

    // The old master acknowledged nothing past the promotion version ...
    let last = c
        .deposed_last_acknowledged()
        .expect("the old master's DEPOSED line with last_acknowledged");
    assert!(
        last <= promoted,
        "the old master acknowledged version {last}, after the promotion at {promoted}"
    );
    // ... and the tail it wrote alone was set aside, not kept.
    let dropped: Vec<_> = fs::read_dir(c.master_data())
        .expect("old master data dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("dropped."))
        })
        .collect();
    assert_eq!(dropped.len(), 1, "one set-aside history: {dropped:?}");
    let records = changelog_records(&dropped[0]);
    let tail: Vec<_> = records.iter().filter(|r| r.version > promoted).collect();
    assert!(
        tail.iter().any(|r| matches!(&r.op, Some(Op::Create(o)) if o.name == b"island-dir")),
        "the old master's own tail should hold the in-partition mkdir it never acknowledged (tail: {} records)",
        tail.len()
    );
    let kept = changelog_records(&c.master_data());
    assert!(
        !kept.iter().any(|r| r.version > promoted
            && tail
                .iter()
                .any(|t| t.version == r.version && t.time_ns == r.time_ns)),
        "the rejoined metalogger kept records of the old master's tail"
    );
    let fsck = c.cli_json(&["fsck"]).expect("alces fsck");
    assert_eq!(fsck["ok"], true, "consistency check: {fsck}");
    println!(
        "{} acknowledged operations verified; promotion at version {promoted}; old master's last acknowledged {last}; its tail of {} records set aside",
        log.len(),
        tail.len()
    );
    assert!(
        c.pid(Proc::Master).is_some(),
        "the old master process rejoined"
    );
    drop(island);
    drop(c);
    drop(fip);
    drop(ns);
}
