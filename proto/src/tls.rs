//! TLS (rustls, ring) on every gRPC connection.
//!
//! Every binary takes the same flags ([`TlsArgs`]) and turns them into one
//! [`Tls`], which the two builders of [`crate::net`] use: [`crate::net::incoming`]
//! for listeners and [`crate::net::channel`] (through
//! [`crate::auth::ClientAuth::with_tls`]) for clients. No flag means plaintext
//! everywhere; with TLS on, a server presents `--tls-cert`, every peer is
//! verified against `--tls-ca`, and `--tls-client-auth` makes a server refuse
//! a client without a certificate signed by that CA (mutual TLS).
//!
//! Certificates, keys and the CA bundle are read again when their files change
//! (cert-manager rotates them in place): every handshake compares the files'
//! device, inode, size and modification time with the ones last loaded, and
//! loads them again when they differ. A file that does not parse (a half-written
//! one, or a certificate that does not match its key) is reported with a
//! warning naming it, and the previous pair stays in use until the files change
//! again.
//!
//! Handshake failures are turned into messages that say which failure it was and
//! what to do ([`explain`]).

use std::ffi::OsString;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore,
    SignatureScheme,
};

/// TLS flags, identical on every Alces binary.
///
/// Without any of them, connections are plaintext. A server (master,
/// metalogger, chunkserver) with TLS needs all of `--tls-cert`, `--tls-key`
/// and `--tls-ca`; a client only (mount, CLI, CSI driver, operator) needs
/// `--tls-ca`, and `--tls-cert`/`--tls-key` when the servers ask for client
/// certificates.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate (chain) this process presents: as a server to its
    /// clients, as a client to servers that ask for one (--tls-client-auth).
    /// Needs the "server auth" and, for mutual TLS, the "client auth" usages.
    /// Read again when the file changes.
    #[arg(long, env = "ALCES_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1). Must be readable
    /// by its owner only (chmod 600). Read again when the file changes.
    #[arg(long, env = "ALCES_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CA certificates that sign the peers' certificates;
    /// turns TLS on for every connection this process makes or accepts. Read
    /// again when the file changes.
    #[arg(long, env = "ALCES_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: as a server, refuse in the handshake every client that does
    /// not present a certificate signed by --tls-ca.
    #[arg(long, env = "ALCES_TLS_CLIENT_AUTH")]
    pub tls_client_auth: bool,

    /// Name to verify in every server certificate, instead of the host part of
    /// the address connected to (for a certificate shared by every server, or
    /// servers reached by IP address).
    #[arg(long, env = "ALCES_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// What a process does with TLS: whether it must also serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Listens (and connects): needs its own certificate.
    Server,
    /// Only connects: needs the CA, a certificate only for mutual TLS.
    Client,
}

impl TlsArgs {
    /// True when any TLS flag is set.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_ca.is_some()
            || self.tls_client_auth
            || self.tls_server_name.is_some()
    }

    /// Loads the files and builds the TLS settings of a process with `role`,
    /// or says which flag is missing or which file is wrong.
    pub fn load(&self, role: Role) -> anyhow::Result<Tls> {
        if !self.enabled() {
            return Ok(Tls::plain());
        }
        let Some(ca) = &self.tls_ca else {
            anyhow::bail!(
                "TLS flags given without --tls-ca: give the CA bundle that signs the peers' certificates (--tls-ca FILE or ALCES_TLS_CA)"
            );
        };
        let pair = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) if role == Role::Server => anyhow::bail!(
                "TLS is on (--tls-ca) but this server has no certificate: give --tls-cert FILE and --tls-key FILE"
            ),
            (None, None) => None,
            (Some(_), None) => {
                anyhow::bail!("--tls-cert given without --tls-key: give the certificate's private key")
            }
            (None, Some(_)) => {
                anyhow::bail!("--tls-key given without --tls-cert: give the key's certificate")
            }
        };
        let name = match &self.tls_server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|_| {
                anyhow::anyhow!("--tls-server-name '{n}' is not a DNS name or an IP address")
            })?),
            None => None,
        };
        Tls::build(ca, pair.as_ref(), self.tls_client_auth, name, role)
    }

    /// The flags again, to hand to a child process (a deposed master's
    /// metalogger, a mount started by the CSI driver).
    pub fn to_flags(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        let mut path = |flag: &str, p: &Option<PathBuf>| {
            if let Some(p) = p {
                v.push(flag.into());
                v.push(p.clone().into());
            }
        };
        path("--tls-cert", &self.tls_cert);
        path("--tls-key", &self.tls_key);
        path("--tls-ca", &self.tls_ca);
        if self.tls_client_auth {
            v.push("--tls-client-auth".into());
        }
        if let Some(n) = &self.tls_server_name {
            v.push("--tls-server-name".into());
            v.push(n.into());
        }
        v
    }
}

