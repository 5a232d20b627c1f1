//! Protocol tests through BPF_PROG_TEST_RUN at TC and XDP: ICMP echo to a
//! VIP, SCTP associations (this kernel has no SCTP sockets, so crafted
//! packets are the only way to drive them) and port-range services, with
//! exact frames out, valid checksums and the conntrack states they leave.
//! Rules go through the rule store, as the API's do. Needs root (CAP_BPF).
#[allow(dead_code)] // shared with other test binaries; not every helper is used here
mod pkt;

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use loxilight::conntrack::state_name;
use loxilight::datapath::types::{ll_ct_key, ll_reason};
use loxilight::datapath::{Datapath, HookKind};
use loxilight::rules::{LbRule, Protocol, RuleStore, Selection, ServiceKey};
use pkt::{
    ct_key, reasons, run, Packet, ACK, ICMP, ICMP_ECHO, ICMP_ECHOREPLY, L4, SCTP, SCTP_ABORT,
    SCTP_COOKIE_ACK, SCTP_COOKIE_ECHO, SCTP_DATA, SCTP_INIT, SCTP_INIT_ACK, SCTP_SHUTDOWN,
    SCTP_SHUTDOWN_ACK, SCTP_SHUTDOWN_COMPLETE, SYN, TCP,
};

const VIP: Ipv4Addr = Ipv4Addr::new(20, 20, 20, 1);
const EP_A: Ipv4Addr = Ipv4Addr::new(31, 31, 31, 1);
const EP_B: Ipv4Addr = Ipv4Addr::new(31, 31, 31, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SCTP_PORT: u16 = 38412;
const HOOKS: [HookKind; 2] = [HookKind::Tc, HookKind::Xdp];

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn lb() -> (Arc<Datapath>, RuleStore) {
    let dp = Arc::new(pkt::load());
    let store =
        RuleStore::open(dp.clone(), None, Default::default()).expect("opening a rule store");
    (dp, store)
}

fn key(proto: Protocol, port: u16, port_max: u16) -> ServiceKey {
    ServiceKey {
        ip: VIP.into(),
        port,
        port_max,
        proto,
    }
}

/// A round-robin rule for `key` to `eps` (address, target port).
fn rule(key: ServiceKey, eps: &[(Ipv4Addr, u16)]) -> LbRule {
    let eps: Vec<(IpAddr, u16)> = eps.iter().map(|&(ip, port)| (ip.into(), port)).collect();
    pkt::lb_rule(key, Selection::RoundRobin, &eps)
}

/// Asserts that `p` comes out as `p` sent from `src` to `dst` instead,
/// byte for byte: only the addresses (and for TCP/UDP the ports) change.
fn assert_translated(
    dp: &Datapath,
    hook: HookKind,
    p: &Packet,
    src: SocketAddrV4,
    dst: SocketAddrV4,
) {
    let want = Packet {
        src,
        dst,
        ..p.clone()
    };
    assert_eq!(run(dp, hook, p), want.build(), "{hook:?}: {p:?}");
}

/// Asserts that `p` comes back unchanged, counted under `reason`.
fn assert_untouched(dp: &Datapath, hook: HookKind, p: &Packet, reason: ll_reason) {
    let mut want = reasons(dp);
    want[reason.0 as usize] += 1;
    // Not through run(): a malformed frame has no checksums to check.
    let r = dp.test_run(hook, &p.build(), 1).expect("test run");
    let pass = if hook == HookKind::Tc { 0 } else { 2 };
    assert_eq!(
        (r.retval, r.data),
        (pass, p.build()),
        "{hook:?}: {p:?} changed"
    );
    assert_eq!(reasons(dp), want, "{hook:?}: reason counters for {p:?}");
}

/// The state of the flow whose original direction is `orig` and whose
/// reply direction is `reply`; both entries must agree on it.
fn state(dp: &Datapath, orig: ll_ct_key, reply: ll_ct_key) -> &'static str {
    let get = |k| dp.conntrack_entry(&k).expect("reading conntrack");
    let (Some(o), Some(r)) = (get(orig), get(reply)) else {
        panic!("flow {orig:?} is not (wholly) tracked");
    };
    assert_eq!(o.state, r.state, "the two directions disagree");
    state_name(orig.proto, o.state)
}

fn echo(src: Ipv4Addr, dst: Ipv4Addr, kind: u8, id: u16) -> Packet {
    Packet::new(at(src, 0), at(dst, 0), L4::IcmpEcho { kind, id })
}

