//! Conntrack tests: the TCP state machine and UDP states driven by crafted
//! packets through BPF_PROG_TEST_RUN (TC and XDP), ageing sweeps run at
//! chosen clock values (so no test waits or times anything), the accounting
//! of a full table, and a table of 1,000,000 entries listed through the gRPC
//! API and loxicmd. Needs root (CAP_BPF).
#[allow(dead_code)] // shared with other test binaries; not every helper is used here
mod pkt;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use loxilight::api::Listener;
use loxilight::conntrack::{self, state_name, sweep, Filter, Timeouts};
use loxilight::datapath::types::{ll_ct, ll_ct_key, ll_reason};
use loxilight::datapath::{Datapath, HookKind, Limits, Removal};
use loxilight::metrics::ApiStats;
use loxilight::proto::v1::conntrack_service_client::ConntrackServiceClient;
use loxilight::proto::v1::{ConntrackFilter, ListConntrackRequest};
use loxilight::rules::{Endpoint, LbRule, Mode, Protocol, RuleStore, Selection, ServiceKey};
use pkt::{ct_key, parse, run, Packet, ACK, FIN, L4, RST, SYN};

const VIP: Ipv4Addr = Ipv4Addr::new(20, 20, 20, 1);
const SERVICE: SocketAddrV4 = SocketAddrV4::new(VIP, 2020);
const EP1: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 1), 8080);
const EP2: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 2), 8080);
const UDP_EP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(31, 31, 31, 1), 9000);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const TCP: u8 = 6;
const SECOND: u64 = 1_000_000_000;

fn client(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(CLIENT, port)
}

fn load(conntrack: u32) -> Arc<Datapath> {
    Arc::new(pkt::load_with(conntrack))
}

fn rule(proto: Protocol, eps: &[SocketAddrV4]) -> LbRule {
    LbRule {
        key: ServiceKey {
            ip: VIP.into(),
            port: SERVICE.port(),
            port_max: 0,
            proto,
        },
        name: format!("{}-svc", proto.as_str()),
        selection: Selection::RoundRobin,
        mode: Mode::Default,
        inactivity_timeout: 0,
        monitor: false,
        bgp: false,
        sources: vec![],
        mark: 0,
        endpoints: eps
            .iter()
            .map(|a| Endpoint {
                ip: (*a.ip()).into(),
                port: a.port(),
                weight: 1,
            })
            .collect(),
    }
}

/// An empty rule store on `dp`, which names the services in listings.
fn store(dp: &Arc<Datapath>) -> Arc<RuleStore> {
    Arc::new(RuleStore::open(dp.clone(), None, Default::default()).expect("opening a rule store"))
}

/// A datapath with a TCP service to EP1 and EP2 (rr) and a UDP one to
/// UDP_EP, and the rule store that holds them.
fn lb(conntrack: u32) -> (Arc<Datapath>, Arc<RuleStore>) {
    let dp = load(conntrack);
    let store = store(&dp);
    store
        .create(rule(Protocol::Tcp, &[EP1, EP2]))
        .expect("creating the TCP service");
    store
        .create(rule(Protocol::Udp, &[UDP_EP]))
        .expect("creating the UDP service");
    (dp, store)
}

/// Both entries of one flow, driven packet by packet.
struct Flow<'a> {
    dp: &'a Datapath,
    hook: HookKind,
    client: SocketAddrV4,
    ep: SocketAddrV4,
    proto: u8,
}

fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: u8, seq: u32, ack: u32, data: usize) -> Packet {
    Packet {
        seq,
        ack,
        payload: vec![0x5a; data],
        ..Packet::new(src, dst, L4::Tcp { flags })
    }
}

