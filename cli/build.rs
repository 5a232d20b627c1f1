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
        // `-o json` prints the responses directly and `apply -f` reads what
        // `save` wrote, so the messages carry serde derives; a file may leave
        // out any field, and counters are left out when absent.
        .message_attribute(
            ".loxilight.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = \"camelCase\", default)]",
        )
        .field_attribute(
            ".loxilight.v1.LoadBalancer.counters",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".loxilight.v1.Endpoint.counters",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".loxilight.v1.FirewallRule.counters",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .field_attribute(
            ".loxilight.v1.FirewallOptions.mark",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .compile_protos(&protos, &[PathBuf::from(PROTO_ROOT)])?;
    Ok(())
}
