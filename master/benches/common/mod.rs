//! Setup the master's benchmarks share: a master started in-process over a
//! temporary directory, channels, sessions, directories and files.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use alces_master::server::{Options, Running};
use alces_proto::auth::ClientAuth;
use alces_proto::net::{channel, AuthChannel};
use alces_proto::pb::{self, master_client::MasterClient};

pub const SECRET: &str = "bench-secret-0123456789";

pub fn options(dir: &std::path::Path) -> Options {
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

pub fn chan(m: &Running, token: &str) -> AuthChannel {
    channel(&m.grpc_addr.to_string(), &ClientAuth::new(token).unwrap()).unwrap()
}

pub async fn session(c: &mut MasterClient<AuthChannel>) -> u64 {
    c.register_session(pb::RegisterSessionRequest::default())
        .await
        .unwrap()
        .into_inner()
        .session_id
}

/// The directory `/vol` and a chain of `depth` directories below it
/// (`vol/d0/d1/…`): element 0 is `/vol`, element `k` the directory at depth `k`.
pub async fn dir_chain(c: &mut MasterClient<AuthChannel>, sid: u64, depth: usize) -> Vec<u64> {
    let mut dirs = vec![mkdir(c, sid, 1, "vol").await];
    for d in 0..depth {
        let next = mkdir(c, sid, *dirs.last().unwrap(), &format!("d{d}")).await;
        dirs.push(next);
    }
    dirs
}

pub async fn mkdir(c: &mut MasterClient<AuthChannel>, sid: u64, parent: u64, name: &str) -> u64 {
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

pub async fn mknod(c: &mut MasterClient<AuthChannel>, sid: u64, parent: u64, name: &str) -> u64 {
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
