//! The one TCP port allocator of Alces's tools and tests: `alces local`, the
//! end-to-end harness and the benchmark all take ports from here.

use anyhow::{bail, Context};

/// A TCP port that was free on every address (bound on 0.0.0.0 port 0, then
/// released), never one this process handed out before: the kernel may give a
/// just-released port again, and two daemons must not be given the same one.
/// Free on every address, so a daemon may listen on it on loopback or on an
/// address of a network namespace's veth alike.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("0.0.0.0:0")
            .context("cannot bind a free TCP port on 0.0.0.0")?;
        let port = l.local_addr()?.port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("the kernel kept offering TCP ports this process had already handed out")
}

#[cfg(test)]
mod tests {
    use super::free_port;

    /// Every port handed out is different, even when the kernel reuses them.
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut ports: Vec<u16> = (0..300).map(|_| free_port().unwrap()).collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n);
    }

    /// A port handed out is free on loopback and on every other address.
    #[test]
    fn a_port_handed_out_can_be_bound() {
        let p = free_port().unwrap();
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("free on loopback");
        let q = free_port().unwrap();
        std::net::TcpListener::bind(("0.0.0.0", q)).expect("free on every address");
    }
}
