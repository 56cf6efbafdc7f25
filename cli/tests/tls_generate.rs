//! `alces tls generate`: the files a Kubernetes TLS Secret holds, with the
//! right modes, usable at once by the Alces TLS code (a real handshake over
//! loopback, the names checked), and every bad input refused naming it.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use alces_proto::tls::{Role, TlsArgs};
use rustls::pki_types::ServerName;

const ALCES: &str = env!("CARGO_BIN_EXE_alces");

fn alces(args: &[&str]) -> Output {
    Command::new(ALCES)
        .args(args)
        .env_remove("ALCES_LOCAL_DIR")
        .output()
        .expect("alces runs")
}

fn ok(args: &[&str]) -> String {
    let o = alces(args);
    assert!(
        o.status.success(),
        "alces {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(args: &[&str], says: &str) {
    let o = alces(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "alces {args:?} was accepted");
    assert!(err.contains(says), "alces {args:?}: '{says}' not in: {err}");
}

fn args(dir: &Path, client_auth: bool) -> TlsArgs {
    TlsArgs {
        tls_ca: Some(dir.join("ca.crt")),
        tls_cert: Some(dir.join("tls.crt")),
        tls_key: Some(dir.join("tls.key")),
        tls_client_auth: client_auth,
        tls_server_name: None,
    }
}

/// A mutual-TLS handshake over loopback: a server presenting the generated
/// certificate, a client presenting it too and verifying `name`.
fn handshake(dir: &Path, name: &str) -> Result<(), String> {
    let server = args(dir, true).load(Role::Server).expect("server loads");
    let client = args(dir, false).load(Role::Client).expect("client loads");
    let sc: Arc<rustls::ServerConfig> = server.server_config().expect("server config");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut conn = rustls::ServerConnection::new(sc).unwrap();
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut s) {
                return Err(e.to_string());
            }
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr).unwrap();
    let mut conn = rustls::ClientConnection::new(
        client.client_config().expect("client config"),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let r = loop {
        if !conn.is_handshaking() {
            break Ok(());
        }
        if let Err(e) = conn.complete_io(&mut s) {
            break Err(e.to_string());
        }
    };
    while r.is_ok() && conn.wants_write() {
        if conn.write_tls(&mut s).is_err() {
            break;
        }
    }
    drop(s);
    let server_side = t.join().unwrap();
    r.and(server_side)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_cluster_certificate_serves_every_name_its_pods_are_reached_by() {
    let tmp = tempfile::Builder::new()
        .prefix("alces-k8stls-gen-")
        .tempdir()
        .unwrap();
    let out = tmp.path().join("demo-tls");
    let o = out.to_str().unwrap();
    let printed = ok(&[
        "tls",
        "generate",
        "--cluster",
        "demo",
        "--namespace",
        "store",
        "--out",
        o,
        "--secret-name",
        "demo-tls",
    ]);
    assert!(
        printed.contains("*.demo-chunkservers.store.svc"),
        "{printed}"
    );
    assert!(
        printed.contains("kubectl create secret generic demo-tls"),
        "{printed}"
    );
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("tls.key")), 0o600);
    assert_eq!(mode(&out.join("tls.crt")), 0o644);
    for name in [
        "demo-master.store.svc",
        "demo-metadata-1.demo-metadata.store.svc",
        "demo-cs-a-0.demo-chunkservers.store.svc",
    ] {
        handshake(&out, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in [
        "demo-master.other.svc",
        "a.b.demo-chunkservers.store.svc",
        "demo-chunkservers.store.svc",
    ] {
        let e = handshake(&out, name).expect_err(name);
        assert!(
            e.to_lowercase().contains("name") || e.contains("NotValidForName"),
            "{name}: {e}"
        );
    }
    // Files are never replaced by accident.
    refused(
        &["tls", "generate", "--names", "x", "--out", o],
        "exists already",
    );
    let before = std::fs::read(out.join("ca.crt")).unwrap();
    // A new CA that still trusts the previous one (a rotation).
    let old = tmp.path().join("old-ca.crt");
    std::fs::write(&old, &before).unwrap();
    ok(&[
        "tls",
        "generate",
        "--names",
        "demo-master.store.svc",
        "--out",
        o,
        "--force",
        "--also-trust",
        old.to_str().unwrap(),
    ]);
    let bundle = std::fs::read_to_string(out.join("ca.crt")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(bundle.ends_with(std::str::from_utf8(&before).unwrap()));
    handshake(&out, "demo-master.store.svc").expect("the new pair under the bundle");
}

#[test]
fn bad_input_is_refused_naming_it() {
    let tmp = tempfile::Builder::new()
        .prefix("alces-k8stls-bad-")
        .tempdir()
        .unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    refused(
        &["tls", "generate", "--out", o],
        "no name for the certificate",
    );
    refused(
        &["tls", "generate", "--names", "a b", "--out", o],
        "'a b' is not a DNS name",
    );
    refused(
        &["tls", "generate", "--names", "ok.example,a..b", "--out", o],
        "'a..b' is not a DNS name",
    );
    refused(
        &["tls", "generate", "--names", "x.*.example", "--out", o],
        "is not a DNS name",
    );
    refused(
        &["tls", "generate", "--names", "é.example", "--out", o],
        "is not a DNS name",
    );
    let huge = "a".repeat(10_000);
    refused(
        &["tls", "generate", "--names", &huge, "--out", o],
        "is not a DNS name",
    );
    refused(
        &[
            "tls",
            "generate",
            "--cluster",
            "Demo",
            "--namespace",
            "store",
            "--out",
            o,
        ],
        "--cluster 'Demo'",
    );
    refused(
        &[
            "tls",
            "generate",
            "--cluster",
            "demo",
            "--namespace",
            "../x",
            "--out",
            o,
        ],
        "--namespace",
    );
    refused(
        &["tls", "generate", "--cluster", "demo", "--out", o],
        "--namespace",
    );
    let missing = tmp.path().join("nope.crt");
    refused(
        &[
            "tls",
            "generate",
            "--names",
            "x",
            "--out",
            o,
            "--also-trust",
            missing.to_str().unwrap(),
        ],
        "--also-trust: cannot read",
    );
    let junk = tmp.path().join("junk.crt");
    std::fs::write(&junk, [0xffu8, 0, 1, 2]).unwrap();
    refused(
        &[
            "tls",
            "generate",
            "--names",
            "x",
            "--out",
            o,
            "--also-trust",
            junk.to_str().unwrap(),
        ],
        "holds no PEM certificate",
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    refused(
        &[
            "tls",
            "generate",
            "--names",
            "x",
            "--out",
            file.to_str().unwrap(),
        ],
        "is not a directory",
    );
    // Nothing was written by any of them.
    assert!(!out.join("tls.key").exists());
}
