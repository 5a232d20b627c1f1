//! IPv6 load balancing in the datapath (NAT66): both hooks run over
//! hand-built frames with BPF_PROG_TEST_RUN. Needs root (CAP_BPF).
#[allow(dead_code)] // shared with other test binaries; not every helper is used here
mod pkt;

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6};
use std::ops::ControlFlow;
use std::sync::Arc;

use loxilight::conntrack::{self, sweep, Filter, Timeouts};
use loxilight::datapath::types::ll_reason;
use loxilight::datapath::{monotonic_ns, Datapath, FwAction, FwDefault, FwEntry, HookKind};
use loxilight::kernel::model::{Addr, NextHop, Prefix, Route, RouteKind};
use loxilight::rules::{LbRule, Mode, Protocol, RuleStore, Selection, ServiceKey};
use pkt::{fold, load, reasons, sum16, ACK, DST_MAC, ETH_HLEN, RST, SRC_MAC, SYN, TCP};

const VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
const EP1: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1);
const EP2: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 3, 1);
const CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 7);
const ETH_P_IPV6: u16 = 0x86dd;
const HOPOPTS: u8 = 0;
const ICMPV6: u8 = 58;

fn sa(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

fn service(dp: &Datapath, proto: Protocol, selection: Selection, eps: &[(Ipv6Addr, u16)]) {
    dp.program_service(1, &rule(proto, selection, eps))
        .expect("programming a service");
}

fn rule(proto: Protocol, selection: Selection, eps: &[(Ipv6Addr, u16)]) -> LbRule {
    let key = ServiceKey {
        ip: IpAddr::V6(VIP),
        port: 80,
        port_max: 0,
        proto,
    };
    let eps: Vec<(IpAddr, u16)> = eps.iter().map(|&(ip, port)| (ip.into(), port)).collect();
    LbRule {
        name: "v6".into(),
        ..pkt::lb_rule(key, selection, &eps)
    }
}

/// An Ethernet + IPv6 frame from `src` to `dst` carrying `proto` (TCP with
/// `flags`, or UDP) and a payload, with a valid L4 checksum.
fn frame(src: SocketAddrV6, dst: SocketAddrV6, proto: u8, flags: u8) -> Vec<u8> {
    let payload = b"loxilight v6 payload";
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    if proto == TCP {
        l4.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        l4.extend_from_slice(&0u32.to_be_bytes());
        l4.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    }
    l4.extend_from_slice(payload);
    let csum_at = if proto == TCP { 16 } else { 6 };
    let c = !fold(pseudo(src.ip(), dst.ip(), proto, l4.len()) + sum16(&l4));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    ipv6(src.ip(), dst.ip(), proto, &l4)
}

fn ipv6(src: &Ipv6Addr, dst: &Ipv6Addr, next: u8, body: &[u8]) -> Vec<u8> {
    let mut f = [DST_MAC, SRC_MAC].concat();
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(body);
    f
}

fn pseudo(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + len as u32
}

/// Asserts the L4 checksum of an IPv6 TCP or UDP frame verifies.
fn assert_l4_checksum(f: &[u8]) {
    let l3 = ETH_HLEN;
    let src = Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 8..l3 + 24]).unwrap());
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap());
    let seg = &f[l3 + 40..];
    let sum = pseudo(&src, &dst, f[l3 + 6], seg.len()) + sum16(seg);
    assert_eq!(fold(sum), 0xffff, "L4 checksum: {f:02x?}");
}

/// The destination of an IPv6 TCP or UDP frame.
fn dst_of(f: &[u8]) -> SocketAddrV6 {
    let l3 = ETH_HLEN;
    let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&f[l3 + 24..l3 + 40]).unwrap());
    sa(ip, u16::from_be_bytes([f[l3 + 42], f[l3 + 43]]))
}

/// Runs a frame through `hook`, which must hand it on (no interface is
/// mirrored, so nothing is forwarded).
fn run(dp: &Datapath, hook: HookKind, f: &[u8]) -> Vec<u8> {
    let pass = match hook {
        HookKind::Tc => 0,
        HookKind::Xdp => 2,
    };
    let r = dp
        .test_run(hook, f, 1)
        .unwrap_or_else(|e| panic!("test run: {e}"));
    assert_eq!(r.retval, pass, "verdict for {f:02x?}");
    r.data
}

