//! Directory listings with attributes (READDIRPLUS) on real mounts: a
//! listing followed by a stat of every entry (what `ls -l` does) costs one
//! master `Readdir` per page and no `Lookup`/`GetAttr` per entry, and a
//! directory the mount holds whole no `Readdir` at all; what the
//! listing cached never hides another mount's change (size, removal,
//! creation of a name the listing did not have); hostile names (255 bytes,
//! newlines, several pages of entries) list and stat exactly; a directory
//! changing while it is listed neither crashes the mount nor loops.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alces_e2e::{master_rpcs, wait_until, Cluster};

/// What `ls -l` does: lists `dir`, then stats every entry. Entries removed
/// between the listing and their stat are left out.
fn ls_l(dir: &Path) -> BTreeMap<OsString, u64> {
    let names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").file_name())
        .collect();
    let mut out = BTreeMap::new();
    for n in names {
        match fs::symlink_metadata(dir.join(&n)) {
            Ok(md) => {
                assert!(
                    out.insert(n.clone(), md.len()).is_none(),
                    "{n:?} listed twice in {}",
                    dir.display()
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("stat {n:?}: {e}"),
        }
    }
    out
}

/// Master calls made so far: (Readdir, Lookup + GetAttr).
fn calls(http: &str) -> (u64, u64) {
    (
        master_rpcs(http, "Readdir"),
        master_rpcs(http, "Lookup") + master_rpcs(http, "GetAttr"),
    )
}

/// Waits until the mount at `m` answers stats of `probe` from its lease
/// cache (its lease stream is open), so what follows is measured with it.
fn leases_in_use(http: &str, m: &Path, probe: &str) {
    wait_until(
        "stats answered by the lease cache",
        Duration::from_secs(30),
        || {
            let (_, before) = calls(http);
            for _ in 0..20 {
                fs::symlink_metadata(m.join(probe)).expect("stat the probe");
            }
            calls(http).1 - before < 5
        },
    );
}

#[test]
fn a_listing_then_a_stat_of_each_entry_costs_no_master_call_per_entry() {
    const N: usize = 300;
    let c = Cluster::start_default();
    fs::write(c.path("probe"), b"p").unwrap();
    fs::create_dir(c.path("many")).unwrap();
    for i in 0..N {
        fs::write(c.path(&format!("many/f{i:04}")), vec![b'x'; i % 50]).unwrap();
    }
    // A second mount that has seen none of these names.
    let other = c.mount_extra("mnt-rdplus-cost", &[]);
    let http = c.master_http();
    leases_in_use(&http, &other.path, "probe");
    fs::symlink_metadata(other.path.join("many")).unwrap();

    let (r0, l0) = calls(&http);
    let listed = ls_l(&other.path.join("many"));
    let (r1, l1) = calls(&http);
    assert_eq!(listed.len(), N, "every file listed");
    for (i, (name, size)) in listed.iter().enumerate() {
        assert_eq!(name.as_bytes(), format!("f{i:04}").as_bytes());
        assert_eq!(*size, (i % 50) as u64, "size of {name:?}");
    }
    let (readdirs, per_entry) = (r1 - r0, l1 - l0);
    println!(
        "figure: ls -l of {N} entries: {readdirs} Readdir, {per_entry} Lookup+GetAttr \
         ({:.3} Lookup+GetAttr per entry)",
        per_entry as f64 / N as f64
    );
    assert_eq!(readdirs, 1, "one page of {N} entries is one Readdir");
    assert!(
        per_entry <= 2,
        "the stats after the listing asked the master {per_entry} times for {N} entries"
    );

    // A second `ls -l` stats from the cache, and lists from it too when the
    // first listing was leased whole (no name in it changed by another mount
    // within the last second, the master's hot-inode rule): 0 or 1 Readdir.
    let again = ls_l(&other.path.join("many"));
    let (r2, l2) = calls(&http);
    assert_eq!(again, listed);
    assert!(r2 - r1 <= 1, "{} Readdir for the second listing", r2 - r1);
    assert!(l2 - l1 <= 2, "{} calls on the second listing", l2 - l1);
}

#[test]
fn a_directory_this_mount_made_is_listed_from_its_cache_until_another_mount_changes_it() {
    let c = Cluster::start_default();
    fs::write(c.path("probe"), b"p").unwrap();
    let other = c.mount_extra("mnt-rdplus-own", &[]);
    let http = c.master_http();
    leases_in_use(&http, &c.path(""), "probe");
    let own = c.path("own");
    fs::create_dir(&own).unwrap();
    for i in 0..50 {
        fs::write(own.join(format!("f{i:02}")), vec![b'y'; i]).unwrap();
    }
    fs::create_dir(own.join("sub")).unwrap();
    std::os::unix::fs::symlink("f01", own.join("ln")).unwrap();

    // The files' attributes went when their writer closed them, so the
    // first `ls -l` may list with the master (and is then known whole); the
    // next listing is answered by the mount alone.
    let (r0, l0) = calls(&http);
    let listed = ls_l(&own);
    let (r1, l1) = calls(&http);
    let kinds: BTreeMap<OsString, (bool, bool)> = fs::read_dir(&own)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            (e.file_name(), (t.is_dir(), t.is_symlink()))
        })
        .collect();
    let again = ls_l(&own);
    let (r2, l2) = calls(&http);
    assert_eq!(listed.len(), 52, "{listed:?}");
    assert_eq!(again, listed);
    for i in 0..50 {
        assert_eq!(listed[&OsString::from(format!("f{i:02}"))], i as u64);
    }
    assert_eq!(kinds.len(), 52);
    assert_eq!(kinds[&OsString::from("sub")], (true, false));
    assert_eq!(kinds[&OsString::from("ln")], (false, true));
    assert_eq!(kinds[&OsString::from("f07")], (false, false));
    println!(
        "figure: ls -l of a directory this mount made and wrote: {} Readdir, {} Lookup+GetAttr; \
         then a listing and another ls -l: {} Readdir, {} Lookup+GetAttr",
        r1 - r0,
        l1 - l0,
        r2 - r1,
        l2 - l1
    );
    assert!(r1 - r0 <= 1, "{} Readdir for one listing", r1 - r0);
    assert!(l1 - l0 <= 2, "{} Lookup+GetAttr", l1 - l0);
    assert_eq!(r2 - r1, 0, "the mount knew the directory whole");
    assert!(l2 - l1 <= 2, "{} Lookup+GetAttr", l2 - l1);

    // Another mount's changes break the lease before they are acknowledged:
    // the next listing asks the master and shows them.
    let there = other.path.join("own");
    fs::write(there.join("new"), b"n").unwrap();
    fs::remove_file(there.join("f00")).unwrap();
    let after = ls_l(&own);
    assert!(after.contains_key(&OsString::from("new")), "{after:?}");
    assert!(!after.contains_key(&OsString::from("f00")), "{after:?}");
    assert_eq!(after.len(), 52);
    let (r3, _) = calls(&http);
    assert!(r3 > r2, "the broken directory was listed by the master");
}

