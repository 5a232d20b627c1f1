//! Datapath tests: the TC program run over hand-built frames with
//! BPF_PROG_TEST_RUN, without attaching it anywhere. Needs root (CAP_BPF).
//! Test-run frames arrive as CHECKSUM_NONE, so every incremental checksum
//! update must leave exactly valid checksums.
#[allow(dead_code)] // shared with other test binaries; not every helper is used here
mod pkt;

use std::net::{Ipv4Addr, SocketAddrV4};

use loxilight::datapath::types::{ll_counters, ll_ct_dir, ll_ct_state, ll_reason, ll_xlate};
use loxilight::datapath::{Datapath, Error, HookKind};
use loxilight::rules::{Endpoint, LbRule, Protocol, Selection, ServiceKey, SourcePrefix};
use pkt::{
    assert_checksums, load, parse, reasons, Packet, ACK, ETH_HLEN, ICMP, IP_DF, L4, SYN, TCP, UDP,
};

const TC_ACT_OK: u32 = 0;
const VIP: Ipv4Addr = Ipv4Addr::new(20, 20, 20, 1);
const PORT: u16 = 2020;
const SERVICE: SocketAddrV4 = SocketAddrV4::new(VIP, PORT);
const EP1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 1), 8080);
const EP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 2), 8080);
const UDP_EP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 1), 9000);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

fn key(proto: Protocol) -> ServiceKey {
    ServiceKey {
        ip: VIP.into(),
        port: PORT,
        port_max: 0,
        proto,
    }
}

/// Installs VIP:PORT/proto as service `id` with (endpoint, weight) pairs.
fn service(
    dp: &Datapath,
    id: u32,
    proto: Protocol,
    selection: Selection,
    eps: &[(SocketAddrV4, u8)],
) {
    let rule = LbRule {
        name: format!("svc{id}"),
        endpoints: weighted(eps),
        ..pkt::lb_rule(key(proto), selection, &[])
    };
    dp.program_service(id, &rule)
        .expect("programming a service");
}

/// Endpoints with their weights.
fn weighted(eps: &[(SocketAddrV4, u8)]) -> Vec<Endpoint> {
    eps.iter()
        .map(|&(a, weight)| Endpoint {
            ip: (*a.ip()).into(),
            port: a.port(),
            weight,
        })
        .collect()
}

/// Runs the program over one frame; it must hand it on (TC_ACT_OK).
fn run(dp: &Datapath, frame: &[u8]) -> Vec<u8> {
    let r = dp
        .test_run(HookKind::Tc, frame, 1)
        .unwrap_or_else(|e| panic!("test run over {frame:02x?}: {e}"));
    assert_eq!(r.retval, TC_ACT_OK, "verdict for {frame:02x?}");
    r.data
}

/// Asserts that `out` is exactly `want` (the sent frame with its addresses
/// and ports translated) and that its checksums verify.
fn assert_frame(out: &[u8], want: &Packet) {
    let p = parse(out);
    assert_eq!((p.src, p.dst), (want.src, want.dst), "addresses and ports");
    assert_checksums(out);
    assert_eq!(out, want.build(), "frame bytes");
}

/// Sends a new TCP flow from `src` to the service and returns where it went.
fn endpoint_of(dp: &Datapath, src: SocketAddrV4) -> SocketAddrV4 {
    let out = run(
        dp,
        &Packet::new(src, SERVICE, L4::Tcp { flags: SYN }).build(),
    );
    assert_checksums(&out);
    parse(&out).dst
}

/// Asserts that `frame` comes back byte for byte with TC_ACT_OK and is
/// counted under `reason` and no other.
fn assert_untouched(dp: &Datapath, what: &str, frame: &[u8], reason: ll_reason) {
    let mut want = reasons(dp);
    want[reason.0 as usize] += 1;
    assert_eq!(run(dp, frame), frame, "{what}: frame changed");
    assert_eq!(reasons(dp), want, "{what}: reason counters");
}

/// A conntrack entry in host terms, without its timestamp.
#[derive(Debug, PartialEq)]
struct Ct {
    src: SocketAddrV4,
    dst: SocketAddrV4,
    proto: u8,
    /// The tuple after translation, and which of its sides change.
    nat: (SocketAddrV4, SocketAddrV4),
    xlate: ll_xlate,
    dir: ll_ct_dir,
    state: ll_ct_state,
    svc_id: u32,
    ep_idx: u32,
    packets: u64,
    bytes: u64,
}

