//! What the permission checks of credential sessions cost
//! (`domain::permissions`): Lookup and Open round trips over loopback on a
//! real master started in-process, at depth 1 and at depth 65 (the search
//! walk visits every directory up to the session's root), with the cluster
//! secret (not checked) and with a credential (admitted, squashed, checked;
//! the caller is uid 1000, not root, so every mode bit is looked at).
//! Figures go to stdout; they are in master/ARCHITECTURE.md ("Exports").

mod common;

use std::time::Instant;

use alces_master::server::start;
use alces_proto::net::AuthChannel;
use alces_proto::pb::{self, admin_client::AdminClient, master_client::MasterClient};
use common::*;

fn user() -> Option<pb::Caller> {
    Some(pb::Caller {
        uid: 1000,
        gid: 1000,
        groups: vec![4, 24, 27, 100],
        pid: 1,
    })
}

/// Microseconds per Lookup of `name` in `parent`.
async fn lookup_us(
    c: &mut MasterClient<AuthChannel>,
    sid: u64,
    parent: u64,
    name: &str,
    n: u32,
) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        c.lookup(pb::EntryRequest {
            session_id: sid,
            parent,
            name: name.as_bytes().to_vec(),
            caller: user(),
            tag: None,
            negative_reply: false,
        })
        .await
        .unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Microseconds per Open (read-only) of `ino`.
async fn open_us(c: &mut MasterClient<AuthChannel>, sid: u64, ino: u64, n: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        c.open(pb::OpenRequest {
            session_id: sid,
            inode: ino,
            flags: libc::O_RDONLY as u32,
            caller: user(),
            reopen: false,
        })
        .await
        .unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = MasterClient::new(chan(&m, SECRET));
    let sid = session(&mut c).await;
    let dirs = dir_chain(&mut c, sid, 64).await;
    let vol = dirs[0];
    let deep_dir = *dirs.last().unwrap();
    let deep = mknod(&mut c, sid, deep_dir, "f").await;
    let shallow = mknod(&mut c, sid, vol, "f").await;
    let token = AdminClient::new(chan(&m, SECRET))
        .issue_credential(pb::IssueCredentialRequest {
            rule: Some(pb::CredentialRule {
                path: "/vol".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut cc = MasterClient::new(chan(&m, &token));
    let csid = session(&mut cc).await;
    println!("round trips over loopback (2 worker threads), median of 5 runs of 2,000 calls:");
    for (what, parent, ino) in [("depth 1", vol, shallow), ("depth 65", deep_dir, deep)] {
        let mut rows = Vec::new();
        for (label, client, s) in [
            ("cluster secret", &mut c, sid),
            ("credential", &mut cc, csid),
        ] {
            lookup_us(client, s, parent, "f", 500).await;
            let mut l = Vec::new();
            let mut o = Vec::new();
            for _ in 0..5 {
                l.push(lookup_us(client, s, parent, "f", 2_000).await);
                o.push(open_us(client, s, ino, 2_000).await);
            }
            l.sort_by(f64::total_cmp);
            o.sort_by(f64::total_cmp);
            rows.push((label, l[2], o[2]));
        }
        for (label, l, o) in rows {
            println!("  {what:<9} {label:<15} Lookup {l:>6.1} us   Open {o:>6.1} us");
        }
    }
    m.stop().await.unwrap();
}
