//! The stateful firewall end to end: rules made with the real loxicmd against
//! the real daemon (validation, create/list/delete, persistence, apply), and
//! real traffic through the datapath between the lab's namespaces (allow and
//! drop by prefix, ports and protocol, preference, statefulness, SNAT and
//! masquerade, thousands of rules, the default policy, trap to iptables).
//! Needs root (namespace labs).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{ct_entries, ct_json, stderr_line, Lab, API_PORT, CLIENT_IP, HTTP_PORT, UDP_PORT};
use loxilight::proto::v1 as pb;
use loxilight::proto::v1::firewall_service_client::FirewallServiceClient;
use serde_json::Value;
use tonic::Code;

/// `--firewallRule=...`.
fn rule(spec: &str) -> String {
    format!("--firewallRule={spec}")
}

fn create(lab: &Lab, spec: &str, action: &[&str]) {
    let r = rule(spec);
    let mut args = vec!["create", "firewall", r.as_str()];
    args.extend_from_slice(action);
    lab.loxicmd_ok(&args);
}

/// The refusal of `loxicmd ARGS`: its one stderr line (the command failed).
fn refused(lab: &Lab, args: &[&str]) -> String {
    let out = lab.loxicmd(args);
    assert!(
        !out.status.success(),
        "loxicmd {args:?} succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err
}

fn rules_json(lab: &Lab) -> Value {
    serde_json::from_str(&lab.loxicmd_ok(&["get", "firewall", "-o", "json"])).unwrap()
}

fn rule_count(lab: &Lab) -> usize {
    rules_json(lab)["firewallRules"]
        .as_array()
        .map_or(0, |a| a.len())
}

#[test]
fn bad_firewall_rules_are_refused_naming_the_field() {
    let mut lab = Lab::new("fwbad");
    lab.start_daemon(&[]);
    let cases = [
        (
            "sourceIP:1.2.3,preference:1",
            "firewall_rule.match.source_ip",
        ),
        (
            "destinationIP:10.0.0.1/33,preference:1",
            "firewall_rule.match.destination_ip",
        ),
        (
            "sourceIP:10.1.2.3/16",
            "firewall_rule.match.source_ip: \"10.1.2.3/16\" has host bits set",
        ),
        (
            "protocol:6,minDestinationPort:65536",
            "firewall_rule.match.min_destination_port: port 65536 is out of range",
        ),
        (
            "protocol:17,minSourcePort:100,maxSourcePort:99",
            "firewall_rule.match.min_source_port: 100 is above",
        ),
        (
            "minDestinationPort:80",
            "firewall_rule.match.min_destination_port: a port range needs protocol",
        ),
        ("protocol:256", "firewall_rule.match.protocol"),
        (
            "portName:nosuch0",
            "firewall_rule.match.port_name: no interface \"nosuch0\"",
        ),
        (
            "sourceIP:10.0.0.0/8,destinationIP:fd00::/8",
            "firewall_rule.match.destination_ip",
        ),
    ];
    for (spec, field) in cases {
        let err = refused(&lab, &["create", "firewall", &rule(spec), "--drop"]);
        assert!(err.contains(field), "{spec}: {err}");
    }
    let err = refused(
        &lab,
        &[
            "create",
            "firewall",
            &rule("sourceIP:10.0.0.0/8"),
            "--snat=fd00::1",
        ],
    );
    assert!(err.contains("firewall_rule.options.snat_ip"), "{err}");
    let err = refused(
        &lab,
        &[
            "create",
            "firewall",
            &rule("preference:1"),
            "--redirect=nosuch0",
        ],
    );
    assert!(err.contains("firewall_rule.options.redirect"), "{err}");
    // Syntax is loxicmd's to refuse, naming the flag.
    let err = refused(
        &lab,
        &["create", "firewall", &rule("srcIP:1.2.3.4"), "--drop"],
    );
    assert!(
        err.contains("--firewallRule") && err.contains("unknown key"),
        "{err}"
    );
    let out = lab.loxicmd(&[
        "create",
        "firewall",
        &rule("preference:1"),
        "--allow",
        "--drop",
    ]);
    assert!(!out.status.success(), "two actions were taken");
    assert_eq!(rule_count(&lab), 0, "a refused rule was kept");
}

/// Runs `f` with a gRPC client of the daemon's FirewallService, from the
/// LB namespace (the daemon listens on its loopback).
fn with_api<T: Send>(
    lab: &Lab,
    f: impl AsyncFnOnce(&mut FirewallServiceClient<tonic::transport::Channel>) -> T + Send,
) -> T {
    lab.in_ns(&lab.lb, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let mut c = FirewallServiceClient::connect(format!("http://127.0.0.1:{API_PORT}"))
                .await
                .expect("connecting to the API");
            f(&mut c).await
        })
    })
}

