//! What the export check costs: a credential's session has every inode a
//! call names checked against its subtree (`State::in_subtree`: a walk of
//! parents, and for a multiply-linked file whose latest link is outside, a
//! scan of the directories). Measured on a real master started in-process:
//! the check alone under the lock, by depth below the session's root, the
//! scan by namespace size, and GetAttr round trips over loopback with the
//! cluster secret and with a credential. Figures go to stdout; the decision
//! and the numbers are in master/ARCHITECTURE.md ("Exports").

mod common;

use std::time::Instant;

use alces_master::server::{start, Running};
use alces_proto::net::AuthChannel;
use alces_proto::pb::{self, admin_client::AdminClient, master_client::MasterClient};
use common::*;

/// Nanoseconds per `in_subtree` call, the lock taken once per call.
fn check_ns(m: &Running, root: u64, ino: u64, n: u32) -> f64 {
    let started = Instant::now();
    let mut ok = 0u32;
    for _ in 0..n {
        let g = m.core.inner.lock();
        ok += u32::from(g.state.in_subtree(root, std::hint::black_box(ino)));
    }
    assert_eq!(ok, n, "the inode must be inside");
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Microseconds per GetAttr round trip.
async fn getattr_us(c: &mut MasterClient<AuthChannel>, sid: u64, ino: u64, n: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        c.get_attr(pb::InodeRequest {
            session_id: sid,
            inode: ino,
            caller: None,
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
    // A chain of 64 directories below the volume, a file at its end.
    let dirs = dir_chain(&mut c, sid, 64).await;
    let vol = dirs[0];
    let deep = mknod(&mut c, sid, *dirs.last().unwrap(), "f").await;
    let shallow = mknod(&mut c, sid, vol, "f").await;
    println!("export check (State::in_subtree under the master lock), per call:");
    for (what, ino) in [
        ("the root itself", vol),
        ("file at depth 1", shallow),
        ("directory at depth 8", dirs[8]),
        ("file at depth 65", deep),
    ] {
        // Warm up, then measure.
        check_ns(&m, vol, ino, 10_000);
        println!("  {what:<40} {:>8.0} ns", check_ns(&m, vol, ino, 200_000));
    }
    // A file inside linked from outside by an administrator: its latest
    // parent is outside, so the directories are scanned (in inode order,
    // until one inside holds a link): the file sits in a directory made after
    // every other inode, the scan's worst case.
    let outside = mkdir(&mut c, sid, 1, "outside").await;
    for (total, step) in [(1_000u32, 1_000u32), (10_000, 9_000)] {
        let flat = mkdir(&mut c, sid, 1, &format!("flat{total}")).await;
        for i in 0..step {
            mknod(&mut c, sid, flat, &format!("f{i}")).await;
        }
        let late = mkdir(&mut c, sid, vol, &format!("late{total}")).await;
        let linked = mknod(&mut c, sid, late, &format!("linked{total}")).await;
        c.link(pb::LinkRequest {
            session_id: sid,
            inode: linked,
            new_parent: outside,
            new_name: format!("l{total}").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
        let inodes = m.core.inner.lock().state.inodes.len();
        println!(
            "  {:<40} {:>8.0} ns",
            format!("linked from outside, {inodes} inodes"),
            check_ns(&m, vol, linked, 200)
        );
    }
    // Round trips over loopback: the cluster secret (no check) and a credential.
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
    println!("GetAttr round trip over loopback (2 worker threads), per call:");
    for (what, ino) in [("file at depth 1", shallow), ("file at depth 65", deep)] {
        getattr_us(&mut c, sid, ino, 500).await;
        let plain = getattr_us(&mut c, sid, ino, 5_000).await;
        getattr_us(&mut cc, csid, ino, 500).await;
        let cred = getattr_us(&mut cc, csid, ino, 5_000).await;
        println!("  {what:<20} cluster secret {plain:>6.1} us, credential {cred:>6.1} us");
    }
    m.stop().await.unwrap();
}