impl<'a> Flow<'a> {
    /// Starts a flow from `c` with `flags`; returns it with the endpoint chosen.
    fn tcp(dp: &'a Datapath, hook: HookKind, c: SocketAddrV4, flags: u8, seq: u32) -> Flow<'a> {
        let out = run(dp, hook, &tcp(c, SERVICE, flags, seq, 0, 0));
        Flow {
            dp,
            hook,
            client: c,
            ep: parse(&out).dst,
            proto: TCP,
        }
    }

    fn udp(dp: &'a Datapath, c: SocketAddrV4) -> Flow<'a> {
        let out = run(
            dp,
            HookKind::Tc,
            &Packet::new(c, SERVICE, L4::Udp { checksum: true }),
        );
        Flow {
            dp,
            hook: HookKind::Tc,
            client: c,
            ep: parse(&out).dst,
            proto: 17,
        }
    }

    /// A segment from the client, which must reach the flow's endpoint.
    fn client(&self, flags: u8, seq: u32, ack: u32, data: usize) -> &Self {
        let out = run(
            self.dp,
            self.hook,
            &tcp(self.client, SERVICE, flags, seq, ack, data),
        );
        assert_eq!(parse(&out).dst, self.ep, "client segment went elsewhere");
        self
    }

    /// A segment from the endpoint, which must reach the client from the VIP.
    fn endpoint(&self, flags: u8, seq: u32, ack: u32, data: usize) -> &Self {
        let p = if self.proto == TCP {
            tcp(self.ep, self.client, flags, seq, ack, data)
        } else {
            Packet::new(self.ep, self.client, L4::Udp { checksum: true })
        };
        let out = run(self.dp, self.hook, &p);
        assert_eq!(parse(&out).src, SERVICE, "reply not translated");
        self
    }

    fn entries(&self) -> (Option<ll_ct>, Option<ll_ct>) {
        let get = |k| self.dp.conntrack_entry(&k).expect("reading conntrack");
        (
            get(ct_key(self.client, SERVICE, self.proto)),
            get(ct_key(self.ep, self.client, self.proto)),
        )
    }

    /// The flow's state, which both of its entries must agree on.
    fn state(&self) -> &'static str {
        let (Some(o), Some(r)) = self.entries() else {
            panic!("flow {} is not (wholly) tracked", self.client);
        };
        assert_eq!(o.state, r.state, "the two directions disagree");
        assert_eq!(o.seen, r.seen, "the two directions saw different events");
        state_name(self.proto, o.state)
    }

    fn expect(&self, state: &str) -> &Self {
        assert_eq!(self.state(), state, "flow from {}", self.client);
        self
    }

    /// When the flow's newest entry saw its last packet.
    fn last_seen(&self) -> u64 {
        let (o, r) = self.entries();
        o.into_iter()
            .chain(r)
            .map(|v| v.last_seen_ns)
            .max()
            .expect("flow is tracked")
    }

    fn gone(&self) -> bool {
        matches!(self.entries(), (None, None))
    }
}

// Client and endpoint initial sequence numbers.
const C: u32 = 1000;
const E: u32 = 5000;

/// A flow through its three-way handshake.
fn established(dp: &Datapath, hook: HookKind, port: u16) -> Flow<'_> {
    let f = Flow::tcp(dp, hook, client(port), SYN, C);
    f.expect("syn-sent");
    f.endpoint(SYN | ACK, E, C + 1, 0).expect("syn-recv");
    f.client(ACK, C + 1, E + 1, 0).expect("est");
    f
}

#[test]
fn the_handshake_establishes_at_tc_and_xdp() {
    for hook in [HookKind::Tc, HookKind::Xdp] {
        let (dp, _) = lb(1024);
        let f = established(&dp, hook, 40000);
        f.client(ACK, C + 1, E + 1, 100).expect("est");
        f.endpoint(ACK, E + 1, C + 101, 1000).expect("est");
        // A retransmitted SYN-ACK changes nothing.
        f.endpoint(SYN | ACK, E, C + 1, 0).expect("est");
    }
}