const HOOKS: [HookKind; 2] = [HookKind::Tc, HookKind::Xdp];

/// A new flow to the VIP goes to the endpoint with exactly its destination
/// rewritten, the reply comes back from the VIP, and both checksums verify.
fn forward_and_reply(proto: Protocol) {
    for hook in HOOKS {
        let dp = load();
        service(&dp, proto, Selection::RoundRobin, &[(EP1, 8080)]);
        let (client, vip, ep) = (sa(CLIENT, 40000), sa(VIP, 80), sa(EP1, 8080));
        let n = proto.number();
        let out = run(&dp, hook, &frame(client, vip, n, SYN));
        assert_eq!(
            out,
            frame(client, ep, n, SYN),
            "{hook:?} {proto:?}: forward"
        );
        assert_l4_checksum(&out);
        let back = run(&dp, hook, &frame(ep, client, n, SYN | ACK));
        assert_eq!(
            back,
            frame(vip, client, n, SYN | ACK),
            "{hook:?} {proto:?}: reply"
        );
        assert_l4_checksum(&back);
        // The flow's next packet follows it.
        let next = run(&dp, hook, &frame(client, vip, n, ACK));
        assert_eq!(
            next,
            frame(client, ep, n, ACK),
            "{hook:?} {proto:?}: established"
        );
        let r = reasons(&dp);
        assert_eq!(
            r[ll_reason::LL_R_NAT_NEW.0 as usize],
            1,
            "{hook:?}: new flows"
        );
        assert_eq!(
            r[ll_reason::LL_R_NAT_EST.0 as usize],
            2,
            "{hook:?}: followed packets"
        );
    }
}

#[test]
fn nat66_tcp_forward_and_reply() {
    forward_and_reply(Protocol::Tcp);
}

#[test]
fn nat66_udp_forward_and_reply() {
    forward_and_reply(Protocol::Udp);
}

/// Round robin alternates over IPv6 endpoints; hash keeps a flow on one.
#[test]
fn nat66_selection() {
    let dp = load();
    service(
        &dp,
        Protocol::Tcp,
        Selection::RoundRobin,
        &[(EP1, 8080), (EP2, 8080)],
    );
    let firsts: Vec<Ipv6Addr> = (0..4)
        .map(|i| {
            let out = run(
                &dp,
                HookKind::Tc,
                &frame(sa(CLIENT, 41000 + i), sa(VIP, 80), TCP, SYN),
            );
            *dst_of(&out).ip()
        })
        .collect();
    assert_eq!(firsts, [EP1, EP2, EP1, EP2], "round robin");

    let dp = load();
    service(
        &dp,
        Protocol::Tcp,
        Selection::Hash,
        &[(EP1, 8080), (EP2, 8080)],
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..32u16 {
        let src = sa(Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, i, 7), 42000 + i);
        let out = run(&dp, HookKind::Tc, &frame(src, sa(VIP, 80), TCP, SYN));
        seen.insert(*dst_of(&out).ip());
    }
    assert_eq!(
        seen.len(),
        2,
        "the hash spreads IPv6 clients over both endpoints"
    );
}

