//! The CSI driver driven over its unix socket by a tonic client, as the kubelet
//! and the CSI sidecars do, against a real local cluster, with real FUSE mounts
//! at real staging and target paths.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alces_csi::pb;
use alces_csi::pb::controller_client::ControllerClient;
use alces_csi::pb::identity_client::IdentityClient;
use alces_csi::pb::node_client::NodeClient;
use alces_e2e::csi_driver::CsiDriver;
use alces_e2e::{bin, is_mount_point, wait_until, Cluster};
use tonic::Code;

const MIB: i64 = 1 << 20;

/// A running `alces-csi all` with its socket and kubelet directory.
type Driver = CsiDriver;

/// `alces-csi all` against `c`.
fn driver(c: &Cluster) -> Driver {
    driver_with_env(c, &[])
}

/// The same with more environment (of the plugin, so of its mount daemons).
fn driver_with_env(c: &Cluster, env: &[(&str, &str)]) -> Driver {
    CsiDriver::start(c, "csi", "all", env, &[])
}

fn mount_cap(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

fn rwx() -> pb::VolumeCapability {
    mount_cap(pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter)
}

fn create_req(name: &str, bytes: i64, params: &[(&str, &str)]) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => {
            assert!(!s.message().is_empty(), "error without a message");
            s.code()
        }
    }
}

