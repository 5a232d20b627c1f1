//! End-to-end tests of the load-balancer modes: loxilight and loxicmd in a
//! namespace lab, real TCP traffic, and what the endpoints and the LB saw.
//! Needs root.
//!
//! fullnat runs on the standard lab (the client and each backend on their own
//! LB interface). onearm and dsr need the client and the backend on one LB
//! interface: the client's namespace gets a bridge with its link to the LB
//! and a new backend namespace `x` (10.77.1.3) on it:
//!
//! ```text
//!  client 10.77.1.2 (br0) --+-- 10.77.1.1 [ LB ]
//!                           +-- x 10.77.1.3
//! ```

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{cell, ct_entries, ct_json, ip, parse_table, tally, Lab, CLIENT_IP, UDP_PORT, VIP};

/// The service and target port of every rule here.
const PORT: u16 = 7070;
/// The backend on the client's segment.
const X_IP: &str = "10.77.1.3";
/// The LB's address on the client's segment.
const LB_CLIENT_SIDE: &str = "10.77.1.1";

/// A TCP server in a namespace on PORT (IPv4 and IPv6) that answers each
/// connection with its name and the address the connection came from,
/// until dropped.
struct PeerServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PeerServer {
    fn start(lab: &Lab, ns: &str, name: &str) -> PeerServer {
        let listener = lab
            .in_ns(ns, || TcpListener::bind(("::", PORT)))
            .unwrap_or_else(|e| panic!("{name}: binding port {PORT}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, name) = (stop.clone(), name.to_owned());
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let peer = match peer {
                            // IPv4 peers of the dual-stack socket.
                            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                                Some(v4) => SocketAddr::from((v4, v6.port())),
                                None => peer,
                            },
                            v4 => v4,
                        };
                        let _ = s.write_all(format!("{name} {peer}").as_bytes());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        PeerServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A PeerServer on PORT in every backend.
fn peer_servers(lab: &Lab) -> Vec<PeerServer> {
    lab.backends
        .iter()
        .map(|b| PeerServer::start(lab, &b.ns, &b.name))
        .collect()
}

/// Connects from the client to VIP:PORT; returns (server name, the address
/// the server saw the connection come from).
fn ask(lab: &Lab) -> (String, SocketAddr) {
    ask_at(lab, VIP)
}

fn ask_at(lab: &Lab, vip: &str) -> (String, SocketAddr) {
    let addr = SocketAddr::new(vip.parse().unwrap(), PORT);
    let answer = lab
        .in_ns(&lab.client, || -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap_or_else(|e| panic!("connecting to {addr} from the client: {e}"));
    let (name, peer) = answer
        .split_once(' ')
        .unwrap_or_else(|| panic!("answer {answer:?}"));
    (name.to_owned(), peer.parse().expect("a peer address"))
}

/// A namespace of the test's own, deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Moves the client onto a bridge in its namespace and adds namespace `x`
/// (X_IP, no route beyond its subnet) to it: see the module doc.
fn shared_segment(lab: &Lab) -> Netns {
    let c = &lab.client;
    // Named like the lab's namespaces, so a killed run's leftovers go too.
    let x = Netns(format!(
        "{}-x",
        c.strip_suffix("-c").expect("the client ns ends in -c")
    ));
    ip(&format!("netns add {}", x.0));
    ip(&format!("-n {} link set lo up", x.0));
    ip(&format!("-n {c} link add br0 type bridge"));
    ip(&format!("-n {c} addr flush dev eth0"));
    ip(&format!("-n {c} link set eth0 master br0"));
    ip(&format!("-n {c} addr add {CLIENT_IP}/24 dev br0"));
    ip(&format!("-n {c} link set br0 up"));
    ip(&format!("-n {c} route add default via {LB_CLIENT_SIDE}"));
    ip(&format!(
        "-n {c} link add vx type veth peer name eth0 netns {}",
        x.0
    ));
    ip(&format!("-n {c} link set vx master br0"));
    ip(&format!("-n {c} link set vx up"));
    ip(&format!("-n {} addr add {X_IP}/24 dev eth0", x.0));
    ip(&format!("-n {} link set eth0 up", x.0));
    x
}

/// Runs a command in namespace `ns`; it must succeed.
fn ip_netns_exec(ns: &str, cmd: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .expect("running ip netns exec");
    assert!(out.status.success(), "{cmd:?} in {ns}: {out:?}");
}

/// A lab with a backend namespace `x` on the client's segment serving on
/// PORT, Linux forwarding off in the LB and the daemon running on `hook`.
fn segment_lab(tag: &str, hook: &str) -> (Lab, Netns, PeerServer) {
    let mut lab = Lab::with_backends(tag, 1);
    let x = shared_segment(&lab);
    lab.set_linux_forwarding(false);
    if hook == "xdp" {
        lab.prepare_for_xdp();
        // x sends to the LB too (see Lab::prepare_for_xdp).
        ip_netns_exec(&x.0, &["ethtool", "-K", "eth0", "tx", "off"]);
    }
    lab.start_daemon(&["--hook", hook]);
    let server = PeerServer::start(&lab, &x.0, "x");
    (lab, x, server)
}

/// The MODE column of `get lb`'s one rule.
fn mode_shown(lab: &Lab) -> String {
    let rows = parse_table(&lab.loxicmd_ok(&["get", "lb"]));
    assert_eq!(rows.len(), 1, "one rule");
    cell(&rows[0], "MODE").to_owned()
}

/// The ACT (translation) column of every `get ct` row.
fn ct_actions(lab: &Lab) -> Vec<String> {
    parse_table(&lab.loxicmd_ok(&["get", "ct"]))
        .iter()
        .map(|r| cell(r, "ACT").to_owned())
        .collect()
}

/// The sum of the LB's metric samples whose series starts with `series`.
fn metric(lab: &Lab, series: &str) -> f64 {
    let addr = "127.0.0.1:11112".parse().unwrap();
    let text = lab
        .http_get_in(&lab.lb, addr, "/metrics")
        .unwrap_or_else(|e| panic!("scraping the metrics: {e}"));
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Packets the LB forwarded, and packets it translated (nat_new, nat_est).
fn forwarded_and_translated(lab: &Lab) -> (f64, f64) {
    (
        metric(lab, r#"loxilight_datapath_packets_total{reason="fwd"}"#),
        metric(lab, "loxilight_datapath_nat_packets_total{"),
    )
}

#[test]
fn fullnat_backends_see_the_lb_and_need_no_route_to_clients() {
    fullnat_at("tc");
}

#[test]
fn fullnat_works_at_xdp_too() {
    fullnat_at("xdp");
}

fn fullnat_at(hook: &str) {
    let lab = Lab::forwarding_off(&format!("fullnat{hook}"), hook);
    let _servers = peer_servers(&lab);
    // The backends keep only their own subnet: no way back to the client.
    for b in &lab.backends {
        ip(&format!("-n {} route del default", b.ns));
        let out = Command::new("ip")
            .args(["-n", &b.ns, "route", "get", CLIENT_IP])
            .output()
            .expect("running ip");
        assert!(
            !out.status.success(),
            "{} still routes to the client",
            b.name
        );
    }

    let endpoints: Vec<String> = lab.backends.iter().map(|b| format!("{}:1", b.ip)).collect();
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        &format!("--tcp={PORT}:{PORT}"),
        &format!("--endpoints={}", endpoints.join(",")),
        "--mode=fullnat",
    ]);
    assert_eq!(mode_shown(&lab), "fullnat");

    let mut seen = Vec::new();
    for _ in 0..4 {
        let (name, peer) = ask(&lab);
        // The LB's address on that backend's link (10.77.N.1 for 10.77.N.2).
        let b = lab.backend(&name);
        let (net, _) = b.ip.rsplit_once('.').expect("an IPv4 address");
        let lb_side = format!("{net}.1");
        assert_eq!(peer.ip().to_string(), lb_side, "{name} saw {peer}");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["b1", "b1", "b2", "b2"], "round robin over both");

    let actions = ct_actions(&lab);
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("snat-10.77.2.1:") && a.contains(",dnat-10.77.2.2:7070")),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("rdnat-20.20.20.1:7070,rsnat-10.77.1.2:")),
        "{actions:?}"
    );

    // The LB's address towards b1 changes: new flows follow the mirror.
    ip(&format!("-n {} addr del 10.77.2.1/24 dev veth-b1", lab.lb));
    ip(&format!("-n {} addr add 10.77.2.50/24 dev veth-b1", lab.lb));
    let mirrored = (0..100).any(|_| {
        let shown = lab.loxicmd_ok(&["get", "ip"]).contains("10.77.2.50");
        if !shown {
            std::thread::sleep(Duration::from_millis(50));
        }
        shown
    });
    assert!(mirrored, "the new address never reached the datapath");
    // The flows translated to the old address go with it (flushed off the
    // mirror's event loop, so polled); b2's stay.
    let mut actions = ct_actions(&lab);
    for _ in 0..100 {
        if !actions.iter().any(|a| a.starts_with("snat-10.77.2.1:")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        actions = ct_actions(&lab);
    }
    assert!(
        !actions.iter().any(|a| a.starts_with("snat-10.77.2.1:"))
            && actions.iter().any(|a| a.starts_with("snat-10.77.3.1:")),
        "{actions:?}"
    );
    let peers: Vec<(String, SocketAddr)> = (0..2).map(|_| ask(&lab)).collect();
    let (_, peer) = peers
        .iter()
        .find(|(name, _)| name == "b1")
        .expect("b1 answered one of two (rr)");
    assert_eq!(peer.ip().to_string(), "10.77.2.50");
    fullnat6(&lab);
}

/// Routed to the LB by the client's default IPv6 route.
const VIP6: &str = "fd00::100";

#[test]
fn nat64_serves_ipv6_clients_from_ipv4_backends() {
    nat64_at("tc");
}

#[test]
fn nat64_works_at_xdp_too() {
    nat64_at("xdp");
}

/// An IPv6 VIP with IPv4 endpoints: the client speaks IPv6 only to the
/// VIP, the backends see IPv4 from the LB's address on their link, and
/// Linux forwards nothing.
fn nat64_at(hook: &str) {
    let mut lab = Lab::forwarding_off(&format!("nat64{hook}"), hook);
    let _servers = peer_servers(&lab);
    let endpoints: Vec<String> = lab.backends.iter().map(|b| format!("{}:1", b.ip)).collect();
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP6,
        &format!("--tcp={PORT}:{PORT}"),
        &format!("--udp={PORT}:{UDP_PORT}"),
        &format!("--endpoints={}", endpoints.join(",")),
    ]);

