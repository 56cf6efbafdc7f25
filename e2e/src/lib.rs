//! The one cluster harness of Alces, used by the end-to-end tests, the client
//! library's cluster tests (`tests/client_library.rs`) and the benchmark: a
//! [`Cluster`] started with `alces local up --detach` in a temporary directory
//! (or one given, optionally inside a network namespace): real master,
//! chunkservers, metaloggers and FUSE mount, with ways to kill and restart each
//! process, extra mounts, and gRPC clients for the daemons. Everything is torn
//! down when the value is dropped, also when a test panics (the processes' log
//! tails are printed first). [`free_port`] is the one port allocator,
//! [`netns`] the one network-namespace helper; [`replication`] adds goal
//! polling and extra chunkservers.

#![warn(missing_docs)]

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alces_proto::auth::ClientAuth;
use alces_proto::net::AuthChannel;
use alces_proto::pb;
use anyhow::{bail, Context};

pub mod csi_driver;
pub mod figures;
pub mod handover;
pub mod master_netns;
pub mod netns;
pub mod proxy;
pub mod replication;
pub mod storm;

/// A TCP port free on every address and never handed out before by this
/// process (the allocator `alces local` uses too).
pub fn free_port() -> u16 {
    alces_cli::ports::free_port().expect("a free TCP port")
}

/// Polls `cond` every 50 ms until it returns true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Retries `f` every 100 ms until it succeeds or `timeout` passes; returns the last result.
pub fn retry<T, E>(timeout: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The count of successful `rpc` calls in the master's metrics at `http`
/// (`alces_master_rpc_total`).
pub fn master_rpcs(http: &str, rpc: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).expect("master metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: master\r\nConnection: close\r\n\r\n")
        .expect("send metrics request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read metrics");
    let key = format!("alces_master_rpc_total{{rpc=\"{rpc}\",result=\"ok\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0, |v| {
            v.trim().parse::<f64>().expect("counter value") as u64
        })
}

/// The directory holding the workspace binaries (`alces`, `alces-master`, ...): the
/// target profile directory the running test executable was built into.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    for d in exe.ancestors().skip(1) {
        if d.join("alces").is_file() && d.join("alces-master").is_file() {
            return d.to_path_buf();
        }
    }
    panic!(
        "cannot find the alces binaries above {}; run `cargo build --workspace --bins` first",
        exe.display()
    );
}

/// Path of the workspace binary `name`.
pub fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// True when `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z') | Some('X')
        ),
        Err(_) => false,
    }
}

