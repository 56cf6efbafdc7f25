//! The link to the master: registration with the full chunk list, periodic
//! heartbeats carrying disk space and chunk changes, and the commands the
//! master sends back (delete, replicate).
//!
//! While the master is unreachable the chunkserver keeps serving clients and
//! retries with backoff; it logs once per change of state, not per attempt.
//! A failure that is not the master's clear refusal (unreachable, timed out,
//! or an answer that is not gRPC, such as an HTTP 404 from another service
//! behind the master's address) drops the connection: the next attempt
//! connects again, resolving the address again, so a chunkserver whose
//! connection reached the wrong peer finds the master.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use alces_proto::auth::ClientAuth;
use alces_proto::errno;
use alces_proto::net::AuthChannel;
use alces_proto::pb::chunk_command::Command;
use alces_proto::pb::chunk_master_client::ChunkMasterClient;
use alces_proto::pb::{
    ChunkserverHeartbeatRequest, ReadRequest, RegisterChunkserverRequest, ReplicateChunk,
};
use alces_proto::MAX_MESSAGE_BYTES;
use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::identity::Identity;
use crate::peers::Peers;
use crate::revoked::Revoked;
use crate::store::ChunkStore;

/// Bytes fetched per Read while replicating.
const REPLICATE_PIECE: u32 = 4 * 1024 * 1024;
/// How long a call to the master (or a replication read) may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Replications running at once.
const MAX_REPLICATIONS: usize = 2;

/// Settings of the master link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// host:port of the master.
    pub master: String,
    /// Address this chunkserver advertises.
    pub advertise: String,
    /// Failure-domain label.
    pub label: String,
    /// Heartbeat period unless the master asks for another.
    pub heartbeat: Duration,
}

/// The running link.
pub struct MasterLink {
    cfg: LinkConfig,
    store: Arc<ChunkStore>,
    identity: Arc<Identity>,
    peers: Arc<Peers>,
    auth: ClientAuth,
    client: ChunkMasterClient<AuthChannel>,
    replicating: Arc<Mutex<HashSet<u64>>>,
    replication_slots: Arc<Semaphore>,
    revoked: Arc<Revoked>,
}

/// Connection state, for logging changes only.
#[derive(PartialEq, Eq, Clone, Debug)]
enum LinkState {
    Starting,
    Connected,
    Down(String),
}

impl MasterLink {
    /// Prepares the link (the channel connects lazily).
    pub fn new(
        cfg: LinkConfig,
        store: Arc<ChunkStore>,
        identity: Arc<Identity>,
        peers: Arc<Peers>,
        auth: &ClientAuth,
    ) -> anyhow::Result<Self> {
        let client = connect(&cfg.master, auth).map_err(|e| anyhow::anyhow!("--master: {e}"))?;
        Ok(Self {
            cfg,
            store,
            identity,
            peers,
            auth: auth.clone(),
            client,
            replicating: Arc::new(Mutex::new(HashSet::new())),
            replication_slots: Arc::new(Semaphore::new(MAX_REPLICATIONS)),
            revoked: Arc::new(Revoked::new()),
        })
    }

    /// Keeps `revoked` as the master lists revoked credentials (with every
    /// registration and heartbeat reply).
    pub fn with_revocations(mut self, revoked: Arc<Revoked>) -> Self {
        self.revoked = revoked;
        self
    }

    /// Drops the connection to the master; the next call connects again,
    /// resolving the master's address again.
    fn reconnect(&mut self, why: &LinkError) {
        tracing::debug!(master = %self.cfg.master, error = %why.message, "connecting to the master again");
        // The address was valid at startup and does not change.
        if let Ok(c) = connect(&self.cfg.master, &self.auth) {
            self.client = c;
        }
    }

