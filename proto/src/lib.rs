//! The Alces wire protocol and the small pieces every part shares.
//!
//! - [`pb`]: the gRPC services and messages generated from `proto/alces/v1/*.proto`.
//! - [`errno`]: how a Linux errno travels inside a gRPC status.
//! - [`auth`]: the cluster secret every peer presents, and the protocol version check.
//! - [`checksum`]: CRC32C of chunk blocks and on-disk records.
//! - [`net`]: building channels to peers (DNS re-resolved on every reconnect).
//! - [`geometry`]: chunk and block sizes.
//! - [`tls`]: TLS flags and settings (rustls), reloaded when their files change.

#![warn(missing_docs)]

pub mod access;
pub mod auth;
pub mod checksum;
pub mod errno;
pub mod geometry;
pub mod net;
pub mod tls;

/// Generated protobuf messages and tonic services of package `alces.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("alces.v1");
}

/// Version of the Alces wire protocol spoken by this build.
///
/// Every request carries it in the `x-alces-protocol` metadata key; a peer refuses
/// a major version it does not know with a clear error, so a newer peer can tell
/// an older one apart.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default gRPC port of the master (clients, chunkservers, metaloggers, admin).
pub const DEFAULT_MASTER_PORT: u16 = 9421;
/// Default HTTP port of the master (`/metrics`, `/healthz`, `/readyz`).
pub const DEFAULT_MASTER_HTTP_PORT: u16 = 9431;
/// Default gRPC port of a chunkserver.
pub const DEFAULT_CHUNKSERVER_PORT: u16 = 9422;
/// Default HTTP port of a chunkserver.
pub const DEFAULT_CHUNKSERVER_HTTP_PORT: u16 = 9432;
/// Largest gRPC message any Alces peer accepts (chunk reports of big servers).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
