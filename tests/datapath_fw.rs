//! Firewall tests: the classifier and its actions driven by crafted frames
//! through BPF_PROG_TEST_RUN (TC and XDP), the verdict kept in conntrack,
//! rule changes flushing the flows they affect, 10,000 rules, and the cost
//! of a first packet at 10, 1,000 and 10,000 rules (printed, never
//! asserted). Needs root (CAP_BPF).
#[allow(dead_code)] // shared with other test binaries; not every helper is used here
mod pkt;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::ops::ControlFlow;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use loxilight::conntrack::{sweep, Timeouts};
use loxilight::datapath::types::{ll_ct6_key, ll_reason};
use loxilight::datapath::{
    monotonic_ns, Ct6, Datapath, Error, FwAction, FwDefault, FwEntry, HookKind, SVC_NONE,
};
use loxilight::kernel::model::{Addr, NextHop, Prefix, Route, RouteKind};
use loxilight::rules::{Endpoint, LbRule, Mode, Protocol, Selection, ServiceKey};
use pkt::{
    assert_checksums, ct_key, parse, Packet, ACK, ETH_HLEN, ICMP, ICMP_ECHO, ICMP_ECHOREPLY, L4,
    SYN, TCP, UDP,
};

const HOOKS: [HookKind; 2] = [HookKind::Tc, HookKind::Xdp];
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);

fn load() -> Datapath {
    pkt::load_with(4096)
}

/// A rule matching everything, allowing it.
fn any(id: u32, preference: u32) -> FwEntry {
    FwEntry::matching_all(id, preference, FwAction::Allow)
}

fn net(ip: impl Into<IpAddr>, len: u8) -> Option<(IpAddr, u8)> {
    Some((ip.into(), len))
}

