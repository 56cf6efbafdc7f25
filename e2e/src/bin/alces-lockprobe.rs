//! A small program for the lock tests: holds one file open and runs the lock
//! commands it reads on stdin, one per line, answering each on stdout, so two
//! of them (on two mounts, or on one local directory) can be driven through
//! the same table of cases.
//!
//! Commands:
//! - `lk|lkw|get r|w|u START LEN`: fcntl F_SETLK, F_SETLKW, F_GETLK (LEN 0 =
//!   to the end of the file); `olk|olkw|oget` the same as open file
//!   description locks (F_OFD_SETLK, F_OFD_SETLKW, F_OFD_GETLK). A blocking
//!   wait gives up after 20 s with `EINTR` (an alarm), so a lock that is never
//!   released fails a test instead of hanging it.
//! - `close`: closes and reopens the file (a POSIX close releases the
//!   process's locks; the last close of an open file its OFD locks).
//! - `open2`, `close2`: opens and closes a second descriptor of the file (its
//!   own open file description).
//! - `fork`: forks a child that shares the descriptor; `c CMD` runs CMD in the
//!   child (which answers it), e.g. `c lk w 0 1`.
//! - `many N r|w START LEN`: N threads each open the file and wait for an OFD
//!   lock (F_OFD_SETLKW, no alarm); answers once they are started. `join`
//!   waits for them and answers `N ok` (how many got their lock).
//! - `pid`, `quit`.
//!
//! Answers: `ok`, an errno name (`EAGAIN`, `EDEADLK`...), for `get` either
//! `unlck` or `r|w START LEN pid=PID`.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;

/// How long a blocking wait may last before it gives up with EINTR.
const WAIT_LIMIT_SECS: u32 = 20;

fn open(path: &CString) -> i32 {
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CREAT, 0o644) };
    if fd < 0 {
        eprintln!(
            "cannot open {:?}: {}",
            path,
            std::io::Error::last_os_error()
        );
        std::process::exit(2);
    }
    fd
}

fn errno_name(e: i32) -> String {
    match e {
        libc::EAGAIN => "EAGAIN".into(),
        libc::EACCES => "EACCES".into(),
        libc::EDEADLK => "EDEADLK".into(),
        libc::EINTR => "EINTR".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EBADF => "EBADF".into(),
        libc::ENOLCK => "ENOLCK".into(),
        other => format!("errno{other}"),
    }
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// SIGALRM interrupts a blocking wait (no SA_RESTART) instead of killing.
fn catch_alarm() {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
    }
}

/// One fcntl lock call; `Err(errno)` on failure, the flock back on success.
fn fcntl_lock(fd: i32, op: i32, typ: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    // SAFETY: a zeroed flock is a valid value (l_pid 0, as OFD locks need).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    let blocking = op == libc::F_SETLKW || op == libc::F_OFD_SETLKW;
    if blocking {
        // SAFETY: alarm(2) has no memory effects.
        unsafe { libc::alarm(WAIT_LIMIT_SECS) };
    }
    // SAFETY: fd is open and fl a valid flock.
    let r = unsafe { libc::fcntl(fd, op, &mut fl) };
    let e = last_errno();
    if blocking {
        // SAFETY: as above.
        unsafe { libc::alarm(0) };
    }
    if r < 0 {
        Err(e)
    } else {
        Ok(fl)
    }
}

fn lock_type(t: &str) -> i32 {
    match t {
        "r" => libc::F_RDLCK,
        "w" => libc::F_WRLCK,
        _ => libc::F_UNLCK,
    }
}

/// A forked child that shares the file: commands go down one pipe, answers
/// come up another.
struct Child {
    to: std::fs::File,
    from: BufReader<std::fs::File>,
}

/// The probe's state.
struct Probe {
    path: CString,
    fd: i32,
    fd2: Option<i32>,
    child: Option<Child>,
    many: Vec<std::thread::JoinHandle<bool>>,
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut p = [0i32; 2];
    // SAFETY: p has room for two descriptors.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        panic!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made and are owned here.
    unsafe {
        (
            std::fs::File::from_raw_fd(p[0]),
            std::fs::File::from_raw_fd(p[1]),
        )
    }
}

