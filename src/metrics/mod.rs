//! Prometheus metrics: the datapath's counters, conntrack, the kernel mirror
//! and the API, rendered in the text exposition format on each scrape.
mod http;
mod text;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::datapath::types::{ll_ct_dir, ll_reason};
use crate::datapath::{self, Datapath};
use crate::kernel::MirrorStats;
use crate::rules::RuleStore;
use text::{Kind, Writer};

pub use http::serve;

/// gRPC requests by method path and status code name.
#[derive(Debug, Default)]
pub struct ApiStats(Mutex<BTreeMap<(String, &'static str), u64>>);

impl ApiStats {
    pub fn record(&self, method: String, code: &'static str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((method, code)).or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((String, &'static str), u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Everything a scrape reads.
pub struct Sources {
    pub dp: Arc<Datapath>,
    pub store: Arc<RuleStore>,
    pub mirror: Arc<MirrorStats>,
    pub api: Arc<ApiStats>,
}

fn proto_label(n: u8) -> String {
    match crate::conntrack::proto_name(n) {
        "-" => n.to_string(),
        name => name.to_owned(),
    }
}

/// The whole exposition. Reads every conntrack entry, so it runs off the
/// async reactor (see [`serve`]).
pub fn render(src: &Sources) -> datapath::Result<String> {
    let mut w = Writer::default();
    w.family(
        "loxilight_build_info",
        Kind::Gauge,
        "Always 1; the version of the running daemon is a label.",
    );
    w.sample(
        "loxilight_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    render_rules(&mut w, src)?;
    render_firewall(&mut w, src)?;
    render_datapath(&mut w, &src.dp)?;
    render_mirror(&mut w, &src.mirror);
    render_api(&mut w, &src.api);
    Ok(w.finish())
}

fn render_rules(w: &mut Writer, src: &Sources) -> datapath::Result<()> {
    let rules = src.store.list();
    let mut flows: HashMap<u32, u64> = HashMap::new();
    let mut entries: BTreeMap<(String, &str), u64> = BTreeMap::new();
    let before = src.dp.conntrack_counters()?;
    let mut walked = 0;
    crate::conntrack::walk_all(&src.dp, |e| {
        let v = &e.ct;
        // The census counts the IPv4 table, whose counters these are.
        walked += u64::from(e.key.src.is_ipv4());
        if v.dir == ll_ct_dir::LL_CT_ORIGINAL {
            *flows.entry(v.svc_id).or_default() += 1;
        }
        let state = src.dp.ct_state_label(v.state).unwrap_or("unknown");
        *entries
            .entry((proto_label(e.key.proto), state))
            .or_default() += 1;
    })?;
    let after = src.dp.conntrack_counters()?;
    let evicted = src.dp.note_conntrack_census(&before, &after, walked);

    w.family(
        "loxilight_rules",
        Kind::Gauge,
        "Load-balancer rules in the rule store.",
    );
    w.sample("loxilight_rules", &[], rules.len());

    let mut rule_pkts = Vec::new();
    let mut rule_bytes = Vec::new();
    let mut rule_flows = Vec::new();
    let mut ep_pkts = Vec::new();
    let mut ep_bytes = Vec::new();
    let mut ep_up = Vec::new();
    for s in &rules {
        let labels = vec![
            ("name", s.rule.name.clone()),
            ("vip", s.rule.key.ip.to_string()),
            // "8080-8081" for a range, empty for ICMP.
            ("port", s.rule.key.ports()),
            ("protocol", s.rule.key.proto.as_str().to_owned()),
        ];
        let c = src.dp.service_counters(s.id)?;
        rule_pkts.push((labels.clone(), c.packets));
        rule_bytes.push((labels.clone(), c.bytes));
        rule_flows.push((labels.clone(), flows.get(&s.id).copied().unwrap_or(0)));
        // Draining endpoints too: their flows still count.
        for (idx, e) in s.slots.iter().enumerate() {
            let c = src.dp.endpoint_counters(s.id, idx)?;
            let mut labels = labels.clone();
            labels.push((
                "endpoint",
                std::net::SocketAddr::new(e.ip, e.port).to_string(),
            ));
            if s.rule.monitor && s.rule.endpoint(e.ip, e.port).is_some() {
                let up = !src.store.is_down((e.ip, e.port));
                ep_up.push((labels.clone(), u64::from(up)));
            }
            ep_pkts.push((labels.clone(), c.packets));
            ep_bytes.push((labels, c.bytes));
        }
    }
    let families = [
        (
            "loxilight_rule_packets_total",
            Kind::Counter,
            "Packets the datapath translated for a rule, both directions.",
            rule_pkts,
        ),
        (
            "loxilight_rule_bytes_total",
            Kind::Counter,
            "Bytes the datapath translated for a rule, both directions.",
            rule_bytes,
        ),
        (
            "loxilight_rule_active_flows",
            Kind::Gauge,
            "Flows of a rule in conntrack, closing ones included until ageing removes them.",
            rule_flows,
        ),
        (
            "loxilight_endpoint_packets_total",
            Kind::Counter,
            "Packets of a rule sent to one endpoint, both directions.",
            ep_pkts,
        ),
        (
            "loxilight_endpoint_bytes_total",
            Kind::Counter,
            "Bytes of a rule sent to one endpoint, both directions.",
            ep_bytes,
        ),
        (
            "loxilight_endpoint_up",
            Kind::Gauge,
            "Health of an endpoint of a monitored rule: 1 up, 0 down (no new flows).",
            ep_up,
        ),
    ];
    for (name, kind, help, samples) in families {
        w.family(name, kind, help);
        for (labels, value) in samples {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            w.sample(name, &labels, value);
        }
    }

    w.family(
        "loxilight_conntrack_entries",
        Kind::Gauge,
        "Conntrack entries (one per direction of a flow) by protocol and state.",
    );
    for ((proto, state), n) in &entries {
        w.sample(
            "loxilight_conntrack_entries",
            &[("protocol", proto), ("state", state)],
            n,
        );
    }
    w.family(
        "loxilight_conntrack_max_entries",
        Kind::Gauge,
        "Capacity of the conntrack table.",
    );
    w.sample(
        "loxilight_conntrack_max_entries",
        &[],
        src.dp.limits().conntrack,
    );
    let name = "loxilight_conntrack_evicted_total";
    w.family(
        name,
        Kind::Counter,
        "Conntrack entries the LRU evicted because the table was full (a lower bound, exact when the table is quiet while scraped).",
    );
    w.sample(name, &[], evicted);
    let name = "loxilight_conntrack_removed_total";
    w.family(
        name,
        Kind::Counter,
        "Conntrack entries the daemon removed: aged (idle past their state's timeout), requested (API, rule deletion), orphan (partner evicted).",
    );
    for (reason, n) in [
        ("aged", after.aged),
        ("requested", after.removed),
        ("orphan", after.orphans),
    ] {
        w.sample(name, &[("reason", reason)], n);
    }
    Ok(())
}

/// Verdicts (every packet has exactly one) and NAT outcomes (counted on top
/// of the verdict) are separate families, so that each sums to something.
/// Firewall rules and their hits, labelled with the rule in loxicmd's
/// `--firewallRule` syntax (its identity) and its action.
fn render_firewall(w: &mut Writer, src: &Sources) -> datapath::Result<()> {
    let rules = src.store.list_firewall_rules();
    let counters = src.dp.firewall_counters()?;
    let name = "loxilight_firewall_rules";
    w.family(name, Kind::Gauge, "Firewall rules in the rule store.");
    w.sample(name, &[], rules.len());
    for (name, help, bytes) in [
        (
            "loxilight_firewall_rule_packets_total",
            "Packets a firewall rule judged.",
            false,
        ),
        (
            "loxilight_firewall_rule_bytes_total",
            "Bytes a firewall rule judged.",
            true,
        ),
    ] {
        w.family(name, Kind::Counter, help);
        for s in &rules {
            let value = counters
                .get(&s.id)
                .map_or(0, |c| if bytes { c.bytes } else { c.packets });
            let rule = s.rule.matches.to_string();
            let labels = [("rule", rule.as_str()), ("action", s.rule.action.as_str())];
            w.sample(name, &labels, value);
        }
    }
    Ok(())
}

fn render_datapath(w: &mut Writer, dp: &Datapath) -> datapath::Result<()> {
    let mut verdicts = Vec::new();
    let mut nat = Vec::new();
    for (reason, c) in dp.reason_counters()? {
        let label = reason_label(dp, reason);
        if label.starts_with("nat_") {
            nat.push((label, c));
        } else {
            verdicts.push((label, c));
        }
    }
    const VERDICT: &str =
        "by verdict reason: pass_* went to Linux, drop_* were dropped, fwd was forwarded.";
    const NAT: &str =
        "translated by the datapath: nat_new started a flow, nat_est belonged to one, \
         nat_icmp was an ICMP error about one.";
    for (name, help, samples, bytes) in [
        (
            "loxilight_datapath_packets_total",
            format!("Packets {VERDICT}"),
            &verdicts,
            false,
        ),
        (
            "loxilight_datapath_bytes_total",
            format!("Bytes {VERDICT}"),
            &verdicts,
            true,
        ),
        (
            "loxilight_datapath_nat_packets_total",
            format!("Packets {NAT}"),
            &nat,
            false,
        ),
        (
            "loxilight_datapath_nat_bytes_total",
            format!("Bytes {NAT}"),
            &nat,
            true,
        ),
    ] {
        w.family(name, Kind::Counter, &help);
        for (label, c) in samples {
            w.sample(
                name,
                &[("reason", label)],
                if bytes { c.bytes } else { c.packets },
            );
        }
    }
    Ok(())
}

fn reason_label(dp: &Datapath, r: ll_reason) -> String {
    dp.reason_label(r)
        .map_or_else(|| format!("reason_{}", r.0), str::to_owned)
}

fn render_mirror(w: &mut Writer, m: &MirrorStats) {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let name = "loxilight_netlink_events_total";
    w.family(
        name,
        Kind::Counter,
        "rtnetlink events the kernel mirror applied, by object.",
    );
    for (kind, c) in [
        ("link", &m.link_events),
        ("address", &m.address_events),
        ("route", &m.route_events),
        ("neighbour", &m.neighbour_events),
    ] {
        w.sample(name, &[("kind", kind)], get(c));
    }
    let name = "loxilight_netlink_overruns_total";
    w.family(
        name,
        Kind::Counter,
        "Times the rtnetlink event socket overran (ENOBUFS) and events were lost; each is followed by a full resync.",
    );
    w.sample(name, &[], get(&m.overruns));
    let name = "loxilight_mirror_resyncs_total";
    w.family(
        name,
        Kind::Counter,
        "Times the kernel mirror dumped the kernel's state again: routes only, or everything after an overrun.",
    );
    w.sample(name, &[("scope", "routes")], get(&m.route_resyncs));
    w.sample(name, &[("scope", "all")], get(&m.full_resyncs));
    let name = "loxilight_mirror_other_table_routes_total";
    w.family(
        name,
        Kind::Counter,
        "Route events of tables other than main, which the mirror ignores.",
    );
    w.sample(name, &[], get(&m.other_table_routes));
}

fn render_api(w: &mut Writer, api: &ApiStats) {
    let name = "loxilight_api_requests_total";
    w.family(
        name,
        Kind::Counter,
        "Finished gRPC requests by method and status code (CANCELLED: the client went away first).",
    );
    for ((method, code), n) in api.snapshot() {
        w.sample(name, &[("method", &method), ("code", code)], n);
    }
}
