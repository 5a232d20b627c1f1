//! End-to-end protocol tests in a namespace lab: ping to a VIP answered by
//! its endpoints, TCP to every port of a port range, and the SCTP and range
//! rules as loxicmd creates, shows, refuses and deletes them. Needs root.

mod common;

use std::time::Duration;

use common::{cell, parse_table, Lab, HTTP_PORT, VIP};
use serde_json::Value;

fn endpoints(lab: &Lab) -> String {
    format!("--endpoints={}", lab.endpoints_arg())
}

#[test]
fn ping_to_the_vip_is_answered_by_each_endpoint_in_turn() {
    let mut lab = Lab::new("ping");
    lab.start_daemon(&[]);
    // Without a rule nothing answers for the VIP.
    assert!(lab.ping(VIP, 1).is_err(), "the VIP answered without a rule");
    lab.loxicmd_ok(&["create", "lb", VIP, "--icmp", &endpoints(&lab)]);

    let echoes = |lab: &Lab| -> Vec<u64> {
        lab.backends
            .iter()
            .map(|b| lab.icmp_echoes_received(&b.ns))
            .collect()
    };
    let before = echoes(&lab);
    // Each ping (identifier) is a flow: rr sends them to b1, then b2. The
    // replies come back from the VIP.
    for (id, got) in [(0x4c01, [1, 0]), (0x4c02, [1, 1]), (0x4c03, [2, 1])] {
        let from = lab
            .ping(VIP, id)
            .unwrap_or_else(|e| panic!("ping {id:#x} to {VIP}: {e}"));
        assert_eq!(from.to_string(), VIP, "reply source");
        let seen: Vec<u64> = echoes(&lab)
            .iter()
            .zip(&before)
            .map(|(a, b)| a - b)
            .collect();
        assert_eq!(seen, got, "echo requests per backend after ping {id:#x}");
    }
    // The same identifier again is the same flow, on the same endpoint.
    lab.ping(VIP, 0x4c01).expect("ping 0x4c01 again");
    let seen: Vec<u64> = echoes(&lab)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert_eq!(seen, [3, 1]);

    let ct = lab.loxicmd_ok(&["get", "ct", "--proto=icmp", "--state=icmp-est"]);
    assert!(ct.contains("icmp-est"), "{ct}");
    let table = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    assert_eq!(
        (cell(&table[0], "PORT"), cell(&table[0], "PROTO")),
        ("-", "icmp")
    );
    lab.loxicmd_ok(&["delete", "lb", VIP, "--icmp"]);
    assert!(
        lab.ping(VIP, 0x4c04).is_err(),
        "the VIP answered after delete"
    );
}

#[test]
fn tcp_to_every_port_of_a_range_reaches_the_target_port() {
    let mut lab = Lab::new("range");
    lab.start_daemon(&[]);
    let range = format!("--tcp=2020-2023:{HTTP_PORT}");
    lab.loxicmd_ok(&["create", "lb", VIP, &range, &endpoints(&lab)]);

    let mut answers = Vec::new();
    for port in 2020..=2023 {
        let answer = lab
            .http_get(VIP, port)
            .unwrap_or_else(|e| panic!("GET {VIP}:{port}: {e}"));
        answers.push(answer);
    }
    assert_eq!(
        answers,
        ["b1", "b2", "b1", "b2"],
        "rr over the range's ports"
    );
    assert_eq!(
        (lab.backend("b1").http_hits(), lab.backend("b2").http_hits()),
        (2, 2)
    );
    for port in [2019, 2024] {
        assert!(
            lab.http_get_timeout(VIP, port, Duration::from_secs(1))
                .is_err(),
            "port {port} is outside the range"
        );
    }

    // Shown as created; JSON carries the range's end.
    let table = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    assert_eq!(cell(&table[0], "PORT"), "2020-2023");
    let json: Value = serde_json::from_str(&lab.loxicmd_ok(&["get", "lb", "-o", "json"]))
        .expect("get lb -o json");
    let service = &json["loadBalancers"][0]["service"];
    assert_eq!(
        (service["port"].as_u64(), service["portMax"].as_u64()),
        (Some(2020), Some(2023))
    );

    // Overlaps are refused naming the field; the rule set is unchanged.
    let out = lab.loxicmd(&["create", "lb", VIP, "--tcp=2023:80", &endpoints(&lab)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("load_balancer.service.port: 20.20.20.1:2023/tcp overlaps the rule 20.20.20.1:2020-2023/tcp"),
        "{err}"
    );
    let out = lab.loxicmd(&["create", "lb", VIP, "--tcp=2030-2029:80", &endpoints(&lab)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("load_balancer.service.port_max: 2029 is below the first port 2030"),
        "{err}"
    );

    // SCTP: address translation only.
    lab.loxicmd_ok(&["create", "lb", VIP, "--sctp=38412:38412", &endpoints(&lab)]);
    let out = lab.loxicmd(&["create", "lb", VIP, "--sctp=38413:9000", &endpoints(&lab)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("endpoints[0].target_port: SCTP ports are not translated"),
        "{err}"
    );
    let table = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    let protos: Vec<(&str, &str)> = table
        .iter()
        .map(|r| (cell(r, "PORT"), cell(r, "PROTO")))
        .collect();
    assert_eq!(protos, [("2020-2023", "tcp"), ("38412", "sctp")]);

    // The range survives a restart of the daemon.
    lab.stop_daemon();
    lab.start_daemon(&[]);
    assert_eq!(
        lab.http_get(VIP, 2022).expect("GET 2022 after a restart"),
        "b1"
    );

    // A range is deleted as it was written, and takes all its ports along.
    lab.loxicmd_ok(&["delete", "lb", VIP, "--tcp=2020-2023", "--sctp=38412"]);
    assert!(lab
        .http_get_timeout(VIP, 2021, Duration::from_secs(1))
        .is_err());
    let table = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    assert!(table.is_empty(), "{table:?}");
}