/// What the load balancer does not handle reaches Linux untouched and
/// creates no flow: a hop-by-hop header, ICMPv6, a cut TCP header.
#[test]
fn nat66_to_linux_untouched() {
    for hook in HOOKS {
        let dp = load();
        service(&dp, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 8080)]);
        let syn = frame(sa(CLIENT, 40000), sa(VIP, 80), TCP, SYN);
        let l4 = &syn[ETH_HLEN + 40..];
        let mut hop = vec![TCP, 0, 1, 4, 0, 0, 0, 0];
        hop.extend_from_slice(l4);
        let cases = [
            ("hop-by-hop header", ipv6(&CLIENT, &VIP, HOPOPTS, &hop)),
            (
                "ICMPv6 echo",
                ipv6(&CLIENT, &VIP, ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]),
            ),
            ("TCP header cut short", ipv6(&CLIENT, &VIP, TCP, &l4[..12])),
        ];
        for (what, f) in cases {
            let before = reasons(&dp);
            assert_eq!(run(&dp, hook, &f), f, "{hook:?} {what}: frame changed");
            let after = reasons(&dp);
            for r in [ll_reason::LL_R_NAT_NEW, ll_reason::LL_R_NAT_EST] {
                assert_eq!(
                    after[r.0 as usize], before[r.0 as usize],
                    "{hook:?} {what}: {r:?}"
                );
            }
        }
        assert_eq!(
            reasons(&dp)[ll_reason::LL_R_PASS_TRUNCATED.0 as usize],
            1,
            "{hook:?}: the cut header counts as truncated"
        );
    }
}

/// The daemon's conntrack work covers IPv6 flows: listing (with the rule's
/// name and the translation), least-connections recounts from their states,
/// deletes by an IPv6 address, and ageing (both entries of each flow).
#[test]
fn nat66_conntrack_in_the_daemon() {
    let dp = Arc::new(load());
    let store =
        RuleStore::open(dp.clone(), None, Default::default()).expect("opening a rule store");
    let eps = [(EP1, 8080), (EP2, 8080)];
    store
        .create(rule(Protocol::Tcp, Selection::LeastConnections, &eps))
        .expect("creating an IPv6 rule");
    let vip = sa(VIP, 80);
    let syn = |port: u16| {
        let out = run(&dp, HookKind::Tc, &frame(sa(CLIENT, port), vip, TCP, SYN));
        *dst_of(&out).ip()
    };
    let (a, b) = (syn(40001), syn(40002));
    assert_eq!((a, b), (EP1, EP2), "lc spreads the first two flows");
    run(
        &dp,
        HookKind::Tc,
        &frame(sa(EP1, 8080), sa(CLIENT, 40001), TCP, SYN | ACK),
    );

    let all = conntrack::list(&dp, &store, &Filter::default(), 10).expect("listing");
    assert_eq!(
        all.entries.len(),
        4,
        "two flows, two entries each: {:?}",
        all.entries
    );
    let first = all
        .entries
        .iter()
        .find(|e| e.sport == 40001 && e.dst == IpAddr::V6(VIP))
        .expect("the first flow's original entry");
    assert_eq!(
        (first.service.as_str(), first.action.as_str(), first.state),
        ("v6", "dnat-[fd00::2:1]:8080", "syn-recv")
    );

    // EP1 gets a third flow; the first and third then reset. Recounted
    // from the table, EP1 carries none and takes the next flow, where the
    // datapath's own count (2 against 1) would send it to EP2.
    assert_eq!(syn(40003), EP1);
    for port in [40001, 40003] {
        run(
            &dp,
            HookKind::Tc,
            &frame(sa(CLIENT, port), vip, TCP, RST | ACK),
        );
    }
    conntrack::refresh_active_flows(&dp, &store).expect("recounting");
    assert_eq!(syn(40004), EP1, "ended IPv6 flows no longer count");

    let client = Filter {
        ip: Some(IpAddr::V6(EP2)),
        ..Filter::default()
    };
    let gone = conntrack::delete(&dp, &client).expect("deleting");
    assert_eq!(
        (gone.flows, gone.entries),
        (1, 2),
        "EP2's flow, both entries"
    );

    let later = monotonic_ns() + 3 * 3600 * 1_000_000_000;
    let report = sweep(&dp, &Timeouts::default(), later, |_| {
        ControlFlow::Continue(())
    })
    .expect("sweeping");
    assert_eq!((report.entries, report.aged, report.orphans), (6, 6, 0));
    let left = conntrack::list(&dp, &store, &Filter::default(), 10).expect("listing");
    assert!(left.entries.is_empty(), "{:?}", left.entries);
}