/// Every conntrack entry, sorted by service, source and destination.
fn conntrack(dp: &Datapath) -> Vec<Ct> {
    let addr = |a: u32, p: u16| SocketAddrV4::new(Ipv4Addr::from(u32::from_be(a)), u16::from_be(p));
    let mut v: Vec<Ct> = dp
        .conntrack()
        .expect("reading conntrack")
        .into_iter()
        .map(|(k, c)| Ct {
            src: addr(k.saddr, k.sport),
            dst: addr(k.daddr, k.dport),
            proto: k.proto,
            nat: (
                addr(c.nat.saddr, c.nat.sport),
                addr(c.nat.daddr, c.nat.dport),
            ),
            xlate: c.xlate,
            dir: c.dir,
            state: c.state,
            svc_id: c.svc_id,
            ep_idx: c.ep_idx,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    v.sort_by_key(|c| (c.svc_id, c.src, c.dst));
    v
}

#[test]
fn tcp_syn_to_the_vip_is_dnated() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let syn = Packet::new(client(40000), SERVICE, L4::Tcp { flags: SYN });
    let out = run(&dp, &syn.build());
    assert_frame(&out, &Packet { dst: EP1, ..syn });
}

#[test]
fn udp_to_the_vip_is_dnated_with_and_without_checksum() {
    let dp = load();
    service(&dp, 1, Protocol::Udp, Selection::RoundRobin, &[(UDP_EP, 1)]);
    for (port, checksum) in [(40000, true), (40001, false)] {
        let dgram = Packet::new(client(port), SERVICE, L4::Udp { checksum });
        let out = run(&dp, &dgram.build());
        assert_frame(
            &out,
            &Packet {
                dst: UDP_EP,
                ..dgram
            },
        );
        let l4 = parse(&out).l4;
        assert_eq!(
            out[l4 + 6..l4 + 8] != [0, 0],
            checksum,
            "UDP checksum {checksum}"
        );
    }
}

#[test]
fn replies_are_reverse_translated_and_conntrack_follows_the_flow() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let c = client(40000);
    let syn = Packet::new(c, SERVICE, L4::Tcp { flags: SYN }).build();
    run(&dp, &syn);
    let entries = |state, orig: &[u8], reply: &[&[u8]]| {
        vec![
            Ct {
                src: c,
                dst: SERVICE,
                proto: TCP,
                nat: (c, EP1),
                xlate: ll_xlate::LL_XLATE_DST,
                dir: ll_ct_dir::LL_CT_ORIGINAL,
                state,
                svc_id: 1,
                ep_idx: 0,
                packets: 1,
                bytes: orig.len() as u64,
            },
            Ct {
                src: EP1,
                dst: c,
                proto: TCP,
                nat: (SERVICE, c),
                xlate: ll_xlate::LL_XLATE_SRC,
                dir: ll_ct_dir::LL_CT_REPLY,
                state,
                svc_id: 1,
                ep_idx: 0,
                packets: reply.len() as u64,
                bytes: reply.iter().map(|f| f.len() as u64).sum(),
            },
        ]
    };
    assert_eq!(
        conntrack(&dp),
        entries(ll_ct_state::LL_CT_SYN_SENT, &syn, &[])
    );

    let synack = Packet {
        payload: Vec::new(),
        ..Packet::new(EP1, c, L4::Tcp { flags: SYN | ACK })
    };
    let out = run(&dp, &synack.build());
    assert_frame(
        &out,
        &Packet {
            src: SERVICE,
            ..synack.clone()
        },
    );
    assert_eq!(
        conntrack(&dp),
        entries(ll_ct_state::LL_CT_SYN_RECV, &syn, &[&synack.build()])
    );
}

#[test]
fn round_robin_alternates_between_endpoints() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::RoundRobin,
        &[(EP1, 1), (EP2, 1)],
    );
    let got: Vec<_> = (0..8)
        .map(|i| endpoint_of(&dp, client(40000 + i)))
        .collect();
    assert_eq!(got, [EP1, EP2].repeat(4));
}