#[test]
fn ping_to_a_vip_is_answered_by_an_endpoint() {
    let (dp, store) = lb();
    store
        .create(rule(key(Protocol::Icmp, 0, 0), &[(EP_A, 0), (EP_B, 0)]))
        .expect("an ICMP rule");
    for (n, hook) in HOOKS.into_iter().enumerate() {
        let id = 0x1200 + n as u16;
        // The identifier stands in for the client's port (bpf/lib/parse.h).
        let orig = ct_key(at(CLIENT, id), at(VIP, 0), ICMP);
        let request = echo(CLIENT, VIP, ICMP_ECHO, id);
        assert_translated(&dp, hook, &request, at(CLIENT, 0), at(EP_A, 0));
        let reply_key = ct_key(at(EP_A, 0), at(CLIENT, id), ICMP);
        assert_eq!(state(&dp, orig, reply_key), "icmp-new");

        let reply = echo(EP_A, CLIENT, ICMP_ECHOREPLY, id);
        assert_translated(&dp, hook, &reply, at(VIP, 0), at(CLIENT, 0));
        assert_eq!(state(&dp, orig, reply_key), "icmp-est");
        // The next request of the same ping stays on its endpoint.
        assert_translated(&dp, hook, &request, at(CLIENT, 0), at(EP_A, 0));

        // Another ping (another identifier) goes round to the other endpoint.
        let other = echo(CLIENT, VIP, ICMP_ECHO, id + 0x100);
        assert_translated(&dp, hook, &other, at(CLIENT, 0), at(EP_B, 0));
        let answer = echo(EP_B, CLIENT, ICMP_ECHOREPLY, id + 0x100);
        assert_translated(&dp, hook, &answer, at(VIP, 0), at(CLIENT, 0));
    }

    // Only a request opens a flow; errors are not load-balancer traffic.
    let flows = dp.conntrack().expect("reading conntrack").len();
    // Port unreachable, with its (valid) checksum and no quoted packet.
    let unreachable = Packet {
        payload: [&[3u8, 3, 0xfc, 0xfc][..], &[0; 24]].concat(),
        ..Packet::new(at(CLIENT, 0), at(VIP, 0), L4::Raw(ICMP))
    };
    for hook in HOOKS {
        let stray_reply = echo(CLIENT, VIP, ICMP_ECHOREPLY, 7);
        assert_untouched(&dp, hook, &stray_reply, ll_reason::LL_R_PASS_OTHER_HOST);
        assert_untouched(&dp, hook, &unreachable, ll_reason::LL_R_PASS_OTHER_HOST);
    }
    assert_eq!(dp.conntrack().expect("reading conntrack").len(), flows);
}

fn sctp(src: SocketAddrV4, dst: SocketAddrV4, chunk: u8) -> Packet {
    Packet::new(src, dst, L4::Sctp { chunk })
}

