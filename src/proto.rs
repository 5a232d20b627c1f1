//! Code generated from proto/ (package loxilight.v1).
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("loxilight.v1");
}

/// The encoded descriptors of our API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("loxilight_descriptor");