#[test]
fn the_client_closing_goes_through_every_closing_state() {
    let (dp, _) = lb(1024);
    let f = established(&dp, HookKind::Tc, 40000);
    // The FIN carries 10 bytes: it is acked by C + 1 + 10 + 1.
    f.client(FIN | ACK, C + 1, E + 1, 10).expect("fin-wait");
    f.endpoint(ACK, E + 1, C + 11, 0).expect("fin-wait");
    f.endpoint(ACK, E + 1, C + 12, 0).expect("close-wait");
    f.endpoint(ACK, E + 1, C + 12, 500).expect("close-wait");
    f.endpoint(FIN | ACK, E + 501, C + 12, 0).expect("last-ack");
    f.client(ACK, C + 12, E + 501, 0).expect("last-ack");
    f.client(ACK, C + 12, E + 502, 0).expect("time-wait");
}

#[test]
fn the_endpoint_closing_mirrors_it() {
    let (dp, _) = lb(1024);
    let f = established(&dp, HookKind::Xdp, 40000);
    f.endpoint(FIN | ACK, E + 1, C + 1, 0).expect("fin-wait");
    f.client(ACK, C + 1, E + 2, 0).expect("close-wait");
    f.client(FIN | ACK, C + 1, E + 2, 0).expect("last-ack");
    f.endpoint(ACK, E + 2, C + 2, 0).expect("time-wait");
}

#[test]
fn simultaneous_and_combined_closes_reach_time_wait() {
    let (dp, _) = lb(1024);
    // FINs cross: neither acks the other's.
    let f = established(&dp, HookKind::Tc, 40000);
    f.client(FIN | ACK, C + 1, E + 1, 0).expect("fin-wait");
    f.endpoint(FIN | ACK, E + 1, C + 1, 0).expect("last-ack");
    f.client(ACK, C + 2, E + 2, 0).expect("last-ack");
    f.endpoint(ACK, E + 2, C + 2, 0).expect("time-wait");
    // The endpoint's FIN acks the client's in the same segment.
    let g = established(&dp, HookKind::Tc, 40001);
    g.client(FIN | ACK, C + 1, E + 1, 0).expect("fin-wait");
    g.endpoint(FIN | ACK, E + 1, C + 2, 0).expect("last-ack");
    g.client(ACK, C + 2, E + 2, 0).expect("time-wait");
}

#[test]
fn a_reset_closes_from_any_state() {
    let (dp, _) = lb(1024);
    // Refused: the endpoint resets the SYN.
    let f = Flow::tcp(&dp, HookKind::Tc, client(40000), SYN, C);
    f.endpoint(RST | ACK, 0, C + 1, 0).expect("closed");
    // Reset by the client once established.
    let f = established(&dp, HookKind::Tc, 40001);
    f.client(RST, C + 1, 0, 0).expect("closed");
    // Reset by the endpoint while closing; later segments do not revive it.
    let f = established(&dp, HookKind::Tc, 40002);
    f.client(FIN | ACK, C + 1, E + 1, 0).expect("fin-wait");
    f.endpoint(RST, E + 1, 0, 0).expect("closed");
    f.client(ACK, C + 2, E + 1, 0).expect("closed");
}

#[test]
fn a_new_syn_reopens_a_closed_flow_on_its_endpoint() {
    let (dp, _) = lb(1024);
    let f = established(&dp, HookKind::Tc, 40000);
    assert_eq!(f.ep, EP1);
    f.client(FIN | ACK, C + 1, E + 1, 0);
    f.endpoint(FIN | ACK, E + 1, C + 2, 0);
    f.client(ACK, C + 2, E + 2, 0).expect("time-wait");
    // A SYN on an established flow is not a new connection.
    let g = established(&dp, HookKind::Tc, 40001);
    assert_eq!(g.ep, EP2);
    g.client(SYN, C + 7, 0, 0).expect("est");

    // The client reuses its port: a new flow would go to EP1 next (rr), so
    // send one more flow first to prove the reopened one keeps its endpoint.
    let h = Flow::tcp(&dp, HookKind::Tc, client(40002), SYN, C);
    assert_eq!(h.ep, EP1);
    f.client(SYN, C + 100_000, 0, 0).expect("syn-sent");
    f.endpoint(SYN | ACK, E + 100_000, C + 100_001, 0)
        .expect("syn-recv");
    f.client(ACK, C + 100_001, E + 100_001, 0).expect("est");
    // And after a reset.
    h.client(RST, C + 1, 0, 0).expect("closed");
    h.client(SYN, C + 9, 0, 0).expect("syn-sent");
    assert_eq!(dp.conntrack().unwrap().len(), 6, "no flow was added");
}

