//! The chunkserver's link to a master: a small ChunkMaster gRPC server in this
//! test records what chunkservers report and hands out commands.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_chunkserver::daemon::{self, Config, Running};
use alces_proto::auth::{ClientAuth, ServerAuth};
use alces_proto::pb::chunk_command::Command;
use alces_proto::pb::chunk_master_server::{ChunkMaster, ChunkMasterServer};
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::pb::{
    ChunkCommand, ChunkLocation, ChunkserverHeartbeatReply, ChunkserverHeartbeatRequest,
    DeleteChunk, RegisterChunkserverReply, RegisterChunkserverRequest, ReplicateChunk,
    WriteRequest,
};
use bytes::Bytes;
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

const SECRET: &str = "link-secret-0123456789";

#[derive(Default)]
struct State {
    registers: Vec<RegisterChunkserverRequest>,
    heartbeats: Vec<ChunkserverHeartbeatRequest>,
    commands: Vec<ChunkCommand>,
    /// Server whose heartbeats take `commands`.
    command_target: u64,
    reregister_server: Option<u64>,
    fail_heartbeats: bool,
    /// Listed as revoked credentials in every reply.
    revoked: Vec<u64>,
}

#[derive(Clone)]
struct TestMaster {
    state: Arc<Mutex<State>>,
    epoch: u64,
    cluster_id: String,
}

#[tonic::async_trait]
impl ChunkMaster for TestMaster {
    async fn register_chunkserver(
        &self,
        request: Request<RegisterChunkserverRequest>,
    ) -> Result<Response<RegisterChunkserverReply>, Status> {
        self.state.lock().registers.push(request.into_inner());
        Ok(Response::new(RegisterChunkserverReply {
            epoch: self.epoch,
            cluster_id: self.cluster_id.clone(),
            heartbeat_ms: 50,
            revoked_credentials: self.state.lock().revoked.clone(),
        }))
    }

    async fn chunkserver_heartbeat(
        &self,
        request: Request<ChunkserverHeartbeatRequest>,
    ) -> Result<Response<ChunkserverHeartbeatReply>, Status> {
        let mut s = self.state.lock();
        if s.fail_heartbeats {
            return Err(Status::unavailable("master busy"));
        }
        let req = request.into_inner();
        let req_server = req.server_id;
        let reregister = s.reregister_server == Some(req.server_id);
        if reregister {
            s.reregister_server = None;
        }
        s.heartbeats.push(req);
        let commands = if s.command_target == req_server {
            std::mem::take(&mut s.commands)
        } else {
            Vec::new()
        };
        Ok(Response::new(ChunkserverHeartbeatReply {
            commands,
            epoch: self.epoch,
            reregister,
            revoked_credentials: s.revoked.clone(),
        }))
    }
}

