//! Forwarding tests: the TC and XDP programs run over hand-built frames with
//! BPF_PROG_TEST_RUN against a hand-written mirror of the network state
//! (interfaces, local addresses, routes, neighbours). Needs root (CAP_BPF).
//! The test run does not perform the redirect: the verdict, the rewritten
//! frame and the reason counters show what the datapath decided.
//!
//! Ingress ifindex under BPF_PROG_TEST_RUN without a context (found by
//! `test_runs_arrive_on_ifindex_0_for_tc_and_1_for_xdp`): TC reads
//! skb->skb_iif, which the test run leaves 0; XDP gets the rx queue of the
//! netns's loopback device, ifindex 1. Each test registers the ingress
//! interface under that index, with the MAC that pkt's frames are sent to.
#[allow(dead_code)] // shared with tests/datapath.rs; not every helper is used here
mod pkt;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use loxilight::datapath::types::{ll_ct_state, ll_reason, ll_xlate};
use loxilight::datapath::{Datapath, HookKind, Limits};
use loxilight::kernel::model::{nud, Addr, Iface, Mac, Neigh, NextHop, Prefix, Route, RouteKind};
use loxilight::rules::{LbRule, Mode, Protocol, Selection, ServiceKey};
use pkt::{assert_checksums, icmp_error, parse, quoted, Packet, ACK, ETH_HLEN, L4, SYN, UDP};

const HOOKS: [HookKind; 2] = [HookKind::Tc, HookKind::Xdp];
const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// pkt's frames are sent to this MAC: the ingress interface's.
const IN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
/// Egress interfaces A and B, and the gateway behind each.
const A: u32 = 5;
const A_MAC: Mac = [0x02, 0xa0, 0, 0, 0, 0x05];
const B: u32 = 6;
const B_MAC: Mac = [0x02, 0xb0, 0, 0, 0, 0x06];
const GW_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const GW_A_MAC: Mac = [0x02, 0x9a, 0, 0, 0, 0xfe];
const GW_B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
const GW_B_MAC: Mac = [0x02, 0x9b, 0, 0, 0, 0xfe];
const GW6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const GW6_MAC: Mac = [0x02, 0x96, 0, 0, 0, 0x01];
/// Behind GW_A (198.51.100.0/24 in most tests).
const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 7);
const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);

/// The ingress ifindex the program sees in a test run (see the module doc).
fn ingress_ifindex(hook: HookKind) -> u32 {
    match hook {
        HookKind::Tc => 0,
        HookKind::Xdp => 1,
    }
}

fn prefix(s: &str) -> Prefix {
    let (ip, len) = s.split_once('/').expect("address/length");
    Prefix {
        ip: ip.parse().expect("an address"),
        len: len.parse().expect("a prefix length"),
    }
}

fn via(gw: impl Into<IpAddr>, ifindex: u32) -> NextHop {
    NextHop {
        gateway: Some(gw.into()),
        ifindex,
    }
}

fn onlink(ifindex: u32) -> NextHop {
    NextHop {
        gateway: None,
        ifindex,
    }
}

/// A TCP SYN from CLIENT with source port `sport` to `dst`:80.
fn tcp_to(dst: Ipv4Addr, sport: u16) -> Packet {
    let src = SocketAddrV4::new(*CLIENT.ip(), sport);
    Packet::new(src, SocketAddrV4::new(dst, 80), L4::Tcp { flags: SYN })
}