#[test]
fn sctp_associations_are_translated_and_tracked_from_init_to_shutdown() {
    // The checker's CRC32c gives RFC 3720's check value.
    assert_eq!(pkt::crc32c(b"123456789"), 0xe306_9283);
    let (dp, store) = lb();
    let service = at(VIP, SCTP_PORT);
    store
        .create(rule(
            key(Protocol::Sctp, SCTP_PORT, 0),
            &[(EP_A, SCTP_PORT), (EP_B, SCTP_PORT)],
        ))
        .expect("an SCTP rule");
    for (n, hook) in HOOKS.into_iter().enumerate() {
        let c = at(CLIENT, 40000 + n as u16);
        let ep = at(EP_A, SCTP_PORT);
        let (orig, reply) = (ct_key(c, service, SCTP), ct_key(ep, c, SCTP));
        // The CRC32c covers no address: the frames leave with it untouched
        // and valid (run checks every checksum).
        let step = |from_client: bool, chunk, want: &str| {
            let (p, src, dst) = match from_client {
                true => (sctp(c, service, chunk), c, ep),
                false => (sctp(ep, c, chunk), service, c),
            };
            assert_translated(&dp, hook, &p, src, dst);
            let got = state(&dp, orig, reply);
            assert_eq!(got, want, "{hook:?} after chunk {chunk}");
        };
        let to_ep = |chunk, want| step(true, chunk, want);
        let to_client = |chunk, want| step(false, chunk, want);
        to_ep(SCTP_INIT, "syn-sent");
        to_client(SCTP_INIT_ACK, "syn-recv");
        to_ep(SCTP_COOKIE_ECHO, "est");
        to_client(SCTP_COOKIE_ACK, "est");
        to_ep(SCTP_DATA, "est");
        to_client(SCTP_DATA, "est");
        to_ep(SCTP_SHUTDOWN, "fin-wait");
        to_client(SCTP_SHUTDOWN_ACK, "last-ack");
        to_ep(SCTP_SHUTDOWN_COMPLETE, "time-wait");
        // A new INIT on the closed association starts it over.
        to_ep(SCTP_INIT, "syn-sent");

        // An association the endpoint aborts is closed.
        let c2 = at(CLIENT, 41000 + n as u16);
        let ep2 = at(EP_B, SCTP_PORT);
        let (orig2, reply2) = (ct_key(c2, service, SCTP), ct_key(ep2, c2, SCTP));
        assert_translated(&dp, hook, &sctp(c2, service, SCTP_INIT), c2, ep2);
        assert_translated(&dp, hook, &sctp(ep2, c2, SCTP_ABORT), service, c2);
        assert_eq!(state(&dp, orig2, reply2), "closed");
    }
    // An association seen mid-way (no INIT) is picked up as established.
    let c = at(CLIENT, 42000);
    run(&dp, HookKind::Tc, &sctp(c, service, SCTP_DATA));
    let ep = at(EP_A, SCTP_PORT);
    assert_eq!(
        state(&dp, ct_key(c, service, SCTP), ct_key(ep, c, SCTP)),
        "est"
    );
    // SCTP to another port is not the service's.
    let other = sctp(c, at(VIP, SCTP_PORT + 1), SCTP_INIT);
    assert_untouched(&dp, HookKind::Tc, &other, ll_reason::LL_R_PASS_OTHER_HOST);
}

#[test]
fn every_port_of_a_range_reaches_the_target_port() {
    let (dp, store) = lb();
    store
        .create(rule(key(Protocol::Tcp, 8080, 8082), &[(EP_A, 9000)]))
        .expect("a TCP range");
    store
        .create(rule(key(Protocol::Tcp, 7000, 0), &[(EP_B, 7001)]))
        .expect("a single port beside it");
    store
        .create(rule(key(Protocol::Udp, 8080, 8089), &[(EP_B, 53)]))
        .expect("a UDP range on the same ports");
    for hook in HOOKS {
        for port in 8080..=8082 {
            let c = at(CLIENT, 30000 + port);
            let syn = Packet::new(c, at(VIP, port), L4::Tcp { flags: SYN });
            assert_translated(&dp, hook, &syn, c, at(EP_A, 9000));
            // The reply leaves from the port the client chose.
            let synack = Packet::new(at(EP_A, 9000), c, L4::Tcp { flags: SYN | ACK });
            assert_translated(&dp, hook, &synack, at(VIP, port), c);
        }
        let c = at(CLIENT, 20000);
        let single = Packet::new(c, at(VIP, 7000), L4::Tcp { flags: SYN });
        assert_translated(&dp, hook, &single, c, at(EP_B, 7001));
        let udp = Packet::new(c, at(VIP, 8089), L4::Udp { checksum: true });
        assert_translated(&dp, hook, &udp, c, at(EP_B, 53));
        for port in [8079, 8083, 7001] {
            let miss = Packet::new(c, at(VIP, port), L4::Tcp { flags: SYN });
            assert_untouched(&dp, hook, &miss, ll_reason::LL_R_PASS_OTHER_HOST);
        }
    }
    let flow = ct_key(at(CLIENT, 38081), at(VIP, 8081), TCP);
    let entry = dp.conntrack_entry(&flow).unwrap().expect("tracked");
    assert_eq!(u16::from_be(entry.nat.dport), 9000);

    // Deleting the range takes all of its ports away, and only them.
    store
        .delete(&key(Protocol::Tcp, 8080, 8082))
        .expect("deleting the range");
    let c = at(CLIENT, 21000);
    let gone = Packet::new(c, at(VIP, 8081), L4::Tcp { flags: SYN });
    assert_untouched(&dp, HookKind::Tc, &gone, ll_reason::LL_R_PASS_OTHER_HOST);
    let udp = Packet::new(c, at(VIP, 8081), L4::Udp { checksum: true });
    assert_translated(&dp, HookKind::Tc, &udp, c, at(EP_B, 53));

    // With no range left the datapath stops looking for one, and starts
    // again with the next.
    store
        .delete(&key(Protocol::Udp, 8080, 8089))
        .expect("deleting the UDP range");
    let c = at(CLIENT, 22000);
    let udp = Packet::new(c, at(VIP, 8085), L4::Udp { checksum: true });
    assert_untouched(&dp, HookKind::Tc, &udp, ll_reason::LL_R_PASS_OTHER_HOST);
    store
        .create(rule(key(Protocol::Udp, 8084, 8086), &[(EP_A, 5353)]))
        .expect("a new UDP range");
    assert_translated(&dp, HookKind::Tc, &udp, c, at(EP_A, 5353));
}

