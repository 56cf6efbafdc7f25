//! Per-volume credentials of the CSI driver against a real master,
//! chunkservers, FUSE mounts and a real Kubernetes API server
//! (`../shared/k8s`): CreateVolume issues a credential scoped to the volume's
//! directory and stores its token in the Secret `alces-vol-<name>`; the test
//! plays the kubelet, reading that Secret and handing its data to
//! NodeStageVolume. A volume's mount (and its token used directly) cannot reach
//! another volume; DeleteVolume revokes the credential (the live mount loses
//! access) and deletes the Secret; every crash point of both calls is retried
//! to one live credential and a working Secret; a volume staged with the
//! cluster secret (provisioned before) still mounts; takeovers keep working.
//!
//! When the envtest binaries are missing the tests print `SKIPPED: <reason>`,
//! unless `ALCES_REQUIRE_ENVTEST=1`, which makes that a failure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_client::Caller;
use alces_client::{Client, ClientConfig};
use alces_csi::pb;
use alces_csi::pb::controller_client::ControllerClient;
use alces_csi::pb::node_client::NodeClient;
use alces_e2e::csi_driver::CsiDriver;
use alces_e2e::{bin, wait_until, Cluster};
use alces_proto::pb as apb;
use tonic::Code;

const MIB: i64 = 1 << 20;
/// Namespace of the volumes' Secrets in the test's API server.
const NS: &str = "alces-csicred";

fn envtest_dir() -> PathBuf {
    std::env::var_os("ALCES_ENVTEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/alces-envtest"))
}

fn shared() -> PathBuf {
    std::env::var_os("ALCES_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/k8s"))
}

/// A real kube-apiserver (with etcd), stopped on drop.
struct Kube {
    state: PathBuf,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kube {
    fn start() -> Option<Self> {
        let bins = envtest_dir().join("bin");
        let missing: Vec<&str> = ["kube-apiserver", "etcd", "kubectl"]
            .into_iter()
            .filter(|b| !bins.join(b).is_file())
            .collect();
        let up = shared().join("up");
        if !missing.is_empty() || !up.is_file() {
            let why = format!(
                "envtest binaries {missing:?} not in {} or {} missing; build them with ../shared/k8s/build",
                bins.display(),
                up.display()
            );
            if std::env::var_os("ALCES_REQUIRE_ENVTEST").is_some() {
                panic!("ALCES_REQUIRE_ENVTEST is set but {why}");
            }
            println!("SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("alces-csicred-envtest-")
            .tempdir()
            .expect("tempdir");
        let state = dir.path().join("state");
        let out = Command::new(&up).arg(&state).output().expect("run up");
        assert!(
            out.status.success(),
            "shared/k8s/up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let k = Self {
            kubeconfig: state.join("kubeconfig"),
            state,
            _dir: dir,
        };
        k.kubectl_ok(&["create", "namespace", NS]);
        Some(k)
    }

    fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(envtest_dir().join("bin/kubectl"))
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The Secret `name` of the volumes' namespace, `None` when absent.
    fn secret(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(&["-n", NS, "get", "secret", name, "-o", "json"]);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl get secret {name}: {err}");
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("secret json"))
    }

    /// What the kubelet hands NodeStageVolume: the Secret's data, decoded.
    fn stage_secrets(&self, name: &str) -> HashMap<String, String> {
        let s = self
            .secret(name)
            .unwrap_or_else(|| panic!("no Secret {name}"));
        s["data"]
            .as_object()
            .expect("secret data")
            .iter()
            .map(|(k, v)| {
                let out = Command::new("base64")
                    .arg("-d")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .and_then(|mut c| {
                        use std::io::Write;
                        c.stdin
                            .take()
                            .unwrap()
                            .write_all(v.as_str().unwrap().as_bytes())?;
                        c.wait_with_output()
                    })
                    .expect("base64 -d");
                (k.clone(), String::from_utf8(out.stdout).expect("utf-8"))
            })
            .collect()
    }

    /// Replaces the Secret's credential with `token` (a damaged Secret).
    fn set_token(&self, name: &str, token: &str) {
        let patch = serde_json::json!({"stringData": {"credential": token}}).to_string();
        self.kubectl_ok(&["-n", NS, "patch", "secret", name, "-p", &patch]);
    }

    fn delete_secret(&self, name: &str) {
        self.kubectl_ok(&["-n", NS, "delete", "secret", name]);
    }
}

impl Drop for Kube {
    fn drop(&mut self) {
        let _ = Command::new(shared().join("down"))
            .arg(&self.state)
            .status();
    }
}

/// A running `alces-csi` with per-volume credentials.
struct Driver(CsiDriver);

impl std::ops::Deref for Driver {
    type Target = CsiDriver;
    fn deref(&self) -> &CsiDriver {
        &self.0
    }
}

impl std::ops::DerefMut for Driver {
    fn deref_mut(&mut self) -> &mut CsiDriver {
        &mut self.0
    }
}

impl Driver {
    /// `alces-csi ROLE` writing volume Secrets to [`NS`] through `kubeconfig`.
    fn start(c: &Cluster, name: &str, role: &str, kubeconfig: &Path) -> Self {
        Self::start_in(c, name, role, kubeconfig, NS)
    }

    /// The same with the volumes' Secrets in namespace `ns`.
    fn start_in(c: &Cluster, name: &str, role: &str, kubeconfig: &Path, ns: &str) -> Self {
        let kc = kubeconfig.display().to_string();
        Driver(CsiDriver::start(
            c,
            name,
            role,
            &[("KUBECONFIG", &kc)],
            &["--volume-secret-namespace", ns],
        ))
    }

    async fn ctl(&self) -> ControllerClient<tonic::transport::Channel> {
        ControllerClient::new(self.channel().await)
    }

    async fn node(&self) -> NodeClient<tonic::transport::Channel> {
        NodeClient::new(self.channel().await)
    }
}

fn rwx() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn create_req(name: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 4 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters: HashMap::from([("goal".to_string(), "2".to_string())]),
        ..Default::default()
    }
}

async fn create(d: &Driver, name: &str) -> String {
    d.ctl()
        .await
        .create_volume(create_req(name))
        .await
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e:?}"))
        .into_inner()
        .volume
        .unwrap()
        .volume_id
}

