//! The skeleton that libbpf-cargo generates from bpf/loxilight.bpf.c, with the
//! Rust types of every struct the C code defines.
#![allow(
    clippy::all,
    clippy::pedantic,
    non_camel_case_types,
    unsafe_op_in_unsafe_fn
)]
include!(concat!(env!("OUT_DIR"), "/loxilight.skel.rs"));
