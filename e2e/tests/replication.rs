//! Goals, self-healing and data integrity with real processes: goal errors,
//! a chunkserver killed (SIGKILL) during a sustained write and a sustained
//! read, a flipped byte in one copy, goal 3 on two chunkservers, draining, and
//! a killed chunkserver shown disconnected at once while its copies count
//! through the grace.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc;
use std::time::Duration;

use alces_e2e::{pattern, sha256, wait_until, write_synced, Cluster, Options, Proc};
use alces_proto::pb;
use common::{stderr, MIB};

mod common;

fn fast_failure_detection() -> Vec<(String, String)> {
    vec![("ALCES_CHUNKSERVER_TIMEOUT".into(), "3".into())]
}

/// SHA-256 of bytes (written to a scratch file, hashed with sha256sum).
fn sha_of(c: &Cluster, data: &[u8]) -> String {
    let p = c.scratch("sha").join("expected");
    fs::write(&p, data).unwrap();
    sha256(&p)
}

/// Index (1-based) of the chunkserver with address `addr`.
fn cs_index(c: &Cluster, addr: &str) -> u32 {
    (1..=c.opts.chunkservers)
        .find(|i| c.cs_addr(*i) == addr)
        .unwrap_or_else(|| panic!("no chunkserver at {addr}"))
}

/// Asserts every chunk of `path` has exactly `goal` copies, none on `not_on`.
fn assert_copies(c: &Cluster, path: &str, goal: usize, not_on: Option<u64>) {
    let info = c.file_info(path).expect("FileInfo");
    for ch in &info.chunks {
        assert_eq!(
            ch.copies.len(),
            goal,
            "chunk {} of {path} has copies {:?}, goal {goal}",
            ch.index,
            ch.copies
        );
        let mut ids: Vec<u64> = ch.copies.iter().map(|l| l.server_id).collect();
        ids.dedup();
        assert_eq!(ids.len(), goal, "two copies on one chunkserver: {ids:?}");
        if let Some(dead) = not_on {
            assert!(!ids.contains(&dead), "a copy is still counted on {dead}");
        }
    }
}

/// Waits until the master no longer counts chunkserver `id` (lost).
fn wait_lost(c: &Cluster, id: u64) {
    wait_until(
        "the killed chunkserver to be declared lost",
        Duration::from_secs(120),
        || {
            c.status().is_ok_and(|s| {
                s.chunkservers
                    .iter()
                    .any(|x| x.server_id == id && !x.copies_count)
            })
        },
    );
}