async fn delete(d: &Driver, id: &str) -> Result<(), tonic::Status> {
    d.ctl()
        .await
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: id.into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Stages volume `id` under `name` with `secrets` and publishes it; returns
/// the target path.
async fn stage_publish(
    d: &Driver,
    id: &str,
    name: &str,
    secrets: HashMap<String, String>,
) -> Result<PathBuf, tonic::Status> {
    let staging = d.path(&format!("plugins/csi/{name}/globalmount"));
    let target = d.path(&format!("pods/{name}/volume"));
    let mut node = d.node().await;
    node.node_stage_volume(pb::NodeStageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        secrets,
        ..Default::default()
    })
    .await?;
    node.node_publish_volume(pb::NodePublishVolumeRequest {
        volume_id: id.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await?;
    Ok(target)
}

async fn unpublish_unstage(d: &Driver, id: &str, name: &str) {
    let mut node = d.node().await;
    node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
        volume_id: id.into(),
        target_path: d.path(&format!("pods/{name}/volume")).display().to_string(),
    })
    .await
    .expect("unpublish");
    node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: id.into(),
        staging_target_path: d
            .path(&format!("plugins/csi/{name}/globalmount"))
            .display()
            .to_string(),
    })
    .await
    .expect("unstage");
}

/// The live credentials of the master named for volume `name` (root `/csi`).
async fn live(admin: &Client, name: &str) -> Vec<apb::CredentialInfo> {
    let want = format!("csi-volume:/csi/volumes/{name}");
    admin
        .credential_list()
        .await
        .expect("list credentials")
        .into_iter()
        .filter(|c| !c.revoked && c.rule.as_ref().is_some_and(|r| r.name == want))
        .collect()
}

