//! End-to-end tests: loxilight and loxicmd in a namespace lab, with real TCP and UDP
//! traffic from a client namespace to two backend namespaces. Needs root.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{cell, parse_table, tally, Lab, CLIENT_IP, HTTP_PORT, UDP_PORT, VIP};
use serde_json::Value;

/// The load balancer's external port for both protocols.
const PORT: u16 = 2020;

fn tcp_map() -> String {
    format!("--tcp={PORT}:{HTTP_PORT}")
}

fn udp_map() -> String {
    format!("--udp={PORT}:{UDP_PORT}")
}

/// A lab with the daemon running and one `create lb` done with `args`.
fn lab_with_rule(tag: &str, args: &[&str]) -> Lab {
    let mut lab = Lab::new(tag);
    lab.start_daemon(&[]);
    let endpoints = format!("--endpoints={}", lab.endpoints_arg());
    let mut cmd = vec!["create", "lb", VIP];
    cmd.extend_from_slice(args);
    cmd.push(&endpoints);
    lab.loxicmd_ok(&cmd);
    lab
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

#[test]
fn lab_forwards_plain_traffic_without_daemon() {
    let lab = Lab::new("fwd");
    for b in &lab.backends {
        assert_eq!(lab.http_get(&b.ip, HTTP_PORT).unwrap(), b.name);
        assert_eq!(lab.udp_request(&b.ip, UDP_PORT, None).unwrap(), b.name);
        assert_eq!((b.http_hits(), b.udp_hits()), (1, 1), "{}", b.name);
    }
    // Without a rule the VIP leads nowhere.
    assert!(lab
        .http_get_timeout(VIP, PORT, Duration::from_secs(1))
        .is_err());
}

#[test]
fn tcp_round_robin_alternates_between_backends() {
    let lab = lab_with_rule("rr", &[&tcp_map()]);
    let answers: Vec<String> = (0..20)
        .map(|i| {
            lab.http_get(VIP, PORT)
                .unwrap_or_else(|e| panic!("request {i} to {VIP}:{PORT}: {e}"))
        })
        .collect();
    let counts = tally(&answers);
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 10), ("b2".into(), 10)]),
        "{answers:?}"
    );
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "rr must alternate: {answers:?}"
    );
    assert_eq!(
        (lab.backend("b1").http_hits(), lab.backend("b2").http_hits()),
        (10, 10)
    );

    // Traffic that is not for the VIP is forwarded untouched.
    assert_eq!(lab.http_get("10.77.3.2", HTTP_PORT).unwrap(), "b2");
}

#[test]
fn udp_round_robin_uses_both_backends() {
    let lab = lab_with_rule("udp", &[&udp_map()]);
    let answers: Vec<String> = (0..10)
        .map(|i| {
            lab.udp_request(VIP, PORT, None)
                .unwrap_or_else(|e| panic!("UDP request {i} to {VIP}:{PORT}: {e}"))
        })
        .collect();
    let counts = tally(&answers);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        ["b1", "b2"],
        "{answers:?}"
    );
    assert_eq!(
        lab.backend("b1").udp_hits() + lab.backend("b2").udp_hits(),
        10
    );
}

#[test]
fn hash_selection_is_sticky_per_flow() {
    let lab = lab_with_rule("hash", &[&udp_map(), "--select=hash"]);

    let fixed: Vec<String> = (0..6)
        .map(|_| lab.udp_request(VIP, PORT, Some(40000)).unwrap())
        .collect();
    assert_eq!(
        tally(&fixed).len(),
        1,
        "one source port, one backend: {fixed:?}"
    );

    let mut chosen = BTreeMap::new();
    for src in 41000..41016u16 {
        let first = lab.udp_request(VIP, PORT, Some(src)).unwrap();
        let again = lab.udp_request(VIP, PORT, Some(src)).unwrap();
        assert_eq!(first, again, "source port {src} moved between backends");
        chosen.insert(src, first);
    }
    let used = tally(&chosen.into_values().collect::<Vec<_>>());
    assert_eq!(used.keys().collect::<Vec<_>>(), ["b1", "b2"], "{used:?}");
}

