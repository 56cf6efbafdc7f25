//! Network namespaces, the one helper for tests and the benchmark: a
//! namespace joined to the host by a veth pair (partition tests cut the link),
//! or an isolated one whose veth pair has both ends inside (the benchmark's
//! private network), and running a command with its network inside one.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A network namespace with a veth pair; deleted on drop.
///
/// [`Netns::new`] joins it to the host (one end of the pair in the host,
/// `host_ip`; the other in the namespace, `ns_ip`), for partition tests.
/// [`Netns::isolated`] keeps both ends inside (addresses `host_ip` and
/// `ns_ip` both live in the namespace): nothing leaves it, and daemons that
/// refuse loopback addresses (MooseFS) get two private ones.
pub struct Netns {
    /// Namespace name.
    pub name: String,
    /// Host-side interface.
    pub host_if: String,
    /// Host-side address.
    pub host_ip: String,
    /// Namespace-side address.
    pub ns_ip: String,
    /// Namespace-side interface.
    pub ns_if: String,
    /// The subnet's first three octets (`10.a.b`).
    pub net: String,
    /// False for [`Netns::isolated`]: both interfaces are in the namespace.
    joined: bool,
}

pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

impl Netns {
    /// Creates namespace `alces-e2e-<pid>` with a veth pair on subnet
    /// `10.<a>.<b>.0/24` derived from the pid.
    pub fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let name = format!("alces-e2e-{pid}");
        let host_if = format!("aeh{}", pid % 1_000_000);
        let ns_if = format!("aen{}", pid % 1_000_000);
        let net = format!("10.{}.{}", 100 + (pid / 256) % 100, pid % 256);
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: format!("{net}.1"),
            ns_ip: format!("{net}.2"),
            ns_if: ns_if.clone(),
            net: net.clone(),
            joined: true,
        };
        ip(&["netns", "add", &name])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &host_if,
        ])?;
        ip(&["link", "set", &host_if, "up"])?;
        let nsx = |a: &[&str]| {
            let mut v = vec!["netns", "exec", &name, "ip"];
            v.extend_from_slice(a);
            ip(&v)
        };
        nsx(&["addr", "add", &format!("{}/24", ns.ns_ip), "dev", &ns_if])?;
        nsx(&["link", "set", &ns_if, "up"])?;
        nsx(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The wrapper that runs a command inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".to_string(),
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
        ]
    }

    /// Another address of the namespace's subnet: `10.a.b.<n>`.
    pub fn ip(&self, n: u8) -> String {
        format!("{}.{n}", self.net)
    }

    /// The wrapper that runs a command with only its network in the namespace
    /// (`nsenter --net`): unlike `ip netns exec`, the command keeps the host's
    /// mount namespace, so a FUSE mount it makes is visible to the test.
    pub fn net_only_wrapper(&self) -> Vec<String> {
        vec![
            "nsenter".to_string(),
            format!("--net=/run/netns/{}", self.name),
        ]
    }

    /// Adds `ip`/32 to the namespace's side of the link.
    pub fn add_addr(&self, ip_addr: &str) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "addr",
            "add",
            &format!("{ip_addr}/32"),
            "dev",
            &self.ns_if,
        ])
        .expect("add an address in the namespace");
    }

    /// Removes `ip`/32 from the namespace's side of the link.
    pub fn del_addr(&self, ip_addr: &str) {
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "addr",
            "del",
            &format!("{ip_addr}/32"),
            "dev",
            &self.ns_if,
        ])
        .expect("remove an address from the namespace");
    }

    /// A namespace named `name` (a leftover of that name is deleted first)
    /// with loopback up and a veth pair whose two ends both live inside it,
    /// `<prefix>0` at `<net>.1` and `<prefix>1` at `<net>.2`. `net` is the
    /// subnet's first three octets, e.g. `10.213.0`.
    pub fn isolated(name: &str, prefix: &str, net: &str) -> Result<Self, String> {
        delete(name);
        ip(&["netns", "add", name])?;
        let ns = Self {
            name: name.to_string(),
            host_if: format!("{prefix}0"),
            host_ip: format!("{net}.1"),
            ns_if: format!("{prefix}1"),
            ns_ip: format!("{net}.2"),
            net: net.to_string(),
            joined: false,
        };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            name,
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        for (dev, addr) in [(&ns.host_if, &ns.host_ip), (&ns.ns_if, &ns.ns_ip)] {
            ip(&["-n", name, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", name, "link", "set", dev, "up"])?;
        }
        Ok(ns)
    }

    /// Cuts the link (host side down; joined namespaces only).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_if, "down"]).expect("cut the link");
    }

    /// Restores the link.
    pub fn heal(&self) {
        ip(&["link", "set", &self.host_if, "up"]).expect("heal the link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.joined {
            let _ = ip(&["link", "del", &self.host_if]);
        }
        delete(&self.name);
    }
}

/// Deletes network namespace `name` if it exists (with the interfaces inside
/// it); no error when it does not.
pub fn delete(name: &str) {
    if exists(name) {
        let _ = ip(&["netns", "delete", name]);
    }
}

/// True when network namespace `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Makes `cmd` run with its network in namespace `name` (only the network:
/// the mount namespace stays shared, so a FUSE mount the child makes is
/// visible here, as with [`Netns::net_only_wrapper`]).
pub fn enter_net(cmd: &mut Command, name: &str) -> Result<(), String> {
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("network namespace {} is missing: {e}", path.display()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: setns is async-signal-safe; the fd stays open because `file` is
    // moved into the closure, which lives as long as the Command.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &file;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}
