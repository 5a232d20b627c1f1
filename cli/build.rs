use std::path::PathBuf;

const PROTO_DIR: &str = "../proto/loxilight/v1";
const PROTO_ROOT: &str = "../proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the vendored protoc so building the CLI needs no system protobuf install.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);

    let mut protos: Vec<PathBuf> = std::fs::read_dir(PROTO_DIR)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|p| p.extension().is_some_and(|ext| ext == "proto"));
    // Sorted so the generated code does not depend on directory order.
    protos.sort();

    // A directory entry makes cargo rerun when a proto file is added or removed too.
    println!("cargo:rerun-if-changed={PROTO_DIR}");

    tonic_prost_build::configure()
        .build_server(false)
        // `-o json` prints the responses directly, so the messages carry serde derives.
        .message_attribute(
            ".loxilight.v1",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .compile_protos(&protos, &[PathBuf::from(PROTO_ROOT)])?;
    Ok(())
}
