//! Channels to peers.
//!
//! Addresses are `host:port` (or `[v6]:port`). A channel is lazy: it connects on
//! first use and on every reconnect resolves the host name again, so a master
//! found by a Kubernetes Service name follows it across pods.

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::ClientAuth;

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

/// A lazily connecting, authenticated channel to `addr`.
pub fn channel(addr: &str, auth: &ClientAuth) -> Result<AuthChannel, String> {
    let ch = endpoint(addr)?.connect_lazy();
    Ok(InterceptedService::new(ch, auth.clone()))
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