#[test]
fn controller_rpcs_good_bad_and_idempotent() {
    let c = Cluster::start_default();
    let d = driver(&c);
    let q = c.client();
    c.block_on(async {
        let ch = d.channel().await;
        let mut id = IdentityClient::new(ch.clone());
        let mut ctl = ControllerClient::new(ch.clone());

        let info = id
            .get_plugin_info(pb::GetPluginInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.name, "csi.alces.io");
        assert!(!info.vendor_version.is_empty());
        let probe = id.probe(pb::ProbeRequest {}).await.unwrap().into_inner();
        assert_eq!(probe.ready, Some(true));
        let caps = ctl
            .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(caps.capabilities.len() >= 8);

        // Bad input: each refused with the right code, nothing created.
        let long = "x".repeat(1024);
        for name in ["", "..", ".", "a/b", "a\0b", "vé", long.as_str(), "-x"] {
            let r = ctl.create_volume(create_req(name, MIB, &[])).await;
            assert_eq!(code(r), Code::InvalidArgument, "name {name:?}");
        }
        let mut no_caps = create_req("v-nocaps", MIB, &[]);
        no_caps.volume_capabilities.clear();
        assert_eq!(
            code(ctl.create_volume(no_caps).await),
            Code::InvalidArgument
        );
        let mut block = create_req("v-block", MIB, &[]);
        block.volume_capabilities[0].access_type = Some(pb::volume_capability::AccessType::Block(
            pb::volume_capability::BlockVolume {},
        ));
        assert_eq!(code(ctl.create_volume(block).await), Code::InvalidArgument);
        for p in [
            [("goal", "0")],
            [("trashTime", "soon")],
            [("gaol", "2")],
            [("root", "/a/../b")],
        ] {
            assert_eq!(
                code(ctl.create_volume(create_req("v-bad", MIB, &p)).await),
                Code::InvalidArgument,
                "{p:?}"
            );
        }
        assert_eq!(
            code(ctl.create_volume(create_req("v-huge", i64::MAX, &[])).await),
            Code::OutOfRange
        );
        let mut neg = create_req("v-neg", MIB, &[]);
        neg.capacity_range = Some(pb::CapacityRange {
            required_bytes: 5 * MIB,
            limit_bytes: MIB,
        });
        assert_eq!(code(ctl.create_volume(neg).await), Code::InvalidArgument);

        // Create, and create again: the same volume; incompatible repeats refused.
        let v1 = ctl
            .create_volume(create_req(
                "v1",
                8 * MIB,
                &[("goal", "2"), ("trashTime", "1h")],
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v1.capacity_bytes, 8 * MIB);
        assert!(
            v1.volume_id.ends_with("#/csi/volumes/v1"),
            "{}",
            v1.volume_id
        );
        let again = ctl
            .create_volume(create_req(
                "v1",
                8 * MIB,
                &[("goal", "2"), ("trashTime", "1h")],
            ))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again.volume_id, v1.volume_id);
        assert_eq!(
            code(
                ctl.create_volume(create_req("v1", 8 * MIB, &[("goal", "3")]))
                    .await
            ),
            Code::AlreadyExists
        );
        assert_eq!(
            code(
                ctl.create_volume(create_req(
                    "v1",
                    16 * MIB,
                    &[("goal", "2"), ("trashTime", "1h")]
                ))
                .await
            ),
            Code::AlreadyExists
        );
        let vdir = c.path("csi/volumes/v1");
        assert!(vdir.is_dir());
        let quota = c.block_on_nested(q.quota_get("/csi/volumes/v1")).unwrap();
        assert_eq!(quota.hard_bytes, 8 << 20);
        assert_eq!(
            c.block_on_nested(q.goal_get("/csi/volumes/v1"))
                .unwrap()
                .goal,
            2
        );

        // Validate.
        let vr = ctl
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: v1.volume_id.clone(),
                volume_capabilities: vec![rwx()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(vr.confirmed.is_some());
        for bad in [
            "",
            "nonsense",
            "a1#127.0.0.1:1#/csi/volumes/../x",
            &format!("a1#{}#/csi/volumes/nope", c.master),
        ] {
            let r = ctl
                .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                    volume_id: bad.to_string(),
                    volume_capabilities: vec![rwx()],
                    ..Default::default()
                })
                .await;
            let want = if bad.is_empty() {
                Code::InvalidArgument
            } else {
                Code::NotFound
            };
            assert_eq!(code(r), want, "{bad:?}");
        }

        // Expand (idempotent; never shrinks).
        let exp = |bytes: i64| pb::ControllerExpandVolumeRequest {
            volume_id: v1.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: bytes,
                limit_bytes: 0,
            }),
            ..Default::default()
        };
        for _ in 0..2 {
            let r = ctl
                .controller_expand_volume(exp(12 * MIB))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.capacity_bytes, 12 * MIB);
            assert!(!r.node_expansion_required);
        }
        assert_eq!(
            ctl.controller_expand_volume(exp(MIB))
                .await
                .unwrap()
                .into_inner()
                .capacity_bytes,
            12 * MIB
        );
        let mut no_range = exp(MIB);
        no_range.capacity_range = None;
        assert_eq!(
            code(ctl.controller_expand_volume(no_range).await),
            Code::InvalidArgument
        );

        // Modify goal and trash time; unknown keys refused.
        let modify = |k: &str, v: &str| pb::ControllerModifyVolumeRequest {
            volume_id: v1.volume_id.clone(),
            mutable_parameters: HashMap::from([(k.to_string(), v.to_string())]),
            ..Default::default()
        };
        ctl.controller_modify_volume(modify("goal", "1"))
            .await
            .unwrap();
        ctl.controller_modify_volume(modify("goal", "1"))
            .await
            .unwrap();
        assert_eq!(
            c.block_on_nested(q.goal_get("/csi/volumes/v1"))
                .unwrap()
                .goal,
            1
        );
        assert_eq!(
            code(ctl.controller_modify_volume(modify("root", "/x")).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(ctl.controller_modify_volume(modify("goal", "12")).await),
            Code::InvalidArgument
        );

        // Content, snapshot, clone: byte for byte.
        let before: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(vdir.join("data"), &before).unwrap();
        let snap_req = |name: &str, src: &str| pb::CreateSnapshotRequest {
            source_volume_id: src.to_string(),
            name: name.to_string(),
            ..Default::default()
        };
        let s1 = ctl
            .create_snapshot(snap_req("s1", &v1.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert!(s1.ready_to_use);
        assert_eq!(s1.size_bytes, before.len() as i64);
        assert_eq!(s1.source_volume_id, v1.volume_id);
        let s1b = ctl
            .create_snapshot(snap_req("s1", &v1.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s1b.snapshot_id, s1.snapshot_id);
        assert_eq!(s1b.creation_time, s1.creation_time);
        let after: Vec<u8> = before.iter().map(|b| b.wrapping_add(1)).collect();
        std::fs::write(vdir.join("data"), &after).unwrap();
        let v2 = ctl
            .create_volume(create_req("v2", 8 * MIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(
            code(ctl.create_snapshot(snap_req("s1", &v2.volume_id)).await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(ctl.create_snapshot(snap_req("s-x", "nonsense")).await),
            Code::NotFound
        );
        assert_eq!(
            code(ctl.create_snapshot(snap_req("../s", &v1.volume_id)).await),
            Code::InvalidArgument
        );
        assert_eq!(
            code(ctl.create_snapshot(snap_req("s2", "")).await),
            Code::InvalidArgument
        );

        let mut from_snap = create_req("restored", 8 * MIB, &[]);
        from_snap.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: s1.snapshot_id.clone(),
                },
            )),
        });
        let restored = ctl
            .create_volume(from_snap.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert!(restored.content_source.is_some());
        assert_eq!(
            std::fs::read(c.path("csi/volumes/restored/data")).unwrap(),
            before
        );
        let mut too_small = from_snap.clone();
        too_small.name = "too-small".into();
        too_small.capacity_range = Some(pb::CapacityRange {
            required_bytes: 1000,
            limit_bytes: 0,
        });
        assert_eq!(code(ctl.create_volume(too_small).await), Code::OutOfRange);
        let mut missing = from_snap.clone();
        missing.name = "from-missing".into();
        missing.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: s1.snapshot_id.replace("/s1", "/nope"),
                },
            )),
        });
        assert_eq!(code(ctl.create_volume(missing).await), Code::NotFound);
        let mut clone = create_req("cloned", 8 * MIB, &[]);
        clone.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource {
                    volume_id: v1.volume_id.clone(),
                },
            )),
        });
        ctl.create_volume(clone).await.unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/cloned/data")).unwrap(),
            after
        );

        // Listing with pagination.
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let page = ctl
                .list_volumes(pb::ListVolumesRequest {
                    max_entries: 2,
                    starting_token: token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.entries.len() <= 2);
            names.extend(
                page.entries
                    .iter()
                    .map(|e| e.volume.as_ref().unwrap().volume_id.clone()),
            );
            if page.next_token.is_empty() {
                break;
            }
            token = page.next_token;
        }
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&v1.volume_id));
        assert_eq!(
            code(
                ctl.list_volumes(pb::ListVolumesRequest {
                    max_entries: 1,
                    starting_token: "../zz".into()
                })
                .await
            ),
            Code::Aborted
        );
        assert_eq!(
            code(
                ctl.list_volumes(pb::ListVolumesRequest {
                    max_entries: -1,
                    starting_token: String::new()
                })
                .await
            ),
            Code::InvalidArgument
        );
        ctl.create_snapshot(snap_req("s2", &v1.volume_id))
            .await
            .unwrap();
        ctl.create_snapshot(snap_req("s3", &v2.volume_id))
            .await
            .unwrap();
        let of_v1 = ctl
            .list_snapshots(pb::ListSnapshotsRequest {
                source_volume_id: v1.volume_id.clone(),
                max_entries: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(of_v1.entries.len(), 1);
        assert!(!of_v1.next_token.is_empty());
        let rest = ctl
            .list_snapshots(pb::ListSnapshotsRequest {
                source_volume_id: v1.volume_id.clone(),
                starting_token: of_v1.next_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(rest.entries.len(), 1);
        assert!(rest.next_token.is_empty());
        let all = ctl
            .list_snapshots(pb::ListSnapshotsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.entries.len(), 3);
        let one = ctl
            .list_snapshots(pb::ListSnapshotsRequest {
                snapshot_id: s1.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(one.entries.len(), 1);
        let none = ctl
            .list_snapshots(pb::ListSnapshotsRequest {
                snapshot_id: "garbage".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(none.entries.is_empty());

        let cap = ctl
            .get_capacity(pb::GetCapacityRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(cap.available_capacity > 0);

        // Deleting: idempotent; a volume with snapshots can go, its snapshots stay usable.
        let del = |vid: &str| pb::DeleteVolumeRequest {
            volume_id: vid.to_string(),
            ..Default::default()
        };
        ctl.delete_volume(del(&v1.volume_id)).await.unwrap();
        ctl.delete_volume(del(&v1.volume_id)).await.unwrap();
        ctl.delete_volume(del("not-an-alces-id")).await.unwrap();
        assert_eq!(
            code(ctl.delete_volume(del("")).await),
            Code::InvalidArgument
        );
        // The main mount's kernel entry cache may show it for its timeout.
        wait_until(
            "the deleted volume to vanish",
            Duration::from_secs(5),
            || !vdir.exists(),
        );
        let mut again_from_snap = from_snap.clone();
        again_from_snap.name = "after-delete".into();
        ctl.create_volume(again_from_snap).await.unwrap();
        assert_eq!(
            std::fs::read(c.path("csi/volumes/after-delete/data")).unwrap(),
            before
        );
        let dels = |sid: &str| pb::DeleteSnapshotRequest {
            snapshot_id: sid.to_string(),
            ..Default::default()
        };
        ctl.delete_snapshot(dels(&s1.snapshot_id)).await.unwrap();
        ctl.delete_snapshot(dels(&s1.snapshot_id)).await.unwrap();
        wait_until(
            "the deleted snapshot to vanish",
            Duration::from_secs(5),
            || !c.path("csi/snapshots/s1").exists(),
        );
        // A directory this driver did not make is never deleted.
        std::fs::create_dir_all(c.path("csi/volumes/foreign")).unwrap();
        let foreign = v1.volume_id.replace("/v1", "/foreign");
        assert_eq!(
            code(ctl.delete_volume(del(&foreign)).await),
            Code::FailedPrecondition
        );
        assert!(c.path("csi/volumes/foreign").exists());
    });
}

/// Writes and fsyncs `path` in a loop until `stop`, recording every fsynced
/// length and the longest time between two completed fsyncs.
struct App {
    stop: Arc<AtomicBool>,
    /// Bytes fsynced so far.
    progress: Arc<std::sync::atomic::AtomicU64>,
    handle: Option<std::thread::JoinHandle<(u64, Duration, Option<String>)>>,
    path: PathBuf,
}

fn pattern(off: u64) -> u8 {
    (off.wrapping_mul(31) % 253) as u8
}

impl App {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let s = stop.clone();
        let done = progress.clone();
        let p = path.clone();
        let handle = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&p)
                .unwrap();
            let mut synced = 0u64;
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            let mut err = None;
            while !s.load(Ordering::SeqCst) {
                let chunk: Vec<u8> = (synced..synced + 4096).map(pattern).collect();
                if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
                    err = Some(format!("at {synced}: {e}"));
                    break;
                }
                synced += 4096;
                done.store(synced, Ordering::SeqCst);
                longest = longest.max(last.elapsed());
                last = Instant::now();
                std::thread::sleep(Duration::from_millis(5));
            }
            (synced, longest, err)
        });
        App {
            stop,
            progress,
            handle: Some(handle),
            path,
        }
    }

    /// Bytes fsynced so far.
    fn synced(&self) -> u64 {
        self.progress.load(Ordering::SeqCst)
    }

    /// Waits until the application has fsynced more than `than` bytes.
    fn wait_past(&self, than: u64, what: &str) {
        wait_until(what, Duration::from_secs(60), || self.synced() > than);
    }

    /// Stops the loop; panics if the application saw an error; checks every
    /// fsynced byte and returns the longest pause.
    fn finish(mut self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        let (synced, longest, err) = self.handle.take().unwrap().join().unwrap();
        assert!(err.is_none(), "the application saw an error: {err:?}");
        assert!(synced > 0);
        let mut data = Vec::new();
        std::fs::File::open(&self.path)
            .unwrap()
            .read_to_end(&mut data)
            .unwrap();
        assert!(data.len() as u64 >= synced, "{} < {synced}", data.len());
        for (i, b) in data[..synced as usize].iter().enumerate() {
            assert_eq!(*b, pattern(i as u64), "fsynced byte {i} differs");
        }
        longest
    }
}

#[test]
fn node_stage_publish_quota_readonly_users_and_plugin_restart() {
    let c = Cluster::start_default();
    let mut d = driver(&c);
    let pause = c.block_on(async {
        let ch = d.channel().await;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch.clone());
        let info = node
            .node_get_info(pb::NodeGetInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.node_id, "node-1");
        let vol = ctl
            .create_volume(create_req("pvc-a", 4 * MIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let vid = vol.volume_id.clone();
        let staging = d.path("plugins/kubernetes.io/csi/csi.alces.io/abc/globalmount");
        std::fs::create_dir_all(&staging).unwrap();
        let stage = |p: &Path| pb::NodeStageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: p.display().to_string(),
            volume_capability: Some(rwx()),
            ..Default::default()
        };
        // Paths outside the kubelet directory and hostile ids are refused.
        for bad in [
            "/tmp/x",
            "relative",
            &format!("{}/../x", d.kubelet.display()),
        ] {
            assert_eq!(
                code(node.node_stage_volume(stage(Path::new(bad))).await),
                Code::InvalidArgument,
                "{bad}"
            );
        }
        let mut bad_id = stage(&staging);
        bad_id.volume_id = "a1#127.0.0.1:1#/csi/volumes/..".into();
        assert_eq!(code(node.node_stage_volume(bad_id).await), Code::NotFound);
        node.node_stage_volume(stage(&staging)).await.unwrap();
        node.node_stage_volume(stage(&staging)).await.unwrap();
        assert!(is_mount_point(&staging));

        let publish = |target: &Path, ro: bool| pb::NodePublishVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwx()),
            readonly: ro,
            ..Default::default()
        };
        let t1 = d.path("pods/p1/volumes/kubernetes.io~csi/pvc-a/mount");
        let t2 = d.path("pods/p2/volumes/kubernetes.io~csi/pvc-a/mount");
        std::fs::create_dir_all(t1.parent().unwrap()).unwrap();
        std::fs::create_dir_all(t2.parent().unwrap()).unwrap();
        node.node_publish_volume(publish(&t1, false)).await.unwrap();
        node.node_publish_volume(publish(&t1, false)).await.unwrap();
        assert_eq!(
            code(node.node_publish_volume(publish(&t1, true)).await),
            Code::AlreadyExists
        );
        node.node_publish_volume(publish(&t2, true)).await.unwrap();
        assert_eq!(
            code(
                node.node_publish_volume(publish(Path::new("/etc/x"), false))
                    .await
            ),
            Code::InvalidArgument
        );

        // Read-only publish honoured; the same files through both.
        std::fs::write(t1.join("hello"), b"hi").unwrap();
        assert_eq!(std::fs::read(t2.join("hello")).unwrap(), b"hi");
        let e = std::fs::write(t2.join("nope"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));

        // A non-root user writes through the mount (the kernel checks permissions).
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("echo user > {}/by-user && id -u", t1.display()))
            .uid(4242)
            .gid(4242)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = std::fs::metadata(t1.join("by-user")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 4242);
        let denied = Command::new("sh")
            .arg("-c")
            .arg(format!("echo x >> {}/hello", t1.display()))
            .uid(4243)
            .gid(4243)
            .output()
            .unwrap();
        assert!(
            !denied.status.success(),
            "another user could write root's 0644 file"
        );

        // Capacity: writing past the size fails with EDQUOT; expansion is seen by df.
        let mut f = std::fs::File::create(t1.join("big")).unwrap();
        let buf = vec![7u8; 1 << 20];
        let mut err = None;
        for _ in 0..8 {
            if let Err(e) = f.write_all(&buf).and_then(|()| f.sync_all()) {
                err = Some(e);
                break;
            }
        }
        let e = err.expect("writing 8 MiB into a 4 MiB volume succeeded");
        assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
        drop(f);
        std::fs::remove_file(t1.join("big")).unwrap();
        let stats = |p: &Path| pb::NodeGetVolumeStatsRequest {
            volume_id: vid.clone(),
            volume_path: p.display().to_string(),
            staging_target_path: String::new(),
        };
        let st = node
            .node_get_volume_stats(stats(&t1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.usage[0].total, 4 * MIB);
        assert!(!st.volume_condition.unwrap().abnormal);
        ctl.controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vid.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 10 * MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
        let df = Command::new("df")
            .arg("-B1")
            .arg("--output=size")
            .arg(&t1)
            .output()
            .unwrap();
        let size: i64 = String::from_utf8_lossy(&df.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(size, 10 * MIB, "df after expansion");
        let mut f = std::fs::File::create(t1.join("big")).unwrap();
        f.write_all(&vec![1u8; 6 << 20]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::remove_file(t1.join("big")).unwrap();
        assert_eq!(
            code(
                node.node_get_volume_stats(stats(&d.path("pods/none")))
                    .await
            ),
            Code::NotFound
        );

        // (a) SIGKILL of the plugin while an application writes and fsyncs.
        let app = App::start(t1.join("app.log"));
        std::thread::sleep(Duration::from_millis(500));
        d.kill9();
        std::thread::sleep(Duration::from_millis(1000));
        d.spawn(&c);
        let ch = d.channel().await;
        let mut node = NodeClient::new(ch);
        // The restarted plugin answers for the volume staged before it started.
        let st = node
            .node_get_volume_stats(stats(&t1))
            .await
            .unwrap()
            .into_inner();
        assert!(!st.volume_condition.unwrap().abnormal);
        node.node_stage_volume(stage(&staging)).await.unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let pause = app.finish();

        // Unpublish and unstage, twice each; also on a target already gone.
        let unpublish = |t: &Path| pb::NodeUnpublishVolumeRequest {
            volume_id: vid.clone(),
            target_path: t.display().to_string(),
        };
        for t in [&t1, &t2, &t1, &t2] {
            node.node_unpublish_volume(unpublish(t)).await.unwrap();
        }
        assert!(!t1.exists() && !t2.exists());
        let unstage = pb::NodeUnstageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
        };
        node.node_unstage_volume(unstage.clone()).await.unwrap();
        node.node_unstage_volume(unstage).await.unwrap();
        assert!(!is_mount_point(&staging));
        pause
    });
    println!("FIGURE csi plugin SIGKILL: longest pause between fsyncs seen by the application: {pause:?}");
}

