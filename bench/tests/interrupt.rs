//! `alces-bench all` interrupted at several points of a run (its network
//! namespace just made, an Alces cluster half started, the cluster mounted, a
//! workload running, the results being written), with SIGINT, SIGTERM or two
//! SIGINTs in a row, stops and unmounts everything it started: no process of
//! the run, no mount under its work directory and no namespace is left.
//! Phases too short to catch are held with `ALCES_BENCH_HOLD` (the run waits
//! after printing the phase's marker until the signal). MooseFS is included
//! when it is installed (the test says which).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The benchmark's fixed network namespace.
const NETNS: &str = "alces-bench";

/// Processes (other than this test) whose command line mentions `dir`.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&needle) {
            out.push(format!("{pid}: {}", cmd.trim()));
        }
    }
    out
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn netns_exists() -> bool {
    Path::new("/run/netns").join(NETNS).exists()
}

/// Whether a process of program `comm` mentioning `dir` runs.
fn running(comm: &str, dir: &Path) -> bool {
    processes_mentioning(dir).iter().any(|p| {
        let pid = p.split(':').next().unwrap_or_default();
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

/// Whether a point is reached, from the work directory and the bench's log.
type Reached = Box<dyn Fn(&Path, &str) -> bool>;

/// A point of the run at which the benchmark is interrupted.
struct Point {
    name: &'static str,
    reached: Reached,
    /// The signals sent, 200 ms apart.
    signals: &'static [i32],
    /// The phase the run is asked to wait in (`ALCES_BENCH_HOLD`).
    hold: Option<&'static str>,
}

impl Point {
    fn sigint(name: &'static str, reached: Reached) -> Self {
        Point {
            name,
            reached,
            signals: &[libc::SIGINT],
            hold: None,
        }
    }
}

/// Starts the benchmark, interrupts it once `point` is reached and checks that
/// nothing of the run is left.
fn interrupt_at(point: &Point, systems: &[&str], tmp: &Path) {
    // Letters and digits only: `alces local up` takes data directories as a
    // comma-separated list.
    let slug: String = point
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let work = tmp.join(format!("work-{slug}"));
    let log = tmp.join(format!("{slug}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_alces-bench"));
    cmd.args([
        "all",
        "--quick",
        "--only",
        "seq",
        "--no-build",
        "--alces-bin-dir",
    ])
    .arg(alces_e2e::bin_dir())
    .arg("--work-dir")
    .arg(&work)
    .arg("--results-dir")
    .arg(tmp.join("results"));
    for s in systems {
        cmd.args(["--system", s]);
    }
    if let Some(h) = point.hold {
        cmd.env("ALCES_BENCH_HOLD", h);
    }
    let err = std::fs::File::create(&log).expect("log file");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start alces-bench");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if (point.reached)(&work, &text) {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "alces-bench exited ({st}) before reaching '{}':\n{text}",
                point.name
            );
        }
        assert!(
            Instant::now() < deadline,
            "alces-bench did not reach '{}' within 180 s:\n{text}",
            point.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, &sig) in point.signals.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(200));
        }
        // SAFETY: kill(2) on our own child's pid (still a zombie at worst:
        // it is not waited for until below).
        unsafe { libc::kill(child.id() as i32, sig) };
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "alces-bench did not exit within 240 s of {:?} at '{}':\n{}",
                point.signals,
                point.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        status.code(),
        Some(130),
        "alces-bench interrupted at '{}' should exit 130:\n{text}",
        point.name
    );
    let procs = processes_mentioning(&work);
    let mounts = mounts_under(&work);
    let ns = netns_exists();
    // Leave the machine clean for the next point even when this one failed.
    if !procs.is_empty() || !mounts.is_empty() || ns {
        let _ = Command::new(env!("CARGO_BIN_EXE_alces-bench"))
            .arg("cleanup")
            .arg("--work-dir")
            .arg(&work)
            .output();
    }
    assert!(
        procs.is_empty(),
        "processes left after the signal at '{}': {procs:#?}\n{text}",
        point.name
    );
    assert!(
        mounts.is_empty(),
        "mounts left after the signal at '{}': {mounts:?}\n{text}",
        point.name
    );
    assert!(
        !ns,
        "network namespace {NETNS} left after the signal at '{}'\n{text}",
        point.name
    );
    assert!(
        !work.exists(),
        "work directory {} left after the signal at '{}'",
        work.display(),
        point.name
    );
    eprintln!(
        "covered: {:?} at '{}' left nothing behind",
        point.signals, point.name
    );
}

#[test]
fn an_interrupted_run_leaves_nothing_behind() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the benchmark needs root (network namespaces, FUSE mounts)");
        return;
    }
    assert!(
        Command::new("ip").arg("-V").output().is_ok(),
        "ip(8) is needed for the benchmark's network namespace"
    );
    let tmp = tempfile::Builder::new()
        .prefix("alces-bench-interrupt-")
        .tempdir()
        .expect("temp dir");
    let moosefs = Path::new("/usr/sbin/mfsmaster").exists();
    let mut systems = vec!["alces"];
    let mut points = vec![
        Point::sigint("namespace made", Box::new(|_, _| netns_exists())),
        Point::sigint(
            "alces master started",
            Box::new(|work, _| running("alces-master", work)),
        ),
        Point {
            signals: &[libc::SIGINT, libc::SIGINT],
            ..Point::sigint(
                "alces mounted, Ctrl-C twice",
                Box::new(|work, _| !mounts_under(work).is_empty()),
            )
        },
        Point::sigint(
            "workload running",
            Box::new(|_, log| log.contains("alces-bench: seq rep 1/1")),
        ),
        Point {
            signals: &[libc::SIGTERM],
            ..Point::sigint(
                "workload running, SIGTERM",
                Box::new(|_, log| log.contains("alces-bench: seq rep 1/1")),
            )
        },
        Point {
            hold: Some("writing results"),
            ..Point::sigint(
                "writing results",
                Box::new(|_, log| log.contains("alces-bench: phase writing results")),
            )
        },
    ];
    if moosefs {
        systems.push("moosefs");
        points.push(Point::sigint(
            "moosefs master started",
            Box::new(|work, _| running("mfsmaster", work)),
        ));
        eprintln!("MooseFS is installed: interrupting runs of Alces and MooseFS");
    } else {
        eprintln!(
            "MooseFS is not installed (the benchmark installs it when asked for it): \
             interrupting runs of Alces only"
        );
    }
    for p in &points {
        interrupt_at(p, &systems, tmp.path());
    }
}
