//! The Alces CSI driver: Kubernetes volumes as quota'd directories of an Alces
//! filesystem, mounted into pods by FUSE daemons that outlive every restart.
//!
//! - [`identity`], [`controller`], [`node`]: the CSI services (package
//!   `csi.v1`, generated into [`pb`] from the specification's protobuf).
//! - [`node`]: staging mounts `/dev/fuse` itself and starts one `alces-mount`
//!   daemon per volume on that connection, in a session of its own, so mounts
//!   outlive the node plugin; [`node::keeper`] keeps the descriptors and
//!   replaces a daemon that dies with one that takes the connection over.
//! - [`ids`], [`params`]: volume/snapshot ids and StorageClass parameters.
//! - [`clusters`]: client sessions with the Alces clusters volumes live in.
//!
//! `ARCHITECTURE.md` next to this crate describes the design.

#![warn(missing_docs)]

pub mod cli;
pub mod clusters;
pub mod controller;
pub mod errors;
pub mod identity;
pub mod ids;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod params;
pub mod pb;
pub mod server;
pub mod uds;
