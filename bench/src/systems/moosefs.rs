//! MooseFS 3.0 from Debian: one mfsmaster, three mfschunkservers and mfsmount, all in
//! the private network namespace, each with its own configuration and data directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{mkdirs, System};
use crate::cleanup::{self, Guard};
use crate::cli::SystemKind;
use crate::exec::{in_netns, is_mounted, run, spawn_logged, stop_child, unmount, wait_for};
use crate::netns;

/// Debian packages that hold MooseFS 3.0.
pub const PACKAGES: [&str; 4] = [
    "moosefs-master",
    "moosefs-chunkserver",
    "moosefs-client",
    "moosefs-metalogger",
];

/// Port the master serves clients on.
const CLIENT_PORT: u16 = 9421;
/// Number of chunkservers (as for Alces).
const CHUNKSERVERS: usize = 3;
/// How long the master may take to save its metadata when stopped.
const MASTER_STOP_GRACE: Duration = Duration::from_secs(60);

/// Installs the MooseFS packages with apt-get when `mfsmaster` is missing.
pub fn ensure_installed() -> Result<()> {
    if Path::new("/usr/sbin/mfsmaster").exists()
        && Path::new("/usr/sbin/mfschunkserver").exists()
        && Path::new("/usr/bin/mfsmount").exists()
    {
        return Ok(());
    }
    eprintln!(
        "alces-bench: installing MooseFS from Debian ({})",
        PACKAGES.join(" ")
    );
    crate::exec::run(Command::new("apt-get").arg("update").arg("-q"))?;
    crate::exec::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q"])
            .args(PACKAGES),
    )
    .context("cannot install MooseFS (apt-get install moosefs-master moosefs-chunkserver moosefs-client moosefs-metalogger)")?;
    Ok(())
}

/// A running MooseFS cluster.
pub struct Moosefs {
    base: PathBuf,
    root: PathBuf,
    master_pid: i32,
    extra: Vec<Guard>,
    // Dropped last-to-first: the mount, then the chunkservers, then the master.
    guards: Vec<Guard>,
}

impl Drop for Moosefs {
    fn drop(&mut self) {
        self.extra.clear();
        while let Some(g) = self.guards.pop() {
            g.run();
        }
    }
}

fn netns_cmd(prog: &str) -> Result<Command> {
    let mut c = Command::new(prog);
    in_netns(&mut c, netns::NAME)?;
    Ok(c)
}

fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .map(|s| s.matches(needle).count())
        .unwrap_or(0)
}

fn daemon_guard(what: String, mut child: Child, grace: Duration) -> Guard {
    Guard::new(what, move || stop_child(&mut child, grace))
}

/// Starts `mfsmount` on `at` in the foreground (as our child) and waits for the mount.
fn mount(at: &Path, log: &Path) -> Result<Guard> {
    mkdirs(at)?;
    let mut c = netns_cmd("mfsmount")?;
    c.arg(at)
        .arg("-f")
        .arg("-o")
        .arg(format!("mfsmaster={},mfsport={CLIENT_PORT}", netns::ADDR_A));
    let mut child = spawn_logged(&mut c, log)?;
    let p = at.to_path_buf();
    let pid = child.id();
    let ok = wait_for(
        &format!("mfsmount on {}", at.display()),
        Duration::from_secs(30),
        || is_mounted(at) || matches!(child.try_wait(), Ok(Some(_))),
    );
    if ok.is_err() || !is_mounted(at) {
        stop_child(&mut child, Duration::from_secs(5));
        bail!(
            "mfsmount (pid {pid}) did not mount {}; see {}",
            at.display(),
            log.display()
        );
    }
    Ok(Guard::new(
        format!("mfsmount {}", at.display()),
        move || {
            unmount(&p);
            stop_child(&mut child, Duration::from_secs(10));
        },
    ))
}

