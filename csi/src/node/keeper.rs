//! The keeper of FUSE connections: opens `/dev/fuse`, mounts it (`mount(2)`
//! with `fd=N`), holds a duplicate of the descriptor and of the connection's
//! state memfd, runs `alces-mount --fuse-fd 3 --state-fd 4` on them, and when
//! the daemon dies starts another with `--takeover` on the same connection.
//!
//! While some process holds the FUSE descriptor, a dead daemon only pauses the
//! mount: requests wait in the kernel, and the next daemon continues them
//! (`alces_client::takeover`). A restarted keeper gets the descriptors back
//! from the running daemon (`pidfd_getfd`, [`recover_fds`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Descriptor number of the FUSE connection in the daemon.
pub const DAEMON_FUSE_FD: RawFd = 3;
/// Descriptor number of the state memfd in the daemon.
pub const DAEMON_STATE_FD: RawFd = 4;

fn cstr(s: &[u8]) -> io::Result<std::ffi::CString> {
    std::ffi::CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

/// Opens `/dev/fuse` for a new connection.
pub fn open_fuse() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?;
    Ok(OwnedFd::from(f))
}

/// Mounts the FUSE connection `fuse` on `target` (type `fuse.alces`, source
/// `source`), with `default_permissions` (the kernel checks permissions),
/// `allow_other` when asked, `nosuid,nodev,noatime` and `ro` for read-only.
pub fn mount_fuse(
    fuse: &OwnedFd,
    target: &Path,
    source: &str,
    read_only: bool,
    allow_other: bool,
) -> io::Result<()> {
    let mut data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions",
        fuse.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    let (src, tgt, ty, dat) = (
        cstr(source.as_bytes())?,
        cstr(target.as_os_str().as_bytes())?,
        cstr(b"fuse.alces")?,
        cstr(data.as_bytes())?,
    );
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            ty.as_ptr(),
            flags,
            dat.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("mounting FUSE on {}: {e}", target.display()),
        ));
    }
    Ok(())
}

/// A new, empty state memfd for a connection.
pub fn new_state(name: &str) -> io::Result<OwnedFd> {
    let n = cstr(name.as_bytes())?;
    // SAFETY: valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(n.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Duplicates descriptor `target` of process `pid` into this process (the
/// same open file: for `/dev/fuse`, the same connection).
pub fn pidfd_getfd(pid: u32, target: RawFd) -> io::Result<OwnedFd> {
    let pidfd = pidfd_open(pid)?;
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: plain fcntl on our new descriptor.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// Whether process `pid` is an `alces-mount` serving `mountpoint` (its first
/// argument, as [`spawn`] starts it): a pid the system gave to another process
/// since a record was written is never taken for the volume's daemon, so a
/// keeper never takes another volume's connection.
pub fn is_daemon_of(pid: u32, mountpoint: &Path) -> bool {
    let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmd.split(|&b| b == 0);
    let exe = args.next().unwrap_or_default();
    let first = args.next().unwrap_or_default();
    Path::new(std::ffi::OsStr::from_bytes(exe))
        .file_name()
        .is_some_and(|n| n == "alces-mount")
        && first == mountpoint.as_os_str().as_bytes()
}

/// The FUSE descriptor and state memfd of a running daemon (a restarted
/// keeper takes its copies back).
pub fn recover_fds(pid: u32) -> io::Result<(OwnedFd, OwnedFd)> {
    let fuse = pidfd_getfd(pid, DAEMON_FUSE_FD)?;
    alces_client::takeover::check_fuse_device(&fuse)?;
    let state = pidfd_getfd(pid, DAEMON_STATE_FD)?;
    Ok((fuse, state))
}

/// What a keeper notes in the connection's state memfd (after the daemon's
/// session record, [`alces_client::takeover::KEEPER_NOTE`]) so that any later
/// keeper holding the memfd can start a daemon: held in memory only, never on
/// disk.
#[derive(Clone, PartialEq, Eq)]
pub struct KeeperNote {
    /// Master address.
    pub master: String,
    /// The volume's directory.
    pub subdir: String,
    /// Cluster secret, or the volume's credential token.
    pub secret: String,
}

const NOTE_MAGIC: &str = "alces-keeper-note 1";

/// Shows everything but the secret, so a note in a log or a panic message
/// does not leak the cluster secret or a volume's credential.
impl std::fmt::Debug for KeeperNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeeperNote")
            .field("master", &self.master)
            .field("subdir", &self.subdir)
            .field(
                "secret",
                &format_args!("<{} bytes, redacted>", self.secret.len()),
            )
            .finish()
    }
}