trait BlockOnNested {
    fn block_on_nested<F: std::future::Future>(&self, f: F) -> F::Output;
}

impl BlockOnNested for Cluster {
    /// Runs `f` from inside the cluster's runtime (on a helper thread).
    fn block_on_nested<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
    }
}

/// The pid of the mount daemon the plugin's record names for the one staged volume.
fn daemon_pid(d: &Driver) -> u32 {
    let dir = d.state.join("volumes");
    let rec = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a staged volume's record");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(rec.path()).unwrap()).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// SIGKILLs the volume's mount daemon and waits until another serves the same
/// connection; returns the new daemon's pid.
fn kill_daemon_and_wait_takeover(d: &Driver) -> u32 {
    signal_daemon_and_wait_takeover(d, libc::SIGKILL)
}

/// Sends `sig` to the volume's mount daemon and waits until another serves
/// the same connection; returns the new daemon's pid.
fn signal_daemon_and_wait_takeover(d: &Driver, sig: i32) -> u32 {
    let old = daemon_pid(d);
    assert!(alces_e2e::alive(old as i32), "daemon {old} is not running");
    // SAFETY: plain signal to the daemon this test's plugin started.
    unsafe { libc::kill(old as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let new = daemon_pid(d);
        if new != old && alces_e2e::alive(new as i32) {
            return new;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = std::fs::read_dir(d.state.join("volumes"))
                .unwrap()
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .map(|e| alces_e2e::tail(&e.path(), 40))
                .collect();
            panic!(
                "no mount daemon took over from {old} within 20 s; daemon log:\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn node_mount_daemon_sigkill_is_taken_over_on_the_same_connection() {
    let c = Cluster::start_default();
    let mut d = driver(&c);
    let (mut pauses, takeovers) = c.block_on(async {
        let ch = d.channel().await;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch.clone());
        let vol = ctl
            .create_volume(create_req("pvc-k", 64 * MIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let vid = vol.volume_id.clone();
        let staging = d.path("plugins/kubernetes.io/csi/csi.alces.io/k/globalmount");
        std::fs::create_dir_all(&staging).unwrap();
        let stage = pb::NodeStageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwx()),
            ..Default::default()
        };
        node.node_stage_volume(stage.clone()).await.unwrap();
        let target = d.path("pods/pk/volumes/kubernetes.io~csi/pvc-k/mount");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        node.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        let dev_before = std::fs::metadata(&target)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .unwrap();

        // A file opened for reading before the crashes, read after each.
        std::fs::write(target.join("kept-open"), b"0123456789").unwrap();
        let mut reader = std::fs::File::open(target.join("kept-open")).unwrap();
        let mut pauses = Vec::new();
        let app = App::start(target.join("app.log"));
        let mut takeovers = 0;
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(700));
            if round == 2 {
                // A restarted plugin takes the descriptors back from the
                // running daemon and still replaces it when it dies.
                d.kill9();
                d.spawn(&c);
            }
            let t = Instant::now();
            kill_daemon_and_wait_takeover(&d);
            takeovers += 1;
            // New calls work on the same kernel connection (no ENOTCONN).
            let names: Vec<String> = std::fs::read_dir(&target)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert!(names.contains(&"app.log".to_string()), "{names:?}");
            pauses.push(t.elapsed());
            let mut buf = [0u8; 4];
            use std::io::{Seek, SeekFrom};
            reader.seek(SeekFrom::Start(round as u64)).unwrap();
            reader.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, &b"0123456789"[round..round + 4]);
        }
        std::thread::sleep(Duration::from_millis(500));
        let longest = app.finish();
        // The same filesystem (the same kernel connection) all along.
        let dev_after = std::fs::metadata(&target)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .unwrap();
        assert_eq!(dev_before, dev_after);
        drop(reader);

        // Unpublish and unstage end the daemon for good: nothing takes over.
        let ch = d.channel().await;
        let mut node = NodeClient::new(ch);
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: vid.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        let last = daemon_pid(&d);
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
        assert!(!is_mount_point(&staging));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            !alces_e2e::alive(last as i32),
            "the daemon outlived its unstage"
        );
        let left = Command::new("pgrep")
            .arg("-f")
            .arg(format!("alces-mount {}", staging.display()))
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "a daemon was started after unstage: {}",
            String::from_utf8_lossy(&left.stdout)
        );
        pauses.push(longest);
        (pauses, takeovers)
    });
    let longest = pauses.pop().unwrap();
    println!(
        "FIGURE csi mount daemon SIGKILL x{takeovers}: from SIGKILL to a listing answered by the next daemon: {pauses:?}; longest pause between fsyncs seen by the application: {longest:?}"
    );
}

