//! Everyday tools on a mount: cp -a, tar, git, sqlite (via python3), rsync, cc.

use std::fs;
use std::path::Path;

use alces_e2e::{have, pattern, run_ok, sha256, Cluster};

fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::write(root.join("a/small.txt"), b"hello\n").unwrap();
    fs::write(root.join("a/b/big.bin"), pattern(7, 2_500_000)).unwrap();
    fs::write(root.join("a/b/c/empty"), b"").unwrap();
    std::os::unix::fs::symlink("../small.txt", root.join("a/b/link")).unwrap();
    fs::hard_link(root.join("a/small.txt"), root.join("a/hard.txt")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(root.join("a/small.txt"), fs::Permissions::from_mode(0o751)).unwrap();
}

fn diff_trees(a: &Path, b: &Path) {
    let out = std::process::Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    assert!(
        out.status.success(),
        "trees differ:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
/// cp -a into the mount and back out.
fn copy_a_tree_in_and_out(c: &Cluster, scratch: &Path) {
    run_ok(
        "cp",
        &[
            "-a",
            &scratch.join("a").to_string_lossy(),
            &c.mnt.to_string_lossy(),
        ],
        &c.mnt,
    );
    diff_trees(&scratch.join("a"), &c.path("a"));
    assert_eq!(
        fs::read_link(c.path("a/b/link")).unwrap(),
        Path::new("../small.txt")
    );
    let back = c.scratch("back");
    run_ok(
        "cp",
        &[
            "-a",
            &c.path("a").to_string_lossy(),
            &back.to_string_lossy(),
        ],
        &c.mnt,
    );
    diff_trees(&scratch.join("a"), &back.join("a"));
}

/// tar c | x round trip, compared by sha256.
fn tar_round_trip(c: &Cluster, scratch: &Path) {
    let tarfile = c.path("tree.tar");
    run_ok(
        "tar",
        &[
            "-cf",
            &tarfile.to_string_lossy(),
            "-C",
            &scratch.to_string_lossy(),
            "a",
        ],
        &c.mnt,
    );
    let local_tar = c.scratch("tar").join("tree.tar");
    run_ok(
        "tar",
        &[
            "-cf",
            &local_tar.to_string_lossy(),
            "-C",
            &c.mnt.to_string_lossy(),
            "a",
        ],
        &c.mnt,
    );
    fs::create_dir(c.path("untar")).unwrap();
    run_ok(
        "tar",
        &[
            "-xf",
            &tarfile.to_string_lossy(),
            "-C",
            &c.path("untar").to_string_lossy(),
        ],
        &c.mnt,
    );
    diff_trees(&scratch.join("a"), &c.path("untar/a"));
    assert_eq!(
        sha256(&c.path("untar/a/b/big.bin")),
        sha256(&scratch.join("a/b/big.bin"))
    );
    assert_eq!(sha256(&tarfile), sha256(&c.path("tree.tar")));
}

/// git.
fn git(c: &Cluster) {
    if have("git") {
        let repo = c.path("repo");
        fs::create_dir(&repo).unwrap();
        run_ok("git", &["init", "-q"], &repo);
        fs::write(repo.join("README"), b"alces\n").unwrap();
        fs::write(repo.join("data.bin"), pattern(9, 300_000)).unwrap();
        run_ok("git", &["add", "."], &repo);
        run_ok(
            "git",
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-q",
                "-m",
                "first",
            ],
            &repo,
        );
        run_ok("git", &["fsck", "--strict"], &repo);
        let log = run_ok("git", &["log", "--oneline"], &repo);
        assert!(log.contains("first"), "git log: {log}");
        let st = run_ok("git", &["status", "--porcelain"], &repo);
        assert!(st.trim().is_empty(), "git status not clean: {st}");
    } else {
        println!("SKIPPED: git not installed");
    }
}

/// sqlite through python3's sqlite3 module.
fn sqlite(c: &Cluster) {
    let db = c.path("test.db");
    let script = format!(
        "import sqlite3\n\
         c = sqlite3.connect({db:?})\n\
         c.execute('create table t (id integer primary key, v text)')\n\
         c.executemany('insert into t (v) values (?)', [('row%d' % i,) for i in range(1000)])\n\
         c.commit()\n\
         c.close()\n\
         c = sqlite3.connect({db:?})\n\
         n, = c.execute('select count(*) from t').fetchone()\n\
         v, = c.execute('select v from t where id = 500').fetchone()\n\
         ok, = c.execute('pragma integrity_check').fetchone()\n\
         print(n, v, ok)\n",
        db = db.to_string_lossy()
    );
    if have("python3") {
        let out = run_ok("python3", &["-c", &script], &c.mnt);
        assert_eq!(out.trim(), "1000 row499 ok", "sqlite result");
    } else if have("sqlite3") {
        let sql = "create table t (id integer primary key, v text); \
                   with recursive s(i) as (select 0 union all select i+1 from s where i < 999) \
                   insert into t (v) select 'row' || i from s; select count(*) from t;";
        let out = run_ok("sqlite3", &[&db.to_string_lossy(), sql], &c.mnt);
        assert_eq!(out.trim(), "1000");
    } else {
        println!("SKIPPED: sqlite3 not installed");
    }
}

/// rsync.
fn rsync(c: &Cluster, scratch: &Path) {
    if have("rsync") {
        let dst = c.path("rsynced");
        run_ok(
            "rsync",
            &[
                "-a",
                &format!("{}/", scratch.join("a").display()),
                &dst.to_string_lossy(),
            ],
            &c.mnt,
        );
        diff_trees(&scratch.join("a"), &dst);
        fs::write(scratch.join("a/small.txt"), b"changed\n").unwrap();
        run_ok(
            "rsync",
            &[
                "-a",
                "--checksum",
                &format!("{}/", scratch.join("a").display()),
                &dst.to_string_lossy(),
            ],
            &c.mnt,
        );
        assert_eq!(fs::read(dst.join("small.txt")).unwrap(), b"changed\n");
    } else {
        println!("SKIPPED: rsync not installed");
    }
}

/// Compile and run a C program stored on the mount.
fn compile_and_run_c(c: &Cluster) {
    if have("cc") {
        let src = c.path("hello.c");
        fs::write(
            &src,
            b"#include <stdio.h>\nint main(void){unsigned s=0;for(int i=0;i<1000;i++)s+=i;printf(\"sum=%u\\n\",s);return 0;}\n",
        )
        .unwrap();
        run_ok("cc", &["-O1", "-o", "hello", "hello.c"], &c.mnt);
        let out = run_ok(&c.path("hello").to_string_lossy(), &[], &c.mnt);
        assert_eq!(out.trim(), "sum=499500");
    } else {
        println!("SKIPPED: cc not installed");
    }
}

#[test]
fn tools() {
    let c = Cluster::start_default();
    let scratch = c.scratch("src");
    make_tree(&scratch);
    copy_a_tree_in_and_out(&c, &scratch);
    tar_round_trip(&c, &scratch);
    git(&c);
    sqlite(&c);
    rsync(&c, &scratch);
    compile_and_run_c(&c);
}
