//! Damaged files on disk: corrupt and truncated chunk files never yield wrong
//! bytes; a torn changelog tail and a corrupt newest snapshot are recovered from.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alces_e2e::{changelog_records_end, pattern, wait_until, write_synced, Cluster, Options, Proc};

/// Reads `p`; Ok(bytes) or the errno.
fn read(p: &Path) -> Result<Vec<u8>, i32> {
    fs::read(p).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn flip_byte(file: &Path, offset: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8; 1];
    use std::io::Read;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0xFF]).unwrap();
    f.sync_all().unwrap();
}

fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(prefix) && !n.ends_with(".tmp")
        })
        .collect();
    v.sort();
    v
}

fn listing(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Shows what the master logged about the damage it recovered from.
fn print_warnings(c: &Cluster) {
    let log = fs::read_to_string(c.log(Proc::Master)).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
    {
        println!("master: {l}");
    }
}

#[test]
fn corruption() {
    let c = Cluster::start(Options {
        goal: Some(1),
        env: vec![("ALCES_SNAPSHOT_INTERVAL".into(), "1".into())],
        ..Options::default()
    })
    .expect("cluster");

    // 1. A flipped byte in the data area of every copy: EIO, never wrong bytes.
    let data = pattern(31, 2 * 1024 * 1024);
    write_synced(&c.path("flip"), &data).unwrap();
    let info = c.file_info("/flip").expect("FileInfo /flip");
    assert_eq!(info.chunks.len(), 2);
    let id0 = info.chunks[0].chunk_id;
    let copies = c.chunk_copies(id0);
    assert!(
        !copies.is_empty(),
        "no chunk file for chunk {id0:016x} under the chunkservers' data dirs"
    );
    for f in &copies {
        flip_byte(f, 8192 + 70_000);
    }
    // A fresh mount has no page cache of the file.
    let m1 = c.mount_extra("mnt-c1", &[]);
    match read(&m1.path.join("flip")) {
        Ok(got) => panic!(
            "read of a corrupt chunk succeeded (correct bytes: {})",
            got == data
        ),
        Err(e) => assert_eq!(e, libc::EIO, "corrupt chunk must read as EIO"),
    }
    // The intact second chunk is still readable on its own.
    {
        use std::io::Read;
        let mut f = fs::File::open(m1.path.join("flip")).unwrap();
        f.seek(SeekFrom::Start(1024 * 1024)).unwrap();
        let mut buf = vec![0u8; 1024 * 1024];
        f.read_exact(&mut buf).expect("the undamaged chunk");
        assert!(buf == data[1024 * 1024..]);
    }
    drop(m1);

    // 2. A truncated chunk file: EIO or correct data, never wrong bytes.
    let data2 = pattern(32, 1024 * 1024);
    write_synced(&c.path("short"), &data2).unwrap();
    let info = c.file_info("/short").expect("FileInfo /short");
    for f in c.chunk_copies(info.chunks[0].chunk_id) {
        let fh = fs::OpenOptions::new().write(true).open(&f).unwrap();
        fh.set_len(8192 + 100_000).unwrap();
        fh.sync_all().unwrap();
    }
    let m2 = c.mount_extra("mnt-c2", &[]);
    match read(&m2.path.join("short")) {
        Ok(got) => assert!(got == data2, "a truncated chunk file produced wrong bytes"),
        Err(e) => assert_eq!(e, libc::EIO),
    }
    drop(m2);

    // 3. A torn changelog tail: the master starts and keeps every complete record.
    for i in 0..5 {
        fs::create_dir(c.path(&format!("before-{i}"))).unwrap();
    }
    c.kill9(Proc::Master);
    let mdata = c.master_data();
    let logs = files_named(&mdata, "changelog.");
    let newest = logs.last().unwrap_or_else(|| {
        panic!(
            "no changelog.* in {}: {:?}",
            mdata.display(),
            listing(&mdata)
        )
    });
    let len = changelog_records_end(newest);
    if len > 3 {
        let f = fs::OpenOptions::new().write(true).open(newest).unwrap();
        f.set_len(len - 3).unwrap();
    }
    println!("tore 3 bytes off {}", newest.display());
    c.restart(Proc::Master);
    print_warnings(&c);
    // The last record may be lost; everything before it is there.
    for i in 0..4 {
        let p = c.path(&format!("before-{i}"));
        wait_until(
            &format!("{} after the torn-tail restart", p.display()),
            Duration::from_secs(30),
            || p.is_dir(),
        );
    }
    assert!(
        c.path("flip").exists(),
        "a file from before the torn tail is gone"
    );

    // 4. A corrupt newest snapshot: the master falls back to the previous one.
    let mut i = 0;
    wait_until(
        "two snapshots in the master data dir",
        Duration::from_secs(60),
        || {
            i += 1;
            let _ = fs::create_dir(c.path(&format!("snap-{i}")));
            files_named(&mdata, "snapshot.").len() >= 2
        },
    );
    let made = i;
    c.kill9(Proc::Master);
    let snaps = files_named(&mdata, "snapshot.");
    let newest = snaps.last().unwrap();
    let len = fs::metadata(newest).unwrap().len();
    for off in [len / 2, len.saturating_sub(10), 20.min(len - 1)] {
        flip_byte(newest, off);
    }
    println!(
        "corrupted {} (of {} snapshots)",
        newest.display(),
        snaps.len()
    );
    c.restart(Proc::Master);
    print_warnings(&c);
    for j in 1..=made {
        let p = c.path(&format!("snap-{j}"));
        wait_until(
            &format!("{} after falling back to the older snapshot", p.display()),
            Duration::from_secs(30),
            || p.is_dir(),
        );
    }
    for i in 0..4 {
        assert!(c.path(&format!("before-{i}")).is_dir());
    }
    assert!(
        read(&c.path("short")).map(|g| g == data2).unwrap_or(true),
        "wrong bytes after restarts"
    );
    let st = c.status().expect("status after recovery");
    assert!(st.metadata_version > 0);
}
