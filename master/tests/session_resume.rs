//! Resuming a client session: only with its secret, never once it ended, and
//! as a takeover (another process continuing a dead one's connection) with
//! its open files, file locks and reply cache kept.

mod common;

use std::time::Duration;

use alces_proto::errno;
use alces_proto::net::AuthChannel;
use alces_proto::pb::{self, master_client::MasterClient, LockType};
use common::{caller, errno_of, file, master, started};

async fn register(
    c: &mut MasterClient<AuthChannel>,
    session_id: u64,
    secret: &[u8],
    takeover: bool,
) -> Result<pb::RegisterSessionReply, tonic::Status> {
    c.register_session(pb::RegisterSessionRequest {
        client_name: "t".into(),
        session_id,
        session_secret: secret.to_vec(),
        takeover,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

fn tag(id: u64) -> Option<pb::RequestTag> {
    (id != 0).then_some(pb::RequestTag { id, acked_below: 1 })
}

fn mkdir_req(sid: u64, name: &str, id: u64) -> pb::MkdirRequest {
    pb::MkdirRequest {
        tag: tag(id),
        session_id: sid,
        parent: 1,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
        caller: caller(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_resumed_only_with_its_secret() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let s = register(&mut c, 0, &[], false).await.unwrap();
    assert_eq!(s.session_secret.len(), 16, "a new session gets a secret");
    let other = register(&mut c, 0, &[], false).await.unwrap();
    assert_ne!(other.session_secret, s.session_secret);

    for wrong in [Vec::new(), other.session_secret.clone(), vec![0u8; 3]] {
        let e = register(&mut c, s.session_id, &wrong, false)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        assert!(
            errno::is_session_ended(&e),
            "the client is told to register anew: {e:?}"
        );
        assert!(e.message().contains("secret"), "{}", e.message());
        let e = register(&mut c, s.session_id, &wrong, true)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    }
    // The refused attempts changed nothing: the holder resumes.
    let r = register(&mut c, s.session_id, &s.session_secret, false)
        .await
        .unwrap();
    assert_eq!(r.session_id, s.session_id);
    assert_eq!(r.session_secret, s.session_secret, "the secret is kept");
    m.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_keeps_opens_locks_and_cached_replies() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let s = register(&mut c, 0, &[], false).await.unwrap();
    let sid = s.session_id;
    // No trash: an unlinked file lives only while it is open.
    common::admin(&m)
        .set_trash_time(pb::SetTrashTimeRequest {
            path: "/".into(),
            seconds: 0,
        })
        .await
        .unwrap();
    // An open file, then unlinked: kept alive by the open.
    let f = file(&mut c, sid, 1, "f").await.inode;
    c.open(pb::OpenRequest {
        session_id: sid,
        inode: f,
        flags: libc::O_RDWR as u32,
        caller: caller(),
        reopen: false,
    })
    .await
    .unwrap();
    c.unlink(pb::EntryRequest {
        session_id: sid,
        parent: 1,
        name: b"f".to_vec(),
        caller: caller(),
        tag: tag(1),
        negative_reply: false,
    })
    .await
    .unwrap();
    // A lock, and a mutation whose reply the dead process never saw.
    let lock = pb::HeldLock {
        inode: f,
        owner: 9,
        r#type: LockType::LockWrite as i32,
        start: 0,
        end: u64::MAX,
        pid: 77,
        session_id: 0,
    };
    c.set_lock(pb::SetLockRequest {
        session_id: sid,
        lock: Some(lock),
        wait: false,
    })
    .await
    .unwrap();
    let first = c.mkdir(mkdir_req(sid, "d", 2)).await.unwrap().into_inner();

    let t = register(&mut c, sid, &s.session_secret, true)
        .await
        .unwrap();
    assert_eq!(t.session_id, sid, "the session is continued");
    assert_eq!(t.open_inodes, vec![f], "the open is listed");
    assert_eq!(t.held_locks.len(), 1);
    assert_eq!(
        (
            t.held_locks[0].inode,
            t.held_locks[0].owner,
            t.held_locks[0].end
        ),
        (f, 9, u64::MAX)
    );
    // The unlinked file lives on; the lock still excludes others; the resent
    // mkdir gets its first outcome.
    c.get_attr(pb::InodeRequest {
        session_id: sid,
        inode: f,
        caller: caller(),
    })
    .await
    .unwrap();
    let other = common::session(&mut c).await;
    let r = c
        .set_lock(pb::SetLockRequest {
            session_id: other,
            lock: Some(pb::HeldLock { owner: 1, ..lock }),
            wait: false,
        })
        .await;
    assert_eq!(errno_of(r), libc::EAGAIN);
    let again = c.mkdir(mkdir_req(sid, "d", 2)).await.unwrap().into_inner();
    assert_eq!(again, first, "the cached reply, not EEXIST");

    // A plain resume listing no open file releases it: the orphan goes.
    register(&mut c, sid, &s.session_secret, false)
        .await
        .unwrap();
    let r = c
        .get_attr(pb::InodeRequest {
            session_id: sid,
            inode: f,
            caller: caller(),
        })
        .await;
    assert_eq!(errno_of(r), libc::ENOENT);
    m.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_cannot_be_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = alces_master::server::Options {
        session_timeout: Duration::from_secs(1),
        ..common::options(tmp.path())
    };
    let m = alces_master::server::start(opts).await.unwrap();
    let mut c = master(&m);
    // Closed.
    let s = register(&mut c, 0, &[], false).await.unwrap();
    c.close_session(pb::SessionRef {
        session_id: s.session_id,
    })
    .await
    .unwrap();
    for takeover in [false, true] {
        let e = register(&mut c, s.session_id, &s.session_secret, takeover)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(errno::is_session_ended(&e), "{e:?}");
        assert!(
            e.message().contains("closed or its lease expired"),
            "{}",
            e.message()
        );
    }
    // Expired: not renewed for longer than the session timeout.
    let s = register(&mut c, 0, &[], false).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A mutation checks the session without renewing its lease.
        n += 1;
        let r = c
            .mkdir(mkdir_req(s.session_id, &format!("probe{n}"), 0))
            .await;
        if r.as_ref().is_err_and(errno::is_session_unknown) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
    }
    let e = register(&mut c, s.session_id, &s.session_secret, true)
        .await
        .unwrap_err();
    assert!(errno::is_session_ended(&e), "{e:?}");
    // Unknown to a master that has served longer than a session timeout.
    let e = register(&mut c, 0x5eed, &[7; 16], false).await.unwrap_err();
    assert!(errno::is_session_ended(&e), "{e:?}");
    assert!(
        e.message().contains("longer than a session timeout"),
        "{}",
        e.message()
    );
    m.stop().await.unwrap();
}