#[test]
fn hash_selection_is_a_function_of_the_tuple() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::Hash,
        &[(EP1, 1), (EP2, 1)],
    );
    let clients: Vec<_> = (0..32u16)
        .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + (i % 8) as u8), 40000 + i))
        .collect();
    let first: Vec<_> = clients.iter().map(|&c| endpoint_of(&dp, c)).collect();
    assert!(first.contains(&EP1) && first.contains(&EP2), "{first:?}");

    dp.flush_conntrack(|_, _| true).expect("flushing conntrack");
    assert!(conntrack(&dp).is_empty());
    // Reverse order: a cursor-based choice would not reproduce `first`.
    let mut again: Vec<_> = clients.iter().rev().map(|&c| endpoint_of(&dp, c)).collect();
    again.reverse();
    assert_eq!(again, first);
}

#[test]
fn round_robin_honours_weights() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::RoundRobin,
        &[(EP1, 3), (EP2, 1)],
    );
    let got: Vec<_> = (0..16)
        .map(|i| endpoint_of(&dp, client(40000 + i)))
        .collect();
    for four in got.chunks(4) {
        assert_eq!(four.iter().filter(|&&e| e == EP1).count(), 3, "{got:?}");
    }
    assert_eq!(dp.endpoint_counters(1, 0).unwrap().packets, 12);
    assert_eq!(dp.endpoint_counters(1, 1).unwrap().packets, 4);
}

#[test]
fn traffic_for_no_service_passes_untouched() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let c = client(40000);
    let tcp = |dst| Packet::new(c, dst, L4::Tcp { flags: SYN }).build();
    let arp = pkt::arp();
    let tagged_arp = [&arp[..12], &[0x81, 0x00, 0x00, 100], &arp[12..]].concat();
    let icmp = Packet {
        payload: vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0], // echo request
        ..Packet::new(
            SocketAddrV4::new(CLIENT, 0),
            SocketAddrV4::new(VIP, 0),
            L4::Raw(ICMP),
        )
    };
    let cases = [
        (
            "TCP to another address",
            tcp(SocketAddrV4::new(Ipv4Addr::new(20, 20, 20, 2), PORT)),
            ll_reason::LL_R_PASS_OTHER_HOST,
        ),
        (
            "TCP to another port",
            tcp(SocketAddrV4::new(VIP, PORT + 1)),
            ll_reason::LL_R_PASS_OTHER_HOST,
        ),
        (
            "UDP to the TCP service",
            Packet::new(c, SERVICE, L4::Udp { checksum: true }).build(),
            ll_reason::LL_R_PASS_OTHER_HOST,
        ),
        ("ARP", arp, ll_reason::LL_R_PASS_NOT_IP),
        ("802.1Q ARP", tagged_arp, ll_reason::LL_R_PASS_NOT_IP),
        ("IPv6", pkt::ipv6_tcp(), ll_reason::LL_R_PASS_OTHER_HOST),
        (
            "ICMP to the VIP",
            icmp.build(),
            ll_reason::LL_R_PASS_OTHER_HOST,
        ),
    ];
    for (what, frame, reason) in cases {
        assert_untouched(&dp, what, &frame, reason);
    }
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn vlan_tagged_frames_are_translated_behind_the_tag() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let c = client(40000);
    let syn = Packet {
        vlan: Some(100),
        ..Packet::new(c, SERVICE, L4::Tcp { flags: SYN })
    };
    let out = run(&dp, &syn.build());
    assert_eq!(out[12..ETH_HLEN + 4], [0x81, 0x00, 0x00, 100, 0x08, 0x00]);
    assert_frame(&out, &Packet { dst: EP1, ..syn });

    let synack = Packet {
        vlan: Some(100),
        ..Packet::new(EP1, c, L4::Tcp { flags: SYN | ACK })
    };
    let out = run(&dp, &synack.build());
    assert_frame(
        &out,
        &Packet {
            src: SERVICE,
            ..synack
        },
    );
}

#[test]
fn ipv4_options_shift_the_l4_header() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    service(&dp, 2, Protocol::Udp, Selection::RoundRobin, &[(UDP_EP, 1)]);
    let options = [
        vec![1, 1, 1, 0],                // IHL 6: NOPs, end of list
        vec![0x94, 4, 0, 0, 1, 1, 1, 0], // IHL 7: router alert, NOPs, end
    ];
    let mut port = 40000;
    for opts in options {
        for (l4, ep) in [
            (L4::Tcp { flags: SYN }, EP1),
            (L4::Udp { checksum: true }, UDP_EP),
        ] {
            port += 1;
            let sent = Packet {
                options: opts.clone(),
                ..Packet::new(client(port), SERVICE, l4)
            };
            let out = run(&dp, &sent.build());
            assert_eq!(usize::from(out[ETH_HLEN] & 0x0f), 5 + opts.len() / 4);
            assert_frame(&out, &Packet { dst: ep, ..sent });
        }
    }
}

