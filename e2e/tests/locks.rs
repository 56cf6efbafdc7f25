//! Cluster-wide file locks: flock and POSIX record locks taken through two
//! mounts conflict as on one local filesystem; a blocked waiter proceeds when
//! the holder releases; a SIGKILLed mount's locks go when its session expires
//! (not before); a holder keeps its lock across a master failover; OFD locks
//! go at the last close of their open file; hundreds of blocked waiters leave
//! the mount's other calls working.
//!
//! Needs `flock` (util-linux), installed by `e2e/test-all`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use alces_e2e::{wait_until, Cluster, ExtraMount, Options, Proc};

/// Session timeout of the test clusters, in seconds.
const SESSION_TIMEOUT: u64 = 6;

fn options() -> Options {
    Options {
        env: vec![("ALCES_SESSION_TIMEOUT".into(), SESSION_TIMEOUT.to_string())],
        ..Options::default()
    }
}

/// A cluster with a second mount, and a file both mounts see.
struct TwoMounts {
    /// The second mount (unmounted before the cluster stops).
    other: ExtraMount,
    c: Cluster,
    /// The file through the cluster's mount.
    a: PathBuf,
    /// The same file through the second mount.
    b: PathBuf,
}

fn two_mounts() -> TwoMounts {
    let c = Cluster::start(options()).expect("start cluster");
    let other = c.mount_extra("mnt2", &[]);
    let a = c.path("lockfile");
    let b = other.path.join("lockfile");
    std::fs::write(&a, b"x").unwrap();
    wait_until(
        "the file on the second mount",
        Duration::from_secs(10),
        || b.exists(),
    );
    TwoMounts { other, c, a, b }
}

/// Waits until the master's lock table has exactly `n` blocked requests
/// (`Admin.Status`), i.e. until waits sent through a mount have reached it.
fn wait_for_waiters(c: &Cluster, n: u64) {
    wait_until(
        &format!("{n} blocked lock requests at the master"),
        Duration::from_secs(30),
        || c.status().is_ok_and(|s| s.lock_waiters == n),
    );
}

/// True when a process of this pid waits for a lock in the local kernel's
/// table (`/proc/locks` lists blocked requests with `->`).
fn blocked_locally(pid: u32) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .any(|l| l.contains("->") && l.split_whitespace().any(|w| w == pid.to_string()))
}

/// `flock -n -x FILE true` through some mount: true when the lock was free.
fn flock_free(path: &Path) -> bool {
    let st = Command::new("flock")
        .args(["-n", "-x"])
        .arg(path)
        .arg("true")
        .status()
        .expect("run flock (util-linux)");
    match st.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("flock -n on {} failed: {st}", path.display()),
    }
}