fn with_macs(mut f: Vec<u8>, dmac: Mac, smac: Mac) -> Vec<u8> {
    f[..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    f
}

/// `p` as forwarded: TTL one lower (checksum recomputed), new MACs.
fn forwarded(p: &Packet, dmac: Mac, smac: Mac) -> Vec<u8> {
    let out = Packet {
        ttl: p.ttl - 1,
        ..p.clone()
    };
    with_macs(out.build(), dmac, smac)
}

/// An IPv6 UDP datagram fd00::1:40000 -> `dst`:53 to IN_MAC, with a valid
/// checksum; `hbh` puts a hop-by-hop header (PadN) before UDP.
fn ipv6(dst: Ipv6Addr, hop_limit: u8, hbh: bool) -> Vec<u8> {
    ipv6_from(
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
        dst,
        hop_limit,
        hbh,
    )
}

fn ipv6_from(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, hbh: bool) -> Vec<u8> {
    let payload = b"loxilight6";
    let len = (8 + payload.len()) as u16;
    let mut udp = [40000u16, 53, len, 0].map(u16::to_be_bytes).concat();
    udp.extend_from_slice(payload);
    let words = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum()
    };
    let mut sum = words(&src.octets()) + words(&dst.octets()) + u32::from(len) + 17;
    sum += words(&udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    udp[6..8].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let (next, ext): (u8, &[u8]) = if hbh {
        (0, &[UDP, 0, 1, 4, 0, 0, 0, 0])
    } else {
        (UDP, &[])
    };
    let mut f = [
        &IN_MAC[..],
        &[0x02, 0, 0, 0, 0, 0x02, 0x86, 0xdd, 0x60, 0, 0, 0],
    ]
    .concat();
    f.extend_from_slice(&((ext.len() + udp.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[next, hop_limit]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(ext);
    f.extend_from_slice(&udp);
    f
}

/// An IPv6 frame as forwarded: hop limit one lower, new MACs.
fn forwarded6(f: &[u8], dmac: Mac, smac: Mac) -> Vec<u8> {
    let mut out = with_macs(f.to_vec(), dmac, smac);
    out[ETH_HLEN + 7] -= 1;
    out
}

/// One datapath with its mirrored network state, run through one hook.
struct Net {
    dp: Arc<Datapath>,
    hook: HookKind,
}

impl Net {
    /// Nothing mirrored yet.
    fn bare(hook: HookKind) -> Net {
        let limits = Limits {
            services: 16,
            conntrack: 256,
            routes: 64,
            neighbours: 64,
        };
        let dp = Datapath::load(limits, None)
            .unwrap_or_else(|e| panic!("datapath tests need root with CAP_BPF: {e}"));
        Net {
            dp: Arc::new(dp),
            hook,
        }
    }

    /// The ingress interface, and A and B attached and up (MTU 1500).
    fn new(hook: HookKind) -> Net {
        let net = Net::bare(hook);
        net.iface(ingress_ifindex(hook), IN_MAC, 1500, true, true);
        net.iface(A, A_MAC, 1500, true, true);
        net.iface(B, B_MAC, 1500, true, true);
        net
    }

    /// `new`, plus DST's /24 via GW_A and 2001:db8:100::/48 via GW6, both on A.
    fn routed(hook: HookKind) -> Net {
        let net = Net::new(hook);
        net.route("198.51.100.0/24", vec![via(GW_A, A)]);
        net.neigh(A, GW_A, GW_A_MAC);
        net.route("2001:db8:100::/48", vec![via(GW6, A)]);
        net.neigh(A, GW6, GW6_MAC);
        net
    }

    fn iface(&self, index: u32, mac: Mac, mtu: u32, up: bool, attached: bool) {
        let i = Iface {
            index,
            name: format!("if{index}"),
            mac,
            mtu,
            up,
            loopback: false,
        };
        self.dp
            .set_iface(&i, attached)
            .expect("writing an interface");
    }

    fn route_kind(&self, dst: &str, kind: RouteKind, nexthops: Vec<NextHop>) {
        let r = Route {
            dst: prefix(dst),
            kind,
            metric: 0,
            nexthops,
        };
        self.dp.set_route(&r).expect("writing a route");
    }

    fn route(&self, dst: &str, nexthops: Vec<NextHop>) {
        self.route_kind(dst, RouteKind::Unicast, nexthops);
    }

    fn neigh(&self, ifindex: u32, ip: impl Into<IpAddr>, mac: Mac) {
        let n = Neigh {
            ifindex,
            ip: ip.into(),
            mac,
            state: nud::REACHABLE,
        };
        self.dp.set_neigh(&n).expect("writing a neighbour");
    }

    fn reasons(&self) -> Vec<u64> {
        let r = self.dp.reason_counters().expect("reading reason counters");
        r.iter().map(|(_, c)| c.packets).collect()
    }

    /// Runs `frame` through the hook; asserts the verdict and that exactly
    /// `counted` reasons went up by one each. Returns the frame as it left.
    fn send(&self, what: &str, frame: &[u8], verdict: u32, counted: &[ll_reason]) -> Vec<u8> {
        let what = format!("{:?}: {what}", self.hook);
        let mut want = self.reasons();
        for r in counted {
            want[r.0 as usize] += 1;
        }
        let r = self
            .dp
            .test_run(self.hook, frame, 1)
            .unwrap_or_else(|e| panic!("{what}: test run: {e}"));
        assert_eq!(self.reasons(), want, "{what}: reason counters");
        assert_eq!(r.retval, verdict, "{what}: verdict");
        r.data
    }

    fn redirect(&self) -> u32 {
        match self.hook {
            HookKind::Tc => TC_ACT_REDIRECT,
            HookKind::Xdp => XDP_REDIRECT,
        }
    }

    fn pass(&self) -> u32 {
        match self.hook {
            HookKind::Tc => TC_ACT_OK,
            HookKind::Xdp => XDP_PASS,
        }
    }

    /// Asserts that `frame` is redirected as `want`, counted LL_R_FWD only.
    fn forwards(&self, what: &str, frame: &[u8], want: &[u8]) {
        let out = self.send(what, frame, self.redirect(), &[ll_reason::LL_R_FWD]);
        assert_eq!(out, want, "{:?}: {what}: frame", self.hook);
    }

    /// Runs an IPv4 TCP/UDP frame and returns (dst MAC, src MAC) it was
    /// forwarded with, checking the rest of the frame and its checksums.
    fn next_hop_of(&self, p: &Packet) -> (Mac, Mac) {
        let out = self.send("flow", &p.build(), self.redirect(), &[ll_reason::LL_R_FWD]);
        assert_checksums(&out);
        let macs = (out[..6].try_into().unwrap(), out[6..12].try_into().unwrap());
        assert_eq!(out, forwarded(p, macs.0, macs.1), "{:?}: {p:?}", self.hook);
        macs
    }

    /// Asserts that `frame` goes to Linux byte for byte, counted `reason` only.
    fn untouched(&self, what: &str, frame: &[u8], reason: ll_reason) {
        let out = self.send(what, frame, self.pass(), &[reason]);
        assert_eq!(out, frame, "{:?}: {what}: frame changed", self.hook);
    }
}

#[test]
fn test_runs_arrive_on_ifindex_0_for_tc_and_1_for_xdp() {
    for hook in HOOKS {
        for index in [0, 1, 2] {
            let net = Net::bare(hook);
            net.iface(index, IN_MAC, 1500, true, true);
            net.iface(A, A_MAC, 1500, true, true);
            net.route("198.51.100.0/24", vec![via(GW_A, A)]);
            net.neigh(A, GW_A, GW_A_MAC);
            let p = tcp_to(DST, 40000);
            let what = format!("ingress registered as {index}");
            if index == ingress_ifindex(hook) {
                net.forwards(&what, &p.build(), &forwarded(&p, GW_A_MAC, A_MAC));
            } else {
                net.untouched(&what, &p.build(), ll_reason::LL_R_PASS_OTHER_HOST);
            }
        }
    }
}

#[test]
fn ipv4_transit_goes_to_the_gateway_with_ttl_decremented() {
    for hook in HOOKS {
        let net = Net::routed(hook);
        for ttl in [64, 2, 255] {
            for l4 in [
                L4::Tcp { flags: SYN },
                L4::Udp { checksum: true },
                L4::Udp { checksum: false },
            ] {
                let p = Packet {
                    ttl,
                    ..Packet::new(CLIENT, SocketAddrV4::new(DST, 53), l4)
                };
                let frame = p.build();
                let what = format!("TTL {ttl} {:?}", p.l4);
                let out = net.send(&what, &frame, net.redirect(), &[ll_reason::LL_R_FWD]);
                assert_checksums(&out);
                assert_eq!(out[..12], [GW_A_MAC, A_MAC].concat(), "{what}: MACs");
                assert_eq!(out[ETH_HLEN + 8], ttl - 1, "{what}: TTL");
                let l4 = parse(&out).l4;
                assert_eq!(out[l4..], frame[l4..], "{what}: L4 changed");
                assert_eq!(out, forwarded(&p, GW_A_MAC, A_MAC), "{what}: frame");
            }
        }
    }
}

#[test]
fn an_on_link_route_resolves_the_destination_itself() {
    for hook in HOOKS {
        let net = Net::new(hook);
        let host = Ipv4Addr::new(192, 0, 2, 10);
        let host_mac = [0x02, 0x33, 0, 0, 0, 0x10];
        net.route("192.0.2.0/24", vec![onlink(A)]);
        net.neigh(A, host, host_mac);
        net.neigh(A, GW_A, GW_A_MAC); // in the same subnet, but not the next hop
        let p = tcp_to(host, 40000);
        net.forwards(
            "to a host on the link",
            &p.build(),
            &forwarded(&p, host_mac, A_MAC),
        );
        let unresolved = tcp_to(Ipv4Addr::new(192, 0, 2, 11), 40000).build();
        net.untouched(
            "to an unresolved host",
            &unresolved,
            ll_reason::LL_R_PASS_NO_NEIGH,
        );
    }
}

#[test]
fn the_longest_prefix_wins_and_the_default_route_catches_the_rest() {
    const C: u32 = 7;
    const C_MAC: Mac = [0x02, 0xc0, 0, 0, 0, 0x07];
    const GW_C: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const GW_C_MAC: Mac = [0x02, 0x9c, 0, 0, 0, 0x01];
    for hook in HOOKS {
        let net = Net::new(hook);
        net.iface(C, C_MAC, 1500, true, true);
        net.route("0.0.0.0/0", vec![via(GW_C, C)]);
        net.route("198.51.0.0/16", vec![via(GW_B, B)]);
        net.route("198.51.100.0/24", vec![via(GW_A, A)]);
        for (ifindex, gw, mac) in [
            (A, GW_A, GW_A_MAC),
            (B, GW_B, GW_B_MAC),
            (C, GW_C, GW_C_MAC),
        ] {
            net.neigh(ifindex, gw, mac);
        }
        let cases = [
            (DST, (GW_A_MAC, A_MAC)),
            (Ipv4Addr::new(198, 51, 100, 255), (GW_A_MAC, A_MAC)),
            (Ipv4Addr::new(198, 51, 101, 7), (GW_B_MAC, B_MAC)),
            (Ipv4Addr::new(198, 51, 255, 1), (GW_B_MAC, B_MAC)),
            (Ipv4Addr::new(198, 52, 100, 7), (GW_C_MAC, C_MAC)),
            (Ipv4Addr::new(203, 0, 113, 9), (GW_C_MAC, C_MAC)),
        ];
        for (dst, macs) in cases {
            assert_eq!(
                net.next_hop_of(&tcp_to(dst, 40000)),
                macs,
                "{hook:?}: to {dst}"
            );
        }
        // Without the /24, its addresses fall back to the /16.
        net.dp
            .del_route(&prefix("198.51.100.0/24"))
            .expect("deleting a route");
        assert_eq!(net.next_hop_of(&tcp_to(DST, 40000)), (GW_B_MAC, B_MAC));
    }
}

#[test]
fn ipv6_transit_goes_to_the_gateway_with_hop_limit_decremented() {
    for hook in HOOKS {
        let net = Net::routed(hook);
        let gw2 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
        let gw2_mac = [0x02, 0x96, 0, 0, 0, 0x02];
        net.route("::/0", vec![via(gw2, B)]);
        net.neigh(B, gw2, gw2_mac);
        for hop_limit in [64, 2, 255] {
            let f = ipv6(DST6, hop_limit, false);
            let what = format!("hop limit {hop_limit}");
            net.forwards(&what, &f, &forwarded6(&f, GW6_MAC, A_MAC));
        }
        let other = ipv6("2001:db8:200::7".parse().unwrap(), 64, false);
        net.forwards("default route", &other, &forwarded6(&other, gw2_mac, B_MAC));
    }
}

#[test]
fn ecmp_spreads_flows_over_next_hops_and_keeps_each_flow_on_one() {
    for hook in HOOKS {
        let net = Net::new(hook);
        net.route("198.51.100.0/24", vec![via(GW_A, A), via(GW_B, B)]);
        net.neigh(A, GW_A, GW_A_MAC);
        net.neigh(B, GW_B, GW_B_MAC);
        let flows: Vec<Packet> = (0..64).map(|i| tcp_to(DST, 40000 + i)).collect();
        let first: Vec<(Mac, Mac)> = flows.iter().map(|p| net.next_hop_of(p)).collect();
        let on_a = first.iter().filter(|&&m| m == (GW_A_MAC, A_MAC)).count();
        let on_b = first.iter().filter(|&&m| m == (GW_B_MAC, B_MAC)).count();
        assert_eq!(on_a + on_b, flows.len(), "{hook:?}: {first:?}");
        assert!(
            on_a >= 8 && on_b >= 8,
            "{hook:?}: {on_a} flows on A, {on_b} on B"
        );
        for _ in 0..2 {
            let again: Vec<(Mac, Mac)> = flows.iter().map(|p| net.next_hop_of(p)).collect();
            assert_eq!(again, first, "{hook:?}: a flow changed next hop");
        }

        // IPv6 hashes on the destination only: spread over destinations.
        let gw6_b = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
        net.route("2001:db8:100::/48", vec![via(GW6, A), via(gw6_b, B)]);
        net.neigh(A, GW6, GW6_MAC);
        net.neigh(B, gw6_b, GW_B_MAC);
        let pick = |i: u16| {
            let dst = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, i, 7);
            let f = ipv6(dst, 64, false);
            let out = net.send("IPv6 flow", &f, net.redirect(), &[ll_reason::LL_R_FWD]);
            let macs: (Mac, Mac) = (out[..6].try_into().unwrap(), out[6..12].try_into().unwrap());
            assert_eq!(out, forwarded6(&f, macs.0, macs.1));
            macs
        };
        let first: Vec<_> = (0..64).map(pick).collect();
        assert!(first.contains(&(GW6_MAC, A_MAC)) && first.contains(&(GW_B_MAC, B_MAC)));
        assert_eq!((0..64).map(pick).collect::<Vec<_>>(), first);
    }
}

#[test]
fn load_balanced_traffic_is_translated_and_forwarded_both_ways() {
    let vip = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
    let ep = SocketAddrV4::new(DST, 8080);
    let client_mac = [0x02, 0xcc, 0, 0, 0, 0x01];
    let rule = LbRule {
        name: "web".into(),
        ..lb_rule(vip, ep, Selection::RoundRobin, Mode::Default)
    };
    for hook in HOOKS {
        let net = Net::routed(hook);
        net.dp
            .program_service(1, &rule)
            .expect("programming a service");
        net.route("10.0.0.0/24", vec![onlink(B)]);
        net.neigh(B, *CLIENT.ip(), client_mac);
        let new = [ll_reason::LL_R_NAT_NEW, ll_reason::LL_R_FWD];
        let est = [ll_reason::LL_R_NAT_EST, ll_reason::LL_R_FWD];

        let syn = Packet::new(CLIENT, vip, L4::Tcp { flags: SYN });
        let out = net.send("SYN", &syn.build(), net.redirect(), &new);
        assert_checksums(&out);
        let want = Packet { dst: ep, ..syn };
        assert_eq!(out, forwarded(&want, GW_A_MAC, A_MAC), "{hook:?}: SYN");

        let synack = Packet::new(ep, CLIENT, L4::Tcp { flags: SYN | ACK });
        let out = net.send("SYN-ACK", &synack.build(), net.redirect(), &est);
        assert_checksums(&out);
        let want = Packet { src: vip, ..synack };
        assert_eq!(
            out,
            forwarded(&want, client_mac, B_MAC),
            "{hook:?}: SYN-ACK"
        );

        let ack = Packet {
            ttl: 9,
            ..Packet::new(CLIENT, vip, L4::Tcp { flags: ACK })
        };
        let out = net.send("ACK", &ack.build(), net.redirect(), &est);
        assert_checksums(&out);
        let want = Packet { dst: ep, ..ack };
        assert_eq!(out, forwarded(&want, GW_A_MAC, A_MAC), "{hook:?}: ACK");
    }
}

#[test]
fn egress_mtu_is_the_limit() {
    for hook in HOOKS {
        let net = Net::routed(hook);
        let sized = |l3_len: usize| Packet {
            payload: vec![0x5a; l3_len - 40],
            ..tcp_to(DST, 40000)
        };
        let fits = sized(1500);
        assert_eq!(fits.build().len(), ETH_HLEN + 1500);
        net.forwards(
            "1500 bytes",
            &fits.build(),
            &forwarded(&fits, GW_A_MAC, A_MAC),
        );
        let big = sized(1501).build();
        net.untouched("1501 bytes", &big, ll_reason::LL_R_PASS_MTU);
        net.iface(A, A_MAC, 9000, true, true);
        let out = net.send("jumbo egress", &big, net.redirect(), &[ll_reason::LL_R_FWD]);
        assert_checksums(&out);
    }
}

#[test]
fn what_linux_must_handle_goes_to_it_untouched() {
    type R = ll_reason;
    for hook in HOOKS {
        let net = Net::routed(hook);
        let local = |ip: &str| Addr {
            ip: ip.parse().unwrap(),
            prefix: 24,
            ifindex: A,
        };
        net.dp.set_local(&local("198.51.100.1")).unwrap();
        net.dp.set_local(&local("2001:db8:100::1")).unwrap();
        // Non-unicast routes with a next hop: only their type can refuse them.
        for (dst, kind) in [
            ("100.64.1.0/24", RouteKind::Blackhole),
            ("100.64.2.0/24", RouteKind::Unreachable),
            ("100.64.3.0/24", RouteKind::Prohibit),
        ] {
            net.route_kind(dst, kind, vec![via(GW_A, A)]);
        }
        // 8: up but not attached; 9: unknown; 10: attached but down.
        net.iface(8, [0x02, 0, 0, 0, 0, 8], 1500, true, false);
        net.iface(10, [0x02, 0, 0, 0, 0, 10], 1500, false, true);
        for i in [8u8, 9, 10] {
            net.route(&format!("100.64.{i}.0/24"), vec![onlink(i.into())]);
            net.neigh(
                i.into(),
                Ipv4Addr::new(100, 64, i, 7),
                [0x02, 0x77, 0, 0, 0, i],
            );
        }
        net.route("100.64.12.0/24", vec![onlink(A)]);

        let to = |dst: [u8; 4]| tcp_to(dst.into(), 40000).build();
        let ok = tcp_to(DST, 40000);
        let edit = |f: &dyn Fn(&mut Packet)| {
            let mut p = ok.clone();
            f(&mut p);
            p.build()
        };
        let v6 = |dst: &str| ipv6(dst.parse().unwrap(), 64, false);
        let dmac = |mac: Mac, f: Vec<u8>| with_macs(f, mac, [0x02, 0, 0, 0, 0, 2]);
        let cases = [
            (
                R::LL_R_PASS_TTL,
                vec![
                    ("TTL 1", edit(&|p| p.ttl = 1)),
                    ("TTL 0", edit(&|p| p.ttl = 0)),
                    ("hop limit 1", ipv6(DST6, 1, false)),
                    ("hop limit 0", ipv6(DST6, 0, false)),
                ],
            ),
            (
                R::LL_R_PASS_LOCAL,
                vec![
                    ("local", to([198, 51, 100, 1])),
                    ("local IPv6", v6("2001:db8:100::1")),
                ],
            ),
            (
                R::LL_R_PASS_NO_ROUTE,
                vec![
                    ("no route", to([203, 0, 113, 9])),
                    ("no IPv6 route", v6("2001:db8:200::7")),
                ],
            ),
            (
                R::LL_R_PASS_ROUTE_TYPE,
                vec![
                    ("blackhole", to([100, 64, 1, 7])),
                    ("unreachable", to([100, 64, 2, 7])),
                    ("prohibit", to([100, 64, 3, 7])),
                ],
            ),
            (
                R::LL_R_PASS_NOT_MANAGED,
                vec![
                    ("egress not attached", to([100, 64, 8, 7])),
                    ("egress unknown", to([100, 64, 9, 7])),
                ],
            ),
            (
                R::LL_R_PASS_EGRESS_DOWN,
                vec![("egress down", to([100, 64, 10, 7]))],
            ),
            (
                R::LL_R_PASS_NO_NEIGH,
                vec![("no neighbour", to([100, 64, 12, 7]))],
            ),
            (
                R::LL_R_PASS_IP_OPTIONS,
                vec![
                    ("IPv4 options", edit(&|p| p.options = vec![1, 1, 1, 0])),
                    ("IPv6 hop-by-hop", ipv6(DST6, 64, true)),
                ],
            ),
            (
                R::LL_R_PASS_VLAN,
                vec![("802.1Q", edit(&|p| p.vlan = Some(100)))],
            ),
            (
                R::LL_R_PASS_MCAST,
                vec![
                    ("224.0.0.5", to([224, 0, 0, 5])),
                    (
                        "224.0.0.5 to 01:00:5e:00:00:05",
                        dmac([1, 0, 0x5e, 0, 0, 5], to([224, 0, 0, 5])),
                    ),
                    ("255.255.255.255", dmac([0xff; 6], to([255; 4]))),
                    (
                        "unicast IP to a group MAC",
                        dmac([1, 0, 0x5e, 0, 0, 1], ok.build()),
                    ),
                    ("ff02::1", v6("ff02::1")),
                    ("fe80::1", v6("fe80::1")),
                ],
            ),
            (
                R::LL_R_PASS_OTHER_HOST,
                vec![(
                    "another host's MAC",
                    dmac([2, 0, 0, 0, 0, 0x99], ok.build()),
                )],
            ),
        ];
        for (reason, frames) in &cases {
            for (what, frame) in frames {
                net.untouched(what, frame, *reason);
            }
        }
        // The setup forwards what it should: only each case's difference counts.
        net.forwards("control", &ok.build(), &forwarded(&ok, GW_A_MAC, A_MAC));
        let ok6 = ipv6(DST6, 64, false);
        net.forwards("IPv6 control", &ok6, &forwarded6(&ok6, GW6_MAC, A_MAC));
    }
}

/// Collects the next `n` neighbour-miss reports, then asserts there is no other.
fn misses(dp: &Arc<Datapath>, n: usize) -> Vec<(u32, IpAddr)> {
    let (tx, rx) = mpsc::channel();
    let dp = Arc::clone(dp);
    let watcher = thread::spawn(move || {
        let mut seen = 0;
        dp.watch_neigh_misses(|ifindex, ip| {
            seen += 1;
            let _ = tx.send((ifindex, ip));
            seen < n
        })
    });
    let got = (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("neighbour-miss report {i} of {n} never came"))
        })
        .collect();
    // Every report was queued before the watch began, so its one poll
    // delivered them all.
    watcher.join().unwrap().expect("watching neighbour misses");
    let extra: Vec<_> = rx.try_iter().collect();
    assert!(extra.is_empty(), "unexpected reports: {extra:?}");
    got
}

#[test]
fn unresolved_next_hops_go_to_linux_and_are_reported_at_most_every_100ms() {
    for hook in HOOKS {
        let net = Net::routed(hook);
        net.route("100.64.12.0/24", vec![onlink(A)]);
        net.route(
            "100.64.13.0/24",
            vec![via(Ipv4Addr::new(192, 0, 2, 250), B)],
        );
        let (a, b) = (Ipv4Addr::new(100, 64, 12, 7), Ipv4Addr::new(100, 64, 12, 8));
        let unresolved = |dst| tcp_to(dst, 40000).build();
        let start = Instant::now();
        net.untouched("first miss", &unresolved(a), ll_reason::LL_R_PASS_NO_NEIGH);
        net.untouched("second miss", &unresolved(a), ll_reason::LL_R_PASS_NO_NEIGH);
        let quick = start.elapsed() < Duration::from_millis(100);
        net.untouched("other host", &unresolved(b), ll_reason::LL_R_PASS_NO_NEIGH);
        let gw = unresolved(Ipv4Addr::new(100, 64, 13, 7));
        net.untouched("unresolved gateway", &gw, ll_reason::LL_R_PASS_NO_NEIGH);
        let mut want = vec![(A, a.into())];
        if !quick {
            want.push((A, a.into())); // too slow a machine to see the limit
        }
        want.extend([(A, b.into()), (B, Ipv4Addr::new(192, 0, 2, 250).into())]);
        assert_eq!(misses(&net.dp, want.len()), want, "{hook:?}");

        // Once the interval has passed, a miss is reported again.
        thread::sleep(Duration::from_millis(150));
        net.untouched("miss later", &unresolved(a), ll_reason::LL_R_PASS_NO_NEIGH);
        assert_eq!(misses(&net.dp, 1), [(A, a.into())], "{hook:?}");

        // Once resolved, the same destination is forwarded.
        let mac = [0x02, 0x77, 0, 0, 0, 7];
        net.neigh(A, a, mac);
        let p = tcp_to(a, 40000);
        net.forwards("resolved", &p.build(), &forwarded(&p, mac, A_MAC));
    }
}

/// The mirror (src/kernel/convert.rs) writes blackhole, unreachable and
/// prohibit routes without next hops.
#[test]
fn non_unicast_routes_as_the_mirror_writes_them_count_their_type() {
    for hook in HOOKS {
        let net = Net::routed(hook);
        for (i, kind) in [
            RouteKind::Blackhole,
            RouteKind::Unreachable,
            RouteKind::Prohibit,
        ]
        .into_iter()
        .enumerate()
        {
            net.route_kind(&format!("100.64.{}.0/24", i + 1), kind, Vec::new());
            let frame = tcp_to(Ipv4Addr::new(100, 64, i as u8 + 1, 7), 40000).build();
            net.untouched(kind.as_str(), &frame, ll_reason::LL_R_PASS_ROUTE_TYPE);
        }
    }
}

/// Linux never forwards these (martian addresses: ip_route_input_slow,
/// ip6_rcv_core, ip6_forward); which pass reason to count is the fix's choice.
#[test]
fn martian_addresses_are_not_forwarded() {
    let martians = |dp: &Datapath| {
        dp.reason_counters().unwrap()[ll_reason::LL_R_PASS_MARTIAN.0 as usize]
            .1
            .packets
    };
    let v4 = |src: [u8; 4], dst: [u8; 4]| {
        let src = SocketAddrV4::new(src.into(), 40000);
        Packet::new(
            src,
            SocketAddrV4::new(dst.into(), 80),
            L4::Tcp { flags: SYN },
        )
        .build()
    };
    let v6 =
        |src: &str, dst: &str| ipv6_from(src.parse().unwrap(), dst.parse().unwrap(), 64, false);
    let cases = [
        ("to 127.0.0.1", v4([10, 0, 0, 1], [127, 0, 0, 1])),
        ("to 0.1.2.3", v4([10, 0, 0, 1], [0, 1, 2, 3])),
        ("from 127.0.0.1", v4([127, 0, 0, 1], DST.octets())),
        ("from 224.0.0.1", v4([224, 0, 0, 1], DST.octets())),
        ("from 0.0.0.0", v4([0; 4], DST.octets())),
        ("to ::1", v6("fd00::1", "::1")),
        ("from ::1", v6("::1", "2001:db8:100::7")),
        ("from fe80::5", v6("fe80::5", "2001:db8:100::7")),
        ("from ff02::1", v6("ff02::1", "2001:db8:100::7")),
    ];
    for hook in HOOKS {
        let net = Net::routed(hook);
        net.route("0.0.0.0/0", vec![via(GW_A, A)]);
        net.route("::/0", vec![via(GW6, A)]);
        for (what, frame) in &cases {
            let before = martians(&net.dp);
            let r = net.dp.test_run(hook, frame, 1).expect("test run");
            assert_eq!(r.retval, net.pass(), "{hook:?}: {what}: verdict");
            assert_eq!(&r.data, frame, "{hook:?}: {what}: frame changed");
            assert_eq!(martians(&net.dp), before + 1, "{hook:?}: {what}: counted");
        }
    }
}

// The modes. The LB's addresses: A has 192.0.2.1/24 (GW_A's subnet) and
// 172.16.5.1/16, B (towards the clients, 10.0.0.0/24) 10.0.0.254/24.
const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 80);
const LB_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT_MAC: Mac = [0x02, 0xcc, 0, 0, 0, 0x01];
const EP_MAC: Mac = [0x02, 0xee, 0, 0, 0, 0x07];
const TC_ACT_SHOT: u32 = 2;
const XDP_DROP: u32 = 1;