#[test]
fn goal_errors_set_get_and_inheritance() {
    let c = Cluster::start(Options {
        chunkservers: 1,
        goal: Some(1),
        ..Options::default()
    })
    .expect("cluster");
    fs::create_dir(c.path("d")).unwrap();
    write_synced(&c.path("d/f"), b"x").unwrap();
    let d = c.path("d").display().to_string();
    let f = c.path("d/f").display().to_string();
    for bad in ["0", "10"] {
        let o = c.cli(&["goal", "set", bad, &d]);
        assert!(!o.status.success(), "goal {bad} accepted");
        assert!(
            stderr(&o).contains("out of range") && stderr(&o).contains("1 to 9"),
            "unclear error for goal {bad}: {}",
            stderr(&o)
        );
    }
    let missing = c.path("nope").display().to_string();
    let o = c.cli(&["goal", "set", "2", &missing]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    let o = c.cli(&["goal", "set", "2", "--fs-path", "/d/nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("/d/nope") && stderr(&o).contains("no such file"),
        "{}",
        stderr(&o)
    );
    let o = c.cli(&["goal", "get", "--fs-path", "/nope"]);
    assert!(!o.status.success());
    // The master validates too (other admin clients than the CLI).
    let ch = c.channel(&c.master);
    let st = c
        .block_on(async move {
            pb::admin_client::AdminClient::new(ch)
                .set_goal(pb::SetGoalRequest {
                    path: "/d".into(),
                    goal: 10,
                    recursive: false,
                })
                .await
        })
        .expect_err("goal 10 accepted by the master");
    assert_eq!(alces_proto::errno::of(&st), libc::EINVAL);
    assert!(st.message().contains("1 to 9"), "{}", st.message());

    let o = c.cli(&["goal", "set", "3", &d, "-r"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let get = |p: &str| -> u64 {
        let o = c.cli(&["--json", "goal", "get", p]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["goal"].as_u64().unwrap()
    };
    assert_eq!(get(&f), 3);
    assert_eq!(get(&d), 3);
    assert_eq!(get(&c.mnt.display().to_string()), 1);
    // New entries inherit their directory's goal.
    write_synced(&c.path("d/g"), b"y").unwrap();
    assert_eq!(get(&c.path("d/g").display().to_string()), 3);
    // Logged: survives a master restart.
    c.kill9(Proc::Master);
    c.wait_master_unlocked();
    c.restart(Proc::Master);
    assert_eq!(get(&f), 3);
    assert_eq!(c.file_info("/d/f").unwrap().attr.unwrap().goal, 3);
}

#[test]
fn chunkserver_killed_during_a_sustained_write() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        env: fast_failure_detection(),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(41, 40 * MIB + 777);
    let path = c.path("big");
    let (tx, rx) = mpsc::channel();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut f = fs::File::create(&path)?;
            for (i, piece) in data.chunks(256 * 1024).enumerate() {
                f.write_all(piece)?;
                if i == 48 {
                    let _ = tx.send(());
                }
                if i % 16 == 15 {
                    f.sync_data()?;
                }
            }
            f.sync_all()
        })
    };
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the writer to get going");
    let dead = c.server_id(&c.cs_addr(2));
    c.kill9(Proc::Chunkserver(2));
    writer
        .join()
        .unwrap()
        .expect("the application saw an error while a chunkserver died");
    let fresh = c.mount_extra("mnt-check", &[]);
    assert_eq!(
        sha256(&fresh.path.join("big")),
        sha_of(&c, &data),
        "bytes read back differ from what was written"
    );
    wait_lost(&c, dead);
    let took = c.wait_at_goal(Duration::from_secs(180));
    println!("back at goal {took:?} after the write");
    assert_copies(&c, "/big", 2, Some(dead));
    assert_eq!(
        sha256(&fresh.path.join("big")),
        sha_of(&c, &data),
        "bytes differ after repair"
    );
}

#[test]
fn chunkserver_killed_during_a_sustained_read() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        env: fast_failure_detection(),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(42, 40 * MIB + 99);
    write_synced(&c.path("big"), &data).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    // A fresh mount: nothing in the page cache.
    let fresh = c.mount_extra("mnt-read", &[]);
    let path = fresh.path.join("big");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut f = fs::File::open(&path)?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() >= 8 * MIB && out.len() - n < 8 * MIB {
                let _ = tx.send(());
                // Give the kill time to land while reading goes on.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Ok(out)
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the reader to get going");
    let dead = c.server_id(&c.cs_addr(1));
    c.kill9(Proc::Chunkserver(1));
    let got = reader
        .join()
        .unwrap()
        .expect("the application saw an error while a chunkserver died");
    assert_eq!(got.len(), data.len());
    assert_eq!(sha_of(&c, &got), sha_of(&c, &data), "wrong bytes read");
    wait_lost(&c, dead);
    c.wait_at_goal(Duration::from_secs(180));
    assert_copies(&c, "/big", 2, Some(dead));
}

#[test]
fn flipped_bytes_in_one_copy_are_never_read_and_repaired() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(43, 3 * MIB);
    write_synced(&c.path("f"), &data).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let info = c.file_info("/f").unwrap();
    let ch = &info.chunks[1];
    let victim = &ch.copies[0];
    let i = cs_index(&c, &victim.address);
    let name = format!("{:016x}.chunk", ch.chunk_id);
    let file = c
        .chunk_files(i)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
        .expect("the chunk file of the victim copy");
    {
        let fh = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let mut b = [0u8; 16];
        fh.read_exact_at(&mut b, 8192 + 5000).unwrap();
        for x in &mut b {
            *x ^= 0xA5;
        }
        fh.write_all_at(&b, 8192 + 5000).unwrap();
        fh.sync_all().unwrap();
    }
    // Reads through a fresh mount return the right bytes whichever copy they try.
    for k in 0..3 {
        let m = c.mount_extra(&format!("mnt-{k}"), &[]);
        assert!(
            fs::read(m.path.join("f")).unwrap() == data,
            "wrong bytes with one corrupt copy"
        );
    }
    // Reading the corrupt copy itself fails (and makes the chunkserver report it).
    let ch_id = ch.chunk_id;
    let version = ch.version;
    let chan = c.channel(&victim.address);
    let r = c.block_on(async move {
        pb::chunkserver_client::ChunkserverClient::new(chan)
            .read(pb::ReadRequest {
                chunk_id: ch_id,
                version,
                offset: 0,
                length: 1024 * 1024,
                access: None,
            })
            .await
    });
    assert!(r.is_err(), "the corrupt copy was served");
    // The master replaces the copy: back at goal, with every copy intact. (Until
    // the victim's next heartbeat reports the damage, the master still counts
    // its copy, so the copies on disk are part of the condition.)
    wait_until(
        "the corrupt copy to be replaced",
        Duration::from_secs(60),
        || {
            c.file_info("/f")
                .is_ok_and(|i| i.chunks[1].copies.len() == 2)
                && c.health()
                    .is_ok_and(|h| h.under_goal == 0 && h.missing == 0)
                && c.chunk_copies(ch_id).len() == 2
        },
    );
    let copies = c.chunk_copies(ch_id);
    assert_eq!(copies.len(), 2, "copies on disk: {copies:?}");
    let want = &data[MIB..2 * MIB];
    for p in &copies {
        let raw = fs::read(p).unwrap();
        assert!(
            raw.len() >= 8192 + MIB && &raw[8192..8192 + MIB] == want,
            "copy {} does not hold the right bytes",
            p.display()
        );
    }
    let m = c.mount_extra("mnt-after", &[]);
    assert!(fs::read(m.path.join("f")).unwrap() == data);
}