#[test]
fn conntrack_and_counters_show_the_flows() {
    let lab = lab_with_rule("ct", &[&tcp_map(), &udp_map()]);
    for _ in 0..4 {
        lab.http_get(VIP, PORT).unwrap();
        lab.udp_request(VIP, PORT, None).unwrap();
    }

    // Table: client -> VIP rows with traffic, for both protocols.
    let table = lab.loxicmd_ok(&["get", "ct"]);
    let rows = parse_table(&table);
    for proto in ["tcp", "udp"] {
        assert!(
            rows.iter().any(|r| cell(r, "SRC IP") == CLIENT_IP
                && cell(r, "DEST IP") == VIP
                && cell(r, "PROTO") == proto
                && cell(r, "PACKETS").parse::<u64>().unwrap_or(0) > 0),
            "no {proto} flow {CLIENT_IP} -> {VIP} with packets in:\n{table}"
        );
    }

    // JSON: the same, and the backends appear (as NAT targets or reply sources).
    let text = lab.loxicmd_ok(&["get", "ct", "-o", "json"]);
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"));
    let entries = value["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries array in:\n{text}"));
    let str_of = |e: &Value, f: &str| e[f].as_str().unwrap_or("").to_owned();
    let client_flows: Vec<&Value> = entries
        .iter()
        .filter(|e| str_of(e, "srcIp") == CLIENT_IP && str_of(e, "destIp") == VIP)
        .collect();
    assert!(!client_flows.is_empty(), "no client flow in:\n{text}");
    for e in &client_flows {
        let packets = e["packets"].as_u64().unwrap_or(0);
        let bytes = e["bytes"].as_u64().unwrap_or(0);
        assert!(packets > 0 && bytes > 0, "idle flow {e:?}");
        assert_eq!(e["destPort"].as_u64(), Some(PORT as u64));
        assert!(
            ["tcp", "udp"].contains(&str_of(e, "protocol").as_str()),
            "{e:?}"
        );
        assert!(!str_of(e, "state").is_empty(), "{e:?}");
    }
    for b in &lab.backends {
        assert!(
            text.contains(&b.ip),
            "backend {} not in conntrack:\n{text}",
            b.ip
        );
    }

    // get lb -o wide: the rule row and each endpoint row carry traffic.
    let wide = lab.loxicmd_ok(&["get", "lb", "-o", "wide"]);
    let mut rule = String::new();
    let mut seen = Vec::new();
    for row in parse_table(&wide) {
        let packets: u64 = cell(&row, "PACKETS").parse().unwrap_or(0);
        if !cell(&row, "EXT IP").is_empty() {
            rule = format!(
                "{}:{}/{}",
                cell(&row, "EXT IP"),
                cell(&row, "PORT"),
                cell(&row, "PROTO")
            );
            assert!(packets > 0, "rule {rule} has no packets:\n{wide}");
        } else {
            let endpoint = cell(&row, "ENDPOINT").to_owned();
            assert!(
                packets > 0,
                "{rule} endpoint {endpoint} has no packets:\n{wide}"
            );
            seen.push(format!("{rule} {endpoint}"));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "20.20.20.1:2020/tcp 10.77.2.2",
            "20.20.20.1:2020/tcp 10.77.3.2",
            "20.20.20.1:2020/udp 10.77.2.2",
            "20.20.20.1:2020/udp 10.77.3.2",
        ],
        "{wide}"
    );
}