fn lb_rule(vip: SocketAddrV4, ep: SocketAddrV4, selection: Selection, mode: Mode) -> LbRule {
    let key = ServiceKey {
        ip: (*vip.ip()).into(),
        port: vip.port(),
        port_max: 0,
        proto: Protocol::Tcp,
    };
    LbRule {
        name: mode.as_str().into(),
        mode,
        ..pkt::lb_rule(key, selection, &[((*ep.ip()).into(), ep.port())])
    }
}

fn addr(ip: [u8; 4], prefix: u8, ifindex: u32) -> Addr {
    Addr {
        ip: IpAddr::from(ip),
        prefix,
        ifindex,
    }
}

impl Net {
    /// `routed`, the LB's addresses, clients on B, and service `id`.
    fn lb(hook: HookKind, rule: &LbRule) -> Net {
        let net = Net::routed(hook);
        let addrs = [
            addr([172, 16, 5, 1], 16, A),
            addr([192, 0, 2, 200], 24, A),
            addr(LB_A.octets(), 24, A),
            addr([10, 0, 0, 254], 24, B),
        ];
        net.dp.set_source_addrs(&addrs).expect("writing addresses");
        net.route("10.0.0.0/24", vec![onlink(B)]);
        for host in 1..=3 {
            net.neigh(B, Ipv4Addr::new(10, 0, 0, host), CLIENT_MAC);
        }
        net.dp
            .program_service(1, rule)
            .expect("programming a service");
        net
    }

