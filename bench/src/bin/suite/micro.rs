//! The datapath alone, with BPF_PROG_TEST_RUN: nanoseconds per packet for
//! each path through the pipeline, beside a program that only returns.
//!
//! Every run is a single repetition on a fresh copy of the frame (the
//! datapath rewrites packets in place, so repeating one frame would measure
//! the rewritten frame from the second run on). The kernel times each run;
//! the timer's own cost is in every figure, the floor's included.
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use anyhow::{ensure, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::ProgramInput;
use loxilight::datapath::{Datapath, FwAction, FwDefault, FwEntry, HookKind, Limits};
use loxilight::kernel::model::{nud, Iface, Neigh, NextHop, Prefix, Route, RouteKind};
use loxilight::rules::{Endpoint, LbRule, Mode, Protocol, Selection, ServiceKey};
use serde_json::{json, Value};

use crate::lab::{far_mac, lb_mac};
use crate::netns;
use crate::services::{endpoint, vip, UDP_PORT, VIP_PORT};
use crate::stats::Summary;

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

/// The egress interfaces towards the two backends.
const EGRESS: [u32; 2] = [5, 6];

/// A 60-byte Ethernet/IPv4/UDP frame to the ingress interface, with valid
/// IPv4 and UDP checksums.
fn frame(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let payload = [0u8; 18];
    let udp_len = (8 + payload.len()) as u16;
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&lb_mac(1));
    f.extend_from_slice(&far_mac(1));
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&(20 + udp_len).to_be_bytes());
    iph.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    iph.extend_from_slice(&src.ip().octets());
    iph.extend_from_slice(&dst.ip().octets());
    let c = !fold(sum(&iph));
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = [src.port(), dst.port(), udp_len, 0]
        .map(u16::to_be_bytes)
        .concat();
    udp.extend_from_slice(&payload);
    let pseudo = sum(&src.ip().octets()) + sum(&dst.ip().octets()) + 17 + u32::from(udp_len);
    let c = match !fold(pseudo + sum(&udp)) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&iph);
    f.extend_from_slice(&udp);
    f
}