/// The TLS settings of a process: plaintext ([`Tls::plain`], the default) or a
/// client configuration and, for servers, a server one. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tls {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    client: Arc<rustls::ClientConfig>,
    server: Option<Arc<rustls::ServerConfig>>,
    server_name: Option<ServerName<'static>>,
    client_cert: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            None => f.write_str("Tls(plain)"),
            Some(i) => f
                .debug_struct("Tls")
                .field("server", &i.server.is_some())
                .field("client_cert", &i.client_cert)
                .field("server_name", &i.server_name)
                .finish(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    // ring, not aws-lc (which needs cmake to build); the post-quantum key
    // exchange it lacks is what the deprecation is about.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

const ALPN_H2: &[u8] = b"h2";

impl Tls {
    /// No TLS: plaintext connections.
    pub fn plain() -> Self {
        Self { inner: None }
    }

    /// True when connections use TLS.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// TLS settings from files: `ca` verifies peers, `pair` (certificate, key)
    /// is presented, `client_auth` asks clients for a certificate.
    pub fn build(
        ca: &Path,
        pair: Option<&(PathBuf, PathBuf)>,
        client_auth: bool,
        server_name: Option<ServerName<'static>>,
        role: Role,
    ) -> anyhow::Result<Self> {
        let p = provider();
        let roots = Arc::new(Reloading::new(
            "CA bundle",
            vec![ca.to_path_buf()],
            Box::new(load_roots),
        )?);
        let key = match pair {
            Some((c, k)) => {
                let pp = p.clone();
                Some(Arc::new(Reloading::new(
                    "certificate and key",
                    vec![c.clone(), k.clone()],
                    Box::new(move |f: &[PathBuf]| load_certified_key(&f[0], &f[1], &pp)),
                )?))
            }
            None => None,
        };
        let verifier = Arc::new(PeerVerifier {
            roots: roots.clone(),
            provider: p.clone(),
        });
        let client = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut client = match &key {
            Some(k) => client.with_client_cert_resolver(Arc::new(KeyResolver(k.clone()))),
            None => client.with_no_client_auth(),
        };
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        // Every connection is a full handshake, so a rotated certificate or CA
        // bundle is checked on the next connection (connections are
        // long-lived: resumption would save little).
        client.resumption = rustls::client::Resumption::disabled();
        let server = match (&key, role) {
            (Some(k), Role::Server) => {
                let b = rustls::ServerConfig::builder_with_provider(p.clone())
                    .with_safe_default_protocol_versions()?;
                let b = if client_auth {
                    b.with_client_cert_verifier(Arc::new(ClientVerifier(verifier.clone())))
                } else {
                    b.with_no_client_auth()
                };
                let mut s = b.with_cert_resolver(Arc::new(KeyResolver(k.clone())));
                s.alpn_protocols = vec![ALPN_H2.to_vec()];
                Some(Arc::new(s))
            }
            _ => None,
        };
        Ok(Self {
            inner: Some(Arc::new(Inner {
                client: Arc::new(client),
                server,
                server_name,
                client_cert: key.is_some(),
            })),
        })
    }

    /// The client configuration, if TLS is on.
    pub fn client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner.as_ref().map(|i| i.client.clone())
    }

    /// The server configuration, if TLS is on and this process has a certificate.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner.as_ref().and_then(|i| i.server.clone())
    }

    /// True when this process presents a client certificate.
    pub fn has_client_cert(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.client_cert)
    }

    /// The name to verify in the certificate of the server at `host`.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = self.inner.as_ref().and_then(|i| i.server_name.clone()) {
            return Ok(n);
        }
        let h = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(h.to_string()).map_err(|_| {
            format!("'{h}' is not a name TLS can verify: connect by DNS name or IP address, or give --tls-server-name")
        })
    }
}

/// Reads a PEM CA bundle.
fn load_roots(files: &[PathBuf]) -> anyhow::Result<Arc<RootCertStore>> {
    let f = &files[0];
    let certs = read_certs(f, "CA bundle (--tls-ca)")?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| {
            anyhow::anyhow!(
                "the CA bundle (--tls-ca) {} holds a certificate that is not a valid CA: {e}",
                f.display()
            )
        })?;
    }
    Ok(Arc::new(roots))
}

fn read_certs(f: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(f)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", f.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "the {what} {} is not PEM certificates: {e}; give a file with -----BEGIN CERTIFICATE----- blocks",
                f.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the {what} {} holds no certificate; give a file with -----BEGIN CERTIFICATE----- blocks",
            f.display()
        );
    }
    Ok(certs)
}

/// Reads a certificate chain and its key, and checks that they belong together.
fn load_certified_key(
    cert: &Path,
    key: &Path,
    p: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = read_certs(cert, "certificate (--tls-cert)")?;
    crate::auth::check_private_file(key, "TLS private key (--tls-key)")?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow::anyhow!(
            "the TLS private key (--tls-key) {} is not a PEM private key: {e}",
            key.display()
        )
    })?;
    let signing = p.key_provider.load_private_key(der).map_err(|e| {
        anyhow::anyhow!(
            "the TLS private key (--tls-key) {} cannot be used: {e}",
            key.display()
        )
    })?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| {
        anyhow::anyhow!(
            "the certificate {} does not belong to the key {} ({e}); give the key the certificate was issued for",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

type Stamp = Vec<Option<(u64, u64, i64, i64, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
        })
        .collect()
}

