//! Two mounts of one cluster, each caching names and attributes under leases
//! the master breaks: neither ever sees a stale name, size, mode or content
//! after the other's close. Loops of create, overwrite, chmod, truncate,
//! rename and unlink, alternating the writing mount, each checked on the
//! other mount right after the close (which first looked at the names, so its
//! cache holds the old state); then again after a master failover (the leases
//! are dropped and taken anew from the promoted master); and with a mount
//! whose lease stream hears nothing back from the master (it must stop
//! trusting its cache, not serve what it had). Also: the cache is used (a
//! repeated stat does not reach the master).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use alces_e2e::proxy::Proxy;
use alces_e2e::{
    bin, force_unmount, is_mount_point, master_rpcs, pattern, tail, wait_until, Cluster, Options,
    Proc,
};

/// What one mount shows of `name`: None when missing, else (size, mode
/// bits, content for a regular file).
fn view(m: &Path, name: &str) -> Option<(u64, u32, Vec<u8>)> {
    let p = m.join(name);
    match fs::symlink_metadata(&p) {
        Ok(md) => {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            Some((md.len(), md.permissions().mode() & 0o7777, data))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("stat {}: {e}", p.display()),
    }
}

/// The reader mount `r` shows `name` exactly as the writer `w` does.
fn same(w: &Path, r: &Path, name: &str, after: &str) {
    let want = view(w, name);
    let got = view(r, name);
    assert_eq!(
        got.as_ref().map(|(s, m, d)| (*s, *m, d.len(), d == &want.as_ref().unwrap().2)),
        want.as_ref().map(|(s, m, d)| (*s, *m, d.len(), true)),
        "{name} after {after}: the reading mount {} shows stale state (size, mode, length, content as the writer's)",
        r.display()
    );
}

/// The reader looks at `names` (filling its cache with what they are now).
fn prime(r: &Path, names: &[&str]) {
    for n in names {
        let _ = view(r, n);
    }
}

/// One round of changes made through `w`, each checked through `r` right
/// after the close that ends it.
fn round(w: &Path, r: &Path, tag: &str, i: usize) {
    let a = format!("{tag}-{i}-a");
    let b = format!("{tag}-{i}-b");
    let names = [a.as_str(), b.as_str()];
    let (pa, pb) = (w.join(&a), w.join(&b));

    prime(r, &names);
    fs::write(&pa, pattern(i as u64, 1000 + i)).unwrap();
    same(w, r, &a, "create");

    prime(r, &names);
    fs::write(&pa, pattern(i as u64 + 7, 1000 + i)).unwrap();
    same(w, r, &a, "overwrite with the same length");

    prime(r, &names);
    fs::set_permissions(
        &pa,
        fs::Permissions::from_mode(0o600 | (i as u32 & 0o7) << 3),
    )
    .unwrap();
    same(w, r, &a, "chmod");

    prime(r, &names);
    let f = fs::OpenOptions::new().write(true).open(&pa).unwrap();
    f.set_len(100 + i as u64).unwrap();
    drop(f);
    same(w, r, &a, "truncate");

    prime(r, &names);
    let mut f = fs::OpenOptions::new().append(true).open(&pa).unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    same(w, r, &a, "append");

    prime(r, &names);
    fs::rename(&pa, &pb).unwrap();
    same(w, r, &a, "rename (source)");
    same(w, r, &b, "rename (target)");

    prime(r, &names);
    fs::remove_file(&pb).unwrap();
    same(w, r, &b, "unlink");
}

/// Rounds alternating the writing mount.
fn rounds(x: &Path, y: &Path, tag: &str, n: usize) {
    for i in 0..n {
        if i % 2 == 0 {
            round(x, y, tag, i);
        } else {
            round(y, x, tag, i);
        }
    }
}

#[test]
fn neither_mount_sees_stale_metadata_after_a_close_nor_after_a_failover() {
    let c = Cluster::start(Options {
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    })
    .expect("start cluster");
    let other = c.mount_extra("mnt-lease-b", &[]);
    let (x, y) = (c.mnt.clone(), other.path.clone());
    fs::create_dir(x.join("d")).unwrap();
    wait_until(
        "the directory on the second mount",
        Duration::from_secs(10),
        || y.join("d").is_dir(),
    );
    rounds(&x.join("d"), &y.join("d"), "before", 10);

    // The cache answers: stats of a name seen recently reach the master no
    // more (a mount without leases would ask it once per stat).
    fs::write(x.join("d/seen"), b"x").unwrap();
    let _ = fs::metadata(y.join("d/seen")).unwrap();
    let http = c.master_http();
    let asked = || master_rpcs(&http, "Lookup") + master_rpcs(&http, "GetAttr");
    // A name just changed by another mount is not leased for a moment (the
    // master's hot-inode rule), so this waits for the leases to be granted.
    let mut calls = 0;
    wait_until(
        "100 stats of one name answered by the lease cache",
        Duration::from_secs(20),
        || {
            let before = asked();
            for _ in 0..100 {
                assert_eq!(fs::metadata(y.join("d/seen")).unwrap().len(), 1);
            }
            calls = asked() - before;
            calls < 20
        },
    );
    assert!(calls < 20, "100 stats asked the master {calls} times");

    c.kill9(Proc::Master);
    let out = c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    rounds(&x.join("d"), &y.join("d"), "after", 10);
}

/// A mount through a proxy that can lose the master's answers.
struct ProxiedMount {
    path: std::path::PathBuf,
    log: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for ProxiedMount {
    fn drop(&mut self) {
        force_unmount(&self.path);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxied_mount(c: &Cluster, proxy: &Proxy) -> ProxiedMount {
    let path = c.scratch("mnt-lease-proxied");
    let log = c.scratch("mnt-lease-proxied-log").join("mount.log");
    fs::create_dir_all(&path).unwrap();
    let child = Command::new(bin("alces-mount"))
        .arg(&path)
        .arg("--master")
        .arg(proxy.addr())
        .arg("--secret-file")
        .arg(&c.secret_file)
        .args(c.tls_flags())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("start alces-mount");
    let mut m = ProxiedMount { path, log, child };
    wait_until("the proxied mount", Duration::from_secs(30), || {
        if let Ok(Some(st)) = m.child.try_wait() {
            panic!("alces-mount exited ({st}): {}", tail(&m.log, 30));
        }
        is_mount_point(&m.path)
    });
    m
}

#[test]
fn a_mount_that_hears_nothing_from_the_master_stops_trusting_its_cache() {
    let c = Cluster::start_default();
    let proxy = Proxy::start(&c.master).expect("proxy");
    let a = proxied_mount(&c, &proxy);
    let b = c.mnt.clone();
    let (fa, fb) = (a.path.join("f"), b.join("f"));
    fs::write(&fb, pattern(1, 3000)).unwrap();
    for _ in 0..3 {
        assert_eq!(
            fs::metadata(&fa).unwrap().len(),
            3000,
            "the proxied mount sees the file"
        );
    }

    // The proxied mount's messages reach the master, nothing comes back: it
    // gets no break, and no renewal of its leases.
    proxy.drop_replies(true);
    fs::write(&fb, pattern(2, 5000)).unwrap();
    fs::set_permissions(&fb, fs::Permissions::from_mode(0o640)).unwrap();
    // B's changes are acknowledged (the master waited for A's leases to
    // lapse). A stat on A now must not answer from its cache: it waits for
    // the master, which it reaches again once the connections are cut.
    let stat = std::thread::spawn(move || {
        fs::metadata(&fa).map(|m| (m.len(), m.permissions().mode() & 0o7777))
    });
    std::thread::sleep(Duration::from_millis(1500));
    proxy.drop_replies(false);
    proxy.cut();
    let seen = stat
        .join()
        .unwrap()
        .expect("stat through the proxied mount");
    assert_eq!(
        seen,
        (5000, 0o640),
        "a mount that heard no break answered from its cache (size, mode)"
    );
    // And it carries on coherently with a new lease stream.
    rounds(&a.path, &b, "healed", 4);
    drop(a);
}