/// Whether `path` is currently a mount point (listed in `/proc/self/mountinfo`).
pub fn is_mount_point(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Lazily unmounts `path` (ignores errors: it may not be mounted).
pub fn force_unmount(path: &Path) {
    for (prog, arg) in [("fusermount3", "-uz"), ("umount", "-l")] {
        if !is_mount_point(path) {
            return;
        }
        let _ = Command::new(prog)
            .arg(arg)
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first (what a
/// failed CSI test left under its kubelet directory).
pub fn unmount_under(dir: &Path) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let k = dir.display().to_string();
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&k))
        .collect();
    points.reverse();
    for p in points {
        let _ = Command::new("umount").arg("-l").arg(&p).status();
    }
}

/// SIGKILLs every live mount daemon that a CSI node plugin's state directory
/// records (`<state>/volumes/*.json`, field `pid`): a failed test may leave a
/// connection paused with the test's own threads waiting in it, and with the
/// plugin gone, ending the daemons aborts it.
pub fn kill_recorded_daemons(state: &Path) {
    let Ok(dir) = std::fs::read_dir(state.join("volumes")) else {
        return;
    };
    for e in dir.flatten() {
        let pid = std::fs::read(e.path())
            .ok()
            .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            .and_then(|v| v["pid"].as_i64());
        if let Some(pid) = pid.filter(|&p| p > 0 && alive(p as i32)) {
            // SAFETY: plain kill of a mount daemon a test's plugin started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let l: Vec<&str> = t.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// Runs a command and returns its output (panics if it cannot be started).
pub fn run(prog: &str, args: &[&str], cwd: &Path) -> Output {
    Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(prog: &str, args: &[&str], cwd: &Path) -> String {
    let o = run(prog, args, cwd);
    assert!(
        o.status.success(),
        "{prog} {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// The errno of the last failed libc call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What a [`Cluster`] is started with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of chunkservers.
    pub chunkservers: u32,
    /// Chunk size (small in tests so files span several chunks); `None` = the
    /// master's default.
    pub chunk_size: Option<String>,
    /// Default goal of the filesystem; `None` = the master's default.
    pub goal: Option<u32>,
    /// Extra environment for every daemon (e.g. `ALCES_SESSION_TIMEOUT`).
    pub env: Vec<(String, String)>,
    /// Number of metaloggers.
    pub metaloggers: u32,
    /// Directory to run the cluster in (`ROOT/cluster`, mounted at
    /// `ROOT/mnt`), kept after the cluster stops; `None` = a temporary
    /// directory removed on drop.
    pub root: Option<PathBuf>,
    /// Network namespace every daemon runs in (network only: the mount stays
    /// visible here); `None` = the host's network.
    pub netns: Option<String>,
    /// Every connection with mutual TLS (`alces local up --tls`); the default
    /// is on when `ALCES_E2E_TLS=1`, so the whole suite can run with TLS.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            chunkservers: 3,
            chunk_size: Some("1MiB".into()),
            goal: None,
            env: Vec::new(),
            metaloggers: 1,
            root: None,
            netns: None,
            tls: std::env::var("ALCES_E2E_TLS").is_ok_and(|v| v == "1"),
        }
    }
}

/// A process of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    /// The master.
    Master,
    /// Chunkserver number N (1-based).
    Chunkserver(u32),
    /// The main mount.
    Mount,
    /// Metalogger number N (1-based).
    Metalogger(u32),
}

impl Proc {
    /// Its folder name in the cluster directory.
    pub fn dir_name(&self) -> String {
        match self {
            Proc::Master => "master".into(),
            Proc::Chunkserver(i) => format!("cs{i}"),
            Proc::Mount => "mount".into(),
            Proc::Metalogger(i) => format!("ml{i}"),
        }
    }
}

/// An additional FUSE mount of the cluster, unmounted and stopped on drop.
pub struct ExtraMount {
    /// Where it is mounted.
    pub path: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl ExtraMount {
    /// Pid of the alces-mount process.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The exit status of the alces-mount process once it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for ExtraMount {
    fn drop(&mut self) {
        if is_mount_point(&self.path) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.path)
                .status();
        }
        force_unmount(&self.path);
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running local cluster (master, chunkservers, one mount) in a temporary directory.
pub struct Cluster {
    /// The cluster directory given to `alces local up`.
    pub dir: PathBuf,
    /// The main mount point.
    pub mnt: PathBuf,
    /// The master's gRPC address.
    pub master: String,
    /// The cluster secret file.
    pub secret_file: PathBuf,
    /// The TLS settings of the test's own connections (plaintext without
    /// [`Options::tls`]).
    pub tls: alces_proto::tls::Tls,
    /// `ALCES_TLS_*` of the env file (the CLI's CA and certificate).
    tls_env: Vec<(String, String)>,
    /// How it was started.
    pub opts: Options,
    /// The `alces` binary that started it (and stops it).
    alces: PathBuf,
    tmp: Option<tempfile::TempDir>,
    children: Mutex<Vec<Child>>,
    launcher: Mutex<Launcher>,
    /// Taken on drop and shut down without blocking, so a cluster may also be
    /// dropped inside an async test.
    rt: Option<tokio::runtime::Runtime>,
}

/// Numbers the CLI runs of a test process (their output files).
static CLI_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A shell started before any file on the mount is open, which starts restarted
/// daemons on request. A daemon forked straight from the test process would
/// inherit the test's open files on the mount; closing them at exec sends FUSE
/// FLUSH requests, which block while the master is down, so a restarted master
/// could never finish its exec.
struct Launcher {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Launcher {
    fn start(env: &[(String, String)], netns: Option<&str>) -> anyhow::Result<Self> {
        let mut cmd = Command::new("sh");
        if let Some(ns) = netns {
            netns::enter_net(&mut cmd, ns).map_err(anyhow::Error::msg)?;
        }
        cmd.arg("-c")
            .arg("while IFS= read -r line; do eval \"$line\"; echo $!; done")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("cannot start the launcher shell")?;
        let stdin = child.stdin.take().context("launcher stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("launcher stdout")?);
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Cluster {
    /// Starts a cluster with default options.
    pub fn start_default() -> Self {
        Self::start(Options::default()).expect("start cluster")
    }

    /// Starts a cluster with `alces local up --detach`.
    pub fn start(opts: Options) -> anyhow::Result<Self> {
        Self::start_with(&bin("alces"), opts)
    }

    /// Starts a cluster with `alces local up --detach`, running the `alces`
    /// binary at `alces` (the other binaries are found next to it).
    pub fn start_with(alces: &Path, opts: Options) -> anyhow::Result<Self> {
        let (tmp, root) = match &opts.root {
            Some(r) => {
                std::fs::create_dir_all(r)
                    .with_context(|| format!("cannot create {}", r.display()))?;
                (None, r.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("alces-e2e-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        // Other users (tests that switch uid) must be able to reach the mounts.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        }
        let dir = root.join("cluster");
        let mnt = root.join("mnt");
        std::fs::create_dir_all(&mnt)?;
        let mut cmd = Command::new(alces);
        if let Some(ns) = &opts.netns {
            netns::enter_net(&mut cmd, ns).map_err(anyhow::Error::msg)?;
        }
        cmd.arg("local")
            .arg("up")
            .arg("--dir")
            .arg(&dir)
            .arg("--mount")
            .arg(&mnt)
            .arg("--chunkservers")
            .arg(opts.chunkservers.to_string())
            .arg("--metaloggers")
            .arg(opts.metaloggers.to_string())
            .arg("--timeout")
            .arg("60")
            .arg("--detach");
        if opts.tls {
            cmd.arg("--tls");
        }
        if let Some(cs) = &opts.chunk_size {
            cmd.arg("--chunk-size").arg(cs);
        }
        if let Some(g) = opts.goal {
            cmd.arg("--default-goal").arg(g.to_string());
        }
        for k in [
            "ALCES_MASTER",
            "ALCES_SECRET_FILE",
            "ALCES_SECRET",
            "ALCES_LOCAL_DIR",
            "ALCES_TLS_CA",
            "ALCES_TLS_CERT",
            "ALCES_TLS_KEY",
            "ALCES_TLS_CLIENT_AUTH",
            "ALCES_TLS_SERVER_NAME",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let out = cmd.output().context("cannot run alces local up")?;
        if !out.status.success() {
            let _ = Command::new(alces)
                .args(["local", "down", "--dir"])
                .arg(&dir)
                .output();
            bail!(
                "alces local up failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let env = std::fs::read_to_string(dir.join("env")).context("reading DIR/env")?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")).map(str::to_string))
                .ok_or_else(|| anyhow::anyhow!("DIR/env has no {k}"))
        };
        let master = get("ALCES_MASTER")?;
        let secret_file = PathBuf::from(get("ALCES_SECRET_FILE")?);
        let tls_env: Vec<(String, String)> = ["ALCES_TLS_CA", "ALCES_TLS_CERT", "ALCES_TLS_KEY"]
            .iter()
            .filter_map(|k| get(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        let tls_file = |k: &str| {
            tls_env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| PathBuf::from(v))
        };
        let tls = alces_proto::tls::TlsArgs {
            tls_ca: tls_file("ALCES_TLS_CA"),
            tls_cert: tls_file("ALCES_TLS_CERT"),
            tls_key: tls_file("ALCES_TLS_KEY"),
            ..Default::default()
        }
        .load(alces_proto::tls::Role::Client)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let mnt = std::fs::canonicalize(&mnt)?;
        let launcher = Launcher::start(&opts.env, opts.netns.as_deref())?;
        Ok(Self {
            dir,
            mnt,
            master,
            secret_file,
            tls,
            tls_env,
            opts,
            alces: alces.to_path_buf(),
            tmp,
            children: Mutex::new(Vec::new()),
            launcher: Mutex::new(launcher),
            rt: Some(rt),
        })
    }

    /// A path inside the main mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// A scratch directory outside the mount (in the test's temporary directory).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.parent().expect("parent").join(name);
        std::fs::create_dir_all(&p).expect("mkdir scratch");
        p
    }

    /// The cluster secret.
    pub fn secret(&self) -> String {
        std::fs::read_to_string(&self.secret_file)
            .expect("read secret")
            .trim()
            .to_string()
    }

    /// The TLS flags of a client of this cluster (its CA and the CLI's
    /// certificate; none without [`Options::tls`]).
    pub fn tls_flags(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        for (k, v) in &self.tls_env {
            let flag = match k.as_str() {
                "ALCES_TLS_CA" => "--tls-ca",
                "ALCES_TLS_CERT" => "--tls-cert",
                "ALCES_TLS_KEY" => "--tls-key",
                _ => continue,
            };
            args.extend([OsString::from(flag), OsString::from(v)]);
        }
        args
    }

    /// Environment variables pointing the CLI at this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ALCES_MASTER".into(), self.master.clone()),
            (
                "ALCES_SECRET_FILE".into(),
                self.secret_file.display().to_string(),
            ),
            ("ALCES_LOCAL_DIR".into(), self.dir.display().to_string()),
        ]
        .into_iter()
        .chain(self.tls_env.iter().cloned())
        .collect()
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt
            .as_ref()
            .expect("the cluster's runtime lives until drop")
    }

    /// The master's HTTP address (`/metrics`, `/healthz`), from its command line.
    pub fn master_http(&self) -> String {
        let cmd: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.proc_dir(Proc::Master).join("command.json"))
                .expect("master command.json"),
        )
        .expect("command.json is JSON");
        let args = cmd["args"].as_array().expect("args");
        args.iter()
            .position(|a| a == "--http-listen")
            .and_then(|i| args.get(i + 1))
            .and_then(|a| a.as_str())
            .expect("the master's --http-listen")
            .to_string()
    }

    /// Runs the async `f` on the cluster's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt().block_on(f)
    }

    /// The folder of a process.
    pub fn proc_dir(&self, p: Proc) -> PathBuf {
        self.dir.join(p.dir_name())
    }

    /// The log file of a process.
    pub fn log(&self, p: Proc) -> PathBuf {
        self.proc_dir(p).join("log")
    }

    /// The master's data directory.
    pub fn master_data(&self) -> PathBuf {
        self.proc_dir(Proc::Master).join("data")
    }

    /// The data directory of chunkserver `i`.
    pub fn cs_data(&self, i: u32) -> PathBuf {
        self.proc_dir(Proc::Chunkserver(i)).join("data")
    }

    /// The gRPC address of chunkserver `i`.
    pub fn cs_addr(&self, i: u32) -> String {
        std::fs::read_to_string(self.proc_dir(Proc::Chunkserver(i)).join("address"))
            .expect("chunkserver address file")
            .trim()
            .to_string()
    }

    /// The pid of a process, if it is running.
    pub fn pid(&self, p: Proc) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.proc_dir(p).join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn reap(&self) {
        let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
        ch.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// Sends SIGKILL to a process and waits until it is gone.
    pub fn kill9(&self, p: Proc) {
        let pid = self
            .pid(p)
            .unwrap_or_else(|| panic!("{p:?} is not running"));
        // SAFETY: kill(2) on a pid of this cluster.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        wait_until(
            &format!("{p:?} (pid {pid}) to die"),
            Duration::from_secs(10),
            || {
                self.reap();
                !alive(pid)
            },
        );
    }

    /// Starts a process again with the command it was first started with, and waits
    /// until it is ready (master answering, chunkserver registered, mount mounted).
    pub fn restart(&self, p: Proc) {
        self.restart_nowait(p);
        self.wait_ready(p);
    }

    /// Starts a process again with the command it was first started with,
    /// without waiting for it to be ready.
    pub fn restart_nowait(&self, p: Proc) {
        assert!(self.pid(p).is_none(), "{p:?} is still running");
        if p == Proc::Mount {
            force_unmount(&self.mnt);
        }
        let pdir = self.proc_dir(p);
        let cmd: serde_json::Value = serde_json::from_slice(
            &std::fs::read(pdir.join("command.json")).expect("command.json"),
        )
        .expect("command.json is JSON");
        let program = cmd["program"].as_str().expect("program").to_string();
        let args: Vec<OsString> = cmd["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| OsString::from(a.as_str().unwrap_or_default()))
            .collect();
        let pid = self.launch(&program, &args, &pdir.join("log"));
        std::fs::write(pdir.join("pid"), format!("{pid}\n")).expect("pid file");
    }

    /// Waits until a (re)started process is ready.
    pub fn wait_ready(&self, p: Proc) {
        match p {
            Proc::Master => self.wait_master_ready(Duration::from_secs(60)),
            Proc::Chunkserver(_) => {
                let addr = self.cs_addr(match p {
                    Proc::Chunkserver(i) => i,
                    _ => unreachable!(),
                });
                wait_until(
                    &format!("chunkserver {addr} to register"),
                    Duration::from_secs(60),
                    || {
                        self.status()
                            .map(|s| {
                                s.chunkservers
                                    .iter()
                                    .any(|c| c.address == addr && c.connected)
                            })
                            .unwrap_or(false)
                    },
                );
            }
            Proc::Metalogger(i) => {
                let id = self.ml_id(i);
                wait_until(
                    &format!("metalogger {id} to stream from the master"),
                    Duration::from_secs(60),
                    || {
                        self.status()
                            .map(|s| s.metaloggers.iter().any(|m| m.id == id && m.connected))
                            .unwrap_or(false)
                    },
                );
            }
            Proc::Mount => wait_until("the mount to come back", Duration::from_secs(60), || {
                assert!(
                    self.pid(p).is_some(),
                    "alces-mount exited: {}",
                    tail(&self.log(p), 30)
                );
                is_mount_point(&self.mnt)
            }),
        }
    }

    /// Starts a daemon through the launcher shell (see [`Launcher`]) and returns its pid:
    /// a process started from here while the test keeps files open on a mount
    /// whose daemon is dead could never finish its exec (each inherited file it
    /// closes is a FUSE flush that waits for a daemon).
    pub fn launch(&self, program: &str, args: &[OsString], log: &Path) -> i32 {
        use std::io::{BufRead, Write};
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut line = quote(program);
        for a in args {
            line.push(' ');
            line.push_str(&quote(&a.to_string_lossy()));
        }
        line.push_str(&format!(
            " >>{} 2>&1 </dev/null &\n",
            quote(&log.to_string_lossy())
        ));
        let mut l = self.launcher.lock().unwrap_or_else(|e| e.into_inner());
        l.stdin
            .write_all(line.as_bytes())
            .expect("write to the launcher shell");
        l.stdin.flush().expect("flush the launcher shell");
        let mut pid = String::new();
        l.stdout
            .read_line(&mut pid)
            .expect("read a pid from the launcher shell");
        pid.trim()
            .parse()
            .unwrap_or_else(|_| panic!("launcher shell printed '{pid}' instead of a pid"))
    }

    fn spawn_logged(&self, program: &str, args: &[OsString], log: &Path) -> Child {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open log");
        let f2 = f.try_clone().expect("clone log");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .process_group(0);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
    }

    /// Waits until the master answers Admin.Status; on timeout the panic message
    /// says whether the process is alive and what it is blocked on.
    pub fn wait_master_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status() {
                Ok(_) => return,
                Err(e) => format!("{}: {}", e.code(), e.message()),
            };
            if Instant::now() >= deadline {
                let pid = std::fs::read_to_string(self.proc_dir(Proc::Master).join("pid"))
                    .unwrap_or_default();
                let pid = pid.trim();
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_else(|_| "gone".into());
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                panic!(
                    "timed out after {timeout:?} waiting for the master to answer Status (last: {last}); pid {pid} stat: {stat} wchan: {wchan}; log:\n{}",
                    tail(&self.log(Proc::Master), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An authenticated channel to `addr` with the cluster secret.
    pub fn channel(&self, addr: &str) -> AuthChannel {
        self.channel_with_secret(addr, &self.secret())
    }

    /// An authenticated channel to `addr` presenting `secret`.
    pub fn channel_with_secret(&self, addr: &str, secret: &str) -> AuthChannel {
        let auth = ClientAuth::new(secret).expect("secret").with_tls(&self.tls);
        let _g = self.rt().enter();
        alces_proto::net::channel(addr, &auth).expect("channel")
    }

    /// Admin.Status of the master.
    pub fn status(&self) -> Result<pb::ClusterStatus, tonic::Status> {
        let ch = self.channel(&self.master);
        self.rt().block_on(async move {
            let mut c = pb::admin_client::AdminClient::new(ch);
            tokio::time::timeout(Duration::from_secs(5), c.status(pb::Empty {}))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("Status timed out"))?
                .map(|r| r.into_inner())
        })
    }

    /// Admin.FileInfo of a path from the filesystem root.
    pub fn file_info(&self, fs_path: &str) -> Result<pb::FileInfoReply, tonic::Status> {
        let ch = self.channel(&self.master);
        let path = fs_path.to_string();
        self.rt().block_on(async move {
            let mut c = pb::admin_client::AdminClient::new(ch);
            c.file_info(pb::FileInfoRequest { path })
                .await
                .map(|r| r.into_inner())
        })
    }

    /// A client-library session on the whole filesystem (for the library's
    /// volume calls: quotas, snapshots, trash, du, consistency check).
    pub fn client(&self) -> alces_client::Client {
        let secret: std::sync::Arc<str> = self.secret().into();
        let mut cfg = alces_client::ClientConfig::new(self.master.clone(), secret);
        cfg.client_name = "alces-e2e".into();
        cfg.tls = self.tls.clone();
        cfg.reconnect_timeout = Duration::from_secs(60);
        self.block_on(alces_client::Client::connect(cfg))
            .expect("client library session")
    }

    /// Runs the `alces` CLI with `--json` and parses its output; Err(stderr)
    /// when it fails.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value, String> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let o = self.cli(&all);
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        serde_json::from_slice(&o.stdout).map_err(|e| {
            format!(
                "alces {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    }

    /// Runs the `alces` CLI against this cluster.
    ///
    /// It is started by the launcher shell (forked before the test opened any
    /// file), not forked from the test: a child forked from the test would close
    /// the test's open files on the mount at exec, and each close is a FUSE flush
    /// that waits for the master — which a failover test has just killed.
    pub fn cli(&self, args: &[&str]) -> Output {
        use std::os::unix::process::ExitStatusExt;
        let n = CLI_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self.dir.join("cli-runs");
        std::fs::create_dir_all(&dir).expect("cli-runs dir");
        let (out, err, code) = (
            dir.join(format!("{n}.out")),
            dir.join(format!("{n}.err")),
            dir.join(format!("{n}.status")),
        );
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut line = String::from("env -u ALCES_SECRET");
        for (k, v) in self.env() {
            line.push(' ');
            line.push_str(&quote(&format!("{k}={v}")));
        }
        line.push(' ');
        line.push_str(&quote(&self.alces.to_string_lossy()));
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let tmp = code.with_extension("tmp");
        line = format!(
            "({line} >{} 2>{} </dev/null; echo $? >{}; mv {} {}) &\n",
            quote(&out.to_string_lossy()),
            quote(&err.to_string_lossy()),
            quote(&tmp.to_string_lossy()),
            quote(&tmp.to_string_lossy()),
            quote(&code.to_string_lossy()),
        );
        {
            use std::io::{BufRead, Write};
            let mut l = self.launcher.lock().unwrap_or_else(|e| e.into_inner());
            l.stdin
                .write_all(line.as_bytes())
                .expect("write to the launcher shell");
            l.stdin.flush().expect("flush the launcher shell");
            let mut pid = String::new();
            l.stdout
                .read_line(&mut pid)
                .expect("read a pid from the launcher shell");
        }
        wait_until(
            &format!("alces {args:?} to finish"),
            Duration::from_secs(300),
            || code.exists(),
        );
        let status: i32 = std::fs::read_to_string(&code)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(255);
        Output {
            status: std::process::ExitStatus::from_raw(status << 8),
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        }
    }

    /// Starts `alces-mount` with the cluster's master plus `extra` arguments at `path`
    /// (created if needed) and returns the child without waiting.
    pub fn spawn_mount(
        &self,
        path: &Path,
        secret_file: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Child {
        std::fs::create_dir_all(path).expect("mkdir mount point");
        let mut args: Vec<OsString> = vec![
            path.into(),
            "--master".into(),
            self.master.clone().into(),
            "--secret-file".into(),
            secret_file.into(),
        ];
        args.extend(self.tls_flags());
        args.extend(extra.iter().map(OsString::from));
        self.spawn_logged(&bin("alces-mount").to_string_lossy(), &args, log)
    }

    /// Mounts the filesystem once more at `<tmp>/<name>` with `extra` mount flags
    /// (e.g. `--subdir /a`, `--read-only`) and waits until it is mounted.
    pub fn mount_extra(&self, name: &str, extra: &[&str]) -> ExtraMount {
        let path = self.dir.parent().expect("parent").join(name);
        let log = self.dir.join(format!("{name}.log"));
        let mut child = self.spawn_mount(&path, &self.secret_file, extra, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("alces-mount {extra:?} exited ({st}): {}", tail(&log, 30));
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

    /// Every chunk file on chunkserver `i`'s disk.
    pub fn chunk_files(&self, i: u32) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.cs_data(i)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "chunk") {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Chunk files of chunk `id` on every chunkserver.
    pub fn chunk_copies(&self, id: u64) -> Vec<PathBuf> {
        let name = format!("{id:016x}.chunk");
        (1..=self.opts.chunkservers)
            .flat_map(|i| self.chunk_files(i))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == name))
            .collect()
    }

    /// The data directory of metalogger `i`.
    pub fn ml_data(&self, i: u32) -> PathBuf {
        self.proc_dir(Proc::Metalogger(i)).join("data")
    }

    /// The id of metalogger `i` (from its data directory).
    pub fn ml_id(&self, i: u32) -> String {
        std::fs::read_to_string(self.ml_data(i).join("metalogger_id"))
            .expect("metalogger_id file")
            .trim()
            .to_string()
    }

    /// The gRPC address of metalogger `i`'s own service.
    pub fn ml_addr(&self, i: u32) -> String {
        std::fs::read_to_string(self.proc_dir(Proc::Metalogger(i)).join("address"))
            .expect("metalogger address file")
            .trim()
            .to_string()
    }

    /// Metalogger.Status of metalogger `i`.
    pub fn ml_status(&self, i: u32) -> Result<pb::MetaloggerInfo, tonic::Status> {
        let ch = self.channel(&self.ml_addr(i));
        self.rt().block_on(async move {
            let mut c = pb::metalogger_client::MetaloggerClient::new(ch);
            tokio::time::timeout(Duration::from_secs(5), c.status(pb::Empty {}))
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("Status timed out"))?
                .map(|r| r.into_inner())
        })
    }

    /// Waits until metalogger `i` holds at least the master's current version.
    pub fn wait_ml_caught_up(&self, i: u32, timeout: Duration) {
        let want = self.status().expect("master status").metadata_version;
        wait_until(
            &format!("metalogger {i} to reach version {want}"),
            timeout,
            || {
                self.ml_status(i)
                    .map(|s| s.durable_version >= want)
                    .unwrap_or(false)
            },
        );
    }

    /// Runs `alces promote mlI` with `flags`; returns the CLI output.
    pub fn promote(&self, i: u32, flags: &[&str]) -> Output {
        let name = format!("ml{i}");
        let mut args = vec!["promote", name.as_str()];
        args.extend_from_slice(flags);
        self.cli(&args)
    }

    /// Prints the tail of every process log (on failure).
    pub fn dump_logs(&self) {
        let mut logs = vec![Proc::Master, Proc::Mount];
        logs.extend((1..=self.opts.chunkservers).map(Proc::Chunkserver));
        logs.extend((1..=self.opts.metaloggers).map(Proc::Metalogger));
        for p in logs {
            eprintln!("----- {p:?} log (tail) -----\n{}", tail(&self.log(p), 40));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = Command::new(&self.alces)
            .args(["local", "down", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        force_unmount(&self.mnt);
        let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
        for c in ch.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        if std::env::var_os("ALCES_E2E_KEEP").is_some() {
            if let Some(t) = self.tmp.take() {
                eprintln!("keeping {}", t.keep().display());
            }
        }
    }
}

/// Where the records of a changelog file end. The master writes records into
/// zero-filled space it allocates ahead (`[u32 length][u32 crc][payload]`
/// frames, never empty), so after a SIGKILL the file is longer than its
/// records; tests that tear or corrupt "the tail" work from here.
pub fn changelog_records_end(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut pos = 0usize;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        if len == 0 || pos + 8 + len as usize > data.len() {
            break;
        }
        pos += 8 + len as usize;
    }
    pos as u64
}

/// A C string of a path (panics on an interior NUL, which tests never build).
pub fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Deterministic pseudo-random bytes for `seed` (xorshift), to write and verify data.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` to `path`, fsyncs and closes it.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

/// The SHA-256 of a file via `sha256sum` (hex).
pub fn sha256(path: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    assert!(o.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