impl Probe {
    fn run(&mut self, line: &str) -> String {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["pid"] => std::process::id().to_string(),
            ["close"] => {
                // SAFETY: fd is ours.
                unsafe { libc::close(self.fd) };
                self.fd = open(&self.path);
                "ok".into()
            }
            ["open2"] => {
                self.fd2 = Some(open(&self.path));
                "ok".into()
            }
            ["close2"] => match self.fd2.take() {
                // SAFETY: fd2 is ours.
                Some(fd) => {
                    unsafe { libc::close(fd) };
                    "ok".into()
                }
                None => "EBADF".into(),
            },
            ["fork"] => self.fork(),
            ["c", rest @ ..] => match &mut self.child {
                Some(c) => {
                    writeln!(c.to, "{}", rest.join(" ")).expect("to the child");
                    let mut a = String::new();
                    c.from.read_line(&mut a).expect("from the child");
                    a.trim().to_string()
                }
                None => "no child (fork first)".into(),
            },
            ["many", n, t, start, len] => {
                let n: usize = n.parse().expect("count");
                let (typ, start, len) = (
                    lock_type(t),
                    start.parse().expect("start"),
                    len.parse().expect("len"),
                );
                for _ in 0..n {
                    let path = self.path.clone();
                    self.many.push(std::thread::spawn(move || {
                        let fd = open(&path);
                        // SAFETY: a zeroed flock is a valid value.
                        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                        fl.l_type = typ as i16;
                        fl.l_whence = libc::SEEK_SET as i16;
                        fl.l_start = start;
                        fl.l_len = len;
                        // SAFETY: fd is open and fl a valid flock.
                        let ok = unsafe { libc::fcntl(fd, libc::F_OFD_SETLKW, &mut fl) } == 0;
                        // SAFETY: fd is this thread's.
                        unsafe { libc::close(fd) };
                        ok
                    }));
                }
                "ok".into()
            }
            ["join"] => {
                let got = self
                    .many
                    .drain(..)
                    .map(|t| t.join().unwrap_or(false))
                    .filter(|ok| *ok)
                    .count();
                format!("{got} ok")
            }
            [cmd @ ("lk" | "lkw" | "get" | "olk" | "olkw" | "oget"), t, start, len] => {
                let op = match *cmd {
                    "lk" => libc::F_SETLK,
                    "lkw" => libc::F_SETLKW,
                    "get" => libc::F_GETLK,
                    "olk" => libc::F_OFD_SETLK,
                    "olkw" => libc::F_OFD_SETLKW,
                    _ => libc::F_OFD_GETLK,
                };
                let start = start.parse().expect("start");
                let len = len.parse().expect("len");
                match fcntl_lock(self.fd, op, lock_type(t), start, len) {
                    Err(e) => errno_name(e),
                    Ok(fl) if op == libc::F_GETLK || op == libc::F_OFD_GETLK => {
                        match i32::from(fl.l_type) {
                            libc::F_UNLCK => "unlck".into(),
                            typ => {
                                let t = if typ == libc::F_WRLCK { "w" } else { "r" };
                                format!("{t} {} {} pid={}", fl.l_start, fl.l_len, fl.l_pid)
                            }
                        }
                    }
                    Ok(_) => "ok".into(),
                }
            }
            _ => format!("bad command: {line}"),
        }
    }

    /// Forks a child that shares the descriptor and runs the commands sent
    /// to it until its pipe closes.
    fn fork(&mut self) -> String {
        if self.child.is_some() {
            return "a child runs already".into();
        }
        let (cmd_r, cmd_w) = pipe();
        let (ans_r, ans_w) = pipe();
        // SAFETY: the child only runs this single-threaded loop (no `many`
        // thread is started before a fork in the tests) and exits.
        match unsafe { libc::fork() } {
            -1 => errno_name(last_errno()),
            0 => {
                drop((cmd_w, ans_r));
                let mut out = ans_w;
                let mut me = Probe {
                    path: self.path.clone(),
                    fd: self.fd,
                    fd2: None,
                    child: None,
                    many: Vec::new(),
                };
                for line in BufReader::new(cmd_r).lines() {
                    let Ok(line) = line else { break };
                    let a = me.run(&line);
                    if writeln!(out, "{a}").is_err() {
                        break;
                    }
                }
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(0) }
            }
            _ => {
                drop((cmd_r, ans_w));
                self.child = Some(Child {
                    to: cmd_w,
                    from: BufReader::new(ans_r),
                });
                "ok".into()
            }
        }
    }
}

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: alces-lockprobe FILE");
    let path = CString::new(path.as_bytes()).expect("path");
    catch_alarm();
    let mut probe = Probe {
        fd: open(&path),
        path,
        fd2: None,
        child: None,
        many: Vec::new(),
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        if line.trim() == "quit" {
            break;
        }
        let answer = probe.run(&line);
        writeln!(out, "{answer}").expect("stdout");
        out.flush().expect("stdout");
    }
}
