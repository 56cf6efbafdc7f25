//! A master in its own network namespace, reached by the rest of the cluster
//! (chunkservers, mounts, metaloggers, the CLI) through a floating address, as
//! MooseFS users run it with ucarp and as a Kubernetes Service does for a pod:
//! the address clients use is not the master's own, it follows the active
//! master. Cutting the namespace's link partitions the master away from
//! everyone; moving the floating address into the host namespace
//! ([`FloatingIp`]) lets a promoted metalogger take it over.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::netns::{ip, Netns};
use crate::{is_mount_point, tail, Cluster, ExtraMount, Proc};

/// An address of the host's network namespace, on an interface of its own (one
/// end of a veth pair, which needs no extra kernel module, unlike `dummy`);
/// deleted with the interface on drop, also when a test panics.
pub struct FloatingIp {
    /// The address.
    pub ip: String,
    dev: String,
}

impl FloatingIp {
    /// Brings `ip`/32 up in the host namespace (what ucarp does on the node
    /// that takes the address over).
    pub fn take(ip_addr: &str) -> Result<Self, String> {
        let dev = format!("aev{}", std::process::id() % 1_000_000);
        let peer = format!("aew{}", std::process::id() % 1_000_000);
        ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer])?;
        let f = Self {
            ip: ip_addr.to_string(),
            dev,
        };
        ip(&["addr", "add", &format!("{ip_addr}/32"), "dev", &f.dev])?;
        ip(&["link", "set", &peer, "up"])?;
        ip(&["link", "set", &f.dev, "up"])?;
        Ok(f)
    }
}

impl Drop for FloatingIp {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.dev]);
    }
}

fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in the command line"));
    args[i + 1] = value.to_string();
}

impl Cluster {
    /// Moves the master into network namespace `ns`: it is restarted there
    /// (`nsenter --net`, so it keeps the host's mount namespace) listening on the floating address `vip` (added to the
    /// namespace's side of the link) with the same port, and every other process
    /// — chunkservers, metaloggers (also their `--promote-listen`) and the main
    /// mount — is restarted in the host namespace pointing at `vip:port`, which
    /// becomes [`Cluster::master`]. The deposed master's metalogger service
    /// (`--rejoin-listen`) gets the namespace's own address, reachable from the
    /// host. Data directories are kept: the cluster carries on with its metadata.
    pub fn move_master_to_netns(&mut self, ns: &Netns, vip: &str) {
        let port = self
            .master
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .expect("master port");
        let vaddr = format!("{vip}:{port}");
        self.kill9(Proc::Mount);
        for i in 1..=self.opts.metaloggers {
            self.kill9(Proc::Metalogger(i));
        }
        for i in 1..=self.opts.chunkservers {
            self.kill9(Proc::Chunkserver(i));
        }
        self.kill9(Proc::Master);
        self.wait_master_unlocked();
        let rejoin = format!("{}:{}", ns.ns_ip, free_port());
        let wrapper = ns.net_only_wrapper();
        self.edit_command(Proc::Master, |program, args| {
            set_flag(args, "--listen", &vaddr);
            set_flag(args, "--rejoin-listen", &rejoin);
            let mut wrapped: Vec<String> = wrapper[1..].to_vec();
            wrapped.push(program.clone());
            wrapped.append(args);
            *args = wrapped;
            *program = wrapper[0].clone();
        });
        for i in 1..=self.opts.chunkservers {
            self.edit_command(Proc::Chunkserver(i), |_, args| {
                set_flag(args, "--master", &vaddr)
            });
        }
        for i in 1..=self.opts.metaloggers {
            self.edit_command(Proc::Metalogger(i), |_, args| {
                set_flag(args, "--master", &vaddr);
                set_flag(args, "--promote-listen", &vaddr);
            });
        }
        self.edit_command(Proc::Mount, |_, args| set_flag(args, "--master", &vaddr));
        self.master = vaddr.clone();
        let env = std::fs::read_to_string(self.dir.join("env")).expect("DIR/env");
        let env: String = env
            .lines()
            .map(|l| {
                if l.starts_with("ALCES_MASTER=") {
                    format!("ALCES_MASTER={vaddr}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(self.dir.join("env"), env).expect("write DIR/env");
        std::fs::write(
            self.proc_dir(Proc::Master).join("address"),
            format!("{vaddr}\n"),
        )
        .expect("master address file");
        ns.add_addr(vip);
        self.restart(Proc::Master);
        for i in 1..=self.opts.chunkservers {
            self.restart(Proc::Chunkserver(i));
        }
        for i in 1..=self.opts.metaloggers {
            self.restart(Proc::Metalogger(i));
        }
        self.restart(Proc::Mount);
    }

    /// Mounts the filesystem once more at `<tmp>/<name>`, running `alces-mount`
    /// through `wrapper` (e.g. [`Netns::net_only_wrapper`], a client whose
    /// connections are made inside a network namespace), and waits until it is
    /// mounted.
    pub fn mount_extra_wrapped(
        &self,
        name: &str,
        wrapper: &[String],
        extra: &[&str],
    ) -> ExtraMount {
        let path = self.dir.parent().expect("parent").join(name);
        let log = self.dir.join(format!("{name}.log"));
        std::fs::create_dir_all(&path).expect("mkdir mount point");
        let mut args: Vec<OsString> = wrapper[1..].iter().map(OsString::from).collect();
        args.push(crate::bin("alces-mount").into());
        args.extend([
            path.clone().into(),
            "--master".into(),
            self.master.clone().into(),
            "--secret-file".into(),
            self.secret_file.clone().into(),
        ]);
        args.extend(extra.iter().map(OsString::from));
        let mut child = self.spawn_logged(&wrapper[0], &args, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "alces-mount through {wrapper:?} exited ({st}): {}",
                    tail(&log, 30)
                );
            }
            if is_mount_point(&path) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mount {name} not mounted in time: {}",
                tail(&log, 30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ExtraMount { path, log, child }
    }

    /// The metadata version in the `last_acknowledged` field of the master's
    /// `DEPOSED` log line (the highest version it acknowledged to a client),
    /// if it logged one.
    pub fn deposed_last_acknowledged(&self) -> Option<u64> {
        last_acknowledged(&self.log(Proc::Master))
    }
}

/// Reads `last_acknowledged=N` from the `DEPOSED` line of a master log.
pub fn last_acknowledged(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("DEPOSED"))?;
    let (_, rest) = line.split_once("last_acknowledged")?;
    let digits: String = rest
        .trim_start_matches(['=', '"', ':', ' '])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Every changelog record in the `changelog.*.log` files of `dir`, in version
/// order (framing `[u32 len][u32 crc32c][prost ChangelogRecord]`; reading a
/// file stops at its first invalid frame).
pub fn changelog_records(dir: &Path) -> Vec<alces_proto::pb::ChangelogRecord> {
    use prost::Message;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("changelog.") && n.ends_with(".log")
            })
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let mut pos = 0usize;
        while data.len() - pos >= 8 {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
            let Some(payload) = data.get(pos + 8..pos + 8 + len) else {
                break;
            };
            if alces_proto::checksum::crc32c(payload) != crc {
                break;
            }
            match alces_proto::pb::ChangelogRecord::decode(payload) {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
            pos += 8 + len;
        }
    }
    out.sort_by_key(|r| r.version);
    out
}