#[test]
fn flows_seen_mid_stream_are_picked_up() {
    let (dp, _) = lb(1024);
    Flow::tcp(&dp, HookKind::Tc, client(40000), ACK, C).expect("est");
    Flow::tcp(&dp, HookKind::Tc, client(40001), FIN | ACK, C).expect("fin-wait");
    Flow::tcp(&dp, HookKind::Tc, client(40002), RST, C).expect("closed");
    // A picked-up flow closes like any other.
    let f = Flow::tcp(&dp, HookKind::Tc, client(40003), ACK, C + 1);
    f.endpoint(FIN | ACK, E + 1, C + 1, 0).expect("fin-wait");
    f.client(FIN | ACK, C + 1, E + 2, 0).expect("last-ack");
    f.endpoint(ACK, E + 2, C + 2, 0).expect("time-wait");
}

#[test]
fn udp_is_new_until_the_endpoint_answers() {
    let (dp, _) = lb(1024);
    let f = Flow::udp(&dp, client(40000));
    f.expect("udp-new");
    run(
        &dp,
        HookKind::Tc,
        &Packet::new(client(40000), SERVICE, L4::Udp { checksum: true }),
    );
    f.expect("udp-new");
    f.endpoint(0, 0, 0, 0).expect("udp-est");
}

#[test]
fn every_entry_is_accounted_for() {
    let (dp, store) = lb(1024);
    for port in 40000..40010 {
        Flow::tcp(&dp, HookKind::Tc, client(port), SYN, C);
    }
    let c = dp.conntrack_counters().unwrap();
    assert_eq!((c.created, c.deleted()), (20, 0));

    // A flow refused for a clash inserts its first half, then takes it back.
    let mut other = rule(Protocol::Tcp, &[EP1]);
    other.key.ip = Ipv4Addr::new(20, 20, 20, 2).into();
    store.create(other.clone()).unwrap();
    let clash = tcp(
        client(40000),
        SocketAddrV4::new(Ipv4Addr::new(20, 20, 20, 2), 2020),
        SYN,
        C,
        0,
        0,
    );
    run(&dp, HookKind::Tc, &clash);
    let c = dp.conntrack_counters().unwrap();
    assert_eq!((c.created, c.datapath_deleted), (21, 1));
    let reasons = dp.reason_counters().unwrap();
    assert_eq!(
        reasons[ll_reason::LL_R_PASS_CT_CLASH.0 as usize].1.packets,
        1
    );

    assert_eq!(
        dp.flush_conntrack(|k, _| k.sport == 40000u16.to_be() || k.dport == 40000u16.to_be())
            .unwrap(),
        2
    );
    let c = dp.conntrack_counters().unwrap();
    assert_eq!((c.removed, c.deleted()), (2, 3));
    // Nothing was evicted: every entry is accounted for.
    let all = conntrack::list(&dp, &store, &Filter::default(), 0).unwrap();
    assert_eq!(all.table.entries, 18);
    assert_eq!(all.table.evicted, 0);
    assert_eq!(all.table.clashes, 1);
}

/// Sweeps at `now` without pausing.
fn sweep_at(dp: &Datapath, t: &Timeouts, now: u64) -> conntrack::SweepReport {
    sweep(dp, t, now, |_| ControlFlow::Continue(())).expect("sweeping")
}

