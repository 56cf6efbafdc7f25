//! A whole local cluster with mutual TLS (`alces local up --tls`): the core
//! cases (mount, write, read, the CLI, a metalogger promoted after a SIGKILL
//! of the master), a certificate rotated under the running master, and a
//! plaintext mount refused with an error that says why.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use alces_e2e::storm::{verify, Storm};
use alces_e2e::{bin, wait_until, Cluster, Options, Proc};
use alces_proto::tls::certgen::{local_names, write_file, Ca, Validity};

fn tls_options() -> Options {
    Options {
        tls: true,
        env: vec![("ALCES_SYNC_METALOGGERS".into(), "1".into())],
        ..Options::default()
    }
}

#[test]
fn core_cases_run_with_mutual_tls() {
    let c = Cluster::start(tls_options()).expect("start a TLS cluster");
    // Throwaway CA and keys readable by their owner only.
    let tdir = c.dir.join("tls");
    assert!(tdir.join("ca.crt").is_file());
    for name in ["master", "cs1", "cs2", "cs3", "ml1", "mount", "cli"] {
        let key = tdir.join(format!("{name}.key"));
        let mode = std::fs::metadata(&key)
            .expect("key file")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", key.display());
    }
    // Every daemon runs with TLS (and mutual TLS on the servers).
    for p in [
        Proc::Master,
        Proc::Chunkserver(1),
        Proc::Metalogger(1),
        Proc::Mount,
    ] {
        let cmd = std::fs::read_to_string(c.proc_dir(p).join("command.json")).unwrap();
        assert!(
            cmd.contains("--tls-ca") && cmd.contains("--tls-cert"),
            "{p:?}: {cmd}"
        );
    }

    // Write through the mount (several chunks, copies on several servers) and read back.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    let f = c.path("over-tls.bin");
    let mut w = std::fs::File::create(&f).expect("create");
    w.write_all(&data).expect("write");
    w.sync_all().expect("fsync");
    drop(w);
    assert!(
        std::fs::read(&f).expect("read") == data,
        "read back other bytes"
    );

    // The CLI reaches the master with the env file's CA and certificate.
    let st = c.cli_json(&["status"]).expect("alces status over TLS");
    assert!(
        st["chunkservers"].as_array().is_some_and(|a| a.len() == 3),
        "{st}"
    );

    // Failover: SIGKILL of the master during a storm, promotion of the metalogger.
    let storm = Storm::start(c.mnt.clone(), "tls");
    wait_until("30 operations", Duration::from_secs(120), || {
        storm.count() >= 30
    });
    c.kill9(Proc::Master);
    let out = c.promote(1, &[]);
    assert!(
        out.status.success(),
        "promote over TLS failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status().expect("promoted master answers").epoch, 2);
    let n = storm.count();
    wait_until("the mount to carry on", Duration::from_secs(120), || {
        storm.count() >= n + 20
    });
    let (log, errors) = storm.finish();
    assert!(
        errors.is_empty(),
        "operations failed instead of pausing: {errors:?}"
    );
    verify(&c.mnt, &log);
    assert!(std::fs::read(&f).expect("read after failover") == data);
}

#[test]
fn the_running_master_serves_a_rotated_certificate_to_new_connections() {
    let c = Cluster::start(Options {
        metaloggers: 0,
        ..tls_options()
    })
    .expect("start a TLS cluster");
    let tdir = c.dir.join("tls");
    let before = c
        .block_on(alces_proto::net::peer_certificate(&c.master, &c.tls))
        .expect("handshake with the master");
    // A CA rotation as cert-manager does it: the bundle gains the new CA, then
    // the master's files are replaced by a pair the new CA signed.
    let next = Ca::new("next local CA").unwrap();
    let mut bundle = std::fs::read_to_string(tdir.join("ca.crt")).unwrap();
    bundle.push_str(next.cert_pem());
    write_file(&tdir.join("ca.crt"), bundle.as_bytes(), 0o644).unwrap();
    let pair = next.issue(&local_names(), Validity::Current, 4242).unwrap();
    write_file(&tdir.join("master.crt"), pair.cert_pem.as_bytes(), 0o644).unwrap();
    write_file(&tdir.join("master.key"), pair.key_pem.as_bytes(), 0o600).unwrap();
    let want = rustls_pki(&pair.cert_pem);
    let after = c
        .block_on(alces_proto::net::peer_certificate(&c.master, &c.tls))
        .expect("handshake with the master after the rotation");
    assert_ne!(
        before, after,
        "the master still serves its first certificate"
    );
    assert_eq!(
        after, want,
        "the master serves another certificate than the new one"
    );
    // Connections made before go on; new ones (the CLI) get in.
    let f = c.path("after-rotation");
    std::fs::write(&f, b"still here").expect("write through the mount");
    assert_eq!(std::fs::read(&f).unwrap(), b"still here");
    c.cli_json(&["status"])
        .expect("alces status after the rotation");
    // A half-written certificate is not taken: the master keeps the pair it has.
    write_file(
        &tdir.join("master.crt"),
        &pair.cert_pem.as_bytes()[..64],
        0o644,
    )
    .unwrap();
    let kept = c
        .block_on(alces_proto::net::peer_certificate(&c.master, &c.tls))
        .expect("handshake with a half-written certificate file");
    assert_eq!(kept, want);
    let log = std::fs::read_to_string(c.log(Proc::Master)).unwrap();
    assert!(
        log.contains("cannot be loaded, still using the previous one"),
        "no warning about the broken file in the master's log"
    );
}

fn rustls_pki(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
}

#[test]
fn a_plaintext_mount_of_a_tls_cluster_says_why_it_cannot_connect() {
    let c = Cluster::start(Options {
        metaloggers: 0,
        chunkservers: 1,
        ..tls_options()
    })
    .expect("start a TLS cluster");
    let mnt = c.scratch("plain-mnt");
    let log = c.dir.join("plain-mount.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(bin("alces-mount"))
        .arg(&mnt)
        .args(["--master", &c.master, "--secret-file"])
        .arg(&c.secret_file)
        .env_remove("ALCES_TLS_CA")
        .env_remove("ALCES_TLS_CERT")
        .env_remove("ALCES_TLS_KEY")
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .expect("run alces-mount");
    // It retries (a master may be on its way), saying each time why it failed.
    let said = |log: &std::path::Path| {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        t.contains("speaks TLS and this process connects in plaintext") && t.contains("--tls-ca")
    };
    wait_until(
        "the plaintext mount to say why it cannot connect",
        Duration::from_secs(30),
        || said(&log),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !alces_e2e::is_mount_point(&mnt),
        "a plaintext mount of a TLS master mounted"
    );
    // The master says it too.
    let mlog = std::fs::read_to_string(c.log(Proc::Master)).unwrap();
    assert!(
        mlog.contains("did not speak TLS (a plaintext client?)"),
        "master log says nothing"
    );
}