impl KeeperNote {
    /// Writes the note into the state memfd `state`.
    pub fn write(&self, state: &OwnedFd) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!(
            "{NOTE_MAGIC}\nmaster {}\nsubdir {}\nsecret {}\n",
            self.master, self.subdir, self.secret
        );
        let room =
            (alces_client::takeover::STATE_BYTES - alces_client::takeover::KEEPER_NOTE) as usize;
        if text.len() > room
            || [&self.master, &self.subdir, &self.secret]
                .iter()
                .any(|v| v.contains('\n'))
        {
            return Err(io::Error::other("the keeper note does not fit"));
        }
        let mut buf = text.into_bytes();
        buf.resize(room, 0);
        let f = std::fs::File::from(state.try_clone()?);
        f.write_all_at(&buf, alces_client::takeover::KEEPER_NOTE)
    }

    /// Reads the note from the state memfd `state`.
    pub fn read(state: &OwnedFd) -> io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let room =
            (alces_client::takeover::STATE_BYTES - alces_client::takeover::KEEPER_NOTE) as usize;
        let mut buf = vec![0u8; room];
        let f = std::fs::File::from(state.try_clone()?);
        let n = f.read_at(&mut buf, alces_client::takeover::KEEPER_NOTE)?;
        let end = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.lines();
        if lines.next() != Some(NOTE_MAGIC) {
            return Err(io::Error::other("the state memfd holds no keeper note"));
        }
        let mut note = Self {
            master: String::new(),
            subdir: String::new(),
            secret: String::new(),
        };
        for l in lines {
            match l.split_once(' ') {
                Some(("master", v)) => note.master = v.into(),
                Some(("subdir", v)) => note.subdir = v.into(),
                Some(("secret", v)) => note.secret = v.into(),
                _ => {}
            }
        }
        Ok(note)
    }
}

/// How to start a volume's daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The `alces-mount` binary.
    pub bin: PathBuf,
    /// Where the connection is mounted (for the daemon's logs).
    pub mountpoint: PathBuf,
    /// Master address.
    pub master: String,
    /// The volume's directory.
    pub subdir: String,
    /// Read-only session.
    pub read_only: bool,
    /// Cluster secret or the volume's credential token (given in the
    /// environment, `ALCES_SECRET` or `ALCES_CREDENTIAL`). A credential is
    /// rooted at the volume's directory, so its daemon mounts `/` of it.
    pub secret: Arc<str>,
    /// TLS flags of the daemon.
    pub tls_flags: Vec<std::ffi::OsString>,
    /// The daemon's log file (appended).
    pub log: PathBuf,
}