#[test]
fn ageing_honours_each_states_timeout() {
    let (dp, _) = lb(1024);
    let t = Timeouts::default();
    // Kept through every sweep below.
    let keeper = established(&dp, HookKind::Tc, 39999);
    let cases: Vec<(Flow, Duration)> = vec![
        (
            Flow::tcp(&dp, HookKind::Tc, client(40000), SYN, C),
            t.tcp_syn_sent,
        ),
        (
            {
                let f = Flow::tcp(&dp, HookKind::Tc, client(40001), SYN, C);
                f.endpoint(SYN | ACK, E, C + 1, 0).expect("syn-recv");
                f
            },
            t.tcp_syn_recv,
        ),
        (
            {
                let f = established(&dp, HookKind::Tc, 40002);
                f.client(FIN | ACK, C + 1, E + 1, 0).expect("fin-wait");
                f
            },
            t.tcp_fin_wait,
        ),
        (
            {
                let f = established(&dp, HookKind::Tc, 40003);
                f.client(FIN | ACK, C + 1, E + 1, 0);
                f.endpoint(ACK, E + 1, C + 2, 0).expect("close-wait");
                f
            },
            t.tcp_close_wait,
        ),
        (
            {
                let f = established(&dp, HookKind::Tc, 40004);
                f.client(FIN | ACK, C + 1, E + 1, 0);
                f.endpoint(FIN | ACK, E + 1, C + 1, 0).expect("last-ack");
                f
            },
            t.tcp_last_ack,
        ),
        (
            {
                let f = established(&dp, HookKind::Tc, 40005);
                f.client(FIN | ACK, C + 1, E + 1, 0);
                f.endpoint(FIN | ACK, E + 1, C + 2, 0);
                f.client(ACK, C + 2, E + 2, 0).expect("time-wait");
                f
            },
            t.tcp_time_wait,
        ),
        (
            {
                let f = established(&dp, HookKind::Tc, 40006);
                f.client(RST, C + 1, 0, 0).expect("closed");
                f
            },
            t.tcp_close,
        ),
        (Flow::udp(&dp, client(40007)).expect_owned("udp-new"), t.udp),
        (
            {
                let f = Flow::udp(&dp, client(40008));
                f.endpoint(0, 0, 0, 0).expect("udp-est");
                f
            },
            t.udp_replied,
        ),
    ];
    // In the order they expire, each sweep taking exactly one flow.
    let mut due: Vec<(u64, String, &Flow)> = cases
        .iter()
        .map(|(f, timeout)| {
            let what = format!("{} ({})", f.client, f.state());
            (f.last_seen() + timeout.as_nanos() as u64, what, f)
        })
        .collect();
    due.sort_by_key(|(deadline, _, _)| *deadline);
    for (deadline, what, f) in due {
        sweep_at(&dp, &t, deadline);
        assert!(!f.gone(), "{what}: gone at its timeout");
        let r = sweep_at(&dp, &t, deadline + 1);
        assert!(f.gone(), "{what}: still there after its timeout");
        assert_eq!((r.aged, r.orphans), (2, 0), "{what}");
    }
    keeper.expect("est");
    let c = dp.conntrack_counters().unwrap();
    assert_eq!(c.aged, 2 * cases.len() as u64);
    // The established flow goes after an hour.
    sweep_at(
        &dp,
        &t,
        keeper.last_seen() + t.tcp_established.as_nanos() as u64 + 1,
    );
    assert!(keeper.gone());
}

impl<'a> Flow<'a> {
    fn expect_owned(self, state: &str) -> Self {
        self.expect(state);
        self
    }
}

#[test]
fn a_flow_lives_while_either_direction_does() {
    let (dp, _) = lb(1024);
    let t = Timeouts::default();
    let f = Flow::udp(&dp, client(40000));
    f.endpoint(0, 0, 0, 0).expect("udp-est");
    let (Some(orig), Some(reply)) = f.entries() else {
        panic!("flow not tracked");
    };
    assert!(reply.last_seen_ns > orig.last_seen_ns);
    let timeout = t.udp_replied.as_nanos() as u64;
    // The client went quiet, the endpoint has not (yet).
    let r = sweep_at(&dp, &t, orig.last_seen_ns + timeout + 1);
    assert_eq!(r.aged, 0);
    f.expect("udp-est");
    let r = sweep_at(&dp, &t, reply.last_seen_ns + timeout + 1);
    assert_eq!(r.aged, 2);
    assert!(f.gone());
}