/// Checks volume `name` has exactly one live credential and that its Secret
/// holds that credential's token (which opens a session rooted at the
/// volume). Returns the token.
async fn one_working(c: &Cluster, k: &Kube, admin: &Client, id: &str, name: &str) -> String {
    let l = live(admin, name).await;
    assert_eq!(l.len(), 1, "live credentials of {name}: {l:?}");
    let rule = l[0].rule.clone().unwrap();
    assert_eq!(rule.path, format!("/csi/volumes/{name}"));
    assert!(
        !rule.read_only && !rule.admin && rule.squash == 0,
        "{rule:?}"
    );
    assert_eq!(rule.max_goal, 2, "the class's goal is the largest");
    let s = k.secret(&format!("alces-vol-{name}")).expect("the Secret");
    assert_eq!(s["type"], "csi.alces.io/volume-credential");
    assert_eq!(s["metadata"]["annotations"]["csi.alces.io/volume-id"], id);
    assert_eq!(
        s["metadata"]["annotations"]["csi.alces.io/credential-id"],
        l[0].id.to_string()
    );
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/component"],
        "volume-credential"
    );
    let data = k.stage_secrets(&format!("alces-vol-{name}"));
    assert_eq!(data["volumeId"], id);
    let token = data["credential"].clone();
    assert!(
        token.starts_with(&format!("alces-credential-{}-", l[0].id)),
        "the Secret's token is not the live credential's"
    );
    let client = session(c, &token).await.expect("a session with the token");
    let want = admin
        .resolve(&format!("/csi/volumes/{name}"))
        .await
        .unwrap()
        .inode;
    assert_eq!(
        client.root(),
        want,
        "the credential is not rooted at the volume"
    );
    client.getattr(want).await.expect("getattr of the volume");
    client.close().await.ok();
    token
}

async fn session(c: &Cluster, token: &str) -> alces_client::Result<Client> {
    let mut cfg = ClientConfig::new(c.master.clone(), Arc::from(token));
    cfg.client_name = "alces-e2e csicred".into();
    cfg.tls = c.tls.clone();
    cfg.reconnect_timeout = Duration::from_secs(5);
    Client::connect(cfg).await
}

fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn daemon_pid(d: &Driver, id: &str) -> u32 {
    for e in std::fs::read_dir(d.state.join("volumes"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            if v["volume_id"] == id {
                return v["pid"].as_u64().unwrap() as u32;
            }
        }
    }
    panic!("no record of {id}");
}

/// Every file under `dir` (recursively) as bytes.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(all_bytes(&p));
            } else if let Ok(b) = std::fs::read(&p) {
                out.extend(b);
            }
        }
    }
    out
}

