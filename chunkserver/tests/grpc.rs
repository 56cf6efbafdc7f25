//! In-process chunkservers talking real gRPC over loopback.

use std::sync::Arc;
use std::time::Duration;

use alces_chunkserver::daemon::{self, Config, Running};
use alces_chunkserver::master_link::replicate;
use alces_chunkserver::peers::Peers;
use alces_chunkserver::service::{FAILED_ADDRESS_KEY, FAILED_SERVER_KEY};
use alces_proto::auth::ClientAuth;
use alces_proto::net::AuthChannel;
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::pb::{
    ChunkLocation, ReadRequest, ReplicateChunk, SyncRequest, TruncateRequest, WriteExtent,
    WriteManyRequest, WriteRequest,
};
use bytes::Bytes;

const SECRET: &str = "test-secret-0123456789";

struct Node {
    running: Running,
    _dir: tempfile::TempDir,
}

impl Node {
    fn location(&self) -> ChunkLocation {
        ChunkLocation {
            server_id: self.running.server_id,
            address: self.running.advertise.clone(),
            label: String::new(),
        }
    }
}

/// A port nothing listens on: the master of these tests is unreachable, so
/// the chunkservers must serve clients without one.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let running = daemon::start(Config {
        data_dirs: vec![dir.path().to_path_buf()],
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: None,
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        master: dead_addr(),
        label: String::new(),
        secret: Arc::from(SECRET),
        tls: Default::default(),
        scrub_bytes_per_sec: 0,
        open_files: 16,
        heartbeat: Duration::from_millis(100),
    })
    .await
    .expect("chunkserver starts");
    Node { running, _dir: dir }
}

fn client(n: &Node) -> ChunkserverClient<AuthChannel> {
    let ch = alces_proto::net::channel(
        &n.running.grpc_addr.to_string(),
        &ClientAuth::new(SECRET).unwrap(),
    )
    .unwrap();
    ChunkserverClient::new(ch)
}

fn write_req(chunk_id: u64, offset: u64, data: &[u8], chain: Vec<ChunkLocation>) -> WriteRequest {
    WriteRequest {
        chunk_id,
        expected_version: 0,
        version: 1,
        create: true,
        offset,
        data: Bytes::copy_from_slice(data),
        chain,
        copy_from_chunk_id: 0,
        copy_from_version: 0,
        access: None,
    }
}

async fn read(c: &mut ChunkserverClient<AuthChannel>, id: u64, off: u64, len: u32) -> Vec<u8> {
    c.read(ReadRequest {
        chunk_id: id,
        version: 1,
        offset: off,
        length: len,
        access: None,
    })
    .await
    .expect("read succeeds")
    .into_inner()
    .data
    .to_vec()
}

/// WriteMany writes every range in order (later ones win where they overlap)
/// on every server of the chain; bad batches get clear errors and change nothing.
#[tokio::test]
async fn write_many_lands_every_range_on_the_chain() {
    let a = node().await;
    let b = node().await;
    let mut ca = client(&a);
    let mut cb = client(&b);
    let ranges: Vec<(u64, Vec<u8>)> = vec![
        (0, vec![1; 4096]),
        (200_000, vec![2; 4096]),
        (70_000, vec![3; 100]),
        (202_000, vec![4; 10]), // overlaps the second range
    ];
    let req = |ranges: &[(u64, Vec<u8>)], chain: Vec<ChunkLocation>| WriteManyRequest {
        chunk_id: 0x99,
        expected_version: 0,
        version: 1,
        create: true,
        extents: ranges
            .iter()
            .map(|(o, d)| WriteExtent {
                offset: *o,
                data: Bytes::copy_from_slice(d),
            })
            .collect(),
        chain,
        copy_from_chunk_id: 0,
        copy_from_version: 0,
        access: None,
    };
    ca.write_many(req(&ranges, vec![b.location()]))
        .await
        .expect("chained WriteMany succeeds");
    let mut model = vec![0u8; 204_096];
    for (o, d) in &ranges {
        model[*o as usize..*o as usize + d.len()].copy_from_slice(d);
    }
    assert_eq!(read(&mut ca, 0x99, 0, 204_096).await, model);
    assert_eq!(read(&mut cb, 0x99, 0, 204_096).await, model);

    let e = ca
        .write_many(req(&[], vec![]))
        .await
        .expect_err("an empty batch is refused");
    assert!(e.message().contains("at least one"), "{}", e.message());
    let e = ca
        .write_many(req(&[(64 << 20, vec![9; 1])], vec![]))
        .await
        .expect_err("a range past the chunk is refused");
    assert!(
        e.message().contains("past the largest chunk size"),
        "{}",
        e.message()
    );
    assert_eq!(read(&mut ca, 0x99, 0, 204_096).await, model);
}