/// Frames cut short at every length up to the end of the L4 header, with
/// and without a VLAN tag: untouched, or refused by the test run itself.
#[test]
fn truncated_frames_pass_untouched() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    service(&dp, 2, Protocol::Udp, Selection::RoundRobin, &[(UDP_EP, 1)]);
    let refused = |what: &str, cut: &[u8]| match dp.test_run(HookKind::Tc, cut, 1) {
        Err(Error::Io { source, .. }) => source.raw_os_error() == Some(libc::EINVAL),
        r => panic!("{what}: expected EINVAL, got {r:?}"),
    };
    for vlan in [None, Some(100)] {
        for (l4, l4_len) in [
            (L4::Tcp { flags: SYN }, 20),
            (L4::Udp { checksum: true }, 8),
        ] {
            let full = Packet {
                vlan,
                payload: Vec::new(),
                ..Packet::new(client(40000), SERVICE, l4)
            }
            .build();
            let l3 = parse(&full).l3;
            assert_eq!(full.len(), l3 + 20 + l4_len);
            for len in 0..full.len() {
                let what = format!("{vlan:?} {len} of {} bytes", full.len());
                let cut = &full[..len];
                if len < ETH_HLEN {
                    assert!(refused(&what, cut), "{what}");
                } else if len < l3 + 20 {
                    // Recent kernels refuse an ETH_P_IP frame without a whole
                    // IPv4 header; behind the VLAN tag the program sees it.
                    if vlan.is_some() || dp.test_run(HookKind::Tc, cut, 1).is_ok() {
                        assert_untouched(&dp, &what, cut, ll_reason::LL_R_PASS_TRUNCATED);
                    } else {
                        assert!(refused(&what, cut), "{what}");
                    }
                } else {
                    // The IPv4 total length claims bytes that are not there.
                    assert_untouched(&dp, &what, cut, ll_reason::LL_R_PASS_BAD_HEADER);
                    // Consistent total length, but the L4 header is cut.
                    let mut cut = cut.to_vec();
                    cut[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
                    assert_untouched(&dp, &what, &cut, ll_reason::LL_R_PASS_TRUNCATED);
                }
            }
        }
    }
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn bad_ipv4_headers_pass_untouched() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let good = Packet::new(client(40000), SERVICE, L4::Tcp { flags: SYN }).build();
    // Patches (offset in the IPv4 header, bytes) applied to `good`.
    let with = |patches: &[(usize, &[u8])]| {
        let mut f = good.clone();
        for &(at, bytes) in patches {
            f[ETH_HLEN + at..ETH_HLEN + at + bytes.len()].copy_from_slice(bytes);
        }
        f
    };
    let ip_len = good.len() - ETH_HLEN;
    let len = |n: usize| (n as u16).to_be_bytes();
    let bad = ll_reason::LL_R_PASS_BAD_HEADER;
    let mut cases: Vec<(String, Vec<u8>, ll_reason)> = (0..5)
        .map(|ihl| (format!("IHL {ihl}"), with(&[(0, &[0x40 | ihl])]), bad))
        .collect();
    for version in [0, 6, 15] {
        let f = with(&[(0, &[version << 4 | 5])]);
        cases.push((format!("version {version}"), f, bad));
    }
    cases.extend([
        (
            "IHL 15 past the total length".into(),
            with(&[(0, &[0x4f]), (2, &len(40))]),
            bad,
        ),
        (
            "IHL 15, total length past the frame".into(),
            with(&[(0, &[0x4f]), (2, &len(ip_len + 1))]),
            bad,
        ),
        (
            // Consistent IPv4 header, but the TCP header would end past the frame.
            "IHL 15, no room for TCP".into(),
            with(&[(0, &[0x4f]), (2, &len(ip_len))]),
            ll_reason::LL_R_PASS_TRUNCATED,
        ),
        ("total length < IHL".into(), with(&[(2, &len(19))]), bad),
        (
            "total length past the frame".into(),
            with(&[(2, &len(ip_len + 1))]),
            bad,
        ),
        ("total length 65535".into(), with(&[(2, &len(65535))]), bad),
    ]);
    for (what, frame, reason) in &cases {
        assert_untouched(&dp, what, frame, *reason);
    }
    assert!(conntrack(&dp).is_empty());
    // The program is unharmed: the well-formed frame is still translated.
    assert_eq!(parse(&run(&dp, &good)).dst, EP1);
}

