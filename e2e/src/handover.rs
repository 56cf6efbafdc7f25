//! The cost of serving a mount the way the CSI node plugin does (a handed-over
//! `/dev/fuse` descriptor and a state memfd holding the write journal:
//! `alces-mount --fuse-fd --state-fd`) against a plain `alces-mount` mount of
//! the same cluster, measured in one run (`alces-bench handover`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alces_csi::node::keeper;

use crate::{force_unmount, wait_until, Cluster};

/// One workload's figures on both mounts.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// On the plain mount.
    pub plain: f64,
    /// On the handed-over mount.
    pub handed: f64,
}

/// What `handover` measured (rates: the best of the repetitions).
#[derive(Debug, Clone)]
pub struct HandoverFigures {
    /// Sequential write of a file then fsync, MiB/s.
    pub seq_write: Pair,
    /// Sequential read of a file the other mount wrote (cold for the reader), MiB/s.
    pub seq_read: Pair,
    /// Create, stat and unlink of empty files, files/s.
    pub metadata: Pair,
    /// Size of each file written, MiB.
    pub mib: u64,
    /// Files per metadata round.
    pub files: u64,
    /// From SIGTERM (a graceful hand-over) to a listing answered by the next
    /// daemon, ms (median of the rounds; nothing buffered).
    pub handover_ms: f64,
    /// From SIGKILL to a listing answered by the next daemon (a takeover),
    /// ms (median of the rounds; nothing buffered).
    pub takeover_ms: f64,
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(131) % 251) as u8
}

fn write_file(path: &Path, mib: u64) -> f64 {
    let block: Vec<u8> = (0..1u64 << 20).map(pattern).collect();
    let t = Instant::now();
    let mut f = std::fs::File::create(path).expect("create");
    for _ in 0..mib {
        f.write_all(&block).expect("write");
    }
    f.sync_all().expect("fsync");
    mib as f64 / t.elapsed().as_secs_f64()
}

fn read_file(path: &Path, mib: u64) -> f64 {
    let t = Instant::now();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        assert!(
            buf[..n]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == pattern((total + i as u64) % (1 << 20))),
            "{} differs near byte {total}",
            path.display()
        );
        total += n as u64;
    }
    assert_eq!(total, mib << 20, "{} is short", path.display());
    mib as f64 / t.elapsed().as_secs_f64()
}

fn metadata(dir: &Path, files: u64) -> f64 {
    std::fs::create_dir_all(dir).expect("mkdir");
    let t = Instant::now();
    for i in 0..files {
        let p = dir.join(format!("f{i}"));
        std::fs::File::create(&p).expect("create");
        std::fs::metadata(&p).expect("stat");
        std::fs::remove_file(&p).expect("unlink");
    }
    files as f64 / t.elapsed().as_secs_f64()
}

/// A mount served as the CSI node plugin serves one: the caller mounts the
/// connection and keeps its descriptor and state memfd; the daemon gets them.
struct Handed {
    dir: PathBuf,
    child: std::process::Child,
    spec: keeper::DaemonSpec,
    fuse: std::os::fd::OwnedFd,
    state: std::os::fd::OwnedFd,
}

impl Handed {
    fn start(c: &Cluster) -> Self {
        let base = c.scratch("handover");
        let dir = base.join("mnt");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let fuse = keeper::open_fuse().expect("open /dev/fuse");
        keeper::mount_fuse(&fuse, &dir, &format!("alces:{}/", c.master), false, true)
            .expect("mount the FUSE connection");
        let state = keeper::new_state("alces-bench-state").expect("memfd");
        let spec = keeper::DaemonSpec {
            bin: crate::bin("alces-mount"),
            mountpoint: dir.clone(),
            master: c.master.clone(),
            subdir: "/".into(),
            read_only: false,
            secret: c.secret().into(),
            tls_flags: Vec::new(),
            log: base.join("alces-mount.log"),
        };
        let child = keeper::spawn(&spec, &fuse, &state, false).expect("start alces-mount");
        wait_until(
            "the handed-over mount to serve",
            Duration::from_secs(30),
            || std::fs::read_dir(&dir).is_ok(),
        );
        Self {
            dir,
            child,
            spec,
            fuse,
            state,
        }
    }

    /// Ends the daemon with `sig` (SIGTERM: a graceful hand-over; SIGKILL),
    /// starts the next one with `--takeover` on the same connection, as the
    /// plugin does, and returns the time from the signal to a listing the
    /// next daemon answered.
    fn replace(&mut self, sig: i32) -> Duration {
        let t = Instant::now();
        // SAFETY: plain signal to this measurement's own daemon.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
        self.child = keeper::spawn(&self.spec, &self.fuse, &self.state, true)
            .expect("start the next alces-mount");
        std::fs::read_dir(&self.dir).expect("a listing through the next daemon");
        t.elapsed()
    }
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

impl Drop for Handed {
    fn drop(&mut self) {
        force_unmount(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Measures `reps` rounds of: a `mib` MiB file written and fsynced, read back
/// through the other mount, and `files` files created, stat'ed and removed, on
/// a plain mount and on a handed-over one of the same local cluster,
/// alternating between them.
pub fn handover(mib: u64, files: u64, reps: u32) -> HandoverFigures {
    let c = Cluster::start_default();
    let mut h = Handed::start(&c);
    let plain = c.mnt.join("bench-plain");
    let handed_dir = h.dir.join("bench-handed");
    std::fs::create_dir_all(&plain).expect("mkdir");
    std::fs::create_dir_all(&handed_dir).expect("mkdir");
    // The same directories seen through the other mount.
    let plain_via_handed = h.dir.join("bench-plain");
    let handed_via_plain = c.mnt.join("bench-handed");
    let best = |a: f64, b: f64| a.max(b);
    let mut f = HandoverFigures {
        seq_write: Pair {
            plain: 0.0,
            handed: 0.0,
        },
        seq_read: Pair {
            plain: 0.0,
            handed: 0.0,
        },
        metadata: Pair {
            plain: 0.0,
            handed: 0.0,
        },
        mib,
        files,
        handover_ms: 0.0,
        takeover_ms: 0.0,
    };
    for r in 0..reps {
        let name = format!("seq-{r}");
        f.seq_write.plain = best(f.seq_write.plain, write_file(&plain.join(&name), mib));
        f.seq_write.handed = best(f.seq_write.handed, write_file(&handed_dir.join(&name), mib));
        // Each mount reads what the other wrote: nothing of it in its page cache.
        f.seq_read.plain = best(
            f.seq_read.plain,
            read_file(&handed_via_plain.join(&name), mib),
        );
        f.seq_read.handed = best(
            f.seq_read.handed,
            read_file(&plain_via_handed.join(&name), mib),
        );
        std::fs::remove_file(plain.join(&name)).expect("unlink");
        std::fs::remove_file(handed_dir.join(&name)).expect("unlink");
        f.metadata.plain = best(
            f.metadata.plain,
            metadata(&plain.join(format!("meta-{r}")), files),
        );
        f.metadata.handed = best(
            f.metadata.handed,
            metadata(&handed_dir.join(format!("meta-{r}")), files),
        );
    }
    let (mut graceful, mut killed) = (Vec::new(), Vec::new());
    // No file is kept open across a replacement: the next daemon is forked
    // from this process, and its exec would close (FUSE flush) such a file
    // while no daemon serves the connection.
    for _ in 0..reps {
        graceful.push(h.replace(libc::SIGTERM));
        killed.push(h.replace(libc::SIGKILL));
    }
    f.handover_ms = median_ms(graceful);
    f.takeover_ms = median_ms(killed);
    drop(h);
    f
}
