//! Starts a real master on 127.0.0.1:0 in-process and drives it through real
//! tonic clients, one scenario per test: authentication, sessions, the
//! namespace, bad input, chunk placement and bookkeeping, read-only and
//! subdirectory sessions, open files that outlive their unlink, metrics, and
//! restarts (snapshot and replay).

mod common;

use std::time::{Duration, Instant};

use alces_master::server::{start, Options, Running};
use alces_proto::auth::ClientAuth;
use alces_proto::errno;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{
    self, admin_client::AdminClient, chunk_command::Command, master_client::MasterClient, FileType,
};
use common::{
    caller, chan, chunk_master, errno_of, heartbeat, http_get, info, master, options, register_cs,
    session, started, MIB,
};
use tonic::Code;

/// A master with a session, directory `/dir` and an empty file `/dir/file`.
async fn with_a_file() -> (
    tempfile::TempDir,
    Running,
    MasterClient<AuthChannel>,
    u64,
    pb::Attr,
    pb::Attr,
) {
    let (tmp, m) = started().await;
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let dir = common::mkdir(&mut c, sid, 1, "dir").await;
    let file = common::file(&mut c, sid, dir.inode, "file").await;
    (tmp, m, c, sid, dir, file)
}

/// Calls without the cluster secret, or with another one, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_is_required() {
    let (_tmp, m) = started().await;
    // Authentication.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", m.grpc_addr))
        .unwrap()
        .connect_lazy();
    let err = MasterClient::new(plain)
        .get_attr(pb::InodeRequest {
            inode: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let wrong = channel(
        &m.grpc_addr.to_string(),
        &ClientAuth::new("wrong-secret").unwrap(),
    )
    .unwrap();
    let err = AdminClient::new(wrong)
        .status(pb::Empty {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    m.stop().await.unwrap();
}

/// A session registers, renews its lease; an unknown one is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_register_renew_and_unknown_ones_are_refused() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    // Sessions.
    let s = c
        .register_session(pb::RegisterSessionRequest {
            client_name: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(s.session_id, 0);
    assert_eq!(
        (s.root_inode, s.epoch, s.chunk_size, s.lease_secs),
        (1, 1, MIB, 30)
    );
    assert_eq!(s.cluster_id.len(), 32);
    let sid = s.session_id;
    c.renew_session(pb::SessionRef { session_id: sid })
        .await
        .unwrap();
    let lost = c
        .renew_session(pb::SessionRef { session_id: 4242 })
        .await
        .unwrap_err();
    assert!(alces_proto::errno::is_session_unknown(&lost), "{lost:?}");
    m.stop().await.unwrap();
}

/// Directories, files (exclusive or not), lookups, paged readdir, symlinks, fifos and xattrs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_entries_readdir_and_xattrs() {
    let (_tmp, m) = started().await;
    let mut c = master(&m);
    let sid = session(&mut c).await;
    // Namespace.
    let dir = c
        .mkdir(pb::MkdirRequest {
            tag: None,
            session_id: sid,
            parent: 1,
            name: b"dir".to_vec(),
            mode: 0o755,
            umask: 0o022,
            caller: caller(),
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(
        (dir.kind, dir.uid, dir.gid, dir.nlink, dir.goal),
        (FileType::Directory as i32, 1000, 100, 2, 2)
    );
    let file = c
        .mknod(pb::MknodRequest {
            session_id: sid,
            parent: dir.inode,
            name: b"file".to_vec(),
            kind: FileType::Regular as i32,
            mode: 0o644,
            caller: caller(),
            exclusive: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    let again = c
        .mknod(pb::MknodRequest {
            session_id: sid,
            parent: dir.inode,
            name: b"file".to_vec(),
            kind: FileType::Regular as i32,
            mode: 0o600,
            caller: caller(),
            exclusive: false,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(again.inode, file.inode);
    assert_eq!(
        errno_of(
            c.mknod(pb::MknodRequest {
                session_id: sid,
                parent: dir.inode,
                name: b"file".to_vec(),
                kind: FileType::Regular as i32,
                exclusive: true,
                ..Default::default()
            })
            .await
        ),
        libc::EEXIST
    );
    let looked = c
        .lookup(pb::EntryRequest {
            tag: None,
            session_id: sid,
            parent: dir.inode,
            name: b"file".to_vec(),
            caller: caller(),
            negative_reply: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(looked.attr.unwrap().inode, file.inode);
    let rd = c
        .readdir(pb::ReaddirRequest {
            session_id: sid,
            inode: 1,
            limit: u32::MAX,
            plus: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(rd.eof);
    assert_eq!(rd.entries.len(), 1);
    assert_eq!(rd.entries[0].name, b"dir");
    assert_eq!(rd.entries[0].attr.as_ref().unwrap().inode, dir.inode);
    c.symlink(pb::SymlinkRequest {
        tag: None,
        session_id: sid,
        parent: 1,
        name: b"ln".to_vec(),
        target: b"dir/file".to_vec(),
        caller: caller(),
    })
    .await
    .unwrap();
    for i in 0..5 {
        c.mknod(pb::MknodRequest {
            session_id: sid,
            parent: 1,
            name: format!("f{i}").into_bytes(),
            kind: FileType::Fifo as i32,
            mode: 0o644,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let page = c
        .readdir(pb::ReaddirRequest {
            session_id: sid,
            inode: 1,
            limit: 3,
            after_name: b"dir".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.entries
            .iter()
            .map(|e| e.name.clone())
            .collect::<Vec<_>>(),
        vec![b"f0".to_vec(), b"f1".to_vec(), b"f2".to_vec()]
    );
    assert!(!page.eof);
    c.set_xattr(pb::SetXattrRequest {
        tag: None,
        session_id: sid,
        inode: file.inode,
        name: b"user.x".to_vec(),
        value: b"v".to_vec(),
        flags: 0,
        caller: caller(),
    })
    .await
    .unwrap();
    let v = c
        .get_xattr(pb::XattrRequest {
            tag: None,
            session_id: sid,
            inode: file.inode,
            name: b"user.x".to_vec(),
            caller: caller(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.value, b"v");
    assert_eq!(
        errno_of(
            c.get_xattr(pb::XattrRequest {
                tag: None,
                session_id: sid,
                inode: file.inode,
                name: b"user.none".to_vec(),
                caller: caller()
            })
            .await
        ),
        libc::ENODATA
    );
    m.stop().await.unwrap();
}

/// Bad input of every kind is refused with the errno that says what was wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_errno() {
    let (_tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    // Bad input.
    assert_eq!(
        errno_of(
            c.get_attr(pb::InodeRequest {
                session_id: sid,
                inode: 987_654,
                caller: None
            })
            .await
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(
            c.mknod(pb::MknodRequest {
                session_id: sid,
                parent: 1,
                name: b"bad".to_vec(),
                kind: 99,
                ..Default::default()
            })
            .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            c.mknod(pb::MknodRequest {
                session_id: sid,
                parent: 1,
                name: b"d".to_vec(),
                kind: FileType::Directory as i32,
                ..Default::default()
            })
            .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            c.mkdir(pb::MkdirRequest {
                session_id: sid,
                parent: 1,
                name: vec![b'n'; 10_000],
                ..Default::default()
            })
            .await
        ),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno_of(
            c.rename(pb::RenameRequest {
                tag: None,
                session_id: sid,
                parent: 1,
                name: b"dir".to_vec(),
                new_parent: 1,
                new_name: b"x".to_vec(),
                flags: 77,
                caller: None
            })
            .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            c.set_attr(pb::SetAttrRequest {
                session_id: sid,
                inode: 1,
                valid: u32::MAX,
                ..Default::default()
            })
            .await
        ),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(
            c.read_chunk(pb::ChunkRequest {
                session_id: sid,
                inode: 1,
                chunk_index: 0,
                caller: None,
            })
            .await
        ),
        libc::EISDIR
    );
    assert_eq!(
        errno_of(
            c.write_chunk(pb::ChunkRequest {
                session_id: sid,
                inode: file.inode,
                chunk_index: u64::MAX,
                caller: None,
            })
            .await
        ),
        libc::EFBIG
    );
    // A request whose bytes are not the message the method expects.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Garbage {
        #[prost(string, tag = "2")]
        inode: String,
        #[prost(bytes = "vec", tag = "3")]
        blob: Vec<u8>,
    }
    let mut raw = tonic::client::Grpc::new(chan(&m));
    raw.ready().await.unwrap();
    let r: Result<tonic::Response<pb::AttrReply>, _> = raw
        .unary(
            tonic::Request::new(Garbage {
                inode: "not a number".into(),
                blob: vec![0xff; 100],
            }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/alces.v1.Master/GetAttr"),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_ne!(r.unwrap_err().code(), Code::Ok);
    m.stop().await.unwrap();
}

/// Placement across failure domains, write sessions and versions, reads, status and file info, stale copies deleted and under-goal chunks replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_placed_versioned_and_replicated() {
    let (_tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    // Chunks: nothing to place them on yet.
    assert_eq!(
        errno_of(
            c.write_chunk(pb::ChunkRequest {
                session_id: sid,
                inode: file.inode,
                chunk_index: 0,
                caller: None,
            })
            .await
        ),
        libc::ENOSPC
    );
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    register_cs(&mut cm, 2, "b", 50 << 30, vec![]).await;
    register_cs(&mut cm, 3, "a", 80 << 30, vec![info(777, 1)]).await;
    let e = cm
        .register_chunkserver(pb::RegisterChunkserverRequest {
            server_id: 0,
            address: "x:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(errno::of(&e), libc::EINVAL);
    let e = cm
        .register_chunkserver(pb::RegisterChunkserverRequest {
            server_id: 9,
            address: "no-port".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(errno::of(&e), libc::EINVAL);
    // An unknown chunk is deleted.
    let hb = heartbeat(&mut cm, 3, vec![]).await;
    assert!(hb
        .commands
        .iter()
        .any(|c| matches!(&c.command, Some(Command::Delete(d)) if d.chunk_id == 777)));
    assert!(heartbeat(&mut cm, 99, vec![]).await.reregister);

    let w = c
        .write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w.version, w.old_version), (1, 0));
    // Goal 2, most free space first, spread across labels.
    assert_eq!(
        w.chain.iter().map(|l| l.server_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    let chunk = w.chunk_id;
    heartbeat(&mut cm, 1, vec![info(chunk, 1)]).await;
    heartbeat(&mut cm, 2, vec![info(chunk, 1)]).await;
    let a = c
        .write_chunk_end(pb::WriteChunkEndRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            chunk_id: chunk,
            file_size: 100,
            failed_servers: vec![],
            modified: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(a.size, 100);
    let rc = c
        .read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rc.chunk_id, rc.version, rc.file_size, rc.locations.len()),
        (chunk, 1, 100, 2)
    );
    // Opening for reading brings chunk 0 along; opening write-only does not.
    let open = |flags: i32| {
        let mut c = c.clone();
        async move {
            c.open(pb::OpenRequest {
                session_id: sid,
                inode: file.inode,
                flags: flags as u32,
                caller: None,
                reopen: false,
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    assert_eq!(open(libc::O_RDONLY).await.first_chunk.as_ref(), Some(&rc));
    assert_eq!(open(libc::O_RDWR).await.first_chunk.as_ref(), Some(&rc));
    assert_eq!(open(libc::O_WRONLY).await.first_chunk, None);
    for _ in 0..3 {
        c.release(pb::InodeRequest {
            session_id: sid,
            inode: file.inode,
            caller: None,
        })
        .await
        .unwrap();
    }
    let hole = c
        .read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 5,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hole.chunk_id, 0);

    let mut admin = AdminClient::new(chan(&m));
    let st = admin.status(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(
        (
            st.chunks,
            st.chunkservers.len(),
            st.sessions,
            st.role.as_str()
        ),
        (1, 3, 1, "master")
    );
    assert_eq!(st.chunk_counts.unwrap().at_goal, 1);
    assert_eq!(st.free_bytes, 230 << 30);
    let fi = admin
        .file_info(pb::FileInfoRequest {
            path: "/dir/file".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fi.chunks.len(), 1);
    assert_eq!(fi.chunks[0].copies.len(), 2);
    assert_eq!(
        errno::of(
            &admin
                .file_info(pb::FileInfoRequest {
                    path: "/dir/none".into()
                })
                .await
                .unwrap_err()
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno::of(
            &admin
                .file_info(pb::FileInfoRequest { path: "dir".into() })
                .await
                .unwrap_err()
        ),
        libc::EINVAL
    );
    let sf = c
        .statfs(pb::InodeRequest {
            session_id: sid,
            inode: 1,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sf.free_bytes, 230 << 30);

    // A new write session moves the version on; a server re-registering with the
    // old version holds a stale copy and is told to delete it.
    let w2 = c
        .write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((w2.chunk_id, w2.version, w2.old_version), (chunk, 2, 1));
    c.write_chunk_end(pb::WriteChunkEndRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        chunk_id: chunk,
        file_size: 100,
        failed_servers: vec![],
        modified: true,
        ..Default::default()
    })
    .await
    .unwrap();
    register_cs(&mut cm, 2, "b", 50 << 30, vec![info(chunk, 1)]).await;
    let hb = heartbeat(&mut cm, 2, vec![]).await;
    assert!(hb.commands.iter().any(|c| matches!(&c.command, Some(Command::Delete(d)) if d.chunk_id == chunk && d.version == 1)), "{hb:?}");
    // The chunk is now under goal: the replication loop asks server 2 or 3 to copy it from server 1.
    let deadline = Instant::now() + Duration::from_secs(15);
    let repl = loop {
        let mut found = None;
        for id in [2, 3] {
            for cmd in heartbeat(&mut cm, id, vec![]).await.commands {
                if let Some(Command::Replicate(r)) = cmd.command {
                    found = Some((id, r));
                }
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "no replication was planned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(repl.1.chunk_id, chunk);
    assert_eq!(repl.1.version, 2);
    assert_eq!(
        repl.1
            .sources
            .iter()
            .map(|s| s.server_id)
            .collect::<Vec<_>>(),
        vec![1]
    );
    heartbeat(&mut cm, repl.0, vec![info(chunk, 2)]).await;
    let st = admin.status(pb::Empty {}).await.unwrap().into_inner();
    assert_eq!(st.chunk_counts.unwrap().at_goal, 1);
    m.stop().await.unwrap();
}

/// Read-only sessions are refused mutations; a session can be rooted in a subdirectory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_and_subdirectory_sessions() {
    let (_tmp, m, mut c, _sid, dir, file) = with_a_file().await;
    // Read-only and subdirectory sessions.
    let ro = c
        .register_session(pb::RegisterSessionRequest {
            read_only: true,
            subdir: "/dir".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ro.root_inode, dir.inode);
    assert!(ro.read_only);
    let e = c
        .mkdir(pb::MkdirRequest {
            session_id: ro.session_id,
            parent: dir.inode,
            name: b"no".to_vec(),
            mode: 0o755,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(errno::of(&e), libc::EROFS);
    assert_eq!(
        errno_of(
            c.open(pb::OpenRequest {
                session_id: ro.session_id,
                inode: file.inode,
                flags: libc::O_RDWR as u32,
                caller: None,
                reopen: false,
            })
            .await
        ),
        libc::EROFS
    );
    c.open(pb::OpenRequest {
        session_id: ro.session_id,
        inode: file.inode,
        flags: libc::O_RDONLY as u32,
        caller: None,
        reopen: false,
    })
    .await
    .unwrap();
    assert_eq!(
        errno_of(
            c.register_session(pb::RegisterSessionRequest {
                subdir: "/nope".into(),
                ..Default::default()
            })
            .await
        ),
        libc::ENOENT
    );
    assert_eq!(
        errno_of(
            c.register_session(pb::RegisterSessionRequest {
                subdir: "/dir/file".into(),
                ..Default::default()
            })
            .await
        ),
        libc::ENOTDIR
    );
    c.release(pb::InodeRequest {
        session_id: ro.session_id,
        inode: file.inode,
        caller: None,
    })
    .await
    .unwrap();
    c.close_session(pb::SessionRef {
        session_id: ro.session_id,
    })
    .await
    .unwrap();
    m.stop().await.unwrap();
}

/// An unlinked file stays while open and its chunk is deleted once released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_file_outlives_its_unlink() {
    let (_tmp, m, mut c, sid, dir, file) = with_a_file().await;
    c.symlink(pb::SymlinkRequest {
        tag: None,
        session_id: sid,
        parent: 1,
        name: b"ln".to_vec(),
        target: b"dir/file".to_vec(),
        caller: caller(),
    })
    .await
    .unwrap();
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    register_cs(&mut cm, 2, "b", 50 << 30, vec![]).await;
    let chunk = c
        .write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner()
        .chunk_id;
    heartbeat(&mut cm, 1, vec![info(chunk, 1)]).await;
    heartbeat(&mut cm, 2, vec![info(chunk, 1)]).await;
    c.write_chunk_end(pb::WriteChunkEndRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        chunk_id: chunk,
        file_size: 100,
        failed_servers: vec![],
        modified: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut admin = common::admin(&m);
    // An open file survives its unlink until released; its chunk is then deleted
    // (with the trash disabled: trash time 0).
    admin
        .set_trash_time(pb::SetTrashTimeRequest {
            path: "/".into(),
            seconds: 0,
        })
        .await
        .unwrap();
    c.open(pb::OpenRequest {
        session_id: sid,
        inode: file.inode,
        flags: 0,
        caller: None,
        reopen: false,
    })
    .await
    .unwrap();
    c.unlink(pb::EntryRequest {
        tag: None,
        session_id: sid,
        parent: dir.inode,
        name: b"file".to_vec(),
        caller: None,
        negative_reply: false,
    })
    .await
    .unwrap();
    let orphan = c
        .get_attr(pb::InodeRequest {
            session_id: sid,
            inode: file.inode,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner()
        .attr
        .unwrap();
    assert_eq!(orphan.nlink, 0);
    c.release(pb::InodeRequest {
        session_id: sid,
        inode: file.inode,
        caller: None,
    })
    .await
    .unwrap();
    assert_eq!(
        errno_of(
            c.get_attr(pb::InodeRequest {
                session_id: sid,
                inode: file.inode,
                caller: None
            })
            .await
        ),
        libc::ENOENT
    );
    let hb = heartbeat(&mut cm, 1, vec![]).await;
    assert!(hb
        .commands
        .iter()
        .any(|c| matches!(&c.command, Some(Command::Delete(d)) if d.chunk_id == chunk)));
    assert_eq!(
        errno_of(
            c.rmdir(pb::EntryRequest {
                tag: None,
                session_id: sid,
                parent: 1,
                name: b"ln".to_vec(),
                caller: None,
                negative_reply: false,
            })
            .await
        ),
        libc::ENOTDIR
    );
    m.stop().await.unwrap();
}

/// `/metrics` counts the calls, `/readyz` answers once ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(Options {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..options(tmp.path())
    })
    .await
    .unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;
    common::mkdir(&mut c, sid, 1, "dir").await;
    // Metrics and health.
    let http = m.http_addr.unwrap();
    let metrics = http_get(http, "/metrics").await;
    assert!(
        metrics.contains("alces_master_rpc_total{rpc=\"Mkdir\",result=\"ok\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("alces_master_changelog_fsync_seconds_bucket"));
    assert!(http_get(http, "/readyz").await.starts_with("HTTP/1.1 200"));
    m.stop().await.unwrap();
}

/// A graceful stop (final snapshot) and a stop without one (replay) both restart with the same metadata; two masters cannot share a data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_keep_the_metadata() {
    let (tmp, m, mut c, sid, dir, _file) = with_a_file().await;
    c.symlink(pb::SymlinkRequest {
        tag: None,
        session_id: sid,
        parent: 1,
        name: b"ln".to_vec(),
        target: b"dir/file".to_vec(),
        caller: caller(),
    })
    .await
    .unwrap();
    // Restart after a graceful stop (final snapshot), then after a stop without
    // a snapshot (replay): the metadata is the same.
    let live = m.core.inner.lock().state.clone();
    m.stop().await.unwrap();
    assert!(tmp
        .path()
        .join(format!("snapshot.{:020}.alces", live.version))
        .exists());
    let m = start(options(tmp.path())).await.unwrap();
    assert_eq!(m.core.inner.lock().state, live);
    let mut c = master(&m);
    let s = c
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    c.mkdir(pb::MkdirRequest {
        session_id: s.session_id,
        parent: 1,
        name: b"after".to_vec(),
        mode: 0o700,
        ..Default::default()
    })
    .await
    .unwrap();
    c.rename(pb::RenameRequest {
        tag: None,
        session_id: s.session_id,
        parent: 1,
        name: b"after".to_vec(),
        new_parent: dir.inode,
        new_name: b"moved".to_vec(),
        flags: 0,
        caller: None,
    })
    .await
    .unwrap();
    let live = m.core.inner.lock().state.clone();
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    assert_eq!(m.core.inner.lock().state, live);
    // Two masters cannot share a data directory.
    let e = start(options(tmp.path())).await.err().unwrap().to_string();
    assert!(e.contains("in use by another master"), "{e}");
    m.stop().await.unwrap();
}

#[tokio::test]
async fn a_write_after_a_restart_waits_for_the_chunkservers_with_eagain() {
    let (tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    register_cs(&mut cm, 2, "b", 100 << 30, vec![]).await;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let w = c.write_chunk(req.clone()).await.unwrap().into_inner();
    let chunk = w.chunk_id;
    heartbeat(&mut cm, 1, vec![info(chunk, 1)]).await;
    heartbeat(&mut cm, 2, vec![info(chunk, 1)]).await;
    c.write_chunk_end(pb::WriteChunkEndRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        chunk_id: chunk,
        file_size: 100,
        modified: true,
        ..Default::default()
    })
    .await
    .unwrap();
    m.stop().await.unwrap();
    // Restarted (or a promoted metalogger): the chunk is known, its chunkservers
    // have not registered yet. A write session is "try again", not an I/O error.
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = c
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let e = c.write_chunk(req.clone()).await.unwrap_err();
    assert_eq!(errno::of(&e), libc::EAGAIN, "{e:?}");
    assert!(e.message().contains("no valid copy"), "{e:?}");
    // Once a holder registers, the same request opens a session on it.
    register_cs(
        &mut chunk_master(&m),
        1,
        "a",
        100 << 30,
        vec![info(chunk, 1)],
    )
    .await;
    let w = c.write_chunk(req.clone()).await.unwrap().into_inner();
    assert_eq!((w.chunk_id, w.old_version, w.version), (chunk, 1, 2));
    assert_eq!(
        w.chain.iter().map(|l| l.server_id).collect::<Vec<_>>(),
        vec![1]
    );
    m.stop().await.unwrap();
}

/// A new chunk whose creation was logged and made durable, but whose reply was
/// lost when the master died, never reaches a chunkserver: after the restart
/// the file still names it and no copy will ever be reported. A write session
/// on it creates it again (same id, next version, created on a new chain)
/// instead of waiting forever; a claim from a session before that is refused
/// with EIO (its bytes could only be in a copy the master never saw).
#[tokio::test]
async fn a_new_chunk_whose_reply_was_lost_in_a_crash_is_created_again() {
    let (tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    register_cs(&mut cm, 2, "b", 100 << 30, vec![]).await;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let w = c.write_chunk(req).await.unwrap().into_inner();
    let chunk = w.chunk_id;
    assert_eq!((w.old_version, w.version), (0, 1));
    // The master dies before its reply reaches anyone: no chunkserver ever
    // creates the chunk, no snapshot is written.
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    register_cs(&mut cm, 2, "b", 100 << 30, vec![]).await;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let w = c.write_chunk(req).await.unwrap().into_inner();
    assert_eq!(
        (w.chunk_id, w.old_version, w.version),
        (chunk, 0, 2),
        "the chunk is created again at the next version"
    );
    let mut chain: Vec<u64> = w.chain.iter().map(|l| l.server_id).collect();
    chain.sort_unstable();
    assert_eq!(chain, vec![1, 2]);
    heartbeat(&mut cm, 1, vec![info(chunk, 2)]).await;
    heartbeat(&mut cm, 2, vec![info(chunk, 2)]).await;
    // A session that wrote into a version-1 copy the master never saw claims
    // its bytes: the write is lost, and it is told so.
    let stale = c
        .write_chunk_end(pb::WriteChunkEndRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            chunk_id: chunk,
            version: 1,
            file_size: 100,
            modified: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(errno::of(&stale), libc::EIO, "{stale:?}");
    assert!(stale.message().contains("the write is lost"), "{stale:?}");
    // The session on version 2 records its length.
    let end = c
        .write_chunk_end(pb::WriteChunkEndRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            chunk_id: chunk,
            version: 2,
            file_size: 100,
            modified: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(end.attr.unwrap().size, 100);
    // Replayed from the changelog, the chunk keeps version 2 and its copies.
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![info(chunk, 2)]).await;
    let mut c = master(&m);
    let sid = session(&mut c).await;
    let r = c
        .read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.chunk_id, r.version, r.file_size), (chunk, 2, 100));
    assert_eq!(r.locations.len(), 1);
    m.stop().await.unwrap();
}

/// A chunk inside its file's size is never created again: its recorded bytes
/// wait for a chunkserver that holds them (EAGAIN), they are not replaced by
/// zeros.
#[tokio::test]
async fn a_chunk_inside_the_file_without_copies_is_not_created_again() {
    let (tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let w = c.write_chunk(req).await.unwrap().into_inner();
    c.write_chunk_end(pb::WriteChunkEndRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        chunk_id: w.chunk_id,
        version: 1,
        file_size: 100,
        modified: true,
        ..Default::default()
    })
    .await
    .unwrap();
    m.stop_without_snapshot().await;
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = session(&mut c).await;
    register_cs(&mut chunk_master(&m), 1, "a", 100 << 30, vec![]).await;
    let e = c
        .write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: file.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .unwrap_err();
    assert_eq!(errno::of(&e), libc::EAGAIN, "{e:?}");
    m.stop().await.unwrap();
}

/// A file written again and again (each write session moves the chunk's
/// version on) still gets its missing copy back: a new write session waits,
/// with EAGAIN, while a copy of the chunk is being made, and then writes on
/// every copy.
#[tokio::test]
async fn a_write_waits_for_a_replication_in_flight() {
    let (_tmp, m, mut c, sid, _dir, file) = with_a_file().await;
    let mut cm = chunk_master(&m);
    register_cs(&mut cm, 1, "a", 100 << 30, vec![]).await;
    let req = pb::ChunkRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        caller: None,
    };
    let w = c.write_chunk(req.clone()).await.unwrap().into_inner();
    let chunk = w.chunk_id;
    heartbeat(&mut cm, 1, vec![info(chunk, 1)]).await;
    c.write_chunk_end(pb::WriteChunkEndRequest {
        session_id: sid,
        inode: file.inode,
        chunk_index: 0,
        chunk_id: chunk,
        file_size: 100,
        modified: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // A second server: the chunk (goal 2) is copied to it.
    register_cs(&mut cm, 2, "b", 100 << 30, vec![]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let cmds = heartbeat(&mut cm, 2, vec![]).await.commands;
        if cmds
            .iter()
            .any(|c| matches!(&c.command, Some(Command::Replicate(r)) if r.chunk_id == chunk && r.version == 1))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no replication was planned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write now would make the copy stale before it lands: try again.
    let e = c.write_chunk(req.clone()).await.unwrap_err();
    assert_eq!(errno::of(&e), libc::EAGAIN, "{e:?}");
    assert!(
        e.message().contains("being copied to chunkserver 2"),
        "{e:?}"
    );
    // The copy lands; the write goes ahead on both copies.
    heartbeat(&mut cm, 2, vec![info(chunk, 1)]).await;
    let w = c.write_chunk(req.clone()).await.unwrap().into_inner();
    assert_eq!((w.chunk_id, w.old_version, w.version), (chunk, 1, 2));
    let mut chain: Vec<u64> = w.chain.iter().map(|l| l.server_id).collect();
    chain.sort_unstable();
    assert_eq!(chain, vec![1, 2]);
    m.stop().await.unwrap();
}

#[tokio::test]
async fn a_peer_that_saw_a_higher_epoch_fences_the_master() {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    let mut c = master(&m);
    let sid = c
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let mkdir = |name: &str| pb::MkdirRequest {
        tag: None,
        session_id: sid,
        parent: 1,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
        caller: caller(),
    };
    c.mkdir(mkdir("before")).await.unwrap();
    let e = c
        .register_session(pb::RegisterSessionRequest {
            seen_epoch: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Deposed: no more mutations, retried by clients elsewhere (no errno).
    let e = c.mkdir(mkdir("after")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let fence = m.core.hub.fence();
    assert!(fence.fenced);
    assert_eq!(fence.newer_epoch, 9);
    let st = AdminClient::new(chan(&m))
        .status(pb::Empty {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.conditions.iter().any(|c| c.starts_with("Fenced")),
        "{:?}",
        st.conditions
    );
    m.stop_without_snapshot().await;
}
