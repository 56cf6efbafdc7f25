//! The client library and `alces-mount` against a real master and two
//! chunkservers on 127.0.0.1, started by the one cluster harness (these tests
//! live here rather than in the client crate because `alces-e2e` depends on
//! the client library).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use alces_client::{Caller, Client, ClientConfig, FileType, NewNode};
use alces_e2e::master_rpcs;

const MIB: u64 = 1 << 20;

/// The library's settings for `cluster`: its master, secret and TLS (under
/// `ALCES_E2E_TLS=1`, its CA and the harness's certificate).
fn config(cluster: &alces_e2e::Cluster) -> ClientConfig {
    let mut cfg = ClientConfig::new(cluster.master.clone(), cluster.secret().into());
    cfg.tls = cluster.tls.clone();
    cfg
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn library_write_read_truncate_across_chunks() {
    let cluster = common::start_library_cluster().await;
    let mut cfg = config(&cluster);
    cfg.client_name = "library test".into();
    cfg.reconnect_timeout = Duration::from_secs(20);
    let client = Client::connect(cfg).await.expect("connect");
    assert_eq!(client.chunk_size(), MIB);
    let caller = Caller::current();
    let root = client.root();

    let dir = client.mkdir_p("/data/set", 0o755).await.expect("mkdir -p");
    assert_eq!(
        client.resolve("data/set").await.expect("resolve").inode,
        dir.inode
    );
    let attr = client
        .mknod(
            dir.inode,
            b"big",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0o022,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let err = client
        .mknod(
            dir.inode,
            b"big",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0o022,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect_err("O_EXCL on an existing file");
    assert_eq!(err.errno(), libc::EEXIST);
    assert_eq!(
        client
            .lookup(root, &[b'x'; 256], &caller)
            .await
            .expect_err("long name")
            .errno(),
        libc::ENAMETOOLONG
    );

    // 10 MiB in uneven pieces so writes straddle chunk boundaries.
    let data = pattern(10 * MIB as usize, 7);
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    let mut off = 0usize;
    let mut step = 100_003usize;
    while off < data.len() {
        let n = step.min(data.len() - off);
        assert_eq!(
            h.write(off as u64, &data[off..off + n])
                .await
                .expect("write"),
            n
        );
        off += n;
        step = if step > 700_000 { 100_003 } else { step * 2 };
    }
    h.fsync().await.expect("fsync");
    h.release().await.expect("release");
    assert_eq!(
        client.getattr(attr.inode).await.expect("getattr").size,
        data.len() as u64
    );

    // Read back sequentially (readahead) and at offsets around chunk boundaries.
    let h = client
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("reopen");
    let mut back = Vec::with_capacity(data.len());
    let mut off = 0u64;
    loop {
        let d = h.read(off, 128 * 1024).await.expect("read");
        if d.is_empty() {
            break;
        }
        off += d.len() as u64;
        back.extend_from_slice(&d);
    }
    assert_eq!(back.len(), data.len());
    assert!(back == data, "data read back differs from what was written");
    for at in [MIB - 1, 3 * MIB - 100, 9 * MIB + 5] {
        let d = h.read(at, 300).await.expect("read at boundary");
        assert_eq!(&d[..], &data[at as usize..at as usize + 300]);
    }
    let tail = h.read(10 * MIB - 10, 100).await.expect("read past end");
    assert_eq!(tail.len(), 10);
    h.release().await.expect("release");
    // Close-to-open: unchanged since the last open -> cached pages may be kept.
    let again = client
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open again");
    assert!(again.keep_cache(), "an unchanged file must keep its cache");
    again.release().await.expect("release");

    // Shrink into the middle of a chunk, then extend: the gap reads as zeros.
    let cut = 2 * MIB + MIB / 2;
    client
        .truncate(attr.inode, cut, &caller)
        .await
        .expect("truncate");
    client
        .truncate(attr.inode, 5 * MIB, &caller)
        .await
        .expect("extend");
    let h = client
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open after truncate");
    assert!(!h.keep_cache(), "a changed file must drop its cache");
    let d = h.read(0, 5 * MIB).await.expect("read after truncate");
    assert_eq!(d.len(), 5 * MIB as usize);
    assert!(
        d[..cut as usize] == data[..cut as usize],
        "kept prefix changed"
    );
    assert!(
        d[cut as usize..].iter().all(|b| *b == 0),
        "extended part is not zeros"
    );
    h.release().await.expect("release");

    // Holes: a write far past the end leaves zeros before it.
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open rw");
    h.write(8 * MIB + 10, b"tail")
        .await
        .expect("write past end");
    let d = h.read(7 * MIB, 2 * MIB).await.expect("read hole");
    assert!(d[..MIB as usize + 10].iter().all(|b| *b == 0));
    assert_eq!(&d[MIB as usize + 10..MIB as usize + 14], b"tail");
    h.release().await.expect("release");

    client
        .unlink(dir.inode, b"big", &caller)
        .await
        .expect("unlink");
    client.close().await.expect("close");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_create_write_rename_unlink() {
    let cluster = common::start_library_cluster().await;
    let mut mount = tokio::task::block_in_place(|| cluster.mount_extra("lib-mnt", &[]));
    let (mnt, log) = (mount.path.clone(), mount.log.clone());

    let m = mnt.clone();
    tokio::task::spawn_blocking(move || {
        let data = pattern(3 * MIB as usize + 12345, 3);
        let a = m.join("a.bin");
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&a)
                .expect("create");
            f.write_all(&data).expect("write");
            f.sync_all().expect("fsync");
        }
        assert!(std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&a)
            .is_err());
        assert_eq!(
            std::fs::metadata(&a).expect("stat").len(),
            data.len() as u64
        );
        let back = std::fs::read(&a).expect("read");
        assert!(back == data, "read through the mount differs");
        let mut f = std::fs::File::open(&a).expect("open");
        f.seek(SeekFrom::Start(MIB - 3)).expect("seek");
        let mut buf = [0u8; 6];
        f.read_exact(&mut buf)
            .expect("read across a chunk boundary");
        assert_eq!(&buf, &data[MIB as usize - 3..MIB as usize + 3]);

        // Extended attributes: absent, then set, read back (size query first).
        let path = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).expect("path");
        let name = c"user.color";
        let mut buf = [0u8; 64];
        // SAFETY: valid NUL-terminated strings and a buffer of the given length.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
        // SAFETY: as above.
        let r =
            unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0) };
        assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
        // SAFETY: a size query with a null buffer.
        let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        assert_eq!(n, 4);
        // SAFETY: as above.
        let n = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 2) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ERANGE)
        );
        // SAFETY: as above.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert_eq!(&buf[..n as usize], b"blue");

        std::fs::create_dir(m.join("d")).expect("mkdir");
        std::fs::rename(&a, m.join("d/b.bin")).expect("rename");
        assert!(!a.exists());
        assert_eq!(
            std::fs::read(m.join("d/b.bin"))
                .expect("read renamed")
                .len(),
            data.len()
        );
        let names: Vec<String> = std::fs::read_dir(m.join("d"))
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["b.bin".to_string()]);
        std::os::unix::fs::symlink("b.bin", m.join("d/link")).expect("symlink");
        assert_eq!(
            std::fs::read_link(m.join("d/link")).expect("readlink"),
            PathBuf::from("b.bin")
        );
        std::fs::remove_file(m.join("d/link")).expect("unlink link");
        std::fs::remove_file(m.join("d/b.bin")).expect("unlink");
        std::fs::remove_dir(m.join("d")).expect("rmdir");
        let long = "x".repeat(256);
        let e = std::fs::File::create(m.join(long)).expect_err("too long name");
        assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    })
    .await
    .expect("file operations");

    // SIGTERM unmounts cleanly and exits 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(mount.pid(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = mount.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "alces-mount did not exit within 30 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "alces-mount exited with {status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(!alces_e2e::is_mount_point(&mnt), "still mounted after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_survives_master_restart_and_times_out_when_down() {
    let cluster = common::start_library_cluster().await;
    let mut cfg = config(&cluster);
    cfg.reconnect_timeout = Duration::from_secs(30);
    let client = Client::connect(cfg).await.expect("connect");
    let caller = Caller::current();
    let attr = client
        .mknod(
            client.root(),
            b"f",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    let data = pattern(3 * MIB as usize, 11);
    h.write(0, &data).await.expect("write");
    h.fsync().await.expect("fsync");
    let session = client.session_id();

    // kill -9 the master and start it again on the same address and data.
    common::restart_master(&cluster);

    // The open handle keeps working through the restart with the same session.
    h.write(3 * MIB, b"after restart")
        .await
        .expect("write after restart");
    h.fsync().await.expect("fsync after restart");
    let d = h.read(0, 3 * MIB + 13).await.expect("read after restart");
    assert!(
        d[..3 * MIB as usize] == data[..],
        "data changed across a master restart"
    );
    assert_eq!(&d[3 * MIB as usize..], b"after restart");
    assert_eq!(
        client.session_id(),
        session,
        "the session id must be kept on reconnect"
    );
    h.release().await.expect("release");
    client.close().await.expect("close");

    // With the master gone for good, calls fail with EIO after the bounded time.
    let mut cfg = config(&cluster);
    cfg.reconnect_timeout = Duration::from_secs(2);
    let short = Client::connect(cfg).await.expect("connect");
    common::kill_master(&cluster);
    let started = Instant::now();
    let e = short
        .getattr(short.root())
        .await
        .expect_err("master is down");
    assert_eq!(e.errno(), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "gave up too late: {:?}",
        started.elapsed()
    );
}

