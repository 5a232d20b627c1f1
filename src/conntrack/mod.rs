//! Conntrack as users see it: the datapath's entries joined with the rules
//! they belong to, filtered, counted and deleted; and their ageing.
mod ageing;
mod filter;
mod table;

pub use ageing::{sweep, Ageing, AgeingConfig, SweepReport, Timeouts};
pub use filter::{proto_name, state_name, Filter};

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::ControlFlow;

use crate::datapath::types::{ll_ct_dir, ll_ct_state, ll_reason, ll_xlate};
use crate::datapath::{self, monotonic_ns, Ct4, Ct6, Datapath, Removal, CT_BATCH};
use crate::rules::RuleStore;
pub(crate) use table::View;
use table::{shown, Table, Tuple};

/// Entries a listing returns when the request does not say.
pub const DEFAULT_LIMIT: usize = 1000;
/// Entries a listing returns at most, keeping the answer well under gRPC's
/// 4 MiB message limit.
pub const MAX_LIMIT: usize = 10_000;

/// One direction of a tracked flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub service: String,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: &'static str,
    pub state: &'static str,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
    pub idle_secs: u64,
}

/// Flows (not entries) in one protocol and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateCount {
    pub proto: &'static str,
    pub state: &'static str,
    pub flows: u64,
}

/// The table as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub capacity: u64,
    pub entries: u64,
    pub memory_bytes: u64,
    pub evicted: u64,
    pub orphans_removed: u64,
    pub aged: u64,
    pub insert_failures: u64,
    pub clashes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The first entries in display order, at most the limit asked for.
    pub entries: Vec<CtEntry>,
    /// Entries that match the filter.
    pub matched: u64,
    pub counts: Vec<StateCount>,
    pub table: TableStats,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    pub flows: u64,
    pub entries: u64,
}

/// A flow's identity: its original direction's tuple, whichever entry we hold.
fn flow_id(e: &View) -> Tuple {
    if e.ct.dir == ll_ct_dir::LL_CT_ORIGINAL {
        e.key
    } else {
        e.partner()
    }
}

/// What an entry does to its packets, e.g. "dnat-31.31.31.1:8080" for a
/// client's packets to a service, "rdnat-20.20.20.1:2020" for the endpoint's
/// replies. A direction that translates both sides shows both, source first
/// ("snat-…,dnat-…"); the reply direction's names say which translation of
/// the original it undoes. A DSR entry shows the endpoint it routes to
/// ("dsr-31.31.31.1"): only the MAC changes. A flow the firewall let in
/// untranslated shows "allow", or "allow-mark-N" with the mark it carries
/// (in ep_idx).
fn action(e: &View) -> String {
    if e.one_way() {
        return format!("dsr-{}", e.nat.dst);
    }
    let orig = e.ct.dir == ll_ct_dir::LL_CT_ORIGINAL;
    let sides = [
        (
            ll_xlate::LL_XLATE_SRC,
            if orig { "snat" } else { "rdnat" },
            e.nat.src,
            e.nat.sport,
        ),
        (
            ll_xlate::LL_XLATE_DST,
            if orig { "dnat" } else { "rsnat" },
            e.nat.dst,
            e.nat.dport,
        ),
    ];
    let parts: Vec<String> = sides
        .iter()
        .filter(|(bit, ..)| e.ct.xlate.0 & bit.0 != 0)
        .map(|(_, name, addr, port)| match shown(*addr) {
            IpAddr::V4(a) => format!("{name}-{a}:{port}"),
            IpAddr::V6(a) => format!("{name}-[{a}]:{port}"),
        })
        .collect();
    if !parts.is_empty() {
        parts.join(",")
    } else if e.ct.svc_id != datapath::SVC_NONE {
        "-".into()
    } else if e.ct.ep_idx == 0 {
        "allow".into()
    } else {
        format!("allow-mark-{}", e.ct.ep_idx)
    }
}