#[tokio::test]
async fn chained_write_lands_on_both_servers() {
    let a = node().await;
    let b = node().await;
    let mut ca = client(&a);
    let mut cb = client(&b);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    ca.write(write_req(0x77, 1234, &data, vec![b.location()]))
        .await
        .expect("chained write succeeds");
    assert_eq!(read(&mut ca, 0x77, 1234, 300_000).await, data);
    assert_eq!(read(&mut cb, 0x77, 1234, 300_000).await, data);
    assert_eq!(read(&mut cb, 0x77, 0, 1234).await, vec![0u8; 1234]);

    // Truncate and sync travel the chain too.
    ca.truncate(TruncateRequest {
        chunk_id: 0x77,
        expected_version: 0,
        version: 1,
        create: false,
        length: 2000,
        chain: vec![b.location()],
        copy_from_chunk_id: 0,
        copy_from_version: 0,
        access: None,
    })
    .await
    .expect("chained truncate succeeds");
    ca.sync(SyncRequest {
        chunk_id: 0x77,
        version: 1,
        chain: vec![b.location()],
        access: None,
    })
    .await
    .expect("chained sync succeeds");
    for c in [&mut ca, &mut cb] {
        let r = c
            .read(ReadRequest {
                chunk_id: 0x77,
                version: 1,
                offset: 0,
                length: 4000,
                access: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.chunk_length, 2000);
        assert_eq!(&r.data[1234..2000], &data[..766]);
        assert!(r.data[2000..].iter().all(|x| *x == 0));
    }

    // A stale version is refused with ESTALE.
    let mut stale = write_req(0x77, 0, b"x", vec![]);
    stale.create = false;
    stale.expected_version = 5;
    stale.version = 6;
    let e = ca.write(stale).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::ESTALE, "{e:?}");

    // A server that joins later gets the chunk by replication from a peer.
    let c = node().await;
    let peers = Peers::new(ClientAuth::new(SECRET).unwrap());
    let r = ReplicateChunk {
        chunk_id: 0x77,
        version: 1,
        sources: vec![
            ChunkLocation {
                server_id: 9,
                address: dead_addr(),
                label: String::new(),
            },
            b.location(),
        ],
    };
    assert!(replicate(&c.running.store, &peers, &r).await.unwrap());
    let m = c.running.store.get(0x77).unwrap();
    assert_eq!((m.version, m.length), (1, 2000));
    let mut cc = client(&c);
    assert_eq!(
        read(&mut cc, 0x77, 0, 2000).await,
        read(&mut cb, 0x77, 0, 2000).await
    );
    assert!(
        !replicate(&c.running.store, &peers, &r).await.unwrap(),
        "already there"
    );

    // Graceful stop.
    for n in [a, b, c] {
        n.running.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test]
async fn unreachable_chain_member_is_named() {
    let a = node().await;
    let b = node().await;
    let dead = ChunkLocation {
        server_id: 4242,
        address: dead_addr(),
        label: String::new(),
    };
    let mut ca = client(&a);
    let e = ca
        .write(write_req(5, 0, b"hello", vec![b.location(), dead.clone()]))
        .await
        .expect_err("the chain is broken");
    assert!(e.message().contains("4242"), "{e:?}");
    assert!(e.message().contains(&dead.address), "{e:?}");
    assert_eq!(
        e.metadata()
            .get(FAILED_SERVER_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        "4242"
    );
    assert_eq!(
        e.metadata()
            .get(FAILED_ADDRESS_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        dead.address
    );
    // The reachable servers did write their copies.
    let mut cb = client(&b);
    assert_eq!(read(&mut cb, 5, 0, 5).await, b"hello");

    // A failure of the second server itself names it.
    let mut stale = write_req(6, 0, b"x", vec![b.location()]);
    stale.create = false;
    let e = ca.write(stale.clone()).await.unwrap_err();
    // The first server failed itself (no such chunk): no failed-server key.
    assert!(e.metadata().get(FAILED_SERVER_KEY).is_none(), "{e:?}");
    ca.write(write_req(6, 0, b"x", vec![])).await.unwrap();
    let e = ca.write(stale).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::ENOENT);
    assert_eq!(
        e.metadata()
            .get(FAILED_SERVER_KEY)
            .unwrap()
            .to_str()
            .unwrap(),
        b.running.server_id.to_string()
    );
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let a = node().await;
    // No secret at all.
    let ch = alces_proto::net::endpoint(&a.running.grpc_addr.to_string())
        .unwrap()
        .connect_lazy();
    let mut anon = ChunkserverClient::new(ch);
    let e = anon
        .read(ReadRequest {
            chunk_id: 1,
            version: 1,
            offset: 0,
            length: 1,
            access: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let mut c = client(&a);
    c.write(write_req(1, 0, b"data", vec![])).await.unwrap();
    // Oversized read.
    let e = c
        .read(ReadRequest {
            chunk_id: 1,
            version: 1,
            offset: 0,
            length: 9 * 1024 * 1024,
            access: None,
        })
        .await
        .unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    assert!(e.message().contains("exceeds"), "{e:?}");
    // Read past the end of the largest chunk.
    let e = c
        .read(ReadRequest {
            chunk_id: 1,
            version: 1,
            offset: u64::MAX - 10,
            length: 100,
            access: None,
        })
        .await
        .unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    // Write past the end of the largest chunk.
    let e = c
        .write(write_req(1, 64 * 1024 * 1024 - 2, b"abc", vec![]))
        .await
        .unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    // Unknown chunk.
    let e = c
        .read(ReadRequest {
            chunk_id: 2,
            version: 1,
            offset: 0,
            length: 1,
            access: None,
        })
        .await
        .unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::ENOENT);
    // Chunk id 0.
    let e = c.write(write_req(0, 0, b"x", vec![])).await.unwrap_err();
    assert_eq!(alces_proto::errno::of(&e), libc::EINVAL);
    // The server still serves.
    assert_eq!(read(&mut c, 1, 0, 4).await, b"data");

    // Metrics and readiness over HTTP.
    let http = a.running.http_addr.unwrap();
    let body = http_get(http, "/metrics").await;
    assert!(body.contains("alces_chunkserver_ops_total"), "{body}");
    assert!(body.contains("alces_chunkserver_errors_total"), "{body}");
    assert!(http_get(http, "/readyz").await.starts_with("HTTP/1.1 200"));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