#[test]
fn overlapping_rules_are_refused_naming_the_field() {
    let (dp, store) = lb();
    store
        .create(rule(key(Protocol::Tcp, 8080, 8089), &[(EP_A, 80)]))
        .expect("a range");
    for (port, port_max) in [(8089, 0), (8000, 8080), (8085, 8086), (8080, 0)] {
        let e = store
            .create(rule(key(Protocol::Tcp, port, port_max), &[(EP_A, 80)]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("load_balancer.service.port: 20.20.20.1:")
                && e.ends_with("overlaps the rule 20.20.20.1:8080-8089/tcp"),
            "{port}-{port_max}: {e}"
        );
    }
    // The same ports over UDP, or next to the range, are fine.
    store
        .create(rule(key(Protocol::Udp, 8080, 0), &[(EP_A, 80)]))
        .expect("UDP on a TCP range's port");
    store
        .create(rule(key(Protocol::Tcp, 8090, 8100), &[(EP_A, 80)]))
        .expect("the next range");

    // A whole rule set is checked too, and refused as a whole.
    let set = vec![
        rule(key(Protocol::Tcp, 9000, 9010), &[(EP_A, 80)]),
        rule(key(Protocol::Udp, 9005, 0), &[(EP_A, 80)]),
        rule(key(Protocol::Tcp, 9010, 9020), &[(EP_A, 80)]),
    ];
    let e = store.apply(set, false).unwrap_err().to_string();
    assert_eq!(
        e,
        "load_balancers[2].service.port: 20.20.20.1:9010-9020/tcp overlaps the rule \
         20.20.20.1:9000-9010/tcp"
    );
    assert_eq!(store.list().len(), 3, "a refused set changes nothing");

    // Beyond 16 ranges on one VIP and protocol the datapath has no room.
    let ranges: Vec<LbRule> = (0..17)
        .map(|i| {
            rule(
                key(Protocol::Udp, 10000 + 10 * i, 10005 + 10 * i),
                &[(EP_A, 80)],
            )
        })
        .collect();
    let e = store.apply(ranges, false).unwrap_err().to_string();
    assert!(e.contains("16 port ranges per VIP and protocol"), "{e}");
    assert_eq!(store.list().len(), 3, "a refused set changes nothing");
    let c = at(CLIENT, 1234);
    let udp = Packet::new(c, at(VIP, 10002), L4::Udp { checksum: true });
    assert_untouched(&dp, HookKind::Tc, &udp, ll_reason::LL_R_PASS_OTHER_HOST);
}

#[test]
fn truncated_sctp_and_icmp_headers_go_to_linux_untouched() {
    let (dp, store) = lb();
    store
        .create(rule(key(Protocol::Icmp, 0, 0), &[(EP_A, 0)]))
        .expect("an ICMP rule");
    store
        .create(rule(
            key(Protocol::Sctp, SCTP_PORT, 0),
            &[(EP_A, SCTP_PORT)],
        ))
        .expect("an SCTP rule");
    let c = at(CLIENT, 40000);
    let whole = |l4| Packet::new(c, at(VIP, SCTP_PORT), l4).build();
    for (proto, full, header) in [
        (SCTP, whole(L4::Sctp { chunk: SCTP_INIT }), 12),
        (
            ICMP,
            whole(L4::IcmpEcho {
                kind: ICMP_ECHO,
                id: 9,
            }),
            8,
        ),
    ] {
        let l4 = pkt::ETH_HLEN + 20;
        for len in 0..header {
            // The IP header tells the truth: the L4 header itself is short.
            let p = Packet {
                payload: full[l4..l4 + len].to_vec(),
                ..Packet::new(c, at(VIP, SCTP_PORT), L4::Raw(proto))
            };
            for hook in HOOKS {
                assert_untouched(&dp, hook, &p, ll_reason::LL_R_PASS_TRUNCATED);
            }
        }
    }
    assert!(dp.conntrack().expect("reading conntrack").is_empty());
}
