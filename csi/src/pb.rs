//! The generated CSI protobuf code (package `csi.v1`).

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("csi.v1");