#[test]
fn alces_mount_refuses_bad_descriptors_and_a_takeover_without_state() {
    use alces_csi::node::keeper;
    let c = Cluster::start_default();
    let base = c.scratch("bad-fd");
    let dir = base.join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let run = |extra: &[&str], stdin: std::process::Stdio| {
        let out = Command::new(bin("alces-mount"))
            .arg(&dir)
            .arg("--master")
            .arg(&c.master)
            .arg("--secret-file")
            .arg(&c.secret_file)
            .args(extra)
            .stdin(stdin)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Standard input is /dev/null: a character device, but not /dev/fuse.
    let e = run(&["--fuse-fd", "0"], std::process::Stdio::null());
    assert!(e.contains("is not /dev/fuse") && e.contains("1:3"), "{e}");
    let e = run(&["--fuse-fd", "77"], std::process::Stdio::null());
    assert!(e.contains("not an open descriptor"), "{e}");
    let e = run(&["--takeover"], std::process::Stdio::null());
    assert!(e.contains("--fuse-fd") || e.contains("required"), "{e}");

    // A real FUSE connection, but a takeover with no recorded session.
    let spec = |log: &str| keeper::DaemonSpec {
        bin: bin("alces-mount"),
        mountpoint: dir.clone(),
        master: c.master.clone(),
        subdir: "/".into(),
        read_only: false,
        secret: c.secret().into(),
        tls_flags: c.tls_flags(),
        log: base.join(log),
    };
    let fuse = keeper::open_fuse().unwrap();
    let state = keeper::new_state("test").unwrap();
    let mut child = keeper::spawn(&spec("takeover.log"), &fuse, &state, true).unwrap();
    let st = child.wait().unwrap();
    assert!(!st.success());
    let log = std::fs::read_to_string(base.join("takeover.log")).unwrap();
    assert!(log.contains("holds no session record"), "{log}");

    // A state file that already records a session is not reused for a new one.
    keeper::mount_fuse(&fuse, &dir, "alces:test/", false, false).unwrap();
    let mut first = keeper::spawn(&spec("first.log"), &fuse, &state, false).unwrap();
    wait_until("the first daemon to serve", Duration::from_secs(30), || {
        std::fs::read_dir(&dir).is_ok()
    });
    let mut second = keeper::spawn(&spec("second.log"), &fuse, &state, false).unwrap();
    assert!(!second.wait().unwrap().success());
    let log = std::fs::read_to_string(base.join("second.log")).unwrap();
    assert!(log.contains("already holds the session record"), "{log}");
    alces_e2e::force_unmount(&dir);
    let _ = first.wait();
}

/// Ends a process this test started through the launcher when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: plain kill of a process this test started.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The volume's record and the holder's file for it, as JSON.
fn record_and_held(d: &Driver) -> (serde_json::Value, Option<serde_json::Value>) {
    let dir = d.state.join("volumes");
    let rec = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "json"))
        .expect("a staged volume's record")
        .path();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
    let held = std::fs::read(rec.with_extension("held"))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok());
    (r, held)
}

