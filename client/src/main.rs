//! `alces-mount`: mounts an Alces filesystem with FUSE and serves it in the
//! foreground until it is unmounted or receives SIGTERM/SIGINT.

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use alces_client::fuse::{AlcesFs, FsOptions};
use alces_client::metrics::Metrics;
use alces_client::{Client, ClientConfig};
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
    /// Directory to mount the filesystem on (must exist).
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

    /// Let users other than the mounting one use the mount (non-root mounting
    /// needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long, env = "ALCES_ALLOW_OTHER")]
    allow_other: bool,

    /// Seconds the kernel may cache file attributes.
    #[arg(long, env = "ALCES_ATTR_TIMEOUT", default_value_t = 1.0, value_parser = parse_secs)]
    attr_timeout: f64,

    /// Seconds the kernel may cache name lookups.
    #[arg(long, env = "ALCES_ENTRY_TIMEOUT", default_value_t = 1.0, value_parser = parse_secs)]
    entry_timeout: f64,

    /// Address to serve /metrics, /healthz and /readyz on (off when not given).
    #[arg(long, env = "ALCES_MOUNT_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,

    /// Log in JSON instead of human-readable text.
    #[arg(long, env = "ALCES_LOG_JSON")]
    log_json: bool,
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
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if args.allow_other && !root && !user_allow_other() {
        anyhow::bail!(
            "--allow-other needs 'user_allow_other' in /etc/fuse.conf when not mounting as root"
        );
    }
    let secret = alces_proto::auth::load_secret(args.secret_file.as_deref())?;
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
    config.read_only = args.read_only;
    config.client_name = format!("alces-mount {}", args.mountpoint.display());
    config.dir_attr_ttl = Duration::from_secs_f64(args.attr_timeout);
    let client = rt
        .block_on(Client::connect(config))
        .map_err(|e| anyhow::anyhow!("cannot open a session with master {}: {e}", args.master))?;

    let opts = FsOptions {
        attr_ttl: Duration::from_secs_f64(args.attr_timeout),
        entry_ttl: Duration::from_secs_f64(args.entry_timeout),
    };
    let fs = AlcesFs::new(client.clone(), rt.handle().clone(), opts, Some(metrics));

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

    let mut session = Session::new(fs, &args.mountpoint, &fuse_config)
        .map_err(|e| anyhow::anyhow!("cannot mount on {}: {e}", args.mountpoint.display()))?;
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
    rt.spawn(async move {
        alces_telemetry::shutdown_signal().await;
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
