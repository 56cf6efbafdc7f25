//! The operator's gRPC calls to the Alces daemons (it speaks to them like any
//! peer, with the cluster secret): the master's Admin service and each
//! metadata pod's Metalogger service. Every call has a short timeout, so an
//! unreachable pod costs the reconcile at most that long. Channels are kept
//! per address between calls (one connection per daemon, not one per call)
//! and dropped after any failed call, so the next call connects afresh (a
//! pod that came back elsewhere, a connection left half-open).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alces_proto::auth::ClientAuth;
use alces_proto::pb::{self, admin_client::AdminClient, metalogger_client::MetaloggerClient};
use alces_proto::MAX_MESSAGE_BYTES;

/// Default timeout of one call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// A promotion formats or recovers a data directory and waits for the master
/// address to be free: it gets longer.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The address is not host:port.
    #[error("bad address {0}: {1}")]
    Address(String, String),
    /// No answer in time.
    #[error("{0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The daemon answered with an error.
    #[error("{0} answered {1}: {2}")]
    Status(String, tonic::Code, String),
}

/// Client of the daemons' gRPC services. Clones share their channels.
#[derive(Clone)]
pub struct DataPlane {
    auth: ClientAuth,
    timeout: Duration,
    channels: Arc<parking_lot::Mutex<HashMap<String, alces_proto::net::AuthChannel>>>,
}

impl DataPlane {
    /// Calls authenticated with the cluster `secret`.
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        Ok(Self {
            auth: ClientAuth::new(secret)?,
            timeout: CALL_TIMEOUT,
            channels: Arc::default(),
        })
    }

    /// The same, connecting with `tls`.
    pub fn with_tls(mut self, tls: &alces_proto::tls::Tls) -> Self {
        self.auth = self.auth.with_tls(tls);
        self
    }

    fn channel(&self, addr: &str) -> Result<alces_proto::net::AuthChannel, CallError> {
        if let Some(c) = self.channels.lock().get(addr) {
            return Ok(c.clone());
        }
        let c = alces_proto::net::channel(addr, &self.auth)
            .map_err(|e| CallError::Address(addr.into(), e))?;
        self.channels.lock().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn call<T>(
        &self,
        addr: &str,
        timeout: Duration,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CallError> {
        let res = match tokio::time::timeout(timeout, f).await {
            Err(_) => Err(CallError::Timeout(addr.into(), timeout)),
            Ok(Err(s)) => Err(CallError::Status(
                addr.into(),
                s.code(),
                alces_proto::net::status_text(&s),
            )),
            Ok(Ok(r)) => Ok(r.into_inner()),
        };
        if res.is_err() {
            self.channels.lock().remove(addr);
        }
        res
    }

    /// Admin.Status of the master at `addr`.
    pub async fn master_status(&self, addr: &str) -> Result<pb::ClusterStatus, CallError> {
        let mut c =
            AdminClient::new(self.channel(addr)?).max_decoding_message_size(MAX_MESSAGE_BYTES);
        self.call(addr, self.timeout, c.status(pb::Empty {})).await
    }

    /// Metalogger.Status of the metadata pod at `addr`.
    pub async fn metalogger_status(&self, addr: &str) -> Result<pb::MetaloggerInfo, CallError> {
        let mut c = MetaloggerClient::new(self.channel(addr)?);
        self.call(addr, self.timeout, c.status(pb::Empty {})).await
    }

    /// Metalogger.Promote of the metadata pod at `addr`.
    pub async fn promote(
        &self,
        addr: &str,
        req: pb::PromoteRequest,
    ) -> Result<pb::PromoteReply, CallError> {
        let mut c = MetaloggerClient::new(self.channel(addr)?);
        self.call(addr, PROMOTE_TIMEOUT, c.promote(req)).await
    }

    /// Admin.DrainChunkserver (drain = false ends a drain).
    pub async fn drain(
        &self,
        master: &str,
        server_id: u64,
        drain: bool,
    ) -> Result<pb::ChunkserverStatus, CallError> {
        let mut c = AdminClient::new(self.channel(master)?);
        self.call(
            master,
            self.timeout,
            c.drain_chunkserver(pb::DrainRequest { server_id, drain }),
        )
        .await
    }
}