    let mut seen = Vec::new();
    for _ in 0..4 {
        // The first SYN may wait for a neighbour to be resolved.
        let (name, peer) = ask_at(&lab, VIP6);
        let b = lab.backend(&name);
        let (net, _) = b.ip.rsplit_once('.').expect("an IPv4 address");
        assert_eq!(
            peer.ip().to_string(),
            format!("{net}.1"),
            "{name} saw {peer}"
        );
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["b1", "b1", "b2", "b2"], "round robin over both");
    let udp: Vec<String> = (0..4)
        .map(|i| {
            (0..3)
                .find_map(|_| lab.udp_request(VIP6, PORT, None).ok())
                .unwrap_or_else(|| panic!("datagram {i} to [{VIP6}]:{PORT} got no answer"))
        })
        .collect();
    assert_eq!(
        tally(&udp),
        [("b1".to_string(), 2), ("b2".to_string(), 2)].into(),
        "UDP over NAT64: {udp:?}"
    );

    // Each flow lists as its two entries, the IPv4 side's addresses as
    // IPv4; the reservation of its reply tuple is not listed.
    let tcp: Vec<serde_json::Value> = ct_entries(&ct_json(&lab, &[]))
        .into_iter()
        .filter(|e| e["protocol"] == "tcp")
        .collect();
    let from_client = tcp.iter().filter(|e| e["srcIp"] == "fd77:1::2").count();
    let from_b1: Vec<&serde_json::Value> =
        tcp.iter().filter(|e| e["srcIp"] == "10.77.2.2").collect();
    assert_eq!(from_client, 4, "{tcp:#?}");
    assert_eq!(from_b1.len(), 2, "one reply entry per flow: {tcp:#?}");
    assert!(
        from_b1.iter().all(|e| {
            e["action"].as_str().is_some_and(|a| {
                a.starts_with(&format!("rdnat-[{VIP6}]:{PORT},rsnat-[fd77:1::2]:"))
            })
        }),
        "{from_b1:#?}"
    );
    assert!(
        tcp.iter().any(|e| e["action"].as_str().is_some_and(
            |a| a.starts_with("snat-10.77.2.1:") && a.ends_with(",dnat-10.77.2.2:7070")
        )),
        "{tcp:#?}"
    );
    bulk_both_ways(&lab, VIP6, &lab.backend("b1").ip, &[]);