#[test]
fn a_half_whose_partner_was_evicted_is_removed_as_an_orphan() {
    let (dp, _) = lb(1024);
    let t = Timeouts::default();
    let f = established(&dp, HookKind::Tc, 40000);
    let g = established(&dp, HookKind::Tc, 40001);
    // Stand in for the LRU: drop one half of each.
    let halves = [ct_key(f.client, SERVICE, TCP), ct_key(g.ep, g.client, TCP)];
    assert_eq!(dp.delete_conntrack(&halves, Removal::Requested).unwrap(), 2);
    let now = f.last_seen().max(g.last_seen());
    // While idle for less than its timeout, an orphan stays.
    let r = sweep_at(&dp, &t, now + SECOND);
    assert_eq!((r.aged, r.orphans), (0, 0));
    let r = sweep_at(&dp, &t, now + t.tcp_established.as_nanos() as u64 + 1);
    assert_eq!((r.aged, r.orphans), (0, 2));
    assert!(f.gone() && g.gone());
    assert_eq!(dp.conntrack_counters().unwrap().orphans, 2);
}

#[test]
fn a_full_table_evicts_and_counts_what_it_evicted() {
    let (dp, store) = lb(256);
    let flows = 200u16;
    for i in 0..flows {
        Flow::tcp(&dp, HookKind::Tc, client(40000 + i), SYN, C);
    }
    let l = conntrack::list(&dp, &store, &Filter::default(), 0).unwrap();
    assert!(l.table.entries <= 256, "{}", l.table.entries);
    // The table stood still while it was walked, so the count is exact.
    assert_eq!(l.table.evicted, 2 * u64::from(flows) - l.table.entries);
    // The LRU never refuses an insert: it evicts instead.
    assert_eq!(l.table.insert_failures, 0);
    let t = Timeouts::default();
    let r = sweep_at(&dp, &t, conntrack_now(&dp));
    assert_eq!(r.evicted, l.table.evicted);
    assert_eq!(dp.conntrack_evicted(), l.table.evicted);
}

/// A clock value at which every entry is idle for less than a second.
fn conntrack_now(dp: &Datapath) -> u64 {
    let mut newest = 0;
    dp.walk_conntrack(4096, |_, values| {
        newest = values.iter().map(|v| v.last_seen_ns).fold(newest, u64::max);
        ControlFlow::Continue(())
    })
    .unwrap();
    newest
}

/// The frame for flow `i` of the million: a SYN (even i, syn-sent) or a
/// bare ACK (odd i, picked up as established) from its own client tuple.
fn million_frame(template: &mut [u8], i: u32) {
    let ip = u32::from(Ipv4Addr::new(10, 64, 0, 0)) + (i >> 10);
    let port = 20000 + (i & 0x3ff) as u16;
    template[26..30].copy_from_slice(&ip.to_be_bytes());
    template[34..36].copy_from_slice(&port.to_be_bytes());
    template[47] = if i.is_multiple_of(2) { SYN } else { ACK };
}

