//! The `herald.v1` gRPC contract as Rust types, generated from `proto/herald/v1/`.
//!
//! Only this crate knows protobuf; the rest of Herald converts at the control-plane boundary.

#![allow(missing_docs, unreachable_pub, clippy::all)]

/// Generated messages, client and server of package `herald.v1`.
pub mod v1 {
    tonic::include_proto!("herald.v1");
}

/// The encoded `FileDescriptorSet` of every Herald proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/herald_descriptor.bin"));