    // A stopped daemon leaves the datapath attached (the default): the
    // pinned tail-call arrays keep the translators reachable for new flows,
    // and the next start puts its own programs in them.
    lab.stop_daemon();
    assert!(["b1", "b2"].contains(&ask_at(&lab, VIP6).0.as_str()));
    lab.start_daemon(&["--hook", hook]);
    assert!(["b1", "b2"].contains(&ask_at(&lab, VIP6).0.as_str()));

    lab.loxicmd_ok(&["delete", "lb", VIP6, &format!("--tcp={PORT}")]);
    let left = ct_entries(&ct_json(&lab, &[]));
    assert!(
        left.iter().all(|e| e["protocol"] != "tcp"),
        "the TCP rule's flows stay: {left:#?}"
    );
}

/// Bytes sent each way by `bulk_both_ways`: many full-sized segments, and
/// at TC segmentation offload's large ones.
const BULK: usize = 8 << 20;

/// Sends BULK bytes from the client to b1 at `endpoint` through `vip` on
/// BULK_PORT (a rule of the test's own, with `flags`) and BULK back; TCP
/// delivers them all only if every translated segment's checksum is right.
fn bulk_both_ways(lab: &Lab, vip: &str, endpoint: &str, flags: &[&str]) {
    const BULK_PORT: u16 = 7071;
    let b1 = lab.backend("b1");
    let rule = [
        "create".to_owned(),
        "lb".into(),
        vip.into(),
        format!("--tcp={BULK_PORT}:{BULK_PORT}"),
        format!("--endpoints={endpoint}:1"),
    ];
    let args: Vec<&str> = rule
        .iter()
        .map(String::as_str)
        .chain(flags.iter().copied())
        .collect();
    lab.loxicmd_ok(&args);
    let listener = lab
        .in_ns(&b1.ns, || TcpListener::bind(("::", BULK_PORT)))
        .expect("binding the bulk port");
    let server = thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut got = vec![0u8; BULK];
        s.read_exact(&mut got)?;
        s.write_all(&got)?;
        Ok(got.iter().filter(|&&b| b == 0x5a).count())
    });
    let addr = SocketAddr::new(vip.parse().unwrap(), BULK_PORT);
    let back = lab
        .in_ns(&lab.client, || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(&vec![0x5a; BULK])?;
            let mut back = vec![0u8; BULK];
            s.read_exact(&mut back)?;
            Ok(back)
        })
        .unwrap_or_else(|e| panic!("bulk transfer through [{vip}]:{BULK_PORT}: {e}"));
    let received = server
        .join()
        .expect("the bulk server")
        .expect("the bulk server's socket");
    assert_eq!(received, BULK, "bytes that reached b1 intact");
    assert!(
        back.iter().all(|&b| b == 0x5a),
        "bytes that came back intact"
    );
    lab.loxicmd_ok(&["delete", "lb", vip, &format!("--tcp={BULK_PORT}")]);
}

