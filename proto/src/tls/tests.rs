//! Handshakes between real sockets: each failure mode says which it is.

use std::path::{Path, PathBuf};

use tonic::Code;

use super::certgen::{write_file, Ca, Validity};
use super::*;
use crate::auth::ClientAuth;

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn ca(&self, ca: &Ca, n: &str) -> PathBuf {
        let p = self.path(n);
        write_file(&p, ca.cert_pem().as_bytes(), 0o644).unwrap();
        p
    }
    fn pair(
        &self,
        ca: &Ca,
        n: &str,
        names: &[&str],
        v: Validity,
        serial: u64,
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let p = ca.issue(&names, v, serial).unwrap();
        let (c, k) = (
            self.path(&format!("{n}.crt")),
            self.path(&format!("{n}.key")),
        );
        write_file(&c, p.cert_pem.as_bytes(), 0o644).unwrap();
        write_file(&k, p.key_pem.as_bytes(), 0o600).unwrap();
        (c, k)
    }
}

fn args(ca: &Path, pair: Option<&(PathBuf, PathBuf)>) -> TlsArgs {
    TlsArgs {
        tls_ca: Some(ca.to_path_buf()),
        tls_cert: pair.map(|p| p.0.clone()),
        tls_key: pair.map(|p| p.1.clone()),
        ..TlsArgs::default()
    }
}

/// A gRPC server with no service on loopback: a call that reaches it is
/// answered "unimplemented".
async fn serve(tls: &Tls) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let inc = crate::net::incoming(l, tls);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(inc),
    );
    addr
}

/// One call from a client with `tls` to `addr`: Ok when the connection
/// works, else the message of the failure.
async fn call(addr: &str, tls: &Tls) -> Result<(), String> {
    let auth = ClientAuth::new("s3cret-s3cret-s3cret")
        .unwrap()
        .with_tls(tls);
    let ch = crate::net::channel(addr, &auth).unwrap();
    let mut c = crate::pb::admin_client::AdminClient::new(ch);
    match c.status(crate::pb::Empty {}).await {
        Err(s) if s.code() == Code::Unimplemented => Ok(()),
        Err(s) => Err(crate::net::status_text(&s)),
        Ok(_) => panic!("an empty server answered"),
    }
}

struct Setup {
    f: Files,
    ca: Ca,
    ca_file: PathBuf,
    server: (PathBuf, PathBuf),
}

fn setup() -> Setup {
    let f = Files::new();
    let ca = Ca::new("test CA").unwrap();
    let ca_file = f.ca(&ca, "ca.crt");
    let server = f.pair(
        &ca,
        "server",
        &["localhost", "127.0.0.1"],
        Validity::Current,
        1,
    );
    Setup {
        f,
        ca,
        ca_file,
        server,
    }
}

#[tokio::test]
async fn tls_connects_and_plaintext_still_works() {
    let s = setup();
    let stls = args(&s.ca_file, Some(&s.server))
        .load(Role::Server)
        .unwrap();
    let addr = serve(&stls).await;
    let ctls = args(&s.ca_file, None).load(Role::Client).unwrap();
    call(&addr, &ctls).await.unwrap();
    let plain = serve(&Tls::plain()).await;
    call(&plain, &Tls::plain()).await.unwrap();
}

#[tokio::test]
async fn plaintext_client_to_a_tls_port_says_so() {
    let s = setup();
    let addr = serve(
        &args(&s.ca_file, Some(&s.server))
            .load(Role::Server)
            .unwrap(),
    )
    .await;
    let e = call(&addr, &Tls::plain()).await.unwrap_err();
    assert!(
        e.contains("speaks TLS and this process connects in plaintext"),
        "{e}"
    );
    assert!(e.contains("--tls-ca"), "{e}");
}