/// An ICMPv6 error (`kind`, code 0) from `src` to `dst` quoting the IPv6
/// packet of `frame`, with a valid checksum.
fn icmp6_error(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, frame: &[u8]) -> Vec<u8> {
    let mut body = vec![kind, 0, 0, 0, 0, 0, 0x05, 0x00];
    body.extend_from_slice(&frame[ETH_HLEN..]);
    let c = !fold(pseudo(&src, &dst, ICMPV6, body.len()) + sum16(&body));
    body[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6(&src, &dst, ICMPV6, &body)
}

/// An ICMPv6 message of type `kind` laid out as an echo, from `src` to
/// `dst` with identifier `id` and a valid checksum.
fn echo6(src: Ipv6Addr, dst: Ipv6Addr, kind: u8, id: u16) -> Vec<u8> {
    let mut body = vec![kind, 0, 0, 0];
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(b"\x00\x01loxilight ping");
    let c = !fold(pseudo(&src, &dst, ICMPV6, body.len()) + sum16(&body));
    body[2..4].copy_from_slice(&c.to_be_bytes());
    ipv6(&src, &dst, ICMPV6, &body)
}

const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;
const ROUTER_SOLICIT: u8 = 133;
const NEIGHBOUR_SOLICIT: u8 = 135;
const PACKET_TOO_BIG: u8 = 2;
const TIME_EXCEEDED: u8 = 3;

/// ICMPv6 errors about a NAT66 flow reach the other side about the packet
/// it sent or received: a "packet too big" from the endpoint's path
/// reaches the client from the VIP, about its segment to the VIP; a "time
/// exceeded" from the client's side reaches the endpoint about its reply.
#[test]
fn icmp6_errors_about_nat66_flows_are_translated_back() {
    let router = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 0xfe);
    for hook in HOOKS {
        let dp = load();
        service(&dp, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 8080)]);
        let (client, vip, ep) = (sa(CLIENT, 40000), sa(VIP, 80), sa(EP1, 8080));
        run(&dp, hook, &frame(client, vip, TCP, SYN));

        let err = icmp6_error(EP1, CLIENT, PACKET_TOO_BIG, &frame(client, ep, TCP, SYN));
        let out = run(&dp, hook, &err);
        let want = icmp6_error(VIP, CLIENT, PACKET_TOO_BIG, &frame(client, vip, TCP, SYN));
        assert_eq!(out, want, "{hook:?}: packet too big");

        let err = icmp6_error(
            router,
            VIP,
            TIME_EXCEEDED,
            &frame(vip, client, TCP, SYN | ACK),
        );
        let out = run(&dp, hook, &err);
        let want = icmp6_error(
            router,
            EP1,
            TIME_EXCEEDED,
            &frame(ep, client, TCP, SYN | ACK),
        );
        assert_eq!(out, want, "{hook:?}: time exceeded");

        // An error about no flow is left alone.
        let stray = icmp6_error(
            EP2,
            CLIENT,
            PACKET_TOO_BIG,
            &frame(client, sa(EP2, 1), TCP, SYN),
        );
        assert_eq!(run(&dp, hook, &stray), stray, "{hook:?}: unrelated");
        assert_eq!(
            reasons(&dp)[ll_reason::LL_R_NAT_ICMP.0 as usize],
            2,
            "{hook:?}: translated errors"
        );
    }
}

/// A firewall rule: IPv6 sources in `src`/64 get `action`.
fn snat_rule(src: Ipv6Addr, action: FwAction) -> FwEntry {
    FwEntry {
        src: Some((src.into(), 64)),
        ..FwEntry::matching_all(1, 10, action)
    }
}

