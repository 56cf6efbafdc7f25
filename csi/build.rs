//! Generates the tonic/prost code of the CSI specification's protobuf
//! (`proto/csi/v1/csi.proto`, package `csi.v1`) with a vendored `protoc`, as
//! `proto/` does for Alces' own protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; setting PROTOC before invoking the
    // generator is the documented way to point prost-build at a compiler.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let include = protoc_bin_vendored::include_path()?;
    let proto = "proto/csi/v1/csi.proto";
    println!("cargo:rerun-if-changed={proto}");
    let include = include
        .to_str()
        .ok_or("the vendored protoc include path is not UTF-8")?;
    tonic_prost_build::configure().compile_protos(&[proto], &["proto", include])?;
    Ok(())
}