    /// Runs forever: register, heartbeat, reconnect.
    pub async fn run(mut self) {
        let mut state = LinkState::Starting;
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.register().await {
                Ok(period) => {
                    if state != LinkState::Connected {
                        tracing::info!(master = %self.cfg.master, server_id = self.identity.server_id, chunks = self.store.len(), "registered with the master");
                    }
                    state = LinkState::Connected;
                    self.store.metrics().master_connected.set(1);
                    backoff = Duration::from_millis(200);
                    match self.heartbeats(period).await {
                        HeartbeatEnd::Reregister => {
                            tracing::info!("master asked this chunkserver to register again");
                            continue;
                        }
                        HeartbeatEnd::Failed(e) => {
                            self.store.metrics().master_connected.set(0);
                            let s = LinkState::Down(e.message.clone());
                            tracing::warn!(master = %self.cfg.master, error = %e.message, new_connection = e.reconnect, "lost the master; still serving clients, reconnecting");
                            state = s;
                            if e.reconnect {
                                self.reconnect(&e);
                            }
                        }
                    }
                }
                Err(e) => {
                    self.store.metrics().master_connected.set(0);
                    let s = LinkState::Down(e.message.clone());
                    if s != state {
                        tracing::error!(master = %self.cfg.master, error = %e.message, new_connection = e.reconnect, "cannot register with the master; still serving clients, retrying");
                    }
                    state = s;
                    if e.reconnect {
                        self.reconnect(&e);
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Registers; returns the heartbeat period to use.
    async fn register(&self) -> Result<Duration, LinkError> {
        // Everything changed before the full list is in it; later changes go
        // into the next heartbeat.
        self.store.clear_deltas();
        let req = RegisterChunkserverRequest {
            server_id: self.identity.server_id,
            address: self.cfg.advertise.clone(),
            label: self.cfg.label.clone(),
            disks: self.store.disk_infos(),
            chunks: self.store.chunk_list(),
            seen_epoch: self.identity.seen_epoch(),
        };
        let reply =
            tokio::time::timeout(RPC_TIMEOUT, self.client.clone().register_chunkserver(req))
                .await
                .map_err(|_| LinkError::timeout("registration"))?
                .map_err(|s| LinkError::status(&s))?
                .into_inner();
        self.identity
            .check_cluster(&reply.cluster_id)
            .map_err(|e| LinkError::refused(e.to_string()))?;
        self.identity
            .check_epoch(reply.epoch)
            .map_err(|e| LinkError::refused(e.to_string()))?;
        self.revoked.replace(&reply.revoked_credentials);
        Ok(if reply.heartbeat_ms > 0 {
            Duration::from_millis(reply.heartbeat_ms as u64)
        } else {
            self.cfg.heartbeat
        })
    }

    async fn heartbeats(&self, period: Duration) -> HeartbeatEnd {
        let period = period.max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let deltas = self.store.take_deltas();
            let req = ChunkserverHeartbeatRequest {
                server_id: self.identity.server_id,
                disks: self.store.disk_infos(),
                changed: deltas.changed.values().cloned().collect(),
                removed: deltas.removed.iter().copied().collect(),
                damaged: deltas.damaged.iter().copied().collect(),
                seen_epoch: self.identity.seen_epoch(),
            };
            let mut client = self.client.clone();
            let call = tokio::time::timeout(RPC_TIMEOUT, client.chunkserver_heartbeat(req));
            let reply = match call.await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => {
                    self.store.restore_deltas(deltas);
                    return HeartbeatEnd::Failed(LinkError::status(&s));
                }
                Err(_) => {
                    self.store.restore_deltas(deltas);
                    return HeartbeatEnd::Failed(LinkError::timeout("heartbeat"));
                }
            };
            // Epoch 0 means the master did not fill the field.
            if reply.epoch != 0 {
                if let Err(e) = self.identity.check_epoch(reply.epoch) {
                    self.store.restore_deltas(deltas);
                    return HeartbeatEnd::Failed(LinkError::refused(e.to_string()));
                }
            }
            if reply.reregister {
                return HeartbeatEnd::Reregister;
            }
            self.revoked.replace(&reply.revoked_credentials);
            for c in reply.commands {
                match c.command {
                    Some(Command::Delete(d)) => {
                        match self.store.delete(d.chunk_id, d.version).await {
                            Ok(true) => tracing::debug!(
                                chunk = format!("{:016x}", d.chunk_id),
                                "chunk deleted on the master's command"
                            ),
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(chunk = format!("{:016x}", d.chunk_id), error = %e, "cannot delete chunk")
                            }
                        }
                    }
                    Some(Command::Replicate(r)) => self.spawn_replication(r),
                    None => {}
                }
            }
        }
    }

    fn spawn_replication(&self, r: ReplicateChunk) {
        if !self.replicating.lock().insert(r.chunk_id) {
            return;
        }
        let store = self.store.clone();
        let peers = self.peers.clone();
        let busy = self.replicating.clone();
        let slots = self.replication_slots.clone();
        tokio::spawn(async move {
            let _permit = slots.acquire_owned().await;
            let id = r.chunk_id;
            match replicate(&store, &peers, &r).await {
                Ok(true) => tracing::info!(
                    chunk = format!("{id:016x}"),
                    version = r.version,
                    "chunk replicated"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(chunk = format!("{id:016x}"), error = %e, "chunk replication failed")
                }
            }
            busy.lock().remove(&id);
        });
    }
}

enum HeartbeatEnd {
    Reregister,
    Failed(LinkError),
}

/// A failed registration or heartbeat.
struct LinkError {
    message: String,
    /// Not a clear refusal by the master: the next attempt uses a new connection.
    reconnect: bool,
}

impl LinkError {
    /// The master answered with `s`.
    fn status(s: &tonic::Status) -> Self {
        Self {
            message: format!("{}: {}", s.code(), s.message()),
            reconnect: !errno::is_refusal(s),
        }
    }

