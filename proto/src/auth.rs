//! The cluster secret and the protocol version check, on both sides of every call.
//!
//! Every peer (chunkserver, metalogger, mount, CLI, operator) presents the cluster
//! secret as `authorization: Bearer <secret>` and its protocol version as
//! `x-alces-protocol`. Servers install [`ServerAuth`] as a tonic interceptor;
//! clients install [`ClientAuth`].

use std::path::Path;
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::PROTOCOL_VERSION;

/// Metadata key of the protocol version.
pub const PROTOCOL_KEY: &str = "x-alces-protocol";

/// Environment variable holding the cluster secret itself.
pub const SECRET_ENV: &str = "ALCES_SECRET";

/// Loads the cluster secret: from `file` when given, else from `$ALCES_SECRET`.
///
/// Surrounding whitespace (a trailing newline in a file) is ignored. An empty
/// secret is an error: it would let anyone in, and so is a file that users
/// other than its owner can read ([`check_private_file`]).
pub fn load_secret(file: Option<&Path>) -> anyhow::Result<Arc<str>> {
    if let Some(p) = file {
        check_private_file(p, "cluster secret file")?;
    }
    let raw = match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the cluster secret file {}: {e}; pass a readable file with --secret-file or set {SECRET_ENV}",
                p.display()
            )
        })?,
        None => std::env::var(SECRET_ENV).map_err(|_| {
            anyhow::anyhow!(
                "no cluster secret: pass --secret-file FILE or set {SECRET_ENV} (every peer of a cluster must use the same secret)"
            )
        })?,
    };
    let s = raw.trim();
    if s.is_empty() {
        anyhow::bail!(
            "the cluster secret is empty; put a random string of at least 16 characters in it"
        );
    }
    if s.chars().any(|c| c.is_control() || c == ' ') {
        anyhow::bail!("the cluster secret contains spaces or control characters; use printable characters only");
    }
    Ok(Arc::from(s))
}