fn api_rule(m: pb::FirewallMatch, o: pb::FirewallOptions) -> pb::CreateFirewallRuleRequest {
    pb::CreateFirewallRuleRequest {
        firewall_rule: Some(pb::FirewallRule {
            r#match: Some(m),
            options: Some(o),
            counters: None,
        }),
    }
}

#[test]
fn the_api_answers_with_the_lb_apis_status_codes() {
    let mut lab = Lab::new("fwgrpc");
    lab.start_daemon(&[]);
    let m = pb::FirewallMatch {
        source_ip: "10.8.0.0/16".into(),
        preference: 7,
        ..Default::default()
    };
    let drop = pb::FirewallOptions {
        drop: true,
        ..Default::default()
    };
    let statuses = with_api(&lab, async |c| {
        let mut got = Vec::new();
        let mut status = |r: Result<_, tonic::Status>| {
            let s = r.err().unwrap_or_else(|| tonic::Status::ok(""));
            got.push((s.code(), s.message().to_owned()));
        };
        status(
            c.create_firewall_rule(api_rule(m.clone(), drop.clone()))
                .await
                .map(|_| ()),
        );
        status(
            c.create_firewall_rule(api_rule(m.clone(), drop.clone()))
                .await
                .map(|_| ()),
        );
        let bad = pb::FirewallMatch {
            source_ip: "10.8.0.0/33".into(),
            ..m.clone()
        };
        status(
            c.create_firewall_rule(api_rule(bad, drop.clone()))
                .await
                .map(|_| ()),
        );
        let none = pb::FirewallOptions::default();
        status(
            c.create_firewall_rule(api_rule(m.clone(), none))
                .await
                .map(|_| ()),
        );
        let two = pb::FirewallOptions {
            allow: true,
            ..drop.clone()
        };
        status(
            c.create_firewall_rule(api_rule(m.clone(), two))
                .await
                .map(|_| ()),
        );
        let missing = pb::CreateFirewallRuleRequest {
            firewall_rule: Some(pb::FirewallRule {
                r#match: Some(m.clone()),
                ..Default::default()
            }),
        };
        status(c.create_firewall_rule(missing).await.map(|_| ()));
        let other = pb::FirewallMatch {
            preference: 8,
            ..m.clone()
        };
        let delete = pb::DeleteFirewallRuleRequest {
            r#match: Some(other),
        };
        status(c.delete_firewall_rule(delete).await.map(|_| ()));
        let list = c
            .list_firewall_rules(pb::ListFirewallRulesRequest {})
            .await
            .expect("ListFirewallRules")
            .into_inner();
        assert_eq!(list.firewall_rules.len(), 1);
        assert_eq!(list.default_policy, "allow");
        got
    });
    let expected = [
        (Code::Ok, ""),
        (Code::AlreadyExists, "already exists"),
        (Code::InvalidArgument, "firewall_rule.match.source_ip: "),
        (
            Code::InvalidArgument,
            "firewall_rule.options: needs an action",
        ),
        (
            Code::InvalidArgument,
            "firewall_rule.options: has 2 actions (allow, drop)",
        ),
        (Code::InvalidArgument, "firewall_rule.options: is required"),
        (Code::NotFound, "not found"),
    ];
    assert_eq!(statuses.len(), expected.len());
    for ((code, msg), (want, text)) in statuses.iter().zip(expected) {
        assert!(
            *code == want && msg.contains(text),
            "{code:?} {msg:?}, expected {want:?} with {text:?}"
        );
    }
}