/// An IPv6 VIP in fullnat mode, in fullnat_at's lab: IPv6 backends
/// without a route back to the client see the LB's address on their link,
/// and a bulk transfer each way arrives intact.
fn fullnat6(lab: &Lab) {
    lab.loxicmd_ok(&["delete", "lb", VIP, &format!("--tcp={PORT}")]);
    for b in &lab.backends {
        ip(&format!("-n {} -6 route del default", b.ns));
    }
    let endpoints: Vec<String> = lab
        .backends
        .iter()
        .map(|b| format!("{}:1", b.ip6))
        .collect();
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP6,
        &format!("--tcp={PORT}:{PORT}"),
        &format!("--endpoints={}", endpoints.join(",")),
        "--mode=fullnat",
    ]);
    assert_eq!(mode_shown(lab), "fullnat");
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (name, peer) = ask_at(lab, VIP6);
        // The LB's address on that backend's link (fd77:N::1 for fd77:N::2).
        let lb_side = lab.backend(&name).ip6.replace("::2", "::1");
        assert_eq!(peer.ip().to_string(), lb_side, "{name} saw {peer}");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["b1", "b1", "b2", "b2"], "round robin over both");
    let actions = ct_actions(lab);
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("snat-[fd77:2::1]:") && a.contains(",dnat-[fd77:2::2]:7070")),
        "{actions:?}"
    );
    let b1 = lab.backend("b1").ip6.clone();
    bulk_both_ways(lab, VIP6, &b1, &["--mode=fullnat"]);
}

