//! File locks over the Master service, in process: bad requests get a clear
//! errno, a blocking `SetLock` returns when the conflicting lock goes (and a
//! cancelled one leaves no waiter behind), closing a session releases its
//! locks, re-asserted locks hold, a restarted master grants no new lock
//! during its grace period, and the caps refuse with ENOLCK naming the flag.

mod common;

use std::time::Duration;

use alces_master::runtime::locks::LockCaps;
use alces_master::server::Running;
use alces_proto::net::AuthChannel;
use alces_proto::pb::{self, master_client::MasterClient, LockType};
use common::{admin, errno_of, file, http_get, master, session, started};

fn lock(inode: u64, owner: u64, t: LockType, start: u64, end: u64) -> pb::HeldLock {
    pb::HeldLock {
        inode,
        owner,
        r#type: t as i32,
        start,
        end,
        pid: 4242,
        session_id: 0,
    }
}

async fn set(
    c: &mut MasterClient<AuthChannel>,
    sid: u64,
    l: pb::HeldLock,
    wait: bool,
) -> Result<pb::SetLockReply, tonic::Status> {
    c.set_lock(pb::SetLockRequest {
        session_id: sid,
        lock: Some(l),
        wait,
    })
    .await
    .map(|r| r.into_inner())
}

/// Waits (up to 10 s) until the master's lock table holds `n` waiters.
async fn waiters(m: &Running, n: usize, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m.core.inner.lock().locks.waiting() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what} ({} waiters, want {n})",
            m.core.inner.lock().locks.waiting()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
#[tokio::test]
async fn bad_lock_requests_get_a_clear_errno() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let f = file(&mut c, sid, 1, "f").await.inode;
    let cases: Vec<(&str, pb::SetLockRequest, i32)> = vec![
        (
            "no lock",
            pb::SetLockRequest {
                session_id: sid,
                lock: None,
                wait: false,
            },
            libc::EINVAL,
        ),
        (
            "unspecified type",
            pb::SetLockRequest {
                session_id: sid,
                lock: Some(lock(f, 1, LockType::Unspecified, 0, 1)),
                wait: false,
            },
            libc::EINVAL,
        ),
        (
            "unknown type",
            pb::SetLockRequest {
                session_id: sid,
                lock: Some(pb::HeldLock {
                    r#type: 77,
                    ..lock(f, 1, LockType::LockRead, 0, 1)
                }),
                wait: false,
            },
            libc::EINVAL,
        ),
        (
            "range ends before it starts",
            pb::SetLockRequest {
                session_id: sid,
                lock: Some(lock(f, 1, LockType::LockWrite, 10, 9)),
                wait: false,
            },
            libc::EINVAL,
        ),
        (
            "no such inode",
            pb::SetLockRequest {
                session_id: sid,
                lock: Some(lock(987_654, 1, LockType::LockWrite, 0, 9)),
                wait: false,
            },
            libc::ENOENT,
        ),
        (
            "unknown session",
            pb::SetLockRequest {
                session_id: 12345,
                lock: Some(lock(f, 1, LockType::LockWrite, 0, 9)),
                wait: false,
            },
            libc::ESTALE,
        ),
    ];
    for (name, req, want) in cases {
        let r = c.set_lock(req).await;
        let status = r.expect_err(name);
        assert_eq!(alces_proto::errno::of(&status), want, "{name}: {status:?}");
        assert!(!status.message().is_empty(), "{name}: says what was wrong");
    }
    let r = c
        .get_lock(pb::SetLockRequest {
            session_id: sid,
            lock: Some(lock(f, 1, LockType::LockUnlock, 0, 9)),
            wait: false,
        })
        .await;
    assert_eq!(errno_of(r), libc::EINVAL, "GetLock of an unlock");
}