    /// A source-translated handshake: the SYN from `client` to `vip` must
    /// leave as `lb`:port -> `ep` with MACs `out` (dst, src), and the SYN-ACK
    /// to `lb`:port come back as `vip` -> `client` with MACs `back`. Returns
    /// the translated source.
    fn snat_handshake(
        &self,
        (client, vip, ep, lb): (SocketAddrV4, SocketAddrV4, SocketAddrV4, Ipv4Addr),
        out: (Mac, Mac),
        back: (Mac, Mac),
    ) -> SocketAddrV4 {
        let hook = self.hook;
        let syn = Packet::new(client, vip, L4::Tcp { flags: SYN });
        let sent = self.send("SYN", &syn.build(), self.redirect(), &NEW);
        assert_checksums(&sent);
        let src = parse(&sent).src;
        assert_eq!(*src.ip(), lb, "{hook:?}: source address");
        let want = Packet {
            src,
            dst: ep,
            ..syn
        };
        assert_eq!(sent, forwarded(&want, out.0, out.1), "{hook:?}: SYN");

        let synack = Packet::new(ep, src, L4::Tcp { flags: SYN | ACK });
        let sent = self.send("SYN-ACK", &synack.build(), self.redirect(), &EST);
        assert_checksums(&sent);
        let want = Packet {
            src: vip,
            dst: client,
            ..synack
        };
        assert_eq!(sent, forwarded(&want, back.0, back.1), "{hook:?}: SYN-ACK");
        src
    }