#[test]
fn onearm_serves_clients_and_backends_on_one_interface() {
    onearm_at("tc");
}

#[test]
fn onearm_works_at_xdp_too() {
    onearm_at("xdp");
}

fn onearm_at(hook: &str) {
    let (mut lab, _x, _server) = segment_lab(&format!("onearm{hook}"), hook);
    lab.loxicmd_ok(&[
        "create",
        "lb",
        VIP,
        &format!("--tcp={PORT}:{PORT}"),
        &format!("--endpoints={X_IP}:1"),
        "--mode=onearm",
    ]);
    assert_eq!(mode_shown(&lab), "onearm");
    let check = |lab: &Lab| {
        for _ in 0..3 {
            let (name, peer) = ask(lab);
            assert_eq!(name, "x");
            // The LB's address on the interface the client's packets came in
            // by, so x answers the LB, not the client next to it.
            assert_eq!(peer.ip().to_string(), LB_CLIENT_SIDE);
        }
    };
    check(&lab);
    let actions = ct_actions(&lab);
    assert!(
        actions
            .iter()
            .any(|a| a.starts_with("snat-10.77.1.1:") && a.ends_with(",dnat-10.77.1.3:7070")),
        "{actions:?}"
    );
    // The mode is kept across a restart.
    lab.stop_daemon();
    lab.start_daemon(&["--hook", hook]);
    assert_eq!(mode_shown(&lab), "onearm");
    check(&lab);
}

#[test]
fn dsr_backends_answer_clients_directly() {
    dsr_at("tc");
}

#[test]
fn dsr_works_at_xdp_too() {
    dsr_at("xdp");
}

