//! `alces-mount`: mounts an Alces filesystem with FUSE and serves it in the
//! foreground until it is unmounted or receives SIGTERM/SIGINT; or serves a
//! FUSE connection it is handed (`--fuse-fd`), and continues one whose daemon
//! died (`--takeover`).

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use alces_client::fuse::{AlcesFs, FsOptions};
use alces_client::journal::Journal;
use alces_client::metrics::Metrics;
use alces_client::takeover::{self, SessionRecord, StateFile};
use alces_client::{Caller, Client, ClientConfig, ResumeSession};
use clap::Parser;
use fuser::{Config, MountOption, Session, SessionACL};

/// Mount an Alces filesystem.
#[derive(Parser, Debug)]
#[command(
    name = "alces-mount",
    version,
    about = "Mount an Alces filesystem (FUSE); runs in the foreground until unmounted or SIGTERM/SIGINT"
)]
struct Args {
    /// Directory to mount the filesystem on (must exist). With --fuse-fd, the
    /// place the caller mounted the descriptor (used in logs only).
    mountpoint: PathBuf,

    /// Master address host:port (re-resolved on every reconnect).
    #[arg(long, env = "ALCES_MASTER")]
    master: String,

    /// Subdirectory of the filesystem to mount instead of its root.
    #[arg(long, env = "ALCES_SUBDIR", default_value = "/")]
    subdir: String,

    /// Mount read-only: every modification fails with EROFS.
    #[arg(long, env = "ALCES_READ_ONLY")]
    read_only: bool,

    /// File holding the cluster secret (else the ALCES_SECRET environment variable).
    #[arg(long, env = "ALCES_SECRET_FILE")]
    secret_file: Option<PathBuf>,

    /// TLS to the master and the chunkservers.
    #[command(flatten)]
    tls: alces_proto::tls::TlsArgs,
    /// File holding a credential token (`alces credential issue`) to present
    /// instead of the cluster secret (also ALCES_CREDENTIAL, the token itself):
    /// the mount then sees only the credential's directory, with its rules.
    #[arg(long, env = "ALCES_CREDENTIAL_FILE")]
    credential_file: Option<PathBuf>,

    /// Let users other than the mounting one use the mount (non-root mounting
    /// needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long, env = "ALCES_ALLOW_OTHER")]
    allow_other: bool,

    /// Cache no names and attributes under leases from the master (see
    /// client/ARCHITECTURE.md, "Leases"): the kernel caches them for the
    /// attribute and entry timeouts instead, which another mount's changes do
    /// not shorten.
    #[arg(long, env = "ALCES_NO_LEASES")]
    no_leases: bool,

    /// Seconds the kernel may cache file attributes (when leases are not used).
    #[arg(long, env = "ALCES_ATTR_TIMEOUT", default_value_t = 1.0, value_parser = parse_secs)]
    attr_timeout: f64,

    /// Seconds the kernel may cache name lookups (when leases are not used).
    #[arg(long, env = "ALCES_ENTRY_TIMEOUT", default_value_t = 1.0, value_parser = parse_secs)]
    entry_timeout: f64,

    /// Address to serve /metrics, /healthz and /readyz on (off when not given).
    #[arg(long, env = "ALCES_MOUNT_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,

    /// Log in JSON instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    log_json: bool,

    /// Serve this /dev/fuse descriptor instead of mounting: the caller opened
    /// /dev/fuse and mounted it (mount(2) with fd=N) and keeps a duplicate, so
    /// the connection outlives this process. Mount options are the caller's.
    #[arg(long, value_name = "N")]
    fuse_fd: Option<i32>,

    /// Descriptor of the connection's state file (a memfd the caller keeps with
    /// the FUSE descriptor): this daemon records the session there for a later
    /// --takeover and journals every write it acknowledges until it is flushed.
    #[arg(long, value_name = "N", requires = "fuse_fd")]
    state_fd: Option<i32>,