    /// No answer in time.
    fn timeout(what: &str) -> Self {
        Self {
            message: format!("{what} not answered within {} s", RPC_TIMEOUT.as_secs()),
            reconnect: true,
        }
    }

    /// The master answered, and this chunkserver will not take the answer (another
    /// cluster, an older epoch).
    fn refused(message: String) -> Self {
        Self {
            message,
            reconnect: false,
        }
    }
}

/// A client of the master's ChunkMaster service on a new (lazy) connection.
fn connect(master: &str, auth: &ClientAuth) -> Result<ChunkMasterClient<AuthChannel>, String> {
    let ch = alces_proto::net::channel(master, auth)?;
    Ok(ChunkMasterClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Fetches chunk `r.chunk_id` at `r.version` from the first source that has it
/// and stores it locally; returns false when a copy at least as new is already here.
pub async fn replicate(
    store: &Arc<ChunkStore>,
    peers: &Peers,
    r: &ReplicateChunk,
) -> Result<bool, String> {
    if r.chunk_id == 0 || r.version == 0 {
        return Err("replicate command with chunk id or version 0".to_string());
    }
    if let Some(m) = store.get(r.chunk_id) {
        if m.version >= r.version {
            return Ok(false);
        }
    }
    let mut errors = Vec::new();
    for src in &r.sources {
        match fetch(peers, &src.address, r.chunk_id, r.version).await {
            Ok(data) => {
                return store
                    .install(r.chunk_id, r.version, data)
                    .await
                    .map_err(|e| e.to_string());
            }
            Err(e) => errors.push(format!("{} ({}): {e}", src.server_id, src.address)),
        }
    }
    Err(format!(
        "no source could provide it: [{}]",
        errors.join("; ")
    ))
}

/// Reads a whole chunk from a peer, piece by piece (the peer verifies CRCs).
async fn fetch(peers: &Peers, addr: &str, chunk_id: u64, version: u64) -> Result<Vec<u8>, String> {
    let mut client = peers.client(addr)?;
    let mut data = Vec::new();
    let mut length = None;
    loop {
        let offset = data.len() as u64;
        if let Some(l) = length {
            if offset >= l {
                break;
            }
        }
        let call = client.read(ReadRequest {
            chunk_id,
            version,
            offset,
            length: REPLICATE_PIECE,
            access: None,
        });
        let reply = tokio::time::timeout(RPC_TIMEOUT, call)
            .await
            .map_err(|_| format!("read not answered within {} s", RPC_TIMEOUT.as_secs()))?
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let l = reply.chunk_length;
        if l > alces_proto::geometry::MAX_CHUNK_SIZE {
            return Err(format!("source reports a chunk length of {l}, too large"));
        }
        if *length.get_or_insert(l) != l {
            return Err("chunk length changed while copying it".to_string());
        }
        if reply.data.len() != REPLICATE_PIECE as usize {
            return Err(format!(
                "source returned {} bytes for a read of {REPLICATE_PIECE}",
                reply.data.len()
            ));
        }
        let take = (l - offset).min(REPLICATE_PIECE as u64) as usize;
        data.extend_from_slice(&reply.data[..take]);
        if take == 0 {
            break;
        }
    }
    Ok(data)
}