#[test]
fn delete_removes_only_that_protocols_rule() {
    let lab = lab_with_rule("del", &[&tcp_map(), &udp_map()]);
    assert!(lab.http_get(VIP, PORT).is_ok());
    assert!(lab.udp_request(VIP, PORT, None).is_ok());

    lab.loxicmd_ok(&["delete", "lb", VIP, &format!("--tcp={PORT}")]);

    for _ in 0..3 {
        let start = Instant::now();
        let result = lab.http_get_timeout(VIP, PORT, Duration::from_secs(1));
        assert!(result.is_err(), "deleted rule still answers: {result:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }
    let answer = lab.udp_request(VIP, PORT, None).unwrap();
    assert!(["b1", "b2"].contains(&answer.as_str()), "{answer}");

    let rules = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    let listed: Vec<String> = rules
        .iter()
        .map(|r| {
            format!(
                "{}:{}/{}",
                cell(r, "EXT IP"),
                cell(r, "PORT"),
                cell(r, "PROTO")
            )
        })
        .collect();
    assert_eq!(listed, ["20.20.20.1:2020/udp"]);
}

#[test]
fn bad_input_is_refused_with_one_line() {
    let mut lab = lab_with_rule("bad", &[&tcp_map()]);
    // Command lines (split on spaces) and what the error must mention.
    let eps = "--endpoints=10.77.2.2:1,10.77.3.2:1";
    let cases = [
        (
            format!("create lb 300.1.1.1 --tcp=2020:8080 {eps}"),
            "300.1.1.1",
        ),
        (format!("create lb {VIP} --tcp=0:8080 {eps}"), "port"),
        (format!("create lb {VIP} --tcp=70000:8080 {eps}"), "70000"),
        (format!("create lb {VIP} --tcp=3030:0 {eps}"), "port"),
        (
            format!("create lb {VIP} --tcp=3030:8080 --endpoints="),
            "endpoint",
        ),
        (
            format!("create lb {VIP} --tcp=3030:8080 --endpoints=10.77.2.300:1"),
            "10.77.2.300",
        ),
        (
            format!("create lb {VIP} --tcp=3030:8080 {eps} --select=foo"),
            "foo",
        ),
        (format!("create lb {VIP} --tcp=2020:8080 {eps}"), "exist"),
        (format!("delete lb {VIP} --tcp=3030"), "not found"),
    ];
    for (line, needle) in &cases {
        let args: Vec<&str> = line.split_whitespace().collect();
        let out = lab.loxicmd(&args);
        let err = stderr_of(&out);
        assert!(!out.status.success(), "loxicmd {args:?} succeeded");
        assert_eq!(
            err.lines().count(),
            1,
            "loxicmd {args:?}: not one line:\n{err}"
        );
        assert!(
            err.to_lowercase().contains(*needle),
            "loxicmd {args:?}: {err:?} does not mention {needle:?}"
        );
    }

    // Leaving out --endpoints altogether is a usage error naming the flag.
    let out = lab.loxicmd(&["create", "lb", VIP, "--tcp=3030:8080"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("--endpoints"),
        "{}",
        stderr_of(&out)
    );

    assert!(lab.daemon_alive(), "the daemon died on bad input");
    let rules = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    assert_eq!(rules.len(), 1, "only the good rule exists: {rules:?}");
    assert!(["b1", "b2"].contains(&lab.http_get(VIP, PORT).unwrap().as_str()));
}

#[test]
fn startup_fails_on_unknown_interface() {
    let lab = Lab::with_backends("ifc", 1);
    let out = lab.run_daemon_to_exit(&["--interfaces", "nosuch0"]);
    let err = stderr_of(&out);
    assert!(
        !out.status.success(),
        "loxilight started with --interfaces nosuch0"
    );
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    assert!(
        err.contains("nosuch0"),
        "{err:?} does not name the interface"
    );
}

#[test]
fn startup_fails_when_port_in_use() {
    let lab = Lab::with_backends("port", 1);
    let _holder = lab.in_ns(&lab.lb, || {
        std::net::TcpListener::bind(("127.0.0.1", common::API_PORT)).expect("holding the API port")
    });
    let out = lab.run_daemon_to_exit(&[]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "loxilight started on a taken port");
    assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("11111") || lower.contains("in use"),
        "{err:?} does not say the port is taken"
    );
}

#[test]
fn daemon_serves_custom_port_and_exits_on_sigterm() {
    let mut lab = Lab::with_backends("term", 1);
    lab.start_daemon(&["--listen", "127.0.0.1:12345"]);
    let endpoints = format!("--endpoints={}:1", lab.backends[0].ip);
    lab.loxicmd_ok(&["create", "lb", VIP, &tcp_map(), &endpoints]);
    assert_eq!(lab.http_get(VIP, PORT).unwrap(), "b1");
    assert!(lab.daemon_alive());
    let status = lab.stop_daemon().expect("daemon was running");
    assert!(
        status.success(),
        "loxilight exited with {status} on SIGTERM"
    );
}

/// The TC filters on `dev`'s ingress in the LB namespace, as `tc` shows them.
fn ingress_filters(lab: &Lab, dev: &str) -> String {
    let out = Command::new("tc")
        .args(["-n", &lab.lb, "filter", "show", "dev", dev, "ingress"])
        .output()
        .expect("running tc");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn interfaces_that_appear_later_get_the_datapath() {
    let mut lab = Lab::new("late");
    lab.start_daemon(&[]);
    assert!(ingress_filters(&lab, "veth-c").contains("ll_tc_ingress"));

    let status = Command::new("ip")
        .args([
            "-n", &lab.lb, "link", "add", "late0", "type", "veth", "peer", "name", "late1",
        ])
        .status()
        .expect("running ip");
    assert!(status.success(), "adding a veth pair in the LB namespace");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ingress_filters(&lab, "late0").contains("ll_tc_ingress") {
        assert!(
            Instant::now() < deadline,
            "late0 never got the datapath:\n{}",
            lab.daemon_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ingress_filters(&lab, "late1").contains("ll_tc_ingress"));
    assert!(lab.daemon_alive());
}

#[test]
fn named_interfaces_limit_where_the_datapath_runs() {
    let mut lab = Lab::new("named");
    lab.start_daemon(&["--interfaces", "veth-c,veth-b1"]);
    let f = ingress_filters(&lab, "veth-c");
    assert!(f.contains("ll_tc_ingress"), "{f}\n{}", lab.daemon_log());
    assert!(ingress_filters(&lab, "veth-b1").contains("ll_tc_ingress"));
    assert!(!ingress_filters(&lab, "veth-b2").contains("ll_tc_ingress"));
}

#[test]
fn every_selection_algorithm_carries_real_traffic() {
    // persist: one client, one backend, whatever its source ports.
    let lab = lab_with_rule(
        "persist",
        &["--tcp=2020:8080", "--select=persist", "--inatimeout=60"],
    );
    let answers: Vec<String> = (0..10).map(|_| lab.http_get(VIP, PORT).unwrap()).collect();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    drop(lab);

    // priority: in the ratio of the weights (3:1 here).
    let mut lab = Lab::new("priority");
    lab.start_daemon(&[]);
    let eps = format!(
        "--endpoints={}:3,{}:1",
        lab.backends[0].ip, lab.backends[1].ip
    );
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        "--tcp=2020:8080",
        "--select=priority",
        &eps,
    ]);
    let answers: Vec<String> = (0..40).map(|_| lab.http_get(VIP, PORT).unwrap()).collect();
    let b1 = tally(&answers).get("b1").copied().unwrap_or(0);
    assert!(
        (22..=38).contains(&b1),
        "b1 served {b1} of 40 with weight 3 of 4"
    );
    drop(lab);

    // maglev and lc over UDP: every request answered, both backends used.
    for select in ["maglev", "lc"] {
        let lab = lab_with_rule(select, &["--udp=2020:9000", &format!("--select={select}")]);
        let answers: Vec<String> = (0..16)
            .map(|p| lab.udp_request(VIP, PORT, Some(42000 + p)).unwrap())
            .collect();
        let counts = tally(&answers);
        assert_eq!(counts.len(), 2, "{select}: {counts:?}");
        if select == "lc" {
            assert_eq!(
                counts.values().copied().collect::<Vec<_>>(),
                [8, 8],
                "lc evens out"
            );
        }
        let table = lab.loxicmd_ok(&["get", "lb"]);
        assert!(table.contains(&format!("| {select} ")), "{table}");
    }
}