/// Refuses a file holding a secret (the cluster secret, a private key) that
/// users other than its owner can read, with an error naming the file (`what`
/// says which), its mode and the fix. A symbolic link is followed (a
/// Kubernetes Secret volume's files are links into its `..data` folder): the
/// target's mode counts.
///
/// One group-readable case is accepted, the one Kubernetes makes: a Secret
/// mounted in a pod with `fsGroup` is mode 0440 (whatever its `defaultMode`),
/// owned by root and by the pod's group; a file that only its owner and the
/// group this process runs as (its effective group) can read, and nobody can
/// write, is accepted.
pub fn check_private_file(path: &Path, what: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", path.display()))?;
    let mode = md.mode() & 0o7777;
    // SAFETY: getegid has no preconditions and cannot fail.
    let egid = unsafe { libc::getegid() };
    let others = mode & 0o077;
    let fs_group_secret = others == 0o040 && md.gid() == egid && mode & 0o200 == 0;
    if others != 0 && !fs_group_secret {
        let (who, bits) = if mode & 0o007 != 0 {
            ("every user", mode & 0o007)
        } else {
            ("its group", (mode >> 3) & 0o007)
        };
        let access = match (bits & 0o4 != 0, bits & 0o2 != 0) {
            (true, true) => "read and change",
            (true, false) => "read",
            (false, true) => "change",
            (false, false) => "execute",
        };
        anyhow::bail!(
            "the {what} {} has mode {mode:04o}: {who} can {access} it; make it readable by its owner only with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Constant-time comparison of two byte strings.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Environment variable holding a credential token (instead of the cluster secret).
pub const CREDENTIAL_ENV: &str = "ALCES_CREDENTIAL";

/// How every credential token starts: `alces-credential-<id>-<secret>`.
pub const CREDENTIAL_PREFIX: &str = "alces-credential-";

/// Who a call comes from, as [`ServerAuth`] found it; the interceptor puts it
/// in the request's extensions for the handlers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The cluster secret: the administrator and the cluster's own peers.
    Cluster,
    /// A credential the master issued, by id.
    Credential(u64),
}

impl Identity {
    /// The identity an interceptor found for `req` (the cluster's when no
    /// interceptor ran, as in in-process calls).
    pub fn of<T>(req: &Request<T>) -> Self {
        req.extensions()
            .get::<Identity>()
            .copied()
            .unwrap_or(Identity::Cluster)
    }
}

/// Checks credential tokens for a server that accepts them (the master).
pub trait CredentialCheck: Send + Sync {
    /// The id of the credential `token` (which starts with
    /// [`CREDENTIAL_PREFIX`]), or the status refusing it (unknown, wrong,
    /// revoked).
    fn check(&self, token: &str) -> Result<u64, Status>;
}

/// Takes a credential token's id without checking its secret: for
/// chunkservers, which cannot check it and instead require a
/// [`crate::access`] the master signed on every call made with one.
pub struct IdOnly;

impl CredentialCheck for IdOnly {
    fn check(&self, token: &str) -> Result<u64, Status> {
        parse_credential(token)
            .map(|(id, _)| id)
            .ok_or_else(|| Status::unauthenticated("malformed credential token"))
    }
}

/// Splits a credential token into its id and its secret part.
pub fn parse_credential(token: &str) -> Option<(u64, &str)> {
    let rest = token.strip_prefix(CREDENTIAL_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let id = id.parse().ok().filter(|&id| id != 0)?;
    (!secret.is_empty()).then_some((id, secret))
}

/// Loads what a client presents: the credential token from `credential_file`
/// or `$ALCES_CREDENTIAL` when either is given, else the cluster secret (see
/// [`load_secret`]). The file must be private like a secret file, and its
/// content must be a credential token (`alces credential issue` prints it).
pub fn load_client_token(
    credential_file: Option<&Path>,
    secret_file: Option<&Path>,
) -> anyhow::Result<Arc<str>> {
    let raw = match credential_file {
        Some(p) => {
            check_private_file(p, "credential file")?;
            Some(std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!("cannot read the credential file {}: {e}", p.display())
            })?)
        }
        None => std::env::var(CREDENTIAL_ENV).ok(),
    };
    let Some(raw) = raw else {
        return load_secret(secret_file);
    };
    let t = raw.trim();
    if parse_credential(t).is_none() || t.chars().any(|c| c.is_control() || c == ' ') {
        anyhow::bail!(
            "the credential is not a token `alces credential issue` printed (`{CREDENTIAL_PREFIX}<id>-<secret>`); check the credential file or {CREDENTIAL_ENV}"
        );
    }
    Ok(Arc::from(t))
}

/// Server-side interceptor: refuses calls without the cluster secret (or,
/// when it accepts credentials, a valid credential token) or with an unknown
/// protocol version.
#[derive(Clone)]
pub struct ServerAuth {
    secret: Arc<str>,
    credentials: Option<Arc<dyn CredentialCheck>>,
}

impl ServerAuth {
    /// Checks calls against `secret`.
    pub fn new(secret: Arc<str>) -> Self {
        Self {
            secret,
            credentials: None,
        }
    }

    /// Also accepts credential tokens, checked by `check` (only the services
    /// clients and administrators call: peers use the cluster secret).
    pub fn with_credentials(mut self, check: Arc<dyn CredentialCheck>) -> Self {
        self.credentials = Some(check);
        self
    }

    /// Checks the metadata of one request.
    pub fn check(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.identify(md).map(|_| ())
    }

    /// Checks the metadata of one request and says who sent it.
    pub fn identify(&self, md: &tonic::metadata::MetadataMap) -> Result<Identity, Status> {
        if let Some(v) = md.get(PROTOCOL_KEY) {
            let major: u32 = v
                .to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    Status::invalid_argument("malformed x-alces-protocol header: expected a number")
                })?;
            if major != PROTOCOL_VERSION {
                return Err(Status::failed_precondition(format!(
                    "protocol version {major} is not supported by this peer (it speaks {PROTOCOL_VERSION}); run the same Alces release on every node"
                )));
            }
        }
        let presented = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.strip_prefix("Bearer "));
        match presented {
            None => Err(Status::unauthenticated(
                "missing cluster secret: configure this peer with the cluster's --secret-file or ALCES_SECRET",
            )),
            Some(p) if ct_eq(p.as_bytes(), self.secret.as_bytes()) => Ok(Identity::Cluster),
            Some(p) if p.starts_with(CREDENTIAL_PREFIX) => match &self.credentials {
                Some(c) => c.check(p).map(Identity::Credential),
                None => Err(Status::unauthenticated(
                    "this service takes the cluster secret only, not a credential",
                )),
            },
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster secret: this peer's --secret-file / ALCES_SECRET differs from the cluster's",
            )),
        }
    }
}

impl Interceptor for ServerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let who = self.identify(req.metadata())?;
        req.extensions_mut().insert(who);
        Ok(req)
    }
}

/// Client-side interceptor: adds the cluster secret and the protocol version.
///
/// It also carries the TLS settings of the process ([`ClientAuth::with_tls`]),
/// so that every channel built from it ([`crate::net::channel`]) uses them.
#[derive(Clone)]
pub struct ClientAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
    tls: crate::tls::Tls,
}

impl ClientAuth {
    /// Presents `secret` on every call.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let header = format!("Bearer {secret}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the cluster secret must be printable ASCII"))?;
        Ok(Self {
            header,
            tls: crate::tls::Tls::plain(),
        })
    }

    /// The same credentials, connecting with `tls`.
    pub fn with_tls(mut self, tls: &crate::tls::Tls) -> Self {
        self.tls = tls.clone();
        self
    }

    /// The TLS settings channels built from these credentials use.
    pub fn tls(&self) -> &crate::tls::Tls {
        &self.tls
    }
}

