//! The reply cache against a real master in-process: a retried tagged
//! mutation is answered with its first outcome and runs once (also after a
//! restart from the master's own metadata, by snapshot and by replay), an
//! untagged one behaves as before, bad tags are refused, acknowledged and
//! closed sessions' outcomes are dropped, and the size is in the status.

mod common;

use std::time::{Duration, Instant};

use alces_master::server::{start, Options};
use alces_proto::net::AuthChannel;
use alces_proto::pb::{self, admin_client::AdminClient, master_client::MasterClient};
use common::{caller, errno_of, master, options, session};

fn tag(id: u64, acked_below: u64) -> Option<pb::RequestTag> {
    Some(pb::RequestTag { id, acked_below })
}

fn mkdir(sid: u64, name: &str, t: Option<pb::RequestTag>) -> pb::MkdirRequest {
    pb::MkdirRequest {
        tag: t,
        session_id: sid,
        parent: 1,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
        caller: caller(),
    }
}

fn entry(sid: u64, parent: u64, name: &str, t: Option<pb::RequestTag>) -> pb::EntryRequest {
    pb::EntryRequest {
        tag: t,
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        caller: caller(),
        negative_reply: false,
    }
}

async fn names(c: &mut MasterClient<AuthChannel>, sid: u64, dir: u64) -> Vec<String> {
    let r = c
        .readdir(pb::ReaddirRequest {
            session_id: sid,
            inode: dir,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

async fn cache_entries(m: &alces_master::server::Running) -> u64 {
    let st = AdminClient::new(common::chan(m))
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(st.reply_cache_bytes >= st.reply_cache_entries);
    st.reply_cache_entries
}

/// Every tagged mutation, sent twice: the second answer is the first one and
/// the tree is as after one execution; untagged, the second fails as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_mutation_runs_once_and_gets_its_first_reply() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;

    let a = c
        .mkdir(mkdir(sid, "d", tag(1, 1)))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .mkdir(mkdir(sid, "d", tag(1, 1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a, b);
    let d = a.attr.unwrap().inode;

    let mknod = pb::MknodRequest {
        tag: tag(2, 1),
        session_id: sid,
        parent: d,
        name: b"f".to_vec(),
        kind: pb::FileType::Regular as i32,
        mode: 0o644,
        caller: caller(),
        exclusive: true,
        ..Default::default()
    };
    let f1 = c.mknod(mknod.clone()).await.unwrap().into_inner();
    assert_eq!(c.mknod(mknod).await.unwrap().into_inner(), f1);
    let f = f1.attr.unwrap().inode;

    let link = pb::LinkRequest {
        tag: tag(3, 1),
        session_id: sid,
        inode: f,
        new_parent: d,
        new_name: b"g".to_vec(),
        caller: caller(),
    };
    let l1 = c.link(link.clone()).await.unwrap().into_inner();
    assert_eq!(l1.attr.unwrap().nlink, 2);
    assert_eq!(c.link(link).await.unwrap().into_inner(), l1);

    let rename = pb::RenameRequest {
        tag: tag(4, 1),
        session_id: sid,
        parent: d,
        name: b"g".to_vec(),
        new_parent: 1,
        new_name: b"h".to_vec(),
        flags: 0,
        caller: caller(),
    };
    let r1 = c.rename(rename.clone()).await.unwrap().into_inner();
    assert_eq!(c.rename(rename).await.unwrap().into_inner(), r1);

    let u1 = c.unlink(entry(sid, 1, "h", tag(5, 1))).await.unwrap();
    let u2 = c.unlink(entry(sid, 1, "h", tag(5, 1))).await.unwrap();
    assert_eq!(u1.into_inner(), u2.into_inner());

    let sym = pb::SymlinkRequest {
        tag: tag(6, 1),
        session_id: sid,
        parent: d,
        name: b"s".to_vec(),
        target: b"f".to_vec(),
        caller: caller(),
    };
    let s1 = c.symlink(sym.clone()).await.unwrap().into_inner();
    assert_eq!(c.symlink(sym).await.unwrap().into_inner(), s1);

    let set = pb::SetXattrRequest {
        tag: tag(7, 1),
        session_id: sid,
        inode: f,
        name: b"user.x".to_vec(),
        value: b"1".to_vec(),
        flags: 1, // XATTR_CREATE: a second run fails with EEXIST
        caller: caller(),
    };
    c.set_xattr(set.clone()).await.unwrap();
    c.set_xattr(set).await.unwrap();
    let rm = pb::XattrRequest {
        tag: tag(8, 1),
        session_id: sid,
        inode: f,
        name: b"user.x".to_vec(),
        caller: caller(),
    };
    c.remove_xattr(rm.clone()).await.unwrap();
    c.remove_xattr(rm).await.unwrap();

    c.mkdir(mkdir(sid, "e", tag(9, 1))).await.unwrap();
    let r1 = c.rmdir(entry(sid, 1, "e", tag(10, 1))).await.unwrap();
    let r2 = c.rmdir(entry(sid, 1, "e", tag(10, 1))).await.unwrap();
    assert_eq!(r1.into_inner(), r2.into_inner());

    assert_eq!(names(&mut c, sid, 1).await, vec!["d"]);
    assert_eq!(names(&mut c, sid, d).await, vec!["f", "s"]);
    assert_eq!(cache_entries(&m).await, 10);

    // Without a tag (older clients, the CLI): every call runs.
    c.mkdir(mkdir(sid, "u", None)).await.unwrap();
    assert_eq!(errno_of(c.mkdir(mkdir(sid, "u", None)).await), libc::EEXIST);
    m.stop().await.unwrap();
}

/// Bad tags are refused with what is wrong; a reused id of another call kind
/// too; the cache forgets what a session acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tags_are_refused_and_acknowledged_outcomes_are_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;

    let e = c.mkdir(mkdir(sid, "x", tag(3, 4))).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    assert!(e.message().contains("acked_below"), "{e:?}");

    c.mkdir(mkdir(sid, "a", tag(1, 1))).await.unwrap();
    let e = c.rmdir(entry(sid, 1, "a", tag(1, 1))).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    assert!(e.message().contains("must not be reused"), "{e:?}");

    for id in 2..=5 {
        c.mkdir(mkdir(sid, &format!("m{id}"), tag(id, 1)))
            .await
            .unwrap();
    }
    assert_eq!(cache_entries(&m).await, 5);
    // Request 6 says every reply below 5 arrived: 1..=4 go.
    c.mkdir(mkdir(sid, "m6", tag(6, 5))).await.unwrap();
    assert_eq!(cache_entries(&m).await, 2);
    // A retry of a dropped outcome runs again (as without a tag).
    assert_eq!(
        errno_of(c.mkdir(mkdir(sid, "m2", tag(2, 2))).await),
        libc::EEXIST
    );
    m.stop().await.unwrap();
}

/// A retry after a restart from the master's own metadata (the outcome came
/// back from the changelog, then from a snapshot) is answered with the first
/// outcome; a closed session's outcomes are dropped (logged, so they stay
/// dropped after a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_survive_restarts_and_go_with_their_session() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = || Options {
        session_timeout: Duration::from_secs(1),
        ..options(tmp.path())
    };
    let m = start(opts()).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let first = c
        .mkdir(mkdir(sid, "d", tag(1, 1)))
        .await
        .unwrap()
        .into_inner();
    let renamed = c
        .rename(pb::RenameRequest {
            tag: tag(2, 1),
            session_id: sid,
            parent: 1,
            name: b"d".to_vec(),
            new_parent: 1,
            new_name: b"e".to_vec(),
            flags: 0,
            caller: caller(),
        })
        .await
        .unwrap()
        .into_inner();

    let resume = |c: &mut MasterClient<AuthChannel>| {
        let mut c = c.clone();
        async move {
            c.register_session(pb::RegisterSessionRequest {
                session_id: sid,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    };
    // Replay: stop without a snapshot, restart, retry.
    m.stop_without_snapshot().await;
    let m = start(opts()).await.unwrap();
    let mut c = master(&m);
    resume(&mut c).await;
    assert_eq!(
        c.mkdir(mkdir(sid, "d", tag(1, 1)))
            .await
            .unwrap()
            .into_inner(),
        first
    );
    // Snapshot: a graceful stop writes one; restart, retry.
    m.stop().await.unwrap();
    let m = start(opts()).await.unwrap();
    let mut c = master(&m);
    resume(&mut c).await;
    let again = c
        .rename(pb::RenameRequest {
            tag: tag(2, 1),
            session_id: sid,
            parent: 1,
            name: b"d".to_vec(),
            new_parent: 1,
            new_name: b"e".to_vec(),
            flags: 0,
            caller: caller(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, renamed);
    assert_eq!(names(&mut c, sid, 1).await, vec!["e"]);
    assert_eq!(cache_entries(&m).await, 2);

    // Closed: its outcomes go once the master has served a session timeout.
    c.close_session(pb::SessionRef { session_id: sid })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache_entries(&m).await != 0 {
        assert!(
            Instant::now() < deadline,
            "reply cache of a closed session kept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.stop_without_snapshot().await;
    let m = start(opts()).await.unwrap();
    assert_eq!(cache_entries(&m).await, 0);
    m.stop().await.unwrap();
}