#[test]
fn a_million_entries_are_aged_listed_and_counted() {
    const ENTRIES: u32 = 1_000_000;
    let dp = load(ENTRIES);
    let store = store(&dp);
    store
        .create(rule(Protocol::Tcp, &[EP1, EP2]))
        .expect("creating the service");

    // Fill the table with 500,000 flows through the datapath. The frames'
    // checksums are left stale: the datapath never checks them.
    let started = Instant::now();
    let mut frame = tcp(client(1), SERVICE, SYN, C, 0, 0).build();
    for i in 0..ENTRIES / 2 {
        million_frame(&mut frame, i);
        let r = dp.test_run(HookKind::Tc, &frame, 1).expect("test run");
        assert_eq!(r.retval, 0);
    }
    let filled = started.elapsed();

    let count = |filter: &Filter| conntrack::list(&dp, &store, filter, 0).unwrap();
    let started = Instant::now();
    let all = count(&Filter::default());
    let walked = started.elapsed();
    // An LRU hash starts evicting a little before max_entries: each CPU
    // keeps some free nodes of its own.
    let present = all.table.entries;
    assert!(
        present > u64::from(ENTRIES) - 1024 && present <= u64::from(ENTRIES),
        "{present}"
    );
    assert_eq!(all.table.evicted, u64::from(ENTRIES) - present);
    let flows = |l: &conntrack::Listing, state: &str| {
        l.counts
            .iter()
            .filter(|c| c.state == state)
            .map(|c| c.flows)
            .sum::<u64>()
    };
    let (syn_sent, est) = (flows(&all, "syn-sent"), flows(&all, "est"));
    assert!(syn_sent > 249_000 && est > 249_000, "{:?}", all.counts);
    let memory = dp.conntrack_memory().unwrap();
    println!(
        "filled {ENTRIES} entries in {filled:?}, counted them in {walked:?}; \
         {memory} bytes of kernel memory, {} bytes per entry",
        memory / u64::from(ENTRIES)
    );

    // A filtered listing returns its first entries in order, and the counts.
    let st = Filter::parse("filter", "10.64.0.7", 0, "tcp", "est").unwrap();
    let l = conntrack::list(&dp, &store, &st, 100).unwrap();
    assert_eq!(
        l.matched,
        2 * 512,
        "10.64.0.7 has 1024 flows, half established"
    );
    assert_eq!(l.entries.len(), 100);
    assert!(l
        .entries
        .iter()
        .all(|e| e.state == "est" && e.service == "tcp-svc"));
    assert!(l
        .entries
        .windows(2)
        .all(|w| (w[0].src, w[0].sport) <= (w[1].src, w[1].sport)));

    // Through the gRPC API and loxicmd, as users see it.
    api_and_cli_at_scale(&dp, &store, syn_sent);

    // One sweep, a minute and a bit after the last packet: every syn-sent
    // flow is expired (60 s), no established one (1 h).
    let t = Timeouts::default();
    let syn_sent_entries = count(&Filter::parse("filter", "", 0, "", "syn-sent").unwrap()).matched;
    let est_entries = count(&Filter::parse("filter", "", 0, "", "est").unwrap()).matched;
    assert_eq!(syn_sent_entries + est_entries, present);
    let started = Instant::now();
    let r = sweep_at(
        &dp,
        &t,
        conntrack_now(&dp) + t.tcp_syn_sent.as_nanos() as u64 + SECOND,
    );
    let took = started.elapsed();
    println!(
        "swept {} entries in {took:?}: {} aged, {} orphans",
        r.entries, r.aged, r.orphans
    );
    assert_eq!(r.entries, present);
    // Halves whose partner the LRU evicted while filling are orphans.
    assert_eq!(r.aged + r.orphans, syn_sent_entries);
    assert!(r.orphans < 1024, "{}", r.orphans);
    let left = count(&Filter::default());
    assert_eq!(flows(&left, "syn-sent"), 0);
    assert_eq!(flows(&left, "est"), est);
    assert_eq!(left.table.entries, est_entries);
    assert_eq!(
        left.table.evicted, all.table.evicted,
        "the sweep evicted nothing"
    );
}

