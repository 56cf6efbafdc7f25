//! The `Chunkserver` gRPC service: Read, Write, Truncate and Sync, with the
//! version rule applied under the chunk lock and mutations forwarded down the
//! replication chain concurrently with the local write.
//!
//! When a server further down the chain fails, the error status carries the
//! failed server in the metadata keys [`FAILED_SERVER_KEY`] (decimal server id)
//! and [`FAILED_ADDRESS_KEY`], and its message names it, so the client can report
//! it to the master (`WriteChunkEnd.failed_servers`). An error without these keys
//! comes from the server the client called.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use alces_proto::access;
use alces_proto::auth::Identity;
use alces_proto::geometry::{MAX_CHUNK_SIZE, MAX_GOAL};
use alces_proto::pb::chunkserver_server::Chunkserver;
use alces_proto::pb::{
    ChunkLocation, Empty, ReadReply, ReadRequest, SyncRequest, TruncateRequest, WriteManyRequest,
    WriteReply, WriteRequest,
};
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::revoked::Revoked;
use crate::store::{ChunkStore, StoreError, VersionSpec};

/// How long a forward down the chain may take before it counts as failed.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest `length` of one Read.
pub const MAX_READ_BYTES: u32 = 8 * 1024 * 1024;
/// Metadata key naming (decimal id) the chain server that failed.
pub const FAILED_SERVER_KEY: &str = "x-alces-failed-server";
/// Metadata key holding the address of the chain server that failed.
pub const FAILED_ADDRESS_KEY: &str = "x-alces-failed-address";

/// The gRPC service over a chunk store.
#[derive(Clone)]
pub struct ChunkService {
    store: Arc<ChunkStore>,
    peers: Arc<Peers>,
    metrics: Metrics,
    /// The cluster secret, checking the chunk access of calls made with a
    /// credential (none: such calls are refused).
    access_secret: Option<Arc<str>>,
    /// Credentials the master says are revoked (none: not tracked).
    revoked: Option<Arc<Revoked>>,
}

fn einval(msg: String) -> Status {
    alces_proto::errno::status(libc::EINVAL, msg)
}

/// A write of `data` at `offset` must end inside the largest chunk.
fn check_range(offset: u64, data: &[u8]) -> Result<(), Status> {
    if offset.saturating_add(data.len() as u64) > MAX_CHUNK_SIZE {
        return Err(einval(format!(
            "write of {} bytes at offset {offset} goes past the largest chunk size {MAX_CHUNK_SIZE}",
            data.len()
        )));
    }
    Ok(())
}

fn check_common(chunk_id: u64, chain: &[ChunkLocation]) -> Result<(), Status> {
    if chunk_id == 0 {
        return Err(einval(
            "chunk id 0 is not a chunk (it marks a hole)".to_string(),
        ));
    }
    if chain.len() >= MAX_GOAL as usize {
        return Err(einval(format!(
            "replication chain has {} further servers; at most {} are allowed",
            chain.len(),
            MAX_GOAL - 1
        )));
    }
    Ok(())
}