#[test]
fn another_mounts_changes_show_after_a_listing() {
    let c = Cluster::start_default();
    let other = c.mount_extra("mnt-rdplus-coherent", &[]);
    let (x, y) = (c.path("d"), other.path.join("d"));
    fs::create_dir(&x).unwrap();
    for i in 0..20 {
        fs::write(x.join(format!("f{i}")), b"0123456789").unwrap();
    }
    wait_until(
        "the directory on the second mount",
        Duration::from_secs(10),
        || y.is_dir(),
    );
    leases_in_use(&c.master_http(), &other.path, "d");
    for round in 0..5u64 {
        // The listing fills y's cache with every name and size.
        let before = ls_l(&y);
        assert_eq!(before, ls_l(&x), "round {round}: listings differ");
        // y has every name: a name not listed is missing.
        let late = format!("late{round}");
        assert!(
            !y.join(&late).exists(),
            "round {round}: {late} before it was made"
        );

        // x changes a size, removes a name, makes a new one.
        let grown = x.join(format!("f{round}"));
        let mut f = fs::OpenOptions::new().append(true).open(&grown).unwrap();
        std::io::Write::write_all(&mut f, &vec![b'g'; 100 + round as usize]).unwrap();
        drop(f);
        fs::remove_file(x.join(format!("f{}", 10 + round))).unwrap();
        fs::write(x.join(&late), b"late").unwrap();

        // y sees each change at once, by stat and by listing.
        let md = fs::symlink_metadata(y.join(format!("f{round}"))).unwrap();
        assert_eq!(
            md.len(),
            110 + round,
            "round {round}: stale size after a listing"
        );
        assert!(
            !y.join(format!("f{}", 10 + round)).exists(),
            "round {round}: a removed name still shows"
        );
        assert_eq!(fs::read(y.join(&late)).unwrap(), b"late", "round {round}");
        let after = ls_l(&y);
        assert_eq!(after, ls_l(&x), "round {round}: listing after the changes");
        assert_eq!(
            after.get(&OsString::from(format!("f{round}"))),
            Some(&(110 + round))
        );
        assert!(!after.contains_key(&OsString::from(format!("f{}", 10 + round))));
    }

    // A directory removed by the other mount while open here lists empty
    // (the listing was taken at opendir), without an error.
    fs::create_dir(x.join("gone")).unwrap();
    wait_until(
        "the new directory on the second mount",
        Duration::from_secs(10),
        || y.join("gone").is_dir(),
    );
    let open = fs::read_dir(y.join("gone")).expect("open the directory");
    fs::remove_dir(x.join("gone")).unwrap();
    let left: Vec<_> = open
        .collect::<Result<_, _>>()
        .expect("list a removed directory");
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn hostile_names_and_several_pages_list_exactly() {
    // The master's largest page is 10 000 entries: this takes two.
    const MANY: usize = 10_050;
    let c = Cluster::start_default();
    let other = c.mount_extra("mnt-rdplus-hostile", &[]);
    let d = c.path("h");
    fs::create_dir(&d).unwrap();
    let mut want: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    let hostile: Vec<Vec<u8>> = vec![
        vec![b'n'; 255],
        ("é".repeat(127) + "x").into_bytes(),
        b"line\nbreak".to_vec(),
        b"\n".to_vec(),
        b"tab\there".to_vec(),
        b" leading and trailing ".to_vec(),
        b"-rf".to_vec(),
        b"...".to_vec(),
        b"\x7f\x01\xff\xfe not utf-8".to_vec(),
        b"*?[]{}$`'\"\\".to_vec(),
    ];
    for (i, n) in hostile.iter().enumerate() {
        fs::write(d.join(OsString::from_vec(n.clone())), vec![b'h'; i + 1]).unwrap();
        want.insert(n.clone(), i as u64 + 1);
    }
    for i in 0..MANY {
        let n = format!("p{i:05}");
        fs::File::create(d.join(&n)).unwrap();
        want.insert(n.into_bytes(), 0);
    }
    let http = c.master_http();
    leases_in_use(&http, &other.path, "h");
    let (r0, l0) = calls(&http);
    let got: BTreeMap<Vec<u8>, u64> = ls_l(&other.path.join("h"))
        .into_iter()
        .map(|(n, s)| (n.into_vec(), s))
        .collect();
    let (r1, l1) = calls(&http);
    let missing: Vec<_> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = got
        .keys()
        .filter(|k| !want.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(got, want, "sizes of the listed names");
    println!(
        "figure: ls -l of {} entries: {} Readdir, {} Lookup+GetAttr",
        want.len(),
        r1 - r0,
        l1 - l0
    );
    assert_eq!(r1 - r0, 2, "{} entries are two Readdir pages", want.len());
    assert!(l1 - l0 <= 2, "{} master calls for the stats", l1 - l0);
}

#[test]
fn a_directory_changing_while_listed_lists_without_loops() {
    let c = Cluster::start_default();
    let other = c.mount_extra("mnt-rdplus-churn", &[]);
    let d = c.path("churn");
    fs::create_dir(&d).unwrap();
    let stable: BTreeSet<OsString> = (0..200)
        .map(|i| OsString::from(format!("s{i:03}")))
        .collect();
    for n in &stable {
        fs::write(d.join(n), b"s").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = d.join(format!("c{:03}", i % 300));
                if i.is_multiple_of(2) {
                    fs::write(&n, b"c").unwrap();
                } else {
                    let _ = fs::remove_file(d.join(format!("c{:03}", (i - 1) % 300)));
                }
                if i.is_multiple_of(7) {
                    let _ = fs::rename(&n, d.join(format!("r{:03}", i % 50)));
                }
                i += 1;
            }
            i
        })
    };
    let y = other.path.join("churn");
    for _ in 0..30 {
        let listed = ls_l(&y);
        for n in &stable {
            assert_eq!(
                listed.get(n),
                Some(&1),
                "{n:?} (never changed) in a listing"
            );
        }
        assert!(
            listed.len() < stable.len() + 400,
            "{} entries",
            listed.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let changes = churn.join().expect("churn thread");
    assert!(changes > 0);
    // Once the directory is still, both mounts list the same.
    assert_eq!(ls_l(&y), ls_l(&d));
}
