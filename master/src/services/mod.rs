//! The gRPC transport: one file per service, each handler a few lines that
//! turn a request into a call of a [`crate::domain`] function and its result
//! into a reply (counted in the `alces_master_rpc_total` metric).
//!
//! - [`master`]: `Master`, the service clients call.
//! - [`chunk_master`]: `ChunkMaster`, the service chunkservers call.
//! - [`admin`]: `Admin`, the service administrators (`alces`) call.
//! - [`replication`]: `Replication`, the service metaloggers call.
//! - [`metalogger`]: `Metalogger`, the service a metalogger serves (status, promotion).

pub mod admin;
pub mod chunk_master;
pub mod master;
pub mod metalogger;
pub mod replication;

use tonic::{Response, Status};

use crate::core::Core;

/// A unary reply.
type Reply<T> = Result<Response<T>, Status>;

/// Counts the call of `rpc` in the metrics, logs a failure at debug level and
/// wraps the result as a reply.
fn reply<T>(core: &Core, rpc: &str, r: Result<T, Status>) -> Reply<T> {
    core.metrics.count(rpc, r.is_ok());
    if let Err(e) = &r {
        tracing::debug!(rpc, code = ?e.code(), message = e.message(), "request failed");
    }
    r.map(Response::new)
}