/// Builds the status answered for a failure of `next` (or further down).
fn downstream_error(next: &ChunkLocation, s: Status) -> Status {
    let errno = alces_proto::errno::of(&s);
    let md = s.metadata();
    let named = md
        .get(FAILED_SERVER_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (id, addr, msg) = match named {
        // A server further down failed; it is already named.
        Some(id) => (
            id,
            md.get(FAILED_ADDRESS_KEY)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            s.message().to_string(),
        ),
        None => (
            next.server_id.to_string(),
            next.address.clone(),
            format!(
                "chain server {} at {} failed: {}",
                next.server_id,
                next.address,
                s.message()
            ),
        ),
    };
    let mut st = alces_proto::errno::status(errno, msg);
    if let Ok(v) = id.parse() {
        st.metadata_mut().insert(FAILED_SERVER_KEY, v);
    }
    if let Ok(v) = addr.parse() {
        st.metadata_mut().insert(FAILED_ADDRESS_KEY, v);
    }
    st
}

impl ChunkService {
    /// A service over `store`, forwarding through `peers`.
    pub fn new(store: Arc<ChunkStore>, peers: Arc<Peers>) -> Self {
        let metrics = store.metrics().clone();
        Self {
            store,
            peers,
            metrics,
            access_secret: None,
            revoked: None,
        }
    }

    /// Refuses every access of the credentials `revoked` lists (kept up to
    /// date by the master link).
    pub fn with_revocations(mut self, revoked: Arc<Revoked>) -> Self {
        self.revoked = Some(revoked);
        self
    }

    /// Serves calls made with a credential when they carry a chunk access
    /// signed with `secret`'s key (see `alces_proto::access`).
    pub fn with_access_secret(mut self, secret: Arc<str>) -> Self {
        self.access_secret = Some(secret);
        self
    }

    /// Admits a call of `who` asking for `asked` with the access it carries (`given`).
    fn admit(
        &self,
        op: &str,
        who: Identity,
        given: Option<&alces_proto::pb::ChunkAccess>,
        asked: access::Asked<'_>,
    ) -> Result<(), Status> {
        let res = match (&self.access_secret, who) {
            (_, Identity::Cluster) => Ok(()),
            (Some(s), Identity::Credential(id)) => match &self.revoked {
                Some(r) => r.check(id),
                None => Ok(()),
            }
            .and_then(|()| access::check(s, who, given, asked, access::now_unix())),
            (None, _) => Err(Status::unauthenticated(
                "this chunkserver takes the cluster secret only",
            )),
        };
        if res.is_err() {
            self.metrics.op(op, false);
        }
        res
    }

    /// Runs the local operation and the forward to the rest of the chain
    /// concurrently; fails if either failed (the local error first).
    async fn with_chain<L, F, Fut>(
        &self,
        op: &str,
        chain: &[ChunkLocation],
        local: L,
        forward: F,
    ) -> Result<(), Status>
    where
        L: Future<Output = Result<(), StoreError>>,
        F: FnOnce(
            alces_proto::pb::chunkserver_client::ChunkserverClient<alces_proto::net::AuthChannel>,
            Vec<ChunkLocation>,
        ) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        let remote = async {
            let Some(next) = chain.first() else {
                return Ok(());
            };
            let client = self
                .peers
                .client(&next.address)
                .map_err(|e| downstream_error(next, alces_proto::errno::status(libc::EIO, e)))?;
            match tokio::time::timeout(FORWARD_TIMEOUT, forward(client, chain[1..].to_vec())).await
            {
                Ok(r) => r.map_err(|s| downstream_error(next, s)),
                Err(_) => Err(downstream_error(
                    next,
                    alces_proto::errno::status(
                        libc::ETIMEDOUT,
                        format!("no answer within {} s", FORWARD_TIMEOUT.as_secs()),
                    ),
                )),
            }
        };
        let (l, r) = tokio::join!(local, remote);
        let res = match (l, r) {
            (Err(e), Err(d)) => Err(alces_proto::errno::status(
                e.errno(),
                format!("{e}; the rest of the chain failed too: {}", d.message()),
            )),
            (Err(e), Ok(())) => Err(e.to_status()),
            (Ok(()), Err(d)) => Err(d),
            (Ok(()), Ok(())) => Ok(()),
        };
        if let Err(s) = &res {
            match alces_proto::errno::of(s) {
                libc::ENOENT | libc::ESTALE | libc::EINVAL => {
                    tracing::debug!(op, error = %s.message(), "chunk operation refused")
                }
                _ => tracing::warn!(op, error = %s.message(), "chunk operation failed"),
            }
        }
        self.metrics.op(op, res.is_ok());
        res
    }
}

#[tonic::async_trait]
impl Chunkserver for ChunkService {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadReply>, Status> {
        let who = Identity::of(&request);
        let r = request.into_inner();
        let asked = access::Asked {
            chunk_id: r.chunk_id,
            version: r.version,
            write: false,
            copy_from_chunk_id: 0,
            chain: &[],
        };
        self.admit("read", who, r.access.as_ref(), asked)?;
        let res = async {
            check_common(r.chunk_id, &[])?;
            if r.length > MAX_READ_BYTES {
                return Err(einval(format!(
                    "read length {} exceeds the limit of {MAX_READ_BYTES} bytes per call; split the read",
                    r.length
                )));
            }
            if r.offset.saturating_add(r.length as u64) > MAX_CHUNK_SIZE {
                return Err(einval(format!(
                    "read of {} bytes at offset {} goes past the largest chunk size {MAX_CHUNK_SIZE}",
                    r.length, r.offset
                )));
            }
            let (data, chunk_length) = self
                .store
                .read(r.chunk_id, r.version, r.offset, r.length as u64)
                .await
                .map_err(|e| e.to_status())?;
            self.metrics.bytes_read.inc_by(data.len() as u64);
            Ok(ReadReply {
                data: data.into(),
                chunk_length,
            })
        }
        .await;
        self.metrics.op("read", res.is_ok());
        res.map(Response::new)
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<WriteReply>, Status> {
        let who = Identity::of(&request);
        let r = request.into_inner();
        let asked = access::Asked {
            chunk_id: r.chunk_id,
            version: r.version,
            write: true,
            copy_from_chunk_id: r.copy_from_chunk_id,
            chain: &r.chain,
        };
        self.admit("write", who, r.access.as_ref(), asked)?;
        let valid = check_common(r.chunk_id, &r.chain).and_then(|_| check_range(r.offset, &r.data));
        if let Err(e) = valid {
            self.metrics.op("write", false);
            return Err(e);
        }
        let spec = VersionSpec {
            expected_version: r.expected_version,
            version: r.version,
            create: r.create,
            copy_from_chunk_id: r.copy_from_chunk_id,
            copy_from_version: r.copy_from_version,
        };
        let local = async {
            self.store
                .write(r.chunk_id, spec, r.offset, r.data.clone())
                .await
                .map(|_| ())
        };
        let fwd = r.clone();
        self.with_chain("write", &r.chain, local, |mut c, rest| async move {
            c.write(WriteRequest { chain: rest, ..fwd })
                .await
                .map(|_| ())
        })
        .await?;
        Ok(Response::new(WriteReply {}))
    }

