use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use alces_proto::tls::certgen::{Ca, Validity};

use super::*;

fn spec(y: &str) -> TlsSpec {
    serde_saphyr::from_str(y).expect("tls spec")
}

fn secret(ca: &Ca, names: &[&str]) -> BTreeMap<String, Vec<u8>> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let p = ca.issue(&names, Validity::Current, 7).expect("issue");
    BTreeMap::from([
        ("tls.crt".into(), p.cert_pem.into_bytes()),
        ("tls.key".into(), p.key_pem.into_bytes()),
        ("ca.crt".into(), ca.cert_pem().as_bytes().to_vec()),
    ])
}

fn text(r: Result<Material, Problem>) -> (Option<String>, String) {
    let p = r.expect_err("a problem");
    (p.key.clone(), p.to_string())
}

#[test]
fn a_cert_manager_secret_is_accepted_and_loaded_as_a_client() {
    let ca = Ca::new("test CA").unwrap();
    let data = secret(&ca, &["demo-master.store.svc"]);
    let s = spec("secretName: demo-tls\n");
    let m = check("store", &s, &data, None).expect("good secret");
    assert_eq!(m.cert, data["tls.crt"]);
    let dir = tempfile::tempdir().unwrap();
    let d = cluster_dir(dir.path(), "store", "demo");
    let tls = client(&d, &s, &m, "store/demo-tls").expect("loads");
    assert!(tls.is_on());
    assert!(tls.has_client_cert());
    let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("tls.key"), 0o600);
    assert_eq!(
        std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Written again with the same content: still loads (a renewal).
    client(&d, &s, &m, "store/demo-tls").expect("loads again");
}

#[test]
fn a_client_secret_replaces_the_pair_the_operator_presents() {
    let ca = Ca::new("test CA").unwrap();
    let server = secret(&ca, &["demo-master.store.svc"]);
    let mut cl = secret(&ca, &["alces-operator"]);
    cl.remove("ca.crt");
    let s = spec("secretName: demo-tls\nclientSecretName: operator-tls\n");
    let m = check("store", &s, &server, Some(&cl)).expect("good");
    assert_eq!(m.cert, cl["tls.crt"]);
    assert_eq!(m.ca, server["ca.crt"]);
    // The fingerprint follows the files and the settings.
    let m2 = check("store", &s, &server, None).expect("good");
    assert_ne!(m.fingerprint(&s), m2.fingerprint(&s));
    let s2 = spec("secretName: demo-tls\nclientSecretName: operator-tls\nclientAuth: false\n");
    assert_ne!(m.fingerprint(&s), m.fingerprint(&s2));
    // A bad client Secret is named as such.
    cl.insert("tls.key".into(), b"nonsense".to_vec());
    let (key, msg) = text(check("store", &s, &server, Some(&cl)));
    assert_eq!(key.as_deref(), Some("tls.key"));
    assert!(msg.contains("store/operator-tls"), "{msg}");
}

#[test]
fn every_bad_secret_names_the_secret_and_the_key() {
    let ca = Ca::new("test CA").unwrap();
    let good = secret(&ca, &["x"]);
    let s = spec("secretName: demo-tls\n");
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        let mut d = good.clone();
        d.remove(k);
        let (key, msg) = text(check("store", &s, &d, None));
        assert_eq!(key.as_deref(), Some(k), "{msg}");
        assert!(
            msg.contains("Secret store/demo-tls") && msg.contains("missing"),
            "{msg}"
        );
        d.insert(k.into(), b" \n".to_vec());
        let (key, msg) = text(check("store", &s, &d, None));
        assert_eq!(key.as_deref(), Some(k));
        assert!(msg.contains("empty"), "{msg}");
    }
    let (_, msg) = text(check("store", &s, &BTreeMap::new(), None));
    assert!(msg.contains("keys present: none"), "{msg}");
    // Not PEM, truncated PEM, binary bytes, a key where a certificate goes.
    let cert = String::from_utf8(good["tls.crt"].clone()).unwrap();
    let truncated = cert[..cert.len() / 2].to_string();
    for (k, bad) in [
        ("tls.crt", b"hello".to_vec()),
        ("tls.crt", truncated.clone().into_bytes()),
        ("ca.crt", vec![0xff, 0x00, 0x13, 0x37]),
        ("ca.crt", good["tls.key"].clone()),
        ("tls.key", good["tls.crt"].clone()),
        (
            "tls.key",
            b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n".to_vec(),
        ),
    ] {
        let mut d = good.clone();
        d.insert(k.into(), bad);
        let (key, msg) = text(check("store", &s, &d, None));
        assert_eq!(key.as_deref(), Some(k), "{msg}");
        assert!(msg.starts_with("Secret store/demo-tls key"), "{msg}");
    }
    // A certificate and a key of two different pairs: found when loaded.
    let other = secret(&ca, &["y"]);
    let mut d = good.clone();
    d.insert("tls.key".into(), other["tls.key"].clone());
    let m = check("store", &s, &d, None).expect("each parses on its own");
    let dir = tempfile::tempdir().unwrap();
    let p = client(dir.path(), &s, &m, "store/demo-tls").expect_err("mismatch");
    assert_eq!(p.key.as_deref(), Some("tls.crt"));
    assert!(p.to_string().contains("does not belong"), "{p}");
}

#[test]
fn an_unwritable_tls_dir_says_what_to_give() {
    let ca = Ca::new("test CA").unwrap();
    let s = spec("secretName: demo-tls\n");
    let m = check("store", &s, &secret(&ca, &["x"]), None).unwrap();
    let f = tempfile::NamedTempFile::new().unwrap();
    // A file where the folder should be.
    let p = client(&f.path().join("sub"), &s, &m, "store/demo-tls").expect_err("not a folder");
    assert!(p.to_string().contains("--tls-dir"), "{p}");
}
