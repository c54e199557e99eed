//! The `herald.v1` gRPC contract as Rust types, generated from `proto/herald/v1/`, and the
//! `herald.proxy.v1` backend-hook contract (`proto/herald/proxy/v1/`).
//!
//! Only this crate knows protobuf; the rest of Herald converts at the control-plane boundary
//! (and at the hook boundary, in herald-hooks).

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Generated messages, client and server of package `herald.v1`.
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// Generated messages, client and server of package `herald.proxy.v1`: the backend hooks.
/// Herald uses the client (herald-hooks); an application implements the server
/// (`proxy::v1::herald_proxy_server::HeraldProxy`).
pub mod proxy {
    /// Version 1 of the hook contract (docs/hooks.md).
    pub mod v1 {
        tonic::include_proto!("herald.proxy.v1");
    }
}

/// The encoded `FileDescriptorSet` of `herald.proxy.v1`, for reflection in an application's
/// hook server (kept apart from [`FILE_DESCRIPTOR_SET`]: Herald does not serve it).
pub const PROXY_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_proxy_descriptor.bin"));

/// The encoded `FileDescriptorSet` of `herald.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));
