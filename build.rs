//! Builds the BPF datapath into a libbpf-cargo skeleton and the gRPC API into
//! tonic/prost code. Neither needs anything beyond clang and the UAPI headers.
use std::env;
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    build_bpf(&out);
    build_proto(&out);
}

fn build_bpf(out: &std::path::Path) {
    build_skeleton("bpf/loxilight.bpf.c", &out.join("loxilight.skel.rs"));
    println!("cargo:rerun-if-changed=bpf");
}

include!("bpf/skeleton.rs");

fn build_proto(out: &std::path::Path) {
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc is available");
    // SAFETY-free: build scripts are single threaded, and prost-build reads PROTOC.
    unsafe { env::set_var("PROTOC", protoc) };
    // Every API file, sorted so the output does not depend on directory order.
    let mut protos: Vec<PathBuf> = std::fs::read_dir("proto/loxilight/v1")
        .expect("proto/loxilight/v1 is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    protos.sort();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("loxilight_descriptor.bin"))
        .compile_protos(&protos, &[PathBuf::from("proto")])
        .unwrap_or_else(|e| panic!("compiling proto/ failed: {e}"));
    println!("cargo:rerun-if-changed=proto");
}
