//! Generates the gRPC code from `proto/` at build time, with a protoc shipped as a crate, so the
//! generated code is always in step with the `.proto` files and needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    // Default stubs answer UNIMPLEMENTED for RPCs a server leaves out: the operator's tests
    // serve a fake node that implements only what they need.
    tonic_prost_build::configure().generate_default_stubs(true).compile_protos(
        &["proto/client.proto", "proto/internode.proto", "proto/admin.proto"],
        &["proto"],
    )?;
    Ok(())
}
