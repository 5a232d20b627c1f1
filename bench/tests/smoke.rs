//! The benchmark suite's smoke run (`loxilight-bench --smoke`): one short
//! round of every phase on real labs, so that `make bench` cannot rot.
//! Asserts that every figure is there and that traffic went through every
//! contender; never how fast. Needs root, like the suite.
use std::path::Path;
use std::process::Command;

use serde_json::Value;

const MODES: [&str; 7] = [
    "loxilight_tc",
    "loxilight_xdp",
    "iptables",
    "nftables",
    "linux_forwarding",
    "ceiling_tc",
    "ceiling_xdp",
];
const TCP_MODES: [&str; 5] = [
    "loxilight_tc",
    "loxilight_xdp",
    "iptables",
    "nftables",
    "linux_forwarding",
];
const NAT_MODES: [&str; 4] = ["loxilight_tc", "loxilight_xdp", "iptables", "nftables"];

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        let next = &v[key];
        assert!(
            !next.is_null(),
            "latest.json has no {path} (stopped at {key})"
        );
        next
    })
}

fn positive(v: &Value, path: &str) {
    let x = get(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number"));
    assert!(x > 0.0, "{path} is {x}: nothing went through");
}

#[test]
fn smoke_run_writes_every_figure() {
    let out = std::env::temp_dir().join(format!("loxilight-bench-smoke-{}", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_loxilight-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running loxilight-bench");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        run.status.success(),
        "loxilight-bench --smoke failed:\n{log}"
    );

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("latest.json")).expect("reading latest.json"),
    )
    .expect("latest.json is JSON");
    let png = std::fs::read(out.join("latest.png")).expect("reading latest.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "latest.png is not a PNG"
    );
    assert!(Path::new(&out.join("latest.md")).exists());

    for key in [
        "kernel",
        "cpu",
        "cpus",
        "tools.trafgen",
        "tools.iptables",
        "tools.nft",
    ] {
        get(&json["system"], key);
    }
    assert_eq!(json["failed_measurements"], 0, "{log}");
    for n in ["1", "100"] {
        for mode in MODES {
            positive(
                &json,
                &format!("results.udp_established_pps.services.{n}.{mode}.median"),
            );
            positive(
                &json,
                &format!("results.udp_new_flows_pps.services.{n}.{mode}.median"),
            );
        }
        for mode in TCP_MODES {
            for m in ["tcp_connections_per_s", "latency_p50_us", "latency_p99_us"] {
                positive(&json, &format!("results.{m}.services.{n}.{mode}.median"));
            }
        }
        for hook in ["tc", "xdp"] {
            for other in ["iptables", "nftables", &format!("ceiling_{hook}")] {
                let r = format!("ratios.udp_new_flows_pps.{n}.loxilight_{hook}/{other}.median");
                positive(&json, &r);
            }
        }
    }
    for tool in ["loxilight_grpc", "iptables_restore", "nft_f"] {
        positive(&json, &format!("program.{tool}.seconds.median"));
    }
    for mode in NAT_MODES {
        positive(
            &json,
            &format!("conntrack.contenders.{mode}.memory.bytes_per_flow"),
        );
        positive(
            &json,
            &format!("conntrack.contenders.{mode}.udp_new_flows_pps.median"),
        );
        positive(
            &json,
            &format!("conntrack.contenders.{mode}.udp_established_pps.median"),
        );
    }
    for hook in ["tc", "xdp"] {
        for case in [
            "floor",
            "new_flow",
            "established",
            "non_vip_forwarded",
            "non_vip_to_linux",
            "firewall_first_packet",
        ] {
            positive(
                &json,
                &format!("micro.hooks.{hook}.{case}.ns_per_packet.median"),
            );
        }
    }
    let targets = get(&json, "targets").as_array().expect("targets is a list");
    assert!(!targets.is_empty());
    for t in targets {
        assert!(t["target"].is_string() && t.get("met").is_some() && t.get("detail").is_some());
    }
    let _ = std::fs::remove_dir_all(&out);
}
