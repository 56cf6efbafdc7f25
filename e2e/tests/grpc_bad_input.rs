//! Hostile gRPC requests straight at the daemons: each gets an error status, and
//! every daemon keeps serving.

use std::time::Duration;

use alces_e2e::{pattern, write_synced, Cluster, Proc};
use alces_proto::pb;
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::pb::master_client::MasterClient;
use tonic::Code;

fn errno_of(s: &tonic::Status) -> i32 {
    alces_proto::errno::of(s)
}

/// The file `/f` written before the scenarios, its first chunk and the
/// address of that chunk's first copy.
struct Target {
    info: pb::FileInfoReply,
    chunk: pb::ChunkDetail,
    cs_addr: String,
}

/// No secret at all: every daemon answers Unauthenticated.
async fn without_a_secret(c: &Cluster, t: &Target) {
    let (chunk, cs_addr) = (&t.chunk, t.cs_addr.clone());
    // No secret at all.
    let raw = alces_proto::net::endpoint(&c.master)
        .unwrap()
        .connect_lazy();
    let mut m = MasterClient::new(raw.clone());
    let e = m
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "master without secret: {e:?}"
    );
    let mut a = pb::admin_client::AdminClient::new(raw);
    assert_eq!(
        a.status(pb::Empty {}).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let raw_cs = alces_proto::net::endpoint(&cs_addr).unwrap().connect_lazy();
    let mut cs = ChunkserverClient::new(raw_cs);
    let e = cs
        .read(pb::ReadRequest {
            chunk_id: chunk.chunk_id,
            version: chunk.version,
            offset: 0,
            length: 10,
            access: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::Unauthenticated,
        "chunkserver without secret: {e:?}"
    );
}

/// A wrong secret is refused.
async fn with_a_wrong_secret(c: &Cluster) {
    // Wrong secret.
    let mut m2 = MasterClient::new(c.channel_with_secret(&c.master, "wrong-wrong-wrong"));
    let e = m2
        .register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

/// With the secret: a session, then garbage at the master.
async fn garbage_at_the_master(c: &Cluster, t: &Target) {
    let info = &t.info;
    // With the secret: a session, then garbage.
    let mut m = MasterClient::new(c.channel(&c.master))
        .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
    let s = m
        .register_session(pb::RegisterSessionRequest {
            client_name: "e2e-bad-input".into(),
            subdir: "/".into(),
            hostname: "e2e".into(),
            ..Default::default()
        })
        .await
        .expect("RegisterSession")
        .into_inner();
    let sid = s.session_id;
    let root = s.root_inode;
    let caller = Some(pb::Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: 1,
    });
    let lookup = |name: Vec<u8>| pb::EntryRequest {
        tag: None,
        session_id: sid,
        parent: root,
        name,
        caller: caller.clone(),
        negative_reply: false,
    };

    let e = m.lookup(lookup(vec![b'x'; 10 * 1024])).await.unwrap_err();
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG, "10 KiB name: {e:?}");
    let e = m.lookup(lookup(b"a\0b".to_vec())).await.unwrap_err();
    assert_eq!(errno_of(&e), libc::EINVAL, "NUL in name: {e:?}");
    let e = m.lookup(lookup(b"a/b".to_vec())).await.unwrap_err();
    assert_eq!(errno_of(&e), libc::EINVAL, "'/' in name: {e:?}");
    assert!(
        m.lookup(lookup(Vec::new())).await.is_err(),
        "empty name accepted"
    );
    let e = m
        .mkdir(pb::MkdirRequest {
            tag: None,
            session_id: sid,
            parent: root,
            name: vec![b'y'; 10 * 1024],
            mode: 0o755,
            umask: 0,
            caller: caller.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::ENAMETOOLONG);
    let e = m
        .mkdir(pb::MkdirRequest {
            tag: None,
            session_id: sid,
            parent: root,
            name: b"..".to_vec(),
            mode: 0o755,
            umask: 0,
            caller: caller.clone(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(errno_of(&e), libc::EINVAL | libc::EEXIST),
        "mkdir '..': {e:?}"
    );
    let e = m
        .get_attr(pb::InodeRequest {
            session_id: sid,
            inode: u64::MAX - 7,
            caller: caller.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT, "unknown inode: {e:?}");
    let e = m
        .lookup(pb::EntryRequest {
            tag: None,
            session_id: sid,
            parent: 987_654_321,
            name: b"x".to_vec(),
            caller: caller.clone(),
            negative_reply: false,
        })
        .await
        .unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    // A mutation in an unknown session (it would bypass read-only and subdir
    // restrictions) is refused.
    assert!(
        m.mkdir(pb::MkdirRequest {
            tag: None,
            session_id: sid ^ 0xdead_beef,
            parent: root,
            name: b"no-session".to_vec(),
            mode: 0o755,
            umask: 0,
            caller: caller.clone(),
        })
        .await
        .is_err(),
        "Mkdir in an unknown session accepted"
    );
    // Readdir with a huge limit is capped, not obeyed blindly.
    match m
        .readdir(pb::ReaddirRequest {
            session_id: sid,
            inode: root,
            after_name: vec![],
            limit: u32::MAX,
            plus: true,
            caller: None,
        })
        .await
    {
        Ok(r) => assert!(r.into_inner().entries.len() < 100_000),
        Err(e) => assert_ne!(e.code(), Code::Unknown, "readdir huge limit: {e:?}"),
    }
    // Chunk requests for nonsense.
    assert!(m
        .read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: u64::MAX,
            chunk_index: 0,
            caller: None,
        })
        .await
        .is_err());
    assert!(
        m.write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: root,
            chunk_index: 0,
            caller: None,
        })
        .await
        .is_err(),
        "WriteChunk on a directory accepted"
    );
    assert!(
        m.write_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: info.attr.unwrap().inode,
            chunk_index: u64::MAX,
            caller: None,
        })
        .await
        .is_err(),
        "WriteChunk at index u64::MAX accepted"
    );
    let e = m
        .set_attr(pb::SetAttrRequest {
            session_id: sid,
            inode: info.attr.unwrap().inode,
            valid: 8,
            size: u64::MAX,
            caller: caller.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(errno_of(&e), libc::EFBIG | libc::EINVAL),
        "size u64::MAX: {e:?}"
    );
}

