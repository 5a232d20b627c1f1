//! The skeleton that libbpf-cargo generates from bench/bpf/bench.bpf.c.
//! Generated code: the suite uses only some of its accessors.
#![allow(
    clippy::all,
    clippy::pedantic,
    non_camel_case_types,
    unsafe_op_in_unsafe_fn,
    dead_code
)]
include!(concat!(env!("OUT_DIR"), "/bench.skel.rs"));