#[test]
fn fragments_to_the_vip_pass_untouched() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    service(&dp, 2, Protocol::Udp, Selection::RoundRobin, &[(UDP_EP, 1)]);
    const MF: u16 = 0x2000;
    for frag_off in [MF, MF | 1, 1, 0x1fff, IP_DF | 185, MF | IP_DF] {
        for l4 in [L4::Tcp { flags: SYN }, L4::Udp { checksum: true }] {
            let frame = Packet {
                frag_off,
                ..Packet::new(client(40000), SERVICE, l4.clone())
            }
            .build();
            let what = format!("{l4:?} frag_off {frag_off:#06x}");
            assert_untouched(&dp, &what, &frame, ll_reason::LL_R_PASS_FRAGMENT);
        }
    }
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn counters_follow_the_traffic() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::RoundRobin,
        &[(EP1, 1), (EP2, 1)],
    );
    let (a, b) = (client(40000), client(40001));
    let syn_a = Packet::new(a, SERVICE, L4::Tcp { flags: SYN }).build();
    let ep_a = parse(&run(&dp, &syn_a)).dst;
    let synack = Packet::new(ep_a, a, L4::Tcp { flags: SYN | ACK }).build();
    run(&dp, &synack);
    let ack = Packet {
        payload: vec![0x5a; 100],
        ..Packet::new(a, SERVICE, L4::Tcp { flags: ACK })
    }
    .build();
    assert_eq!(parse(&run(&dp, &ack)).dst, ep_a);
    let syn_b = Packet::new(b, SERVICE, L4::Tcp { flags: SYN }).build();
    let ep_b = parse(&run(&dp, &syn_b)).dst;
    assert_ne!(ep_a, ep_b, "round robin");

    let sum = |frames: &[&[u8]]| {
        (
            frames.len() as u64,
            frames.iter().map(|f| f.len() as u64).sum(),
        )
    };
    let counters = |c: ll_counters| (c.packets, c.bytes);
    let (idx_a, idx_b) = if ep_a == EP1 { (0, 1) } else { (1, 0) };
    assert_eq!(
        counters(dp.service_counters(1).unwrap()),
        sum(&[&syn_a, &synack, &ack, &syn_b])
    );
    assert_eq!(
        counters(dp.endpoint_counters(1, idx_a).unwrap()),
        sum(&[&syn_a, &synack, &ack])
    );
    assert_eq!(
        counters(dp.endpoint_counters(1, idx_b).unwrap()),
        sum(&[&syn_b])
    );
    assert_eq!(counters(dp.endpoint_counters(1, 2).unwrap()), (0, 0));
    assert_eq!(counters(dp.service_counters(2).unwrap()), (0, 0));

    let by_reason = dp.reason_counters().unwrap();
    let reason = |r: ll_reason| counters(by_reason[r.0 as usize].1);
    assert_eq!(reason(ll_reason::LL_R_NAT_NEW), sum(&[&syn_a, &syn_b]));
    assert_eq!(reason(ll_reason::LL_R_NAT_EST), sum(&[&synack, &ack]));
    // Each translated packet also ends with one verdict: with no mirrored
    // interfaces, none is for us to forward.
    assert_eq!(
        reason(ll_reason::LL_R_PASS_OTHER_HOST),
        sum(&[&syn_a, &synack, &ack, &syn_b])
    );
    let total: u64 = by_reason.iter().map(|(_, c)| c.packets).sum();
    assert_eq!(total, 8, "{by_reason:?}");
}

