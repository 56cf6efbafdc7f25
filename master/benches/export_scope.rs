//! What the export check costs: a credential's session has every inode a
//! call names checked against its subtree (`State::in_subtree`: a walk of
//! parents, and for a multiply-linked file whose latest link is outside, a
//! scan of the directories). Measured on a real master started in-process:
//! the check alone under the lock, by depth below the session's root, the
//! scan by namespace size, and GetAttr round trips over loopback with the
//! cluster secret and with a credential. Figures go to stdout; the decision
//! and the numbers are in master/ARCHITECTURE.md ("Exports").

use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_master::server::{start, Options, Running};
use alces_proto::auth::ClientAuth;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{self, admin_client::AdminClient, master_client::MasterClient};

const SECRET: &str = "bench-secret-0123456789";

fn options(dir: &std::path::Path) -> Options {
    Options {
        replication: alces_master::runtime::chunkmap::Policy::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        data_dir: dir.to_path_buf(),
        secret: Arc::from(SECRET),
        chunk_size: 1 << 20,
        default_goal: 1,
        session_timeout: Duration::from_secs(60),
        chunkserver_timeout: Duration::from_secs(60),
        chunkserver_disconnect: Duration::from_secs(5),
        snapshot_interval: Duration::from_secs(3600),
        sync_metaloggers: 0,
        sync_timeout: Duration::from_secs(5),
        lock_caps: Default::default(),
        tls: Default::default(),
    }
}

fn chan(m: &Running, token: &str) -> AuthChannel {
    channel(&m.grpc_addr.to_string(), &ClientAuth::new(token).unwrap()).unwrap()
}

async fn session(c: &mut MasterClient<AuthChannel>) -> u64 {
    c.register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}

async fn mkdir(c: &mut MasterClient<AuthChannel>, sid: u64, parent: u64, name: &str) -> u64 {
    c.mkdir(pb::MkdirRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .attr
    .unwrap()
    .inode
}

async fn mknod(c: &mut MasterClient<AuthChannel>, sid: u64, parent: u64, name: &str) -> u64 {
    c.mknod(pb::MknodRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        kind: pb::FileType::Regular as i32,
        mode: 0o644,
        exclusive: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .attr
    .unwrap()
    .inode
}

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
    let vol = mkdir(&mut c, sid, 1, "vol").await;
    // A chain of 64 directories below the volume, a file at its end.
    let mut dirs = vec![vol];
    for d in 0..64 {
        let next = mkdir(&mut c, sid, *dirs.last().unwrap(), &format!("d{d}")).await;
        dirs.push(next);
    }
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