/// The plugin and the volume's daemon SIGKILLed together (on Kubernetes, the
/// node plugin pod deleted or its container restarted) while `alces-csi hold`
/// runs apart: the holder's copy of the descriptors keeps the kernel
/// connection, the restarted plugin takes them from the holder and starts a
/// daemon with `--takeover`; the application sees a pause and no error, and no
/// acknowledged write is lost (fsynced or not).
#[test]
fn node_plugin_and_daemon_killed_together_the_holder_keeps_the_connection() {
    let c = Cluster::start_default();
    let mut d = driver(&c);
    let holder_log = d.state.parent().unwrap().join("holder.log");
    let holder = KillOnDrop(c.launch(
        &bin("alces-csi").to_string_lossy(),
        &["hold".into(), "--state-dir".into(), d.state.clone().into()],
        &holder_log,
    ));
    let (pause, longest) = c.block_on(async {
        let ch = d.channel().await;
        let mut ctl = ControllerClient::new(ch.clone());
        let mut node = NodeClient::new(ch.clone());
        let vol = ctl
            .create_volume(create_req("pvc-h", 64 * MIB, &[]))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let vid = vol.volume_id.clone();
        let vpath = vid
            .rsplit('#')
            .next()
            .unwrap()
            .trim_start_matches('/')
            .to_string();
        let staging = d.path("plugins/kubernetes.io/csi/csi.alces.io/h/globalmount");
        std::fs::create_dir_all(&staging).unwrap();
        node.node_stage_volume(pb::NodeStageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        let target = d.path("pods/ph/volumes/kubernetes.io~csi/pvc-h/mount");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        node.node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
            target_path: target.display().to_string(),
            volume_capability: Some(rwx()),
            ..Default::default()
        })
        .await
        .unwrap();
        // The holder takes its copy of the connection.
        wait_until(
            "the holder to hold the volume's connection",
            Duration::from_secs(20),
            || {
                let (r, h) = record_and_held(&d);
                h.is_some_and(|h| h["dev"] == r["dev"] && h["pid"] == holder.0)
            },
        );
        let dev_before = std::fs::metadata(&target)
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .unwrap();
        std::fs::write(target.join("kept-open"), b"0123456789").unwrap();
        let mut reader = std::fs::File::open(target.join("kept-open")).unwrap();
        // Written (acknowledged) but never fsynced before the crash.
        let unsynced: Vec<u8> = (0..3 << 20).map(|i: u64| pattern(i * 7)).collect();
        let mut w = std::fs::File::create(target.join("unsynced")).unwrap();
        w.write_all(&unsynced[..2 << 20]).unwrap();
        let app = App::start(target.join("app.log"));
        app.wait_past(64 << 10, "the application to fsync 64 KiB");

        // Plugin and daemon die together.
        let daemon = daemon_pid(&d) as i32;
        let plugin = d.pid.take().unwrap();
        // SAFETY: plain kills of processes this test started.
        unsafe {
            libc::kill(plugin, libc::SIGKILL);
            libc::kill(daemon, libc::SIGKILL);
        }
        let t = Instant::now();
        wait_until(
            "the plugin and the daemon to end",
            Duration::from_secs(10),
            || !alces_e2e::alive(plugin) && !alces_e2e::alive(daemon),
        );
        // Nobody serves; the holder alone keeps the connection: still mounted.
        assert!(is_mount_point(&staging) && is_mount_point(&target));
        let before = app.synced();
        d.spawn(&c);
        let new = loop {
            let p = daemon_pid(&d) as i32;
            if p != daemon && alces_e2e::alive(p) {
                break p;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no daemon took the held connection over within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let names: Vec<String> = std::fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let pause = t.elapsed();
        assert!(names.contains(&"app.log".to_string()), "{names:?}");
        assert!(
            std::fs::read_to_string(&d.log)
                .unwrap()
                .contains("took the volume's descriptors back from the holder"),
            "the restarted plugin did not take the descriptors from the holder"
        );
        app.wait_past(before, "the application to fsync again after the takeover");
        // The file opened before reads on; the unsynced one is completed and closed.
        let mut buf = [0u8; 4];
        use std::io::{Seek, SeekFrom};
        reader.seek(SeekFrom::Start(3)).unwrap();
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"3456");
        w.write_all(&unsynced[2 << 20..]).unwrap();
        drop(w);
        let longest = app.finish();
        assert_eq!(
            dev_before,
            std::fs::metadata(&target)
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
                .unwrap(),
            "the mount is not the same kernel connection"
        );
        // Through another mount (no page cache of ours): every byte written.
        let other = std::fs::read(c.mnt.join(&vpath).join("unsynced")).unwrap();
        assert_eq!(other.len(), unsynced.len(), "the unsynced file's length");
        assert!(
            other == unsynced,
            "a written byte of the unsynced file was lost"
        );
        drop(reader);

        let ch = d.channel().await;
        let mut node = NodeClient::new(ch);
        node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: vid.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: vid.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
        assert!(!is_mount_point(&staging));
        assert!(!alces_e2e::alive(new), "the daemon outlived its unstage");
        // The holder lets the unstaged volume go.
        let held = d.state.join("volumes");
        wait_until(
            "the holder to release the volume",
            Duration::from_secs(10),
            || {
                !std::fs::read_dir(&held)
                    .unwrap()
                    .flatten()
                    .any(|e| e.path().extension().is_some_and(|x| x == "held"))
            },
        );
        (pause, longest)
    });
    drop(holder);
    println!(
        "FIGURE csi plugin and daemon SIGKILLed together, holder alive: from the SIGKILL to a listing answered by the new plugin's daemon: {pause:?} (including the plugin's start); longest pause between fsyncs seen by the application: {longest:?}"
    );
}