/// A process holding `flock -x` on a file until told to stop (a line on its
/// stdin, or its stdin closing).
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Holder {
    /// An exclusive flock.
    fn start(path: &Path) -> Holder {
        Holder::start_mode(path, "-x")
    }

    /// A flock of `mode` (`-x` exclusive, `-s` shared).
    fn start_mode(path: &Path, mode: &str) -> Holder {
        let mut child = Command::new("flock")
            .args([mode, "-o"])
            .arg(path)
            .args(["-c", "echo locked; read x; true"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run flock (util-linux)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "the holder got its lock");
        Holder {
            stdin: child.stdin.take(),
            child,
        }
    }

    fn release(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "holder: {st}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking `flock -x FILE true`, started now.
fn waiter(path: &Path) -> Child {
    Command::new("flock")
        .arg("-x")
        .arg(path)
        .arg("true")
        .spawn()
        .expect("run flock (util-linux)")
}

fn exited(c: &mut Child) -> Option<std::process::ExitStatus> {
    c.try_wait().unwrap()
}

#[test]
fn flock_conflicts_across_mounts_and_waiters_wake() {
    let t = two_mounts();
    let (a, b) = (&t.a, &t.b);
    assert!(flock_free(a) && flock_free(b), "nobody holds the lock yet");
    let h = Holder::start(a);
    assert!(
        !flock_free(b),
        "flock -n on mount 2 while mount 1 holds it must fail"
    );
    assert!(!flock_free(a), "and on mount 1 itself (another open file)");

    let mut w = waiter(b);
    wait_for_waiters(&t.c, 1);
    assert!(
        exited(&mut w).is_none(),
        "the waiter must wait while the lock is held"
    );
    h.release();
    let started = Instant::now();
    wait_until(
        "the waiter to get the lock",
        Duration::from_secs(20),
        || exited(&mut w).is_some(),
    );
    assert!(w.wait().unwrap().success());
    eprintln!("waiter proceeded {:?} after the release", started.elapsed());
    assert!(
        flock_free(a) && flock_free(b),
        "the waiter released it at exit"
    );

    // Shared locks share; an exclusive one is refused while they are held.
    let sh = Holder::start_mode(a, "-s");
    let st = Command::new("flock")
        .args(["-n", "-s"])
        .arg(b)
        .arg("true")
        .status()
        .unwrap();
    assert!(st.success(), "a second shared flock from mount 2");
    assert!(
        !flock_free(b),
        "an exclusive flock while a shared one is held"
    );
    sh.release();
    assert!(flock_free(b));
}

/// One lock probe process (`alces-lockprobe`) on a file.
struct Probe {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pid: u32,
}

impl Probe {
    fn start(path: &Path) -> Probe {
        let mut child = Command::new(env!("CARGO_BIN_EXE_alces-lockprobe"))
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start alces-lockprobe");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Probe {
            pid: child.id(),
            child,
            stdin,
            stdout,
        };
        p.send("pid");
        let pid = p.answer();
        assert_eq!(pid, p.pid.to_string());
        p
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Sends a command and reads its answer.
    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.answer()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Probe 0 or 1, a command, and whether to read its answer now (false: the
/// command blocks; a later `("collect")` step of that probe reads it).
type Step = (usize, &'static str, bool);

/// Record-lock cases (POSIX and OFD): two processes on one file.
const CASES: &[(&str, &[Step])] = &[
    (
        "write locks on overlapping ranges conflict",
        &[
            (0, "lk w 0 10", true),
            (1, "lk w 5 10", true),
            (1, "lk w 10 10", true),
            (1, "get w 0 100", true),
        ],
    ),
    (
        "readers share, a writer is refused",
        &[
            (0, "lk r 0 100", true),
            (1, "lk r 50 100", true),
            (1, "lk w 0 1", true),
            (0, "lk w 60 1", true),
            (1, "get w 0 0", true),
        ],
    ),
    (
        "an unlocked middle is free, the ends are not",
        &[
            (0, "lk w 0 300", true),
            (0, "lk u 100 100", true),
            (1, "lk w 100 100", true),
            (1, "lk w 99 1", true),
            (1, "lk w 200 1", true),
            (1, "get r 0 0", true),
        ],
    ),
    (
        "a downgrade lets readers in, an upgrade waits for them",
        &[
            (0, "lk w 0 0", true),
            (1, "lk r 10 1", true),
            (0, "lk r 0 0", true),
            (1, "lk r 10 1", true),
            (0, "lk w 0 0", true),
            (1, "get w 0 1", true),
        ],
    ),
    (
        "to the end of the file",
        &[
            (0, "lk w 1000 0", true),
            (1, "lk w 999999999 1", true),
            (1, "lk w 0 1000", true),
            (1, "get r 5000 1", true),
        ],
    ),
    (
        "merged adjacent locks unlock as one",
        &[
            (0, "lk w 0 10", true),
            (0, "lk w 10 10", true),
            (1, "get w 5 10", true),
            (0, "lk u 0 20", true),
            (1, "lk w 0 20", true),
        ],
    ),
    (
        "any close by the holder releases its locks",
        &[
            (0, "lk w 0 10", true),
            (0, "lk r 50 10", true),
            (1, "lk w 0 1", true),
            (0, "close", true),
            (1, "lk w 0 100", true),
        ],
    ),
    (
        "a blocked writer proceeds when the holder unlocks",
        &[
            (0, "lk w 0 10", true),
            (1, "lkw w 5 1", false),
            (0, "get r 5 1", true),
            (0, "lk u 0 10", true),
            (1, "collect", true),
            (0, "lk r 5 1", true),
        ],
    ),
    (
        "OFD locks of two open files conflict, and with POSIX locks",
        &[
            (0, "olk w 0 10", true),
            (1, "olk w 5 1", true),
            (1, "lk r 9 1", true),
            (1, "olk r 10 1", true),
            (0, "olk u 0 10", true),
            (1, "olk w 5 1", true),
        ],
    ),
    (
        "another close by the process keeps its OFD locks",
        &[
            (0, "olk w 0 10", true),
            (0, "lk w 20 10", true),
            (0, "open2", true),
            (0, "close2", true),
            (1, "lk w 0 1", true),
            (1, "lk w 20 1", true),
        ],
    ),
    (
        "the last close of an open file releases its OFD locks",
        &[
            (0, "olk w 0 10", true),
            (0, "olk r 50 0", true),
            (1, "olk w 5 1", true),
            (0, "close", true),
            (1, "olkw w 5 1", true),
            (1, "olk w 50 1", true),
        ],
    ),
    (
        "a forked child's lock stays when the parent closes its copy",
        &[
            (0, "fork", true),
            (0, "c lk w 0 10", true),
            (0, "close", true),
            (1, "lk w 0 1", true),
            (0, "c lk u 0 5", true),
            (1, "lk w 0 1", true),
            (1, "lk w 5 1", true),
            (0, "c close", true),
            (1, "lkw w 5 1", true),
        ],
    ),
    (
        "a wait that would close a cycle fails with EDEADLK",
        &[
            (0, "lk w 0 1", true),
            (1, "lk w 1 1", true),
            (0, "lkw w 1 1", false),
            (1, "lkw w 0 1", true),
            (1, "lk u 1 1", true),
            (0, "collect", true),
        ],
    ),
];

/// Runs every case with probe 0 on `p0` and probe 1 on `p1`; returns the
/// answers, pids replaced by the probe's number. `blocked(pid)` tells when a
/// blocking request of that probe has reached the lock (and waits there).
fn run_cases(p0: &Path, p1: &Path, blocked: &dyn Fn(u32) -> bool) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (i, (name, steps)) in CASES.iter().enumerate() {
        // A file per case, so no case sees another's locks.
        let f0 = p0.join(format!("case{i}"));
        let f1 = p1.join(format!("case{i}"));
        std::fs::write(&f0, b"").unwrap();
        wait_until(
            "the case file on both sides",
            Duration::from_secs(10),
            || f1.exists(),
        );
        let mut probes = [Probe::start(&f0), Probe::start(&f1)];
        let pids = [probes[0].pid.to_string(), probes[1].pid.to_string()];
        let mut answers = Vec::new();
        for (who, cmd, now) in steps.iter() {
            let p = &mut probes[*who];
            if *cmd != "collect" {
                p.send(cmd);
                if !*now {
                    let pid = p.pid;
                    wait_until(
                        &format!("case {name:?}: {cmd:?} to wait for the lock"),
                        Duration::from_secs(30),
                        || blocked(pid),
                    );
                }
            }
            if *now {
                let a = p.answer();
                let a = a
                    .replace(&format!("pid={}", pids[0]), "pid=P0")
                    .replace(&format!("pid={}", pids[1]), "pid=P1");
                answers.push(format!("{who} {cmd}: {a}"));
            }
        }
        out.push((name.to_string(), answers));
    }
    out
}

#[test]
fn posix_range_locks_match_a_local_filesystem() {
    let t = two_mounts();
    let local = t.c.scratch("local-locks");
    let want = run_cases(&local, &local, &blocked_locally);
    let got = run_cases(&t.c.mnt, &t.other.path, &|_| {
        t.c.status().is_ok_and(|s| s.lock_waiters == 1)
    });
    // The table must exercise both answers, or it proves nothing.
    let all: Vec<&String> = want.iter().flat_map(|(_, a)| a).collect();
    assert!(all.iter().any(|a| a.ends_with("EAGAIN")), "{all:#?}");
    assert!(all.iter().any(|a| a.ends_with("EDEADLK")), "{all:#?}");
    assert!(all.iter().any(|a| a.contains("pid=P0")), "{all:#?}");
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        assert_eq!(
            g, w,
            "case {name:?}: Alces (two mounts) vs the local filesystem"
        );
    }
}

#[test]
fn sigkilled_mount_loses_its_locks_after_the_session_timeout() {
    let t = two_mounts();
    let holder = Holder::start(&t.b);
    assert!(!flock_free(&t.a));
    let mut w = waiter(&t.a);
    wait_for_waiters(&t.c, 1);
    // SAFETY: kill(2) on the mount process this test started.
    unsafe { libc::kill(t.other.pid(), libc::SIGKILL) };
    let killed = Instant::now();
    let got = loop {
        if flock_free(&t.a) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(SESSION_TIMEOUT + 20),
            "the dead mount's lock was never released"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("lock free {got:?} after SIGKILL of the holding mount (session timeout {SESSION_TIMEOUT} s)");
    // The session was renewed at most a third of the timeout before the kill.
    assert!(
        got >= Duration::from_secs(SESSION_TIMEOUT * 2 / 3),
        "released after {got:?}, before the session could have expired"
    );
    // The blocked waiter was woken by the expiry too.
    wait_until(
        "the waiter to get the lock",
        Duration::from_secs(20),
        || exited(&mut w).is_some(),
    );
    assert!(w.wait().unwrap().success());
    drop(holder);
}

#[test]
fn lock_holder_keeps_its_lock_across_a_failover() {
    let t = two_mounts();
    t.c.wait_ml_caught_up(1, Duration::from_secs(30));
    let holder = Holder::start(&t.b);
    t.c.kill9(Proc::Master);
    let out = t.c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Tried during and after the grace period: always refused.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(SESSION_TIMEOUT * 2) {
        assert!(
            !flock_free(&t.a),
            "a contender got the lock {:?} after the promotion",
            started.elapsed()
        );
    }
    holder.release();
    wait_until(
        "the lock to be free after the holder let go",
        Duration::from_secs(20),
        || flock_free(&t.a),
    );
}

#[test]
fn a_blocked_waiter_can_be_killed_or_interrupted() {
    let t = two_mounts();
    let holder = Holder::start(&t.a);
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        let mut w = waiter(&t.b);
        wait_for_waiters(&t.c, 1);
        assert!(exited(&mut w).is_none(), "the waiter waits");
        // SAFETY: kill(2) on a child of this test.
        unsafe { libc::kill(w.id() as i32, sig) };
        wait_until(
            &format!("the waiter to end on signal {sig}"),
            Duration::from_secs(20),
            || exited(&mut w).is_some(),
        );
        let st = w.wait().unwrap();
        assert!(!st.success(), "the waiter did not get the lock: {st}");
        assert!(!flock_free(&t.b), "the holder still holds it");
        wait_for_waiters(&t.c, 0);
    }
    holder.release();
    wait_until("the lock to be free", Duration::from_secs(20), || {
        flock_free(&t.b)
    });
}

/// Blocked waiters of this test: enough to pass HTTP/2's usual stream cap
/// (hyper's default of 200 concurrent streams per connection).
const MANY: u64 = 300;

#[test]
fn hundreds_of_blocked_waiters_leave_the_mount_working() {
    let t = two_mounts();
    // Mount 2 holds a write lock on the whole file.
    let mut holder = Probe::start(&t.b);
    assert_eq!(holder.ask("lk w 0 0"), "ok");
    // On mount 1, MANY threads wait for read locks, each on its own open file.
    let mut many = Probe::start(&t.a);
    assert_eq!(many.ask(&format!("many {MANY} r 0 0")), "ok");
    wait_for_waiters(&t.c, MANY);

    // Meanwhile mount 1 serves everything else: metadata, a durable write
    // and its read back, a lock test and a refused non-blocking lock. Run
    // on a thread, so calls stuck behind the waits fail the test instead of
    // hanging it.
    let dir = t.c.path("meanwhile");
    let (tx, rx) = std::sync::mpsc::channel();
    let a = t.a.clone();
    let worker = std::thread::spawn(move || {
        std::fs::create_dir(&dir).unwrap();
        let f = dir.join("data");
        let data = alces_e2e::pattern(7, 1 << 20);
        alces_e2e::write_synced(&f, &data).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), data, "read back");
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 1 << 20);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let mut p = Probe::start(&a);
        assert!(p.ask("get w 0 1").starts_with("w 0 0 pid="), "a lock test");
        assert_eq!(p.ask("lk r 0 1"), "EAGAIN", "a non-blocking lock");
        tx.send(()).unwrap();
    });
    let done = rx.recv_timeout(Duration::from_secs(120));
    assert!(
        done.is_ok(),
        "mount 1's other calls did not finish while {MANY} lock waits were open"
    );
    worker.join().unwrap();
    assert_eq!(
        t.c.status().unwrap().lock_waiters,
        MANY,
        "the waiters still wait"
    );

    // The holder lets go: every waiter gets its read lock.
    assert_eq!(holder.ask("lk u 0 0"), "ok");
    assert_eq!(many.ask("join"), format!("{MANY} ok"));
    wait_for_waiters(&t.c, 0);
}

#[test]
fn a_session_past_its_lock_cap_gets_enolck() {
    let mut opts = options();
    opts.env
        .push(("ALCES_MAX_LOCKS_PER_SESSION".into(), "2".into()));
    let c = Cluster::start(opts).expect("start cluster");
    let f = c.path("capped");
    std::fs::write(&f, b"x").unwrap();
    let mut p = Probe::start(&f);
    assert_eq!(p.ask("lk w 0 1"), "ok");
    assert_eq!(p.ask("olk w 10 1"), "ok", "an OFD lock counts alike");
    assert_eq!(p.ask("lk w 20 1"), "ENOLCK", "a third range");
    assert_eq!(p.ask("lk w 1 1"), "ok", "growing a range adds none");
    assert_eq!(p.ask("lk u 0 0"), "ok", "unlocking is never refused");
    assert_eq!(p.ask("lk w 20 1"), "ok", "room again");
    let log = std::fs::read_to_string(c.log(Proc::Mount)).unwrap();
    assert!(
        log.contains("--max-locks-per-session"),
        "the mount's log names the flag to raise:\n{}",
        alces_e2e::tail(&c.log(Proc::Mount), 20)
    );
}