#[tokio::test]
async fn waits_end_when_the_lock_goes_and_sessions_take_theirs_along() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let s1 = session(&mut c).await;
    let s2 = session(&mut c).await;
    let f = file(&mut c, s1, 1, "f").await.inode;

    let held = set(&mut c, s1, lock(f, 1, LockType::LockWrite, 0, 99), false)
        .await
        .unwrap()
        .held;
    assert_eq!(held.len(), 1);
    let r = set(&mut c, s2, lock(f, 1, LockType::LockRead, 50, 50), false).await;
    assert_eq!(errno_of(r), libc::EAGAIN);
    let got = c
        .get_lock(pb::SetLockRequest {
            session_id: s2,
            lock: Some(lock(f, 1, LockType::LockRead, 50, 50)),
            wait: false,
        })
        .await
        .unwrap()
        .into_inner()
        .conflict
        .expect("a conflict");
    assert_eq!(
        (got.session_id, got.start, got.end, got.pid),
        (s1, 0, 99, 4242)
    );

    // A waiter returns once the holder unlocks.
    let mut c2 = master(&m);
    let waiting = tokio::spawn(async move {
        set(&mut c2, s2, lock(f, 1, LockType::LockWrite, 10, 19), true).await
    });
    waiters(&m, 1, "the waiter's request to reach the lock table").await;
    assert!(
        !waiting.is_finished(),
        "the waiter waits while the lock is held"
    );
    set(&mut c, s1, lock(f, 1, LockType::LockUnlock, 0, 49), false)
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiter is woken")
        .unwrap()
        .unwrap()
        .held;
    assert_eq!((held[0].start, held[0].end), (10, 19));
    assert_eq!(m.core.inner.lock().locks.waiting(), 0);

    // A cancelled wait leaves no waiter behind.
    let mut c3 = master(&m);
    let cancelled = tokio::spawn(async move {
        set(&mut c3, s1, lock(f, 1, LockType::LockWrite, 0, 99), true).await
    });
    waiters(&m, 1, "the second waiter's request to reach the lock table").await;
    cancelled.abort();
    let _ = cancelled.await;
    waiters(&m, 0, "the cancelled call's waiter to be removed").await;

    // Closing session 2 releases its lock and wakes session 1's waiter.
    let mut c4 = master(&m);
    let waiting = tokio::spawn(async move {
        set(&mut c4, s1, lock(f, 1, LockType::LockWrite, 0, 99), true).await
    });
    waiters(&m, 1, "the third waiter's request to reach the lock table").await;
    c.close_session(pb::SessionRef { session_id: s2 })
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken by the session's close")
        .unwrap()
        .unwrap();

    // Re-asserting: a lock that conflicts with session 1's comes back as lost.
    let s3 = session(&mut c).await;
    let lost = c
        .reassert_locks(pb::ReassertLocksRequest {
            session_id: s3,
            locks: vec![
                lock(f, 3, LockType::LockRead, 200, 299),
                lock(f, 3, LockType::LockWrite, 0, 0),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .lost;
    assert_eq!(lost.len(), 1);
    assert_eq!((lost[0].start, lost[0].end), (0, 0));
    let r = set(&mut c, s1, lock(f, 7, LockType::LockWrite, 250, 250), false).await;
    assert_eq!(errno_of(r), libc::EAGAIN, "the re-asserted lock holds");
}

#[tokio::test]
async fn a_restarted_master_waits_out_its_grace_before_granting() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = alces_master::server::Options {
        session_timeout: Duration::from_secs(3),
        ..common::options(tmp.path())
    };
    let timeout = opts.session_timeout;
    let m = alces_master::server::start(opts.clone()).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let f = file(&mut c, sid, 1, "f").await.inode;
    // A new filesystem has nobody to wait for.
    let t = std::time::Instant::now();
    set(&mut c, sid, lock(f, 1, LockType::LockWrite, 0, 0), false)
        .await
        .unwrap();
    assert!(t.elapsed() < timeout, "no grace on a new filesystem");
    m.stop().await.unwrap();

    let m = alces_master::server::start(opts).await.unwrap();
    let mut c = master(&m);
    let s1 = c
        .register_session(pb::RegisterSessionRequest {
            client_name: "t".into(),
            session_id: sid,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let lost = c
        .reassert_locks(pb::ReassertLocksRequest {
            session_id: s1,
            locks: vec![lock(f, 1, LockType::LockWrite, 0, 0)],
        })
        .await
        .unwrap()
        .into_inner()
        .lost;
    assert!(lost.is_empty(), "re-asserting during the grace is granted");
    let s2 = session(&mut c).await;
    let t = std::time::Instant::now();
    let r = set(&mut c, s2, lock(f, 1, LockType::LockWrite, 0, 0), false).await;
    assert_eq!(errno_of(r), libc::EAGAIN);
    assert!(
        t.elapsed() >= timeout - Duration::from_millis(500),
        "a new lock waited for the grace period ({:?} of {timeout:?})",
        t.elapsed()
    );
    m.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_with_enolck_and_name_the_flag_to_raise() {
    let tmp = tempfile::tempdir().unwrap();
    let m = alces_master::server::start(alces_master::server::Options {
        lock_caps: LockCaps {
            per_session: 2,
            total: 3,
        },
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..common::options(tmp.path())
    })
    .await
    .unwrap();
    let mut c = master(&m);
    let s1 = session(&mut c).await;
    let s2 = session(&mut c).await;
    let f = file(&mut c, s1, 1, "f").await.inode;
    let w = |owner, start| lock(f, owner, LockType::LockWrite, start, start);

    set(&mut c, s1, w(1, 0), false).await.unwrap();
    set(&mut c, s1, w(2, 10), false).await.unwrap();
    // A third range of session 1, from either owner, waiting or not: refused.
    for (owner, wait) in [(1, false), (3, true)] {
        let e = set(&mut c, s1, w(owner, 20), wait).await.unwrap_err();
        assert_eq!(alces_proto::errno::of(&e), libc::ENOLCK, "{e:?}");
        assert!(
            e.message().contains("--max-locks-per-session")
                && e.message().contains("ALCES_MAX_LOCKS_PER_SESSION"),
            "the message names the flag: {}",
            e.message()
        );
    }
    // Growing a range adds none: allowed at the cap.
    set(&mut c, s1, w(1, 1), false).await.unwrap();
    // Session 2 reaches the total.
    set(&mut c, s2, w(1, 30), false).await.unwrap();
    let e = set(&mut c, s2, w(1, 40), false).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::ENOLCK);
    assert!(e.message().contains("--max-locks "), "{}", e.message());
    // Unlocking is never refused, and makes room.
    set(
        &mut c,
        s1,
        lock(f, 2, LockType::LockUnlock, 0, u64::MAX),
        false,
    )
    .await
    .unwrap();
    set(&mut c, s2, w(1, 40), false).await.unwrap();

    // Seen in the status and the metrics.
    let st = admin(&m).status(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!((st.locks_held, st.lock_waiters), (3, 0));
    let t = st.tuning.unwrap();
    assert_eq!((t.max_locks_per_session, t.max_locks), (2, 3));
    let metrics = http_get(m.http_addr.unwrap(), "/metrics").await;
    for want in [
        "alces_master_locks 3",
        "alces_master_lock_waiters 0",
        "alces_master_lock_cap_refusals_total{cap=\"session\"} 2",
        "alces_master_lock_cap_refusals_total{cap=\"total\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    m.stop().await.unwrap();
}
