//! Alces, started with `alces local up` (three chunkservers) in the private network
//! namespace. Each goal gets its own cluster started with `--default-goal` (not a
//! directory goal set with `alces goal set`); the goal-2 cluster is the main one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{mkdirs, System};
use crate::cleanup::{self, Guard};
use crate::cli::SystemKind;
use alces_e2e::{Options, Proc};

use crate::exec::{
    in_netns, is_mounted, pids_mentioning, run, spawn_logged, stop_child, stop_pid, unmount,
    wait_for,
};
use crate::netns;

/// Goal of the main cluster (the default goal of the other workloads).
pub const MAIN_GOAL: u32 = 2;

/// Binaries the harness needs, all in one directory.
pub const BINARIES: [&str; 4] = ["alces", "alces-master", "alces-chunkserver", "alces-mount"];

/// The packages that build [`BINARIES`].
pub const PACKAGES: [&str; 4] = [
    "alces-cli",
    "alces-master",
    "alces-chunkserver",
    "alces-client",
];

/// The cargo workspace this crate lives in.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds the Alces binaries in release mode; the error holds cargo's last lines.
pub fn build() -> Result<()> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_dir())
        .args(["build", "--release", "--bins"]);
    for p in PACKAGES {
        c.args(["-p", p]);
    }
    let out = c.output().context("cannot run cargo build")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("error"))
            .take(3)
            .collect();
        bail!("cargo build --release failed: {}", tail.join(" | "));
    }
    Ok(())
}

/// Checks that every binary is in `bin_dir`.
pub fn check_binaries(bin_dir: &Path) -> Result<()> {
    for b in BINARIES {
        if !bin_dir.join(b).is_file() {
            bail!(
                "{} is missing (build with `cargo build --release {}`)",
                bin_dir.join(b).display(),
                PACKAGES.map(|p| format!("-p {p}")).join(" ")
            );
        }
    }
    Ok(())
}

/// One `alces local` cluster, started by the harness of `alces-e2e` in the private
/// network namespace, with a guard that stops it also on a signal.
struct Cluster {
    cluster: alces_e2e::Cluster,
    _guard: Guard,
}

/// Stops the cluster in `root`: first an `alces local up` still starting it (so it
/// starts nothing more), then `alces local down`, then whatever process of it is left.
fn stop_cluster(alces: &Path, root: &Path) {
    let dir = root.join("cluster");
    let needle = dir.to_string_lossy().into_owned();
    for pid in pids_mentioning(&needle) {
        let is_cli =
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "alces");
        if is_cli {
            stop_pid(pid, Duration::from_secs(5));
        }
    }
    let _ = Command::new(alces)
        .args(["local", "down", "--dir"])
        .arg(&dir)
        .output();
    for pid in pids_mentioning(&root.to_string_lossy()) {
        stop_pid(pid, Duration::from_secs(10));
    }
    unmount(&root.join("mnt"));
}

impl Cluster {
    fn start(bin_dir: &Path, base: &Path, goal: u32, tls: bool) -> Result<Cluster> {
        let root = base.join(format!("g{goal}"));
        mkdirs(base)?;
        let alces = bin_dir.join("alces");
        let guard = Guard::new(format!("Alces cluster {}", root.display()), {
            let (alces, root) = (alces.clone(), root.clone());
            move || stop_cluster(&alces, &root)
        });
        let opts = Options {
            chunkservers: 3,
            chunk_size: None,
            goal: Some(goal),
            env: Vec::new(),
            metaloggers: 1,
            root: Some(root),
            netns: Some(netns::NAME.into()),
            tls,
        };
        let cluster =
            alces_e2e::Cluster::start_with(&alces, opts).context("`alces local up` failed")?;
        Ok(Cluster {
            cluster,
            _guard: guard,
        })
    }
}

/// Running Alces clusters, by goal.
pub struct Alces {
    bin_dir: PathBuf,
    base: PathBuf,
    clusters: BTreeMap<u32, Cluster>,
    extra: Vec<Guard>,
    /// Every connection with mutual TLS.
    tls: bool,
}

impl Drop for Alces {
    fn drop(&mut self) {
        self.extra.clear();
        self.clusters.clear();
    }
}