/// Serves the API over loopback in this process and lists a full table
/// through it and through loxicmd.
fn api_and_cli_at_scale(dp: &Arc<Datapath>, store: &Arc<RuleStore>, syn_sent: u64) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binding a loopback port");
    let addr: SocketAddr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = rt.block_on(async { loxilight::health::Health::spawn(store.clone()) });
    let server = rt.spawn(loxilight::api::serve(
        Listener::Tcp(listener),
        None,
        store.clone(),
        dp.clone(),
        health,
        Arc::new(ApiStats::default()),
        async {
            let _ = stopped.await;
        },
    ));

    let started = Instant::now();
    let response = rt.block_on(async {
        let mut client = ConntrackServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connecting to the API");
        client
            .list_conntrack(ListConntrackRequest {
                filter: Some(ConntrackFilter {
                    state: "syn-sent".into(),
                    ..Default::default()
                }),
                limit: 10_000,
            })
            .await
            .expect("ListConntrack on a full table")
            .into_inner()
    });
    println!(
        "ListConntrack of 10,000 entries over gRPC took {:?}",
        started.elapsed()
    );
    assert_eq!(response.entries.len(), 10_000);
    let syn_sent_entries = response.counts.iter().map(|c| c.flows).sum::<u64>();
    assert_eq!(syn_sent_entries, syn_sent);
    assert!(response.matched >= 2 * syn_sent - 1024);
    assert_eq!(response.table.unwrap().capacity, 1_000_000);

    let loxicmd = Path::new(env!("CARGO_BIN_EXE_loxilight")).with_file_name("loxicmd");
    assert!(
        loxicmd.exists(),
        "{} is missing: run `cargo build --workspace` first",
        loxicmd.display()
    );
    let started = Instant::now();
    let out = Command::new(&loxicmd)
        .args([
            "get",
            "ct",
            "--state",
            "est",
            "--ip",
            "10.64.0.9",
            "--limit",
            "5",
        ])
        .args(["--port", &addr.port().to_string()])
        .output()
        .expect("running loxicmd");
    println!("loxicmd get ct took {:?}", started.elapsed());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.lines().filter(|l| l.contains("| est ")).count(),
        5,
        "{text}"
    );
    assert!(
        text.contains("Matched 1024 entries (512 flows: tcp est 512), showing the first 5"),
        "{text}"
    );
    assert!(text.contains("of 1000000 entries"), "{text}");

    let _ = stop.send(());
    rt.block_on(server)
        .expect("the API task")
        .expect("serving the API");
}

/// A bpffs pin directory of this test's own, removed on drop.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn pinned_maps_are_reused_when_they_fit_and_replaced_when_not() {
    let pins = PinDir(format!("/sys/fs/bpf/loxilight-test-{}-pins", std::process::id()).into());
    let load_pinned = |conntrack| {
        let limits = Limits {
            services: 64,
            conntrack,
            routes: 64,
            neighbours: 64,
        };
        Datapath::load(limits, Some(&pins.0))
            .unwrap_or_else(|e| panic!("loading with pins in {}: {e}", pins.0.display()))
    };
    use libbpf_rs::MapCore;
    let pinned_ct = || {
        libbpf_rs::MapHandle::from_pinned_path(pins.0.join("ll_conntrack"))
            .expect("the pinned conntrack map")
    };
    let syn = Packet::new(client(40000), SERVICE, L4::Tcp { flags: SYN });

    let dp = load_pinned(1024);
    dp.program_service(1, &rule(Protocol::Tcp, &[EP1]))
        .expect("programming a service");
    run(&dp, HookKind::Tc, &syn);
    assert_eq!(dp.conntrack().unwrap().len(), 2);
    drop(dp);

    // The same layout and sizes: the flow is still there.
    let dp = load_pinned(1024);
    assert_eq!(dp.conntrack().unwrap().len(), 2, "reused");
    drop(dp);

    // Another conntrack size: a new, empty table; the services stay.
    let dp = load_pinned(2048);
    assert!(dp.conntrack().unwrap().is_empty(), "replaced");
    assert_eq!(pinned_ct().max_entries(), 2048);
    assert_eq!(parse(&run(&dp, HookKind::Tc, &syn)).dst, EP1);
    drop(dp);

    // An older layout of the entries (48-byte values): replaced too.
    std::fs::remove_file(pins.0.join("ll_conntrack")).unwrap();
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut old = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::LruHash,
        Some("ll_conntrack"),
        std::mem::size_of::<ll_ct_key>() as u32,
        48,
        2048,
        &opts,
    )
    .expect("creating an old-layout map");
    old.pin(pins.0.join("ll_conntrack")).expect("pinning it");
    drop(old);
    let dp = load_pinned(2048);
    assert_eq!(
        pinned_ct().value_size() as usize,
        std::mem::size_of::<ll_ct>()
    );
    assert_eq!(parse(&run(&dp, HookKind::Tc, &syn)).dst, EP1);
    assert_eq!(dp.conntrack().unwrap().len(), 2);
}