    fn drop_verdict(&self) -> u32 {
        match self.hook {
            HookKind::Tc => TC_ACT_SHOT,
            HookKind::Xdp => XDP_DROP,
        }
    }
}

const NEW: [ll_reason; 2] = [ll_reason::LL_R_NAT_NEW, ll_reason::LL_R_FWD];
const EST: [ll_reason; 2] = [ll_reason::LL_R_NAT_EST, ll_reason::LL_R_FWD];

fn client_n(host: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), CLIENT.port())
}

#[test]
fn fullnat_translates_the_source_to_the_lb_address_towards_the_endpoint() {
    let ep = SocketAddrV4::new(DST, 8080);
    let rule = lb_rule(VIP, ep, Selection::RoundRobin, Mode::FullNat);
    for hook in HOOKS {
        let net = Net::lb(hook, &rule);
        let mut seen = Vec::new();
        for host in 1..=2 {
            let c = client_n(host);
            // The address of A in GW_A's subnet, the client's port if free.
            let src =
                net.snat_handshake((c, VIP, ep, LB_A), (GW_A_MAC, A_MAC), (CLIENT_MAC, B_MAC));
            if host == 1 {
                assert_eq!(src.port(), c.port(), "{hook:?}: a free port is kept");
            }
            assert!(!seen.contains(&src), "{hook:?}: {src} given twice");
            seen.push(src);

            let ack = Packet::new(c, VIP, L4::Tcp { flags: ACK });
            let out = net.send("ACK", &ack.build(), net.redirect(), &EST);
            let want = Packet {
                src,
                dst: ep,
                ..ack
            };
            assert_eq!(out, forwarded(&want, GW_A_MAC, A_MAC), "{hook:?}: ACK");
        }

        // UDP, with and without a checksum.
        let udp_rule = LbRule {
            key: ServiceKey {
                proto: Protocol::Udp,
                ..rule.key
            },
            ..rule.clone()
        };
        net.dp.program_service(2, &udp_rule).expect("a UDP service");
        for (host, checksum) in [(1, true), (2, false)] {
            let dgram = Packet::new(client_n(host), VIP, L4::Udp { checksum });
            let out = net.send("UDP", &dgram.build(), net.redirect(), &NEW);
            assert_checksums(&out);
            let src = parse(&out).src;
            assert_eq!(*src.ip(), LB_A);
            let want = Packet {
                src,
                dst: ep,
                ..dgram
            };
            assert_eq!(
                out,
                forwarded(&want, GW_A_MAC, A_MAC),
                "{hook:?}: UDP {checksum}"
            );
        }
    }
}