#[tokio::test]
async fn tls_client_to_a_plaintext_port_says_so() {
    let s = setup();
    let addr = serve(&Tls::plain()).await;
    let e = call(&addr, &args(&s.ca_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.contains("did not answer in TLS")
            || e.contains("closed the connection during the handshake"),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_ca_says_so() {
    let s = setup();
    let addr = serve(
        &args(&s.ca_file, Some(&s.server))
            .load(Role::Server)
            .unwrap(),
    )
    .await;
    let other = Ca::new("other CA").unwrap();
    let other_file = s.f.ca(&other, "other.crt");
    let e = call(&addr, &args(&other_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("wrong CA"), "{e}");
}

#[tokio::test]
async fn expired_certificate_says_so() {
    let s = setup();
    let old = s.f.pair(&s.ca, "old", &["127.0.0.1"], Validity::Expired, 2);
    let addr = serve(&args(&s.ca_file, Some(&old)).load(Role::Server).unwrap()).await;
    let e = call(&addr, &args(&s.ca_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("has expired"), "{e}");
}

#[tokio::test]
async fn not_yet_valid_certificate_says_so() {
    let s = setup();
    let young =
        s.f.pair(&s.ca, "young", &["127.0.0.1"], Validity::NotYetValid, 3);
    let addr = serve(&args(&s.ca_file, Some(&young)).load(Role::Server).unwrap()).await;
    let e = call(&addr, &args(&s.ca_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("is not valid yet"), "{e}");
}

#[tokio::test]
async fn wrong_server_name_says_so_and_the_override_fixes_it() {
    let s = setup();
    let named = s.f.pair(
        &s.ca,
        "named",
        &["alces-master.example"],
        Validity::Current,
        4,
    );
    let addr = serve(&args(&s.ca_file, Some(&named)).load(Role::Server).unwrap()).await;
    let e = call(&addr, &args(&s.ca_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("not valid for the name '127.0.0.1'"), "{e}");
    assert!(e.contains("--tls-server-name"), "{e}");
    let mut a = args(&s.ca_file, None);
    a.tls_server_name = Some("alces-master.example".into());
    call(&addr, &a.load(Role::Client).unwrap()).await.unwrap();
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_certificate() {
    let s = setup();
    let mut sa = args(&s.ca_file, Some(&s.server));
    sa.tls_client_auth = true;
    let addr = serve(&sa.load(Role::Server).unwrap()).await;
    let e = call(&addr, &args(&s.ca_file, None).load(Role::Client).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("requires a client certificate"), "{e}");
    // A client certificate from another CA is refused too.
    let other = Ca::new("other CA").unwrap();
    let stranger =
        s.f.pair(&other, "stranger", &["client"], Validity::Current, 5);
    let e = call(
        &addr,
        &args(&s.ca_file, Some(&stranger))
            .load(Role::Client)
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("client certificate") || e.contains("refused this process's certificate"),
        "{e}"
    );
    // One signed by the server's CA gets in.
    let client = s.f.pair(&s.ca, "client", &["client"], Validity::Current, 6);
    call(
        &addr,
        &args(&s.ca_file, Some(&client)).load(Role::Client).unwrap(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn rotated_files_serve_the_new_certificate_and_a_broken_one_keeps_the_old() {
    let s = setup();
    let stls = args(&s.ca_file, Some(&s.server))
        .load(Role::Server)
        .unwrap();
    let addr = serve(&stls).await;
    let ctls = args(&s.ca_file, None).load(Role::Client).unwrap();
    let first = crate::net::peer_certificate(&addr, &ctls).await.unwrap();
    // A new pair, written over the old files (as cert-manager's swap does).
    let names = vec!["127.0.0.1".to_string()];
    let p = s.ca.issue(&names, Validity::Current, 77).unwrap();
    write_file(&s.server.0, p.cert_pem.as_bytes(), 0o644).unwrap();
    write_file(&s.server.1, p.key_pem.as_bytes(), 0o600).unwrap();
    let second = crate::net::peer_certificate(&addr, &ctls).await.unwrap();
    assert_ne!(first, second);
    let want = CertificateDer::from_pem_slice(p.cert_pem.as_bytes()).unwrap();
    assert_eq!(second, want);
    // A half-written certificate: the server keeps the previous pair.
    write_file(&s.server.0, &p.cert_pem.as_bytes()[..100], 0o644).unwrap();
    let third = crate::net::peer_certificate(&addr, &ctls).await.unwrap();
    assert_eq!(third, want);
    // A new CA bundle is read too: a client trusting only a new CA, and a
    // server whose files now hold that CA's pair, connect.
    let ca2 = Ca::new("next CA").unwrap();
    let p2 = ca2.issue(&names, Validity::Current, 78).unwrap();
    write_file(&s.server.0, p2.cert_pem.as_bytes(), 0o644).unwrap();
    write_file(&s.server.1, p2.key_pem.as_bytes(), 0o600).unwrap();
    let ca2_file = s.f.ca(&ca2, "ca2.crt");
    let c2 = args(&ca2_file, None).load(Role::Client).unwrap();
    call(&addr, &c2).await.unwrap();
}

#[test]
fn bad_flags_and_files_are_named() {
    let s = setup();
    let e = TlsArgs {
        tls_cert: Some(s.server.0.clone()),
        ..TlsArgs::default()
    }
    .load(Role::Client)
    .unwrap_err()
    .to_string();
    assert!(e.contains("without --tls-ca"), "{e}");
    let mut a = args(&s.ca_file, None);
    a.tls_cert = Some(s.server.0.clone());
    let e = a.load(Role::Client).unwrap_err().to_string();
    assert!(e.contains("--tls-cert given without --tls-key"), "{e}");
    let e = args(&s.ca_file, None)
        .load(Role::Server)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no certificate"), "{e}");
    // A key others can read.
    std::fs::set_permissions(
        &s.server.1,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let e = format!(
        "{:#}",
        args(&s.ca_file, Some(&s.server))
            .load(Role::Server)
            .unwrap_err()
    );
    assert!(e.contains("chmod 600"), "{e}");
    // A CA file that is not PEM.
    let junk = s.f.path("junk.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = args(&junk, None)
        .load(Role::Client)
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no certificate"), "{e}");
    // A certificate and a key that do not belong together.
    std::fs::set_permissions(
        &s.server.1,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let other = s.f.pair(&s.ca, "other", &["x"], Validity::Current, 9);
    let e = args(&s.ca_file, Some(&(s.server.0.clone(), other.1)))
        .load(Role::Server)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong to the key"), "{e}");
    // A bad server name.
    let mut a = args(&s.ca_file, None);
    a.tls_server_name = Some("not a name!".into());
    assert!(a
        .load(Role::Client)
        .unwrap_err()
        .to_string()
        .contains("--tls-server-name"));
}

#[test]
fn flags_round_trip() {
    let a = TlsArgs {
        tls_cert: Some("/c".into()),
        tls_key: Some("/k".into()),
        tls_ca: Some("/ca".into()),
        tls_client_auth: true,
        tls_server_name: Some("n".into()),
    };
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        t: TlsArgs,
    }
    let mut argv: Vec<std::ffi::OsString> = vec!["x".into()];
    argv.extend(a.to_flags());
    let p = <P as clap::Parser>::parse_from(argv);
    assert_eq!(format!("{:?}", p.t), format!("{a:?}"));
}