/// The calling thread's id.
fn gettid() -> i32 {
    // SAFETY: gettid takes no argument.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The system call thread `tid` of process `pid` is blocked in, if any
/// (`/proc/PID/task/TID/syscall`: its number and first argument).
fn blocked_in(pid: i32, tid: i32) -> Option<(i64, u64)> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    let mut f = t.split_whitespace();
    let nr: i64 = f.next()?.parse().ok()?;
    let arg = u64::from_str_radix(f.next()?.trim_start_matches("0x"), 16).ok()?;
    Some((nr, arg))
}

/// How many threads of the mount daemon `pid` wait in `read(2)` of its
/// `/dev/fuse` descriptor: the ones with no request in hand.
fn idle_fuse_readers(pid: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| blocked_in(pid, tid))
        .filter(|&(nr, fd)| {
            nr == libc::SYS_read
                && std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                    .is_ok_and(|l| l == Path::new("/dev/fuse"))
        })
        .count()
}

/// The number of the daemon's FUSE threads waiting in read(2) of /dev/fuse
/// once it has stopped changing: the same count (more than two) for half a
/// second. The pool's threads start one after another and a thread may still
/// be answering a request of the volume's preparation, so one look can count
/// fewer than the pool.
fn settled_idle_fuse_readers(pid: i32) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut same_since) = (idle_fuse_readers(pid), Instant::now());
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = idle_fuse_readers(pid);
        if now != last {
            (last, same_since) = (now, Instant::now());
        } else if now > 2 && same_since.elapsed() >= Duration::from_millis(500) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon's FUSE threads did not settle waiting for requests within 10 s (last count {last})"
        );
    }
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A volume staged for a test, with its path through the cluster's own mount.
struct Staged {
    vid: String,
    staging: PathBuf,
    /// The volume's directory through the cluster's mount (another client).
    vpath: PathBuf,
}

/// Creates volume `name` with `params` and stages it.
async fn stage_volume(c: &Cluster, d: &Driver, name: &str, params: &[(&str, &str)]) -> Staged {
    let ch = d.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);
    let vol = ctl
        .create_volume(create_req(name, 64 * MIB, params))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let vid = vol.volume_id.clone();
    let vpath = c
        .mnt
        .join(vid.rsplit('#').next().unwrap().trim_start_matches('/'));
    let staging = d.path(&format!(
        "plugins/kubernetes.io/csi/csi.alces.io/{name}/globalmount"
    ));
    std::fs::create_dir_all(&staging).unwrap();
    node.node_stage_volume(pb::NodeStageVolumeRequest {
        volume_id: vid.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(rwx()),
        ..Default::default()
    })
    .await
    .unwrap();
    Staged {
        vid,
        staging,
        vpath,
    }
}

/// Unstages `v` (its daemon ends for good).
async fn unstage_volume(d: &Driver, v: &Staged) {
    NodeClient::new(d.channel().await)
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: v.vid.clone(),
            staging_target_path: v.staging.display().to_string(),
        })
        .await
        .unwrap();
}

