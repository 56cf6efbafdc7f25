//! The `Leases` stream against an in-process master: bad openings are
//! refused with what was wrong, a lookup is leased only while the session's
//! stream is open, another session's change sends a break and is answered
//! only once the break was acknowledged, and the author of a change keeps
//! its own lease. A listing with attributes (`plus`) is leased like the
//! lookups it replaces, page by page.

mod common;

use std::time::Duration;

use alces_proto::pb::{self, lease_down, lease_up};
use common::{caller, file, master, mkdir, session, started};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn up(msg: lease_up::Msg) -> pb::LeaseUp {
    pb::LeaseUp { msg: Some(msg) }
}

fn lookup(sid: u64, name: &str) -> pb::EntryRequest {
    pb::EntryRequest {
        session_id: sid,
        parent: 1,
        name: name.as_bytes().to_vec(),
        caller: caller(),
        tag: None,
        negative_reply: true,
    }
}

/// Opens a lease stream with `first` as its first message; the status of the
/// call or of its first answer.
async fn open_with(
    c: &mut pb::master_client::MasterClient<alces_proto::net::AuthChannel>,
    first: Option<pb::LeaseUp>,
) -> tonic::Status {
    let (tx, rx) = mpsc::channel(4);
    if let Some(f) = first {
        tx.send(f).await.unwrap();
    }
    drop(tx);
    match c.leases(ReceiverStream::new(rx)).await {
        Err(s) => s,
        Ok(r) => {
            let mut s = r.into_inner();
            loop {
                match s.message().await {
                    Err(e) => return e,
                    Ok(None) => return tonic::Status::ok("ended"),
                    Ok(Some(_)) => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn bad_openings_are_refused_with_what_was_wrong() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let s = open_with(&mut c, None).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("hello"), "{}", s.message());
    let s = open_with(&mut c, Some(up(lease_up::Msg::Renew(1)))).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let s = open_with(&mut c, Some(pb::LeaseUp { msg: None })).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let unknown = up(lease_up::Msg::Hello(pb::SessionRef {
        session_id: 987_654,
    }));
    let s = open_with(&mut c, Some(unknown)).await;
    assert_ne!(
        s.code(),
        tonic::Code::Ok,
        "an unknown session gets no stream"
    );
    // A second hello ends the stream.
    let sid = session(&mut c).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(up(lease_up::Msg::Hello(pb::SessionRef { session_id: sid })))
        .await
        .unwrap();
    tx.send(up(lease_up::Msg::Hello(pb::SessionRef { session_id: sid })))
        .await
        .unwrap();
    let mut s = c
        .leases(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(matches!(first.msg, Some(lease_down::Msg::LeaseMs(ms)) if ms > 0));
    let e = s.message().await.expect_err("a second hello is refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn another_sessions_change_waits_for_the_break_to_be_acknowledged() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let a = session(&mut c).await;
    let b = session(&mut c).await;
    file(&mut c, b, 1, "f").await;

    // Without a stream nothing is leased; a missing name is an answer.
    let r = c.lookup(lookup(a, "f")).await.unwrap().into_inner();
    assert!(!r.leased);
    let r = c.lookup(lookup(a, "nope")).await.unwrap().into_inner();
    assert!(r.attr.is_none() && !r.leased);

    let (tx, mut down) = stream_of(&mut c, a).await;
    let r = c.lookup(lookup(a, "f")).await.unwrap().into_inner();
    assert!(r.leased, "a lookup with the stream open is leased");
    let ino = r.attr.unwrap().inode;

    // B changes f: the answer waits until A acknowledged the break (A's
    // leases were just renewed, so they do not lapse meanwhile).
    renew(&tx, &mut down, 1).await;
    let mut cb = master(&m);
    let chmod = tokio::spawn(async move {
        cb.set_attr(pb::SetAttrRequest {
            session_id: b,
            inode: ino,
            valid: pb::SetAttrField::SetAttrMode as u32,
            mode: 0o600,
            caller: caller(),
            ..Default::default()
        })
        .await
    });
    let brk = next_break(&mut down).await;
    assert!(brk.inodes.contains(&ino), "{brk:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !chmod.is_finished(),
        "the change was answered before the break was acknowledged"
    );
    tx.send(up(lease_up::Msg::Ack(brk.seq))).await.unwrap();
    let r = chmod.await.unwrap().expect("chmod").into_inner();
    assert_eq!(r.attr.unwrap().mode & 0o7777, 0o600);

    // A's own change keeps its lease: no break comes for it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    renew(&tx, &mut down, 2).await;
    let r = c.lookup(lookup(a, "f")).await.unwrap().into_inner();
    assert!(r.leased, "leased again once the inode is no longer hot");
    c.set_attr(pb::SetAttrRequest {
        session_id: a,
        inode: ino,
        valid: pb::SetAttrField::SetAttrMode as u32,
        mode: 0o644,
        caller: caller(),
        ..Default::default()
    })
    .await
    .unwrap();
    renew(&tx, &mut down, 3).await;
}

fn list(sid: u64, dir: u64, after: &str, limit: u32, plus: bool) -> pb::ReaddirRequest {
    pb::ReaddirRequest {
        session_id: sid,
        inode: dir,
        after_name: after.as_bytes().to_vec(),
        limit,
        plus,
        caller: caller(),
    }
}

#[tokio::test]
async fn a_plus_listing_is_leased_and_a_change_in_it_waits_for_the_break() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let a = session(&mut c).await;
    let b = session(&mut c).await;
    let d = mkdir(&mut c, b, 1, "d").await.inode;
    let f0 = file(&mut c, b, d, "f0").await;
    let f1 = file(&mut c, b, d, "f1").await;

    // Without a stream: attributes, no lease.
    let r = c
        .readdir(list(a, d, "", 0, true))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.leased && r.entries.iter().all(|e| !e.leased), "{r:?}");
    assert_eq!(r.entries[0].attr.as_ref().map(|x| x.inode), Some(f0.inode));

    let (tx, mut down) = stream_of(&mut c, a).await;
    // Names only: nothing to cache, nothing leased.
    let r = c
        .readdir(list(a, d, "", 0, false))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.leased && r.entries.iter().all(|e| !e.leased && e.attr.is_none()));
    // With attributes: the directory and each entry, page by page.
    let r = c
        .readdir(list(a, d, "", 1, true))
        .await
        .unwrap()
        .into_inner();
    assert!(r.leased && !r.eof, "{r:?}");
    assert_eq!(r.entries.len(), 1);
    assert!(r.entries[0].leased);
    let r = c
        .readdir(list(a, d, "f0", 1, true))
        .await
        .unwrap()
        .into_inner();
    assert!(r.leased && r.eof && r.entries[0].leased, "{r:?}");
    assert_eq!(r.entries[0].attr.as_ref().unwrap().inode, f1.inode);
    // A listing of something that is not a directory is refused as before.
    let e = c
        .readdir(list(a, f0.inode, "", 0, true))
        .await
        .expect_err("listing a file");
    assert_ne!(e.code(), tonic::Code::Ok);

    // B removes f1: the answer waits for A's acknowledgement of a break
    // naming the directory.
    renew(&tx, &mut down, 1).await;
    let mut cb = master(&m);
    let unlink = tokio::spawn(async move {
        cb.unlink(pb::EntryRequest {
            session_id: b,
            parent: d,
            name: b"f1".to_vec(),
            caller: caller(),
            tag: None,
            negative_reply: false,
        })
        .await
    });
    let brk = next_break(&mut down).await;
    assert!(brk.inodes.contains(&d), "{brk:?}");
    assert!(
        !unlink.is_finished(),
        "answered before the break was acknowledged"
    );
    tx.send(up(lease_up::Msg::Ack(brk.seq))).await.unwrap();
    unlink.await.unwrap().expect("unlink");
    // The directory was just broken: listed, but not leased for a moment.
    let r = c
        .readdir(list(a, d, "", 0, true))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.leased && r.entries.iter().all(|e| !e.leased), "{r:?}");
    assert_eq!(r.entries.len(), 1);
}

/// Opens session `sid`'s lease stream: where to send, what comes back (its
/// first message, the lease length, already read).
async fn stream_of(
    c: &mut pb::master_client::MasterClient<alces_proto::net::AuthChannel>,
    sid: u64,
) -> (mpsc::Sender<pb::LeaseUp>, tonic::Streaming<pb::LeaseDown>) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(up(lease_up::Msg::Hello(pb::SessionRef { session_id: sid })))
        .await
        .unwrap();
    let mut down = c
        .leases(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    down.message().await.unwrap().unwrap();
    (tx, down)
}

/// The next message on the stream, which must be a break.
async fn next_break(down: &mut tonic::Streaming<pb::LeaseDown>) -> pb::LeaseBreak {
    match down.message().await.unwrap().unwrap().msg {
        Some(lease_down::Msg::Break(b)) => b,
        other => panic!("expected a break, got {other:?}"),
    }
}

/// Renews the leases on the stream; the next message must be the answer.
async fn renew(tx: &mpsc::Sender<pb::LeaseUp>, down: &mut tonic::Streaming<pb::LeaseDown>, n: u64) {
    tx.send(up(lease_up::Msg::Renew(n))).await.unwrap();
    match down.message().await.unwrap().unwrap().msg {
        Some(lease_down::Msg::Renewed(m)) if m == n => {}
        other => panic!("expected the answer to renewal {n}, got {other:?}"),
    }
}
