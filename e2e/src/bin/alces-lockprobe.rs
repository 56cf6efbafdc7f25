//! A small program for the lock tests: holds one file open and runs the lock
//! commands it reads on stdin, one per line, answering each on stdout, so two
//! of them (on two mounts, or on one local directory) can be driven through
//! the same table of cases.
//!
//! Commands: `lk|lkw|get r|w|u START LEN` (fcntl F_SETLK, F_SETLKW, F_GETLK;
//! LEN 0 = to the end of the file), `close` (closes and reopens the file: a
//! POSIX close releases the process's locks), `pid`, `quit`. Answers: `ok`,
//! an errno name (`EAGAIN`, `EDEADLK`...), for `get` either `unlck` or
//! `r|w START LEN pid=PID`.

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;

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

fn main() {
    let path = std::env::args_os()
        .nth(1)
        .expect("usage: alces-lockprobe FILE");
    let path = CString::new(path.as_bytes()).expect("path");
    let mut fd = open(&path);
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let line = line.expect("stdin");
        let w: Vec<&str> = line.split_whitespace().collect();
        let answer = match w.as_slice() {
            ["quit"] => break,
            ["pid"] => std::process::id().to_string(),
            ["close"] => {
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
                fd = open(&path);
                "ok".into()
            }
            [cmd @ ("lk" | "lkw" | "get"), t, start, len] => {
                let typ = match *t {
                    "r" => libc::F_RDLCK,
                    "w" => libc::F_WRLCK,
                    _ => libc::F_UNLCK,
                };
                // SAFETY: a zeroed flock is a valid value.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = typ as i16;
                fl.l_whence = libc::SEEK_SET as i16;
                fl.l_start = start.parse().expect("start");
                fl.l_len = len.parse().expect("len");
                let op = match *cmd {
                    "lk" => libc::F_SETLK,
                    "lkw" => libc::F_SETLKW,
                    _ => libc::F_GETLK,
                };
                // SAFETY: fd is open and fl a valid flock.
                let r = unsafe { libc::fcntl(fd, op, &mut fl) };
                if r < 0 {
                    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
                } else if op == libc::F_GETLK {
                    if i32::from(fl.l_type) == libc::F_UNLCK {
                        "unlck".into()
                    } else {
                        let t = if i32::from(fl.l_type) == libc::F_WRLCK {
                            "w"
                        } else {
                            "r"
                        };
                        format!("{t} {} {} pid={}", fl.l_start, fl.l_len, fl.l_pid)
                    }
                } else {
                    "ok".into()
                }
            }
            _ => format!("bad command: {line}"),
        };
        writeln!(out, "{answer}").expect("stdout");
        out.flush().expect("stdout");
    }
}