type Loader<T> = Box<dyn Fn(&[PathBuf]) -> anyhow::Result<T> + Send + Sync>;

/// A value loaded from files and loaded again when they change.
struct Reloading<T> {
    what: &'static str,
    files: Vec<PathBuf>,
    load: Loader<T>,
    state: Mutex<(Stamp, T)>,
}

impl<T: Clone> Reloading<T> {
    fn new(what: &'static str, files: Vec<PathBuf>, load: Loader<T>) -> anyhow::Result<Self> {
        let s = stamp(&files);
        let v = load(&files)?;
        Ok(Self {
            what,
            files,
            load,
            state: Mutex::new((s, v)),
        })
    }

    /// The value, loaded again first if a file changed since the last look.
    fn current(&self) -> T {
        let now = stamp(&self.files);
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now != g.0 {
            g.0 = now;
            let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
            match (self.load)(&self.files) {
                Ok(v) => {
                    g.1 = v;
                    tracing::info!(files = ?files, "TLS {} reloaded", self.what);
                }
                Err(e) => tracing::warn!(
                    files = ?files,
                    "TLS {} changed but cannot be loaded, still using the previous one until the files change again: {e:#}",
                    self.what
                ),
            }
        }
        g.1.clone()
    }
}

/// Presents the current certificate and key, as a server and as a client.
struct KeyResolver(Arc<Reloading<Arc<CertifiedKey>>>);

impl fmt::Debug for KeyResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyResolver({:?})", self.0.files)
    }
}

impl ResolvesServerCert for KeyResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl ResolvesClientCert for KeyResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Verifies peers against the current CA bundle.
struct PeerVerifier {
    roots: Arc<Reloading<Arc<RootCertStore>>>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerVerifier({:?})", self.roots.files)
    }
}

impl PeerVerifier {
    fn server(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        WebPkiServerVerifier::builder_with_provider(self.roots.current(), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("CA bundle: {e}")))
    }

    fn client(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        WebPkiClientVerifier::builder_with_provider(self.roots.current(), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("CA bundle: {e}")))
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.server()?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// Verifies client certificates (mutual TLS) against the current CA bundle.
struct ClientVerifier(Arc<PeerVerifier>);

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientVerifier({:?})", self.0.roots.files)
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The bundle can change under a running server: no hints (they are
        // optional), every client sends its one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .client()?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// Which side of a connection explains a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This process connected to `peer`.
    Client,
    /// `peer` connected to this process.
    Server,
}

/// Says what a TLS failure with `peer` means and what to do about it.
pub fn explain(e: &rustls::Error, peer: &str, side: Side, name: &str) -> String {
    use rustls::Error as E;
    let whose = match side {
        Side::Client => format!("the certificate of the server {peer}"),
        Side::Server => format!("the client certificate of {peer}"),
    };
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS: {whose} is not signed by a CA of this process's --tls-ca bundle (wrong CA): give --tls-ca the CA that signed it"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "TLS: {whose} has expired ({c}): renew it and put the new one in its --tls-cert file"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                format!(
                    "TLS: {whose} is not valid yet ({c}): check the clocks of both machines, or wait until it starts"
                )
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "TLS: {whose} is not valid for the name '{name}' ({c}): add that name to the certificate's subject alternative names, or give --tls-server-name with a name it holds"
                )
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                format!(
                    "TLS: {whose} is not issued for this use ({c}): issue it with the \"server auth\" and \"client auth\" usages"
                )
            }
            other => format!("TLS: {whose} was refused: {other}"),
        },
        E::NoCertificatesPresented => format!(
            "TLS: the client {peer} presented no certificate, and this server requires one (--tls-client-auth): give the client --tls-cert and --tls-key"
        ),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => match side {
            Side::Client => format!(
                "TLS: {peer} did not answer in TLS (a plaintext port?): turn TLS on at that server, or connect without the --tls-* flags"
            ),
            Side::Server => format!(
                "TLS: {peer} did not speak TLS (a plaintext client?) to this TLS port: give the client --tls-ca (and --tls-cert/--tls-key for mutual TLS)"
            ),
        },
        E::AlertReceived(a) => match (a, side) {
            (AlertDescription::CertificateRequired, _)
            | (AlertDescription::HandshakeFailure, Side::Client) => format!(
                "TLS: {peer} requires a client certificate (mutual TLS) and this process presented none that it accepts: give --tls-cert and --tls-key signed by its CA"
            ),
            (AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError, _) => format!(
                "TLS: {peer} refused this process's certificate ({a:?}): it does not trust the CA that signed it; sign it with the CA in that peer's --tls-ca"
            ),
            (AlertDescription::CertificateExpired, _) => format!(
                "TLS: {peer} refused this process's certificate: it has expired (or is not valid yet); renew it"
            ),
            _ => format!("TLS: {peer} ended the handshake with the alert {a:?}"),
        },
        other => format!("TLS with {peer} failed: {other}"),
    }
}

/// The rustls error inside an I/O error from a TLS stream, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

#[cfg(any(test, feature = "certgen"))]
pub mod certgen;

#[cfg(test)]
mod tests;