fn entry(names: &HashMap<u32, String>, now: u64, e: &View) -> CtEntry {
    let (k, v) = (&e.key, &e.ct);
    CtEntry {
        service: names.get(&v.svc_id).cloned().unwrap_or_else(|| "-".into()),
        src: shown(k.src),
        dst: shown(k.dst),
        sport: k.sport,
        dport: k.dport,
        proto: proto_name(k.proto),
        state: state_name(k.proto, v.state),
        action: action(e),
        packets: v.packets,
        bytes: v.bytes,
        idle_secs: now.saturating_sub(v.last_seen_ns) / 1_000_000_000,
    }
}

/// Walks both tables (IPv4 flows, then IPv6 flows), handing `f` each entry.
pub(crate) fn walk_all(dp: &Datapath, mut f: impl FnMut(&View)) -> datapath::Result<()> {
    dp.walk_table::<Ct4>(CT_BATCH, |keys, values| {
        keys.iter()
            .zip(values)
            .for_each(|(k, v)| f(&Ct4::view(k, v)));
        ControlFlow::Continue(())
    })?;
    dp.walk_table::<Ct6>(CT_BATCH, |keys, values| {
        keys.iter()
            .zip(values)
            .for_each(|(k, v)| f(&Ct6::view(k, v)));
        ControlFlow::Continue(())
    })
}

/// An entry in display order: by service name, then addresses and ports
/// (IPv4 before IPv6).
struct Ranked {
    order: (u32, Tuple),
    e: View,
}

impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.order == o.order
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.order.cmp(&o.order)
    }
}

/// Walks the table once: the first `limit` matching entries in display
/// order, how many match, matching flows by state, and the table's figures.
pub fn list(
    dp: &Datapath,
    store: &RuleStore,
    filter: &Filter,
    limit: usize,
) -> datapath::Result<Listing> {
    let names = store.names_by_id();
    // Service ids ranked by name, so that the walk compares integers.
    let mut by_name: Vec<(&String, u32)> = names.iter().map(|(id, n)| (n, *id)).collect();
    by_name.sort();
    let rank: HashMap<u32, u32> = by_name
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (*id, i as u32))
        .collect();

    let before = dp.conntrack_counters()?;
    let (mut walked, mut walked6, mut matched) = (0u64, 0u64, 0u64);
    let mut counts: BTreeMap<(u8, u8), u64> = BTreeMap::new();
    let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(limit + 1);
    walk_all(dp, |e| {
        match e.key.src {
            IpAddr::V4(_) => walked += 1,
            IpAddr::V6(_) => walked6 += 1,
        }
        // Bookkeeping, not a flow: the flow is listed from the IPv6 table.
        if e.reservation() || !filter.matches(e) {
            return;
        }
        matched += 1;
        if e.ct.dir == ll_ct_dir::LL_CT_ORIGINAL {
            *counts.entry((e.key.proto, e.ct.state.0)).or_default() += 1;
        }
        if limit == 0 {
            return;
        }
        let order = (rank.get(&e.ct.svc_id).copied().unwrap_or(u32::MAX), e.key);
        if best.len() == limit && best.peek().is_some_and(|worst| worst.order <= order) {
            return;
        }
        best.push(Ranked { order, e: *e });
        if best.len() > limit {
            best.pop();
        }
    })?;
    let after = dp.conntrack_counters()?;
    // The census counts the IPv4 table, whose counters these are.
    let evicted = dp.note_conntrack_census(&before, &after, walked);
    let now = monotonic_ns();
    Ok(Listing {
        entries: best
            .into_sorted_vec()
            .iter()
            .map(|r| entry(&names, now, &r.e))
            .collect(),
        matched,
        counts: counts
            .into_iter()
            .map(|((proto, st), flows)| StateCount {
                proto: proto_name(proto),
                state: state_name(proto, ll_ct_state(st)),
                flows,
            })
            .collect(),
        table: table_stats(dp, walked + walked6, evicted, &after)?,
    })
}

