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
/// secret is an error: it would let anyone in.
pub fn load_secret(file: Option<&Path>) -> anyhow::Result<Arc<str>> {
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

/// Constant-time comparison of two byte strings.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server-side interceptor: refuses calls without the cluster secret or with an
/// unknown protocol version.
#[derive(Clone)]
pub struct ServerAuth {
    secret: Arc<str>,
}

impl ServerAuth {
    /// Checks calls against `secret`.
    pub fn new(secret: Arc<str>) -> Self {
        Self { secret }
    }

    /// Checks the metadata of one request.
    pub fn check(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
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
            Some(p) if ct_eq(p.as_bytes(), self.secret.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster secret: this peer's --secret-file / ALCES_SECRET differs from the cluster's",
            )),
        }
    }
}

impl Interceptor for ServerAuth {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        self.check(req.metadata())?;
        Ok(req)
    }
}

/// Client-side interceptor: adds the cluster secret and the protocol version.
#[derive(Clone)]
pub struct ClientAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl ClientAuth {
    /// Presents `secret` on every call.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let header = format!("Bearer {secret}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the cluster secret must be printable ASCII"))?;
        Ok(Self { header })
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

    #[test]
    fn secret_loading() {
        let dir = std::env::temp_dir().join(format!("alces-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("secret");
        std::fs::write(&f, "abc-def\n").unwrap();
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
}
