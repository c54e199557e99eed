//! Compiles `proto/herald/v1/*.proto` and `proto/herald/proxy/v1/*.proto` with protox (pure
//! Rust: no protoc needed).
//!
//! The two are compiled separately: `herald.v1` is what Herald serves (its descriptor set feeds
//! server reflection), `herald.proxy.v1` is what an application serves to Herald's backend
//! hooks, so it stays out of Herald's reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    let file = root.join("herald/v1/herald.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    std::fs::write(
        out.join("herald_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    let proxy = root.join("herald/proxy/v1/proxy.proto");
    println!("cargo:rerun-if-changed={}", proxy.display());
    let fds = protox::compile([&proxy], [&root])?;
    std::fs::write(
        out.join("herald_proxy_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // No `HeraldProxyClient::connect(dst)` constructor: it would collide with the `Connect`
    // RPC's method; build the client with `HeraldProxyClient::new(channel)`.
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
