//! Harness pieces for replication and failure tests: goal polling through
//! `alces status --json`, rewriting how a process is started and extra
//! chunkservers (network namespaces are in [`crate::netns`]).

use std::time::{Duration, Instant};

use crate::{bin, free_port, Cluster, Proc};

/// Chunk health as `alces status --json` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Health {
    /// Chunks with no valid copy.
    pub missing: u64,
    /// Chunks with fewer valid copies than their goal.
    pub under_goal: u64,
    /// Chunks at their goal.
    pub at_goal: u64,
    /// Chunks above their goal.
    pub over_goal: u64,
}

impl Cluster {
    /// `alces status --json`, parsed.
    pub fn status_json(&self) -> Result<serde_json::Value, String> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status is not JSON: {e}"))
    }

    /// Chunk health from `alces status --json`.
    pub fn health(&self) -> Result<Health, String> {
        let v = self.status_json()?;
        let c = &v["chunk_counts"];
        let n = |k: &str| c[k].as_u64().unwrap_or(u64::MAX);
        Ok(Health {
            missing: n("missing"),
            under_goal: n("under_goal"),
            at_goal: n("at_goal"),
            over_goal: n("over_goal"),
        })
    }

    /// Polls `alces status --json` until every chunk is exactly at its goal;
    /// returns how long it took. Panics with the last status on timeout.
    pub fn wait_at_goal(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let last = self.health();
            if let Ok(h) = last {
                if h.missing == 0 && h.under_goal == 0 && h.over_goal == 0 {
                    return start.elapsed();
                }
            }
            if start.elapsed() > timeout {
                panic!(
                    "chunks not back at goal within {timeout:?}: last health {last:?}\n{}",
                    self.status_json()
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Rewrites the recorded command line of a stopped process (used by
    /// [`Cluster::restart`]).
    pub fn edit_command(&self, p: Proc, edit: impl FnOnce(&mut String, &mut Vec<String>)) {
        let path = self.proc_dir(p).join("command.json");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("command.json")).expect("JSON");
        let mut program = v["program"].as_str().expect("program").to_string();
        let mut args: Vec<String> = v["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().unwrap_or_default().to_string())
            .collect();
        edit(&mut program, &mut args);
        let v = serde_json::json!({ "program": program, "args": args });
        std::fs::write(&path, serde_json::to_vec_pretty(&v).expect("JSON")).expect("write");
    }

    /// Restarts the master listening on every interface (same port), so a
    /// chunkserver in a network namespace can reach it.
    pub fn master_listen_all(&self) {
        let port = self
            .master
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .expect("master port");
        self.kill9(Proc::Master);
        self.wait_master_unlocked();
        self.edit_command(Proc::Master, |_, args| {
            set_flag(args, "--listen", &format!("0.0.0.0:{port}"))
        });
        self.restart(Proc::Master);
    }

    /// Waits until the killed master's data directory lock is released (the
    /// threads of a killed process may outlive its main thread briefly).
    pub fn wait_master_unlocked(&self) {
        use std::os::fd::AsRawFd;
        let lock = self.master_data().join("lock");
        crate::wait_until(
            "the killed master to release its data directory lock",
            Duration::from_secs(30),
            || {
                let Ok(f) = std::fs::File::open(&lock) else {
                    return true;
                };
                // SAFETY: flock on an open file descriptor owned by `f`.
                let ok = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
                if ok {
                    // SAFETY: as above.
                    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
                }
                ok
            },
        );
    }

    /// Restarts chunkserver `i` listening on every interface and advertising
    /// `ip` (same port).
    pub fn chunkserver_advertise(&self, i: u32, ip: &str) {
        let port = port_of(&self.cs_addr(i));
        let p = Proc::Chunkserver(i);
        self.kill9(p);
        crate::wait_until(
            "the killed chunkserver's port to be free",
            Duration::from_secs(30),
            || std::net::TcpListener::bind(format!("0.0.0.0:{port}")).is_ok(),
        );
        self.edit_command(p, |_, args| {
            set_flag(args, "--listen", &format!("0.0.0.0:{port}"));
            set_flag(args, "--advertise", &format!("{ip}:{port}"));
        });
        std::fs::write(self.proc_dir(p).join("address"), format!("{ip}:{port}\n"))
            .expect("address file");
        self.restart(p);
    }

    /// Adds chunkserver number `i` (a new, empty one), listening on `ip`, run
    /// through `wrapper` (e.g. `ip netns exec NS`) when given, with master
    /// address `master`; waits until it is registered.
    pub fn add_chunkserver(&self, i: u32, ip: &str, master: &str, wrapper: &[&str]) {
        let p = Proc::Chunkserver(i);
        let pdir = self.proc_dir(p);
        std::fs::create_dir_all(pdir.join("data")).expect("mkdir data");
        let port = free_port();
        let http = free_port();
        let addr = format!("{ip}:{port}");
        let cs = bin("alces-chunkserver").display().to_string();
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        let program = if args.is_empty() {
            cs
        } else {
            let first = args.remove(0);
            args.push(cs);
            first
        };
        args.extend(
            [
                "--master",
                master,
                "--listen",
                &addr,
                "--advertise",
                &addr,
                "--http-listen",
                &format!("{ip}:{http}"),
                "--data-dir",
                &pdir.join("data").display().to_string(),
                "--label",
                &format!("cs{i}"),
                "--secret-file",
                &self.secret_file.display().to_string(),
            ]
            .map(str::to_string),
        );
        // With TLS (Options::tls), the harness's CA and certificate (which
        // names this machine's loopback addresses), mutual like the others.
        let tls = self.tls_flags();
        if !tls.is_empty() {
            args.extend(tls.iter().map(|a| a.to_string_lossy().into_owned()));
            args.push("--tls-client-auth".into());
        }
        let v = serde_json::json!({ "program": program, "args": args });
        std::fs::write(
            pdir.join("command.json"),
            serde_json::to_vec_pretty(&v).expect("JSON"),
        )
        .expect("command.json");
        std::fs::write(pdir.join("address"), format!("{addr}\n")).expect("address");
        self.restart(p);
    }

    /// Id of the chunkserver advertising `addr`.
    pub fn server_id(&self, addr: &str) -> u64 {
        self.status()
            .expect("status")
            .chunkservers
            .iter()
            .find(|s| s.address == addr && s.connected)
            .map(|s| s.server_id)
            .unwrap_or_else(|| panic!("no connected chunkserver at {addr}"))
    }

    /// Prints the lines of a process log matching `needle` (diagnostics).
    pub fn grep_log(&self, p: Proc, needle: &str) -> Vec<String> {
        std::fs::read_to_string(self.log(p))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

fn port_of(addr: &str) -> String {
    addr.rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .expect("port")
}

fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in the command line"));
    args[i + 1] = value.to_string();
}
