//! Cached authenticated channels to other chunkservers (chain forwarding and
//! replication), one per peer address.

use std::collections::HashMap;

use alces_proto::auth::ClientAuth;
use alces_proto::net::AuthChannel;
use alces_proto::pb::chunkserver_client::ChunkserverClient;
use alces_proto::MAX_MESSAGE_BYTES;
use parking_lot::Mutex;

/// Clients of peer chunkservers keyed by address.
pub struct Peers {
    auth: ClientAuth,
    clients: Mutex<HashMap<String, ChunkserverClient<AuthChannel>>>,
}

impl Peers {
    /// Peers reached with the cluster secret in `auth`.
    pub fn new(auth: ClientAuth) -> Self {
        Self {
            auth,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the chunkserver at `addr` (lazily connecting, cached).
    pub fn client(&self, addr: &str) -> Result<ChunkserverClient<AuthChannel>, String> {
        let mut m = self.clients.lock();
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ch = alces_proto::net::channel(addr, &self.auth)?;
        let c = ChunkserverClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