#[test]
fn deleting_a_service_removes_its_flows() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    service(&dp, 2, Protocol::Udp, Selection::RoundRobin, &[(UDP_EP, 1)]);
    let c = client(40000);
    let syn = Packet::new(c, SERVICE, L4::Tcp { flags: SYN }).build();
    let dgram = Packet::new(c, SERVICE, L4::Udp { checksum: true });
    assert_eq!(parse(&run(&dp, &syn)).dst, EP1);
    assert_eq!(parse(&run(&dp, &dgram.build())).dst, UDP_EP);
    assert_eq!(conntrack(&dp).len(), 4);

    dp.delete_services(&[(key(Protocol::Tcp), 1)])
        .expect("deleting the TCP service");
    let left = conntrack(&dp);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter().all(|e| e.svc_id == 2 && e.proto == UDP),
        "{left:?}"
    );
    let c1 = dp.service_counters(1).unwrap();
    assert_eq!((c1.packets, c1.bytes), (0, 0));

    assert_untouched(
        &dp,
        "SYN after delete",
        &syn,
        ll_reason::LL_R_PASS_OTHER_HOST,
    );
    let synack = Packet::new(EP1, c, L4::Tcp { flags: SYN | ACK }).build();
    assert_untouched(
        &dp,
        "reply after delete",
        &synack,
        ll_reason::LL_R_PASS_OTHER_HOST,
    );
    // The other service's flow is intact.
    let out = run(&dp, &dgram.build());
    assert_frame(
        &out,
        &Packet {
            dst: UDP_EP,
            ..dgram
        },
    );
    assert_eq!(conntrack(&dp).len(), 2);
}

#[test]
fn an_l4_header_outside_the_ip_packet_passes_untouched() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    for tot_len in [20u16, 30] {
        // The TCP header now sits in the Ethernet trailer, not in the packet.
        let mut f = Packet::new(client(40000), SERVICE, L4::Tcp { flags: SYN }).build();
        let ip = ETH_HLEN..ETH_HLEN + 20;
        f[ETH_HLEN + 2..ETH_HLEN + 4].copy_from_slice(&tot_len.to_be_bytes());
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
        let sum = f[ip.clone()]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let c = !(((sum & 0xffff) + (sum >> 16)) as u16);
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
        assert_untouched(&dp, "L4 in trailer", &f, ll_reason::LL_R_PASS_TRUNCATED);
    }
    assert!(conntrack(&dp).is_empty());
}

#[test]
fn a_reply_tuple_owned_by_another_live_flow_is_refused() {
    let dp = load();
    service(&dp, 1, Protocol::Tcp, Selection::RoundRobin, &[(EP1, 1)]);
    let other_vip = SocketAddrV4::new(Ipv4Addr::new(20, 20, 20, 2), PORT);
    let key = ServiceKey {
        ip: (*other_vip.ip()).into(),
        ..key(Protocol::Tcp)
    };
    let rule = LbRule {
        name: "other".into(),
        ..pkt::lb_rule(
            key,
            Selection::RoundRobin,
            &[((*EP1.ip()).into(), EP1.port())],
        )
    };
    dp.program_service(2, &rule).expect("programming a service");

    // Same client address and port to both VIPs, both towards EP1: the
    // endpoint's replies could not be told apart, so the second is refused.
    assert_eq!(endpoint_of(&dp, client(40000)), EP1);
    let second = Packet::new(client(40000), other_vip, L4::Tcp { flags: SYN }).build();
    assert_untouched(&dp, "clashing flow", &second, ll_reason::LL_R_PASS_CT_CLASH);
    assert_eq!(conntrack(&dp).len(), 2);

    // Once the first flow is gone, its tuple is free again.
    dp.flush_conntrack(|_, ct| ct.svc_id == 1)
        .expect("flushing the first flow");
    let out = run(&dp, &second);
    assert_eq!(parse(&out).dst, EP1);
    assert_eq!(conntrack(&dp).len(), 2);
}

const EP3: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 3), 8080);
const EP4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 4), 8080);

fn tally(dp: &Datapath, sources: impl Iterator<Item = SocketAddrV4>) -> Vec<SocketAddrV4> {
    sources.map(|s| endpoint_of(dp, s)).collect()
}

fn share(chosen: &[SocketAddrV4], ep: SocketAddrV4) -> f64 {
    chosen.iter().filter(|&&e| e == ep).count() as f64 / chosen.len() as f64
}

#[test]
fn priority_spreads_new_flows_in_the_ratio_of_the_weights() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::Priority,
        &[(EP1, 3), (EP2, 1)],
    );
    let chosen = tally(&dp, (0..800).map(|p| client(20000 + p)));
    let s1 = share(&chosen, EP1);
    assert!(
        (s1 - 0.75).abs() < 0.07,
        "EP1 got {s1} of the flows, weight says 0.75"
    );
}