fn sum(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The datapath with one service (two endpoints behind two egress
/// interfaces) and the ingress interface of both hooks' test runs: TC
/// test runs arrive on ifindex 0, XDP ones on 1 (tests/datapath_fwd.rs).
fn datapath(runs: usize) -> Result<Datapath> {
    let dp = Datapath::load(
        Limits {
            services: 64,
            // Every new-flow run (plain and through the firewall) adds a
            // flow of two entries; none may be evicted.
            conntrack: (4 * runs as u32).max(65_536),
            routes: 64,
            neighbours: 64,
        },
        None,
    )
    .context("loading the datapath")?;
    let iface = |index, mac| Iface {
        index,
        name: format!("if{index}"),
        mac,
        mtu: 1500,
        up: true,
        loopback: false,
    };
    dp.set_iface(&iface(0, lb_mac(1)), true)?;
    dp.set_iface(&iface(1, lb_mac(1)), true)?;
    for (b, ifindex) in EGRESS.into_iter().enumerate() {
        let net = 2 + b as u8;
        dp.set_iface(&iface(ifindex, lb_mac(net)), true)?;
        let gw = Ipv4Addr::new(10, 77, net, 2);
        dp.set_route(&Route {
            dst: Prefix {
                ip: IpAddr::V4(Ipv4Addr::new(10, net, 0, 0)),
                len: 16,
            },
            kind: RouteKind::Unicast,
            metric: 0,
            nexthops: vec![NextHop {
                gateway: Some(gw.into()),
                ifindex,
            }],
        })?;
        dp.set_neigh(&Neigh {
            ifindex,
            ip: gw.into(),
            mac: far_mac(net),
            state: nud::PERMANENT,
        })?;
    }
    dp.program_service(
        0,
        &LbRule {
            key: ServiceKey {
                ip: vip(0).into(),
                port: VIP_PORT,
                port_max: 0,
                proto: Protocol::Udp,
            },
            name: "svc-0-udp".into(),
            selection: Selection::RoundRobin,
            mode: Mode::Default,
            endpoints: (0..2)
                .map(|b| Endpoint {
                    ip: endpoint(b, 0).into(),
                    port: UDP_PORT,
                    weight: 1,
                })
                .collect(),
            inactivity_timeout: 0,
            monitor: false,
            bgp: false,
            sources: vec![],
            mark: 0,
        },
    )?;
    Ok(dp)
}

/// Rules in the firewall case.
const FW_RULES: u32 = 10_000;

/// FW_RULES rules: the clients' /16 allowed at the lowest preference, and
/// above it rules that drop one address of 11.0.0.0/8 each, so that every
/// first packet is classified against all of them and matches the last.
fn firewall_rules() -> Vec<FwEntry> {
    let rule = |id: u32, src: Ipv4Addr, len: u8, action| FwEntry {
        src: Some((IpAddr::V4(src), len)),
        ..FwEntry::matching_all(id, id, action)
    };
    std::iter::once(rule(0, Ipv4Addr::new(10, 1, 0, 0), 16, FwAction::Allow))
        .chain((1..FW_RULES).map(|i| rule(i, Ipv4Addr::from(0x0b00_0000 + i), 32, FwAction::Drop)))
        .collect()
}

/// A client address and port of its own for run `i`.
fn client(i: usize) -> SocketAddrV4 {
    let ip = u32::from(Ipv4Addr::new(10, 1, 0, 1)) + (i / 60_000) as u32;
    SocketAddrV4::new(Ipv4Addr::from(ip), 1024 + (i % 60_000) as u16)
}

/// ns per run of `frames` through `hook`, each expected to return `want`.
fn time_runs(
    dp: &Datapath,
    hook: HookKind,
    frames: impl Iterator<Item = Vec<u8>>,
    want: u32,
) -> Result<Vec<f64>> {
    frames
        .map(|f| {
            let r = dp.test_run(hook, &f, 1)?;
            ensure!(
                r.retval == want,
                "{hook:?}: verdict {} where {want} was expected",
                r.retval
            );
            Ok(f64::from(r.duration_ns))
        })
        .collect()
}

/// Runs every case `runs` times per round, `rounds` rounds.
pub fn run(runs: usize, rounds: usize) -> Result<Value> {
    let mut storage = MaybeUninit::uninit();
    let skel = crate::skel::BenchSkelBuilder::default()
        .open(&mut storage)?
        .load()
        .context("loading the floor programs")?;
    let vip = SocketAddrV4::new(vip(0), VIP_PORT);
    let direct = SocketAddrV4::new(endpoint(0, 0), UDP_PORT);
    let unrouted = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), UDP_PORT);
    let mut out = serde_json::Map::new();
    for (name, hook, ok, redirect) in [
        ("tc", HookKind::Tc, TC_ACT_OK, TC_ACT_REDIRECT),
        ("xdp", HookKind::Xdp, XDP_PASS, XDP_REDIRECT),
    ] {
        let mut cases: Vec<(&str, Vec<f64>)> = [
            "floor",
            "new_flow",
            "established",
            "non_vip_forwarded",
            "non_vip_to_linux",
            "firewall_first_packet",
        ]
        .iter()
        .map(|c| (*c, Vec::new()))
        .collect();
        for _ in 0..rounds {
            netns::check_interrupted()?;
            let dp = datapath(runs)?;
            let floor = match hook {
                HookKind::Tc => &skel.progs.floor_tc,
                HookKind::Xdp => &skel.progs.floor_xdp,
            };
            let base = frame(client(0), vip);
            let mut floor_ns = Vec::with_capacity(runs);
            for _ in 0..runs {
                let r = floor.test_run(ProgramInput {
                    data_in: Some(&base),
                    repeat: 1,
                    ..Default::default()
                })?;
                floor_ns.push(r.duration.as_nanos() as f64);
            }
            // Distinct clients, so each run creates a flow (the datapath is
            // new each round); the established case replays client 0's flow.
            let new = time_runs(
                &dp,
                hook,
                (0..runs).map(|i| frame(client(i), vip)),
                redirect,
            )?;
            let est = time_runs(&dp, hook, (0..runs).map(|_| base.clone()), redirect)?;
            let fwd = time_runs(
                &dp,
                hook,
                (0..runs).map(|i| frame(client(i), direct)),
                redirect,
            )?;
            let linux = time_runs(&dp, hook, (0..runs).map(|i| frame(client(i), unrouted)), ok)?;
            // New clients again, now through the firewall.
            dp.set_firewall(&firewall_rules(), FwDefault::Allow)?;
            let fw = time_runs(
                &dp,
                hook,
                (runs..2 * runs).map(|i| frame(client(i), vip)),
                redirect,
            )?;
            for (case, v) in cases.iter_mut().zip([floor_ns, new, est, fwd, linux, fw]) {
                case.1.push(median(v));
            }
        }
        let floor = Summary::of(&cases[0].1).context("no floor runs")?;
        let mut hook_out = serde_json::Map::new();
        for (case, medians) in &cases {
            let s = Summary::of(medians).context("no runs")?;
            hook_out.insert(
                case.to_string(),
                json!({
                    "ns_per_packet": s.json(),
                    "above_floor_ns": s.median - floor.median,
                }),
            );
        }
        out.insert(name.into(), Value::Object(hook_out));
    }
    Ok(json!({
        "method": "BPF_PROG_TEST_RUN, one repetition per run on a fresh 60-byte UDP frame; per round the median of the runs, then median, min and max over rounds",
        "runs_per_round": runs,
        "rounds": rounds,
        "cases": {
            "floor": "bench/bpf floor_tc / floor_xdp: return at once",
            "new_flow": "to a VIP from a new client: conntrack miss, service lookup, rr selection, two conntrack inserts, DNAT, route, neighbour, MAC rewrite, redirect",
            "established": "to a VIP on a tracked flow: conntrack hit, DNAT, forward",
            "non_vip_forwarded": "to an endpoint directly: conntrack and service misses, then forward",
            "non_vip_to_linux": "to an unrouted non-VIP address: conntrack and service misses, no route, passed to Linux",
            "firewall_first_packet": "as new_flow, with 10,000 firewall rules: the flow's first packet matches the lowest-preference one (an allow), then is load balanced and tracked",
        },
        "hooks": out,
    }))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
