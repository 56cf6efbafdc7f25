//! SQLite in rollback-journal mode from two mounts: two processes increment
//! one counter in transactions; the count is exact and the database intact.
//! SQLite coordinates through POSIX record locks, so this checks that they are
//! cluster-wide and that a granted lock shows what the previous holder wrote.
//!
//! Needs the `sqlite3` CLI, installed by `e2e/test-all`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use alces_e2e::{wait_until, Cluster, Options};

fn options() -> Options {
    Options {
        env: vec![("ALCES_SESSION_TIMEOUT".into(), "6".into())],
        root: std::env::var_os("LOCKS_SQLITE_ROOT").map(Into::into),
        ..Options::default()
    }
}

/// Runs the `sqlite3` CLI on `db` with `sql` on its stdin; returns its output.
fn sqlite(db: &Path, sql: &str) -> std::process::Child {
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sqlite3");
    let mut stdin = child.stdin.take().unwrap();
    let sql = sql.to_string();
    std::thread::spawn(move || {
        let _ = stdin.write_all(sql.as_bytes());
    });
    child
}

fn sqlite_ok(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn sqlite_from_two_mounts_counts_exactly() {
    const PER_PROCESS: usize = 1000;
    let c = Cluster::start(options()).expect("start cluster");
    let other = c.mount_extra("mnt2", &[]);
    let a = c.path("counter.db");
    let b = other.path.join("counter.db");
    let mode = sqlite_ok(
        sqlite(
            &a,
            "PRAGMA journal_mode=DELETE;\nCREATE TABLE c(v INTEGER NOT NULL);\nINSERT INTO c VALUES(0);\n",
        ),
        "creating the database",
    );
    assert_eq!(mode, "delete", "rollback-journal mode");
    wait_until(
        "the database on the second mount",
        Duration::from_secs(10),
        || b.exists(),
    );

    let mut script = String::from(".timeout 120000\n");
    for _ in 0..PER_PROCESS {
        script.push_str("BEGIN IMMEDIATE;\nUPDATE c SET v = v + 1;\nCOMMIT;\n");
    }
    let t = Instant::now();
    let pa = sqlite(&a, &script);
    let pb = sqlite(&b, &script);
    sqlite_ok(pa, "the process on mount 1");
    sqlite_ok(pb, "the process on mount 2");
    eprintln!(
        "{} transactions from two mounts in {:?}",
        2 * PER_PROCESS,
        t.elapsed()
    );
    for db in [&a, &b] {
        let v = sqlite_ok(sqlite(db, "SELECT v FROM c;\n"), "reading the counter");
        assert_eq!(
            v,
            (2 * PER_PROCESS).to_string(),
            "counter read through {}",
            db.display()
        );
        let check = sqlite_ok(sqlite(db, "PRAGMA integrity_check;\n"), "integrity_check");
        assert_eq!(check, "ok", "integrity_check through {}", db.display());
    }
}