async fn start_master(epoch: u64, cluster_id: &str) -> (TestMaster, String) {
    let m = TestMaster {
        state: Arc::default(),
        epoch,
        cluster_id: cluster_id.to_string(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let svc = ChunkMasterServer::with_interceptor(m.clone(), ServerAuth::new(Arc::from(SECRET)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (m, addr)
}

async fn start_cs(dir: &Path, master: &str) -> Running {
    daemon::start(Config {
        data_dirs: vec![dir.to_path_buf()],
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        http_listen: None,
        master: master.to_string(),
        label: "rack-a".to_string(),
        secret: Arc::from(SECRET),
        tls: Default::default(),
        scrub_bytes_per_sec: 0,
        open_files: 16,
        heartbeat: Duration::from_millis(50),
    })
    .await
    .expect("chunkserver starts")
}

/// Polls `cond` until it holds, failing the test after a deadline.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn write(r: &Running, chunk_id: u64, data: &[u8]) {
    let ch = alces_proto::net::channel(&r.grpc_addr.to_string(), &ClientAuth::new(SECRET).unwrap())
        .unwrap();
    ChunkserverClient::new(ch)
        .write(WriteRequest {
            chunk_id,
            expected_version: 0,
            version: 3,
            create: true,
            offset: 0,
            data: Bytes::copy_from_slice(data),
            chain: vec![],
            copy_from_chunk_id: 0,
            copy_from_version: 0,
            access: None,
        })
        .await
        .expect("write succeeds");
}

fn changed_ids(s: &State) -> Vec<u64> {
    s.heartbeats
        .iter()
        .flat_map(|h| h.changed.iter().map(|c| c.chunk_id))
        .collect()
}

#[tokio::test]
async fn registers_reports_changes_and_runs_commands() {
    let (master, addr) = start_master(4, "cluster-1").await;
    let dir = tempfile::tempdir().unwrap();
    let cs = start_cs(dir.path(), &addr).await;
    master.state.lock().command_target = cs.server_id;
    write(&cs, 1, b"first").await;

    until("registration", || !master.state.lock().registers.is_empty()).await;
    {
        let s = master.state.lock();
        let r = &s.registers[0];
        assert_eq!(r.server_id, cs.server_id);
        assert_eq!(r.address, cs.advertise);
        assert_eq!(r.label, "rack-a");
        assert_eq!(r.disks.len(), 1);
        assert!(r.disks[0].total_bytes > 0);
    }
    // The chunk is known either from the full list or from a heartbeat.
    until("chunk 1 reported", || {
        let s = master.state.lock();
        s.registers
            .iter()
            .any(|r| r.chunks.iter().any(|c| c.chunk_id == 1))
            || changed_ids(&s).contains(&1)
    })
    .await;
    // The identity remembers the cluster and epoch.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cluster_id"))
            .unwrap()
            .trim(),
        "cluster-1"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("seen_epoch"))
            .unwrap()
            .trim(),
        "4"
    );

    // A write is reported as changed with its version and length.
    write(&cs, 2, b"second!").await;
    until("chunk 2 changed", || {
        master.state.lock().heartbeats.iter().any(|h| {
            h.changed
                .iter()
                .any(|c| c.chunk_id == 2 && c.version == 3 && c.length == 7)
        })
    })
    .await;

    // Changes made while heartbeats fail are not lost.
    master.state.lock().fail_heartbeats = true;
    write(&cs, 3, b"during outage").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    master.state.lock().fail_heartbeats = false;
    until("chunk 3 reported after the outage", || {
        let s = master.state.lock();
        changed_ids(&s).contains(&3)
            || s.registers
                .iter()
                .any(|r| r.chunks.iter().any(|c| c.chunk_id == 3))
    })
    .await;

    // Delete: refused for a newer local version, done otherwise.
    master.state.lock().commands.push(ChunkCommand {
        command: Some(Command::Delete(DeleteChunk {
            chunk_id: 1,
            version: 2,
        })),
    });
    until("delete command taken", || {
        master.state.lock().commands.is_empty()
    })
    .await;
    let n = master.state.lock().heartbeats.len();
    until("a later heartbeat", || {
        master.state.lock().heartbeats.len() > n + 1
    })
    .await;
    assert!(cs.store.get(1).is_some(), "local version 3 > 2: kept");
    master.state.lock().commands.push(ChunkCommand {
        command: Some(Command::Delete(DeleteChunk {
            chunk_id: 1,
            version: 0,
        })),
    });
    until("chunk 1 removed", || {
        master
            .state
            .lock()
            .heartbeats
            .iter()
            .any(|h| h.removed.contains(&1))
    })
    .await;
    assert!(cs.store.get(1).is_none());

    // Replicate from a second chunkserver.
    let dir2 = tempfile::tempdir().unwrap();
    let other = start_cs(dir2.path(), &addr).await;
    write(&other, 50, &vec![7u8; 200_000]).await;
    master.state.lock().commands.push(ChunkCommand {
        command: Some(Command::Replicate(ReplicateChunk {
            chunk_id: 50,
            version: 3,
            sources: vec![ChunkLocation {
                server_id: other.server_id,
                address: other.advertise.clone(),
                label: String::new(),
            }],
        })),
    });
    until("replicated chunk 50 reported", || {
        master.state.lock().heartbeats.iter().any(|h| {
            h.server_id == cs.server_id
                && h.changed
                    .iter()
                    .any(|c| c.chunk_id == 50 && c.length == 200_000)
        })
    })
    .await;

    // reregister=true: the full list is sent again.
    let before = master
        .state
        .lock()
        .registers
        .iter()
        .filter(|r| r.server_id == cs.server_id)
        .count();
    master.state.lock().reregister_server = Some(cs.server_id);
    until("registered again", || {
        master
            .state
            .lock()
            .registers
            .iter()
            .filter(|r| r.server_id == cs.server_id)
            .count()
            > before
    })
    .await;
    let s = master.state.lock();
    let last = s
        .registers
        .iter()
        .rev()
        .find(|r| r.server_id == cs.server_id)
        .unwrap();
    let mut ids: Vec<u64> = last.chunks.iter().map(|c| c.chunk_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![2, 3, 50]);
    assert_eq!(last.seen_epoch, 4);
}

#[tokio::test]
async fn refuses_other_cluster_and_older_epoch() {
    // Another cluster.
    let (master, addr) = start_master(1, "cluster-new").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster_id"), "cluster-old\n").unwrap();
    let cs = start_cs(dir.path(), &addr).await;
    until("several register attempts", || {
        master.state.lock().registers.len() >= 2
    })
    .await;
    assert!(
        master.state.lock().heartbeats.is_empty(),
        "no heartbeats to a foreign master"
    );
    cs.shutdown().await.unwrap();

    // A deposed master (lower epoch than seen).
    let (master, addr) = start_master(2, "cluster-old").await;
    std::fs::write(dir.path().join("seen_epoch"), "5\n").unwrap();
    let cs = start_cs(dir.path(), &addr).await;
    until("several register attempts", || {
        master.state.lock().registers.len() >= 2
    })
    .await;
    assert!(
        master.state.lock().heartbeats.is_empty(),
        "no heartbeats to a deposed master"
    );
    assert_eq!(master.state.lock().registers[0].seen_epoch, 5);
    // Clients are still served.
    write(&cs, 9, b"still serving").await;
    cs.shutdown().await.unwrap();
}

/// A read a credential's client makes with an access the master signed is
/// refused once the master lists the credential as revoked (within a
/// heartbeat), and served again when the list no longer holds it.
#[tokio::test]
async fn revoked_credentials_are_refused_within_a_heartbeat() {
    let (master, addr) = start_master(1, "cluster-r").await;
    let dir = tempfile::tempdir().unwrap();
    let cs = start_cs(dir.path(), &addr).await;
    write(&cs, 1, b"data").await;
    until("registration", || !master.state.lock().registers.is_empty()).await;
    let ch = alces_proto::net::channel(
        &cs.grpc_addr.to_string(),
        &ClientAuth::new("alces-credential-7-anything").unwrap(),
    )
    .unwrap();
    let mut c = ChunkserverClient::new(ch);
    let access = alces_proto::access::sign(
        SECRET,
        alces_proto::pb::ChunkAccess {
            credential: 7,
            chunk_id: 1,
            version: 3,
            write: false,
            expires_unix: alces_proto::access::now_unix() + 120,
            ..Default::default()
        },
    );
    let read = |c: &mut ChunkserverClient<_>| {
        let mut c = c.clone();
        let access = access.clone();
        async move {
            c.read(alces_proto::pb::ReadRequest {
                chunk_id: 1,
                version: 3,
                offset: 0,
                length: 4,
                access: Some(access),
            })
            .await
        }
    };
    // Served once the registration's reply (an empty list) is in.
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        match read(&mut c).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
                assert!(Instant::now() < deadline, "never served: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(&r.data[..], b"data");
    master.state.lock().revoked = vec![5, 7];
    let deadline = Instant::now() + Duration::from_secs(15);
    let e = loop {
        match read(&mut c).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still served after the revocation"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(e.message().contains("credential 7 revoked"), "{e:?}");
    assert_eq!(alces_proto::errno::of(&e), libc::EACCES);
    // The list replaces the last one.
    master.state.lock().revoked = vec![5];
    let deadline = Instant::now() + Duration::from_secs(15);
    while read(&mut c).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "still refused after the list dropped it"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cs.shutdown().await.unwrap();
}
