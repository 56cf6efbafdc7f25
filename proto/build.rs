//! Generates the tonic/prost code from `alces/v1/*.proto` with a vendored `protoc`,
//! so building Alces never needs a system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; setting PROTOC before invoking the
    // generator is the documented way to point prost-build at a compiler.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let protos = [
        "alces/v1/common.proto",
        "alces/v1/master.proto",
        "alces/v1/chunk.proto",
        "alces/v1/admin.proto",
        "alces/v1/metadata.proto",
        "alces/v1/replication.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .bytes(".alces.v1.WriteRequest.data")
        .bytes(".alces.v1.WriteExtent.data")
        .bytes(".alces.v1.ReadReply.data")
        .bytes(".alces.v1.SnapshotPiece.data")
        .compile_protos(&protos, &["."])?;
    Ok(())
}
