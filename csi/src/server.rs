//! Serving gRPC on a unix socket (`--endpoint unix:///csi/csi.sock`), with every
//! RPC counted and timed, and a span carrying the volume id around each call.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http::{Request, Response as HttpResponse};
use tower::{Layer, Service};

use crate::metrics::CsiMetrics;

/// Parses `unix:///path`, `unix:/path` or a plain absolute path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, String> {
    let p = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !p.starts_with('/') {
        return Err(format!(
            "endpoint {endpoint:?} is not a unix socket path: use unix:///csi/csi.sock"
        ));
    }
    if p.contains('\0') {
        return Err("endpoint contains a NUL byte".into());
    }
    Ok(PathBuf::from(p))
}

/// Binds a unix socket at `path`, replacing a stale socket file left by an
/// earlier run (never any other kind of file).
pub fn bind_unix(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))
}

/// A tower layer recording every RPC in [`CsiMetrics`].
#[derive(Clone)]
pub struct MetricsLayer(pub CsiMetrics);

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: CsiMetrics,
}

impl<S, B, RB> Service<Request<B>> for MetricsService<S>
where
    S: Service<Request<B>, Response = HttpResponse<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            if let Ok(resp) = &r {
                // Errors come as a trailers-only response (status in the headers);
                // a success carries its status in the trailers.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(tonic::Code::from)
                    .unwrap_or(tonic::Code::Ok);
                let secs = start.elapsed().as_secs_f64();
                metrics.rpc(&method, code, secs);
                tracing::debug!(method = %method, code = ?code, seconds = secs, "rpc");
            }
            r
        })
    }
}

/// A span for one CSI call, carrying the volume (or snapshot) id so that every
/// log line of the call names it.
pub fn rpc_span(method: &'static str, volume_id: &str) -> tracing::Span {
    let shown: String = volume_id
        .chars()
        .take(128)
        .flat_map(char::escape_debug)
        .collect();
    tracing::info_span!("csi", method, volume_id = %shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(socket_path("unix:/tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert_eq!(socket_path("/tmp/x").unwrap(), PathBuf::from("/tmp/x"));
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
        assert!(socket_path("unix://relative").is_err());
    }
}
