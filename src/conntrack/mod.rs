//! Conntrack as users see it: the datapath's entries joined with the rules
//! they belong to.
use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::datapath::types::{ll_ct, ll_ct_dir, ll_ct_key, ll_ct_state};
use crate::datapath::Datapath;
use crate::rules::{Protocol, RuleStore};

/// One direction of a tracked flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtEntry {
    pub service: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: Option<Protocol>,
    pub state: &'static str,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

fn state_name(proto: Option<Protocol>, st: ll_ct_state) -> &'static str {
    match (proto, st) {
        (Some(Protocol::Tcp), ll_ct_state::LL_CT_NEW) => "syn-sent",
        (Some(Protocol::Tcp), ll_ct_state::LL_CT_EST) => "est",
        (Some(Protocol::Tcp), ll_ct_state::LL_CT_FIN) => "fin-wait",
        (_, ll_ct_state::LL_CT_CLOSED) => "closed",
        (_, ll_ct_state::LL_CT_EST) => "udp-est",
        _ => "udp-new",
    }
}

fn entry(names: &HashMap<u32, String>, k: &ll_ct_key, v: &ll_ct) -> CtEntry {
    let proto = Protocol::from_number(k.proto);
    let nat = format!(
        "{}:{}",
        Ipv4Addr::from(u32::from_be(v.nat_addr)),
        u16::from_be(v.nat_port)
    );
    CtEntry {
        service: names.get(&v.svc_id).cloned().unwrap_or_else(|| "-".into()),
        src: Ipv4Addr::from(u32::from_be(k.saddr)),
        dst: Ipv4Addr::from(u32::from_be(k.daddr)),
        sport: u16::from_be(k.sport),
        dport: u16::from_be(k.dport),
        proto,
        state: state_name(proto, v.state),
        action: if v.dir == ll_ct_dir::LL_CT_ORIGINAL {
            format!("dnat-{nat}")
        } else {
            format!("rdnat-{nat}")
        },
        packets: v.packets,
        bytes: v.bytes,
    }
}

/// Every entry, sorted by service then addresses, so listings are stable.
pub fn list(dp: &Datapath, store: &RuleStore) -> Vec<CtEntry> {
    let names = store.names_by_id();
    let mut v: Vec<CtEntry> = dp
        .conntrack()
        .iter()
        .map(|(k, v)| entry(&names, k, v))
        .collect();
    v.sort_by(|a, b| {
        (&a.service, a.src, a.dst, a.sport, a.dport)
            .cmp(&(&b.service, b.src, b.dst, b.sport, b.dport))
    });
    v
}

/// Recounts the live flows per endpoint of the least-connections rules and
/// writes the counts the datapath selects by. The datapath adds each new
/// flow itself; this recount takes away the flows that ended.
pub fn refresh_active_flows(dp: &Datapath, store: &RuleStore) -> crate::datapath::Result<()> {
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
    for (_, v) in dp.conntrack() {
        // Closing flows (FIN, RST) no longer count as load.
        let live = matches!(v.state, ll_ct_state::LL_CT_NEW | ll_ct_state::LL_CT_EST);
        if v.dir == ll_ct_dir::LL_CT_ORIGINAL && live {
            *counts.entry((v.svc_id, v.ep_idx)).or_insert(0u32) += 1;
        }
    }
    dp.set_active_flows(&ids, &counts)
}