    /// Continue the connection of --fuse-fd whose daemon died: replay the
    /// journalled writes of --state-fd, answer the kernel's INIT again from the
    /// recorded parameters, and have the kernel resend every request the dead
    /// daemon had read but not answered (Linux 6.9 or later).
    #[arg(long, requires_all = ["fuse_fd", "state_fd"])]
    takeover: bool,

    /// Seconds a takeover keeps retrying the replay of the journalled writes
    /// (while no copy of a chunk can be written, say) before it gives up the
    /// files still failing: they are marked (user.alces.lost-writes) and each
    /// fsync or close of a descriptor opened before the takeover fails with EIO.
    #[arg(long, env = "ALCES_REPLAY_TIMEOUT", default_value_t = 120.0, value_parser = parse_secs)]
    replay_timeout: f64,
}

fn parse_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 1 or 0.5)"))?;
    if !(0.0..=86400.0).contains(&v) {
        return Err(format!("{v} seconds is out of range: use 0 to 86400"));
    }
    Ok(v)
}

/// Threads reading FUSE requests.
const FUSE_THREADS: usize = 8;

/// How long a daemon continuing a dead one's session keeps the master's
/// cached outcomes of every request (the kernel resends the dead daemon's
/// unanswered requests as soon as this daemon serves).
const RESEND_WINDOW: Duration = Duration::from_secs(60);

/// How long a graceful hand-over (SIGTERM of a handed-over connection's
/// daemon) waits for the requests being served to finish.
const HANDOVER_WAIT: Duration = Duration::from_secs(30);

/// How long a detached but still used mount is served after SIGTERM/SIGINT.
const BUSY_GRACE: Duration = Duration::from_secs(10);

/// Detaches a busy mount (`umount -l`), as root directly, else with fusermount3.
fn lazy_unmount(mountpoint: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("mount point path contains a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg("--")
        .arg(mountpoint)
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "fusermount3 -u -z exited with {st}"
        )))
    }
}

fn user_allow_other() -> bool {
    std::fs::read_to_string("/etc/fuse.conf")
        .map(|s| s.lines().any(|l| l.trim() == "user_allow_other"))
        .unwrap_or(false)
}