/// With the secret: garbage at a chunkserver.
async fn garbage_at_a_chunkserver(c: &Cluster, t: &Target) {
    let (chunk, cs_addr) = (&t.chunk, t.cs_addr.clone());
    // Chunkserver with the secret.
    let mut cs = ChunkserverClient::new(c.channel(&cs_addr))
        .max_decoding_message_size(alces_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(alces_proto::MAX_MESSAGE_BYTES);
    let e = cs
        .read(pb::ReadRequest {
            chunk_id: chunk.chunk_id,
            version: chunk.version,
            offset: 0,
            length: u32::MAX,
            access: None,
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Unknown, "4 GiB read: {e:?}");
    assert!(
        cs.read(pb::ReadRequest {
            chunk_id: chunk.chunk_id,
            version: chunk.version,
            offset: u64::MAX - 10,
            length: 100,
            access: None,
        })
        .await
        .is_err(),
        "read at offset u64::MAX accepted"
    );
    assert!(
        cs.read(pb::ReadRequest {
            chunk_id: 0xFFFF_FFFF_FFFF,
            version: 1,
            offset: 0,
            length: 100,
            access: None,
        })
        .await
        .is_err(),
        "read of an unknown chunk accepted"
    );
    let e = cs
        .write(pb::WriteRequest {
            chunk_id: 0x00AB_CDEF_0123,
            expected_version: 0,
            version: 1,
            create: true,
            offset: 64 * 1024 * 1024,
            data: bytes_of(b"beyond"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Unknown, "write beyond 64 MiB: {e:?}");
    assert!(
        cs.write(pb::WriteRequest {
            chunk_id: 0x00AB_CDEF_0124,
            expected_version: 0,
            version: 1,
            create: true,
            offset: u64::MAX - 3,
            data: bytes_of(b"wrap"),
            ..Default::default()
        })
        .await
        .is_err(),
        "write at u64::MAX - 3 accepted"
    );
    assert!(
        cs.write(pb::WriteRequest {
            chunk_id: chunk.chunk_id,
            expected_version: chunk.version + 100,
            version: chunk.version + 101,
            create: false,
            offset: 0,
            data: bytes_of(b"stale"),
            ..Default::default()
        })
        .await
        .is_err(),
        "write with a wrong version accepted"
    );
    assert!(
        cs.truncate(pb::TruncateRequest {
            chunk_id: 0x00AB_CDEF_0125,
            expected_version: 0,
            version: 1,
            create: true,
            length: u64::MAX,
            ..Default::default()
        })
        .await
        .is_err(),
        "truncate to u64::MAX accepted"
    );
    // Chain pointing at garbage addresses.
    let _ = tokio::time::timeout(
        Duration::from_secs(20),
        cs.write(pb::WriteRequest {
            chunk_id: 0x00AB_CDEF_0126,
            expected_version: 0,
            version: 1,
            create: true,
            offset: 0,
            data: bytes_of(b"x"),
            chain: vec![pb::ChunkLocation {
                server_id: 1,
                address: "not an address".into(),
                label: String::new(),
            }],
            ..Default::default()
        }),
    )
    .await;
}

#[test]
fn grpc_bad_input() {
    let c = Cluster::start_default();
    write_synced(&c.path("f"), &pattern(41, 100_000)).unwrap();
    let info = c.file_info("/f").expect("FileInfo");
    let chunk = info.chunks[0].clone();
    let cs_addr = chunk.copies[0].address.clone();
    let t = Target {
        info: info.clone(),
        chunk,
        cs_addr,
    };

    c.block_on(async {
        without_a_secret(&c, &t).await;
        with_a_wrong_secret(&c).await;
        garbage_at_the_master(&c, &t).await;
        garbage_at_a_chunkserver(&c, &t).await;
    });

    // Every daemon is still alive and the filesystem still works.
    assert!(c.pid(Proc::Master).is_some(), "the master died");
    for i in 1..=3 {
        assert!(
            c.pid(Proc::Chunkserver(i)).is_some(),
            "chunkserver {i} died"
        );
    }
    assert!(c.pid(Proc::Mount).is_some(), "the mount died");
    c.status().expect("master still answers");
    assert!(std::fs::read(c.path("f")).unwrap() == pattern(41, 100_000));
    write_synced(&c.path("g"), b"still works").unwrap();
    assert_eq!(std::fs::read(c.path("g")).unwrap(), b"still works");
}

fn bytes_of(b: &[u8]) -> tonic::codegen::Bytes {
    tonic::codegen::Bytes::copy_from_slice(b)
}
