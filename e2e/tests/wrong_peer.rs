//! A master address that reaches another service: while the master is down, its
//! port is taken by an HTTP/2 server answering every request with 404 (as a
//! Service routing to a pod that is not the master does). The chunkserver, the
//! metalogger and the mount all reach it; then it stops listening (the
//! connections it has stay up and keep answering 404) and the real master
//! starts on the port. Each must leave the connection to the wrong peer, connect
//! again and find the master: the chunkserver registers, the metalogger follows,
//! and a mkdir made while the 404 peer answered succeeds.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alces_e2e::{wait_until, Cluster, Options, Proc};

/// What the gRPC library reports for an HTTP 404 without a grpc-status.
const NOT_GRPC: &str = "grpc-status header missing";

/// A minimal HTTP/2 server (cleartext, prior knowledge, as gRPC clients
/// speak) that answers every request with status 404 and no body.
struct NotFoundServer {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl NotFoundServer {
    fn start(addr: &str) -> Self {
        // The killed master's connections may hold the port for a moment.
        let mut bound = None;
        wait_until(
            &format!("{addr} to be free for the 404 server"),
            Duration::from_secs(60),
            || {
                bound = TcpListener::bind(addr).ok();
                bound.is_some()
            },
        );
        let listener = bound.expect("bound");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let accepting = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let answered = answered.clone();
                            std::thread::spawn(move || serve(s, &answered));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                // The listener closes here; the connections stay served.
            })
        };
        Self {
            stop,
            answered,
            accepting: Some(accepting),
        }
    }

    /// Closes the listening socket; the connections made stay up.
    fn stop_listening(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accepting.take() {
            t.join().unwrap();
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// One connection: HTTP/2 frames in, a 404 for every request.
fn serve(mut s: TcpStream, answered: &AtomicU64) {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    const WINDOW_UPDATE: u8 = 8;
    const ACK: u8 = 1;
    const END_STREAM_AND_HEADERS: u8 = 0x1 | 0x4;
    /// HPACK: static table entry 13, `:status: 404`, indexed.
    const STATUS_404: u8 = 0x80 | 13;
    let _ = s.set_nonblocking(false);
    if s.write_all(&frame(SETTINGS, 0, 0, &[])).is_err() {
        return;
    }
    let mut preface = [0u8; 24];
    if s.read_exact(&mut preface).is_err() || &preface != b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" {
        return;
    }
    loop {
        let mut h = [0u8; 9];
        if s.read_exact(&mut h).is_err() {
            return;
        }
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => frame(PING, ACK, 0, &payload),
            HEADERS => {
                answered.fetch_add(1, Ordering::SeqCst);
                frame(HEADERS, END_STREAM_AND_HEADERS, stream, &[STATUS_404])
            }
            // Give back the connection window the request bodies used.
            DATA if len > 0 => frame(WINDOW_UPDATE, 0, 0, &(len as u32).to_be_bytes()),
            GOAWAY => return,
            _ => continue,
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

fn log_has(c: &Cluster, p: Proc, what: &str) -> bool {
    std::fs::read_to_string(c.log(p))
        .map(|l| l.contains(what))
        .unwrap_or(false)
}

#[test]
fn daemons_and_mount_leave_a_peer_that_answers_404_and_find_the_master() {
    let c = Cluster::start(Options {
        chunkservers: 1,
        goal: Some(1),
        ..Options::default()
    })
    .expect("cluster");
    std::fs::write(c.path("before"), b"written before").unwrap();
    let cs_id = |c: &Cluster| {
        c.status()
            .ok()
            .and_then(|s| s.chunkservers.first().map(|cs| cs.connected))
            .unwrap_or(false)
    };
    wait_until(
        "the chunkserver to be registered",
        Duration::from_secs(30),
        || cs_id(&c),
    );

    c.kill9(Proc::Master);
    let mut peer = NotFoundServer::start(&c.master);
    // A mkdir while the master's address answers 404: it waits, as for an
    // unreachable master, instead of failing.
    let mkdir = {
        let p = c.path("made-while-404");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(std::fs::create_dir(&p)));
        rx
    };
    wait_until(
        "the chunkserver, the metalogger and the mount to get a 404 from the master's address",
        Duration::from_secs(60),
        || {
            log_has(&c, Proc::Chunkserver(1), NOT_GRPC)
                && log_has(&c, Proc::Metalogger(1), NOT_GRPC)
                && log_has(&c, Proc::Mount, NOT_GRPC)
        },
    );
    let answered = peer.answered.load(Ordering::SeqCst);
    println!("the 404 peer answered {answered} requests");
    assert!(answered >= 3, "the 404 peer answered {answered} requests");

    // The 404 peer stops listening and keeps its connections; the master
    // starts on its address.
    peer.stop_listening();
    c.restart_nowait(Proc::Master);
    c.wait_master_ready(Duration::from_secs(60));
    wait_until(
        "the chunkserver to register with the master",
        Duration::from_secs(20),
        || cs_id(&c),
    );
    let ml = c.ml_id(1);
    wait_until(
        "the metalogger to follow the master",
        Duration::from_secs(20),
        || {
            c.status()
                .map(|s| s.metaloggers.iter().any(|m| m.id == ml && m.connected))
                .unwrap_or(false)
        },
    );
    mkdir
        .recv_timeout(Duration::from_secs(120))
        .expect("the mkdir made while the master's address answered 404 to end")
        .expect("a mkdir made while the master's address answered 404");
    assert!(c.path("made-while-404").is_dir());
    assert_eq!(std::fs::read(c.path("before")).unwrap(), b"written before");
    std::fs::write(c.path("after"), b"written after").unwrap();
    assert_eq!(std::fs::read(c.path("after")).unwrap(), b"written after");
}