fn main() -> ExitCode {
    let args = Args::parse();
    alces_telemetry::init_logging(args.log_json);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("alces-mount: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    alces_proto::net::validate_addr(&args.master).map_err(|e| anyhow::anyhow!("--master: {e}"))?;
    let handed = Handed::take(&args)?;
    if handed.is_none() {
        let meta = std::fs::metadata(&args.mountpoint).map_err(|e| {
            anyhow::anyhow!(
                "mount point {} is not usable: {e}; create the directory first",
                args.mountpoint.display()
            )
        })?;
        if !meta.is_dir() {
            anyhow::bail!(
                "mount point {} is not a directory",
                args.mountpoint.display()
            );
        }
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if args.allow_other && !root && !user_allow_other() {
        anyhow::bail!(
            "--allow-other needs 'user_allow_other' in /etc/fuse.conf when not mounting as root"
        );
    }
    let secret = alces_proto::auth::load_client_token(
        args.credential_file.as_deref(),
        args.secret_file.as_deref(),
    )?;
    let tls = args.tls.load(alces_proto::tls::Role::Client)?;
    let subdir = if args.subdir.starts_with('/') {
        args.subdir.clone()
    } else {
        format!("/{}", args.subdir)
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("alces-io")
        .build()?;

    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::new(&mut registry);
    let health = alces_telemetry::Health::new(registry);
    if let Some(addr) = args.http_listen {
        let bound = rt.block_on(alces_telemetry::serve_http(addr, health.clone()))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }

    let mut config = ClientConfig::new(args.master.clone(), secret);
    config.subdir = subdir.clone();
    config.tls = tls;
    config.read_only = args.read_only;
    config.client_name = format!("alces-mount {}", args.mountpoint.display());
    config.dir_attr_ttl = Duration::from_secs_f64(args.attr_timeout);
    config.leases = !args.no_leases;
    // A takeover continues the dead daemon's session: its open files (an
    // unlinked one included), its file locks and its reply cache stay.
    let resume = handed
        .as_ref()
        .and_then(|h| h.previous.as_ref())
        .filter(|p| p.master_session != 0 && !p.master_secret.is_empty())
        .map(|p| ResumeSession {
            session_id: p.master_session,
            secret: p.master_secret.clone(),
        });
    let (client, inherited) = rt
        .block_on(Client::connect_continuing(config, resume.clone()))
        .map_err(|e| anyhow::anyhow!("cannot open a session with master {}: {e}", args.master))?;
    if resume.is_some() {
        if inherited.continued {
            // The kernel resends what the dead daemon left unanswered: keep
            // the outcomes the master cached for it until they are asked.
            client.hold_acks(RESEND_WINDOW);
            tracing::info!(
                session = client.session_id(),
                opens = inherited.open_inodes.len(),
                locks = inherited.held_locks.len(),
                "continuing the previous daemon's session"
            );
        } else {
            tracing::warn!(
                session = client.session_id(),
                "the previous daemon's session had ended: a new session; its open files are opened again when used, files unlinked while open are gone, and its locks were released"
            );
        }
    }

    let generation = handed
        .as_ref()
        .and_then(|h| h.previous.as_ref())
        .map_or(0, |p| p.generation + 1);
    let opts = FsOptions {
        attr_ttl: Duration::from_secs_f64(args.attr_timeout),
        entry_ttl: Duration::from_secs_f64(args.entry_timeout),
        generation,
    };
    let mut fs = AlcesFs::new(client.clone(), rt.handle().clone(), opts, Some(metrics));
    let kernel_init = fs.kernel_init();
    let notifier_slot = fs.notifier_slot();
    if let Some(state) = handed.as_ref().and_then(|h| h.state.as_ref()) {
        // Writes the dead daemon acknowledged but had not flushed: made durable
        // before anything else is served (the kernel's resent fsyncs included).
        // A dead daemon of an earlier version recorded no secret: its
        // session still holds its write sessions; end it, so the replay (and
        // every later write) can write those chunks. (A continued session's
        // write sessions were ended by the master at the resume.)
        if let Some(prev) = handed.as_ref().and_then(|h| h.previous.as_ref()) {
            if prev.master_session != client.session_id() {
                if let Err(e) = rt.block_on(client.close_dead_session(prev.master_session)) {
                    tracing::warn!(error = %e, "closing the previous daemon's session (it expires by itself)");
                }
            }
        }
        let records = Journal::scan(state.file())
            .map_err(|e| anyhow::anyhow!("reading the write journal: {e}"))?;
        if !records.is_empty() {
            let n = records.len();
            let started = std::time::Instant::now();
            let done = rt.block_on(alces_client::replay::replay(
                &client,
                &records,
                Duration::from_secs_f64(args.replay_timeout),
            ));
            tracing::info!(records = n, files = done.files, gone = done.gone.len(), lost = done.lost.len(), elapsed = ?started.elapsed(), "replayed the journalled writes of the previous daemon");
            for l in &done.lost {
                let root = Caller::new(0, 0, 0);
                let mark = l.describe();
                if let Err(e) = rt.block_on(client.setxattr(
                    l.inode,
                    alces_client::replay::LOST_WRITES_XATTR,
                    mark.as_bytes(),
                    0,
                    &root,
                )) {
                    tracing::error!(inode = l.inode, error = %e, "cannot mark a file whose journalled writes were lost");
                }
            }
            fs = fs.with_lost_writes(done.lost.iter().map(|l| l.inode));
        }
        let j = Arc::new(
            Journal::new(state.file().try_clone()?)
                .map_err(|e| anyhow::anyhow!("starting the write journal: {e}"))?,
        );
        fs = fs.with_journal(j);
    }

    // Taken last: the builders above need the only reference to the state.
    let drainer = fs.drainer();

    let mut fuse_config = Config::default();
    fuse_config.mount_options = vec![
        MountOption::FSName(format!("alces:{}{}", args.master, subdir)),
        MountOption::Subtype("alces".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if args.read_only {
        fuse_config.mount_options.push(MountOption::RO);
    }
    fuse_config.acl = if args.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    // Metadata operations run to the end on the FUSE thread that read them (each
    // thread has its own master connection), so the thread count bounds how many
    // run at once; data operations are handed to the shared runtime.
    fuse_config.n_threads = Some(FUSE_THREADS);

    // The handed descriptors stay open at their numbers while this daemon
    // runs: a restarted keeper takes its copies back from them.
    let mut session = match &handed {
        None => Session::new(fs, &args.mountpoint, &fuse_config)
            .map_err(|e| anyhow::anyhow!("cannot mount on {}: {e}", args.mountpoint.display()))?,
        Some(h) => h.session(&client, fs, &fuse_config, &kernel_init)?,
    };
    let _ = notifier_slot.set(session.notifier());
    tracing::info!(
        mountpoint = %args.mountpoint.display(),
        master = %args.master,
        subdir = %subdir,
        session = client.session_id(),
        "mounted"
    );
    health.set_ready(true);

    let mut unmounter = session.unmount_callable();
    let mountpoint = args.mountpoint.clone();
    let closing = client.clone();
    let handed_over = args.fuse_fd.is_some();
    rt.spawn(async move {
        alces_telemetry::shutdown_signal().await;
        if handed_over {
            // The connection belongs to whoever handed it over: a graceful
            // hand-over. Requests read from now on stay unanswered (the
            // kernel resends them to the next daemon, which runs them once);
            // those being served finish; buffered writes are flushed and the
            // journal emptied; the master session stays open for the next
            // daemon (--takeover) to continue. The connection stays mounted.
            let started = std::time::Instant::now();
            tracing::info!(mountpoint = %mountpoint.display(), "handing over: serving no new request; the connection stays for the next daemon");
            let done = drainer.hand_over(HANDOVER_WAIT).await;
            tracing::info!(finished = done.finished, flushed = done.flushed, elapsed = ?started.elapsed(), "handed over; exiting without unmounting");
            std::process::exit(0);
        }
        tracing::info!(mountpoint = %mountpoint.display(), "unmounting");
        let mp = mountpoint.clone();
        let r = tokio::task::spawn_blocking(move || match unmounter.unmount() {
            Ok(()) => Ok(()),
            // Files are still open: detach the mount now; the session ends when
            // the last of them is closed.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => lazy_unmount(&mp),
            Err(e) => Err(e),
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "unmount failed; run fusermount3 -u on the mount point")
            }
            Err(e) => tracing::error!(error = %e, "unmount task failed"),
        }
        // Do not wait forever for busy users of a detached mount.
        tokio::time::sleep(BUSY_GRACE).await;
        tracing::warn!(
            "the mount is still in use {BUSY_GRACE:?} after the signal; flushing and exiting"
        );
        if let Err(e) = closing.close().await {
            tracing::warn!(error = %e, "closing the session");
        }
        std::process::exit(0);
    });

    let served = session.run();
    drop(handed);
    health.set_ready(false);
    let closed = rt.block_on(client.close());
    rt.shutdown_timeout(Duration::from_secs(5));
    served.map_err(|e| anyhow::anyhow!("FUSE session ended with an error: {e}"))?;
    if let Err(e) = closed {
        tracing::warn!(error = %e, "closing the session");
    }
    tracing::info!("unmounted");
    Ok(())
}

/// A FUSE connection handed to this daemon (`--fuse-fd`, `--state-fd`).
struct Handed {
    fuse: OwnedFd,
    state: Option<StateFile>,
    /// The session record of the daemon this one takes over from.
    previous: Option<SessionRecord>,
}

impl Handed {
    fn take(args: &Args) -> anyhow::Result<Option<Self>> {
        let Some(n) = args.fuse_fd else {
            return Ok(None);
        };
        let fuse =
            takeover::take_fd("--fuse-fd", n).map_err(|e| anyhow::anyhow!("--fuse-fd: {e}"))?;
        takeover::check_fuse_device(&fuse).map_err(|e| anyhow::anyhow!("--fuse-fd: {e}"))?;
        let state = args
            .state_fd
            .map(|n| takeover::take_fd("--state-fd", n).and_then(StateFile::new))
            .transpose()
            .map_err(|e| anyhow::anyhow!("--state-fd: {e}"))?;
        let recorded = match &state {
            Some(s) => s
                .read_record()
                .map_err(|e| anyhow::anyhow!("--state-fd: {e}"))?,
            None => None,
        };
        let previous = match (args.takeover, recorded) {
            (true, None) => anyhow::bail!(
                "--takeover: the state file holds no session record, so the daemon that served this connection recorded nothing to continue from (it needs --state-fd); unmount and mount again instead"
            ),
            (true, Some(r)) => {
                tracing::info!(
                    pid = r.pid,
                    generation = r.generation,
                    version = %r.version,
                    abi = format!("{}.{}", r.init.major, r.init.minor),
                    "taking over the FUSE connection"
                );
                Some(r)
            }
            (false, Some(r)) => anyhow::bail!(
                "--state-fd already holds the session record of daemon pid {} (generation {}): pass --takeover to continue that connection, or an empty state file for a new one",
                r.pid,
                r.generation
            ),
            (false, None) => None,
        };
        Ok(Some(Self {
            fuse,
            state,
            previous,
        }))
    }

    /// The FUSE session over the handed descriptor: a new connection answers
    /// the kernel's INIT; a takeover answers a synthetic one, then continues
    /// the real connection and has the kernel resend what the dead daemon left.
    fn session(
        &self,
        client: &Client,
        fs: AlcesFs,
        config: &Config,
        kernel_init: &Arc<parking_lot::Mutex<Option<takeover::KernelInit>>>,
    ) -> anyhow::Result<Session<AlcesFs>> {
        let acl = config.acl;
        let (session, init) = match &self.previous {
            None => {
                let fuse = self.fuse.try_clone()?;
                let s = Session::from_fd(fs, fuse, acl, config.clone())
                    .map_err(|e| anyhow::anyhow!("FUSE handshake on --fuse-fd failed: {e}; was the descriptor mounted (mount(2) with fd=N) and not served before?"))?;
                let init = (*kernel_init.lock())
                    .ok_or_else(|| anyhow::anyhow!("the FUSE handshake ended without an INIT"))?;
                (s, init)
            }
            Some(prev) => {
                let (ours, theirs) = takeover::init_channel(&prev.init)?;
                let raw = ours.as_raw_fd();
                let s = Session::from_fd(fs, ours, acl, config.clone())
                    .map_err(|e| anyhow::anyhow!("answering the recorded INIT failed: {e}"))?;
                drop(theirs);
                takeover::install_fuse_fd(&self.fuse, raw)
                    .map_err(|e| anyhow::anyhow!("continuing the FUSE connection: {e}"))?;
                if let Err(e) = takeover::notify_resend(raw) {
                    tracing::warn!(error = %e, "requests the previous daemon had read stay unanswered");
                }
                (s, prev.init)
            }
        };
        if let Some(state) = &self.state {
            let generation = self.previous.as_ref().map_or(0, |p| p.generation + 1);
            state
                .write_record(&SessionRecord {
                    init,
                    generation,
                    pid: std::process::id(),
                    master_session: client.session_id(),
                    master_secret: client.session_secret(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                })
                .map_err(|e| anyhow::anyhow!("recording the session in --state-fd: {e}"))?;
        }
        Ok(session)
    }
}
