//! Channels to peers, and listeners: the one place that builds each, so every
//! daemon and client gets the same TLS handling ([`crate::tls`]).
//!
//! Addresses are `host:port` (or `[v6]:port`). A channel is lazy: it connects on
//! first use and on every reconnect resolves the host name again, so a master
//! found by a Kubernetes Service name follows it across pods.

use std::future::Future;
use std::io;
use std::pin::Pin;

use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::auth::ClientAuth;
use crate::tls::{explain, rustls_error, Side, Tls};

/// A channel that presents the cluster secret on every call.
pub type AuthChannel = InterceptedService<Channel, ClientAuth>;

/// Checks that `addr` looks like `host:port` with a valid port.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("address '{addr}' has no port: expected host:port"))?;
    if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
        return Err(format!(
            "address '{addr}' has an invalid host: expected host:port"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!(
            "address '{addr}' has an invalid port '{port}': expected 1-65535"
        )),
    }
}

/// A lazily connecting endpoint for `addr` with Alces' timeouts and keepalives.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    validate_addr(addr)?;
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("address '{addr}' is not usable: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(32 * 1024 * 1024));
    Ok(ep)
}

/// A lazily connecting, authenticated channel to `addr`, with the TLS
/// settings `auth` carries ([`ClientAuth::with_tls`]).
pub fn channel(addr: &str, auth: &ClientAuth) -> Result<AuthChannel, String> {
    let ch = endpoint(addr)?.connect_with_connector_lazy(Connector::new(auth.tls()));
    Ok(InterceptedService::new(ch, auth.clone()))
}

/// Like [`channel`], but connects now: fails if `addr` cannot be reached or
/// the TLS handshake fails.
pub async fn connect(addr: &str, auth: &ClientAuth) -> Result<AuthChannel, String> {
    let ch = endpoint(addr)?
        .connect_with_connector(Connector::new(auth.tls()))
        .await
        .map_err(|e| error_chain(&e))?;
    Ok(InterceptedService::new(ch, auth.clone()))
}

/// An error and its sources, joined by ": " (what tonic shows only in part).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The message of a failed call, with the transport error behind it (a TLS
/// failure says there which it was).
pub fn status_text(s: &tonic::Status) -> String {
    use std::error::Error;
    let mut out = s.message().to_string();
    let mut cur = s.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = c.source();
    }
    out
}

/// Connects a channel over TCP, then TLS when it is on.
#[derive(Clone)]
struct Connector {
    tls: Tls,
}

impl Connector {
    fn new(tls: &Tls) -> Self {
        Self { tls: tls.clone() }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_string();
            let peer = format!("{host}:{}", uri.port_u16().unwrap_or(80));
            dial(&peer, &host, &tls).await.map(TokioIo::new)
        })
    }
}

/// The first bytes an HTTP/2 client sends (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connects to `peer` and waits for its first bytes: an HTTP/2 server speaks
/// first (its SETTINGS), so every way a connection can be refused (a TLS port
/// answering a plaintext client, a server refusing this client's certificate
/// after the handshake) is seen and explained here, before the channel uses
/// the connection, and never lost in a race with a call.
async fn dial(peer: &str, host: &str, tls: &Tls) -> io::Result<ClientIo> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(peer).await?;
    tcp.set_nodelay(true)?;
    let mut first = vec![0u8; 4096];
    let Some(cfg) = tls.client_config() else {
        // The preface is sent here (and dropped when the channel sends it):
        // a TLS server answers it with an alert, an HTTP/2 server greets.
        tcp.write_all(H2_PREFACE).await?;
        let n = tcp.read(&mut first).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{peer} closed the connection without a word: is it an Alces server?"),
            ));
        }
        if n >= 2 && (first[0] == 0x15 || first[0] == 0x16) && first[1] == 0x03 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("TLS: {peer} speaks TLS and this process connects in plaintext: give it --tls-ca (and --tls-cert/--tls-key if the server requires client certificates)"),
            ));
        }
        first.truncate(n);
        return Ok(ClientIo {
            inner: Stream::Plain(tcp),
            pending: first,
            skip: H2_PREFACE.len(),
        });
    };
    let name = tls
        .server_name_for(host)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let shown = name.to_str().to_string();
    let mut s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| explain_io(e, peer, &shown))?;
    let n = s
        .read(&mut first)
        .await
        .map_err(|e| explain_io(e, peer, &shown))?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("TLS: {peer} closed the connection right after the handshake: it refused this client (see its log)"),
        ));
    }
    first.truncate(n);
    Ok(ClientIo {
        inner: Stream::Tls(Box::new(s)),
        pending: first,
        skip: 0,
    })
}

/// Handshakes with `addr` and returns the certificate it presented (a
/// diagnostic: which certificate a server serves right now).
pub async fn peer_certificate(
    addr: &str,
    tls: &Tls,
) -> io::Result<rustls::pki_types::CertificateDer<'static>> {
    validate_addr(addr).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    match dial(addr, host, tls).await?.inner {
        Stream::Tls(s) => s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
            .map(|c| c.into_owned())
            .ok_or_else(|| io::Error::other(format!("{addr} presented no certificate"))),
        Stream::Plain(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS is off in this process: no certificate to look at",
        )),
    }
}