/// IPv6 SNAT: a new flow leaves from the rule's address with its own port
/// while free, another client's flow with the same port gets another one,
/// replies and ICMPv6 errors come back to each client, pings get their
/// identifiers as ports, and other ICMPv6 goes to Linux untranslated.
#[test]
fn ipv6_snat_translates_flows_replies_and_errors() {
    let public = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    let client2 = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 8);
    let server = sa(Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1), 443);
    let router = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0xfe);
    for hook in HOOKS {
        let dp = load();
        let rule = snat_rule(
            CLIENT,
            FwAction::Snat {
                addr: public.into(),
                port: None,
            },
        );
        dp.set_firewall(&[rule], FwDefault::Allow).unwrap();
        let (c1, c2) = (sa(CLIENT, 40000), sa(client2, 40000));

        let out = run(&dp, hook, &frame(c1, server, TCP, SYN));
        let nat1 = sa(public, 40000);
        assert_eq!(out, frame(nat1, server, TCP, SYN), "{hook:?}: kept port");
        let back = run(&dp, hook, &frame(server, nat1, TCP, SYN | ACK));
        assert_eq!(back, frame(server, c1, TCP, SYN | ACK), "{hook:?}: reply");

        let out = run(&dp, hook, &frame(c2, server, TCP, SYN));
        assert_l4_checksum(&out);
        let src2 = <[u8; 16]>::try_from(&out[ETH_HLEN + 8..ETH_HLEN + 24]).unwrap();
        let nat2 = sa(
            src2.into(),
            u16::from_be_bytes([out[ETH_HLEN + 40], out[ETH_HLEN + 41]]),
        );
        assert_eq!(*nat2.ip(), public);
        assert_ne!(nat2.port(), 40000, "{hook:?}: two flows share no tuple");
        let back = run(&dp, hook, &frame(server, nat2, TCP, ACK));
        assert_eq!(back, frame(server, c2, TCP, ACK), "{hook:?}: second reply");

        // A router's "packet too big" about the translated segment reaches
        // the client about its own.
        let err = icmp6_error(
            router,
            public,
            PACKET_TOO_BIG,
            &frame(nat1, server, TCP, ACK),
        );
        let want = icmp6_error(router, CLIENT, PACKET_TOO_BIG, &frame(c1, server, TCP, ACK));
        assert_eq!(run(&dp, hook, &err), want, "{hook:?}: ICMPv6 error");

        // Pings: the identifier is the port, kept while free.
        let host = *server.ip();
        let out = run(&dp, hook, &echo6(CLIENT, host, ECHO_REQUEST, 77));
        assert_eq!(out, echo6(public, host, ECHO_REQUEST, 77), "{hook:?}: ping");
        let out = run(&dp, hook, &echo6(client2, host, ECHO_REQUEST, 77));
        let id = u16::from_be_bytes([out[ETH_HLEN + 44], out[ETH_HLEN + 45]]);
        assert_ne!(id, 77, "{hook:?}: two pings share no identifier");
        assert_eq!(out, echo6(public, host, ECHO_REQUEST, id), "{hook:?}");
        let back = run(&dp, hook, &echo6(host, public, ECHO_REPLY, id));
        assert_eq!(back, echo6(host, client2, ECHO_REPLY, 77), "{hook:?}: pong");
        // A "time exceeded" about the translated echo reaches its client
        // about its own (traceroute over ICMPv6).
        let about = echo6(public, host, ECHO_REQUEST, id);
        let err = icmp6_error(router, public, TIME_EXCEEDED, &about);
        let mine = echo6(client2, host, ECHO_REQUEST, 77);
        let want = icmp6_error(router, client2, TIME_EXCEEDED, &mine);
        assert_eq!(run(&dp, hook, &err), want, "{hook:?}: error about a ping");
        // Other ICMPv6 has no ports to tell flows apart: Linux gets it.
        let rs = echo6(CLIENT, host, ROUTER_SOLICIT, 0);
        assert_eq!(run(&dp, hook, &rs), rs, "{hook:?}: router solicitation");
        let r = reasons(&dp);
        assert_eq!(
            (
                r[ll_reason::LL_R_NAT_NEW.0 as usize],
                r[ll_reason::LL_R_NAT_ICMP.0 as usize],
                r[ll_reason::LL_R_PASS_NO_SNAT.0 as usize]
            ),
            (4, 2, 1),
            "{hook:?}"
        );

        // Another address in the rule flushes the translated flows.
        let other = snat_rule(
            CLIENT,
            FwAction::Snat {
                addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11).into(),
                port: Some(2000),
            },
        );
        dp.set_firewall(&[other], FwDefault::Allow).unwrap();
        let out = run(&dp, hook, &frame(c1, server, TCP, ACK));
        let nat3 = sa(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x11), 2000);
        assert_eq!(
            out,
            frame(nat3, server, TCP, ACK),
            "{hook:?}: the rule's port"
        );
        // That address leaving the host takes the flow with it (the
        // daemon's mirror calls this), and only that flow.
        let flushed = dp.flush_translated_to(IpAddr::V6(*nat3.ip())).unwrap();
        assert_eq!(flushed, 2, "{hook:?}: both entries of the one flow");
        assert_eq!(dp.flush_translated_to(IpAddr::V6(public)).unwrap(), 0);
    }
}

