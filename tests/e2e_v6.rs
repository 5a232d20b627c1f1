//! End-to-end IPv6 load balancing (NAT66): loxilight and loxicmd in a
//! namespace lab with Linux forwarding off, real TCP, UDP and pings over
//! IPv6 from the client to two IPv6 backends, at TC and at XDP. Needs root.

mod common;

use std::collections::BTreeMap;

use common::{ct_entries, ct_json, stderr_line, tally, Lab, HTTP_PORT, UDP_PORT};

/// Routed to the LB by the client's default IPv6 route.
const VIP6: &str = "fd00::100";
const PORT: u16 = 2020;

fn lab_with_v6_rules(tag: &str, hook: &str) -> Lab {
    let lab = Lab::forwarding_off(tag, hook);
    // LoxiLB's syntax: the weight follows the last ':'.
    let eps: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!("{}:1", b.ip6))
        .collect();
    let eps = format!("--endpoints={}", eps.join(","));
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP6,
        &format!("--tcp={PORT}:{HTTP_PORT}"),
        &format!("--udp={PORT}:{UDP_PORT}"),
        &eps,
    ]);
    lab.loxicmd_ok(&["create", "lb", VIP6, "--icmp", &eps]);
    lab
}

/// Answers to `n` requests; a first packet may wait for the next hop to be
/// resolved (Linux forwards nothing here), so each gets three tries.
fn answers(n: usize, mut ask: impl FnMut() -> std::io::Result<String>) -> Vec<String> {
    (0..n)
        .map(|i| {
            (0..3)
                .find_map(|_| ask().ok())
                .unwrap_or_else(|| panic!("request {i} to [{VIP6}]:{PORT} got no answer"))
        })
        .collect()
}

fn nat66(hook: &str) {
    let lab = lab_with_v6_rules(&format!("v6{hook}"), hook);
    let http = answers(10, || lab.http_get(VIP6, PORT));
    let want = BTreeMap::from([("b1".to_string(), 5), ("b2".to_string(), 5)]);
    assert_eq!(tally(&http), want, "TCP round robin over IPv6: {http:?}");
    let udp = answers(10, || lab.udp_request(VIP6, PORT, None));
    assert_eq!(tally(&udp), want, "UDP round robin over IPv6: {udp:?}");

    // Pings: the icmp rule hands each identifier's echoes to a backend,
    // whose reply comes back from the VIP.
    let echoes = || -> Vec<u64> {
        lab.backends
            .iter()
            .map(|b| lab.icmp6_echoes_received(&b.ns))
            .collect()
    };
    let before = echoes();
    for id in 0x6c00..0x6c04 {
        let from = (0..3).find_map(|_| lab.ping(VIP6, id).ok());
        assert_eq!(
            from.map(|ip| ip.to_string()).as_deref(),
            Some(VIP6),
            "ping {id:#x}"
        );
    }
    let got: Vec<u64> = echoes().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        got,
        [2, 2],
        "echoes per backend, round robin per identifier"
    );

    // Conntrack lists the IPv6 flows with their translation, filters them
    // by an IPv6 address, and they go with their rule.
    let b1 = &lab.backends[0].ip6;
    let to_b1 = ct_entries(&ct_json(&lab, &["--ip", b1]));
    assert!(!to_b1.is_empty(), "no flow to {b1}");
    let dnat = format!("dnat-[{b1}]:{HTTP_PORT}");
    assert!(
        to_b1.iter().any(|e| e["action"] == dnat.as_str()),
        "{dnat} not in {to_b1:#?}"
    );
    assert!(
        to_b1
            .iter()
            .all(|e| e["srcIp"].as_str().is_some_and(|s| s.contains(':'))),
        "{to_b1:#?}"
    );
    lab.loxicmd_ok(&["delete", "lb", VIP6, &format!("--tcp={PORT}")]);
    let left = ct_entries(&ct_json(&lab, &[]));
    assert!(
        left.iter().all(|e| e["protocol"] != "tcp"),
        "the TCP rule's flows stay: {left:#?}"
    );
    assert!(
        left.iter().any(|e| e["protocol"] == "udp"),
        "the UDP rule's flows went too: {left:#?}"
    );
}

#[test]
fn nat66_tcp_and_udp_at_tc() {
    nat66("tc");
}

#[test]
fn nat66_tcp_and_udp_at_xdp() {
    nat66("xdp");
}

/// A rule's endpoints are of its VIP's family, or all IPv4 for an IPv6 VIP
/// (NAT64); the error names the field.
#[test]
fn mixed_families_are_refused() {
    let mut lab = Lab::new("v6bad");
    lab.start_daemon(&[]);
    for (vip, ep, want) in [
        ("20.20.20.1", "fd77:2::2:1", "endpoints[0].ip"),
        (VIP6, "10.77.2.2:1,fd77:3::2:1", "endpoints[1].ip"),
        (VIP6, "fd77:2::2:1,10.77.3.2:1", "endpoints[1].ip"),
    ] {
        let out = lab.loxicmd(&[
            "create",
            "lb",
            vip,
            "--tcp=80:8080",
            &format!("--endpoints={ep}"),
        ]);
        assert!(!out.status.success(), "{vip} with {ep} was accepted");
        let err = stderr_line(&out);
        assert!(
            err.contains(want) && err.contains("family"),
            "{vip} with {ep}: {err}"
        );
    }
    let out = lab.loxicmd(&[
        "create",
        "lb",
        VIP6,
        "--tcp=80-81:8080",
        "--endpoints=fd77:2::2:1",
    ]);
    assert!(
        stderr_line(&out).contains("port_max"),
        "{}",
        stderr_line(&out)
    );
    let out = lab.loxicmd(&[
        "create",
        "lb",
        VIP6,
        "--tcp=80:80",
        "--endpoints=fd77:2::2:1",
        "--mode=dsr",
        "--select=hash",
    ]);
    let err = stderr_line(&out);
    assert!(
        err.contains("mode: dsr does not apply to an IPv6 VIP"),
        "{err}"
    );
    let rules = lab.loxicmd_ok(&["get", "lb", "-o", "json"]);
    assert!(!rules.contains("fd"), "a refused rule was stored: {rules}");
}
