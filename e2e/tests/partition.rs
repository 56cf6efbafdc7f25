//! A chunkserver in its own network namespace is cut off (veth link down)
//! while writes continue, then healed: its stale copies are never served, and
//! the chunks return to goal with current copies on it.

use std::fs;
use std::time::{Duration, Instant};

use alces_e2e::netns::Netns;
use alces_e2e::{pattern, wait_until, write_synced, Cluster, Options};
use alces_proto::pb;

use common::MIB;

mod common;

/// Reads every listed copy of every chunk of `path` straight from its
/// chunkserver at the listed version; each answer must be the expected bytes
/// (a refused read is fine: it is not served). Returns how many were served.
fn check_served(c: &Cluster, path: &str, want: &[u8]) -> usize {
    let Ok(info) = c.file_info(path) else {
        return 0;
    };
    let mut served = 0;
    for ch in &info.chunks {
        let start = ch.index as usize * MIB;
        let expect = &want[start..(start + MIB).min(want.len())];
        for loc in &ch.copies {
            let chan = c.channel(&loc.address);
            let (id, version) = (ch.chunk_id, ch.version);
            let r = c.block_on(async move {
                let mut client = pb::chunkserver_client::ChunkserverClient::new(chan);
                let call = client.read(pb::ReadRequest {
                    chunk_id: id,
                    version,
                    offset: 0,
                    length: MIB as u32,
                    access: None,
                });
                tokio::time::timeout(Duration::from_secs(5), call).await
            });
            if let Ok(Ok(r)) = r {
                let data = r.into_inner().data;
                assert!(
                    data.len() >= expect.len() && &data[..expect.len()] == expect,
                    "chunk {} copy on {} ({}) served bytes that are not the latest",
                    ch.index,
                    loc.server_id,
                    loc.address
                );
                served += 1;
            }
        }
    }
    served
}

#[test]
fn partitioned_chunkserver_stale_copies_never_served() {
    let ns = Netns::new().expect("a network namespace with a veth pair (needs root and ip)");
    let mut c = Cluster::start(Options {
        chunkservers: 2,
        goal: Some(3),
        env: vec![("ALCES_CHUNKSERVER_TIMEOUT".into(), "3".into())],
        ..Options::default()
    })
    .expect("cluster");
    // Every server must be reachable from the namespace and the host alike.
    c.master_listen_all();
    c.chunkserver_advertise(1, &ns.host_ip);
    c.chunkserver_advertise(2, &ns.host_ip);
    let port = c.master.rsplit_once(':').expect("port").1.to_string();
    let master_from_ns = format!("{}:{port}", ns.host_ip);
    let wrapper = ns.wrapper();
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    c.add_chunkserver(3, &ns.ns_ip, &master_from_ns, &wrapper);
    c.opts.chunkservers = 3;
    let cut_id = c.server_id(&c.cs_addr(3));

    let v1 = pattern(51, 4 * MIB);
    write_synced(&c.path("f"), &v1).unwrap();
    c.wait_at_goal(Duration::from_secs(60));
    let info = c.file_info("/f").unwrap();
    assert!(info
        .chunks
        .iter()
        .all(|ch| ch.copies.iter().any(|l| l.server_id == cut_id)));

    // Partition it and keep writing.
    ns.cut();
    let v2 = pattern(52, 4 * MIB);
    let started = Instant::now();
    // Overwritten in place (no truncation): the same chunks move to new
    // versions, so the partitioned server's copies become stale.
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(c.path("f"))
            .unwrap();
        f.write_all(&v2)
            .and_then(|()| f.sync_all())
            .expect("writes continue while a chunkserver is partitioned");
    }
    let ids_before: Vec<u64> = info.chunks.iter().map(|ch| ch.chunk_id).collect();
    let after = c.file_info("/f").unwrap();
    assert_eq!(
        after
            .chunks
            .iter()
            .map(|ch| ch.chunk_id)
            .collect::<Vec<_>>(),
        ids_before,
        "an in-place overwrite keeps the chunks"
    );
    write_synced(&c.path("g"), &pattern(53, 2 * MIB)).unwrap();
    println!("writes during the partition took {:?}", started.elapsed());
    wait_until(
        "the partitioned chunkserver to be declared lost",
        Duration::from_secs(30),
        || {
            c.status().is_ok_and(|s| {
                s.chunkservers
                    .iter()
                    .any(|x| x.server_id == cut_id && !x.copies_count)
            })
        },
    );
    assert!(check_served(&c, "/f", &v2) > 0);

    // Heal: the stale copies come back into view and must never be served.
    ns.heal();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        check_served(&c, "/f", &v2);
        if c.health()
            .is_ok_and(|h| h.under_goal == 0 && h.missing == 0 && h.over_goal == 0)
            && c.file_info("/f").is_ok_and(|i| {
                i.chunks
                    .iter()
                    .all(|ch| ch.copies.iter().any(|l| l.server_id == cut_id))
            })
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back at goal with the healed server: {:?}",
            c.status_json()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        check_served(&c, "/f", &v2),
        12,
        "every copy of 4 chunks x 3"
    );
    let m = c.mount_extra("mnt-after", &[]);
    assert!(fs::read(m.path.join("f")).unwrap() == v2);
    drop(m);
    let log = std::fs::read_to_string(c.log(alces_e2e::Proc::Master)).unwrap_or_default();
    assert!(
        log.contains("deleting a stale copy") || log.contains("failed during a write"),
        "the master never dropped the partitioned server's old copies"
    );
    drop(c);
    drop(ns);
}
