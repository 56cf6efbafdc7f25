//! What a master restart and a promoted metalogger must carry over besides the
//! namespace: a chunkserver drain (logged metadata, replayed by metaloggers)
//! and the master's tuning flags (alces-metalogger takes the same flags and
//! ALCES_* variables as alces-master and starts its master with them).

use std::fs;
use std::time::Duration;

use alces_e2e::{pattern, wait_until, write_synced, Cluster, Options, Proc};

use common::MIB;

mod common;

/// The status entry of chunkserver `id` (None while it is not registered).
fn server(c: &Cluster, id: u64) -> Option<serde_json::Value> {
    let v = c.status_json().ok()?;
    v["chunkservers"]
        .as_array()?
        .iter()
        .find(|s| s["id"].as_u64() == Some(id) && s["connected"] == true)
        .cloned()
}

fn assert_tuning(c: &Cluster, who: &str) {
    let v = c.status_json().expect("status");
    let t = &v["tuning"];
    assert_eq!(t["replication_rate"], 7, "{who}: {t}");
    assert_eq!(t["replications_per_server"], 3, "{who}: {t}");
    assert_eq!(t["rebalance_threshold"], 25.0, "{who}: {t}");
    assert_eq!(t["chunkserver_timeout_secs"], 9, "{who}: {t}");
    assert_eq!(t["session_timeout_secs"], 21, "{who}: {t}");
    let text = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains(
            "replication 7/s, 3 per server, rebalance above 25 points; chunkserver timeout 9 s"
        ),
        "{who}: {text}"
    );
}

#[test]
fn drain_and_tuning_survive_a_master_restart_and_a_promotion() {
    let c = Cluster::start(Options {
        goal: Some(2),
        env: [
            ("ALCES_REPLICATION_RATE", "7"),
            ("ALCES_REPLICATIONS_PER_SERVER", "3"),
            ("ALCES_REBALANCE_THRESHOLD", "25"),
            ("ALCES_CHUNKSERVER_TIMEOUT", "9"),
            ("ALCES_SESSION_TIMEOUT", "21"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..Options::default()
    })
    .expect("start cluster");
    assert_tuning(&c, "the first master");
    let data = pattern(61, 6 * MIB);
    write_synced(&c.path("f"), &data).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let id = c.server_id(&c.cs_addr(1));
    let o = c.cli(&["chunkserver", "drain", &id.to_string()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(server(&c, id).expect("drained server")["draining"], true);

    // SIGKILL of the master: the restarted master replays the drain.
    c.kill9(Proc::Master);
    c.wait_master_unlocked();
    c.restart(Proc::Master);
    wait_until(
        "the drained chunkserver to register again, still draining",
        Duration::from_secs(60),
        || server(&c, id).is_some_and(|s| s["draining"] == true),
    );

    // A promotion: the metalogger replayed the drain, and runs the master
    // with its own tuning flags.
    c.wait_ml_caught_up(1, Duration::from_secs(60));
    c.kill9(Proc::Master);
    let out = c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status().expect("promoted master").epoch, 2);
    wait_until(
        "the drained chunkserver to register with the promoted master, still draining",
        Duration::from_secs(60),
        || server(&c, id).is_some_and(|s| s["draining"] == true),
    );
    assert_tuning(&c, "the promoted metalogger");
    // The drain goes on under the new master until the server can go.
    wait_until(
        "the drained chunkserver to be safe to remove",
        Duration::from_secs(120),
        || server(&c, id).is_some_and(|s| s["safe_to_remove"] == true && s["chunks"] == 0),
    );
    assert!(fs::read(c.path("f")).unwrap() == data);
    // The other servers were never drained.
    let other = c.server_id(&c.cs_addr(2));
    assert_eq!(server(&c, other).expect("cs2")["draining"], false);
}