#[test]
fn goal_three_on_two_chunkservers_reaches_goal_when_a_third_joins() {
    let c = Cluster::start(Options {
        chunkservers: 2,
        goal: Some(3),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(44, 4 * MIB);
    write_synced(&c.path("f"), &data).expect("writes succeed below goal");
    assert!(fs::read(c.path("f")).unwrap() == data);
    let h = c.health().unwrap();
    assert_eq!((h.missing, h.under_goal, h.at_goal), (0, 4, 0), "{h:?}");
    assert_copies(&c, "/f", 2, None);
    c.add_chunkserver(3, "127.0.0.1", &c.master, &[]);
    c.wait_at_goal(Duration::from_secs(60));
    assert_copies(&c, "/f", 3, None);
}

#[test]
fn drain_moves_copies_then_says_safe_to_remove() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        env: fast_failure_detection(),
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(45, 6 * MIB);
    write_synced(&c.path("f"), &data).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let id = c.server_id(&c.cs_addr(1));
    let o = c.cli(&["chunkserver", "drain", "424242"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("424242"), "{}", stderr(&o));
    let o = c.cli(&["chunkserver", "drain", &id.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let server = |c: &Cluster| -> serde_json::Value {
        let v = c.status_json().unwrap();
        v["chunkservers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"].as_u64() == Some(id))
            .cloned()
            .unwrap()
    };
    assert_eq!(server(&c)["draining"], true);
    wait_until(
        "the drained chunkserver to be safe to remove",
        Duration::from_secs(120),
        || {
            let s = server(&c);
            s["safe_to_remove"] == true && s["chunks"].as_u64() == Some(0)
        },
    );
    let text = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("safe to remove"), "{text}");
    assert_copies(&c, "/f", 2, Some(id));
    // Removing it now loses nothing and leaves every chunk at goal.
    c.kill9(Proc::Chunkserver(1));
    let m = c.mount_extra("mnt-after", &[]);
    assert!(fs::read(m.path.join("f")).unwrap() == data);
    c.wait_at_goal(Duration::from_secs(10));
    // Undrain of a live server works.
    let other = c.server_id(&c.cs_addr(2));
    let o = c.cli(&["chunkserver", "undrain", &other.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_short_chunkserver_restart_causes_no_copies() {
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        env: vec![("ALCES_CHUNKSERVER_TIMEOUT".into(), "30".into())],
        ..Options::default()
    })
    .expect("cluster");
    write_synced(&c.path("f"), &pattern(46, 8 * MIB)).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let per_server = |c: &Cluster| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = c
            .status()
            .unwrap()
            .chunkservers
            .iter()
            .map(|s| (s.server_id, s.chunks))
            .collect();
        v.sort_unstable();
        v
    };
    let before = per_server(&c);
    let port = c.cs_addr(1).rsplit_once(':').unwrap().1.to_string();
    c.kill9(Proc::Chunkserver(1));
    wait_until("the port to be free", Duration::from_secs(30), || {
        std::net::TcpListener::bind(format!("127.0.0.1:{port}")).is_ok()
    });
    c.restart(Proc::Chunkserver(1));
    // Watch for a while: nothing is re-replicated, nothing moves.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let st = c.status().unwrap();
        assert_eq!(
            st.replications_in_flight, 0,
            "a short restart started copies"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.wait_at_goal(Duration::from_secs(10));
    assert_eq!(per_server(&c), before);
    assert!(
        c.grep_log(Proc::Master, "its copies no longer count")
            .is_empty(),
        "the restarted chunkserver was declared lost"
    );
}

/// A SIGKILLed chunkserver is shown disconnected within seconds (its
/// heartbeats stop), while its copies keep counting for the grace
/// (`--chunkserver-timeout`): nothing is re-replicated, reads go to the live
/// copies and new chunks avoid it. Once the grace ends its chunks are copied
/// elsewhere.
#[test]
fn a_killed_chunkserver_is_disconnected_at_once_and_its_copies_count_until_the_grace_ends() {
    let grace_secs = 40;
    let c = Cluster::start(Options {
        chunkservers: 3,
        goal: Some(2),
        env: vec![
            ("ALCES_CHUNKSERVER_TIMEOUT".into(), grace_secs.to_string()),
            ("ALCES_CHUNKSERVER_DISCONNECT_MS".into(), "2000".into()),
        ],
        ..Options::default()
    })
    .expect("cluster");
    let data = pattern(47, 8 * MIB);
    write_synced(&c.path("f"), &data).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let want = sha_of(&c, &data);
    let info = c.file_info("/f").unwrap();
    let victim = info.chunks[0].copies[0].server_id;
    let victim_addr = info.chunks[0].copies[0].address.clone();
    c.kill9(Proc::Chunkserver(cs_index(&c, &victim_addr)));

    let mut seen = None;
    wait_until(
        "the killed chunkserver to be shown disconnected",
        Duration::from_secs(30),
        || {
            let st = c.status().expect("status");
            let row = st
                .chunkservers
                .iter()
                .find(|x| x.server_id == victim)
                .cloned();
            let disconnected = row.as_ref().is_some_and(|x| !x.connected);
            if disconnected {
                seen = Some((st, row.unwrap()));
            }
            disconnected
        },
    );
    let (st, row) = seen.unwrap();
    assert!(
        row.copies_count && row.copies_count_for_ms > 0 && row.disconnected_ms > 0,
        "a disconnected chunkserver's copies count during the grace: {row:?}"
    );
    let counts = st.chunk_counts.unwrap();
    assert_eq!(
        (counts.missing, counts.under_goal),
        (0, 0),
        "its copies still count: {counts:?}"
    );
    assert_eq!(
        st.replications_in_flight, 0,
        "re-replication started during the grace"
    );
    let tuning = st.tuning.unwrap();
    assert_eq!(
        (
            tuning.chunkserver_timeout_secs,
            tuning.chunkserver_disconnect_ms
        ),
        (grace_secs, 2000)
    );
    // `alces status` says so, in text and JSON.
    let text = String::from_utf8_lossy(&c.cli(&["status"]).stdout).into_owned();
    assert!(text.contains("copies count"), "{text}");
    let json = c.status_json().unwrap();
    let j = json["chunkservers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"].as_u64() == Some(victim))
        .unwrap()
        .clone();
    assert_eq!(
        (&j["connected"], &j["copies_count"]),
        (&false.into(), &true.into()),
        "{j}"
    );
    // Reads are served by the live copies; a new file avoids the dead server.
    assert_eq!(sha256(&c.path("f")), want);
    write_synced(&c.path("g"), &pattern(48, 2 * MIB)).unwrap();
    for ch in &c.file_info("/g").unwrap().chunks {
        assert!(
            ch.copies.iter().all(|l| l.server_id != victim),
            "a new chunk was placed on a disconnected chunkserver: {:?}",
            ch.copies
        );
    }
    // The grace ends: its copies stop counting and are made again elsewhere.
    wait_lost(&c, victim);
    c.wait_at_goal(Duration::from_secs(120));
    assert_copies(&c, "/f", 2, Some(victim));
    assert_eq!(sha256(&c.path("f")), want);
}