#[test]
fn a_rule_set_too_large_is_resource_exhausted_and_the_old_one_stays() {
    let mut lab = Lab::new("fwfull");
    lab.start_daemon(&[]);
    create(&lab, "sourceIP:10.8.0.0/16,preference:7", &["--drop"]);
    let rules: Vec<pb::FirewallRule> = (0..=loxilight::datapath::FW_MAX_RULES as u32)
        .map(|i| pb::FirewallRule {
            r#match: Some(pb::FirewallMatch {
                source_ip: format!("172.{}.{}.{}/32", 16 + i / 65536, i / 256 % 256, i % 256),
                preference: i,
                ..Default::default()
            }),
            options: Some(pb::FirewallOptions {
                drop: true,
                ..Default::default()
            }),
            counters: None,
        })
        .collect();
    let status = with_api(&lab, async |c| {
        let req = pb::ApplyFirewallRulesRequest {
            firewall_rules: rules,
            dry_run: false,
        };
        c.apply_firewall_rules(req).await.err()
    })
    .expect("an apply beyond the datapath's capacity succeeded");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let json = rules_json(&lab);
    assert_eq!(rule_count(&lab), 1, "the old rule set is gone: {json}");
    // The ids the refused apply took are free again.
    create(&lab, "sourceIP:10.9.0.0/16,preference:8", &["--drop"]);
    assert_eq!(rule_count(&lab), 2);
}

