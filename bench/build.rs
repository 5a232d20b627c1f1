//! Builds the suite's reference programs (bpf/bench.bpf.c) into a
//! libbpf-cargo skeleton, with the same clang flags as the datapath.
use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("target arch is set by cargo");
    // Debian keeps asm/ headers under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    SkeletonBuilder::new()
        .source("bpf/bench.bpf.c")
        .clang_args([
            "-O2",
            "-g",
            "-mcpu=v3",
            "-Wall",
            "-Werror",
            multiarch.as_str(),
        ])
        .build_and_generate(out.join("bench.skel.rs"))
        .unwrap_or_else(|e| panic!("building bench/bpf/bench.bpf.c failed: {e:#}"));
    println!("cargo:rerun-if-changed=bpf");
}