fn table_stats(
    dp: &Datapath,
    entries: u64,
    evicted: u64,
    counters: &datapath::CtCounters,
) -> datapath::Result<TableStats> {
    let reasons = dp.reason_counters()?;
    let packets = |r: ll_reason| {
        reasons
            .iter()
            .find(|(reason, _)| *reason == r)
            .map_or(0, |(_, c)| c.packets)
    };
    Ok(TableStats {
        capacity: dp.limits().conntrack.into(),
        entries,
        memory_bytes: dp.conntrack_memory()?,
        evicted,
        orphans_removed: counters.orphans,
        aged: counters.aged,
        insert_failures: packets(ll_reason::LL_R_PASS_CT_FULL),
        clashes: packets(ll_reason::LL_R_PASS_CT_CLASH),
    })
}

/// Deletes the flows that match `filter`, both directions of each.
pub fn delete(dp: &Datapath, filter: &Filter) -> datapath::Result<Deleted> {
    let mut flows = HashSet::new();
    let mut deleted = delete_in::<Ct4>(dp, filter, &mut flows)?;
    deleted.entries += delete_in::<Ct6>(dp, filter, &mut flows)?.entries;
    deleted.flows = flows.len() as u64;
    Ok(deleted)
}

/// `delete` in one table; adds the flows it deletes to `flows`.
fn delete_in<T: Table>(
    dp: &Datapath,
    filter: &Filter,
    flows: &mut HashSet<Tuple>,
) -> datapath::Result<Deleted> {
    let mut doomed = Vec::new();
    let mut deleted = Deleted::default();
    let mut failed = None;
    dp.walk_table::<T>(CT_BATCH, |keys, values| {
        doomed.clear();
        for (k, v) in keys.iter().zip(values) {
            let e = T::view(k, v);
            // A NAT64 flow's reservation goes with ageing's next sweep,
            // once its flow is gone.
            if !e.reservation() && filter.matches(&e) {
                flows.insert(flow_id(&e));
                // A filter matches both halves alike; the partner may be in
                // a later batch, or gone already (then it is skipped).
                doomed.push(*k);
                if !e.one_way() {
                    doomed.push(T::key_of(&e.partner()));
                }
            }
        }
        match dp.delete_in::<T>(&doomed, Removal::Requested) {
            Ok(n) => {
                deleted.entries += n;
                ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    failed.map_or(Ok(deleted), Err)
}

/// Recounts the live flows per endpoint of the least-connections rules and
/// writes the counts the datapath selects by. The datapath adds each new
/// flow itself; this recount takes away the flows that ended.
pub fn refresh_active_flows(dp: &Datapath, store: &RuleStore) -> datapath::Result<()> {
    let ids: Vec<u32> = store
        .list()
        .iter()
        .filter(|s| s.rule.selection == crate::rules::Selection::LeastConnections)
        .map(|s| s.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let mut counts = HashMap::new();
    walk_all(dp, |e| {
        let v = &e.ct;
        if v.dir == ll_ct_dir::LL_CT_ORIGINAL && is_open(v.state) {
            *counts.entry((v.svc_id, v.ep_idx)).or_insert(0u32) += 1;
        }
    })?;
    dp.set_active_flows(&ids, &counts)
}

/// Whether a flow still carries load: not closing (FIN or RST seen).
fn is_open(st: ll_ct_state) -> bool {
    matches!(
        st,
        ll_ct_state::LL_CT_SYN_SENT
            | ll_ct_state::LL_CT_SYN_RECV
            | ll_ct_state::LL_CT_ESTABLISHED
            | ll_ct_state::LL_CT_UNREPLIED
            | ll_ct_state::LL_CT_REPLIED
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::types::{ll_ct, ll_ct6, ll_ct6_key, ll_ct_key, ll_tuple};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn key(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> ll_ct_key {
        ll_ct_key {
            saddr: u32::from(Ipv4Addr::from(s)).to_be(),
            daddr: u32::from(Ipv4Addr::from(d)).to_be(),
            sport: sp.to_be(),
            dport: dp.to_be(),
            proto: 6,
            pad: [0; 3],
        }
    }

    fn addr(a: [u8; 4]) -> u32 {
        u32::from(Ipv4Addr::from(a)).to_be()
    }

    /// The original entry of a flow from 10.0.0.1:40000 to 20.20.20.1:2020
    /// translated to `nat`, and its reply entry as the datapath makes it.
    fn flow(nat: ll_tuple, xlate: ll_xlate) -> [View; 2] {
        let k = key([10, 0, 0, 1], 40000, [20, 20, 20, 1], 2020);
        let v = ll_ct {
            nat,
            xlate,
            dir: ll_ct_dir::LL_CT_ORIGINAL,
            ..Default::default()
        };
        let rv = ll_ct {
            nat: ll_tuple {
                saddr: k.daddr,
                daddr: k.saddr,
                sport: k.dport,
                dport: k.sport,
            },
            xlate: ll_xlate(((xlate.0 & 1) << 1) | (xlate.0 >> 1)),
            dir: ll_ct_dir::LL_CT_REPLY,
            ..Default::default()
        };
        let e = Ct4::view(&k, &v);
        [e, Ct4::view(&Ct4::key_of(&e.partner()), &rv)]
    }

    #[test]
    fn partners_turn_around_whatever_is_translated() {
        // (source after, destination after, sides, the actions of both entries)
        let cases = [
            (
                ([10, 0, 0, 1], 40000),
                ([31, 31, 31, 1], 8080),
                ll_xlate::LL_XLATE_DST,
                ["dnat-31.31.31.1:8080", "rdnat-20.20.20.1:2020"],
            ),
            (
                ([31, 31, 31, 254], 61000),
                ([31, 31, 31, 1], 8080),
                ll_xlate::LL_XLATE_BOTH,
                [
                    "snat-31.31.31.254:61000,dnat-31.31.31.1:8080",
                    "rdnat-20.20.20.1:2020,rsnat-10.0.0.1:40000",
                ],
            ),
        ];
        for ((s, sp), (d, dp), xlate, actions) in cases {
            let nat = ll_tuple {
                saddr: addr(s),
                daddr: addr(d),
                sport: u16::to_be(sp),
                dport: u16::to_be(dp),
            };
            let [e, r] = flow(nat, xlate);
            let want = Ct4::view(&key(d, dp, s, sp), &ll_ct::default()).key;
            assert_eq!(r.key, want, "{actions:?}");
            assert_eq!(r.partner(), e.key);
            assert_eq!(flow_id(&r), flow_id(&e));
            assert_eq!([action(&e), action(&r)], actions);
        }
    }

    #[test]
    fn ipv6_actions_bracket_the_address() {
        let ep: Ipv6Addr = "fd00::2:1".parse().unwrap();
        let k = ll_ct6_key {
            saddr: "fd00:c::7".parse::<Ipv6Addr>().unwrap().octets(),
            daddr: "fd00::100".parse::<Ipv6Addr>().unwrap().octets(),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            pad: [0; 3],
        };
        let mut v = ll_ct6::default();
        v.ct.nat.sport = k.sport;
        v.ct.nat.dport = 8080u16.to_be();
        v.ct.xlate = ll_xlate::LL_XLATE_DST;
        v.nat6.saddr = k.saddr;
        v.nat6.daddr = ep.octets();
        let e = Ct6::view(&k, &v);
        assert_eq!(action(&e), "dnat-[fd00::2:1]:8080");
        assert_eq!(Ct6::key_of(&e.partner()).saddr, ep.octets());
    }
}
