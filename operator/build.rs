//! Generates the admin API's gRPC client from the node's `admin.proto` (the source of truth for
//! the contract with `dynamo-node`), with a protoc shipped as a crate: no system protoc needed,
//! and no dependency on the `dynamo-node` crate (which builds RocksDB).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=../node/proto/admin.proto");
    // The server half is generated too: tests serve a fake node with it. Default stubs answer
    // UNIMPLEMENTED for the RPCs a fake leaves out, so RPCs the node adds later need no change
    // here.
    tonic_prost_build::configure()
        .generate_default_stubs(true)
        .compile_protos(&["../node/proto/admin.proto"], &["../node/proto"])?;
    Ok(())
}
