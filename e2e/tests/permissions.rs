//! The master's permission checks and revocations on a real cluster: a
//! root-squashed FUSE mount cannot read another user's 0600 file although
//! its kernel lets root through (the master refuses), users keep their own
//! and their supplementary groups' access; a revoked credential's open file
//! stops reading, and a chunk access the master signed before the
//! revocation is refused by the chunkservers within seconds, also by a
//! chunkserver that was down during the revocation and came back after a
//! master restart; a root-squashed mount's daemon taken over after a SIGKILL
//! keeps a user's open descriptor of a 0600 file (chmodded 000 since) working.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alces_e2e::{Cluster, Proc};
use alces_proto::pb;

fn issue(c: &Cluster, name: &str, extra: &[&str]) -> (u64, PathBuf) {
    common::issue_credential(c, name, extra)
}

fn chown(p: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `cat path` as uid/gid with supplementary `groups`: its output, or stderr.
/// Run from the file's directory (the directories above the mount point
/// belong to root and may not be searchable by others).
fn cat_as(uid: u32, gid: u32, groups: &[u32], path: &Path) -> Result<Vec<u8>, String> {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={}", groups.join(","))
    };
    let o = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg("cat")
        .arg(path.file_name().unwrap())
        .current_dir(path.parent().unwrap())
        .output()
        .expect("setpriv runs");
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn root_squashed_mount_cannot_read_another_users_private_file() {
    let c = Cluster::start_default();
    let vol = c.path("vols/p");
    fs::create_dir_all(&vol).unwrap();
    chown(&c.path("vols"), 0, 0, 0o755);
    chown(&vol, 0, 0, 0o755);
    for (name, uid, gid, mode) in [
        ("secret", 1000, 1000, 0o600),
        ("public", 1000, 1000, 0o644),
        ("group", 1000, 500, 0o640),
    ] {
        let p = vol.join(name);
        fs::write(&p, format!("{name} data")).unwrap();
        chown(&p, uid, gid, mode);
    }
    let (_, token) = issue(
        &c,
        "p-root-squash",
        &["--path", "/vols/p", "--squash", "root"],
    );
    let m = c.mount_extra(
        "mnt-perm-squash",
        &[
            "--credential-file",
            token.to_str().unwrap(),
            "--allow-other",
        ],
    );
    // Root (this test) passes the kernel's check; the master sees nobody.
    let e = fs::read(m.path.join("secret")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert_eq!(fs::read(m.path.join("public")).unwrap(), b"public data");
    let e = fs::write(m.path.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e = fs::remove_file(m.path.join("public")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e =
        fs::set_permissions(m.path.join("secret"), fs::Permissions::from_mode(0o644)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // The owner reads it; a member of the file's group through a
    // supplementary group (which the mount reads from /proc and sends) reads
    // the group file; a non-member does not.
    assert_eq!(
        cat_as(1000, 1000, &[], &m.path.join("secret")).unwrap(),
        b"secret data"
    );
    assert_eq!(
        cat_as(2000, 2000, &[7, 500], &m.path.join("group")).unwrap(),
        b"group data"
    );
    let e = cat_as(2000, 2000, &[], &m.path.join("group")).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    // Through the cluster secret's mount nothing changed.
    assert_eq!(fs::read(vol.join("secret")).unwrap(), b"secret data");
}

/// The data of `rel` on the main mount as the credential's session sees it
/// (a ReadChunk with its signed access), as a hostile client would keep it.
fn located(c: &Cluster, token: &str, rel_inode: u64) -> pb::ReadChunkReply {
    let ch = c.channel_with_secret(&c.master, token);
    c.block_on(async move {
        let mut m = pb::master_client::MasterClient::new(ch);
        let sid = m
            .register_session(pb::RegisterSessionRequest::default())
            .await
            .unwrap()
            .into_inner()
            .session_id;
        m.read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: rel_inode,
            chunk_index: 0,
            caller: Some(pb::Caller::default()),
        })
        .await
        .unwrap()
        .into_inner()
    })
}

/// Reads 4 bytes of the located chunk from chunkserver `addr` with the
/// credential's token and its access.
fn read_at(
    c: &Cluster,
    token: &str,
    addr: &str,
    r: &pb::ReadChunkReply,
) -> Result<(), tonic::Status> {
    let ch = c.channel_with_secret(addr, token);
    let req = pb::ReadRequest {
        chunk_id: r.chunk_id,
        version: r.version,
        offset: 0,
        length: 4,
        access: r.access.clone(),
    };
    c.block_on(async move {
        pb::chunkserver_client::ChunkserverClient::new(ch)
            .read(req)
            .await
            .map(|_| ())
    })
}

/// Polls `read` until it is refused as revoked; returns how long it took.
fn refused_within(
    what: &str,
    limit: Duration,
    mut read: impl FnMut() -> Result<(), tonic::Status>,
) -> Duration {
    let t = Instant::now();
    loop {
        match read() {
            Err(e) if e.message().contains("revoked") => return t.elapsed(),
            r => assert!(
                t.elapsed() < limit,
                "{what}: not refused as revoked after {limit:?}: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn revocation_reaches_chunkservers_within_seconds() {
    let c = Cluster::start_default();
    fs::create_dir_all(c.path("vols/r")).unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(c.path("vols/r/big"), &data).unwrap();
    let (id, token_file) = issue(&c, "r", &["--path", "/vols/r"]);
    let token = fs::read_to_string(&token_file).unwrap().trim().to_string();
    let inode = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(c.path("vols/r/big")).unwrap().ino()
    };
    // A hostile client keeps a signed access to chunk 0 and every copy's
    // address; the chunkservers serve it.
    let r = located(&c, &token, inode);
    assert!(r.access.is_some() && r.locations.len() >= 2, "{r:?}");
    let addrs: Vec<String> = r.locations.iter().map(|l| l.address.clone()).collect();
    for a in &addrs {
        read_at(&c, &token, a, &r).expect("served before the revocation");
    }
    // A real mount with the file open, reading.
    let m = c.mount_extra(
        "mnt-perm-revoke",
        &["--credential-file", token_file.to_str().unwrap()],
    );
    let mut f = fs::File::open(m.path.join("big")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    {
        use std::io::Read;
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..buf.len()]);
    }
    // One chunkserver holding a copy is down during the revocation.
    let down = (1..=3)
        .find(|i| addrs.contains(&c.cs_addr(*i)))
        .expect("a chunkserver of the cluster holds a copy");
    c.kill9(Proc::Chunkserver(down));
    let revoked_at = Instant::now();
    c.cli_json(&["credential", "revoke", &id.to_string()])
        .expect("alces credential revoke");
    // The open file's next reads (past what the kernel cached) fail.
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut off = 1u64 << 20;
        let err = loop {
            f.seek(SeekFrom::Start(off)).unwrap();
            match f.read_exact(&mut buf) {
                Err(e) => break e,
                Ok(()) => {
                    assert!(
                        revoked_at.elapsed() < Duration::from_secs(10),
                        "the open file still reads 10 s after the revocation"
                    );
                    off = (off + buf.len() as u64) % (3 << 20);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        println!(
            "open file refused {:?} after the revocation: {err}",
            revoked_at.elapsed()
        );
    }
    // Every live chunkserver refuses the kept access within seconds (it
    // would otherwise serve it until it expires, 2 minutes).
    for a in addrs.iter().filter(|a| **a != c.cs_addr(down)) {
        refused_within(a, Duration::from_secs(10), || read_at(&c, &token, a, &r));
        println!(
            "chunkserver {a} refused the access {:?} after the revocation",
            revoked_at.elapsed()
        );
    }
    // The master restarts (its state replayed), then the chunkserver that
    // was down comes back: it refuses as soon as it serves.
    c.kill9(Proc::Master);
    c.restart(Proc::Master);
    c.restart(Proc::Chunkserver(down));
    let a = c.cs_addr(down);
    let took = refused_within(&a, Duration::from_secs(30), || read_at(&c, &token, &a, &r));
    println!("restarted chunkserver {a} refused the access {took:?} after its restart");
    drop(f);
}

/// What the application process (`AppProcess`) is told to do.
#[derive(Clone, Copy)]
#[repr(u64)]
enum AppOp {
    /// open(2) the file O_RDWR.
    Open = 1,
    /// pwrite(2) `len` bytes of `pattern(offset + i)` at `offset`.
    Write = 2,
    /// fsync(2).
    Fsync = 3,
    /// pread(2) `len` bytes at `offset`; answers how many matched the pattern
    /// in a row (or -errno).
    Read = 4,
    /// close(2).
    Close = 5,
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) % 251) as u8
}

/// The most an `AppOp::Write` or `AppOp::Read` moves at once.
const APP_IO: usize = 64 << 10;

/// An application holding a file of a FUSE mount, as a separate process:
/// forked before the test opens anything there, it runs as `uid` in `dir`
/// and makes raw system calls on the file `name` as told through a pipe,
/// answering each with its result (>= 0) or -errno through another.
///
/// Not a thread of the test: starting a mount daemon forks the test process
/// and execs `alces-mount`, and that exec closes the child's copy of every
/// descriptor the test holds; a descriptor of the handed-over mount would
/// send FLUSH, which only the daemon being exec'd could answer.
struct AppProcess {
    pid: libc::pid_t,
    cmd: std::os::fd::OwnedFd,
    reply: std::os::fd::OwnedFd,
}

fn pipe() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are new descriptors of this process.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

/// Reads exactly `buf.len()` bytes from `fd` (raw calls only: used after
/// fork); false at EOF or an error.
fn read_full(fd: i32, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reads into the rest of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n <= 0 {
            // SAFETY: errno of this thread.
            if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        got += n as usize;
    }
    true
}

impl AppProcess {
    /// Forks the application. Call it before the test process opens any
    /// file of the mount.
    fn start(dir: &Path, name: &str, uid: u32) -> Self {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        let name_c = std::ffi::CString::new(name).unwrap();
        let (cmd_r, cmd_w) = pipe();
        let (reply_r, reply_w) = pipe();
        // SAFETY: the child makes raw system calls only (no allocation, no
        // lock), as a child of a multithreaded process must, and ends with
        // _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: see above.
            unsafe { Self::child(&dir_c, &name_c, uid, cmd_r.as_raw_fd(), reply_w.as_raw_fd()) }
        }
        drop((cmd_r, reply_w));
        Self {
            pid,
            cmd: cmd_w,
            reply: reply_r,
        }
    }

    /// The application's loop.
    ///
    /// # Safety
    /// Only in the child of `fork`.
    unsafe fn child(
        dir: &std::ffi::CStr,
        name: &std::ffi::CStr,
        uid: u32,
        cmd: i32,
        reply: i32,
    ) -> ! {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let id = libc::c_long::from(uid);
        if libc::chdir(dir.as_ptr()) != 0
            || libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
            || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
        {
            libc::_exit(3);
        }
        let mut fd = -1;
        let mut buf = [0u8; APP_IO];
        loop {
            let mut c = [0u8; 24];
            if !read_full(cmd, &mut c) {
                libc::_exit(0);
            }
            let word = |i: usize| u64::from_ne_bytes(c[i * 8..i * 8 + 8].try_into().unwrap());
            let (op, off, len) = (word(0), word(1), (word(2) as usize).min(APP_IO));
            let err = || -i64::from(*libc::__errno_location());
            let res: i64 = match op {
                1 => {
                    fd = libc::open(name.as_ptr(), libc::O_RDWR);
                    if fd < 0 {
                        err()
                    } else {
                        0
                    }
                }
                2 => {
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = pattern(off + i as u64);
                    }
                    let n = libc::pwrite(fd, buf.as_ptr().cast(), len, off as libc::off_t);
                    if n < 0 {
                        err()
                    } else {
                        n as i64
                    }
                }
                3 => {
                    if libc::fsync(fd) != 0 {
                        err()
                    } else {
                        0
                    }
                }
                4 => {
                    let n = libc::pread(fd, buf.as_mut_ptr().cast(), len, off as libc::off_t);
                    if n < 0 {
                        err()
                    } else {
                        buf[..n as usize]
                            .iter()
                            .enumerate()
                            .take_while(|(i, b)| **b == pattern(off + *i as u64))
                            .count() as i64
                    }
                }
                5 => {
                    if libc::close(fd) != 0 {
                        err()
                    } else {
                        0
                    }
                }
                _ => libc::_exit(4),
            };
            let r = res.to_ne_bytes();
            if libc::write(reply, r.as_ptr().cast(), r.len()) != r.len() as isize {
                libc::_exit(5);
            }
        }
    }

    /// Runs `op` in the application; its result, or the errno it failed with.
    fn call(&self, op: AppOp, offset: u64, len: usize) -> Result<i64, i32> {
        use std::os::fd::AsRawFd;
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&(op as u64).to_ne_bytes());
        c[8..16].copy_from_slice(&offset.to_ne_bytes());
        c[16..].copy_from_slice(&(len as u64).to_ne_bytes());
        // SAFETY: writes `c` to our end of the command pipe.
        let n = unsafe { libc::write(self.cmd.as_raw_fd(), c.as_ptr().cast(), c.len()) };
        assert_eq!(n, 24, "the application process is gone");
        let mut p = libc::pollfd {
            fd: self.reply.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        let ready = unsafe { libc::poll(&mut p, 1, 180_000) };
        assert_eq!(ready, 1, "the application did not answer within 180 s");
        let mut r = [0u8; 8];
        assert!(
            read_full(self.reply.as_raw_fd(), &mut r),
            "the application process died"
        );
        match i64::from_ne_bytes(r) {
            e if e < 0 => Err(-e as i32),
            v => Ok(v),
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        // SAFETY: our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// A mount served as the CSI node plugin serves one (the test keeps the
/// `/dev/fuse` descriptor and the state memfd; `alces-mount --fuse-fd
/// --state-fd`), with a credential: its daemon can be SIGKILLed and taken
/// over by the next.
struct HandedMount {
    dir: PathBuf,
    spec: alces_csi::node::keeper::DaemonSpec,
    fuse: std::os::fd::OwnedFd,
    state: std::os::fd::OwnedFd,
    child: std::process::Child,
}

impl HandedMount {
    fn start(c: &Cluster, name: &str, token: &str, extra: &[&str]) -> Self {
        use alces_csi::node::keeper;
        let base = c.scratch(name);
        let dir = base.join("mnt");
        fs::create_dir_all(&dir).unwrap();
        let fuse = keeper::open_fuse().expect("open /dev/fuse");
        keeper::mount_fuse(&fuse, &dir, &format!("alces:{}/", c.master), false, true)
            .expect("mount the FUSE connection");
        let state = keeper::new_state("alces-e2e-state").expect("memfd");
        let spec = keeper::DaemonSpec {
            bin: alces_e2e::bin("alces-mount"),
            mountpoint: dir.clone(),
            master: c.master.clone(),
            subdir: "/".into(),
            read_only: false,
            secret: token.into(),
            // Extra flags of the daemon (the field carries any).
            tls_flags: extra.iter().map(Into::into).collect(),
            log: base.join("alces-mount.log"),
        };
        let child = keeper::spawn(&spec, &fuse, &state, false).expect("start alces-mount");
        alces_e2e::wait_until(
            "the handed-over mount to serve",
            Duration::from_secs(30),
            || fs::read_dir(&dir).is_ok(),
        );
        Self {
            dir,
            spec,
            fuse,
            state,
            child,
        }
    }

    /// SIGKILLs the daemon and starts the next with `--takeover`.
    fn kill_and_take_over(&mut self) {
        // SAFETY: a signal to the daemon this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        self.child = alces_csi::node::keeper::spawn(&self.spec, &self.fuse, &self.state, true)
            .expect("start the next alces-mount");
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.spec.log).unwrap_or_default()
    }
}

impl Drop for HandedMount {
    fn drop(&mut self) {
        alces_e2e::force_unmount(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A root-squashed mount's daemon is SIGKILLed while uid 1000 holds its
/// 0600 file open for writing (chmodded 000 meanwhile): the daemon taking
/// over replays the journalled writes and reopens the handle as root, which
/// the squash makes the anonymous user. The master allows both as reopens
/// of an open it granted this session, so the application's descriptor
/// goes on writing, fsyncing and reading, and no acknowledged byte is lost.
#[test]
fn a_root_squashed_takeover_keeps_a_users_open_private_file() {
    let c = Cluster::start_default();
    let vol = c.path("vols/sq");
    fs::create_dir_all(&vol).unwrap();
    chown(&c.path("vols"), 0, 0, 0o755);
    chown(&vol, 0, 0, 0o755);
    let admin_file = vol.join("private");
    fs::write(&admin_file, b"").unwrap();
    chown(&admin_file, 1000, 1000, 0o600);
    let (_, token) = issue(
        &c,
        "sq-takeover",
        &["--path", "/vols/sq", "--squash", "root"],
    );
    let token = fs::read_to_string(token).unwrap().trim().to_string();
    let mut m = HandedMount::start(&c, "sq-takeover", &token, &["--replay-timeout", "10"]);
    // Root on this mount is nobody to the master.
    let e = fs::read(m.dir.join("private")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");

    let app = AppProcess::start(&m.dir, "private", 1000);
    let chunk = APP_IO as u64;
    assert_eq!(app.call(AppOp::Open, 0, 0), Ok(0), "open by uid 1000");
    for i in 0..2 {
        assert_eq!(
            app.call(AppOp::Write, i * chunk, APP_IO),
            Ok(chunk as i64),
            "write {i} before the takeover"
        );
    }
    // The owner takes every permission away; the open descriptor keeps them.
    chown(&admin_file, 1000, 1000, 0);
    m.kill_and_take_over();

    for i in 2..4 {
        assert_eq!(
            app.call(AppOp::Write, i * chunk, APP_IO),
            Ok(chunk as i64),
            "write {i} through the same descriptor after the takeover; daemon log:\n{}",
            m.log()
        );
    }
    assert_eq!(
        app.call(AppOp::Fsync, 0, 0),
        Ok(0),
        "fsync after the takeover; daemon log:\n{}",
        m.log()
    );
    for i in 0..4 {
        assert_eq!(
            app.call(AppOp::Read, i * chunk, APP_IO),
            Ok(chunk as i64),
            "bytes {}.. read back through the descriptor",
            i * chunk
        );
    }
    assert_eq!(app.call(AppOp::Close, 0, 0), Ok(0), "close (flush)");
    drop(app);

    let data = fs::read(&admin_file).unwrap();
    assert_eq!(data.len() as u64, 4 * chunk, "size through the admin mount");
    let bad = data
        .iter()
        .enumerate()
        .position(|(i, b)| *b != pattern(i as u64));
    assert_eq!(bad, None, "first byte differing through the admin mount");
    let mode = fs::metadata(&admin_file).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0, "the file stays 000");

    let log = m.log();
    for (what, line) in [
        (
            "the session continued",
            "continuing the previous daemon's session",
        ),
        (
            "the handle reopened",
            "reopened a file handle of an earlier daemon",
        ),
    ] {
        assert!(
            log.contains(line),
            "{what}: no '{line}' in the daemon log:\n{log}"
        );
    }
    let replayed = log
        .lines()
        .find(|l| l.contains("replayed the journalled writes of the previous daemon"))
        .unwrap_or_else(|| panic!("no replay in the daemon log:\n{log}"));
    assert!(
        replayed.contains("files=1") && replayed.contains("lost=0"),
        "the journal replayed one file, nothing lost: {replayed}"
    );
    assert!(!log.contains("giving up the replay"), "{log}");
}