fn explain_io(e: io::Error, peer: &str, name: &str) -> io::Error {
    match rustls_error(&e) {
        Some(r) => io::Error::new(e.kind(), explain(r, peer, Side::Client, name)),
        None if e.kind() == io::ErrorKind::UnexpectedEof => io::Error::new(
            e.kind(),
            format!("TLS: {peer} closed the connection during the handshake (a plaintext port, or a server that refused this client: see its log)"),
        ),
        None => e,
    }
}

/// A client connection (plaintext or TLS), with the server's first bytes
/// already read by [`dial`].
pub struct ClientIo {
    inner: Stream,
    /// Bytes read ahead, returned first.
    pending: Vec<u8>,
    /// Bytes of the HTTP/2 preface the channel will write and [`dial`]
    /// already sent.
    skip: usize,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.pending.is_empty() {
            let n = me.pending.len().min(buf.remaining());
            buf.put_slice(&me.pending[..n]);
            me.pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        match &mut me.inner {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl ClientIo {
    /// Drops what the channel writes of the preface [`dial`] sent.
    fn skipped(&mut self, b: &[u8]) -> Option<usize> {
        if self.skip == 0 || b.is_empty() {
            return None;
        }
        let done = H2_PREFACE.len() - self.skip;
        let n = self.skip.min(b.len());
        if b[..n] != H2_PREFACE[done..done + n] {
            // Not the preface: nothing to drop.
            self.skip = 0;
            return None;
        }
        self.skip -= n;
        Some(n)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if let Some(n) = me.skipped(b) {
            return Poll::Ready(Ok(n));
        }
        match &mut me.inner {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.skip > 0 {
            if let Some(first) = b.iter().find(|s| !s.is_empty()) {
                if let Some(n) = me.skipped(first) {
                    return Poll::Ready(Ok(n));
                }
            }
        }
        match &mut me.inner {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, b),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The connections accepted on `listener`, with TLS when `tls` is on (a
/// failed handshake is logged with its explanation and dropped; it never
/// stops the listener). For `tonic::transport::Server::serve_with_incoming*`.
pub fn incoming(
    listener: TcpListener,
    tls: &Tls,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<ServerIo>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tls.server_config().map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().ok();
            let info = TcpConnectInfo {
                local_addr: local,
                remote_addr: Some(remote),
            };
            match &acceptor {
                None => {
                    if tx.send(Ok(ServerIo::Plain(tcp, info))).await.is_err() {
                        return;
                    }
                }
                Some(acc) => {
                    let (acc, tx) = (acc.clone(), tx.clone());
                    tokio::spawn(async move {
                        let mut first = [0u8; 1];
                        let peeked =
                            tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
                        if matches!(peeked, Ok(Ok(1))) && first[0] != TLS_HANDSHAKE_RECORD {
                            refuse_plaintext(tcp, remote).await;
                            return;
                        }
                        let accept = acc.accept(tcp).into_fallible();
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                            Ok(Ok(s)) => {
                                let _ = tx.send(Ok(ServerIo::Tls(Box::new(s), info))).await;
                            }
                            Ok(Err((e, tcp))) => {
                                let peer = remote.to_string();
                                let why = match rustls_error(&e) {
                                    Some(r) => explain(r, &peer, Side::Server, ""),
                                    None => format!("TLS handshake with {peer} failed: {e}"),
                                };
                                tracing::warn!(peer = %remote, "{why}");
                                // The alert saying why is sent: let the client
                                // read it before the connection goes.
                                linger(tcp).await;
                            }
                            Err(_) => {
                                tracing::warn!(peer = %remote, "TLS: the client did not finish its handshake within {HANDSHAKE_TIMEOUT:?}; connection closed")
                            }
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// First byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Answers a client that does not speak TLS on a TLS port with a TLS alert
/// record (unexpected_message), which an Alces client recognises and reports,
/// reads what it sent until it hangs up (so the close resets nothing before it
/// reads the alert), and logs who it was.
async fn refuse_plaintext(mut tcp: TcpStream, remote: std::net::SocketAddr) {
    use tokio::io::AsyncWriteExt;
    tracing::warn!(peer = %remote, "TLS: {remote} did not speak TLS (a plaintext client?) to this TLS port: give the client --tls-ca (and --tls-cert/--tls-key for mutual TLS)");
    let alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];
    if tcp.write_all(&alert).await.is_err() {
        return;
    }
    linger(tcp).await;
}

/// Closes our side of `tcp` and reads what the peer still sends until it
/// hangs up (2 s at most): closing with unread bytes would reset the
/// connection, and the peer would lose the alert sent last.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// An accepted connection: plaintext or TLS.
pub enum ServerIo {
    /// Plaintext.
    Plain(TcpStream, TcpConnectInfo),
    /// TLS.
    Tls(
        Box<tokio_rustls::server::TlsStream<TcpStream>>,
        TcpConnectInfo,
    ),
}

impl Connected for ServerIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            ServerIo::Plain(_, i) | ServerIo::Tls(_, i) => i.clone(),
        }
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_write(cx, b),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, b),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, b),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(s, _) => s.is_write_vectored(),
            ServerIo::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(validate_addr("127.0.0.1:9421").is_ok());
        assert!(validate_addr("alces-master.ns.svc:9421").is_ok());
        assert!(validate_addr("[::1]:9421").is_ok());
        assert!(validate_addr("localhost").is_err());
        assert!(validate_addr("host:0").is_err());
        assert!(validate_addr("host:99999").is_err());
        assert!(validate_addr(":9421").is_err());
    }
}
