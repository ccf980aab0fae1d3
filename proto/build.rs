//! Compiles `lazyxds/v1/edges.proto` with protox (pure Rust), so no system `protoc` is
//! needed on any machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "lazyxds/v1/edges.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