/// The last lines of the staged volume's daemon logs.
fn daemon_logs(d: &Driver) -> String {
    std::fs::read_dir(d.state.join("volumes"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| alces_e2e::tail(&e.path(), 40))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Retried mutations the master answered from its reply cache (/metrics).
fn reply_cache_hits(http: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(http).expect("master metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: master\r\nConnection: close\r\n\r\n")
        .expect("send metrics request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read metrics");
    body.lines()
        .find_map(|l| l.strip_prefix("alces_master_reply_cache_hits_total "))
        .map_or(0, |v| {
            v.trim().parse::<f64>().expect("counter value") as u64
        })
}

/// Signals every process of `pids`.
fn signal_all(pids: &[i32], sig: i32) {
    for &p in pids {
        // SAFETY: plain signal to a process of this test's cluster.
        unsafe { libc::kill(p, sig) };
    }
}

/// What an application has in flight in the mount daemon when it is SIGKILLed.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    /// A read of data no cache holds, every chunkserver stopped.
    Read,
    /// A mkdir the master applied but has not acknowledged (its metalogger,
    /// which must hold every mutation first, is stopped).
    Mkdir,
    /// A write and fsync of a new file, every chunkserver stopped: the write
    /// is in the daemon's journal, the fsync in its hands.
    Write,
}

/// A request the dead daemon had taken and not answered completes through the
/// next one (`FUSE_NOTIFY_RESEND`), for each kind of request in [`InFlight`]:
/// the daemon is SIGKILLed with the request in hand while what it waits for
/// is stopped; the next daemon gets the request again from the kernel; once
/// the stopped processes run again the application sees success and the
/// right bytes. The resent mkdir is answered from the master's reply cache
/// (the session and the request id are the dead daemon's), not run twice.
#[test]
fn a_request_in_flight_when_the_daemon_is_killed_completes_after_the_takeover() {
    let c = Cluster::start(alces_e2e::Options {
        env: vec![
            ("ALCES_SYNC_METALOGGERS".into(), "1".into()),
            ("ALCES_SYNC_TIMEOUT_MS".into(), "600000".into()),
        ],
        ..Default::default()
    })
    .unwrap();
    let d = driver(&c);
    let http = c.master_http();
    let mut figures = Vec::new();
    for case in [InFlight::Read, InFlight::Mkdir, InFlight::Write] {
        let pause = c.block_on(async {
            let name = format!("pvc-{case:?}").to_lowercase();
            let v = stage_volume(&c, &d, &name, &[]).await;
            let data: Vec<u8> = (0..(300u64 << 10)).map(|i| pattern(i * 7)).collect();
            let dir = v.staging.join("made-once");
            // Prepared before anything stops.
            let mut wfile = None;
            match case {
                InFlight::Read => {
                    // Written through the cluster's other mount: nothing of it
                    // is cached in the volume's mount or its daemon.
                    alces_e2e::write_synced(&v.vpath.join("cold"), &data).unwrap();
                }
                InFlight::Write => {
                    wfile = Some(std::fs::File::create(v.staging.join("written")).unwrap())
                }
                InFlight::Mkdir => {}
            }
            let daemon = daemon_pid(&d) as i32;
            let idle = settled_idle_fuse_readers(daemon);
            let stopped: Vec<i32> = match case {
                InFlight::Mkdir => vec![c
                    .pid(alces_e2e::Proc::Metalogger(1))
                    .expect("the metalogger runs")],
                _ => (1..=c.opts.chunkservers)
                    .filter_map(|i| c.pid(alces_e2e::Proc::Chunkserver(i)))
                    .collect(),
            };
            assert!(!stopped.is_empty());
            signal_all(&stopped, libc::SIGSTOP);
            let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
            let t2 = tid.clone();
            let (rfile, d2, wdata) = (v.staging.join("cold"), dir.clone(), data.clone());
            let app = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
                t2.store(gettid(), Ordering::SeqCst);
                match case {
                    InFlight::Read => {
                        let mut f = std::fs::File::open(&rfile)?;
                        let mut buf = vec![0u8; 256 << 10];
                        f.read_exact(&mut buf).map(|()| buf)
                    }
                    InFlight::Mkdir => std::fs::create_dir(&d2).map(|()| Vec::new()),
                    InFlight::Write => {
                        let mut f = wfile.expect("the file to write");
                        f.write_all(&wdata)?;
                        f.sync_all().map(|()| Vec::new())
                    }
                }
            });
            // The application waits in the kernel and the daemon has taken the
            // request. A read or write: every FUSE thread is back in read(2)
            // of /dev/fuse (a request still queued would have woken one), seen
            // twice in a row. A mkdir: a FUSE thread holds it (it left its
            // read) and the master applied it (another mount sees it).
            let me = std::process::id() as i32;
            let mut seen = 0;
            let in_hand = wait_for(Duration::from_secs(20), || {
                let now = match case {
                    InFlight::Mkdir => {
                        idle_fuse_readers(daemon) < idle && v.vpath.join("made-once").is_dir()
                    }
                    _ => {
                        let t = tid.load(Ordering::SeqCst);
                        t != 0
                            && blocked_in(me, t).is_some_and(|(nr, _)| {
                                [libc::SYS_read, libc::SYS_write, libc::SYS_fsync].contains(&nr)
                            })
                            && idle_fuse_readers(daemon) >= idle
                    }
                };
                seen = if now { seen + 1 } else { 0 };
                seen >= 2
            });
            if !in_hand {
                signal_all(&stopped, libc::SIGCONT);
                panic!(
                    "{case:?}: the request was not waiting in the daemon within 20 s (idle readers {} of {idle}; application in {:?})",
                    idle_fuse_readers(daemon),
                    blocked_in(me, tid.load(Ordering::SeqCst))
                );
            }
            let hits = reply_cache_hits(&http);
            let t = Instant::now();
            let new = kill_daemon_and_wait_takeover(&d);
            let pause = t.elapsed();
            assert!(!app.is_finished(), "{case:?}: the request ended with the dead daemon");
            if let InFlight::Write = case {
                // The stopped chunkservers make the next daemon's replay wait.
                std::thread::sleep(Duration::from_secs(2));
            }
            signal_all(&stopped, libc::SIGCONT);
            if !wait_for(Duration::from_secs(60), || app.is_finished()) {
                panic!(
                    "{case:?}: the request in flight at the SIGKILL did not complete within 60 s of the takeover; daemon log:\n{}",
                    daemon_logs(&d)
                );
            }
            let got = app
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("{case:?} in flight at the SIGKILL: {e}"));
            match case {
                InFlight::Read => assert!(got == data[..256 << 10], "the read returned other bytes"),
                InFlight::Mkdir => {
                    assert!(dir.is_dir());
                    assert!(
                        reply_cache_hits(&http) > hits,
                        "the resent mkdir was not answered from the reply cache; daemon log:\n{}",
                        daemon_logs(&d)
                    );
                }
                InFlight::Write => {
                    let back = std::fs::read(v.vpath.join("written")).unwrap();
                    assert_eq!(back.len(), data.len(), "size read through another mount");
                    assert!(back == data, "another mount reads other bytes");
                }
            }
            assert!(alces_e2e::alive(new as i32), "{case:?}: the next daemon runs");
            unstage_volume(&d, &v).await;
            pause
        });
        figures.push(format!("{case:?} {pause:?}"));
    }
    println!("FIGURE csi requests in flight at a daemon SIGKILL completed after the takeover (from the SIGKILL to the next daemon's start): {}", figures.join(", "));
}

/// Session timeout of the cluster in the takeover session test (seconds).
const SHORT_SESSION: u64 = 3;

/// flock(2) of `f`, not waiting: the errno on failure.
fn try_flock(f: &std::fs::File) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// A daemon that takes over continues the dead one's master session: a flock
/// an application holds through the SIGKILL still excludes another client,
/// also after the session timeout, and is released when the application
/// closes the file; a file unlinked while open (no trash) stays readable and
/// writable through its open descriptor after the session timeout.
#[test]
fn a_takeover_keeps_the_sessions_locks_and_unlinked_open_files() {
    use std::os::unix::fs::FileExt;
    let c = Cluster::start(alces_e2e::Options {
        env: vec![("ALCES_SESSION_TIMEOUT".into(), SHORT_SESSION.to_string())],
        ..Default::default()
    })
    .unwrap();
    let d = driver(&c);
    c.block_on(async {
        let v = stage_volume(&c, &d, "pvc-s", &[("trashTime", "0")]).await;
        let lockfile = v.staging.join("lockfile");
        let held = std::fs::File::create(&lockfile).unwrap();
        try_flock(&held).expect("the first flock");
        let uf = v.staging.join("unlinked");
        let open = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&uf)
            .unwrap();
        open.write_all_at(b"before", 0).unwrap();
        open.sync_all().unwrap();
        std::fs::remove_file(&uf).unwrap();

        kill_daemon_and_wait_takeover(&d);
        let other = std::fs::File::open(v.vpath.join("lockfile")).unwrap();
        assert_eq!(
            try_flock(&other),
            Err(libc::EWOULDBLOCK),
            "the lock is still held"
        );
        // Past the session timeout: the dead daemon's session would be gone.
        std::thread::sleep(Duration::from_secs(SHORT_SESSION * 2 + 1));
        assert_eq!(
            try_flock(&other),
            Err(libc::EWOULDBLOCK),
            "the lock is still held after the session timeout; daemon log:\n{}",
            daemon_logs(&d)
        );
        let mut buf = [0u8; 6];
        open.read_exact_at(&mut buf, 0).unwrap_or_else(|e| {
            panic!(
                "reading the unlinked open file: {e}; daemon log:\n{}",
                daemon_logs(&d)
            )
        });
        assert_eq!(&buf, b"before");
        open.write_all_at(b"after", 6).unwrap();
        open.sync_all().unwrap();
        let mut buf = [0u8; 11];
        open.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"beforeafter");
        assert!(!v.vpath.join("unlinked").exists());
        // The application closes the file: its flock goes.
        drop(held);
        assert!(
            wait_for(Duration::from_secs(10), || try_flock(&other).is_ok()),
            "the lock was not released at the holder's close; daemon log:\n{}",
            daemon_logs(&d)
        );
        drop(open);
        let logs = daemon_logs(&d);
        assert!(
            logs.contains("continuing the previous daemon's session"),
            "{logs}"
        );
        drop(other);
        unstage_volume(&d, &v).await;
    });
}