#[test]
fn fullnat_ports_come_from_the_range_and_running_out_drops() {
    let ep = SocketAddrV4::new(DST, 8080);
    let rule = lb_rule(VIP, ep, Selection::RoundRobin, Mode::FullNat);
    for hook in HOOKS {
        let net = Net::lb(hook, &rule);
        net.dp.set_nat_ports(40000..=40001).expect("a port range");
        let syn = |host| Packet::new(client_n(host), VIP, L4::Tcp { flags: SYN }).build();
        let ports: Vec<u16> = (1..=2)
            .map(|host| {
                let out = net.send("SYN", &syn(host), net.redirect(), &NEW);
                parse(&out).src.port()
            })
            .collect();
        assert_eq!(
            ports,
            [40000, 40001],
            "{hook:?}: the client's port, then the other"
        );
        let entries = net.dp.conntrack().expect("reading conntrack").len();

        let out = net.send(
            "SYN with no port left",
            &syn(3),
            net.drop_verdict(),
            &[ll_reason::LL_R_DROP_NAT_PORTS],
        );
        assert_eq!(out, syn(3), "{hook:?}: refused frame");
        assert_eq!(
            net.dp.conntrack().expect("reading conntrack").len(),
            entries,
            "{hook:?}: a refused flow leaves no entry"
        );
        // Established flows carry on.
        let ack = Packet::new(client_n(2), VIP, L4::Tcp { flags: ACK });
        let out = net.send("ACK", &ack.build(), net.redirect(), &EST);
        assert_eq!(parse(&out).src, SocketAddrV4::new(LB_A, 40001));
    }
}

#[test]
fn onearm_leaves_by_the_ingress_interface_from_its_address() {
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 50), 40000);
    let ep = SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 7), 8080);
    let lb = Ipv4Addr::new(10, 9, 0, 1);
    let rule = lb_rule(VIP, ep, Selection::RoundRobin, Mode::OneArm);
    for hook in HOOKS {
        let net = Net::lb(hook, &rule);
        let ingress = ingress_ifindex(hook);
        let mut addrs = vec![addr(lb.octets(), 24, ingress), addr(LB_A.octets(), 24, A)];
        addrs.push(addr([10, 0, 0, 254], 24, B));
        net.dp.set_source_addrs(&addrs).expect("writing addresses");
        net.route("10.9.0.0/24", vec![onlink(ingress)]);
        net.neigh(ingress, *ep.ip(), EP_MAC);
        net.neigh(ingress, *client.ip(), CLIENT_MAC);

        let src = net.snat_handshake(
            (client, VIP, ep, lb),
            (EP_MAC, IN_MAC),
            (CLIENT_MAC, IN_MAC),
        );
        assert_eq!(src.port(), client.port(), "{hook:?}: a free port is kept");

        // An endpoint behind another interface is not onearm's to reach.
        let far = SocketAddrV4::new(DST, 8080);
        let vip2 = SocketAddrV4::new(*VIP.ip(), 81);
        net.dp
            .program_service(2, &lb_rule(vip2, far, Selection::RoundRobin, Mode::OneArm))
            .expect("programming a service");
        let syn = Packet::new(client, vip2, L4::Tcp { flags: SYN }).build();
        net.untouched(
            "SYN to a far endpoint",
            &syn,
            ll_reason::LL_R_PASS_ONEARM_EGRESS,
        );
        assert!(net
            .dp
            .conntrack()
            .unwrap()
            .iter()
            .all(|(k, _)| k.dport != 81u16.to_be()));
    }
}

#[test]
fn dsr_rewrites_only_the_destination_mac_and_tracks_one_direction() {
    let ep_ip = Ipv4Addr::new(192, 0, 2, 7);
    let rule = lb_rule(
        VIP,
        SocketAddrV4::new(ep_ip, VIP.port()),
        Selection::Hash,
        Mode::Dsr,
    );
    for hook in HOOKS {
        let net = Net::lb(hook, &rule);
        net.route("192.0.2.0/24", vec![onlink(A)]);
        net.neigh(A, ep_ip, EP_MAC);
        for (flags, reasons) in [(SYN, NEW), (ACK, EST), (ACK, EST)] {
            let p = Packet::new(CLIENT, VIP, L4::Tcp { flags });
            let out = net.send("client segment", &p.build(), net.redirect(), &reasons);
            assert_checksums(&out);
            // Addresses and ports as sent: the endpoint holds the VIP.
            assert_eq!(out, forwarded(&p, EP_MAC, A_MAC), "{hook:?}: {flags:#x}");
        }
        let ct = net.dp.conntrack().expect("reading conntrack");
        assert_eq!(ct.len(), 1, "{hook:?}: one entry, the client's direction");
        let (k, v) = ct[0];
        assert_eq!(
            (k.saddr, k.daddr),
            (
                u32::from(*CLIENT.ip()).to_be(),
                u32::from(*VIP.ip()).to_be()
            )
        );
        assert_eq!(v.xlate, ll_xlate::LL_XLATE_DSR);
        assert_eq!(v.nat.daddr, u32::from(ep_ip).to_be());
        assert_eq!(
            v.state,
            ll_ct_state::LL_CT_ESTABLISHED,
            "{hook:?}: the client's ACK establishes"
        );
        assert_eq!(v.packets, 3);
    }
}

