//! `alces local up` / `alces local down`: a whole cluster on one machine.
//!
//! Layout of DIR: `secret`, `env`, and one folder per process (`master`, `cs1`..`csN`,
//! `ml1`..`mlN`, `mount`), each with `data/` (daemons), `log`, `pid` and
//! `command.json` (the program and arguments it was started with, so a process can
//! be restarted exactly as it was).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::args::UpArgs;
use crate::connect::admin_at;
use crate::mountinfo::is_mount_point;
use crate::ports::free_port;
use crate::procs;

/// One process started by `local up`.
struct Started {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Finds an Alces binary next to the running `alces`, else on PATH.
pub fn find_binary(name: &str) -> anyhow::Result<PathBuf> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = &here {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!(
        "cannot find {name} next to alces ({}) or on PATH; build it with `cargo build --workspace --bins`",
        here.map(|p| p.display().to_string()).unwrap_or_default()
    )
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn random_secret() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
        .collect()
}

/// Starts `program args` for process folder `dir/name`: output appended to its log,
/// pid and command recorded, own process group (so a terminal's Ctrl-C reaches only
/// `alces`, which then stops everything in order).
pub fn spawn_process(
    dir: &Path,
    name: &str,
    program: &Path,
    args: &[OsString],
) -> anyhow::Result<(Child, PathBuf)> {
    let pdir = dir.join(name);
    std::fs::create_dir_all(&pdir).with_context(|| format!("cannot create {}", pdir.display()))?;
    let log_path = pdir.join("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .env_remove("ALCES_SUBDIR")
        .env_remove("ALCES_READ_ONLY")
        .env_remove("ALCES_SECRET")
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    std::fs::write(pdir.join("pid"), format!("{}\n", child.id()))?;
    let cmd = serde_json::json!({
        "program": program.to_string_lossy(),
        "args": args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    });
    std::fs::write(pdir.join("command.json"), serde_json::to_vec_pretty(&cmd)?)?;
    Ok((child, log_path))
}

fn check_alive(p: &mut Started) -> anyhow::Result<()> {
    if let Ok(Some(st)) = p.child.try_wait() {
        bail!(
            "{} exited ({st}) before it was ready; see its log {}:\n{}",
            p.name,
            p.log.display(),
            log_tail(&p.log, 20)
        );
    }
    Ok(())
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// Waits until the master answers Admin.Status with `cond` true, checking that the
/// processes in `watch` stay alive.
async fn wait_status(
    master: &str,
    secret: &str,
    tls: &alces_proto::tls::Tls,
    what: &str,
    deadline: Instant,
    watch: &mut [Started],
    cond: impl Fn(&alces_proto::pb::ClusterStatus) -> bool,
) -> anyhow::Result<()> {
    eprintln!("alces: waiting for {what}");
    let mut admin = admin_at(master, secret, tls)?;
    let mut last: String;
    loop {
        for p in watch.iter_mut() {
            check_alive(p)?;
        }
        let call = tokio::time::timeout(
            Duration::from_secs(3),
            admin.client.status(alces_proto::pb::Empty {}),
        )
        .await;
        match call {
            Ok(Ok(r)) => {
                let st = r.into_inner();
                if cond(&st) {
                    return Ok(());
                }
                last = format!(
                    "{} of {} chunkservers connected, {} metaloggers",
                    st.chunkservers.iter().filter(|c| c.connected).count(),
                    st.chunkservers.len(),
                    st.metaloggers.iter().filter(|m| m.connected).count()
                );
            }
            Ok(Err(s)) => last = format!("{}: {}", s.code(), alces_proto::net::status_text(&s)),
            Err(_) => last = "Status call timed out".into(),
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = watch
                .iter()
                .map(|p| format!("{} ({})", p.name, p.log.display()))
                .collect();
            bail!(
                "timed out waiting for {what} (last: {last}); see the logs: {}",
                logs.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `alces local up`.
pub async fn up(a: &UpArgs) -> anyhow::Result<()> {
    if a.chunkservers == 0 {
        bail!("--chunkservers must be at least 1");
    }
    if let Some(cs) = &a.chunk_size {
        let n = alces_proto::geometry::parse_size(cs)
            .map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
        alces_proto::geometry::validate_chunk_size(n)
            .map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
    }
    if let Some(g) = a.default_goal {
        if !(1..=alces_proto::geometry::MAX_GOAL).contains(&g) {
            bail!("--default-goal must be between 1 and 9, got {g}");
        }
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create --dir {}", a.dir.display()))?;
    let dir = std::fs::canonicalize(&a.dir)?;
    let live = procs::running(&dir);
    if !live.is_empty() {
        let pids: Vec<String> = live
            .iter()
            .map(|(d, p)| format!("{} (pid {p})", d.display()))
            .collect();
        bail!(
            "{} already has a running cluster: {}; stop it first with `alces local down --dir {}`",
            dir.display(),
            pids.join(", "),
            dir.display()
        );
    }
    if !a.mount.exists() {
        std::fs::create_dir_all(&a.mount)
            .with_context(|| format!("cannot create mount point {}", a.mount.display()))?;
    }
    let mnt = std::fs::canonicalize(&a.mount)
        .with_context(|| format!("cannot resolve mount point {}", a.mount.display()))?;
    if !mnt.is_dir() {
        bail!("mount point {} is not a directory", mnt.display());
    }
    if is_mount_point(&mnt) {
        bail!(
            "{} is already a mount point; unmount it or choose another --mount",
            mnt.display()
        );
    }
    if std::fs::read_dir(&mnt)?.next().is_some() {
        bail!(
            "mount point {} is not empty; use an empty directory",
            mnt.display()
        );
    }
    let bins = Binaries {
        master: find_binary("alces-master")?,
        chunkserver: find_binary("alces-chunkserver")?,
        mount: find_binary("alces-mount")?,
        metalogger: if a.metaloggers > 0 {
            Some(find_binary("alces-metalogger")?)
        } else {
            None
        },
    };

    let secret_path = dir.join("secret");
    let secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) if !s.trim().is_empty() => {
            // The daemons would refuse it: say so before starting any.
            alces_proto::auth::check_private_file(&secret_path, "cluster secret file")?;
            s.trim().to_string()
        }
        _ => {
            let s = random_secret();
            // Created 0600: never readable by others, not even for a moment.
            let _ = std::fs::remove_file(&secret_path);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret_path)?;
            f.write_all(format!("{s}\n").as_bytes())?;
            f.sync_all()?;
            s
        }
    };
    let tls = if a.tls {
        Some(TlsFiles::generate(&dir)?)
    } else {
        None
    };
    let mut started: Vec<Started> = Vec::new();
    let site = Site {
        dir: &dir,
        mnt: &mnt,
        secret: &secret,
        secret_path: &secret_path,
        tls: tls.as_ref(),
    };
    let res = start_all(a, &site, &bins, &mut started).await;
    if let Err(e) = res {
        eprintln!("alces: start failed, stopping what was started");
        let _ = down(&dir);
        for p in started.iter_mut() {
            let _ = p.child.try_wait();
        }
        return Err(e);
    }
    let master = std::fs::read_to_string(dir.join("master").join("address"))?
        .trim()
        .to_string();
    println!("Alces local cluster is up.");
    println!("  master:     {master}");
    println!("  mount:      {}", mnt.display());
    println!("  dir:        {}", dir.display());
    println!("  use it:     source {}/env; alces status", dir.display());
    if a.detach {
        println!("  stop it:    alces local down --dir {}", dir.display());
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    foreground(&dir, &mut started).await
}

/// The programs a local cluster runs.
struct Binaries {
    master: PathBuf,
    chunkserver: PathBuf,
    mount: PathBuf,
    /// Only looked for when metaloggers are asked for.
    metalogger: Option<PathBuf>,
}

/// Where a local cluster lives and the secret its daemons share.
struct Site<'a> {
    dir: &'a Path,
    mnt: &'a Path,
    secret: &'a str,
    secret_path: &'a Path,
    /// The CA and certificates of `alces local up --tls`.
    tls: Option<&'a TlsFiles>,
}

/// The throwaway CA of a local cluster run with TLS, in DIR/tls.
struct TlsFiles {
    dir: PathBuf,
    ca: alces_proto::tls::certgen::Ca,
    ca_file: PathBuf,
}

impl TlsFiles {
    /// A new CA in `<dir>/tls` (a folder only its owner can enter).
    fn generate(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let tdir = dir.join("tls");
        std::fs::create_dir_all(&tdir)?;
        std::fs::set_permissions(&tdir, std::fs::Permissions::from_mode(0o700))?;
        let ca = alces_proto::tls::certgen::Ca::new("alces local CA")?;
        let ca_file = tdir.join("ca.crt");
        alces_proto::tls::certgen::write_file(&ca_file, ca.cert_pem().as_bytes(), 0o644)?;
        Ok(Self {
            dir: tdir,
            ca,
            ca_file,
        })
    }

    /// Issues a certificate for the process `name` (valid for this machine's
    /// names) and returns its TLS flags (mutual TLS on).
    fn args_for(&self, name: &str) -> anyhow::Result<alces_proto::tls::TlsArgs> {
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let (cert, key) = self.ca.write_pair(
            &self.dir,
            name,
            &alces_proto::tls::certgen::local_names(),
            serial,
        )?;
        Ok(alces_proto::tls::TlsArgs {
            tls_cert: Some(cert),
            tls_key: Some(key),
            tls_ca: Some(self.ca_file.clone()),
            tls_client_auth: true,
            tls_server_name: None,
        })
    }
}

impl Site<'_> {
    /// The TLS flags of the process `name` (none without --tls).
    fn tls_flags(&self, name: &str) -> anyhow::Result<Vec<OsString>> {
        match self.tls {
            Some(t) => Ok(t.args_for(name)?.to_flags()),
            None => Ok(Vec::new()),
        }
    }
}

async fn start_all(
    a: &UpArgs,
    site: &Site<'_>,
    bins: &Binaries,
    started: &mut Vec<Started>,
) -> anyhow::Result<()> {
    let Site {
        dir,
        mnt,
        secret,
        secret_path,
        ..
    } = *site;
    // The CLI's own certificate, used here and by `source DIR/env; alces ...`.
    let cli_tls = match site.tls {
        Some(t) => Some(t.args_for("cli")?),
        None => None,
    };
    let tls = match &cli_tls {
        Some(a) => a.load(alces_proto::tls::Role::Client)?,
        None => alces_proto::tls::Tls::plain(),
    };
    let tls = &tls;
    let (master_bin, cs_bin, mount_bin) = (&bins.master, &bins.chunkserver, &bins.mount);
    let ml_bin = bins.metalogger.as_deref();
    let timeout = Duration::from_secs(a.timeout.max(1));
    let sf = os(secret_path);
    // Master.
    let mport = free_port()?;
    let master = format!("127.0.0.1:{mport}");
    let mdata = dir.join("master").join("data");
    std::fs::create_dir_all(&mdata)?;
    let master_http = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec![
        os("--listen"),
        os(&master),
        os("--http-listen"),
        os(&master_http),
        os("--rejoin-listen"),
        os(format!("127.0.0.1:{}", free_port()?)),
        os("--data-dir"),
        os(&mdata),
        os("--secret-file"),
        sf.clone(),
    ];
    args.extend(site.tls_flags("master")?);
    let mut tuning = Vec::new();
    if let Some(cs) = &a.chunk_size {
        tuning.extend([os("--chunk-size"), os(cs)]);
    }
    if let Some(g) = a.default_goal {
        tuning.extend([os("--default-goal"), os(g.to_string())]);
    }
    args.extend(tuning.iter().cloned());
    eprintln!("alces: starting master on {master}");
    let (child, log) = spawn_process(dir, "master", master_bin, &args)?;
    std::fs::write(dir.join("master").join("address"), format!("{master}\n"))?;
    started.push(Started {
        name: "master".into(),
        child,
        log,
    });
    let deadline = Instant::now() + timeout;
    wait_status(
        &master,
        secret,
        tls,
        &format!("the master at {master} to become ready"),
        deadline,
        started,
        |_| true,
    )
    .await?;

    // Chunkservers.
    for i in 1..=a.chunkservers {
        let name = format!("cs{i}");
        let addr = format!("127.0.0.1:{}", free_port()?);
        let data = dir.join(&name).join("data");
        std::fs::create_dir_all(&data)?;
        let mut args = vec![
            os("--master"),
            os(&master),
            os("--listen"),
            os(&addr),
            os("--advertise"),
            os(&addr),
            os("--http-listen"),
            os(format!("127.0.0.1:{}", free_port()?)),
            os("--data-dir"),
            os(&data),
            os("--label"),
            os(&name),
            os("--secret-file"),
            sf.clone(),
        ];
        args.extend(site.tls_flags(&name)?);
        eprintln!("alces: starting chunkserver {name} on {addr}");
        let (child, log) = spawn_process(dir, &name, cs_bin, &args)?;
        std::fs::write(dir.join(&name).join("address"), format!("{addr}\n"))?;
        started.push(Started { name, child, log });
    }
    let n = a.chunkservers as usize;
    let deadline = Instant::now() + timeout;
    wait_status(
        &master,
        secret,
        tls,
        &format!("{n} chunkservers to register with the master"),
        deadline,
        started,
        |st| st.chunkservers.iter().filter(|c| c.connected).count() >= n,
    )
    .await?;

    // Metaloggers.
    if let Some(ml_bin) = ml_bin {
        for i in 1..=a.metaloggers {
            let name = format!("ml{i}");
            let data = dir.join(&name).join("data");
            std::fs::create_dir_all(&data)?;
            let addr = format!("127.0.0.1:{}", free_port()?);
            // A promoted metalogger serves the master on the master's address
            // (free once the old master is dead or has stepped down), so mounts
            // and chunkservers keep their ALCES_MASTER.
            let mut args = vec![
                os("--master"),
                os(&master),
                os("--listen"),
                os(&addr),
                os("--advertise"),
                os(&addr),
                os("--promote-listen"),
                os(&master),
                os("--promote-http-listen"),
                os(&master_http),
                os("--data-dir"),
                os(&data),
                os("--http-listen"),
                os(format!("127.0.0.1:{}", free_port()?)),
                os("--secret-file"),
                sf.clone(),
            ];
            // The master's tuning flags, so a promoted metalogger runs the
            // master as configured (the ALCES_* tuning variables of this
            // environment reach both processes alike).
            args.extend(tuning.iter().cloned());
            args.extend(site.tls_flags(&name)?);
            eprintln!("alces: starting metalogger {name}");
            let (child, log) = spawn_process(dir, &name, ml_bin, &args)?;
            std::fs::write(dir.join(&name).join("address"), format!("{addr}\n"))?;
            started.push(Started { name, child, log });
        }
        let n = a.metaloggers as usize;
        let deadline = Instant::now() + timeout;
        wait_status(
            &master,
            secret,
            tls,
            &format!("{n} metaloggers to connect"),
            deadline,
            started,
            |st| st.metaloggers.iter().filter(|m| m.connected).count() >= n,
        )
        .await?;
    }

    // Mount.
    let mut args = vec![
        os(mnt),
        os("--master"),
        os(&master),
        os("--http-listen"),
        os(format!("127.0.0.1:{}", free_port()?)),
        os("--secret-file"),
        sf.clone(),
    ];
    args.extend(site.tls_flags("mount")?);
    // Run as root, the mount serves every local user, the kernel checking
    // permissions (default_permissions): as a system mount would.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        args.push(os("--allow-other"));
    }
    eprintln!("alces: mounting at {}", mnt.display());
    let (child, log) = spawn_process(dir, "mount", mount_bin, &args)?;
    std::fs::write(
        dir.join("mount").join("mountpoint"),
        format!("{}\n", mnt.display()),
    )?;
    started.push(Started {
        name: "mount".into(),
        child,
        log,
    });
    eprintln!(
        "alces: waiting for {} to become a mount point",
        mnt.display()
    );
    let deadline = Instant::now() + timeout;
    loop {
        for p in started.iter_mut() {
            check_alive(p)?;
        }
        if is_mount_point(mnt) {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for {} to be mounted; see the mount's log {}",
                mnt.display(),
                dir.join("mount").join("log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut env = format!(
        "ALCES_MASTER={master}\nALCES_SECRET_FILE={}\nALCES_LOCAL_DIR={}\nALCES_MOUNT={}\n",
        secret_path.display(),
        dir.display(),
        mnt.display()
    );
    if let Some(t) = &cli_tls {
        for (k, v) in [
            ("ALCES_TLS_CA", &t.tls_ca),
            ("ALCES_TLS_CERT", &t.tls_cert),
            ("ALCES_TLS_KEY", &t.tls_key),
        ] {
            if let Some(p) = v {
                env.push_str(&format!("{k}={}\n", p.display()));
            }
        }
    }
    let mut f = std::fs::File::create(dir.join("env"))?;
    f.write_all(env.as_bytes())?;
    Ok(())
}

async fn foreground(dir: &Path, started: &mut [Started]) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut reported = vec![false; started.len()];
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                for (i, p) in started.iter_mut().enumerate() {
                    if reported[i] {
                        continue;
                    }
                    if let Ok(Some(st)) = p.child.try_wait() {
                        reported[i] = true;
                        eprintln!("alces: {} exited ({st}); see {}", p.name, p.log.display());
                    }
                }
            }
        }
    }
    eprintln!("alces: stopping the cluster");
    let r = down(dir);
    for p in started.iter_mut() {
        let _ = p.child.try_wait();
    }
    r
}

/// Unmounts `mnt`: `fusermount3 -u`, falling back to a lazy `umount -l`.
pub fn unmount(mnt: &Path) -> anyhow::Result<()> {
    let quiet = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .arg(mnt)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if quiet("fusermount3", &["-u"]) || quiet("umount", &["-l"]) || quiet("fusermount3", &["-uz"]) {
        return Ok(());
    }
    if !is_mount_point(mnt) {
        return Ok(());
    }
    bail!(
        "cannot unmount {}: fusermount3 -u and umount -l both failed",
        mnt.display()
    )
}

/// `alces local down`: unmounts and stops every process of the cluster in `dir`.
/// Safe to run twice, and after a crash.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        eprintln!("alces: {} does not exist; nothing to stop", dir.display());
        return Ok(());
    }
    let mut problems = Vec::new();
    let mnt = std::fs::read_to_string(dir.join("mount").join("mountpoint"))
        .ok()
        .map(|s| PathBuf::from(s.trim()));
    if let Some(m) = &mnt {
        if is_mount_point(m) {
            eprintln!("alces: unmounting {}", m.display());
            if let Err(e) = unmount(m) {
                problems.push(e.to_string());
            }
        }
    }
    // Stop in order: mounts, metaloggers, chunkservers, master.
    let groups: [&dyn Fn(&str) -> bool; 3] = [
        &|n: &str| n.starts_with("mount"),
        &|n: &str| n.starts_with("ml") || n.starts_with("cs"),
        &|n: &str| n == "master",
    ];
    for g in groups {
        let live: Vec<(PathBuf, i32)> = procs::running(dir)
            .into_iter()
            .filter(|(d, _)| {
                d.file_name()
                    .map(|n| g(&n.to_string_lossy()))
                    .unwrap_or(false)
            })
            .collect();
        if live.is_empty() {
            continue;
        }
        for (d, pid) in &live {
            eprintln!("alces: stopping {} (pid {pid})", d.display());
            procs::signal(*pid, libc::SIGTERM);
        }
        let pids: Vec<i32> = live.iter().map(|(_, p)| *p).collect();
        let left = procs::wait_gone(&pids, Duration::from_secs(15));
        for pid in &left {
            eprintln!("alces: pid {pid} did not stop after SIGTERM; sending SIGKILL");
            procs::signal(*pid, libc::SIGKILL);
        }
        let still = procs::wait_gone(&left, Duration::from_secs(5));
        if !still.is_empty() {
            problems.push(format!("processes {still:?} survived SIGKILL"));
        }
    }
    for d in procs::process_dirs(dir) {
        let _ = std::fs::remove_file(d.join("pid"));
    }
    if let Some(m) = &mnt {
        if is_mount_point(m) {
            if let Err(e) = unmount(m) {
                problems.push(e.to_string());
            }
        }
    }
    if problems.is_empty() {
        eprintln!("alces: cluster in {} is stopped", dir.display());
        Ok(())
    } else {
        bail!(
            "stopping the cluster in {}: {}",
            dir.display(),
            problems.join("; ")
        )
    }
}