#[test]
fn each_node_mount_reaches_only_its_volume_and_loses_it_at_delete() {
    let Some(k) = Kube::start() else { return };
    let c = Cluster::start_default();
    let mut d = Driver::start(&c, "csicred-a", "all", &k.kubeconfig);
    c.block_on(async {
        let admin = session(&c, &c.secret()).await.unwrap();
        let ida = create(&d, "va").await;
        let idb = create(&d, "vb").await;
        let token_a = one_working(&c, &k, &admin, &ida, "va").await;
        let token_b = one_working(&c, &k, &admin, &idb, "vb").await;
        assert_ne!(token_a, token_b);

        // Both published on this node, each with its own Secret.
        let ta = stage_publish(&d, &ida, "va", k.stage_secrets("alces-vol-va"))
            .await
            .unwrap();
        let tb = stage_publish(&d, &idb, "vb", k.stage_secrets("alces-vol-vb"))
            .await
            .unwrap();
        std::fs::write(tb.join("b-private"), b"only b").unwrap();
        std::fs::write(ta.join("a-file"), b"in a").unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/va/a-file")).unwrap(),
            b"in a"
        );
        assert_eq!(
            std::fs::read(c.path("csi/volumes/vb/b-private")).unwrap(),
            b"only b"
        );
        // The mount's root is the volume: nothing of the filesystem around it.
        let names: Vec<String> = std::fs::read_dir(&ta)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a-file".to_string()]);
        assert!(!all_bytes(&ta).windows(6).any(|w| w == b"only b"));
        // The daemons hold their volume's token, never the cluster secret.
        for (id, token) in [(&ida, &token_a), (&idb, &token_b)] {
            let env = environ(daemon_pid(&d, id));
            assert!(env.contains(&format!("ALCES_CREDENTIAL={token}")), "{id}");
            assert!(
                !env.iter().any(|v| v.contains(&c.secret())),
                "a mount daemon holds the cluster secret"
            );
        }
        // No token on disk in the plugin's state directory.
        for e in walk(&d.state) {
            let text = std::fs::read(&e).unwrap_or_default();
            assert!(
                !text.windows(token_a.len()).any(|w| w == token_a.as_bytes()),
                "{} holds a token",
                e.display()
            );
        }

        // a's token used directly cannot reach b: by path, `..`, guessed inodes.
        let ca = session(&c, &token_a).await.unwrap();
        let who = Caller::new(0, 0, 1);
        // `..` is refused as a name by the client library; the master's own
        // handling of `..` at an export's root is in master/tests/exports.rs.
        for p in [
            "/csi/volumes/vb/b-private",
            "../vb",
            "../vb/b-private",
            "/../vb",
        ] {
            let e = ca.resolve(p).await.unwrap_err();
            assert!(
                [libc::ENOENT, libc::EINVAL, libc::EACCES].contains(&e.errno()),
                "{p}: {e:?}"
            );
        }
        let b_file = admin.resolve("/csi/volumes/vb/b-private").await.unwrap();
        let b_dir = admin.resolve("/csi/volumes/vb").await.unwrap();
        let folder = admin.resolve("/csi/volumes").await.unwrap();
        for ino in [1, folder.inode, b_dir.inode, b_file.inode] {
            let r = ca.getattr(ino).await;
            assert_eq!(r.unwrap_err().errno(), libc::EACCES, "inode {ino}");
        }
        assert_eq!(
            ca.open(b_file.inode, libc::O_RDONLY, &who)
                .await
                .unwrap_err()
                .errno(),
            libc::EACCES
        );
        assert_eq!(
            ca.readdir_all(b_dir.inode, false)
                .await
                .unwrap_err()
                .errno(),
            libc::EACCES
        );
        assert_eq!(
            ca.mkdir(b_dir.inode, b"x", 0o755, 0, &who)
                .await
                .unwrap_err()
                .errno(),
            libc::EACCES
        );
        assert_eq!(
            ca.unlink(b_dir.inode, b"b-private", &who)
                .await
                .unwrap_err()
                .errno(),
            libc::EACCES
        );
        ca.close().await.ok();

        // Takeovers keep the credential: the daemon SIGKILLed, then the plugin
        // SIGKILLed and restarted (it takes the token from the daemon) and the
        // daemon SIGKILLed again.
        let old = daemon_pid(&d, &ida);
        // SAFETY: plain kill of a daemon this test's plugin started.
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        wait_until("a new daemon for va", Duration::from_secs(20), || {
            let p = daemon_pid(&d, &ida);
            p != old && alces_e2e::alive(p as i32)
        });
        std::fs::write(ta.join("after-takeover"), b"1").unwrap();
        d.kill9();
        d.spawn(&c);
        let old = daemon_pid(&d, &ida);
        // SAFETY: as above.
        unsafe { libc::kill(old as i32, libc::SIGKILL) };
        wait_until(
            "a daemon started by the restarted plugin",
            Duration::from_secs(20),
            || {
                let p = daemon_pid(&d, &ida);
                p != old && alces_e2e::alive(p as i32)
            },
        );
        std::fs::write(ta.join("after-restart"), b"2").unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/va/after-restart")).unwrap(),
            b"2"
        );
        let env = environ(daemon_pid(&d, &ida));
        assert!(env.contains(&format!("ALCES_CREDENTIAL={token_a}")));

        // The plugin and the daemon killed together while `alces-csi hold`
        // holds the connection: the restarted plugin starts a daemon on the
        // held descriptors with the token from the state memfd.
        let holder = c.launch(
            &bin("alces-csi").to_string_lossy(),
            &["hold".into(), "--state-dir".into(), d.state.clone().into()],
            &d.log.with_file_name("holder.log"),
        );
        let record = walk(&d.state.join("volumes"))
            .into_iter()
            .find(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && std::fs::read_to_string(p)
                        .unwrap_or_default()
                        .contains("/va\"")
            })
            .expect("va's record");
        wait_until("the holder to hold va", Duration::from_secs(20), || {
            record.with_extension("held").exists()
        });
        let daemon = daemon_pid(&d, &ida) as i32;
        let plugin = d.pid.take().unwrap();
        // SAFETY: plain kills of processes this test started.
        unsafe {
            libc::kill(plugin, libc::SIGKILL);
            libc::kill(daemon, libc::SIGKILL);
        }
        wait_until("plugin and daemon to end", Duration::from_secs(10), || {
            !alces_e2e::alive(plugin) && !alces_e2e::alive(daemon)
        });
        d.spawn(&c);
        wait_until(
            "a daemon on the held connection",
            Duration::from_secs(30),
            || {
                let p = daemon_pid(&d, &ida) as i32;
                p != daemon && alces_e2e::alive(p)
            },
        );
        std::fs::write(ta.join("after-holder"), b"3").unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/va/after-holder")).unwrap(),
            b"3"
        );
        assert!(std::fs::read_to_string(&d.log)
            .unwrap()
            .contains("took the volume's descriptors back from the holder"));
        let env = environ(daemon_pid(&d, &ida));
        assert!(env.contains(&format!("ALCES_CREDENTIAL={token_a}")));
        assert!(!env.iter().any(|v| v.starts_with("ALCES_SECRET=")));
        // SAFETY: plain kill of the holder this test started.
        unsafe { libc::kill(holder, libc::SIGKILL) };

        // An old-style volume (its PV names the cluster secret) still mounts,
        // and sees it whole.
        let idc = create(&d, "vc").await;
        let tc = stage_publish(
            &d,
            &idc,
            "vc",
            HashMap::from([("secret".to_string(), c.secret())]),
        )
        .await
        .unwrap();
        std::fs::write(tc.join("c-file"), b"old style").unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/vc/c-file")).unwrap(),
            b"old style"
        );
        let env = environ(daemon_pid(&d, &idc));
        assert!(env.contains(&format!("ALCES_SECRET={}", c.secret())));

        // DeleteVolume of b while published: its credential is revoked, the
        // live mount loses access within seconds, and the Secret is gone.
        delete(&d, &idb).await.unwrap();
        assert!(live(&admin, "vb").await.is_empty());
        assert!(
            k.secret("alces-vol-vb").is_none(),
            "the Secret outlives its volume"
        );
        let t0 = Instant::now();
        let errno = loop {
            let r = std::fs::read_dir(&tb).and_then(|mut d| d.next().transpose());
            match r {
                Err(e) => break e.raw_os_error(),
                Ok(_) if t0.elapsed() > Duration::from_secs(20) => {
                    panic!("the deleted volume's mount still answers after 20 s")
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        assert!(
            errno == Some(libc::EACCES) || errno == Some(libc::EIO),
            "the revoked mount failed with {errno:?}"
        );
        println!(
            "FIGURE revoked mount lost access {:?} after DeleteVolume returned",
            t0.elapsed()
        );
        let stats = d
            .node()
            .await
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: idb.clone(),
                volume_path: tb.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let cond = stats.volume_condition.unwrap();
        assert!(cond.abnormal, "{cond:?}");
        assert!(
            cond.message.contains("credential") || cond.message.contains("broken"),
            "{}",
            cond.message
        );
        println!("revoked mount's condition: {}", cond.message);
        unpublish_unstage(&d, &idb, "vb").await;
        // a is untouched.
        assert_eq!(std::fs::read(ta.join("a-file")).unwrap(), b"in a");
        // Staging a volume with a revoked credential is PERMISSION_DENIED.
        let mut stale = HashMap::from([("credential".to_string(), token_b.clone())]);
        stale.insert("volumeId".into(), idb.clone());
        let e = stage_publish(&d, &idb, "vb", stale).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        assert!(e.message().contains("alces-vol-vb"), "{}", e.message());
        unpublish_unstage(&d, &ida, "va").await;
        unpublish_unstage(&d, &idc, "vc").await;
        admin.close().await.ok();
    });
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_crash_point_ends_with_one_live_credential_and_a_working_secret() {
    let Some(k) = Kube::start() else { return };
    let c = Cluster::start_default();
    let d = Driver::start(&c, "csicred-b", "all", &k.kubeconfig);
    c.block_on(async {
        let admin = session(&c, &c.secret()).await.unwrap();
        let issue = |name: &str| {
            let rule = apb::CredentialRule {
                path: format!("/csi/volumes/{name}"),
                max_goal: 2,
                name: format!("csi-volume:/csi/volumes/{name}"),
                ..Default::default()
            };
            let admin = admin.clone();
            async move { admin.credential_issue(rule).await.unwrap() }
        };

        // Reply lost: the same call again keeps the same credential.
        let id = create(&d, "v1").await;
        let t1 = one_working(&c, &k, &admin, &id, "v1").await;
        assert_eq!(create(&d, "v1").await, id);
        assert_eq!(one_working(&c, &k, &admin, &id, "v1").await, t1);

        // Issued, then the Secret not written (crash): the retry revokes the
        // orphan (by name) and issues a working one.
        k.delete_secret("alces-vol-v1");
        let orphan = issue("v1").await;
        create(&d, "v1").await;
        let t2 = one_working(&c, &k, &admin, &id, "v1").await;
        assert_ne!(t2, t1);
        assert_ne!(t2, orphan.token);

        // A second credential issued beside a good Secret (a crash of a
        // concurrent attempt): the Secret's is kept, the other revoked.
        let extra = issue("v1").await;
        create(&d, "v1").await;
        assert_eq!(one_working(&c, &k, &admin, &id, "v1").await, t2);
        assert!(
            session(&c, &extra.token).await.is_err(),
            "the extra credential still works"
        );

        // The Secret's credential revoked, or the Secret damaged: replaced.
        let cid = live(&admin, "v1").await[0].id;
        admin.credential_revoke(cid).await.unwrap();
        create(&d, "v1").await;
        let t3 = one_working(&c, &k, &admin, &id, "v1").await;
        assert_ne!(t3, t2);
        for junk in [
            "",
            "garbage",
            "alces-credential-999999-00",
            &"x".repeat(100_000),
        ] {
            k.set_token("alces-vol-v1", junk);
            create(&d, "v1").await;
            one_working(&c, &k, &admin, &id, "v1").await;
        }

        // Snapshots, clones and expansion (controller calls with the cluster
        // secret) keep working; a clone gets a credential of its own.
        std::fs::write(c.path("csi/volumes/v1/data"), b"snapped").unwrap();
        let mut ctl = d.ctl().await;
        let snap = ctl
            .create_snapshot(pb::CreateSnapshotRequest {
                source_volume_id: id.clone(),
                name: "s1".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let mut clone = create_req("v1-clone");
        clone.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let clone_id = ctl
            .create_volume(clone)
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id;
        let tclone = one_working(&c, &k, &admin, &clone_id, "v1-clone").await;
        let cc = session(&c, &tclone).await.unwrap();
        let f = cc.resolve("data").await.unwrap();
        assert_eq!(
            f.size, 7,
            "the clone's credential does not see the cloned file"
        );
        cc.close().await.ok();
        let grown = ctl
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 8 * MIB,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 8 * MIB);
        delete(&d, &clone_id).await.unwrap();
        assert!(live(&admin, "v1-clone").await.is_empty());
        assert!(k.secret("alces-vol-v1-clone").is_none());

        // A Secret of the same name holding another volume's credential is
        // not taken over.
        let other = create(&d, "v2").await;
        let s2 = k.stage_secrets("alces-vol-v2");
        let patch =
            serde_json::json!({"metadata": {"annotations": {"csi.alces.io/volume-id": id}}})
                .to_string();
        k.kubectl_ok(&["-n", NS, "patch", "secret", "alces-vol-v2", "-p", &patch]);
        let e = d
            .ctl()
            .await
            .create_volume(create_req("v2"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(e.message().contains("alces-vol-v2"), "{}", e.message());
        let patch =
            serde_json::json!({"metadata": {"annotations": {"csi.alces.io/volume-id": other}}})
                .to_string();
        k.kubectl_ok(&["-n", NS, "patch", "secret", "alces-vol-v2", "-p", &patch]);
        assert_eq!(k.stage_secrets("alces-vol-v2"), s2);

        // Node-stage secrets that are wrong: named, refused, nothing mounted.
        let mut wrong = s2.clone();
        wrong.insert("volumeId".into(), id.clone());
        let e = stage_publish(&d, &other, "v2", wrong).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("alces-vol-v2"), "{}", e.message());
        for bad in [
            "",
            "not-a-token",
            "alces-credential-0-ab",
            "alces-credential-1-a b",
            &format!("alces-credential-1-{}", "a".repeat(1 << 20)),
        ] {
            let e = stage_publish(
                &d,
                &other,
                "v2",
                HashMap::from([("credential".to_string(), bad.to_string())]),
            )
            .await
            .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{:.60}: {e:?}", bad);
            assert!(e.message().contains("alces-vol-v2"), "{}", e.message());
        }
        // The right one works.
        let t = stage_publish(&d, &other, "v2", s2).await.unwrap();
        std::fs::write(t.join("ok"), b"ok").unwrap();
        unpublish_unstage(&d, &other, "v2").await;

        // Names that cannot name a Secret are refused before anything is made.
        for name in ["Upper", "under_score", "ends-"] {
            let e = d
                .ctl()
                .await
                .create_volume(create_req(name))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
            assert!(!c.path(&format!("csi/volumes/{name}")).exists());
        }

        // DeleteVolume interrupted after the revocation: the retry deletes the
        // Secret. Interrupted after the Secret: the retry finishes too.
        admin
            .credential_revoke(live(&admin, "v1").await[0].id)
            .await
            .unwrap();
        delete(&d, &id).await.unwrap();
        assert!(k.secret("alces-vol-v1").is_none());
        assert!(live(&admin, "v1").await.is_empty());
        delete(&d, &id).await.unwrap();
        k.delete_secret("alces-vol-v2");
        delete(&d, &other).await.unwrap();
        assert!(live(&admin, "v2").await.is_empty());
        assert!(!c.path("csi/volumes/v2").exists());

        // The Kubernetes API unreachable: UNAVAILABLE, and no credential is
        // left without its Secret; a retry once it is back succeeds.
        let kc = std::fs::read_to_string(&k.kubeconfig).unwrap();
        let dead = kc
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("server:") {
                    "    server: https://127.0.0.1:1".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dead_kc = c.scratch("csicred-deadkube").join("kubeconfig");
        std::fs::write(&dead_kc, dead).unwrap();
        let cut = Driver::start(&c, "csicred-cut", "controller", &dead_kc);
        let e = cut
            .ctl()
            .await
            .create_volume(create_req("v3"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("Kubernetes API"), "{}", e.message());
        assert!(
            live(&admin, "v3").await.is_empty(),
            "a credential without its Secret"
        );
        let id3 = create(&d, "v3").await;
        one_working(&c, &k, &admin, &id3, "v3").await;
        let e = delete(&cut, &id3).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        // The revocation went through; the Secret stays until a retry.
        assert!(live(&admin, "v3").await.is_empty());
        assert!(k.secret("alces-vol-v3").is_some());
        delete(&d, &id3).await.unwrap();
        assert!(k.secret("alces-vol-v3").is_none());

        // The Secret cannot be written (its namespace does not exist): the
        // credential just issued is revoked, nothing live is left.
        let nons = Driver::start_in(
            &c,
            "csicred-nons",
            "controller",
            &k.kubeconfig,
            "csicred-missing",
        );
        let e = nons
            .ctl()
            .await
            .create_volume(create_req("v4"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("csicred-missing"), "{}", e.message());
        assert!(
            live(&admin, "v4").await.is_empty(),
            "a credential without its Secret"
        );
        let all = admin.credential_list().await.unwrap();
        assert!(
            all.iter().any(|c| c.revoked
                && c.rule
                    .as_ref()
                    .is_some_and(|r| r.name == "csi-volume:/csi/volumes/v4")),
            "no credential was issued and revoked for v4: {all:?}"
        );
        let id4 = create(&d, "v4").await;
        one_working(&c, &k, &admin, &id4, "v4").await;
        delete(&d, &id4).await.unwrap();
        admin.close().await.ok();
    });
}

/// The chart's objects (`helm template`, release `alces` in [`NS`]) named
/// `name` of `kind`, as YAML documents.
fn chart_docs(kind: &str, name: &str) -> String {
    let out = Command::new("helm")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["template", "alces", "charts/alces", "--namespace", NS])
        .output()
        .expect("helm (e2e/chart-test installs it) runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split("\n---")
        .filter(|d| {
            d.lines().any(|l| l == format!("kind: {kind}"))
                && d.lines().any(|l| l == format!("  name: {name}"))
        })
        .map(|d| format!("{}\n", d.trim_start_matches('\n')))
        .collect()
}

#[test]
fn the_charts_rbac_lets_the_controller_keep_volume_secrets_in_one_namespace_only() {
    let Some(k) = Kube::start() else { return };
    // The chart's ServiceAccount, Role and RoleBinding, applied as they are.
    let docs = [
        chart_docs("ServiceAccount", "alces-csi-controller"),
        chart_docs("Role", "alces-csi-controller-volume-secrets"),
        chart_docs("RoleBinding", "alces-csi-controller-volume-secrets"),
    ];
    for d in &docs {
        assert!(!d.is_empty(), "the chart renders no such object");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), d).unwrap();
        k.kubectl_ok(&["apply", "-f", &f.path().display().to_string()]);
    }
    // Its token (the 1.20 token controller makes a Secret for it), in a
    // kubeconfig of its own.
    let mut token = String::new();
    wait_until(
        "the ServiceAccount's token",
        Duration::from_secs(30),
        || {
            let out = k.kubectl(&[
                "-n",
                NS,
                "get",
                "secrets",
                "-o",
                "jsonpath={.items[?(@.type==\"kubernetes.io/service-account-token\")].data.token}",
            ]);
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if t.is_empty() {
                return false;
            }
            token = t.split(' ').next().unwrap().to_string();
            true
        },
    );
    let token = {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s '{token}' | base64 -d"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let c = Cluster::start_default();
    let kc = c.scratch("csicred-sa").join("kubeconfig");
    std::fs::copy(&k.kubeconfig, &kc).unwrap();
    for args in [
        vec![
            "config",
            "set-credentials",
            "csi-controller",
            "--token",
            &token,
        ],
        vec![
            "config",
            "set-context",
            "--current",
            "--user",
            "csi-controller",
        ],
    ] {
        let out = Command::new(envtest_dir().join("bin/kubectl"))
            .env("KUBECONFIG", &kc)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = Driver::start(&c, "csicred-rbac", "controller", &kc);
    let elsewhere = Driver::start_in(&c, "csicred-rbac2", "controller", &kc, "default");
    c.block_on(async {
        let admin = session(&c, &c.secret()).await.unwrap();
        // In its namespace: create (server-side apply), read, delete.
        let id = create(&d, "r1").await;
        one_working(&c, &k, &admin, &id, "r1").await;
        assert_eq!(create(&d, "r1").await, id);
        k.set_token("alces-vol-r1", "damaged");
        create(&d, "r1").await;
        one_working(&c, &k, &admin, &id, "r1").await;
        delete(&d, &id).await.unwrap();
        assert!(k.secret("alces-vol-r1").is_none());
        // Anywhere else: forbidden, UNAVAILABLE naming the Role it needs, and
        // no credential left behind.
        let e = elsewhere
            .ctl()
            .await
            .create_volume(create_req("r2"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(
            e.message().contains("default") && e.message().contains("volume-secrets Role"),
            "{}",
            e.message()
        );
        assert!(live(&admin, "r2").await.is_empty());
        admin.close().await.ok();
    });
}