#[test]
fn fullnat_without_an_address_in_the_next_hops_subnet_takes_the_interfaces_lowest() {
    let far = SocketAddrV4::new(Ipv4Addr::new(100, 64, 0, 9), 8080);
    let gw = Ipv4Addr::new(198, 18, 0, 1);
    let unaddressed = SocketAddrV4::new(Ipv4Addr::new(10, 8, 0, 9), 8080);
    for hook in HOOKS {
        let net = Net::lb(
            hook,
            &lb_rule(VIP, far, Selection::RoundRobin, Mode::FullNat),
        );
        // The gateway is in no subnet of B's: B's lowest address serves.
        net.route("100.64.0.0/24", vec![via(gw, B)]);
        net.neigh(B, gw, GW_B_MAC);
        let syn = Packet::new(client_n(1), VIP, L4::Tcp { flags: SYN });
        let out = net.send("SYN", &syn.build(), net.redirect(), &NEW);
        assert_checksums(&out);
        assert_eq!(
            parse(&out).src,
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 254), 40000)
        );
        // B's address removed: a new flow has no source there any more.
        net.dp
            .set_source_addrs(&[addr(LB_A.octets(), 24, A)])
            .expect("writing addresses");
        let syn = Packet::new(client_n(2), VIP, L4::Tcp { flags: SYN }).build();
        net.untouched(
            "SYN after B lost its address",
            &syn,
            ll_reason::LL_R_PASS_NO_NAT_ADDR,
        );

        // The ingress interface has no address at all: Linux gets the flow.
        let vip2 = SocketAddrV4::new(*VIP.ip(), 81);
        net.dp
            .program_service(
                2,
                &lb_rule(vip2, unaddressed, Selection::RoundRobin, Mode::FullNat),
            )
            .expect("programming a service");
        net.route("10.8.0.0/24", vec![onlink(ingress_ifindex(hook))]);
        let syn = Packet::new(client_n(1), vip2, L4::Tcp { flags: SYN }).build();
        net.untouched("SYN", &syn, ll_reason::LL_R_PASS_NO_NAT_ADDR);
    }
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x100);
/// IPv6 clients, on B.
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xc, 0, 0, 0, 0, 0, 7);

/// `p` (built as IPv4: its ports, L4 header and payload) carried over IPv6
/// from `src` to `dst` instead, hop limit p.ttl, with the L4 checksum for
/// IPv6 (UDP always has one there).
fn as_ipv6(p: &Packet, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let v4 = p.build();
    let mut l4 = v4[ETH_HLEN + 20..].to_vec();
    let proto = v4[ETH_HLEN + 9];
    let at = if proto == UDP { 6 } else { 16 };
    l4[at..at + 2].fill(0);
    let sum = pkt::sum16(&src.octets())
        + pkt::sum16(&dst.octets())
        + u32::from(proto)
        + l4.len() as u32
        + pkt::sum16(&l4);
    l4[at..at + 2].copy_from_slice(&(!pkt::fold(sum)).to_be_bytes());
    let mut f = v4[..12].to_vec();
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[proto, p.ttl]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}

/// `p` as the translator writes an IPv4 header: identification 0 (DF is
/// set, so it identifies no fragments).
fn translated4(p: &Packet) -> Vec<u8> {
    let mut f = p.build();
    let ip = ETH_HLEN..ETH_HLEN + 20;
    f[ETH_HLEN + 4..ETH_HLEN + 6].fill(0);
    f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let c = !pkt::fold(pkt::sum16(&f[ip]));
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

impl Net {
    /// `lb` with an IPv6 VIP served by `rule`'s IPv4 endpoints, and IPv6
    /// clients on B.
    fn nat64(hook: HookKind, rule: &LbRule) -> Net {
        let net = Net::lb(hook, rule);
        net.route("fd00:c::/64", vec![onlink(B)]);
        for host in 7..=9 {
            let mut c = CLIENT6.octets();
            c[15] = host;
            net.neigh(B, Ipv6Addr::from(c), CLIENT_MAC);
        }
        net
    }
}

fn nat64_rule(proto: Protocol) -> LbRule {
    let base = lb_rule(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 80),
        SocketAddrV4::new(DST, 8080),
        Selection::RoundRobin,
        Mode::Default,
    );
    LbRule {
        key: ServiceKey {
            ip: VIP6.into(),
            port: 80,
            port_max: 0,
            proto,
        },
        ..base
    }
}

/// A conntrack key's bytes, to compare keys.
fn pod(k: &loxilight::datapath::types::ll_ct_key) -> [u8; 16] {
    // SAFETY: ll_ct_key is 16 bytes of plain integers.
    unsafe { std::mem::transmute_copy(k) }
}

/// A client port as a placeholder address: as_ipv6 replaces the addresses.
fn port(p: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, p)
}

/// IPv6 to the VIP leaves as IPv4 from the LB's address towards the
/// endpoint, forwarded by the IPv4 routes; the endpoint's replies come back
/// as IPv6 from the VIP, forwarded by the IPv6 routes. Every header is
/// rebuilt exactly, checksums included.
#[test]
fn nat64_translates_both_ways_and_forwards_by_the_new_family() {
    let ep = SocketAddrV4::new(DST, 8080);
    for (proto, l4) in [
        (Protocol::Tcp, L4::Tcp { flags: SYN }),
        (Protocol::Udp, L4::Udp { checksum: true }),
    ] {
        for hook in HOOKS {
            let what = format!("{hook:?} {proto:?}");
            let net = Net::nat64(hook, &nat64_rule(proto));
            let first = Packet::new(port(40000), port(80), l4.clone());
            let out = net.send(
                "first",
                &as_ipv6(&first, CLIENT6, VIP6),
                net.redirect(),
                &NEW,
            );
            assert_checksums(&out);
            let src = parse(&out).src;
            assert_eq!(src, SocketAddrV4::new(LB_A, 40000), "{what}: source");
            let want = Packet {
                src,
                dst: ep,
                ttl: first.ttl - 1,
                ..first.clone()
            };
            assert_eq!(
                out,
                with_macs(translated4(&want), GW_A_MAC, A_MAC),
                "{what}: to the endpoint"
            );

            let reply_l4 = match &l4 {
                L4::Tcp { .. } => L4::Tcp { flags: SYN | ACK },
                other => other.clone(),
            };
            let reply = Packet::new(ep, src, reply_l4);
            let back = net.send("reply", &reply.build(), net.redirect(), &EST);
            let want = Packet {
                src: port(80),
                dst: port(40000),
                ttl: reply.ttl - 1,
                ..reply.clone()
            };
            assert_eq!(
                back,
                with_macs(as_ipv6(&want, VIP6, CLIENT6), CLIENT_MAC, B_MAC),
                "{what}: back to the client"
            );

            // The reply tuple is reserved in the IPv4 table, which claims
            // the port against fullnat and SNAT.
            let ct = net.dp.conntrack().expect("reading conntrack");
            let reserved: Vec<[u8; 16]> = ct
                .iter()
                .filter(|(_, v)| v.xlate.0 & ll_xlate::LL_XLATE_64.0 != 0)
                .map(|(k, _)| pod(k))
                .collect();
            assert_eq!(
                reserved,
                [pod(&pkt::ct_key(ep, src, proto.number()))],
                "{what}: reservation"
            );
        }
    }
}

/// Source ports of NAT64 flows are claimed like fullnat's: a second client
/// with the same port gets another, and running out of ports drops.
/// An IPv4 UDP reply without a checksum (which IPv6 requires) goes to Linux
/// untranslated.
#[test]
fn nat64_claims_ports_and_refuses_what_it_cannot_translate() {
    for hook in HOOKS {
        let net = Net::nat64(hook, &nat64_rule(Protocol::Udp));
        net.dp.set_nat_ports(40000..=40001).expect("a port range");
        let dgram = Packet::new(port(40000), port(80), L4::Udp { checksum: true });
        let client = |host: u8| {
            let mut c = CLIENT6.octets();
            c[15] = host;
            Ipv6Addr::from(c)
        };
        let ports: Vec<u16> = [7, 8]
            .iter()
            .map(|&host| {
                let f = as_ipv6(&dgram, client(host), VIP6);
                let out = net.send("datagram", &f, net.redirect(), &NEW);
                parse(&out).src.port()
            })
            .collect();
        assert_eq!(ports, [40000, 40001], "{hook:?}: claimed ports");
        net.send(
            "no port left",
            &as_ipv6(&dgram, client(9), VIP6),
            net.drop_verdict(),
            &[ll_reason::LL_R_DROP_NAT_PORTS],
        );

        let bare = Packet::new(
            SocketAddrV4::new(DST, 8080),
            SocketAddrV4::new(LB_A, 40000),
            L4::Udp { checksum: false },
        )
        .build();
        let pass = match hook {
            HookKind::Tc => TC_ACT_OK,
            HookKind::Xdp => XDP_PASS,
        };
        let out = net.send(
            "reply without checksum",
            &bare,
            pass,
            &[ll_reason::LL_R_PASS_NAT64],
        );
        assert_eq!(out, bare, "{hook:?}: untouched");
    }
}