/// A journalled write that cannot be replayed ends the replay of its file
/// only, and the daemon serves: every chunkserver is stopped while a file
/// holds 64 KiB written (acknowledged, journalled) and not flushed; the
/// daemon is SIGKILLed; the next one (replay deadline 3 s) retries, gives the
/// file up, marks it and serves, and stays the volume's daemon (no restart
/// loop). The application's fsync through the descriptor it opened before
/// fails with EIO; the file carries `user.alces.lost-writes`; a descriptor
/// opened afterwards writes and fsyncs normally.
#[test]
fn a_journalled_write_that_cannot_be_replayed_is_given_up_and_the_file_marked() {
    use std::os::unix::fs::FileExt;
    let c = Cluster::start_default();
    let d = driver_with_env(&c, &[("ALCES_REPLAY_TIMEOUT", "3")]);
    c.block_on(async {
        let v = stage_volume(&c, &d, "pvc-lost", &[]).await;
        let daemon = daemon_pid(&d) as i32;
        let f = std::fs::File::create(v.staging.join("lost")).unwrap();
        let data: Vec<u8> = (0..(64u64 << 10)).map(|i| pattern(i * 5)).collect();
        f.write_all_at(&data, 0).unwrap();
        let chunkservers: Vec<i32> = (1..=c.opts.chunkservers)
            .filter_map(|i| c.pid(alces_e2e::Proc::Chunkserver(i)))
            .collect();
        signal_all(&chunkservers, libc::SIGSTOP);
        let t = Instant::now();
        let new = kill_daemon_and_wait_takeover(&d);
        assert_ne!(new as i32, daemon);
        // The next daemon serves once it has given the file up.
        let listed = std::fs::read_dir(&v.staging).map(|r| r.count());
        let served = t.elapsed();
        signal_all(&chunkservers, libc::SIGCONT);
        assert!(listed.is_ok(), "listing after the takeover: {listed:?}");
        assert_eq!(daemon_pid(&d), new, "the daemon that gave up still serves");
        assert!(alces_e2e::alive(new as i32));
        let e = f.sync_all().expect_err("an fsync of writes that were lost");
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let mut buf = vec![0u8; 512];
        let path = std::ffi::CString::new(
            v.vpath.join("lost").as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: valid path and buffer for the call's duration.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                c"user.alces.lost-writes".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n > 0, "the file is not marked: {}", std::io::Error::last_os_error());
        let mark = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
        assert!(
            mark.contains("65536 acknowledged bytes at offsets 0..65536 were lost"),
            "{mark}"
        );
        // A descriptor opened after the takeover works.
        let g = std::fs::File::options()
            .write(true)
            .open(v.staging.join("lost"))
            .unwrap();
        g.write_all_at(b"again", 0).unwrap();
        g.sync_all().expect("an fsync through a descriptor opened after the takeover");
        drop(g);
        let logs = daemon_logs(&d);
        assert!(logs.contains("journal replay waits"), "{logs}");
        assert!(logs.contains("giving up the replay"), "{logs}");
        drop(f);
        unstage_volume(&d, &v).await;
        println!("FIGURE csi replay given up after its 3 s deadline: {served:?} from the SIGKILL to a listing served");
    });
}

/// A graceful hand-over: SIGTERM to the mount daemon while an application
/// writes and fsyncs in a loop and another file holds 1 MiB written but not
/// fsynced. The daemon serves no new request, finishes those it serves,
/// flushes, empties its journal and exits without unmounting; the plugin
/// starts the next daemon on the same connection. The application sees no
/// error, every fsynced byte reads back, the next daemon has nothing to
/// replay, and the unfsynced file is whole through another mount.
#[test]
fn sigterm_hands_the_connection_over_with_nothing_to_replay() {
    let c = Cluster::start_default();
    let d = driver(&c);
    let (pause, longest) = c.block_on(async {
        let v = stage_volume(&c, &d, "pvc-term", &[]).await;
        let dev_before =
            std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&v.staging).unwrap());
        let app = App::start(v.staging.join("app.log"));
        app.wait_past(16 << 10, "the application to fsync");
        let unsynced: Vec<u8> = (0..(1u64 << 20)).map(|i| pattern(i * 11)).collect();
        let mut g = std::fs::File::create(v.staging.join("unsynced")).unwrap();
        g.write_all(&unsynced).unwrap();
        let t = Instant::now();
        let new = signal_daemon_and_wait_takeover(&d, libc::SIGTERM);
        let names: Vec<String> = std::fs::read_dir(&v.staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let pause = t.elapsed();
        assert!(names.contains(&"unsynced".to_string()), "{names:?}");
        let before = app.synced();
        app.wait_past(before, "the application to fsync through the next daemon");
        let longest = app.finish();
        drop(g);
        let back = std::fs::read(v.vpath.join("unsynced")).unwrap();
        assert_eq!(back.len(), unsynced.len(), "size through another mount");
        assert!(back == unsynced, "another mount reads other bytes");
        let dev_after =
            std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&v.staging).unwrap());
        assert_eq!(dev_before, dev_after, "the same connection");
        assert!(alces_e2e::alive(new as i32));
        let logs = daemon_logs(&d);
        assert!(
            logs.contains("handed over; exiting without unmounting"),
            "{logs}"
        );
        assert!(logs.contains("flushed=true"), "{logs}");
        assert!(
            !logs.contains("replayed the journalled writes"),
            "the next daemon had writes to replay:\n{logs}"
        );
        assert!(
            logs.contains("continuing the previous daemon's session"),
            "{logs}"
        );
        unstage_volume(&d, &v).await;
        (pause, longest)
    });
    println!("FIGURE csi graceful hand-over (SIGTERM): {pause:?} from the SIGTERM to a listing answered by the next daemon; longest pause between fsyncs seen by the application: {longest:?}");
}
