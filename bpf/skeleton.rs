// Included (include!) by the build scripts of the workspace's crates, so
// that every BPF object is built with the same clang flags.

/// Builds the BPF program `source` into a libbpf-cargo skeleton at `out`.
fn build_skeleton(source: &str, out: &std::path::Path) {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("target arch is set by cargo");
    // Debian keeps asm/ headers under the multiarch include directory.
    let multiarch = format!("-I/usr/include/{arch}-linux-gnu");
    libbpf_cargo::SkeletonBuilder::new()
        .source(source)
        .clang_args([
            "-O2",
            "-g",
            "-mcpu=v3",
            "-Wall",
            "-Werror",
            multiarch.as_str(),
        ])
        .build_and_generate(out)
        .unwrap_or_else(|e| panic!("building {source} failed: {e:#}"));
}