/// IPv6 masquerade takes the global address of the egress interface whose
/// subnet holds the next hop, else the interface's lowest global address
/// (next hops are usually link-local), never a link-local one.
#[test]
fn ipv6_masquerade_uses_a_global_address_of_the_egress_interface() {
    let dp = load();
    let egress = 5;
    let route = |dst: Ipv6Addr, gw: Ipv6Addr| Route {
        dst: Prefix {
            ip: dst.into(),
            len: 64,
        },
        kind: RouteKind::Unicast,
        metric: 0,
        nexthops: vec![NextHop {
            gateway: Some(gw.into()),
            ifindex: egress,
        }],
    };
    let far = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 1);
    let near = Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1);
    dp.set_route(&route(far, "fe80::1".parse().unwrap()))
        .unwrap();
    dp.set_route(&route(
        near,
        Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0xfe),
    ))
    .unwrap();
    let addr = |ip: &str| Addr {
        ip: ip.parse().unwrap(),
        prefix: 64,
        ifindex: egress,
    };
    dp.set_source_addrs(&[
        addr("fe80::2"),
        addr("2001:db8:1::9"),
        addr("2001:db8:1::5"),
        addr("2001:db8:2::7"),
    ])
    .unwrap();
    dp.set_firewall(&[snat_rule(CLIENT, FwAction::Masquerade)], FwDefault::Allow)
        .unwrap();
    let c = sa(CLIENT, 33000);
    let fallback: Ipv6Addr = "2001:db8:1::5".parse().unwrap();
    let out = run(&dp, HookKind::Tc, &frame(c, sa(far, 80), TCP, SYN));
    assert_eq!(out, frame(sa(fallback, 33000), sa(far, 80), TCP, SYN));
    let on_link: Ipv6Addr = "2001:db8:2::7".parse().unwrap();
    let out = run(&dp, HookKind::Tc, &frame(c, sa(near, 80), TCP, SYN));
    assert_eq!(out, frame(sa(on_link, 33000), sa(near, 80), TCP, SYN));
}