/// A reservation lives as long as its flow: a sweep keeps it while the
/// flow is there, and frees it (an orphan) once the flow is gone. Deleting
/// flows never counts the reservation as a flow of its own.
#[test]
fn nat64_reservations_go_with_their_flows() {
    use loxilight::conntrack::{self, sweep, Filter, Timeouts};
    use loxilight::datapath::monotonic_ns;
    use std::ops::ControlFlow;

    let net = Net::nat64(HookKind::Tc, &nat64_rule(Protocol::Tcp));
    let syn = Packet::new(port(40000), port(80), L4::Tcp { flags: SYN });
    net.send("SYN", &as_ipv6(&syn, CLIENT6, VIP6), net.redirect(), &NEW);
    let reserved = |dp: &Datapath| {
        dp.conntrack()
            .expect("reading conntrack")
            .iter()
            .filter(|(_, v)| v.xlate.0 & ll_xlate::LL_XLATE_64.0 != 0)
            .count()
    };
    let later = monotonic_ns() + 3_000_000_000;
    let swept = |dp: &Datapath| {
        sweep(dp, &Timeouts::default(), later, |_| {
            ControlFlow::Continue(())
        })
        .expect("a sweep")
    };
    let report = swept(&net.dp);
    assert_eq!((report.aged, report.orphans), (0, 0), "{report:?}");
    assert_eq!(reserved(&net.dp), 1, "kept while its flow lives");

    let deleted = conntrack::delete(&net.dp, &Filter::default()).expect("deleting flows");
    assert_eq!((deleted.flows, deleted.entries), (1, 2), "{deleted:?}");
    assert_eq!(reserved(&net.dp), 1, "left for the sweep");
    let report = swept(&net.dp);
    assert_eq!(report.orphans, 1, "{report:?}");
    assert_eq!(reserved(&net.dp), 0, "freed with its flow");
}

/// `f` (an icmp_error frame) as forwarded: TTL 63, new MACs.
fn forwarded_error(mut f: Vec<u8>, dmac: Mac, smac: Mac) -> Vec<u8> {
    f[ETH_HLEN + 8] -= 1;
    f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let c = !pkt::fold(pkt::sum16(&f[ETH_HLEN..ETH_HLEN + 20]));
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    with_macs(f, dmac, smac)
}

const ICMP_NAT: [ll_reason; 2] = [ll_reason::LL_R_NAT_ICMP, ll_reason::LL_R_FWD];
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const FRAG_NEEDED: (u8, u8) = (3, 4);
const TTL_EXCEEDED: (u8, u8) = (11, 0);

/// ICMP errors about a load-balanced flow reach the other side as errors
/// about the packets it sent or received: the quoted packet translated back
/// (its checksums too), the outer header translated as the flow's packets
/// going that way, then forwarded.
#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    let ep = SocketAddrV4::new(DST, 8080);
    for hook in HOOKS {
        // default mode (DNAT): the endpoint's "port unreachable" for a
        // datagram to the VIP reaches the client from the VIP, about its
        // own datagram.
        let udp = LbRule {
            key: ServiceKey {
                proto: Protocol::Udp,
                ..lb_rule(VIP, ep, Selection::RoundRobin, Mode::Default).key
            },
            ..lb_rule(VIP, ep, Selection::RoundRobin, Mode::Default)
        };
        let net = Net::lb(hook, &udp);
        let dgram = Packet::new(CLIENT, VIP, L4::Udp { checksum: true });
        net.send("datagram", &dgram.build(), net.redirect(), &NEW);
        let as_sent = Packet {
            dst: ep,
            ttl: 63,
            ..dgram.clone()
        };
        let err = icmp_error(DST, *CLIENT.ip(), PORT_UNREACHABLE, &quoted(&as_sent));
        let out = net.send("port unreachable", &err, net.redirect(), &ICMP_NAT);
        let about = Packet {
            ttl: 63,
            ..dgram.clone()
        };
        let want = icmp_error(*VIP.ip(), *CLIENT.ip(), PORT_UNREACHABLE, &quoted(&about));
        assert_eq!(
            out,
            forwarded_error(want, CLIENT_MAC, B_MAC),
            "{hook:?}: DNAT"
        );

        // The client's side reports a reply it could not deliver (time
        // exceeded, from a router at 10.0.0.254): it reaches the endpoint
        // about the reply as the endpoint sent it.
        let reply = Packet::new(VIP, CLIENT, L4::Udp { checksum: true });
        let err = icmp_error(
            Ipv4Addr::new(10, 0, 0, 254),
            *VIP.ip(),
            TTL_EXCEEDED,
            &quoted(&reply),
        );
        let out = net.send("time exceeded", &err, net.redirect(), &ICMP_NAT);
        let about = Packet { src: ep, ..reply };
        let want = icmp_error(
            Ipv4Addr::new(10, 0, 0, 254),
            DST,
            TTL_EXCEEDED,
            &quoted(&about),
        );
        assert_eq!(
            out,
            forwarded_error(want, GW_A_MAC, A_MAC),
            "{hook:?}: towards the endpoint"
        );

        // fullnat: "fragmentation needed" to the LB's address, quoting a
        // whole TCP segment (its checksum too), reaches the client from
        // the VIP about its own segment.
        let rule = lb_rule(VIP, ep, Selection::RoundRobin, Mode::FullNat);
        let net = Net::lb(hook, &rule);
        let src = net.snat_handshake(
            (CLIENT, VIP, ep, LB_A),
            (GW_A_MAC, A_MAC),
            (CLIENT_MAC, B_MAC),
        );
        let seg = Packet::new(CLIENT, VIP, L4::Tcp { flags: ACK });
        let as_sent = Packet {
            src,
            dst: ep,
            ttl: 63,
            ..seg.clone()
        };
        let err = icmp_error(GW_A, LB_A, FRAG_NEEDED, &quoted(&as_sent));
        let out = net.send("fragmentation needed", &err, net.redirect(), &ICMP_NAT);
        let about = Packet { ttl: 63, ..seg };
        let want = icmp_error(*VIP.ip(), *CLIENT.ip(), FRAG_NEEDED, &quoted(&about));
        assert_eq!(
            out,
            forwarded_error(want, CLIENT_MAC, B_MAC),
            "{hook:?}: fullnat"
        );

        // An error about no tracked flow is forwarded as it is.
        let stray = Packet::new(
            SocketAddrV4::new(DST, 1),
            CLIENT,
            L4::Udp { checksum: true },
        );
        let err = icmp_error(*CLIENT.ip(), DST, PORT_UNREACHABLE, &quoted(&stray));
        let out = net.send("unrelated", &err, net.redirect(), &[ll_reason::LL_R_FWD]);
        assert_eq!(
            out,
            forwarded_error(err, GW_A_MAC, A_MAC),
            "{hook:?}: unrelated"
        );
    }
}
