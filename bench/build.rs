//! Builds the suite's reference programs (bpf/bench.bpf.c) into a
//! libbpf-cargo skeleton, with the same clang flags as the datapath.
use std::env;
use std::path::PathBuf;

include!("../bpf/skeleton.rs");

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    build_skeleton("bpf/bench.bpf.c", &out.join("bench.skel.rs"));
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-changed=../bpf/skeleton.rs");
}