fn dsr_at(hook: &str) {
    let (lab, x, _server) = segment_lab(&format!("dsr{hook}"), hook);
    // x holds the VIP itself, on its loopback.
    ip(&format!("-n {} addr add {VIP}/32 dev lo", x.0));

    let rule = [
        "create",
        "lb",
        VIP,
        "--tcp=7070:7070",
        "--endpoints=10.77.1.3:1",
        "--mode=dsr",
    ];
    let out = lab.loxicmd(&rule);
    assert!(!out.status.success(), "dsr without hash was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("load_balancer.selection: mode dsr needs selection hash, not rr"),
        "{err}"
    );
    let mut with_hash = rule.to_vec();
    with_hash.push("--select=hash");
    lab.loxicmd_ok(&with_hash);
    assert_eq!(mode_shown(&lab), "dsr");

    let (fwd0, nat0) = forwarded_and_translated(&lab);
    for _ in 0..3 {
        let (name, peer) = ask(&lab);
        assert_eq!(name, "x");
        // No translation: x sees the client itself...
        assert_eq!(peer.ip().to_string(), CLIENT_IP);
    }
    // ...and answers it directly: every packet the LB forwarded was one of
    // the client's (counted nat_new or nat_est); a reply crossing the LB
    // would have been forwarded untranslated.
    let (fwd1, nat1) = forwarded_and_translated(&lab);
    let (forwarded, translated) = (fwd1 - fwd0, nat1 - nat0);
    println!("the LB forwarded {forwarded} packets and translated {translated}");
    assert!(forwarded > 0.0, "the LB forwarded the client's packets");
    assert!(
        forwarded <= translated,
        "{forwarded} packets forwarded, only {translated} of them the client's"
    );
    // One entry per flow, the client's direction.
    let actions = ct_actions(&lab);
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert!(actions.iter().all(|a| a == "dsr-10.77.1.3"), "{actions:?}");
}

#[test]
fn icmp_errors_reach_clients_of_translated_flows() {
    icmp_errors_at("tc");
}

#[test]
fn icmp_errors_reach_clients_at_xdp_too() {
    icmp_errors_at("xdp");
}

/// A datagram to a VIP whose endpoint has nothing on the port: the
/// endpoint's "port unreachable" reaches the client's connected socket
/// (which takes only errors about its own datagrams to the VIP) as a
/// refusal, in default mode and fullnat, and over IPv6 (NAT66), with Linux
/// forwarding off.
fn icmp_errors_at(hook: &str) {
    const CLOSED: u16 = 7072;
    let lab = Lab::forwarding_off(&format!("icmperr{hook}"), hook);
    let b1 = lab.backend("b1");
    for (vip, ep, mode) in [
        (VIP, &b1.ip, "default"),
        (VIP, &b1.ip, "fullnat"),
        (VIP6, &b1.ip6, "default"),
    ] {
        lab.loxicmd_ok(&[
            "create",
            "lb",
            vip,
            &format!("--udp={CLOSED}:{CLOSED}"),
            &format!("--endpoints={ep}:1"),
            &format!("--mode={mode}"),
        ]);
        let addr = SocketAddr::new(vip.parse().unwrap(), CLOSED);
        let any = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let refused = (0..3).any(|_| {
            lab.in_ns(&lab.client, || {
                let s = std::net::UdpSocket::bind(any).expect("a UDP socket");
                s.connect(addr).expect("connecting the socket");
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                s.send(b"anyone?").expect("sending");
                let mut buf = [0u8; 64];
                matches!(s.recv(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
            })
        });
        assert!(
            refused,
            "{vip} {mode}: the client never learnt the port is closed"
        );
        lab.loxicmd_ok(&["delete", "lb", vip, &format!("--udp={CLOSED}")]);
    }
    let nat_icmp = metric(
        &lab,
        r#"loxilight_datapath_nat_packets_total{reason="nat_icmp"}"#,
    );
    assert!(
        nat_icmp >= 2.0,
        "translated ICMP errors counted: {nat_icmp}"
    );
}