impl Moosefs {
    /// Writes the configuration under `base` and starts the cluster in the namespace.
    pub fn start(base: PathBuf) -> Result<Moosefs> {
        ensure_installed()?;
        let mdir = base.join("master");
        mkdirs(&mdir.join("data"))?;
        std::fs::write(
            mdir.join("mfsmaster.cfg"),
            format!(
                "WORKING_USER = root\nWORKING_GROUP = root\nNICE_LEVEL = 0\n\
                 DATA_PATH = {data}\nEXPORTS_FILENAME = {dir}/mfsexports.cfg\n\
                 TOPOLOGY_FILENAME = {dir}/mfstopology.cfg\n\
                 MATOML_LISTEN_HOST = {a}\nMATOCS_LISTEN_HOST = {a}\nMATOCL_LISTEN_HOST = {a}\n\
                 MATOCL_LISTEN_PORT = {CLIENT_PORT}\n",
                data = mdir.join("data").display(),
                dir = mdir.display(),
                a = netns::ADDR_A
            ),
        )?;
        std::fs::write(mdir.join("mfsexports.cfg"), "* / rw,alldirs,maproot=0:0\n")?;
        std::fs::write(mdir.join("mfstopology.cfg"), "")?;
        std::fs::copy(
            "/var/lib/mfs/metadata.mfs.empty",
            mdir.join("data").join("metadata.mfs"),
        )
        .context("cannot copy /var/lib/mfs/metadata.mfs.empty (is moosefs-master installed?)")?;

        let mut guards = Vec::new();
        let mlog = mdir.join("log");
        let mut c = netns_cmd("mfsmaster")?;
        c.arg("-f").arg("-c").arg(mdir.join("mfsmaster.cfg"));
        let master = spawn_logged(&mut c, &mlog)?;
        let master_pid = master.id() as i32;
        guards.push(daemon_guard(
            format!("mfsmaster (pid {master_pid})"),
            master,
            MASTER_STOP_GRACE,
        ));
        let ready = "daemon initialized properly";
        wait_for("mfsmaster to start", Duration::from_secs(60), || {
            log_count(&mlog, ready) > 0
        })
        .with_context(|| format!("see {}", mlog.display()))?;

        for i in 1..=CHUNKSERVERS {
            let d = base.join(format!("cs{i}"));
            mkdirs(&d.join("data"))?;
            mkdirs(&d.join("hdd"))?;
            std::fs::write(
                d.join("mfshdd.cfg"),
                format!("{}\n", d.join("hdd").display()),
            )?;
            std::fs::write(
                d.join("mfschunkserver.cfg"),
                format!(
                    "WORKING_USER = root\nWORKING_GROUP = root\nNICE_LEVEL = 0\n\
                     DATA_PATH = {data}\nHDD_CONF_FILENAME = {dir}/mfshdd.cfg\n\
                     HDD_LEAVE_SPACE_DEFAULT = 1GiB\nBIND_HOST = {b}\nMASTER_HOST = {a}\n\
                     CSSERV_LISTEN_HOST = {b}\nCSSERV_LISTEN_PORT = {port}\n",
                    data = d.join("data").display(),
                    dir = d.display(),
                    a = netns::ADDR_A,
                    b = netns::ADDR_B,
                    port = 9421 + i
                ),
            )?;
            let mut c = netns_cmd("mfschunkserver")?;
            c.arg("-f").arg("-c").arg(d.join("mfschunkserver.cfg"));
            let cs = spawn_logged(&mut c, &d.join("log"))?;
            guards.push(daemon_guard(
                format!("mfschunkserver {i} (pid {})", cs.id()),
                cs,
                Duration::from_secs(20),
            ));
        }
        wait_for(
            "3 MooseFS chunkservers to register",
            Duration::from_secs(60),
            || log_count(&mlog, "chunkserver register end") >= CHUNKSERVERS,
        )
        .with_context(|| format!("see {}", mlog.display()))?;

        let root = base.join("mnt");
        guards.push(mount(&root, &base.join("mount.log"))?);
        Ok(Moosefs {
            base,
            root,
            master_pid,
            extra: Vec::new(),
            guards,
        })
    }

    /// Sets the goal of `path` (and so of new files under it).
    fn set_goal(&self, path: &Path, goal: u32) -> Result<()> {
        let mut c = netns_cmd("mfssetgoal")?;
        c.arg(goal.to_string()).arg(path);
        run(&mut c)?;
        Ok(())
    }
}

impl System for Moosefs {
    fn kind(&self) -> SystemKind {
        SystemKind::Moosefs
    }

    fn version(&self) -> String {
        run(Command::new("dpkg-query").args(["-W", "-f", "${Version}", "moosefs-master"]))
            .map(|v| format!("MooseFS {v} (Debian moosefs-master)"))
            .unwrap_or_else(|e| format!("MooseFS (version unknown: {e})"))
    }

    fn make_dir(&mut self, rel: &str, goal: u32) -> Result<PathBuf> {
        let p = self.root.join(rel);
        mkdirs(&p)?;
        self.set_goal(&p, goal)?;
        Ok(p)
    }

    fn open_mounts(&mut self, n: usize) -> Result<Vec<PathBuf>> {
        let mut roots = Vec::new();
        for i in 0..n {
            let at = self.base.join(format!("mnt-extra{i}"));
            let log = self.base.join(format!("mount-extra{i}.log"));
            self.extra
                .push(cleanup::starting("mounting MooseFS", || mount(&at, &log))?);
            roots.push(at);
        }
        Ok(roots)
    }

    fn close_mounts(&mut self) {
        self.extra.clear();
    }

    fn processes(&self) -> Vec<i32> {
        crate::exec::pids_mentioning(&self.base.to_string_lossy())
    }

    fn master_pid(&self) -> Option<i32> {
        Some(self.master_pid)
    }
}