/// Runs `f` on a new thread with its own single-threaded runtime, as a FUSE thread
/// does, and returns its result.
fn on_own_thread<T: Send + 'static>(
    f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        f(&rt)
    })
    .join()
    .expect("thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_on_a_threads_own_master_connection_fall_back_to_the_shared_one() {
    let cluster = common::start_library_cluster().await;
    let mut cfg = config(&cluster);
    cfg.reconnect_timeout = Duration::from_secs(30);
    let client = Client::connect(cfg).await.expect("connect");
    let root = client.root();

    // A thread's own connection serves calls, and keeps serving them after the
    // master was killed and restarted while it sat idle (the first call after the
    // restart finds it closed and goes through the shared connection).
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let c = client.clone();
    let worker = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let own = {
            let _in = rt.enter();
            c.new_master_client().expect("own master client")
        };
        while rx.recv().is_ok() {
            let r = rt.block_on(c.with_master(own.clone(), c.getattr(c.root())));
            done_tx
                .send(r.map(|_| ()).map_err(|e| e.to_string()))
                .unwrap();
        }
    });
    tx.send(()).unwrap();
    done_rx.recv().unwrap().expect("call on the own connection");
    common::restart_master(&cluster);
    for _ in 0..3 {
        tx.send(()).unwrap();
        done_rx
            .recv()
            .unwrap()
            .expect("call after the master restarted");
    }
    drop(tx);
    worker.join().unwrap();

    // An own connection that can never connect: every call still succeeds.
    let dead = format!("127.0.0.1:{}", alces_e2e::free_port());
    let secret = cluster.secret();
    let c = client.clone();
    let r = on_own_thread(move |rt| {
        let bogus = {
            let _in = rt.enter();
            let auth = alces_proto::auth::ClientAuth::new(&secret).expect("auth");
            let ch = alces_proto::net::channel(&dead, &auth).expect("channel");
            alces_proto::pb::master_client::MasterClient::new(ch)
        };
        rt.block_on(c.with_master(bogus, c.getattr(c.root())))
            .map(|a| a.inode)
            .map_err(|e| e.to_string())
    });
    assert_eq!(r, Ok(root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_write_session_is_reopened_and_read_only_is_enforced() {
    let cluster = common::start_library_cluster().await;
    let connect = |read_only: bool| {
        let mut cfg = config(&cluster);
        cfg.read_only = read_only;
        cfg.write_flush_bytes = MIB;
        Client::connect(cfg)
    };
    let a = connect(false).await.expect("connect a");
    let b = connect(false).await.expect("connect b");
    let caller = Caller::current();
    let attr = a
        .mknod(
            a.root(),
            b"shared",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");

    // A fills chunk 0: it is sent in the background and A's write session stays open.
    let ha = a
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open a");
    ha.write(0, &pattern(MIB as usize, 1))
        .await
        .expect("write a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.buffered_bytes() > 0 {
        assert!(Instant::now() < deadline, "background write did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B writes the same chunk: a new version, so A's session is now stale.
    let hb = b
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open b");
    hb.write(0, b"from b").await.expect("write b");
    hb.release().await.expect("release b");
    // A writes again: the chunkserver answers ESTALE and A opens a new session.
    let second = pattern(MIB as usize, 2);
    assert_eq!(a.write_retries(), 0);
    ha.write(0, &second).await.expect("write a again");
    ha.flush().await.expect("flush a after a stale session");
    assert!(
        a.write_retries() >= 1,
        "the stale write session was not detected"
    );
    let d = ha.read(0, MIB).await.expect("read");
    assert!(d[..] == second[..], "A's rewrite is not what is read back");
    ha.release().await.expect("release a");

    let ro = connect(true).await.expect("connect read-only");
    assert!(ro.is_read_only());
    let e = ro
        .mknod(
            ro.root(),
            b"nope",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect_err("create in a read-only session");
    assert_eq!(e.errno(), libc::EROFS);
    let e = ro
        .open(attr.inode, libc::O_WRONLY, &caller)
        .await
        .expect_err("open for writing in a read-only session");
    assert_eq!(e.errno(), libc::EROFS);
    let h = ro
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open read-only");
    assert_eq!(h.read(0, 10).await.expect("read-only read").len(), 10);
    h.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_falls_over_to_the_next_copy_on_a_checksum_error() {
    let cluster = common::start_library_cluster().await;
    let client = Client::connect(config(&cluster)).await.expect("connect");
    let caller = Caller::current();
    let attr = client
        .mknod(
            client.root(),
            b"c",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let data = pattern(300_000, 5);
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    h.write(0, &data).await.expect("write");
    h.fsync().await.expect("fsync");
    h.release().await.expect("release");

    // Corrupt the copy the master lists first, in its data block area.
    let auth = alces_proto::auth::ClientAuth::new(&cluster.secret())
        .expect("auth")
        .with_tls(&cluster.tls);
    let mut master = alces_proto::pb::master_client::MasterClient::new(
        alces_proto::net::channel(&cluster.master, &auth).expect("channel"),
    );
    let loc = master
        .read_chunk(alces_proto::pb::ChunkRequest {
            session_id: client.session_id(),
            inode: attr.inode,
            chunk_index: 0,
            caller: None,
        })
        .await
        .expect("read chunk")
        .into_inner();
    assert_eq!(loc.locations.len(), 2, "goal 2 must give two copies");
    let first = &loc.locations[0].address;
    let dir = &(1..=2)
        .find(|i| cluster.cs_addr(*i) == *first)
        .map(|i| cluster.cs_data(i))
        .expect("first copy is on a test chunkserver");
    let file = dir
        .join("chunks")
        .join(format!("{:02x}", loc.chunk_id & 0xff))
        .join(format!("{:016x}.chunk", loc.chunk_id));
    let mut bytes = std::fs::read(&file).expect("read chunk file");
    for b in &mut bytes[8192 + 1000..8192 + 1100] {
        *b ^= 0xff;
    }
    std::fs::write(&file, &bytes).expect("corrupt chunk file");

    let fresh = Client::connect(config(&cluster))
        .await
        .expect("connect again");
    let h = fresh
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open");
    let d = h
        .read(0, data.len() as u64)
        .await
        .expect("read with one bad copy");
    assert!(d[..] == data[..], "a corrupt copy leaked into a read");
    h.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_io_matches_a_model() {
    let cluster = common::start_library_cluster().await;
    let mut cfg = config(&cluster);
    cfg.write_flush_bytes = 256 * 1024;
    let client = Client::connect(cfg).await.expect("connect");
    let caller = Caller::current();
    let attr = client
        .mknod(
            client.root(),
            b"model",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    let mut model: Vec<u8> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for step in 0..300u64 {
        match next(10) {
            0..=5 => {
                let off = next(5 * MIB);
                let len = 1 + next(300_000) as usize;
                let data = pattern(len, step);
                h.write(off, &data).await.expect("write");
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            6..=7 => {
                let off = next(6 * MIB);
                let len = 1 + next(2 * MIB);
                let d = h.read(off, len).await.expect("read");
                let lo = (off as usize).min(model.len());
                let hi = (off as usize + len as usize).min(model.len());
                assert_eq!(d.len(), hi - lo, "read length at step {step}");
                assert!(
                    d[..] == model[lo..hi],
                    "read content at step {step} ({off}+{len})"
                );
            }
            8 => {
                let size = next(6 * MIB);
                h.truncate(size, &caller).await.expect("truncate");
                model.resize(size as usize, 0);
            }
            _ => h.flush().await.expect("flush"),
        }
    }
    h.fsync().await.expect("fsync");
    assert_eq!(
        client.getattr(attr.inode).await.expect("getattr").size,
        model.len() as u64
    );
    let d = h
        .read(0, model.len() as u64 + 10)
        .await
        .expect("final read");
    assert!(d[..] == model[..], "final content differs from the model");
    h.release().await.expect("release");
}

/// Found by fsx: a read caches the master's answer (with the file size), then a
/// write extends the file. A read inside the new size right after must not stop
/// at the size the master sent before the write (a short read inside the file
/// makes the kernel shrink it, and mmap then faults with SIGBUS); the gap reads
/// as zeros. Attributes report the size including buffered writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_after_an_extending_write_see_the_new_size() {
    let cluster = common::start_library_cluster().await;
    let client = Client::connect(config(&cluster)).await.expect("connect");
    let caller = Caller::current();
    let attr = client
        .mknod(
            client.root(),
            b"extend",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    h.truncate(0x2e42d, &caller).await.expect("truncate");
    let d = h.read(0x3bb6, 0x23c0d).await.expect("first read");
    assert_eq!(d.len(), 0x23c0d);
    let data = pattern(0x3cc95, 5);
    h.write(0x1a5bea, &data).await.expect("extending write");
    let end = 0x1a5bea + data.len() as u64;
    assert_eq!(
        client
            .getattr_local(attr.inode)
            .await
            .expect("getattr")
            .size,
        end,
        "attributes while the write is buffered"
    );
    let d = h.read(0x21716, 0x1e0b5).await.expect("read in the gap");
    assert_eq!(d.len(), 0x1e0b5, "short read inside the file");
    assert!(d.iter().all(|b| *b == 0), "the gap is not zeros");
    let d = h
        .read(0x1a5bea, data.len() as u64 + 100)
        .await
        .expect("tail");
    assert!(d[..] == data[..], "the written data reads back");
    assert_eq!(
        client
            .getattr_local(attr.inode)
            .await
            .expect("getattr")
            .size,
        end,
        "attributes after the flush"
    );
    // A truncate by this client sets the size exactly, also right after a read
    // that cached the larger size.
    h.truncate(0x1000, &caller).await.expect("shrink");
    assert_eq!(h.read(0, 0x10000).await.expect("read").len(), 0x1000);
    assert_eq!(
        client
            .getattr_local(attr.inode)
            .await
            .expect("getattr")
            .size,
        0x1000
    );
    h.write(0x3000, b"x").await.expect("write past the end");
    let d = h.read(0, 0x10000).await.expect("read");
    assert_eq!(d.len(), 0x3001);
    assert!(d[0x1000..0x3000].iter().all(|b| *b == 0));
    h.release().await.expect("release");
    client.close().await.expect("close");
}

/// Bytes a chunkserver holds past a file's end (here: a write the master refused
/// with EDQUOT) must read as zeros when the file is later extended over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_past_the_end_read_as_zeros_when_the_file_grows() {
    let cluster = common::start_library_cluster().await;
    let connect = || Client::connect(config(&cluster));
    let client = connect().await.expect("connect");
    let caller = Caller::current();
    let dir = client.mkdir_p("/q", 0o755).await.expect("mkdir");
    client
        .quota_set(
            "/q",
            alces_client::QuotaLimits {
                hard_bytes: 8192,
                ..Default::default()
            },
        )
        .await
        .expect("quota");
    let attr = client
        .mknod(
            dir.inode,
            b"f",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let h = client
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    let head = pattern(4096, 1);
    h.write(0, &head).await.expect("write within the quota");
    h.flush().await.expect("flush within the quota");
    // The chunkservers store this, but the master refuses the new size.
    let w = h.write(4096, &pattern(65536, 2)).await;
    let f = h.flush().await;
    let err = w
        .err()
        .or(f.err())
        .expect("a write past the hard limit fails");
    assert_eq!(err.errno(), libc::EDQUOT, "{err}");
    let _ = h.release().await;
    client.quota_remove("/q").await.expect("remove quota");

    // Another client grows the file over the refused bytes.
    let other = connect().await.expect("connect");
    let h2 = other
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open");
    assert_eq!(
        h2.attr().size,
        4096,
        "the refused write did not grow the file"
    );
    h2.truncate(4096 + 65536, &caller).await.expect("extend");
    let d = h2.read(0, 4096 + 65536).await.expect("read");
    assert_eq!(d.len(), 4096 + 65536);
    assert!(d[..4096] == head[..], "the acknowledged head is intact");
    assert!(
        d[4096..].iter().all(|b| *b == 0),
        "bytes the master refused reappeared after extending the file"
    );
}

/// Bytes a chunkserver holds past a file's end (here: writes the master refused
/// with EDQUOT) must read as zeros in the gap that another client's later write
/// past the end leaves: inside the chunk holding the end, across the rest of
/// that chunk, and in a chunk wholly past the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_written_past_the_end_reads_as_zeros_over_refused_bytes() {
    let cluster = common::start_library_cluster().await;
    let connect = || Client::connect(config(&cluster));
    let writer = connect().await.expect("connect");
    let other = connect().await.expect("connect");
    let caller = Caller::current();
    // (case, offset of the refused write, offset of the other client's write)
    let cases: [(&str, u64, u64); 3] = [
        ("same-chunk", 4096, 60_000),
        ("next-chunk", 4096, MIB + 10),
        ("past-end", MIB + 4096, 2 * MIB + 10),
    ];
    let head = pattern(4096, 1);
    for (case, refused_at, gap_at) in cases {
        let path = format!("/q/{case}");
        let dir = writer.mkdir_p(&path, 0o755).await.expect("mkdir");
        writer
            .quota_set(
                &path,
                alces_client::QuotaLimits {
                    hard_bytes: 8192,
                    ..Default::default()
                },
            )
            .await
            .expect("quota");
        let attr = writer
            .mknod(
                dir.inode,
                b"f",
                &NewNode {
                    kind: FileType::Regular,
                    mode: 0o644,
                    umask: 0,
                    rdev: 0,
                    exclusive: true,
                },
                &caller,
            )
            .await
            .expect("create");
        let h = writer
            .open(attr.inode, libc::O_RDWR, &caller)
            .await
            .expect("open");
        h.write(0, &head).await.expect("write within the quota");
        h.flush().await.expect("flush within the quota");
        // The chunkservers store this, but the master refuses the new size.
        let w = h.write(refused_at, &pattern(65536, 2)).await;
        let f = h.flush().await;
        let err = w
            .err()
            .or(f.err())
            .expect("a write past the hard limit fails");
        assert_eq!(err.errno(), libc::EDQUOT, "{case}: {err}");
        let _ = h.release().await;
        writer.quota_remove(&path).await.expect("remove quota");

        // Another client writes past the end, leaving a gap over those bytes.
        let h2 = other
            .open(attr.inode, libc::O_RDWR, &caller)
            .await
            .expect("open");
        assert_eq!(
            h2.attr().size,
            4096,
            "{case}: the refused write did not grow the file"
        );
        let tail = pattern(1000, 3);
        h2.write(gap_at, &tail).await.expect("write past the end");
        h2.flush().await.expect("flush");
        h2.release().await.expect("release");
        let h3 = writer
            .open(attr.inode, libc::O_RDONLY, &caller)
            .await
            .expect("open");
        let end = gap_at + tail.len() as u64;
        assert_eq!(h3.attr().size, end, "{case}");
        let d = h3.read(0, end).await.expect("read");
        assert_eq!(d.len() as u64, end, "{case}");
        assert!(
            d[..4096] == head[..],
            "{case}: the acknowledged head is intact"
        );
        let gap = &d[4096..gap_at as usize];
        assert!(
            gap.iter().all(|b| *b == 0),
            "{case}: refused bytes show in the gap ({} non-zero bytes, first at {})",
            gap.iter().filter(|b| **b != 0).count(),
            4096 + gap.iter().position(|b| *b != 0).unwrap_or(0)
        );
        assert!(
            d[gap_at as usize..] == tail[..],
            "{case}: the new write reads back"
        );
        h3.release().await.expect("release");
    }
}

/// Data written in a write session that later turns stale (another client
/// opened a session on the chunk) counts toward the file's length when the
/// next session closes: a stale session's length is never forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_sessions_length_is_still_recorded() {
    let cluster = common::start_library_cluster().await;
    let connect = || {
        let mut cfg = config(&cluster);
        cfg.write_flush_bytes = MIB;
        Client::connect(cfg)
    };
    let a = connect().await.expect("connect a");
    let b = connect().await.expect("connect b");
    let caller = Caller::current();
    let attr = a
        .mknod(
            a.root(),
            b"stale",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    // A writes the second half of chunk 0: sent in the background (it reaches
    // the chunk's end), its write session stays open.
    let ha = a
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open a");
    let half = pattern((MIB / 2) as usize, 1);
    ha.write(MIB / 2, &half).await.expect("write a");
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.buffered_bytes() > 0 {
        assert!(Instant::now() < deadline, "background write did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B writes the chunk too: A's session is stale now.
    let hb = b
        .open(attr.inode, libc::O_RDWR, &caller)
        .await
        .expect("open b");
    hb.write(0, b"from b").await.expect("write b");
    hb.release().await.expect("release b");
    // A writes lower in the chunk: ESTALE, a new session, then the flush.
    ha.write(100, b"from a").await.expect("write a again");
    ha.flush().await.expect("flush a");
    assert!(a.write_retries() >= 1, "the stale session was not detected");
    ha.release().await.expect("release a");
    let c = connect().await.expect("connect c");
    let hc = c
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open c");
    assert_eq!(
        hc.attr().size,
        MIB,
        "the length written in the stale session was lost"
    );
    let d = hc.read(0, MIB).await.expect("read");
    assert_eq!(&d[..6], b"from b");
    assert_eq!(&d[100..106], b"from a");
    assert!(
        d[(MIB / 2) as usize..] == half[..],
        "A's first write reads back"
    );
}

/// Opening a file for reading brings chunk 0's locations with the reply, so a
/// client that has never seen the file reads a small one without asking the
/// master for the chunk; an O_TRUNC open frees the chunk and keeps no location.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_file_is_read_without_asking_the_master_for_its_chunk() {
    let cluster = common::start_library_cluster().await;
    let config = || config(&cluster);
    let writer = Client::connect(config()).await.expect("connect writer");
    let caller = Caller::current();
    let attr = writer
        .mknod(
            writer.root(),
            b"small",
            &NewNode {
                kind: FileType::Regular,
                mode: 0o644,
                umask: 0,
                rdev: 0,
                exclusive: true,
            },
            &caller,
        )
        .await
        .expect("create");
    let h = writer
        .open(attr.inode, libc::O_WRONLY, &caller)
        .await
        .expect("open for writing");
    let data = pattern(16384, 11);
    h.write(0, &data).await.expect("write");
    h.fsync().await.expect("fsync");
    h.release().await.expect("release");

    let reader = Client::connect(config()).await.expect("connect reader");
    let before = master_rpcs(&cluster.master_http(), "ReadChunk");
    let r = reader
        .open(attr.inode, libc::O_RDONLY, &caller)
        .await
        .expect("open for reading");
    let got = r.read(0, 65536).await.expect("read");
    assert!(got[..] == data[..], "the file reads back");
    assert_eq!(
        master_rpcs(&cluster.master_http(), "ReadChunk"),
        before,
        "the read asked the master where chunk 0 is"
    );
    r.release().await.expect("release");

    let t = reader
        .open(attr.inode, libc::O_RDWR | libc::O_TRUNC, &caller)
        .await
        .expect("open with O_TRUNC");
    assert!(t.read(0, 100).await.expect("read").is_empty());
    t.write(0, b"new").await.expect("write after truncate");
    t.fsync().await.expect("fsync");
    assert_eq!(&t.read(0, 100).await.expect("read")[..], b"new");
    t.release().await.expect("release");
    reader.close().await.expect("close reader");
    writer.close().await.expect("close writer");
}
