//! Throwaway certificates (rcgen): a CA and certificates it signs, for
//! `alces local up --tls` and for tests. Not for production clusters, whose
//! certificates come from their own CA (cert-manager, an internal PKI).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From last year to two years from now.
    Current,
    /// Ended years ago.
    Expired,
    /// Starts decades from now.
    NotYetValid,
}

fn this_year() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn set_validity(p: &mut CertificateParams, v: Validity) {
    let y = this_year();
    let (from, to) = match v {
        Validity::Current => (y - 1, y + 2),
        Validity::Expired => (y - 5, y - 4),
        Validity::NotYetValid => (y + 20, y + 21),
    };
    p.not_before = date_time_ymd(from, 1, 1);
    p.not_after = date_time_ymd(to, 1, 1);
}

/// A certificate authority made on the spot.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

impl Ca {
    /// A new CA named `name`, valid from last year to two years from now.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { params, key, pem })
    }

    /// The CA certificate, in PEM (what `--tls-ca` is given).
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for `names` (DNS names or IP addresses) with serial
    /// `serial`, usable by servers and clients, signed by this CA.
    pub fn issue(&self, names: &[String], validity: Validity, serial: u64) -> anyhow::Result<Pair> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("alces"),
        );
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Pair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes a certificate for `names` as `<dir>/<stem>.crt` and its key as
    /// `<dir>/<stem>.key` (mode 0600); returns both paths.
    pub fn write_pair(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        serial: u64,
    ) -> anyhow::Result<(PathBuf, PathBuf)> {
        let p = self.issue(names, Validity::Current, serial)?;
        let (c, k) = (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        );
        write_file(&c, p.cert_pem.as_bytes(), 0o644)?;
        write_file(&k, p.key_pem.as_bytes(), 0o600)?;
        Ok((c, k))
    }
}

/// Writes `bytes` to `path` (replaced whole) with `mode`.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// The names of this machine a local cluster is reached by: `localhost`,
/// `127.0.0.1`, `::1` and the host name.
pub fn local_names() -> Vec<String> {
    let mut v = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            v.push(h.to_string());
        }
    }
    v
}