#[test]
fn persist_keeps_a_client_on_its_endpoint_until_it_is_idle_too_long() {
    let dp = load();
    let mut rule_eps = [(EP1, 1), (EP2, 1)];
    service(&dp, 1, Protocol::Tcp, Selection::Persist, &rule_eps);
    let other = |port| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), port);
    let first = tally(&dp, (0..10).map(|p| client(30000 + p)));
    assert!(first.iter().all(|&e| e == first[0]), "{first:?}");
    // Another client takes the next endpoint and sticks to it too.
    let second = tally(&dp, (0..10).map(|p| other(30000 + p)));
    assert!(second.iter().all(|&e| e == second[0]) && second[0] != first[0]);

    // If its endpoint leaves the list, the client is placed again.
    rule_eps[0].0 = EP3;
    let rule = LbRule {
        name: "svc1".into(),
        endpoints: weighted(&rule_eps),
        inactivity_timeout: 1,
        ..pkt::lb_rule(key(Protocol::Tcp), Selection::Persist, &[])
    };
    dp.program_service(1, &rule).unwrap();
    let moved = tally(&dp, (0..4).map(|p| client(31000 + p)));
    if first[0] == EP1 {
        assert!(
            moved.iter().all(|&e| e == moved[0] && e != EP1),
            "{moved:?}"
        );
    } else {
        assert!(moved.iter().all(|&e| e == EP2), "{moved:?}");
    }
    // With a 1 s timeout, an idle client is placed afresh (round robin goes on).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let before = endpoint_of(&dp, other(32000));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let after = endpoint_of(&dp, other(32001));
    assert_ne!(
        before, after,
        "an idle client stayed stuck past its timeout"
    );
}

#[test]
fn least_connections_fills_the_emptiest_endpoint() {
    let dp = load();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::LeastConnections,
        &[(EP1, 1), (EP2, 1)],
    );
    let chosen = tally(&dp, (0..6).map(|p| client(33000 + p)));
    assert_eq!(share(&chosen, EP1), 0.5, "{chosen:?}");
    // The daemon's recount says EP1 is busy: new flows go to EP2 until even.
    let counts = [((1, 0), 5u32), ((1, 1), 1u32)].into_iter().collect();
    dp.set_active_flows(&[1], &counts).unwrap();
    let chosen = tally(&dp, (0..4).map(|p| client(34000 + p)));
    assert!(chosen.iter().all(|&e| e == EP2), "{chosen:?}");
    // Weights count: EP1 with weight 4 takes four flows for each of EP2's.
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::LeastConnections,
        &[(EP1, 4), (EP2, 1)],
    );
    dp.set_active_flows(&[1], &Default::default()).unwrap();
    let chosen = tally(&dp, (0..10).map(|p| client(35000 + p)));
    assert_eq!(share(&chosen, EP1), 0.8, "{chosen:?}");
}

#[test]
fn maglev_moves_about_one_in_n_flows_when_an_endpoint_leaves() {
    let dp = load();
    let eps = [(EP1, 1), (EP2, 1), (EP3, 1), (EP4, 1)];
    service(&dp, 1, Protocol::Tcp, Selection::Maglev, &eps);
    let flows: Vec<SocketAddrV4> = (0..2000).map(|p| client(40000 + p)).collect();
    let before = tally(&dp, flows.iter().copied());
    for (ep, _) in eps {
        let s = share(&before, ep);
        assert!((s - 0.25).abs() < 0.05, "{ep} got {s}");
    }
    dp.flush_conntrack(|_, _| true).unwrap();
    assert_eq!(
        tally(&dp, flows.iter().copied()),
        before,
        "maglev is a function of the flow"
    );

    dp.flush_conntrack(|_, _| true).unwrap();
    service(
        &dp,
        1,
        Protocol::Tcp,
        Selection::Maglev,
        &[eps[0], eps[1], eps[3]],
    );
    let after = tally(&dp, flows.iter().copied());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let stayed_away = before
        .iter()
        .zip(&after)
        .filter(|(&b, a)| b != EP3 && b != **a)
        .count();
    eprintln!(
        "maglev: {moved} of {} flows moved, {stayed_away} of them from a surviving endpoint",
        flows.len()
    );
    assert!(after.iter().all(|&e| e != EP3));
    // About 1/4 must move (EP3's flows); flows of the survivors barely do.
    assert!(
        (moved as f64 / flows.len() as f64 - 0.25).abs() < 0.07,
        "{moved} moved"
    );
    assert!(
        stayed_away < flows.len() / 20,
        "{stayed_away} flows left a surviving endpoint"
    );
}

