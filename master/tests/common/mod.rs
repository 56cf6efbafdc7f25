//! Setup the master's integration tests share: a real master started
//! in-process on 127.0.0.1:0 over a temporary data directory, authenticated
//! tonic clients to it, and stand-in chunkservers (registrations and
//! heartbeats over the real ChunkMaster service).

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use alces_master::server::{start, Options, Running};
use alces_proto::auth::ClientAuth;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{
    self, admin_client::AdminClient, chunk_master_client::ChunkMasterClient,
    master_client::MasterClient, FileType,
};

/// The cluster secret of the test masters.
pub const SECRET: &str = "test-secret-0123456789";
/// One MiB: the chunk size of the test masters.
pub const MIB: u64 = 1 << 20;

/// Options of a test master over `dir`: 1 MiB chunks, goal 2, no HTTP
/// endpoint, no sync metaloggers, timeouts no test reaches by accident.
/// Tests change fields with `Options { .., ..options(dir) }`.
pub fn options(dir: &std::path::Path) -> Options {
    Options {
        replication: alces_master::runtime::chunkmap::Policy::default(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: None,
        data_dir: dir.to_path_buf(),
        secret: Arc::from(SECRET),
        tls: Default::default(),
        chunk_size: MIB,
        default_goal: 2,
        session_timeout: Duration::from_secs(30),
        chunkserver_timeout: Duration::from_secs(60),
        chunkserver_disconnect: Duration::from_secs(2),
        snapshot_interval: Duration::from_secs(3600),
        sync_metaloggers: 0,
        sync_timeout: Duration::from_secs(5),
        lock_caps: Default::default(),
    }
}

/// A master started over a new temporary directory (kept with it).
pub async fn started() -> (tempfile::TempDir, Running) {
    let tmp = tempfile::tempdir().unwrap();
    let m = start(options(tmp.path())).await.unwrap();
    (tmp, m)
}

/// An authenticated channel to master `m`.
pub fn chan(m: &Running) -> AuthChannel {
    channel(&m.grpc_addr.to_string(), &ClientAuth::new(SECRET).unwrap()).unwrap()
}

/// A client of the Master service of `m`.
pub fn master(m: &Running) -> MasterClient<AuthChannel> {
    MasterClient::new(chan(m))
}

/// A client of the Admin service of `m`.
pub fn admin(m: &Running) -> AdminClient<AuthChannel> {
    AdminClient::new(chan(m))
}

/// A client of the ChunkMaster service of `m`.
pub fn chunk_master(m: &Running) -> ChunkMasterClient<AuthChannel> {
    ChunkMasterClient::new(chan(m))
}

/// A new read-write session of `c`; returns its id.
pub async fn session(c: &mut MasterClient<AuthChannel>) -> u64 {
    c.register_session(pb::RegisterSessionRequest {
        client_name: "t".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

/// The caller of the test requests (uid 1000, gid 100).
pub fn caller() -> Option<pb::Caller> {
    Some(pb::Caller {
        uid: 1000,
        gid: 100,
        groups: vec![],
        pid: 1,
    })
}

/// Directory `name` in `parent`, made by session `sid`.
pub async fn mkdir(
    c: &mut MasterClient<AuthChannel>,
    sid: u64,
    parent: u64,
    name: &str,
) -> pb::Attr {
    c.mkdir(pb::MkdirRequest {
        tag: None,
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
        mode: 0o755,
        umask: 0o022,
        caller: caller(),
    })
    .await
    .unwrap()
    .into_inner()
    .attr
    .unwrap()
}

/// Regular file `name` in `parent`, made by session `sid`.
pub async fn file(
    c: &mut MasterClient<AuthChannel>,
    sid: u64,
    parent: u64,
    name: &str,
) -> pb::Attr {
    c.mknod(pb::MknodRequest {
        session_id: sid,
        parent,
        name: name.as_bytes().to_vec(),
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
    .unwrap()
}

/// The errno of a call that must fail.
pub fn errno_of<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> i32 {
    alces_proto::errno::of(&r.expect_err("the call should have failed"))
}

/// The whole HTTP/1.1 answer of the master's HTTP endpoint to `GET path`.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// One disk of 1 TiB with `free` bytes free.
pub fn disk(free: u64) -> pb::DiskInfo {
    pb::DiskInfo {
        path: "/d".into(),
        total_bytes: 1 << 40,
        used_bytes: (1 << 40) - free,
        free_bytes: free,
        ..Default::default()
    }
}

/// Registers chunkserver `id` (at 127.0.0.1:20000+id, failure domain `label`,
/// `free` bytes free) holding `chunks`.
pub async fn register_cs(
    c: &mut ChunkMasterClient<AuthChannel>,
    id: u64,
    label: &str,
    free: u64,
    chunks: Vec<pb::ChunkInfo>,
) {
    let r = c
        .register_chunkserver(pb::RegisterChunkserverRequest {
            server_id: id,
            address: format!("127.0.0.1:{}", 20000 + id),
            label: label.into(),
            disks: vec![disk(free)],
            chunks,
            seen_epoch: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.epoch, 1);
}

/// Registers an empty chunkserver `id` with half its disk free, in its own
/// failure domain.
pub async fn register(m: &Running, id: u64) {
    register_cs(&mut chunk_master(m), id, &format!("l{id}"), 1 << 39, vec![]).await;
}

/// A heartbeat of chunkserver `id` reporting `changed` copies.
pub async fn heartbeat(
    c: &mut ChunkMasterClient<AuthChannel>,
    id: u64,
    changed: Vec<pb::ChunkInfo>,
) -> pb::ChunkserverHeartbeatReply {
    c.chunkserver_heartbeat(pb::ChunkserverHeartbeatRequest {
        server_id: id,
        changed,
        seen_epoch: 1,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// A copy of `chunk_id` at `version`, 100 bytes long.
pub fn info(chunk_id: u64, version: u64) -> pb::ChunkInfo {
    pb::ChunkInfo {
        chunk_id,
        version,
        disk: 0,
        length: 100,
    }
}
