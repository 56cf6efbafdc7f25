//! A cluster's TLS material (`spec.tls`): the checks of its Secrets before
//! anything is mounted from them, and the operator's own client settings for
//! that cluster.
//!
//! The operator manages many clusters, each with its own CA, so it cannot
//! mount their Secrets (a pod's volumes are fixed when it starts, and the
//! Secrets live in the clusters' namespaces): it reads them through the API
//! (it already reads the cluster secret that way), checks them, and writes
//! the PEM files it presents and verifies with into a directory of its own
//! (`--tls-dir`, one folder per cluster, key 0600), which
//! [`alces_proto::tls`] loads like any daemon's files. A Secret whose content
//! changes (cert-manager renews it) is written again and a new client is
//! built; the pods' own mounts are swapped by the kubelet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use alces_proto::tls::{Role, Tls, TlsArgs};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::crd::TlsSpec;

/// The PEM files of one cluster, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// CA bundle (`ca.crt` of `secretName`).
    pub ca: Vec<u8>,
    /// The certificate the operator presents (`tls.crt` of
    /// `clientSecretName`, else of `secretName`).
    pub cert: Vec<u8>,
    /// Its private key.
    pub key: Vec<u8>,
}

impl Material {
    /// A fingerprint of the files and of the settings: a change means a new
    /// client.
    pub fn fingerprint(&self, spec: &TlsSpec) -> String {
        let mut all = Vec::new();
        for part in [&self.ca, &self.cert, &self.key] {
            all.extend_from_slice(&(part.len() as u64).to_le_bytes());
            all.extend_from_slice(part);
        }
        all.extend_from_slice(format!("{spec:?}").as_bytes());
        crate::builders::hash(&all)
    }
}

/// What is wrong with one key of one Secret, or with the Secret as a whole
/// (`key` None): the condition's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// The key at fault.
    pub key: Option<String>,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "Secret {} key '{k}': {}", self.secret, self.message),
            None => write!(f, "Secret {}: {}", self.secret, self.message),
        }
    }
}

fn problem(secret: &str, key: Option<&str>, message: impl Into<String>) -> Problem {
    Problem {
        secret: secret.into(),
        key: key.map(str::to_string),
        message: message.into(),
    }
}

/// The value of `key`, or the problem of its absence.
fn value<'a>(
    secret: &str,
    data: &'a BTreeMap<String, Vec<u8>>,
    key: &str,
) -> Result<&'a [u8], Problem> {
    match data.get(key) {
        None => Err(problem(
            secret,
            Some(key),
            format!(
                "missing; a TLS Secret holds tls.crt, tls.key and ca.crt (keys present: {})",
                if data.is_empty() {
                    "none".to_string()
                } else {
                    data.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
        )),
        Some(v) if v.iter().all(u8::is_ascii_whitespace) => {
            Err(problem(secret, Some(key), "is empty; put the PEM there"))
        }
        Some(v) => Ok(v),
    }
}

/// Checks that `key` of `secret` holds PEM certificates (at least one).
fn certs(secret: &str, key: &str, pem: &[u8]) -> Result<usize, Problem> {
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(pem) {
        c.map_err(|e| {
            problem(
                secret,
                Some(key),
                format!(
                    "is not a PEM certificate ({e}); give '-----BEGIN CERTIFICATE-----' blocks"
                ),
            )
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(problem(
            secret,
            Some(key),
            "holds no PEM certificate; give '-----BEGIN CERTIFICATE-----' blocks",
        ));
    }
    Ok(n)
}

fn private_key(secret: &str, key: &str, pem: &[u8]) -> Result<(), Problem> {
    PrivateKeyDer::from_pem_slice(pem).map(|_| ()).map_err(|e| {
        problem(
            secret,
            Some(key),
            format!("is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })
}

/// The PEM values of one checked Secret.
#[derive(Debug, Clone)]
pub struct Pair {
    /// `tls.crt`.
    pub cert: Vec<u8>,
    /// `tls.key`.
    pub key: Vec<u8>,
    /// `ca.crt`, when present.
    pub ca: Option<Vec<u8>>,
}

/// Checks a Secret with `tls.crt`, `tls.key` and (when `need_ca`) `ca.crt`.
pub fn check_pair(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    need_ca: bool,
) -> Result<Pair, Problem> {
    let cert = value(secret, data, "tls.crt")?;
    certs(secret, "tls.crt", cert)?;
    let key = value(secret, data, "tls.key")?;
    private_key(secret, "tls.key", key)?;
    let ca = if need_ca {
        let ca = value(secret, data, "ca.crt")?;
        certs(secret, "ca.crt", ca)?;
        Some(ca.to_vec())
    } else {
        match data.get("ca.crt") {
            Some(ca) if !ca.iter().all(u8::is_ascii_whitespace) => {
                certs(secret, "ca.crt", ca)?;
                Some(ca.to_vec())
            }
            _ => None,
        }
    };
    Ok(Pair {
        cert: cert.to_vec(),
        key: key.to_vec(),
        ca,
    })
}

/// Checks the Secrets of `spec` (`server`: the data of `secretName`;
/// `client`: of `clientSecretName`, when given) and returns what the
/// operator uses. `ns` names them in problems.
pub fn check(
    ns: &str,
    spec: &TlsSpec,
    server: &BTreeMap<String, Vec<u8>>,
    client: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<Material, Problem> {
    let sname = format!("{ns}/{}", spec.secret_name);
    let server = check_pair(&sname, server, true)?;
    let ca = server.ca.unwrap_or_default();
    let (cert, key) = match (client, &spec.client_secret_name) {
        (Some(data), Some(n)) => {
            let p = check_pair(&format!("{ns}/{n}"), data, false)?;
            (p.cert, p.key)
        }
        _ => (server.cert, server.key),
    };
    Ok(Material { ca, cert, key })
}

/// Writes `m` into `dir` (created 0700; the key 0600) and loads it as the
/// client settings of the operator's calls to one cluster. A certificate
/// that does not belong to its key is a problem of `secret`'s `tls.crt`.
pub fn client(dir: &Path, spec: &TlsSpec, m: &Material, secret: &str) -> Result<Tls, Problem> {
    let io = |e: anyhow::Error| {
        problem(
            secret,
            None,
            format!(
                "cannot write its files to the operator's --tls-dir {} ({e}); give the operator a writable --tls-dir (an emptyDir)",
                dir.display()
            ),
        )
    };
    make_dir(dir).map_err(io)?;
    let files: [(&str, &[u8], u32); 3] = [
        ("ca.crt", &m.ca, 0o644),
        ("tls.crt", &m.cert, 0o644),
        ("tls.key", &m.key, 0o600),
    ];
    for (name, bytes, mode) in files {
        write_file(&dir.join(name), bytes, mode).map_err(io)?;
    }
    let args = TlsArgs {
        tls_ca: Some(dir.join("ca.crt")),
        tls_cert: Some(dir.join("tls.crt")),
        tls_key: Some(dir.join("tls.key")),
        tls_client_auth: false,
        tls_server_name: spec.server_name.clone(),
    };
    args.load(Role::Client).map_err(|e| {
        problem(
            secret,
            Some("tls.crt"),
            format!("{e}; the certificate and tls.key must be one pair"),
        )
    })
}

/// Replaces `path` whole with `bytes` at `mode` (a new file renamed over
/// the old one, so a handshake never reads half of it).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn make_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    Ok(())
}

/// The folder of cluster `ns/name` under `--tls-dir`.
pub fn cluster_dir(root: &Path, ns: &str, name: &str) -> PathBuf {
    root.join(ns).join(name)
}

#[cfg(test)]
mod tests;
