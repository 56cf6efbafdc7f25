//! A running `alces-csi` for the CSI tests: its unix socket, kubelet and state
//! directories under the cluster's scratch directory, started through the
//! cluster's launcher shell (a process forked from a test that keeps files
//! open on a paused mount would hang in its exec, see `Cluster::launch`), and
//! everything it left (mounts under its kubelet directory, mount daemons)
//! cleaned up on drop.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;

use crate::{alive, bin, kill_recorded_daemons, tail, unmount_under, wait_until, Cluster};

/// A running `alces-csi`.
pub struct CsiDriver {
    /// Pid of the plugin (`None` once killed).
    pub pid: Option<i32>,
    /// Its CSI socket.
    pub sock: PathBuf,
    /// The kubelet directory staging and target paths live in.
    pub kubelet: PathBuf,
    /// The node plugin's `--state-dir`.
    pub state: PathBuf,
    /// Its log.
    pub log: PathBuf,
    args: Vec<OsString>,
}

impl CsiDriver {
    /// Starts `alces-csi ROLE` (`all`, `controller`) against `c`, its files in
    /// `c.scratch(name)`, with the environment `env` added (`ALCES_SECRET`
    /// removed: the cluster secret comes from `--secret-file`), and `extra`
    /// flags. Volumes get 4 MiB by default; the node is `node-1`.
    pub fn start(
        c: &Cluster,
        name: &str,
        role: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        let base = c.scratch(name);
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = base.join("csi.sock");
        let kubelet = base.join("kubelet");
        let state = base.join("state");
        std::fs::create_dir_all(kubelet.join("pods")).unwrap();
        let mut args: Vec<OsString> = vec!["-u".into(), "ALCES_SECRET".into()];
        args.extend(env.iter().map(|(k, v)| OsString::from(format!("{k}={v}"))));
        args.push(bin("alces-csi").into());
        // The TLS flags are the command's, before the role.
        args.extend(c.tls_flags());
        args.extend::<Vec<OsString>>(vec![
            role.into(),
            "--endpoint".into(),
            format!("unix://{}", sock.display()).into(),
            "--master".into(),
            c.master.clone().into(),
            "--secret-file".into(),
            c.secret_file.clone().into(),
            "--default-capacity".into(),
            "4MiB".into(),
        ]);
        if role == "all" {
            args.extend::<Vec<OsString>>(vec![
                "--kubelet-dir".into(),
                kubelet.clone().into(),
                "--state-dir".into(),
                state.clone().into(),
                "--node-id".into(),
                "node-1".into(),
            ]);
        }
        args.extend(extra.iter().map(OsString::from));
        let mut d = Self {
            pid: None,
            sock,
            kubelet,
            state,
            log: base.join("alces-csi.log"),
            args,
        };
        d.spawn(c);
        d
    }

    /// Starts the plugin (again) and waits for its socket.
    pub fn spawn(&mut self, c: &Cluster) {
        // A SIGKILLed plugin's listener can outlive the pid's zombie for a
        // moment (the other threads still hold its descriptors) and accept a
        // connection; with the path gone, only the new plugin's socket answers.
        match std::fs::remove_file(&self.sock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                panic!("removing {}: {e}", self.sock.display())
            }
            _ => {}
        }
        self.pid = Some(c.launch("env", &self.args, &self.log));
        let sock = self.sock.clone();
        wait_until("the CSI socket", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
    }

    /// SIGKILLs the plugin and waits until it is gone.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            // SAFETY: plain kill of a process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_until(
                &format!("process {pid} to end"),
                Duration::from_secs(10),
                || !alive(pid),
            );
        }
    }

    /// A channel to its socket.
    pub async fn channel(&self) -> Channel {
        alces_csi::uds::connect(self.sock.clone())
            .await
            .expect("connect to the CSI socket")
    }

    /// `rel` inside its kubelet directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.kubelet.join(rel)
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        // Unmount whatever a failed test left, so the cluster can go down.
        unmount_under(&self.kubelet);
        self.kill9();
        // A failed test may leave a connection paused (its daemon killed) with
        // the test's own threads waiting in it: ending every daemon of a record
        // (the plugin, which kept the other copy, is gone) aborts it.
        kill_recorded_daemons(&self.state);
        if std::thread::panicking() {
            eprintln!("---- alces-csi log ----\n{}", tail(&self.log, 80));
        }
    }
}