/// Starts a daemon serving `fuse` with state `state` (`--takeover` when a
/// daemon served it before), in a session of its own.
pub fn spawn(
    spec: &DaemonSpec,
    fuse: &OwnedFd,
    state: &OwnedFd,
    takeover: bool,
) -> io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let log2 = log.try_clone()?;
    let credential = alces_proto::auth::parse_credential(&spec.secret).is_some();
    let (env, other, subdir) = if credential {
        (
            alces_proto::auth::CREDENTIAL_ENV,
            alces_proto::auth::SECRET_ENV,
            "/",
        )
    } else {
        (
            alces_proto::auth::SECRET_ENV,
            alces_proto::auth::CREDENTIAL_ENV,
            spec.subdir.as_str(),
        )
    };
    let mut cmd = Command::new(&spec.bin);
    cmd.arg(&spec.mountpoint)
        .arg("--master")
        .arg(&spec.master)
        .arg("--subdir")
        .arg(subdir)
        .arg("--allow-other")
        .arg("--fuse-fd")
        .arg(DAEMON_FUSE_FD.to_string())
        .arg("--state-fd")
        .arg(DAEMON_STATE_FD.to_string())
        .env_remove("ALCES_SECRET_FILE")
        .env_remove("ALCES_CREDENTIAL_FILE")
        .env_remove(other)
        .env(env, &*spec.secret)
        .args(&spec.tls_flags)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if spec.read_only {
        cmd.arg("--read-only");
    }
    if takeover {
        cmd.arg("--takeover");
    }
    let (f, s) = (fuse.as_raw_fd(), state.as_raw_fd());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, setsid) in the child.
    unsafe {
        cmd.pre_exec(move || {
            // Move both out of the way first: either may be 3 or 4 already.
            let f2 = libc::fcntl(f, libc::F_DUPFD_CLOEXEC, 10);
            let s2 = libc::fcntl(s, libc::F_DUPFD_CLOEXEC, 10);
            if f2 < 0
                || s2 < 0
                || libc::dup2(f2, DAEMON_FUSE_FD) < 0
                || libc::dup2(s2, DAEMON_STATE_FD) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // A session of its own: not in the keeper's process group.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// One kept connection: its descriptors, its daemon, and the supervisor that
/// restarts the daemon.
#[derive(Debug)]
pub struct Kept {
    fuse: OwnedFd,
    state: OwnedFd,
    spec: DaemonSpec,
    pid: AtomicU32,
    child: Mutex<Option<Child>>,
    stop: AtomicBool,
}

/// What a supervisor asks its owner.
pub struct Hooks {
    /// Whether the connection is still mounted (else nothing is taken over).
    pub still_mounted: Box<dyn Fn() -> bool + Send>,
    /// The daemon the volume's record names now.
    pub current: Box<dyn Fn() -> Option<u32> + Send>,
    /// Told of a takeover: the new daemon and the time since the old one died.
    pub restarted: Box<dyn Fn(u32, Duration) + Send>,
    /// A file locked (flock) while a takeover is decided and recorded.
    pub lock_path: PathBuf,
}

/// An exclusive `flock` of a file, held until dropped.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

/// Takes an exclusive `flock` of `path` (created if missing), waiting for it.
pub fn lock_file(path: &Path) -> io::Result<FileLock> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    // SAFETY: flock on an open file; blocks until granted.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(FileLock(f))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// How long the supervisor sleeps between checks of the stop flag.
const POLL: Duration = Duration::from_millis(200);

impl Kept {
    /// Keeps `fuse` and `state`, served by daemon `pid` (`child` when this
    /// process started it).
    pub fn new(
        fuse: OwnedFd,
        state: OwnedFd,
        spec: DaemonSpec,
        pid: u32,
        child: Option<Child>,
    ) -> Arc<Self> {
        Arc::new(Self {
            fuse,
            state,
            spec,
            pid: AtomicU32::new(pid),
            child: Mutex::new(child),
            stop: AtomicBool::new(false),
        })
    }

    /// The daemon serving the connection now.
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    /// Stops supervising (before an unmount ends the daemon).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Supervises the daemon on a thread of its own: when it ends while the
    /// connection is kept and `hooks.still_mounted()` says the mount is there,
    /// a new daemon takes over, under an exclusive lock of `hooks.lock_path`
    /// (another keeper of the same connection, e.g. the node plugin of an
    /// upgrade, may be watching too): when `hooks.current()` names another live
    /// daemon, that one took over already and is watched instead;
    /// `hooks.restarted(pid, pause)` is told of every takeover, under the lock.
    pub fn supervise(self: &Arc<Self>, hooks: Hooks) {
        let k = self.clone();
        let _ = std::thread::Builder::new()
            .name("alces-keeper".into())
            .spawn(move || k.run(hooks));
    }

    fn wait_exit(&self, pid: u32) {
        let Ok(pidfd) = pidfd_open(pid) else {
            return; // already gone
        };
        while !self.stop.load(Ordering::SeqCst) {
            let mut p = libc::pollfd {
                fd: pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut p, 1, POLL.as_millis() as i32) };
            if n > 0 {
                return;
            }
        }
    }

    fn run(self: Arc<Self>, hooks: Hooks) {
        let mut backoff = Duration::from_millis(0);
        loop {
            let pid = self.pid();
            let started = Instant::now();
            self.wait_exit(pid);
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let died = Instant::now();
            if let Some(mut c) = self.child.lock().take() {
                match c.wait() {
                    Ok(st) => {
                        tracing::warn!(pid, status = %st, "the mount daemon ended; taking over its connection")
                    }
                    Err(e) => {
                        tracing::warn!(pid, error = %e, "the mount daemon ended; taking over its connection")
                    }
                }
            } else {
                tracing::warn!(pid, "the mount daemon ended; taking over its connection");
            }
            if !(hooks.still_mounted)() {
                tracing::info!("the mount is gone; nothing to take over");
                return;
            }
            let _lock = match lock_file(&hooks.lock_path) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, path = %hooks.lock_path.display(), "cannot lock the volume for its takeover");
                    None
                }
            };
            if let Some(other) = (hooks.current)().filter(|&p| p != pid && alive(p)) {
                tracing::info!(
                    pid = other,
                    "another keeper's daemon took the connection over; watching it"
                );
                self.pid.store(other, Ordering::SeqCst);
                continue;
            }
            // A daemon that dies at once again and again is restarted less often.
            backoff = if started.elapsed() < Duration::from_secs(2) {
                (backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10))
            } else {
                Duration::ZERO
            };
            std::thread::sleep(backoff);
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return;
                }
                match spawn(&self.spec, &self.fuse, &self.state, true) {
                    Ok(c) => {
                        let npid = c.id();
                        self.pid.store(npid, Ordering::SeqCst);
                        *self.child.lock() = Some(c);
                        tracing::info!(pid = npid, "a new mount daemon took over the connection");
                        (hooks.restarted)(npid, died.elapsed());
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a mount daemon; retrying in 1 s");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_state_and_a_fd_of_another_process() {
        let st = new_state("alces-test").unwrap();
        let f = std::fs::File::from(st);
        assert!(f.metadata().unwrap().is_file());
        // Our own descriptor, taken again through pidfd_getfd.
        let me = std::process::id();
        let dup = pidfd_getfd(me, f.as_raw_fd()).unwrap();
        assert!(std::fs::File::from(dup).metadata().unwrap().is_file());
        let state = new_state("note").unwrap();
        let note = KeeperNote {
            master: "m:9421".into(),
            subdir: "/csi/volumes/v".into(),
            secret: "s3cret".into(),
        };
        assert!(KeeperNote::read(&state).is_err());
        note.write(&state).unwrap();
        assert_eq!(KeeperNote::read(&state).unwrap(), note);
        let shown = format!("{note:?}");
        assert!(!shown.contains("s3cret"), "the secret is shown: {shown}");
        assert!(shown.contains("/csi/volumes/v"), "{shown}");
        // This test process is no mount daemon of any path.
        assert!(!is_daemon_of(me, Path::new("/mnt")));
        assert!(!is_daemon_of(u32::MAX, Path::new("/mnt")));
        // A process's non-FUSE descriptor is refused as a FUSE connection.
        let e = alces_client::takeover::check_fuse_device(&OwnedFd::from(f)).unwrap_err();
        assert!(e.to_string().contains("not /dev/fuse"), "{e}");
    }
}