impl Interceptor for ClientAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("authorization", self.header.clone());
        req.metadata_mut()
            .insert(PROTOCOL_KEY, MetadataValue::from(PROTOCOL_VERSION));
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_checks() {
        let server = ServerAuth::new(Arc::from("s3cret-s3cret-s3cret"));
        let mut client = ClientAuth::new("s3cret-s3cret-s3cret").unwrap();
        let req = client.call(Request::new(())).unwrap();
        assert!(server.check(req.metadata()).is_ok());

        let mut wrong = ClientAuth::new("other").unwrap();
        let req = wrong.call(Request::new(())).unwrap();
        let err = server.check(req.metadata()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(err.message().contains("wrong cluster secret"));

        let err = server.check(Request::new(()).metadata()).unwrap_err();
        assert!(err.message().contains("missing cluster secret"));

        let mut req = client.call(Request::new(())).unwrap();
        req.metadata_mut()
            .insert(PROTOCOL_KEY, MetadataValue::from(99u32));
        let err = server.check(req.metadata()).unwrap_err();
        assert!(err.message().contains("protocol version 99"));
    }

    struct OnlySeven;
    impl CredentialCheck for OnlySeven {
        fn check(&self, token: &str) -> Result<u64, Status> {
            match parse_credential(token) {
                Some((7, "good")) => Ok(7),
                _ => Err(Status::permission_denied("credential refused")),
            }
        }
    }

    #[test]
    fn credentials_are_taken_only_where_accepted() {
        let peers = ServerAuth::new(Arc::from("s3cret-s3cret-s3cret"));
        let mut clients = peers.clone().with_credentials(Arc::new(OnlySeven));
        let mut good = ClientAuth::new("alces-credential-7-good").unwrap();
        let req = good.call(Request::new(())).unwrap();
        let req = clients.call(req).unwrap();
        assert_eq!(Identity::of(&req), Identity::Credential(7));
        let req = good.call(Request::new(())).unwrap();
        let e = peers.check(req.metadata()).unwrap_err();
        assert!(e.message().contains("cluster secret only"), "{e:?}");
        let mut bad = ClientAuth::new("alces-credential-7-bad").unwrap();
        let req = bad.call(Request::new(())).unwrap();
        assert_eq!(
            clients.check(req.metadata()).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let mut admin = ClientAuth::new("s3cret-s3cret-s3cret").unwrap();
        let req = clients.call(admin.call(Request::new(())).unwrap()).unwrap();
        assert_eq!(Identity::of(&req), Identity::Cluster);
        assert_eq!(parse_credential("alces-credential-0-x"), None);
        assert_eq!(parse_credential("alces-credential-3-"), None);
        assert_eq!(parse_credential("alces-credential-3-ab"), Some((3, "ab")));
    }

    #[test]
    fn secret_loading() {
        let dir = std::env::temp_dir().join(format!("alces-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "abc-def\n").unwrap();
        chmod(&f, 0o600);
        assert_eq!(&*load_secret(Some(&f)).unwrap(), "abc-def");
        std::fs::write(&f, "  \n").unwrap();
        assert!(load_secret(Some(&f))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let missing = dir.join("nope");
        assert!(load_secret(Some(&missing))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn secret_files_readable_by_others_are_refused() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("alces-auth-modes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "abc-def\n").unwrap();
        for bad in [0o644, 0o604, 0o660, 0o620, 0o640 | 0o020, 0o777] {
            chmod(&f, bad);
            let e = load_secret(Some(&f)).unwrap_err().to_string();
            assert!(
                e.contains(&f.display().to_string())
                    && e.contains(&format!("{bad:04o}"))
                    && e.contains(&format!("chmod 600 {}", f.display())),
                "mode {bad:o}: {e}"
            );
        }
        for good in [0o600, 0o400] {
            chmod(&f, good);
            assert_eq!(&*load_secret(Some(&f)).unwrap(), "abc-def", "mode {good:o}");
        }
        // Kubernetes with fsGroup: 0440, group = the group the daemon runs as.
        chmod(&f, 0o440);
        assert_eq!(&*load_secret(Some(&f)).unwrap(), "abc-def");
        // The same mode with another group is refused (root can give the
        // file a group this process is not in).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let other = unsafe { libc::getegid() } + 4242;
            std::os::unix::fs::chown(&f, None, Some(other)).unwrap();
            let e = load_secret(Some(&f)).unwrap_err().to_string();
            assert!(e.contains("0440") && e.contains("its group"), "{e}");
            std::os::unix::fs::chown(&f, None, Some(unsafe { libc::getegid() })).unwrap();
        }
        // A Kubernetes Secret volume: secret -> ..data/secret, ..data -> a
        // timestamped folder. The target's mode counts, not the links'.
        let vol = dir.join("vol");
        let stamp = vol.join("..2026_12_05_07_00_00.1");
        std::fs::create_dir_all(&stamp).unwrap();
        let target = stamp.join("secret");
        std::fs::write(&target, "abc-def\n").unwrap();
        chmod(&target, 0o400);
        symlink("..2026_12_05_07_00_00.1", vol.join("..data")).unwrap();
        symlink("..data/secret", vol.join("secret")).unwrap();
        assert_eq!(&*load_secret(Some(&vol.join("secret"))).unwrap(), "abc-def");
        chmod(&target, 0o644);
        let e = load_secret(Some(&vol.join("secret")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
