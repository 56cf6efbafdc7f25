//! A TCP proxy between a client and the master that can lose replies: while
//! [`Proxy::drop_replies`] is on it forwards what the client sends and
//! discards what comes back, so a request reaches the master and runs but its
//! reply never arrives; [`Proxy::cut`] then breaks every connection, as a
//! failover does, and the client retries through a new one.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

struct Shared {
    target: String,
    drop_replies: AtomicBool,
    stop: AtomicBool,
    /// Both ends of every connection made so far (to break them).
    conns: Mutex<Vec<TcpStream>>,
}

/// A proxy on 127.0.0.1 forwarding to one target address (re-resolved and
/// reconnected for every new client connection). Stops when dropped.
pub struct Proxy {
    addr: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts a proxy to `target` (`host:port`).
    pub fn start(target: &str) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let shared = Arc::new(Shared {
            target: target.to_string(),
            drop_replies: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        thread::spawn(move || accept_loop(listener, s));
        Ok(Proxy { addr, shared })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Discards (`true`) or forwards (`false`) what the target sends back.
    pub fn drop_replies(&self, on: bool) {
        self.shared.drop_replies.store(on, Ordering::SeqCst);
    }

    /// Breaks every connection made so far (new ones are accepted).
    pub fn cut(&self) {
        let conns = std::mem::take(&mut *self.shared.conns.lock().unwrap());
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        // Nothing listens at the target (e.g. during a failover): close the
        // client's connection at once, as a refused connection would.
        let Ok(server) = TcpStream::connect(&s.target) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = server.set_nodelay(true);
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        s.conns.lock().unwrap().extend([c3, s3]);
        let up = s.clone();
        thread::spawn(move || pump(client, server, &up, false));
        let down = s.clone();
        thread::spawn(move || pump(s2, c2, &down, true));
    }
}

/// Copies `from` to `to` until either closes; `replies` marks the direction
/// from the target, whose bytes are discarded while replies are dropped.
fn pump(mut from: TcpStream, mut to: TcpStream, s: &Shared, replies: bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if replies && s.drop_replies.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