/// IPv6 fullnat: the flow reaches the endpoint from the LB's address on the
/// endpoint's link, with the client's port while free and another one for
/// a second client using the same; replies come back from the VIP. Onearm
/// reaches an endpoint behind the ingress interface from the LB's address
/// there, and leaves one behind another interface to Linux.
#[test]
fn ipv6_fullnat_translates_both_sides() {
    let lb = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 0xfe);
    let lb_in = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 3, 0xfe);
    let client2 = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 8);
    let on_link = |net: Ipv6Addr, ifindex| Route {
        dst: Prefix {
            ip: net.into(),
            len: 112,
        },
        kind: RouteKind::Unicast,
        metric: 0,
        nexthops: vec![NextHop {
            gateway: None,
            ifindex,
        }],
    };
    for hook in HOOKS {
        let dp = load();
        // What BPF_PROG_TEST_RUN gives as the ingress interface.
        let ingress = if hook == HookKind::Tc { 0 } else { 1 };
        dp.set_route(&on_link(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 0), 5))
            .unwrap();
        dp.set_route(&on_link(
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 3, 0),
            ingress,
        ))
        .unwrap();
        let addr = |ip: Ipv6Addr, ifindex| Addr {
            ip: ip.into(),
            prefix: 112,
            ifindex,
        };
        dp.set_source_addrs(&[addr(lb, 5), addr(lb_in, ingress)])
            .unwrap();
        let fullnat = LbRule {
            mode: Mode::FullNat,
            ..rule(Protocol::Tcp, Selection::RoundRobin, &[(EP1, 8080)])
        };
        dp.program_service(1, &fullnat).unwrap();
        let (vip, ep) = (sa(VIP, 80), sa(EP1, 8080));
        let (c1, c2) = (sa(CLIENT, 40000), sa(client2, 40000));

        let out = run(&dp, hook, &frame(c1, vip, TCP, SYN));
        assert_eq!(out, frame(sa(lb, 40000), ep, TCP, SYN), "{hook:?}");
        let back = run(&dp, hook, &frame(ep, sa(lb, 40000), TCP, SYN | ACK));
        assert_eq!(back, frame(vip, c1, TCP, SYN | ACK), "{hook:?}: reply");

        let out = run(&dp, hook, &frame(c2, vip, TCP, SYN));
        let port = u16::from_be_bytes([out[ETH_HLEN + 40], out[ETH_HLEN + 41]]);
        assert_ne!(port, 40000, "{hook:?}: two flows share no tuple");
        assert_eq!(out, frame(sa(lb, port), ep, TCP, SYN), "{hook:?}");
        let back = run(&dp, hook, &frame(ep, sa(lb, port), TCP, ACK));
        assert_eq!(back, frame(vip, c2, TCP, ACK), "{hook:?}: second reply");

        let onearm = LbRule {
            key: ServiceKey {
                port: 81,
                ..fullnat.key
            },
            mode: Mode::OneArm,
            ..fullnat.clone()
        };
        dp.program_service(2, &onearm).unwrap();
        let syn = frame(c1, sa(VIP, 81), TCP, SYN);
        assert_eq!(run(&dp, hook, &syn), syn, "{hook:?}: onearm");
        assert_eq!(
            reasons(&dp)[ll_reason::LL_R_PASS_ONEARM_EGRESS.0 as usize],
            1,
            "{hook:?}"
        );
        // An endpoint behind the ingress interface: from the LB's address there.
        let near = LbRule {
            key: ServiceKey {
                port: 82,
                ..fullnat.key
            },
            ..rule(Protocol::Tcp, Selection::RoundRobin, &[(EP2, 8080)])
        };
        dp.program_service(
            3,
            &LbRule {
                mode: Mode::OneArm,
                ..near
            },
        )
        .unwrap();
        let out = run(&dp, hook, &frame(c1, sa(VIP, 82), TCP, SYN));
        assert_eq!(
            out,
            frame(sa(lb_in, 40000), sa(EP2, 8080), TCP, SYN),
            "{hook:?}"
        );
    }
}

/// A ping to an IPv6 VIP with an `icmp` rule goes to an endpoint (ICMPv6
/// echo, its identifier the flow's port, round robin per identifier) and
/// the reply comes back from the VIP; other ICMPv6 to the VIP (neighbour
/// discovery) is Linux's.
#[test]
fn ping6_to_a_vip_is_answered_by_an_endpoint() {
    for hook in HOOKS {
        let dp = load();
        let icmp = rule(Protocol::Icmp, Selection::RoundRobin, &[(EP1, 0), (EP2, 0)]);
        let icmp = LbRule {
            key: ServiceKey {
                port: 0,
                ..icmp.key
            },
            ..icmp
        };
        dp.program_service(1, &icmp).unwrap();
        let out = run(&dp, hook, &echo6(CLIENT, VIP, ECHO_REQUEST, 7));
        assert_eq!(out, echo6(CLIENT, EP1, ECHO_REQUEST, 7), "{hook:?}");
        let back = run(&dp, hook, &echo6(EP1, CLIENT, ECHO_REPLY, 7));
        assert_eq!(back, echo6(VIP, CLIENT, ECHO_REPLY, 7), "{hook:?}: reply");
        let out = run(&dp, hook, &echo6(CLIENT, VIP, ECHO_REQUEST, 8));
        assert_eq!(out, echo6(CLIENT, EP2, ECHO_REQUEST, 8), "{hook:?}: rr");
        let solicit = echo6(CLIENT, VIP, NEIGHBOUR_SOLICIT, 0);
        assert_eq!(run(&dp, hook, &solicit), solicit, "{hook:?}: NDP");
    }
}