fn set(dp: &Datapath, rules: &[FwEntry], default: FwDefault) {
    dp.set_firewall(rules, default)
        .unwrap_or_else(|e| panic!("set_firewall: {e}"));
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Packet {
    Packet::new(src, dst, L4::Tcp { flags })
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Packet {
    Packet::new(src, dst, L4::Udp { checksum: true })
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// An Ethernet/IPv6 frame with a TCP (SYN) or UDP header; classification
/// needs no valid checksum.
fn v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, proto: u8) -> Vec<u8> {
    let l4: Vec<u8> = match proto {
        TCP => [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &[0; 8],
            &[5 << 4, SYN, 0xff, 0xff, 0, 0, 0, 0],
        ]
        .concat(),
        _ => [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &[0, 8, 0, 0],
        ]
        .concat(),
    };
    let mut f = vec![
        2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd, 0x60, 0, 0, 0,
    ];
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&l4);
    f
}

fn reasons(dp: &Datapath) -> Vec<u64> {
    dp.reason_counters()
        .expect("reading reasons")
        .iter()
        .map(|(_, c)| c.packets)
        .collect()
}

/// Runs `frame` once; returns the verdict reason it counted (translation
/// reasons aside), checking that the program's return value agrees.
fn judge(dp: &Datapath, hook: HookKind, frame: &[u8]) -> ll_reason {
    let before = reasons(dp);
    let r = dp
        .test_run(hook, frame, 1)
        .unwrap_or_else(|e| panic!("test run: {e}"));
    let after = reasons(dp);
    let counted: Vec<ll_reason> = (0..after.len())
        .filter(|&i| after[i] != before[i])
        .map(|i| ll_reason(i as u32))
        .filter(|r| {
            !matches!(
                *r,
                ll_reason::LL_R_NAT_NEW | ll_reason::LL_R_NAT_EST | ll_reason::LL_R_NAT_ICMP
            )
        })
        .collect();
    assert_eq!(counted.len(), 1, "one verdict per packet: {counted:?}");
    let reason = counted[0];
    let dropped = matches!(
        reason,
        ll_reason::LL_R_DROP_FW | ll_reason::LL_R_DROP_FW_DEFAULT | ll_reason::LL_R_DROP_NAT_PORTS
    );
    let redirected = reason == ll_reason::LL_R_FW_REDIRECT;
    let want = match hook {
        HookKind::Tc if dropped => 2,
        HookKind::Tc if redirected => 7,
        HookKind::Tc => 0,
        HookKind::Xdp if dropped => 1,
        HookKind::Xdp if redirected => 4,
        HookKind::Xdp => 2,
    };
    assert_eq!(r.retval, want, "{hook:?} return value for {reason:?}");
    reason
}

/// Let through: no interface is mirrored, so an allowed packet goes to
/// Linux as not addressed to this host.
const ALLOWED: ll_reason = ll_reason::LL_R_PASS_OTHER_HOST;
const DROPPED: ll_reason = ll_reason::LL_R_DROP_FW;

fn tracked(dp: &Datapath, src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> bool {
    dp.conntrack_entry(&ct_key(src, dst, proto))
        .expect("reading conntrack")
        .is_some()
}

#[test]
fn prefixes_of_both_families_allow_and_drop() {
    let dp = load();
    let v6net: Ipv6Addr = "fd00:1::".parse().unwrap();
    set(
        &dp,
        &[
            FwEntry {
                src: net(Ipv4Addr::new(10, 0, 0, 0), 24),
                action: FwAction::Drop,
                ..any(1, 10)
            },
            FwEntry {
                dst: net(Ipv4Addr::new(10, 9, 0, 0), 16),
                action: FwAction::Drop,
                ..any(2, 10)
            },
            FwEntry {
                src: net(v6net, 64),
                action: FwAction::Drop,
                ..any(3, 10)
            },
        ],
        FwDefault::Allow,
    );
    let inside: Ipv6Addr = "fd00:1::5".parse().unwrap();
    let outside: Ipv6Addr = "fd00:2::5".parse().unwrap();
    let far: Ipv6Addr = "fd00:99::1".parse().unwrap();
    for hook in HOOKS {
        let other = Ipv4Addr::new(10, 0, 1, 1);
        let elsewhere = Ipv4Addr::new(10, 8, 0, 1);
        let f = |s, d, port| tcp(at(s, port), at(d, 80), SYN).build();
        assert_eq!(judge(&dp, hook, &f(CLIENT, elsewhere, 1000)), DROPPED);
        assert_eq!(judge(&dp, hook, &f(other, elsewhere, 1001)), ALLOWED);
        assert_eq!(judge(&dp, hook, &f(other, SERVER, 1002)), DROPPED);
        assert_eq!(judge(&dp, hook, &v6(inside, far, 1000, 80, TCP)), DROPPED);
        assert_eq!(judge(&dp, hook, &v6(outside, far, 1000, 80, TCP)), ALLOWED);
    }
    // An IPv4 rule never matches IPv6 and the other way round.
    set(
        &dp,
        &[FwEntry {
            src: net(Ipv4Addr::UNSPECIFIED, 0),
            action: FwAction::Drop,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    assert_eq!(
        judge(&dp, HookKind::Tc, &v6(inside, far, 1000, 80, TCP)),
        ALLOWED
    );
    assert_eq!(
        judge(
            &dp,
            HookKind::Tc,
            &tcp(at(CLIENT, 1), at(SERVER, 80), SYN).build()
        ),
        DROPPED
    );
}

#[test]
fn port_ranges_protocols_and_interfaces() {
    let dp = load();
    set(
        &dp,
        &[
            FwEntry {
                dport: (1000, 2000),
                action: FwAction::Drop,
                ..any(1, 10)
            },
            FwEntry {
                sport: (53, 53),
                proto: Some(UDP),
                action: FwAction::Drop,
                ..any(2, 10)
            },
            FwEntry {
                proto: Some(ICMP),
                action: FwAction::Drop,
                ..any(3, 10)
            },
        ],
        FwDefault::Allow,
    );
    for hook in HOOKS {
        for (port, want) in [
            (999, ALLOWED),
            (1000, DROPPED),
            (1500, DROPPED),
            (2000, DROPPED),
            (2001, ALLOWED),
        ] {
            let f = udp(at(CLIENT, 40000 + port), at(SERVER, port)).build();
            assert_eq!(judge(&dp, hook, &f), want, "{hook:?} port {port}");
        }
        let from53 = |sport| udp(at(CLIENT, sport), at(SERVER, 80)).build();
        assert_eq!(judge(&dp, hook, &from53(53)), DROPPED);
        assert_eq!(judge(&dp, hook, &from53(54)), ALLOWED);
        // The same port on TCP is not this rule's.
        let f = tcp(at(CLIENT, 53), at(SERVER, 80), SYN).build();
        assert_eq!(judge(&dp, hook, &f), ALLOWED);
        let icmp = Packet::new(at(CLIENT, 0), at(SERVER, 0), L4::Raw(ICMP)).build();
        assert_eq!(judge(&dp, hook, &icmp), DROPPED);
        // A rule with a port range never matches a packet without ports.
        let gre = Packet::new(at(CLIENT, 0), at(SERVER, 0), L4::Raw(47)).build();
        assert_eq!(judge(&dp, hook, &gre), ALLOWED);
    }

    // Test runs arrive on ifindex 0 at TC and 1 at XDP.
    set(
        &dp,
        &[FwEntry {
            ifindex: Some(1),
            action: FwAction::Drop,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    let f = tcp(at(CLIENT, 3000), at(SERVER, 80), SYN).build();
    assert_eq!(judge(&dp, HookKind::Xdp, &f), DROPPED);
    let f = tcp(at(CLIENT, 3001), at(SERVER, 80), SYN).build();
    assert_eq!(judge(&dp, HookKind::Tc, &f), ALLOWED);
}

#[test]
fn the_highest_preference_wins() {
    let dp = load();
    let rules = |allow_pref, drop_pref| {
        [
            FwEntry {
                src: net(Ipv4Addr::new(10, 0, 0, 0), 24),
                ..any(1, allow_pref)
            },
            FwEntry {
                src: net(Ipv4Addr::new(10, 0, 0, 0), 16),
                action: FwAction::Drop,
                ..any(2, drop_pref)
            },
        ]
    };
    let f = |s: Ipv4Addr, port| tcp(at(s, port), at(SERVER, 80), SYN).build();
    set(&dp, &rules(200, 100), FwDefault::Allow);
    for hook in HOOKS {
        assert_eq!(judge(&dp, hook, &f(Ipv4Addr::new(10, 0, 5, 1), 1)), DROPPED);
        // Dropped packets leave no flow behind: the same packet is judged again.
        assert_eq!(judge(&dp, hook, &f(Ipv4Addr::new(10, 0, 5, 1), 1)), DROPPED);
    }
    assert_eq!(judge(&dp, HookKind::Tc, &f(CLIENT, 2)), ALLOWED);
    set(&dp, &rules(100, 200), FwDefault::Allow);
    assert_eq!(judge(&dp, HookKind::Tc, &f(CLIENT, 3)), DROPPED);
}

#[test]
fn the_default_policy_applies_when_no_rule_matches() {
    let dp = load();
    let f = |port| tcp(at(CLIENT, port), at(SERVER, 80), SYN).build();
    // No rules and the default allow: the firewall is off and does not
    // track flows that are not load balanced.
    set(&dp, &[], FwDefault::Allow);
    assert_eq!(judge(&dp, HookKind::Tc, &f(1)), ALLOWED);
    assert!(!tracked(&dp, at(CLIENT, 1), at(SERVER, 80), TCP));
    set(&dp, &[], FwDefault::Drop);
    for hook in HOOKS {
        assert_eq!(judge(&dp, hook, &f(2)), ll_reason::LL_R_DROP_FW_DEFAULT);
        let v6f = v6(
            "fd00::1".parse().unwrap(),
            "fd00::2".parse().unwrap(),
            1,
            2,
            UDP,
        );
        assert_eq!(judge(&dp, hook, &v6f), ll_reason::LL_R_DROP_FW_DEFAULT);
    }
    // Packets the pipeline never parses as IP are not the firewall's.
    assert_eq!(
        judge(&dp, HookKind::Tc, &pkt::arp()),
        ll_reason::LL_R_PASS_NOT_IP
    );
}

#[test]
fn replies_pass_and_the_other_side_cannot_open_flows() {
    let dp = load();
    // Only the client may open flows to the server.
    set(
        &dp,
        &[FwEntry {
            src: net(CLIENT, 32),
            dst: net(SERVER, 32),
            ..any(1, 10)
        }],
        FwDefault::Drop,
    );
    for (hook, port) in [(HookKind::Tc, 40000), (HookKind::Xdp, 40001)] {
        let (c, s) = (at(CLIENT, port), at(SERVER, 80));
        assert_eq!(judge(&dp, hook, &tcp(c, s, SYN).build()), ALLOWED);
        let e = dp
            .conntrack_entry(&ct_key(c, s, TCP))
            .unwrap()
            .expect("tracked");
        assert_eq!(e.svc_id, SVC_NONE);
        assert_eq!(judge(&dp, hook, &tcp(s, c, SYN | ACK).build()), ALLOWED);
        assert_eq!(judge(&dp, hook, &tcp(c, s, ACK).build()), ALLOWED);
        let st = dp
            .conntrack_entry(&ct_key(s, c, TCP))
            .unwrap()
            .expect("reply entry");
        assert_eq!(
            dp.ct_state_label(st.state),
            Some("established"),
            "the flow's state moves on as for load-balanced flows"
        );
        // The server opening a flow of its own, to the same client port or another.
        assert_eq!(
            judge(&dp, hook, &tcp(at(SERVER, 81), c, SYN).build()),
            ll_reason::LL_R_DROP_FW_DEFAULT
        );
        assert_eq!(
            judge(&dp, hook, &udp(s, at(CLIENT, port + 100)).build()),
            ll_reason::LL_R_DROP_FW_DEFAULT
        );
    }
    // ICMP is tracked by addresses: the echo reply comes back.
    let ping = Packet::new(at(CLIENT, 0), at(SERVER, 0), L4::Raw(ICMP)).build();
    let pong = Packet::new(at(SERVER, 0), at(CLIENT, 0), L4::Raw(ICMP)).build();
    assert_eq!(
        judge(&dp, HookKind::Tc, &pong),
        ll_reason::LL_R_DROP_FW_DEFAULT
    );
    assert_eq!(judge(&dp, HookKind::Tc, &ping), ALLOWED);
    assert_eq!(judge(&dp, HookKind::Tc, &pong), ALLOWED);
}

fn key6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, proto: u8) -> ll_ct6_key {
    ll_ct6_key {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport: sport.to_be(),
        dport: dport.to_be(),
        proto,
        pad: [0; 3],
    }
}

#[test]
fn ipv6_flows_are_tracked_aged_and_flushed() {
    let dp = load();
    let (c, s): (Ipv6Addr, Ipv6Addr) = ("fd00:1::1".parse().unwrap(), "fd00:9::1".parse().unwrap());
    let allow_clients = FwEntry {
        src: net(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0), 64),
        mark: Some(6),
        ..any(1, 10)
    };
    set(&dp, std::slice::from_ref(&allow_clients), FwDefault::Drop);
    for (hook, port) in [(HookKind::Tc, 5000), (HookKind::Xdp, 5001)] {
        assert_eq!(judge(&dp, hook, &v6(c, s, port, 53, UDP)), ALLOWED);
        let e = dp
            .entry_in::<Ct6>(&key6(c, port, s, 53, UDP))
            .unwrap()
            .expect("tracked in ll_conntrack6");
        assert_eq!((e.ct.svc_id, e.ct.ep_idx), (SVC_NONE, 6));
        assert!(dp
            .entry_in::<Ct6>(&key6(s, 53, c, port, UDP))
            .unwrap()
            .is_some());
        // The reply passes; the server opening flows of its own does not.
        assert_eq!(judge(&dp, hook, &v6(s, c, 53, port, UDP)), ALLOWED);
        let e = dp
            .entry_in::<Ct6>(&key6(s, 53, c, port, UDP))
            .unwrap()
            .unwrap();
        assert_eq!(dp.ct_state_label(e.ct.state), Some("replied"));
        assert_eq!(
            judge(&dp, hook, &v6(s, c, 53, port + 100, UDP)),
            ll_reason::LL_R_DROP_FW_DEFAULT
        );
        assert_eq!(
            judge(&dp, hook, &v6(s, c, 80, port, TCP)),
            ll_reason::LL_R_DROP_FW_DEFAULT
        );
    }
    let r = dp
        .test_run(HookKind::Tc, &v6(s, c, 53, 5000, UDP), 1)
        .unwrap();
    assert_eq!(r.mark, 6, "the flow's mark, on replies too");

    // Ageing sweeps IPv6 flows as IPv4 ones.
    let later = monotonic_ns() + 3600 * 1_000_000_000;
    let report = sweep(&dp, &Timeouts::default(), later, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(report.aged, 4);
    assert!(dp
        .entry_in::<Ct6>(&key6(c, 5000, s, 53, UDP))
        .unwrap()
        .is_none());

    // A change that drops the client flushes its flow.
    assert_eq!(judge(&dp, HookKind::Tc, &v6(c, s, 6000, 53, UDP)), ALLOWED);
    let drop_c = FwEntry {
        src: net(c, 128),
        action: FwAction::Drop,
        ..any(2, 20)
    };
    set(&dp, &[allow_clients, drop_c], FwDefault::Drop);
    assert!(dp
        .entry_in::<Ct6>(&key6(c, 6000, s, 53, UDP))
        .unwrap()
        .is_none());
    assert!(dp
        .entry_in::<Ct6>(&key6(s, 53, c, 6000, UDP))
        .unwrap()
        .is_none());
    assert_eq!(judge(&dp, HookKind::Tc, &v6(c, s, 6000, 53, UDP)), DROPPED);
    let counters = dp.table_counters::<Ct6>().unwrap();
    assert_eq!(
        (counters.created, counters.aged, counters.removed),
        (6, 4, 2)
    );
}

#[test]
fn dropping_a_host_still_lets_replies_to_it_through() {
    let dp = load();
    set(
        &dp,
        &[FwEntry {
            src: net(SERVER, 32),
            action: FwAction::Drop,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    for (hook, port) in [(HookKind::Tc, 41000), (HookKind::Xdp, 41001)] {
        let (c, s) = (at(CLIENT, port), at(SERVER, 22));
        assert_eq!(judge(&dp, hook, &udp(c, s).build()), ALLOWED);
        assert_eq!(judge(&dp, hook, &udp(s, c).build()), ALLOWED);
        assert_eq!(judge(&dp, hook, &udp(s, at(CLIENT, 9)).build()), DROPPED);
        assert_eq!(
            judge(
                &dp,
                hook,
                &tcp(at(SERVER, 5000), at(CLIENT, 80), SYN).build()
            ),
            DROPPED
        );
    }
}

/// ICMP errors about a flow the firewall let in pass it, as Linux passes
/// RELATED packets (path MTU discovery needs them under a drop policy);
/// an error about no flow is judged as any other packet.
#[test]
fn icmp_errors_about_allowed_flows_pass_a_drop_policy() {
    let dp = load();
    set(
        &dp,
        &[FwEntry {
            src: net(CLIENT, 32),
            ..any(1, 10)
        }],
        FwDefault::Drop,
    );
    for (hook, port) in [(HookKind::Tc, 42000), (HookKind::Xdp, 42001)] {
        let (c, s) = (at(CLIENT, port), at(SERVER, 53));
        let dgram = udp(c, s);
        assert_eq!(judge(&dp, hook, &dgram.build()), ALLOWED);
        let unreachable = pkt::icmp_error(SERVER, CLIENT, (3, 3), &pkt::quoted(&dgram));
        assert_eq!(judge(&dp, hook, &unreachable), ALLOWED, "{hook:?}: related");
        let stray = pkt::icmp_error(SERVER, CLIENT, (3, 3), &pkt::quoted(&udp(at(CLIENT, 9), s)));
        assert_eq!(
            judge(&dp, hook, &stray),
            ll_reason::LL_R_DROP_FW_DEFAULT,
            "{hook:?}: unrelated"
        );
    }
}

#[test]
fn a_rule_change_flushes_the_flows_it_affects_and_only_those() {
    let dp = load();
    let unrelated = FwEntry {
        src: net(Ipv4Addr::new(192, 0, 2, 99), 32),
        action: FwAction::Drop,
        ..any(9, 1)
    };
    set(&dp, std::slice::from_ref(&unrelated), FwDefault::Allow);
    let other = Ipv4Addr::new(10, 0, 0, 2);
    let (a, b, s) = (at(CLIENT, 1000), at(other, 1000), at(SERVER, 80));
    assert_eq!(judge(&dp, HookKind::Tc, &tcp(a, s, SYN).build()), ALLOWED);
    assert_eq!(judge(&dp, HookKind::Tc, &tcp(b, s, SYN).build()), ALLOWED);
    assert_eq!(dp.conntrack().unwrap().len(), 4);

    // Dropping the client: its flow goes, both entries; the other stays.
    let drop_client = FwEntry {
        src: net(CLIENT, 32),
        action: FwAction::Drop,
        ..any(1, 10)
    };
    set(
        &dp,
        &[unrelated.clone(), drop_client.clone()],
        FwDefault::Allow,
    );
    assert!(!tracked(&dp, a, s, TCP) && !tracked(&dp, s, a, TCP));
    assert!(tracked(&dp, b, s, TCP) && tracked(&dp, s, b, TCP));
    assert_eq!(judge(&dp, HookKind::Tc, &tcp(a, s, ACK).build()), DROPPED);

    // A mark on the server's flows: the flow without it goes.
    let mark = FwEntry {
        dst: net(SERVER, 32),
        mark: Some(5),
        ..any(2, 5)
    };
    set(&dp, &[unrelated, drop_client, mark], FwDefault::Allow);
    assert!(!tracked(&dp, b, s, TCP));
    let r = dp
        .test_run(HookKind::Tc, &tcp(b, s, ACK).build(), 1)
        .unwrap();
    assert_eq!(r.mark, 5, "the flow's first packet is marked");
    let e = dp
        .conntrack_entry(&ct_key(b, s, TCP))
        .unwrap()
        .expect("tracked");
    assert_eq!((e.svc_id, e.ep_idx), (SVC_NONE, 5));
    let r = dp
        .test_run(HookKind::Tc, &tcp(s, b, ACK).build(), 1)
        .unwrap();
    assert_eq!(r.mark, 5, "and so are its later packets, both ways");
    // A rule that changes nothing for the flow keeps it.
    let other_rule = FwEntry {
        dport: (7000, 7001),
        action: FwAction::Drop,
        ..any(3, 50)
    };
    let mut rules = vec![other_rule, mark_rule(5)];
    set(&dp, &rules, FwDefault::Allow);
    assert!(tracked(&dp, b, s, TCP));
    // Nothing left and the default allow: the marked flow goes, unmarked ones stay.
    assert_eq!(
        judge(&dp, HookKind::Tc, &udp(a, at(other, 53)).build()),
        ALLOWED
    );
    rules.clear();
    set(&dp, &rules, FwDefault::Allow);
    assert!(!tracked(&dp, b, s, TCP));
    assert!(tracked(&dp, a, at(other, 53), UDP));
}

fn mark_rule(mark: u32) -> FwEntry {
    FwEntry {
        dst: net(SERVER, 32),
        mark: Some(mark),
        ..any(2, 5)
    }
}

#[test]
fn trap_redirect_record_and_counters() {
    let dp = Arc::new(load());
    set(
        &dp,
        &[
            FwEntry {
                dport: (22, 22),
                action: FwAction::Trap,
                mark: Some(0x22),
                record: true,
                ..any(1, 10)
            },
            FwEntry {
                dport: (8000, 8000),
                action: FwAction::Redirect { ifindex: 1 },
                ..any(2, 10)
            },
            FwEntry {
                dport: (80, 80),
                record: true,
                ..any(3, 10)
            },
        ],
        FwDefault::Allow,
    );
    let (tx, rx) = mpsc::channel();
    let watcher = dp.clone();
    std::thread::spawn(move || watcher.watch_firewall_events(|e| tx.send(e).is_ok()));

    let ssh = tcp(at(CLIENT, 5000), at(SERVER, 22), SYN).build();
    assert_eq!(judge(&dp, HookKind::Tc, &ssh), ll_reason::LL_R_PASS_FW_TRAP);
    let r = dp.test_run(HookKind::Tc, &ssh, 1).unwrap();
    assert_eq!(r.mark, 0x22, "trapped to Linux with the rule's mark");
    assert_eq!(r.data, ssh, "unchanged");
    assert!(!tracked(&dp, at(CLIENT, 5000), at(SERVER, 22), TCP));

    let alt = udp(at(CLIENT, 5000), at(SERVER, 8000)).build();
    for hook in HOOKS {
        assert_eq!(judge(&dp, hook, &alt), ll_reason::LL_R_FW_REDIRECT);
        let r = dp.test_run(hook, &alt, 1).unwrap();
        assert_eq!(r.data, alt, "redirected unchanged");
    }
    let web = tcp(at(CLIENT, 5001), at(SERVER, 80), SYN).build();
    assert_eq!(judge(&dp, HookKind::Tc, &web), ALLOWED);
    // Later packets of the flow are conntrack hits: not counted again.
    let web2 = tcp(at(CLIENT, 5001), at(SERVER, 80), ACK).build();
    assert_eq!(judge(&dp, HookKind::Tc, &web2), ALLOWED);

    let c = dp.firewall_counters().expect("counters");
    assert_eq!(c[&1].packets, 2, "trap: every packet is a first packet");
    assert_eq!(c[&2].packets, 4);
    assert_eq!(c[&3].packets, 1);
    assert_eq!(c[&3].bytes, web.len() as u64);

    let wait = || rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    let (e1, e2, e3) = (wait(), wait(), wait());
    assert_eq!((e1.rule_id, e1.action, e1.dport), (1, "trap", 22));
    assert_eq!(e1.src, IpAddr::V4(CLIENT));
    assert_eq!(e1.dst, IpAddr::V4(SERVER));
    assert_eq!((e1.sport, e1.proto, e1.ifindex), (5000, TCP, 0));
    assert_eq!(e2.rule_id, 1);
    assert_eq!((e3.rule_id, e3.action, e3.dport), (3, "allow", 80));

    // Counters follow rule ids across changes; a removed rule's go.
    set(&dp, &[any(3, 1), any(4, 2)], FwDefault::Allow);
    let c = dp.firewall_counters().expect("counters");
    assert_eq!(c[&3].packets, 1);
    assert_eq!(c[&4].packets, 0);
    assert!(!c.contains_key(&1));
}

#[test]
fn load_balanced_flows_meet_the_firewall_first() {
    let dp = load();
    let vip = Ipv4Addr::new(20, 20, 20, 1);
    let ep = at(Ipv4Addr::new(31, 31, 31, 1), 8080);
    dp.program_service(
        0,
        &LbRule {
            key: ServiceKey {
                ip: vip.into(),
                port: 2020,
                port_max: 0,
                proto: Protocol::Tcp,
            },
            name: "svc".into(),
            selection: Selection::RoundRobin,
            mode: Mode::Default,
            inactivity_timeout: 0,
            endpoints: vec![Endpoint {
                ip: (*ep.ip()).into(),
                port: ep.port(),
                weight: 1,
            }],
            monitor: false,
            bgp: false,
            sources: vec![],
            mark: 0,
        },
    )
    .unwrap();
    set(
        &dp,
        &[FwEntry {
            src: net(CLIENT, 32),
            action: FwAction::Drop,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    let blocked = tcp(at(CLIENT, 1000), at(vip, 2020), SYN).build();
    assert_eq!(judge(&dp, HookKind::Tc, &blocked), DROPPED);
    let other = at(Ipv4Addr::new(10, 0, 0, 2), 1000);
    let r = dp
        .test_run(HookKind::Tc, &tcp(other, at(vip, 2020), SYN).build(), 1)
        .unwrap();
    assert_eq!(parse(&r.data).dst, ep, "allowed, then load balanced");
    let reply = tcp(ep, other, SYN | ACK).build();
    let r = dp.test_run(HookKind::Tc, &reply, 1).unwrap();
    assert_eq!(parse(&r.data).src, at(vip, 2020));
    assert_eq!(dp.service_counters(0).unwrap().packets, 2);
    // Dropping the client that now has a flow flushes it.
    set(
        &dp,
        &[FwEntry {
            src: net(*other.ip(), 32),
            action: FwAction::Drop,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    assert!(dp.conntrack().unwrap().is_empty());
}

/// Rule i of a set of n: source 11.0.0.0 + i, destination ports
/// 1000 + i % 50 ..+5, TCP, preference i + 1.
fn numbered(i: u32) -> FwEntry {
    let p = 1000 + (i % 50) as u16;
    FwEntry {
        src: net(Ipv4Addr::from(0x0b00_0000 + i), 32),
        dport: (p, p + 5),
        proto: Some(if i.is_multiple_of(2) { TCP } else { UDP }),
        action: if i.is_multiple_of(3) {
            FwAction::Drop
        } else {
            FwAction::Allow
        },
        mark: Some(i),
        ..any(i + 1, i + 1)
    }
}

#[test]
fn ten_thousand_rules_apply_the_right_one() {
    let dp = load();
    let mut rules: Vec<FwEntry> = (0..10_000).map(numbered).collect();
    // Low-preference rules that every source matches, spread over all blocks' worth of ids.
    rules.extend((0..200).map(|j| FwEntry {
        dport: (7000, 7000),
        action: FwAction::Drop,
        ..any(20_000 + j, 0)
    }));
    set(&dp, &rules, FwDefault::Allow);
    for i in [0u32, 1, 2, 511, 512, 4999, 9998, 9999] {
        let r = numbered(i);
        let src = at(Ipv4Addr::from(0x0b00_0000 + i), 30000);
        let dst = at(SERVER, r.dport.0 + 2);
        let p = if r.proto == Some(TCP) {
            tcp(src, dst, SYN)
        } else {
            udp(src, dst)
        };
        let got = dp.test_run(HookKind::Tc, &p.build(), 1).unwrap();
        if r.action == FwAction::Drop {
            assert_eq!(got.retval, 2, "rule {i} drops");
        } else {
            assert_eq!((got.retval, got.mark), (0, i), "rule {i} allows and marks");
        }
        // Outside the rule's ports: the default.
        let miss = udp(src, at(SERVER, 999)).build();
        assert_eq!(judge(&dp, HookKind::Tc, &miss), ALLOWED, "rule {i}");
        let low = udp(src, at(SERVER, 7000)).build();
        assert_eq!(judge(&dp, HookKind::Tc, &low), DROPPED);
    }
    let c = dp.firewall_counters().unwrap();
    for (id, n) in &c {
        let want = match id {
            1 | 2 | 3 | 512 | 513 | 5000 | 9999 | 10000 => 1,
            // The first of the 200 equal-preference rules (lowest id) wins.
            20_000 => 8,
            _ => 0,
        };
        assert_eq!(n.packets, want, "rule id {id}");
    }
    assert_eq!(c.len(), rules.len());
}

#[test]
fn more_rules_than_the_classifier_holds_are_refused_and_the_old_set_stays() {
    let dp = load();
    set(
        &dp,
        &[FwEntry {
            action: FwAction::Drop,
            ..any(1, 1)
        }],
        FwDefault::Allow,
    );
    let too_many: Vec<FwEntry> = (0..16_385).map(|i| any(i, i)).collect();
    match dp.set_firewall(&too_many, FwDefault::Allow) {
        Err(Error::MapFull { .. }) => {}
        other => panic!("want MapFull, got {other:?}"),
    }
    let f = tcp(at(CLIENT, 1), at(SERVER, 80), SYN).build();
    assert_eq!(judge(&dp, HookKind::Tc, &f), DROPPED);
}

/// ns per first packet, from BPF_PROG_TEST_RUN's average over `repeat`
/// runs of one frame that the firewall drops (so no run leaves a flow
/// behind and each is a conntrack miss).
fn first_packet_ns(dp: &Datapath, frame: &[u8], want: u32) -> u32 {
    let r = dp.test_run(HookKind::Tc, frame, 20_000).unwrap();
    assert_eq!(r.retval, want);
    r.duration_ns
}

#[test]
fn first_packet_cost_at_10_1000_and_10000_rules() {
    let dp = load();
    let frame = |src: Ipv4Addr, dport| tcp(at(src, 30000), at(SERVER, dport), SYN).build();
    let unknown = Ipv4Addr::new(12, 0, 0, 1);
    set(&dp, &[], FwDefault::Allow);
    let off = first_packet_ns(&dp, &frame(unknown, 80), 0);
    set(&dp, &[], FwDefault::Drop);
    let empty = first_packet_ns(&dp, &frame(unknown, 80), 2);
    println!("firewall off (conntrack miss, service miss, forwarding lookup): {off} ns");
    println!("no rules, default drop: {empty} ns");
    println!("| rules | shape | highest-preference match | lowest-preference match | no match |");
    println!("|--:|---|--:|--:|--:|");
    for n in [10u32, 1000, 10_000] {
        // Distinct: every rule its own source /32 and port, all TCP drops.
        let distinct: Vec<FwEntry> = (0..n)
            .map(|i| FwEntry {
                src: net(Ipv4Addr::from(0x0b00_0000 + i), 32),
                dport: (1000, 1000),
                proto: Some(TCP),
                action: FwAction::Drop,
                ..any(i + 1, i + 1)
            })
            .collect();
        // Mixed, the bitmaps' worst case: even rules any source and a port
        // of their own, odd rules a source of their own and any port. A
        // packet's source then matches every even rule and its port every
        // odd one, in every block, so the AND reads every block.
        let mixed: Vec<FwEntry> = (0..n)
            .map(|i| {
                let (src, dport) = if i.is_multiple_of(2) {
                    (None, (10_000 + i as u16, 10_000 + i as u16))
                } else {
                    (net(Ipv4Addr::from(0x0b00_0000 + i), 32), (0, u16::MAX))
                };
                FwEntry {
                    src,
                    dport,
                    action: FwAction::Drop,
                    ..any(i + 1, i + 1)
                }
            })
            .collect();
        let top = Ipv4Addr::from(0x0b00_0000 + n - 1);
        set(&dp, &distinct, FwDefault::Drop);
        let d = [
            first_packet_ns(&dp, &frame(top, 1000), 2),
            first_packet_ns(&dp, &frame(Ipv4Addr::from(0x0b00_0000), 1000), 2),
            first_packet_ns(&dp, &frame(unknown, 1000), 2),
        ];
        set(&dp, &mixed, FwDefault::Drop);
        let m = [
            first_packet_ns(&dp, &frame(top, 80), 2),
            first_packet_ns(&dp, &frame(unknown, 10_000), 2),
            first_packet_ns(&dp, &frame(unknown, 80), 2),
        ];
        println!("| {n} | distinct | {} | {} | {} |", d[0], d[1], d[2]);
        println!("| {n} | mixed | {} | {} | {} |", m[0], m[1], m[2]);
    }
}

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Runs `p` at TC; it must go to Linux translated (no interface is
/// mirrored, so nothing is forwarded) with valid checksums.
fn translated(dp: &Datapath, p: &Packet) -> SocketAddrV4Pair {
    let r = dp.test_run(HookKind::Tc, &p.build(), 1).unwrap();
    assert_eq!(r.retval, 0, "{p:?}");
    assert_checksums(&r.data);
    let out = parse(&r.data);
    (out.src, out.dst)
}

type SocketAddrV4Pair = (SocketAddrV4, SocketAddrV4);

#[test]
fn snat_translates_new_flows_and_their_replies_and_never_reuses_a_tuple() {
    let dp = load();
    let public = Ipv4Addr::new(192, 0, 2, 10);
    set(
        &dp,
        &[FwEntry {
            src: net(Ipv4Addr::new(10, 0, 0, 0), 24),
            action: FwAction::Snat {
                addr: public.into(),
                port: None,
            },
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    let server = at(OUTSIDE, 53);
    let c1 = at(CLIENT, 40000);
    let (src, dst) = translated(&dp, &udp(c1, server));
    assert_eq!(
        (src, dst),
        (at(public, 40000), server),
        "the port is kept when free"
    );
    let (src2, _) = translated(&dp, &tcp(c1, at(OUTSIDE, 80), SYN));
    assert_eq!(
        src2,
        at(public, 40000),
        "another destination: the same port is free"
    );
    // The same port from another client to the same server: another port.
    let c2 = at(Ipv4Addr::new(10, 0, 0, 2), 40000);
    let (src3, _) = translated(&dp, &udp(c2, server));
    assert_eq!(*src3.ip(), public);
    assert_ne!(
        src3.port(),
        40000,
        "two flows never share a translated tuple"
    );
    // Replies go back to each client.
    assert_eq!(translated(&dp, &udp(server, src)), (server, c1));
    assert_eq!(translated(&dp, &udp(server, src3)), (server, c2));
    // Later packets of the flow: the same translation.
    assert_eq!(translated(&dp, &udp(c2, server)).0, src3);
    // Listed as translated; a client outside the rule is not.
    let e = dp
        .conntrack_entry(&ct_key(c1, server, UDP))
        .unwrap()
        .unwrap();
    assert_eq!(
        (e.svc_id, e.nat.saddr),
        (SVC_NONE, u32::from(public).to_be())
    );
    let other = at(Ipv4Addr::new(10, 1, 0, 1), 5000);
    assert_eq!(translated(&dp, &udp(other, server)), (other, server));

    // A ping keeps its identifier while free; another client's ping with
    // the same one to the same host gets another, as a port would.
    let echo = |src, dst, kind, id| Packet::new(at(src, 0), at(dst, 0), L4::IcmpEcho { kind, id });
    let out = pkt::run(&dp, HookKind::Tc, &echo(CLIENT, OUTSIDE, ICMP_ECHO, 77));
    assert_eq!(out, echo(public, OUTSIDE, ICMP_ECHO, 77).build());
    let out = pkt::run(
        &dp,
        HookKind::Tc,
        &echo(OUTSIDE, public, ICMP_ECHOREPLY, 77),
    );
    assert_eq!(out, echo(OUTSIDE, CLIENT, ICMP_ECHOREPLY, 77).build());
    let client2 = Ipv4Addr::new(10, 0, 0, 2);
    let out = pkt::run(&dp, HookKind::Xdp, &echo(client2, OUTSIDE, ICMP_ECHO, 77));
    let id = u16::from_be_bytes([out[ETH_HLEN + 24], out[ETH_HLEN + 25]]);
    assert_ne!(id, 77, "two pings share no translated identifier");
    assert_eq!(out, echo(public, OUTSIDE, ICMP_ECHO, id).build());
    for hook in HOOKS {
        let out = pkt::run(&dp, hook, &echo(OUTSIDE, public, ICMP_ECHOREPLY, id));
        assert_eq!(out, echo(OUTSIDE, client2, ICMP_ECHOREPLY, 77).build());
        // A router's "time exceeded" about the translated echo reaches the
        // client about its own (traceroute -I).
        let router = Ipv4Addr::new(198, 51, 100, 1);
        let err = pkt::icmp_error(
            router,
            public,
            (11, 0),
            &pkt::quoted(&echo(public, OUTSIDE, ICMP_ECHO, id)),
        );
        let want = pkt::icmp_error(
            router,
            client2,
            (11, 0),
            &pkt::quoted(&echo(client2, OUTSIDE, ICMP_ECHO, 77)),
        );
        let out = dp.test_run(hook, &err, 1).unwrap().data;
        assert_eq!(out, want, "{hook:?}: the error about a translated echo");
    }
    // Other ICMP has no identifier to tell flows apart: Linux gets it.
    let icmp = Packet::new(at(CLIENT, 0), at(OUTSIDE, 0), L4::Raw(ICMP)).build();
    assert_eq!(
        judge(&dp, HookKind::Tc, &icmp),
        ll_reason::LL_R_PASS_NO_SNAT
    );

    // Changing the address flushes the translated flows.
    set(
        &dp,
        &[FwEntry {
            src: net(Ipv4Addr::new(10, 0, 0, 0), 24),
            action: FwAction::Snat {
                addr: Ipv4Addr::new(192, 0, 2, 11).into(),
                port: Some(2000),
            },
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    assert!(!tracked(&dp, c1, server, UDP) && !tracked(&dp, c2, server, UDP));
    assert!(tracked(&dp, other, server, UDP), "untranslated flows stay");
    let (src, _) = translated(&dp, &udp(c1, server));
    assert_eq!(
        src,
        at(Ipv4Addr::new(192, 0, 2, 11), 2000),
        "the rule's port first"
    );
}

#[test]
fn exhausted_source_ports_are_counted_and_refused() {
    let dp = load();
    dp.set_nat_ports(50000..=50001).unwrap();
    set(
        &dp,
        &[FwEntry {
            action: FwAction::Snat {
                addr: Ipv4Addr::new(192, 0, 2, 10).into(),
                port: None,
            },
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    let server = at(OUTSIDE, 53);
    let mut ports = Vec::new();
    for host in 1..=2 {
        let (src, _) = translated(&dp, &udp(at(Ipv4Addr::new(10, 0, 0, host), 7), server));
        ports.push(src.port());
    }
    ports.sort();
    assert_eq!(ports, [50000, 50001]);
    let third = udp(at(Ipv4Addr::new(10, 0, 0, 3), 7), server).build();
    for hook in HOOKS {
        assert_eq!(judge(&dp, hook, &third), ll_reason::LL_R_DROP_NAT_PORTS);
    }
    assert!(!tracked(
        &dp,
        at(Ipv4Addr::new(10, 0, 0, 3), 7),
        server,
        UDP
    ));
}

#[test]
fn masquerade_uses_the_address_of_the_egress_interface() {
    let dp = load();
    let (egress, lb) = (5, Ipv4Addr::new(203, 0, 113, 1));
    dp.set_route(&Route {
        dst: Prefix {
            ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)),
            len: 24,
        },
        kind: RouteKind::Unicast,
        metric: 0,
        nexthops: vec![NextHop {
            gateway: Some(Ipv4Addr::new(203, 0, 113, 254).into()),
            ifindex: egress,
        }],
    })
    .unwrap();
    dp.set_source_addrs(&[
        Addr {
            ip: lb.into(),
            prefix: 24,
            ifindex: egress,
        },
        Addr {
            ip: Ipv4Addr::new(10, 0, 0, 254).into(),
            prefix: 24,
            ifindex: 6,
        },
    ])
    .unwrap();
    set(
        &dp,
        &[FwEntry {
            src: net(Ipv4Addr::new(10, 0, 0, 0), 24),
            action: FwAction::Masquerade,
            ..any(1, 10)
        }],
        FwDefault::Allow,
    );
    let server = at(OUTSIDE, 443);
    let (src, dst) = translated(&dp, &tcp(at(CLIENT, 33000), server, SYN));
    assert_eq!((src, dst), (at(lb, 33000), server));
    assert_eq!(
        translated(&dp, &tcp(server, src, SYN | ACK)),
        (server, at(CLIENT, 33000))
    );
    // No route to the destination: no address to take.
    let lost = tcp(at(CLIENT, 33001), at(Ipv4Addr::new(192, 0, 2, 1), 80), SYN).build();
    assert_eq!(
        judge(&dp, HookKind::Tc, &lost),
        ll_reason::LL_R_PASS_NO_ROUTE
    );
}

/// xorshift64: a fixed pseudo-random sequence, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The rule a linear scan picks: the highest preference, then the lowest id.
fn reference(rules: &[FwEntry], src: Ipv4Addr, dst: Ipv4Addr, dport: u16, proto: u8) -> u32 {
    let within = |net: Option<(IpAddr, u8)>, a: Ipv4Addr| match net {
        None => true,
        Some((IpAddr::V4(n), len)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        Some(_) => false,
    };
    rules
        .iter()
        .filter(|r| {
            within(r.src, src)
                && within(r.dst, dst)
                && (r.dport.0..=r.dport.1).contains(&dport)
                && r.proto.is_none_or(|p| p == proto)
        })
        .max_by_key(|r| (r.preference, std::cmp::Reverse(r.id)))
        .map_or(0, |r| r.id)
}

#[test]
fn the_classifier_agrees_with_a_linear_scan_on_random_rules() {
    let dp = load();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Small address and port spaces, so that rules overlap a lot.
    let addr = |rng: &mut Rng| Ipv4Addr::new(10, 0, rng.below(4) as u8, rng.below(8) as u8);
    let rules: Vec<FwEntry> = (1..=1500u32)
        .map(|id| {
            let lo = rng.below(64) as u16;
            let prefix = |rng: &mut Rng| match rng.below(6) {
                0 => None,
                _ => net(addr(rng), [24, 29, 30, 31, 32][rng.below(5) as usize]),
            };
            FwEntry {
                src: prefix(&mut rng),
                dst: prefix(&mut rng),
                dport: if rng.below(6) == 0 {
                    (0, u16::MAX)
                } else {
                    (lo, lo + rng.below(16) as u16)
                },
                proto: [None, Some(TCP), Some(UDP)][rng.below(3) as usize],
                mark: Some(id),
                ..any(id, rng.below(1000) as u32)
            }
        })
        .collect();
    set(&dp, &rules, FwDefault::Allow);
    let mut matched = std::collections::HashSet::new();
    for i in 0..3000u16 {
        let (s, d) = (addr(&mut rng), addr(&mut rng));
        let dport = rng.below(90) as u16;
        let proto = if rng.below(2) == 0 { TCP } else { UDP };
        // A source port of its own: every packet is a first packet.
        let (src, dst) = (at(s, 1024 + i), at(d, dport));
        let p = if proto == TCP {
            tcp(src, dst, SYN)
        } else {
            udp(src, dst)
        };
        let r = dp.test_run(HookKind::Tc, &p.build(), 1).unwrap();
        let want = reference(&rules, s, d, dport, proto);
        assert_eq!(r.mark, want, "{src} -> {dst} proto {proto}");
        matched.insert(want);
    }
    // Not a degenerate draw: many different rules won.
    assert!(matched.len() > 50, "{}", matched.len());
}