/// The rule of `service` with `sources`, programmed with the endpoints
/// that take new flows marked.
fn program_live(
    dp: &Datapath,
    selection: Selection,
    eps: &[(SocketAddrV4, bool)],
    sources: &[&str],
) {
    let endpoints: Vec<(Endpoint, bool)> = eps
        .iter()
        .map(|&(a, live)| {
            let e = Endpoint {
                ip: (*a.ip()).into(),
                port: a.port(),
                weight: 1,
            };
            (e, live)
        })
        .collect();
    let rule = LbRule {
        name: "svc1".into(),
        endpoints: endpoints.iter().map(|(e, _)| *e).collect(),
        monitor: true,
        sources: sources
            .iter()
            .map(|s| SourcePrefix::parse("sources", s).unwrap())
            .collect(),
        ..pkt::lb_rule(key(Protocol::Tcp), selection, &[])
    };
    dp.program_service_endpoints(1, &rule, &endpoints)
        .expect("programming a service");
}

#[test]
fn endpoints_that_take_no_new_flows_get_none_whatever_the_selection() {
    let dp = load();
    for selection in [
        Selection::RoundRobin,
        Selection::Hash,
        Selection::Priority,
        Selection::Persist,
        Selection::LeastConnections,
        Selection::Maglev,
    ] {
        program_live(&dp, selection, &[(EP1, true), (EP2, true)], &[]);
        // Persist: this client sticks to whichever it gets first.
        let before = tally(&dp, (0..20).map(|p| client(40000 + p)));
        assert!(before.contains(&EP1) || selection == Selection::Persist);
        // EP1 down (or draining): still at index 0, but no new flows.
        program_live(&dp, selection, &[(EP1, false), (EP2, true)], &[]);
        let after = tally(&dp, (0..20).map(|p| client(41000 + p)));
        assert!(after.iter().all(|&e| e == EP2), "{selection:?}: {after:?}");
        // The flows already on EP1 keep it.
        let est = Packet::new(client(40000), SERVICE, L4::Tcp { flags: ACK });
        assert_eq!(
            parse(&run(&dp, &est.build())).dst,
            before[0],
            "{selection:?}"
        );
        dp.delete_services(&[(key(Protocol::Tcp), 1)]).unwrap();
    }
    // None left: new flows go to Linux untranslated.
    program_live(
        &dp,
        Selection::RoundRobin,
        &[(EP1, false), (EP2, false)],
        &[],
    );
    let syn = Packet::new(client(42000), SERVICE, L4::Tcp { flags: SYN }).build();
    assert_untouched(
        &dp,
        "no live endpoint",
        &syn,
        ll_reason::LL_R_PASS_NO_ENDPOINT,
    );
}

#[test]
fn only_allowed_sources_open_flows() {
    let dp = load();
    program_live(
        &dp,
        Selection::RoundRobin,
        &[(EP1, true)],
        &["10.0.0.0/30", "192.168.1.7"],
    );
    assert_eq!(endpoint_of(&dp, client(40000)), EP1);
    let allowed = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 7), 40000);
    assert_eq!(endpoint_of(&dp, allowed), EP1);
    let mut want = reasons(&dp);
    for (src, hook, drop) in [
        (Ipv4Addr::new(10, 0, 0, 4), HookKind::Tc, 2),
        (Ipv4Addr::new(192, 168, 1, 8), HookKind::Tc, 2),
        (Ipv4Addr::new(10, 0, 0, 4), HookKind::Xdp, 1),
    ] {
        let syn = Packet::new(
            SocketAddrV4::new(src, 40000),
            SERVICE,
            L4::Tcp { flags: SYN },
        );
        let r = dp.test_run(hook, &syn.build(), 1).unwrap();
        assert_eq!(r.retval, drop, "{src} at {hook:?}: TC_ACT_SHOT / XDP_DROP");
        want[ll_reason::LL_R_DROP_SOURCE.0 as usize] += 1;
    }
    assert_eq!(reasons(&dp), want);
    assert!(conntrack(&dp)
        .iter()
        .all(|c| c.src.ip() != &Ipv4Addr::new(10, 0, 0, 4)));
    // The list changed to "any": the client gets in.
    program_live(&dp, Selection::RoundRobin, &[(EP1, true)], &[]);
    let now = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 4), 40001);
    assert_eq!(endpoint_of(&dp, now), EP1);
}
