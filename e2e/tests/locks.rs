//! Cluster-wide file locks: flock and POSIX record locks taken through two
//! mounts conflict as on one local filesystem; a blocked waiter proceeds when
//! the holder releases; a SIGKILLed mount's locks go when its session expires
//! (not before); a holder keeps its lock across a master failover.
//!
//! Needs `flock` (util-linux), installed by `e2e/test-all`.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use alces_e2e::{wait_until, Cluster, Options, Proc};

/// Session timeout of the test clusters, in seconds.
const SESSION_TIMEOUT: u64 = 6;

fn options() -> Options {
    Options {
        env: vec![("ALCES_SESSION_TIMEOUT".into(), SESSION_TIMEOUT.to_string())],
        ..Options::default()
    }
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
    fn start(path: &Path) -> Holder {
        let mut child = Command::new("flock")
            .args(["-x", "-o"])
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

    assert!(
        flock_free(&a) && flock_free(&b),
        "nobody holds the lock yet"
    );
    let h = Holder::start(&a);
    assert!(
        !flock_free(&b),
        "flock -n on mount 2 while mount 1 holds it must fail"
    );
    assert!(!flock_free(&a), "and on mount 1 itself (another open file)");

    let mut w = waiter(&b);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        exited(&mut w).is_none(),
        "the waiter must wait while the lock is held"
    );
    h.release();
    let t = Instant::now();
    wait_until(
        "the waiter to get the lock",
        Duration::from_secs(20),
        || exited(&mut w).is_some(),
    );
    assert!(w.wait().unwrap().success());
    eprintln!("waiter proceeded {:?} after the release", t.elapsed());
    assert!(
        flock_free(&a) && flock_free(&b),
        "the waiter released it at exit"
    );

    // Shared locks share; an exclusive one is refused while they are held.
    let sh = Command::new("flock")
        .args(["-s", "-o"])
        .arg(&a)
        .args(["-c", "echo locked; read x; true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sh = Holder {
        stdin: None,
        child: sh,
    };
    let mut line = String::new();
    BufReader::new(sh.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    sh.stdin = sh.child.stdin.take();
    let st = Command::new("flock")
        .args(["-n", "-s"])
        .arg(&b)
        .arg("true")
        .status()
        .unwrap();
    assert!(st.success(), "a second shared flock from mount 2");
    assert!(
        !flock_free(&b),
        "an exclusive flock while a shared one is held"
    );
    sh.release();
    assert!(flock_free(&b));
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

/// POSIX record-lock cases: two processes on one file.
const POSIX_CASES: &[(&str, &[Step])] = &[
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
/// answers, pids replaced by the probe's number.
fn run_cases(p0: &Path, p1: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for (i, (name, steps)) in POSIX_CASES.iter().enumerate() {
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
                    // Let the blocking request reach the lock before the next step.
                    std::thread::sleep(Duration::from_millis(500));
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
    let c = Cluster::start(options()).expect("start cluster");
    let other = c.mount_extra("mnt2", &[]);
    let local = c.scratch("local-locks");
    let want = run_cases(&local, &local);
    let got = run_cases(&c.mnt, &other.path);
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

    let holder = Holder::start(&b);
    assert!(!flock_free(&a));
    let mut w = waiter(&a);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the mount process this test started.
    unsafe { libc::kill(other.pid(), libc::SIGKILL) };
    let killed = Instant::now();
    let got = loop {
        if flock_free(&a) {
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
    drop(other);
}

#[test]
fn lock_holder_keeps_its_lock_across_a_failover() {
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
    c.wait_ml_caught_up(1, Duration::from_secs(30));

    let holder = Holder::start(&b);
    c.kill9(Proc::Master);
    let out = c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Tried during and after the grace period: always refused.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(SESSION_TIMEOUT * 2) {
        assert!(
            !flock_free(&a),
            "a contender got the lock {:?} after the promotion",
            t.elapsed()
        );
    }
    holder.release();
    wait_until(
        "the lock to be free after the holder let go",
        Duration::from_secs(20),
        || flock_free(&a),
    );
    drop(other);
}

#[test]
fn a_blocked_waiter_can_be_killed_or_interrupted() {
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
    let holder = Holder::start(&a);
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        let mut w = waiter(&b);
        std::thread::sleep(Duration::from_secs(1));
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
        assert!(!flock_free(&b), "the holder still holds it");
    }
    holder.release();
    wait_until("the lock to be free", Duration::from_secs(20), || {
        flock_free(&b)
    });
    drop(other);
}