#[test]
fn firewall_rules_are_created_listed_deleted_and_survive_a_restart() {
    let mut lab = Lab::new("fwcrud");
    lab.start_daemon(&[]);
    let drop = "sourceIP:10.9.0.0/16,destinationIP:10.77.2.2/32,protocol:6,\
                minDestinationPort:8000,maxDestinationPort:8100,portName:veth-c,preference:200";
    create(&lab, drop, &["--drop", "--record"]);
    create(
        &lab,
        "sourceIP:fd77:1::/64,protocol:17,minDestinationPort:53,preference:10",
        &["--allow", "--setmark=7"],
    );
    create(&lab, "sourceIP:10.9.0.0/16,preference:5", &["--trap"]);
    // Identical match and preference: a duplicate. Another preference: another rule.
    let err = refused(&lab, &["create", "firewall", &rule(drop), "--allow"]);
    assert!(err.contains("already exists"), "{err}");
    create(
        &lab,
        &drop.replace("preference:200", "preference:201"),
        &["--trap"],
    );
    assert_eq!(rule_count(&lab), 4);

    let table = lab.loxicmd_ok(&["get", "firewall"]);
    let rows = common::parse_table(&table);
    let prefs: Vec<&str> = rows.iter().map(|r| common::cell(r, "PREF")).collect();
    assert_eq!(prefs, ["201", "200", "10", "5"], "highest preference first");
    assert_eq!(common::cell(&rows[1], "ACTION"), "drop record");
    assert_eq!(common::cell(&rows[1], "DPORT"), "8000-8100");
    assert_eq!(common::cell(&rows[2], "ACTION"), "allow setmark=7");
    assert_eq!(common::cell(&rows[3], "ACTION"), "trap");
    assert!(table.contains("Default policy: allow"), "{table}");
    let json = rules_json(&lab);
    let first = &json["firewallRules"][1];
    assert_eq!(first["match"]["portName"], "veth-c");
    assert_eq!(first["counters"]["packets"], 0);

    // The same match deletes; a match that is not there is NOT_FOUND.
    lab.loxicmd_ok(&["delete", "firewall", &rule(&drop.replace("200", "201"))]);
    let err = refused(
        &lab,
        &["delete", "firewall", &rule(&drop.replace("200", "201"))],
    );
    assert!(err.contains("not found"), "{err}");
    assert_eq!(rule_count(&lab), 3);

    let metrics = lab
        .http_get_in(&lab.lb, "127.0.0.1:11112".parse().unwrap(), "/metrics")
        .unwrap();
    assert!(
        metrics.contains("\nloxilight_firewall_rules 3\n"),
        "{metrics}"
    );
    let series = "loxilight_firewall_rule_packets_total{rule=\"sourceIP:10.9.0.0/16,\
                  destinationIP:10.77.2.2/32,minDestinationPort:8000,maxDestinationPort:8100,\
                  protocol:6,portName:veth-c,preference:200\",action=\"drop\"} ";
    assert!(metrics.contains(series), "no {series} in:\n{metrics}");

    // A change the state file cannot take is undone: the old rules stay.
    let tmp = lab.state_dir().join("state.json.tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let err = refused(
        &lab,
        &["create", "firewall", &rule("preference:77"), "--drop"],
    );
    assert!(err.contains("state file"), "{err}");
    std::fs::remove_dir(&tmp).unwrap();
    assert_eq!(rule_count(&lab), 3, "a rule that was not saved is in force");

    let before = rules_json(&lab);
    lab.stop_daemon();
    let state = std::fs::read_to_string(lab.state_dir().join("state.json")).unwrap();
    assert!(state.contains("\"version\": 2"), "{state}");
    lab.start_daemon(&[]);
    assert_eq!(
        rules_json(&lab),
        before,
        "the rules changed across a restart"
    );

    // save, then apply an edited file: one rule goes, one comes, one changes.
    let file = lab.state_dir().with_file_name("rules.json");
    let f = file.to_str().unwrap();
    lab.loxicmd_ok(&["save", "-f", f]);
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let fw = saved["firewallRules"].as_array_mut().unwrap();
    assert_eq!(fw.len(), 3);
    assert!(fw[0].get("counters").is_none(), "save writes no counters");
    fw[0]["options"] = serde_json::json!({"allow": true});
    fw[2]["match"]["preference"] = 6.into();
    std::fs::write(&file, saved.to_string()).unwrap();
    let dry = lab.loxicmd_ok(&["apply", "-f", f, "--dry-run"]);
    assert!(
        dry.contains("firewall: 1 created, 1 updated, 1 deleted, 1 unchanged (would be changed)"),
        "{dry}"
    );
    lab.loxicmd_ok(&["apply", "-f", f]);
    let prefs: Vec<u64> = rules_json(&lab)["firewallRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["match"]["preference"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(prefs, [200, 10, 6]);
    // A bad rule refuses the whole file, naming it, and nothing changes.
    saved["firewallRules"][1]["match"]["sourceIp"] = "10.1.2.3/8".into();
    std::fs::write(&file, saved.to_string()).unwrap();
    let err = refused(&lab, &["apply", "-f", f]);
    assert!(err.contains("firewall_rules[1].match.source_ip"), "{err}");
    assert_eq!(rule_count(&lab), 3);
}

#[test]
fn rules_follow_their_interface_as_it_goes_and_comes_back() {
    let mut lab = Lab::new("fwiface");
    lab.start_daemon(&[]);
    let lb = lab.lb.clone();
    common::ip(&format!(
        "-n {lb} link add fwdummy0 type veth peer name fwdummy1"
    ));
    // The mirror has to see the interface before a rule may name it.
    let spec = "portName:fwdummy0,preference:3";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab
        .loxicmd(&["create", "firewall", &rule(spec), "--drop"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new interface never became known"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let reprogrammed = |lab: &Lab| {
        lab.daemon_log()
            .matches("firewall reprogrammed after an interface change")
            .count()
    };
    let before = reprogrammed(&lab);
    common::ip(&format!("-n {lb} link del fwdummy0"));
    common::ip(&format!(
        "-n {lb} link add fwdummy0 type veth peer name fwdummy1"
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reprogrammed(&lab) < before + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the firewall was not reprogrammed when fwdummy0 went and came back:\n{}",
            lab.daemon_log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The rule stays, by name, whatever the interface's index.
    assert_eq!(rule_count(&lab), 1);
}

/// Bounds every connection attempt of the traffic tests, those expected to
/// fail included. Above 1 s: with Linux forwarding off, the first SYN to a
/// next hop not resolved yet is lost and sent again 1 s later.
const BLOCKED: Duration = Duration::from_secs(2);

/// Starts the daemon, checks that the client reaches every backend, and
/// so has the LB resolve their neighbours (and the client's) before any
/// attempt is bounded by [`BLOCKED`].
fn start_and_warm_up(lab: &mut Lab, args: &[&str]) {
    lab.set_linux_forwarding(false);
    lab.start_daemon(args);
    for b in &lab.backends {
        if let Err(e) = lab.http_get(&b.ip, HTTP_PORT) {
            panic!("the client does not reach {} before any rule: {e}", b.ip);
        }
    }
}

fn http_ok(lab: &Lab, ip: &str) -> bool {
    lab.http_get(ip, HTTP_PORT).is_ok()
}

fn http_blocked(lab: &Lab, ip: &str) -> bool {
    lab.http_get_timeout(ip, HTTP_PORT, BLOCKED).is_err()
}

fn udp_ok(lab: &Lab, ip: &str) -> bool {
    lab.udp_request(ip, UDP_PORT, None).is_ok()
}

#[test]
fn rules_allow_and_drop_by_prefix_ports_protocol_and_interface() {
    let mut lab = Lab::new("fwmatch");
    start_and_warm_up(&mut lab, &[]);
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    assert!(http_ok(&lab, &b1) && http_ok(&lab, &b2) && udp_ok(&lab, &b1));

    // TCP to b1's HTTP port range only.
    let tcp = format!(
        "sourceIP:10.77.1.0/24,destinationIP:{b1}/32,protocol:6,\
         minDestinationPort:8000,maxDestinationPort:8099,preference:100"
    );
    create(&lab, &tcp, &["--drop"]);
    assert!(
        http_blocked(&lab, &b1),
        "TCP to {b1}:{HTTP_PORT} was not dropped"
    );
    assert!(udp_ok(&lab, &b1), "UDP to {b1} is another protocol");
    assert!(http_ok(&lab, &b2), "{b2} is another prefix");
    lab.loxicmd_ok(&["delete", "firewall", &rule(&tcp)]);
    assert!(http_ok(&lab, &b1), "the deleted rule still drops");

    // IPv6 prefixes.
    let b1_6 = lab.backends[0].ip6.clone();
    assert!(http_ok(&lab, &b1_6), "IPv6 to {b1_6} before the rule");
    let v6 = "sourceIP:fd77:1::/64,destinationIP:fd77:2::/64,preference:100";
    create(&lab, v6, &["--drop"]);
    assert!(http_blocked(&lab, &b1_6), "IPv6 to {b1_6} was not dropped");
    assert!(http_ok(&lab, &b1), "an IPv6 rule dropped IPv4");
    lab.loxicmd_ok(&["delete", "firewall", &rule(v6)]);

    // A port range that leaves the port out.
    create(
        &lab,
        &format!("destinationIP:{b1},protocol:17,minDestinationPort:1,maxDestinationPort:8999"),
        &["--drop"],
    );
    assert!(udp_ok(&lab, &b1), "port {UDP_PORT} is outside 1-8999");
    create(
        &lab,
        &format!("destinationIP:{b1},protocol:17,minDestinationPort:{UDP_PORT}"),
        &["--drop"],
    );
    assert!(!udp_ok(&lab, &b1), "UDP to port {UDP_PORT} was not dropped");

    // By input interface: only what enters on veth-c.
    create(&lab, "portName:veth-b2,preference:1", &["--drop"]);
    assert!(
        http_ok(&lab, &b2),
        "traffic from the client enters on veth-c"
    );
    create(&lab, "portName:veth-c,protocol:6,preference:1", &["--drop"]);
    assert!(
        http_blocked(&lab, &b2),
        "TCP entering on veth-c was not dropped"
    );

    let json = rules_json(&lab);
    let hits: u64 = json["firewallRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["counters"]["packets"].as_u64().unwrap_or(0))
        .sum();
    assert!(hits > 0, "no rule counted a hit: {json}");
}

#[test]
fn the_highest_preference_wins() {
    let mut lab = Lab::new("fwpref");
    start_and_warm_up(&mut lab, &[]);
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    create(&lab, "sourceIP:10.77.1.0/24,preference:100", &["--drop"]);
    create(
        &lab,
        &format!("destinationIP:{b2}/32,preference:200"),
        &["--allow"],
    );
    assert!(
        http_blocked(&lab, &b1),
        "the drop at 100 should apply to {b1}"
    );
    assert!(http_ok(&lab, &b2), "the allow at 200 should win for {b2}");
    // The same allow below the drop loses.
    lab.loxicmd_ok(&[
        "delete",
        "firewall",
        &rule(&format!("destinationIP:{b2}/32,preference:200")),
    ]);
    create(
        &lab,
        &format!("destinationIP:{b2}/32,preference:50"),
        &["--allow"],
    );
    assert!(
        http_blocked(&lab, &b2),
        "the drop at 100 should win over the allow at 50"
    );
}

/// A TCP and UDP server in a namespace that answers with the address it
/// saw the client at (a line, over TCP), then echoes what a TCP client
/// sends until it closes; until dropped.
struct PeerEcho {
    port: u16,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerEcho {
    fn start(lab: &Lab, ns: &str, port: u16) -> PeerEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let (tcp, udp) = lab.in_ns(ns, || {
            (
                TcpListener::bind(("::", port)).expect("binding the TCP echo"),
                UdpSocket::bind(("::", port)).expect("binding the UDP echo"),
            )
        });
        tcp.set_nonblocking(true).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let s = stop.clone();
        let t1 = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((c, peer)) => {
                        let s = s.clone();
                        thread::spawn(move || echo(c, peer, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s = stop.clone();
        let t2 = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(unmapped(peer).to_string().as_bytes(), peer);
                }
            }
        });
        PeerEcho {
            port,
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn echo(mut c: TcpStream, peer: SocketAddr, stop: &AtomicBool) {
    let setup = c
        .set_nonblocking(false)
        .and_then(|()| c.set_read_timeout(Some(Duration::from_millis(100))));
    if setup.is_err() || writeln!(c, "{}", unmapped(peer)).is_err() {
        return;
    }
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

/// IPv4 peers of a dual-stack socket show as ::ffff:a.b.c.d.
fn unmapped(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => peer,
        },
        v4 => v4,
    }
}

/// What the server at `to` saw the client at, over TCP from namespace `ns`.
fn tcp_seen(lab: &Lab, ns: &str, to: SocketAddr) -> std::io::Result<String> {
    lab.in_ns(ns, || {
        let mut s = TcpStream::connect_timeout(&to, BLOCKED)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut seen = String::new();
        s.read_to_string(&mut seen)?;
        Ok(seen.trim_end().to_owned())
    })
}

/// The same over UDP.
fn udp_seen(lab: &Lab, ns: &str, to: SocketAddr) -> std::io::Result<String> {
    lab.in_ns(ns, || {
        let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"who", to)?;
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf)?;
        assert_eq!(from, to, "the reply's source was not translated back");
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

#[test]
fn a_dropped_host_still_answers_flows_opened_towards_it_but_opens_none() {
    let mut lab = Lab::new("fwstate");
    start_and_warm_up(&mut lab, &[]);
    let b1 = backend(&lab, 0);
    let echo = PeerEcho::start(&lab, &lab.client.clone(), 7070);
    let to_client: SocketAddr = format!("{CLIENT_IP}:{}", echo.port).parse().unwrap();
    assert!(
        tcp_seen(&lab, &b1.0, to_client).is_ok(),
        "b1 reaches the client before the rule"
    );

    create(
        &lab,
        &format!("sourceIP:{}/32,preference:100", b1.1),
        &["--drop"],
    );
    // Flows the client opens: b1's replies belong to them and pass.
    for i in 0..3 {
        assert_eq!(
            lab.http_get(&b1.1, HTTP_PORT).as_deref().ok(),
            Some("b1"),
            "request {i} to b1"
        );
        assert!(udp_ok(&lab, &b1.1), "UDP exchange {i} with b1");
    }
    // Flows b1 opens are dropped.
    assert!(
        tcp_seen(&lab, &b1.0, to_client).is_err(),
        "b1 opened a TCP flow"
    );
    assert!(
        udp_seen(&lab, &b1.0, to_client).is_err(),
        "b1 opened a UDP flow"
    );

    // The same over IPv6.
    let b1_6 = lab.backends[0].ip6.clone();
    let to_client6: SocketAddr = format!("[fd77:1::2]:{}", echo.port).parse().unwrap();
    assert!(
        tcp_seen(&lab, &b1.0, to_client6).is_ok(),
        "b1 reaches the client over IPv6 before the rule"
    );
    create(
        &lab,
        &format!("sourceIP:{b1_6}/128,preference:100"),
        &["--drop"],
    );
    assert_eq!(
        lab.http_get(&b1_6, HTTP_PORT).as_deref().ok(),
        Some("b1"),
        "an IPv6 request to b1"
    );
    assert!(
        tcp_seen(&lab, &b1.0, to_client6).is_err(),
        "b1 opened an IPv6 TCP flow"
    );
}

/// Backend `i`'s namespace and address.
fn backend(lab: &Lab, i: usize) -> (String, String) {
    (lab.backends[i].ns.clone(), lab.backends[i].ip.clone())
}

#[test]
fn snat_and_masquerade_are_what_the_server_sees() {
    let mut lab = Lab::new("fwsnat");
    start_and_warm_up(&mut lab, &[]);
    let (b1_ns, b1) = backend(&lab, 0);
    let echo = PeerEcho::start(&lab, &b1_ns, 7071);
    let to: SocketAddr = format!("{b1}:{}", echo.port).parse().unwrap();
    let client = lab.client.clone();
    let seen = tcp_seen(&lab, &client, to).unwrap();
    assert!(seen.starts_with(&format!("{CLIENT_IP}:")), "{seen}");

    // The LB's own address on b1's link, so that b1's replies come back.
    create(
        &lab,
        &format!("sourceIP:{CLIENT_IP}/32,destinationIP:{b1}/32,preference:10"),
        &["--snat=10.77.2.1,4000"],
    );
    assert_eq!(tcp_seen(&lab, &client, to).unwrap(), "10.77.2.1:4000");
    lab.loxicmd_ok(&[
        "delete",
        "firewall",
        &rule(&format!(
            "sourceIP:{CLIENT_IP}/32,destinationIP:{b1}/32,preference:10"
        )),
    ]);
    // Masquerade: the address of the interface towards b1, any free port.
    assert_masqueraded(&lab, &format!("{CLIENT_IP}/32"), to, "10.77.2.1");

    // The same over IPv6, whose masquerade takes no link-local address.
    let b1_6 = lab.backends[0].ip6.clone();
    let to6: SocketAddr = format!("[{b1_6}]:{}", echo.port).parse().unwrap();
    let snat6 = format!("sourceIP:fd77:1::2/128,destinationIP:{b1_6}/128,preference:10");
    create(&lab, &snat6, &["--snat=fd77:2::1,4000"]);
    assert_eq!(tcp_seen(&lab, &client, to6).unwrap(), "[fd77:2::1]:4000");
    lab.loxicmd_ok(&["delete", "firewall", &rule(&snat6)]);
    assert_masqueraded(&lab, "fd77:1::/64", to6, "fd77:2::1");
}

/// Masquerades the client's `source` prefix, then asserts that TCP and UDP
/// to the echo at `to` arrive from `lb` (the LB's address towards it), and
/// that a ping leaves from it too, its identifier kept, as conntrack lists.
fn assert_masqueraded(lab: &Lab, source: &str, to: SocketAddr, lb: &str) {
    create(
        lab,
        &format!("sourceIP:{source},preference:10"),
        &["--masquerade"],
    );
    // "10.77.2.1:" or "[fd77:2::1]:", as an address and port print.
    let from = SocketAddr::new(lb.parse().unwrap(), 0).to_string();
    let from = from.strip_suffix('0').unwrap();
    for seen in [
        tcp_seen(lab, &lab.client, to).unwrap(),
        udp_seen(lab, &lab.client, to).unwrap(),
    ] {
        assert!(seen.starts_with(from), "masqueraded as {seen}, not {lb}");
    }
    const ID: u16 = 4242;
    let host = to.ip().to_string();
    assert_eq!(lab.ping(&host, ID).unwrap().to_string(), host);
    let (proto, client) = if to.is_ipv4() {
        ("icmp", CLIENT_IP)
    } else {
        ("icmp6", "fd77:1::2")
    };
    let pings: Vec<Value> = ct_entries(&ct_json(lab, &[&format!("--proto={proto}")]))
        .into_iter()
        .filter(|e| e["srcIp"] == client)
        .collect();
    let action = format!("snat-{from}{ID}");
    assert!(
        pings
            .iter()
            .any(|e| e["action"].as_str().is_some_and(|a| a.starts_with(&action))),
        "{action} not in {pings:#?}"
    );
}

#[test]
fn flows_the_rules_allow_keep_flowing_across_a_restart() {
    let mut lab = Lab::new("fwrestart");
    start_and_warm_up(&mut lab, &[]);
    let (b1_ns, b1) = backend(&lab, 0);
    let b2 = lab.backends[1].ip.clone();
    let echo = PeerEcho::start(&lab, &b1_ns, 7072);
    create(
        &lab,
        &format!("destinationIP:{b1}/32,preference:20"),
        &["--allow"],
    );
    create(&lab, "sourceIP:10.77.0.0/16,preference:10", &["--drop"]);
    let to: SocketAddr = format!("{b1}:{}", echo.port).parse().unwrap();
    let mut s = lab
        .in_ns(&lab.client, || TcpStream::connect_timeout(&to, BLOCKED))
        .expect("connecting through the allow rule");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut talk = |msg: &str| {
        s.write_all(msg.as_bytes())
            .unwrap_or_else(|e| panic!("sending {msg:?}: {e}"));
        // The peer line first, then the echo.
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(msg.as_bytes()) {
            s.read_exact(&mut byte)
                .unwrap_or_else(|e| panic!("the echo of {msg:?}: {e}"));
            got.push(byte[0]);
        }
    };
    talk("before");
    lab.stop_daemon();
    talk("while no daemon runs");
    lab.start_daemon(&[]);
    talk("after the restart");
    // The restored rules judge new flows.
    assert!(http_ok(&lab, &b1), "the allow rule was lost");
    assert!(http_blocked(&lab, &b2), "the drop rule was lost");
}

#[test]
fn thousands_of_rules_load_and_the_right_one_applies() {
    const N: u32 = 3000;
    let mut lab = Lab::new("fwmany");
    start_and_warm_up(&mut lab, &[]);
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    // Drops for sources that are not the client, at every preference, and
    // one for the client to b1's HTTP port in the middle.
    let mut rules: Vec<Value> = (0..N)
        .map(|i| {
            serde_json::json!({
                "match": {
                    "sourceIp": format!("172.16.{}.{}/32", i / 250, i % 250 + 1),
                    "protocol": 6,
                    "minDestinationPort": 1000 + i % 7000,
                    "preference": i,
                },
                "options": {"drop": true},
            })
        })
        .collect();
    rules.push(serde_json::json!({
        "match": {
            "sourceIp": format!("{CLIENT_IP}/32"),
            "destinationIp": format!("{b1}/32"),
            "protocol": 6,
            "minDestinationPort": HTTP_PORT,
            "preference": N / 2,
        },
        "options": {"drop": true},
    }));
    let file = lab.state_dir().with_file_name("fw3000.json");
    std::fs::write(
        &file,
        serde_json::json!({ "firewallRules": rules }).to_string(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let out = lab.loxicmd_ok(&["apply", "-f", file.to_str().unwrap()]);
    eprintln!(
        "apply of {} firewall rules took {:?} (loxicmd included)",
        N + 1,
        started.elapsed()
    );
    assert!(
        out.contains(&format!("firewall: {} created", N + 1)),
        "{out}"
    );
    assert_eq!(rule_count(&lab), N as usize + 1);
    assert!(
        http_blocked(&lab, &b1),
        "the client's rule among {N} did not drop"
    );
    assert!(http_ok(&lab, &b2), "a rule dropped what none matches");
    // One more on top still works, and wins.
    let started = std::time::Instant::now();
    create(
        &lab,
        &format!("destinationIP:{b1}/32,preference:{}", N + 1),
        &["--allow"],
    );
    eprintln!(
        "one more create over {} rules took {:?} (loxicmd included)",
        N + 1,
        started.elapsed()
    );
    assert!(
        http_ok(&lab, &b1),
        "the allow above all {N} rules did not win"
    );
}

#[test]
fn a_drop_default_policy_lets_only_allowed_flows_through() {
    let mut lab = Lab::new("fwdefault");
    lab.set_linux_forwarding(false);
    let config = lab.state_dir().with_file_name("loxilight.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[firewall]\ndefault_policy = \"drop\"\n").unwrap();
    lab.start_daemon(&["--config", config.to_str().unwrap()]);
    let (b1, b2) = (lab.backends[0].ip.clone(), lab.backends[1].ip.clone());
    assert!(lab
        .loxicmd_ok(&["get", "firewall"])
        .contains("Default policy: drop"));
    assert!(
        http_blocked(&lab, &b1),
        "the default drop let a flow through"
    );
    create(
        &lab,
        &format!("destinationIP:{b2}/32,protocol:6,minDestinationPort:{HTTP_PORT},preference:1"),
        &["--allow"],
    );
    assert!(http_ok(&lab, &b2), "the allowed flow did not pass");
    assert!(http_blocked(&lab, &b1), "a flow no rule allows passed");
}

#[test]
fn trapped_flows_meet_iptables() {
    let mut lab = Lab::new("fwtrap");
    // Linux forwards what is trapped; iptables drops it on the way.
    lab.set_linux_forwarding(true);
    lab.start_daemon(&[]);
    let b1 = lab.backends[0].ip.clone();
    let iptables = |args: &str| {
        let out = common::run_bounded(
            std::process::Command::new("ip")
                .args(["netns", "exec", &lab.lb, "iptables"])
                .args(args.split_whitespace()),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(
            out.status.success(),
            "iptables {args}: {}",
            stderr_line(&out)
        );
    };
    iptables(&format!(
        "-A FORWARD -p tcp -d {b1} --dport {HTTP_PORT} -j DROP"
    ));
    assert!(
        http_ok(&lab, &b1),
        "the datapath forwards without meeting iptables"
    );
    create(
        &lab,
        &format!("destinationIP:{b1}/32,protocol:6,minDestinationPort:{HTTP_PORT},preference:1"),
        &["--trap"],
    );
    assert!(
        http_blocked(&lab, &b1),
        "a trapped flow did not meet iptables"
    );
    iptables(&format!(
        "-D FORWARD -p tcp -d {b1} --dport {HTTP_PORT} -j DROP"
    ));
    assert!(http_ok(&lab, &b1), "Linux did not forward the trapped flow");
}