    async fn write_many(
        &self,
        request: Request<WriteManyRequest>,
    ) -> Result<Response<WriteReply>, Status> {
        let who = Identity::of(&request);
        let r = request.into_inner();
        let asked = access::Asked {
            chunk_id: r.chunk_id,
            version: r.version,
            write: true,
            copy_from_chunk_id: r.copy_from_chunk_id,
            chain: &r.chain,
        };
        self.admit("write", who, r.access.as_ref(), asked)?;
        let valid = (|| {
            check_common(r.chunk_id, &r.chain)?;
            if r.extents.is_empty() {
                return Err(einval(
                    "WriteMany without any range: send at least one".to_string(),
                ));
            }
            r.extents
                .iter()
                .try_for_each(|e| check_range(e.offset, &e.data))
        })();
        if let Err(e) = valid {
            self.metrics.op("write", false);
            return Err(e);
        }
        let spec = VersionSpec {
            expected_version: r.expected_version,
            version: r.version,
            create: r.create,
            copy_from_chunk_id: r.copy_from_chunk_id,
            copy_from_version: r.copy_from_version,
        };
        let extents: Vec<(u64, bytes::Bytes)> = r
            .extents
            .iter()
            .map(|e| (e.offset, e.data.clone()))
            .collect();
        let local = async {
            self.store
                .write_many(r.chunk_id, spec, extents)
                .await
                .map(|_| ())
        };
        let fwd = r.clone();
        self.with_chain("write", &r.chain, local, |mut c, rest| async move {
            let many = WriteManyRequest {
                chain: rest.clone(),
                ..fwd.clone()
            };
            match c.write_many(many).await {
                // A next server without WriteMany (an older version) gets the
                // ranges one Write at a time rather than being dropped.
                Err(st) if st.code() == tonic::Code::Unimplemented => {
                    for e in fwd.extents {
                        c.write(WriteRequest {
                            chunk_id: fwd.chunk_id,
                            expected_version: fwd.expected_version,
                            version: fwd.version,
                            create: fwd.create,
                            offset: e.offset,
                            data: e.data,
                            chain: rest.clone(),
                            copy_from_chunk_id: fwd.copy_from_chunk_id,
                            copy_from_version: fwd.copy_from_version,
                            access: fwd.access.clone(),
                        })
                        .await?;
                    }
                    Ok(())
                }
                r => r.map(|_| ()),
            }
        })
        .await?;
        Ok(Response::new(WriteReply {}))
    }

    async fn truncate(&self, request: Request<TruncateRequest>) -> Result<Response<Empty>, Status> {
        let who = Identity::of(&request);
        let r = request.into_inner();
        let asked = access::Asked {
            chunk_id: r.chunk_id,
            version: r.version,
            write: true,
            copy_from_chunk_id: r.copy_from_chunk_id,
            chain: &r.chain,
        };
        self.admit("truncate", who, r.access.as_ref(), asked)?;
        let valid = (|| {
            check_common(r.chunk_id, &r.chain)?;
            if r.length > MAX_CHUNK_SIZE {
                return Err(einval(format!(
                    "truncate length {} exceeds the largest chunk size {MAX_CHUNK_SIZE}",
                    r.length
                )));
            }
            Ok(())
        })();
        if let Err(e) = valid {
            self.metrics.op("truncate", false);
            return Err(e);
        }
        let spec = VersionSpec {
            expected_version: r.expected_version,
            version: r.version,
            create: r.create,
            copy_from_chunk_id: r.copy_from_chunk_id,
            copy_from_version: r.copy_from_version,
        };
        let local = async {
            self.store
                .truncate(r.chunk_id, spec, r.length)
                .await
                .map(|_| ())
        };
        let fwd = r.clone();
        self.with_chain("truncate", &r.chain, local, |mut c, rest| async move {
            c.truncate(TruncateRequest { chain: rest, ..fwd })
                .await
                .map(|_| ())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }

    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<Empty>, Status> {
        let who = Identity::of(&request);
        let r = request.into_inner();
        let asked = access::Asked {
            chunk_id: r.chunk_id,
            version: r.version,
            write: true,
            copy_from_chunk_id: 0,
            chain: &r.chain,
        };
        self.admit("sync", who, r.access.as_ref(), asked)?;
        if let Err(e) = check_common(r.chunk_id, &r.chain) {
            self.metrics.op("sync", false);
            return Err(e);
        }
        let local = self.store.sync(r.chunk_id, r.version);
        let fwd = r.clone();
        self.with_chain("sync", &r.chain, local, |mut c, rest| async move {
            c.sync(SyncRequest { chain: rest, ..fwd }).await.map(|_| ())
        })
        .await?;
        Ok(Response::new(Empty {}))
    }
}