impl Alces {
    /// Starts the main (goal 2) cluster under `base` with the binaries of
    /// `bin_dir`, with mutual TLS when `tls`.
    pub fn start(bin_dir: PathBuf, base: PathBuf, tls: bool) -> Result<Alces> {
        check_binaries(&bin_dir)?;
        let main = cleanup::starting("starting Alces", || {
            Cluster::start(&bin_dir, &base, MAIN_GOAL, tls)
        })?;
        let mut clusters = BTreeMap::new();
        clusters.insert(MAIN_GOAL, main);
        Ok(Alces {
            bin_dir,
            base,
            clusters,
            extra: Vec::new(),
            tls,
        })
    }

    fn main(&self) -> Result<&Cluster> {
        self.clusters
            .get(&MAIN_GOAL)
            .context("the main Alces cluster is not running")
    }
}

impl System for Alces {
    fn kind(&self) -> SystemKind {
        if self.tls {
            SystemKind::AlcesTls
        } else {
            SystemKind::Alces
        }
    }

    fn version(&self) -> String {
        let ws = workspace_dir();
        let rev =
            run(Command::new("git")
                .arg("-C")
                .arg(&ws)
                .args(["rev-parse", "--short", "HEAD"]))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let dirty = run(Command::new("git").arg("-C").arg(&ws).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .map(|s| !s.trim().is_empty())
        .unwrap_or(false);
        format!(
            "Alces git {rev}{}",
            if dirty { " + uncommitted changes" } else { "" }
        )
    }

    fn make_dir(&mut self, rel: &str, goal: u32) -> Result<PathBuf> {
        if !self.clusters.contains_key(&goal) {
            let c = cleanup::starting("starting an Alces cluster", || {
                Cluster::start(&self.bin_dir, &self.base, goal, self.tls)
            })
            .with_context(|| format!("cannot start an Alces cluster with goal {goal}"))?;
            self.clusters.insert(goal, c);
        }
        let c = self.clusters.get(&goal).context("cluster vanished")?;
        let p = c.cluster.mnt.join(rel);
        mkdirs(&p)?;
        Ok(p)
    }

    fn open_mounts(&mut self, n: usize) -> Result<Vec<PathBuf>> {
        let (master, secret, tls) = {
            let m = &self.main()?.cluster;
            (m.master.clone(), m.secret_file.clone(), m.tls_flags())
        };
        let mut roots = Vec::new();
        for i in 0..n {
            let at = self.base.join(format!("mnt-extra{i}"));
            mkdirs(&at)?;
            let log = self.base.join(format!("mount-extra{i}.log"));
            let mut c = Command::new(self.bin_dir.join("alces-mount"));
            in_netns(&mut c, netns::NAME)?;
            c.arg(&at)
                .arg("--master")
                .arg(&master)
                .arg("--secret-file")
                .arg(&secret)
                .args(&tls);
            let mut child = cleanup::starting("starting a mount", || spawn_logged(&mut c, &log))?;
            let ok = wait_for(
                &format!("alces-mount on {}", at.display()),
                Duration::from_secs(30),
                || is_mounted(&at) || matches!(child.try_wait(), Ok(Some(_))),
            );
            if ok.is_err() || !is_mounted(&at) {
                stop_child(&mut child, Duration::from_secs(5));
                bail!(
                    "alces-mount did not mount {}; see {}",
                    at.display(),
                    log.display()
                );
            }
            let p = at.clone();
            self.extra.push(Guard::new(
                format!("alces-mount {}", at.display()),
                move || {
                    unmount(&p);
                    stop_child(&mut child, Duration::from_secs(10));
                },
            ));
            roots.push(at);
        }
        Ok(roots)
    }

    fn close_mounts(&mut self) {
        self.extra.clear();
    }

    fn processes(&self) -> Vec<i32> {
        self.main()
            .map(|c| pids_mentioning(&c.cluster.dir.to_string_lossy()))
            .unwrap_or_default()
    }

    fn master_pid(&self) -> Option<i32> {
        self.main().ok().and_then(|c| c.cluster.pid(Proc::Master))
    }
}
