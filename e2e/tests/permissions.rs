//! The master's permission checks and revocations on a real cluster: a
//! root-squashed FUSE mount cannot read another user's 0600 file although
//! its kernel lets root through (the master refuses), users keep their own
//! and their supplementary groups' access; a revoked credential's open file
//! stops reading, and a chunk access the master signed before the
//! revocation is refused by the chunkservers within seconds, also by a
//! chunkserver that was down during the revocation and came back after a
//! master restart.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use alces_e2e::{Cluster, Proc};
use alces_proto::pb;

fn issue(c: &Cluster, name: &str, extra: &[&str]) -> (u64, PathBuf) {
    common::issue_credential(c, name, extra)
}

fn chown(p: &Path, uid: u32, gid: u32, mode: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// `cat path` as uid/gid with supplementary `groups`: its output, or stderr.
/// Run from the file's directory (the directories above the mount point
/// belong to root and may not be searchable by others).
fn cat_as(uid: u32, gid: u32, groups: &[u32], path: &Path) -> Result<Vec<u8>, String> {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={}", groups.join(","))
    };
    let o = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(groups)
        .arg("cat")
        .arg(path.file_name().unwrap())
        .current_dir(path.parent().unwrap())
        .output()
        .expect("setpriv runs");
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn root_squashed_mount_cannot_read_another_users_private_file() {
    let c = Cluster::start_default();
    let vol = c.path("vols/p");
    fs::create_dir_all(&vol).unwrap();
    chown(&c.path("vols"), 0, 0, 0o755);
    chown(&vol, 0, 0, 0o755);
    for (name, uid, gid, mode) in [
        ("secret", 1000, 1000, 0o600),
        ("public", 1000, 1000, 0o644),
        ("group", 1000, 500, 0o640),
    ] {
        let p = vol.join(name);
        fs::write(&p, format!("{name} data")).unwrap();
        chown(&p, uid, gid, mode);
    }
    let (_, token) = issue(
        &c,
        "p-root-squash",
        &["--path", "/vols/p", "--squash", "root"],
    );
    let m = c.mount_extra(
        "mnt-perm-squash",
        &[
            "--credential-file",
            token.to_str().unwrap(),
            "--allow-other",
        ],
    );
    // Root (this test) passes the kernel's check; the master sees nobody.
    let e = fs::read(m.path.join("secret")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    assert_eq!(fs::read(m.path.join("public")).unwrap(), b"public data");
    let e = fs::write(m.path.join("new"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e = fs::remove_file(m.path.join("public")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e =
        fs::set_permissions(m.path.join("secret"), fs::Permissions::from_mode(0o644)).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    // The owner reads it; a member of the file's group through a
    // supplementary group (which the mount reads from /proc and sends) reads
    // the group file; a non-member does not.
    assert_eq!(
        cat_as(1000, 1000, &[], &m.path.join("secret")).unwrap(),
        b"secret data"
    );
    assert_eq!(
        cat_as(2000, 2000, &[7, 500], &m.path.join("group")).unwrap(),
        b"group data"
    );
    let e = cat_as(2000, 2000, &[], &m.path.join("group")).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    // Through the cluster secret's mount nothing changed.
    assert_eq!(fs::read(vol.join("secret")).unwrap(), b"secret data");
}

/// The data of `rel` on the main mount as the credential's session sees it
/// (a ReadChunk with its signed access), as a hostile client would keep it.
fn located(c: &Cluster, token: &str, rel_inode: u64) -> pb::ReadChunkReply {
    let ch = c.channel_with_secret(&c.master, token);
    c.block_on(async move {
        let mut m = pb::master_client::MasterClient::new(ch);
        let sid = m
            .register_session(pb::RegisterSessionRequest::default())
            .await
            .unwrap()
            .into_inner()
            .session_id;
        m.read_chunk(pb::ChunkRequest {
            session_id: sid,
            inode: rel_inode,
            chunk_index: 0,
            caller: Some(pb::Caller::default()),
        })
        .await
        .unwrap()
        .into_inner()
    })
}

/// Reads 4 bytes of the located chunk from chunkserver `addr` with the
/// credential's token and its access.
fn read_at(
    c: &Cluster,
    token: &str,
    addr: &str,
    r: &pb::ReadChunkReply,
) -> Result<(), tonic::Status> {
    let ch = c.channel_with_secret(addr, token);
    let req = pb::ReadRequest {
        chunk_id: r.chunk_id,
        version: r.version,
        offset: 0,
        length: 4,
        access: r.access.clone(),
    };
    c.block_on(async move {
        pb::chunkserver_client::ChunkserverClient::new(ch)
            .read(req)
            .await
            .map(|_| ())
    })
}

/// Polls `read` until it is refused as revoked; returns how long it took.
fn refused_within(
    what: &str,
    limit: Duration,
    mut read: impl FnMut() -> Result<(), tonic::Status>,
) -> Duration {
    let t = Instant::now();
    loop {
        match read() {
            Err(e) if e.message().contains("revoked") => return t.elapsed(),
            r => assert!(
                t.elapsed() < limit,
                "{what}: not refused as revoked after {limit:?}: {r:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn revocation_reaches_chunkservers_within_seconds() {
    let c = Cluster::start_default();
    fs::create_dir_all(c.path("vols/r")).unwrap();
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(c.path("vols/r/big"), &data).unwrap();
    let (id, token_file) = issue(&c, "r", &["--path", "/vols/r"]);
    let token = fs::read_to_string(&token_file).unwrap().trim().to_string();
    let inode = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(c.path("vols/r/big")).unwrap().ino()
    };
    // A hostile client keeps a signed access to chunk 0 and every copy's
    // address; the chunkservers serve it.
    let r = located(&c, &token, inode);
    assert!(r.access.is_some() && r.locations.len() >= 2, "{r:?}");
    let addrs: Vec<String> = r.locations.iter().map(|l| l.address.clone()).collect();
    for a in &addrs {
        read_at(&c, &token, a, &r).expect("served before the revocation");
    }
    // A real mount with the file open, reading.
    let m = c.mount_extra(
        "mnt-perm-revoke",
        &["--credential-file", token_file.to_str().unwrap()],
    );
    let mut f = fs::File::open(m.path.join("big")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    {
        use std::io::Read;
        f.read_exact(&mut buf).unwrap();
        assert_eq!(&buf[..], &data[..buf.len()]);
    }
    // One chunkserver holding a copy is down during the revocation.
    let down = (1..=3)
        .find(|i| addrs.contains(&c.cs_addr(*i)))
        .expect("a chunkserver of the cluster holds a copy");
    c.kill9(Proc::Chunkserver(down));
    let revoked_at = Instant::now();
    c.cli_json(&["credential", "revoke", &id.to_string()])
        .expect("alces credential revoke");
    // The open file's next reads (past what the kernel cached) fail.
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut off = 1u64 << 20;
        let err = loop {
            f.seek(SeekFrom::Start(off)).unwrap();
            match f.read_exact(&mut buf) {
                Err(e) => break e,
                Ok(()) => {
                    assert!(
                        revoked_at.elapsed() < Duration::from_secs(10),
                        "the open file still reads 10 s after the revocation"
                    );
                    off = (off + buf.len() as u64) % (3 << 20);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        println!(
            "open file refused {:?} after the revocation: {err}",
            revoked_at.elapsed()
        );
    }
    // Every live chunkserver refuses the kept access within seconds (it
    // would otherwise serve it until it expires, 2 minutes).
    for a in addrs.iter().filter(|a| **a != c.cs_addr(down)) {
        refused_within(a, Duration::from_secs(10), || read_at(&c, &token, a, &r));
        println!(
            "chunkserver {a} refused the access {:?} after the revocation",
            revoked_at.elapsed()
        );
    }
    // The master restarts (its state replayed), then the chunkserver that
    // was down comes back: it refuses as soon as it serves.
    c.kill9(Proc::Master);
    c.restart(Proc::Master);
    c.restart(Proc::Chunkserver(down));
    let a = c.cs_addr(down);
    let took = refused_within(&a, Duration::from_secs(30), || read_at(&c, &token, &a, &r));
    println!("restarted chunkserver {a} refused the access {took:?} after its restart");
    drop(f);
}
