//! Rendering of daemon responses as tables or JSON.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pb::{
    Address, ApplyFirewallRulesResponse, ApplyLoadBalancersResponse, ConntrackCount,
    ConntrackEntry, ConntrackTable, Counters, EndpointProbe, FirewallMatch, FirewallOptions,
    Interface, ListFirewallRulesResponse, ListLoadBalancersResponse, LoadBalancer, Neighbour,
    NextHop, Route, ServiceKey,
};

/// The ports of a service as loxicmd takes them: `2020`, a range `8080-8081`,
/// or `-` for ICMP, which has none.
pub fn ports_label(key: &ServiceKey) -> String {
    match (key.protocol.as_str(), key.port_max) {
        ("icmp", _) => "-".to_owned(),
        (_, 0) => key.port.to_string(),
        (_, max) => format!("{}-{max}", key.port),
    }
}

/// `ip:ports/proto` (ICMP: `ip/icmp`), with IPv6 addresses bracketed so the
/// port stays readable.
pub fn service_label(key: &ServiceKey) -> String {
    let ip = &key.external_ip;
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    match ports_label(key).as_str() {
        "-" => format!("{ip}/{}", key.protocol),
        ports => format!("{ip}:{ports}/{}", key.protocol),
    }
}

pub fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).context("encoding JSON output")
}

/// JSON for `get lb`: absent counters become zeros so scripts see one shape.
pub fn lb_json(mut response: ListLoadBalancersResponse) -> Result<String> {
    for lb in &mut response.load_balancers {
        lb.counters.get_or_insert_with(Counters::default);
        for endpoint in &mut lb.endpoints {
            endpoint.counters.get_or_insert_with(Counters::default);
        }
    }
    json(&response)
}

/// `get lb` table. `wide` adds, after each rule's row (which carries the rule's
/// totals), one row per endpoint with the endpoint's own counters.
pub fn lb_table(lbs: &[LoadBalancer], wide: bool) -> String {
    let mut header = vec!["EXT IP", "PORT", "PROTO", "NAME", "SEL", "MODE"];
    header.extend(if wide {
        &[
            "MONITOR",
            "BGP",
            "ENDPOINT",
            "TARGET PORT",
            "WEIGHT",
            "STATE",
        ][..]
    } else {
        &["# OF ENDPOINTS"][..]
    });
    header.extend(["PACKETS", "BYTES"]);

    let mut rows = Vec::new();
    for lb in lbs {
        let key = lb.service.clone().unwrap_or_default();
        let icmp = key.protocol == "icmp";
        let mut row = vec![
            key.external_ip.clone(),
            ports_label(&key),
            key.protocol,
            lb.name.clone(),
            lb.selection.clone(),
            lb.mode.clone(),
        ];
        if wide {
            let yes = |b: bool| if b { "yes" } else { "no" }.to_owned();
            row.extend([yes(lb.monitor), yes(lb.bgp)]);
            row.extend([String::new(), String::new(), String::new(), String::new()]);
        } else {
            row.push(lb.endpoints.len().to_string());
        }
        row.extend(counter_cells(lb.counters));
        rows.push(row);

        if wide {
            for endpoint in &lb.endpoints {
                let mut row = vec![String::new(); 8];
                row.extend([
                    endpoint.ip.clone(),
                    // ICMP has no ports.
                    match icmp {
                        true => "-".to_owned(),
                        false => endpoint.target_port.to_string(),
                    },
                    endpoint.weight.to_string(),
                    // Not monitored: no state to show.
                    if endpoint.state.is_empty() {
                        "-".to_owned()
                    } else {
                        endpoint.state.clone()
                    },
                ]);
                row.extend(counter_cells(endpoint.counters));
                rows.push(row);
            }
        }
    }
    render(&header, &rows)
}

/// `get ct` table: one row per direction of each flow.
/// `get endpoint` table: configured probes, then the default probes of
/// monitored rules (SOURCE "monitor").
pub fn endpoint_table(probes: &[EndpointProbe]) -> String {
    let header = [
        "HOST",
        "PTYPE",
        "PORT",
        "REQ",
        "RESP",
        "PERIOD",
        "RETRIES",
        "RISE",
        "STATE",
        "SOURCE",
        "LAST ERROR",
    ];
    let rows: Vec<Vec<String>> = probes
        .iter()
        .map(|p| {
            vec![
                p.ip.clone(),
                p.probe_type.clone(),
                if p.port == 0 {
                    "-".to_owned()
                } else {
                    p.port.to_string()
                },
                p.request.clone(),
                p.response.clone(),
                p.period.to_string(),
                p.retries.to_string(),
                p.rise.to_string(),
                p.state.clone(),
                if p.configured { "endpoint" } else { "monitor" }.to_owned(),
                p.last_error.clone(),
            ]
        })
        .collect();
    render(&header, &rows)
}

pub fn ct_table(entries: &[ConntrackEntry]) -> String {
    let header = [
        "SERVICE", "DEST IP", "SRC IP", "DPORT", "SPORT", "PROTO", "STATE", "ACT", "PACKETS",
        "BYTES", "IDLE",
    ];
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.service.clone(),
                e.dest_ip.clone(),
                e.src_ip.clone(),
                e.dest_port.to_string(),
                e.src_port.to_string(),
                e.protocol.clone(),
                e.state.clone(),
                e.action.clone(),
                e.packets.to_string(),
                e.bytes.to_string(),
                format!("{}s", e.idle_seconds),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// The lines under `get ct`: what matched, flows by state, and the table's
/// figures. `shown` is how many entries the table above lists, if any.
pub fn ct_summary(
    matched: u64,
    shown: Option<u64>,
    counts: &[ConntrackCount],
    table: Option<&ConntrackTable>,
) -> String {
    let flows: u64 = counts.iter().map(|c| c.flows).sum();
    let by_state: Vec<String> = counts
        .iter()
        .map(|c| format!("{} {} {}", c.protocol, c.state, c.flows))
        .collect();
    let mut out = format!(
        "Matched {} ({}",
        counted(matched, "entry", "entries"),
        counted(flows, "flow", "flows")
    );
    if !by_state.is_empty() {
        out.push_str(&format!(": {}", by_state.join(", ")));
    }
    out.push(')');
    if let Some(shown) = shown.filter(|&n| n < matched) {
        out.push_str(&format!(", showing the first {shown} (--limit)"));
    }
    out.push('\n');
    if let Some(t) = table {
        let per_entry = t.memory_bytes.checked_div(t.capacity).unwrap_or(0);
        out.push_str(&format!(
            "Table: {} of {} entries, {:.1} MiB ({per_entry} B per entry); evicted {}, \
             orphans removed {}, aged {}, insert failures {}, clashes {}\n",
            t.entries,
            t.capacity,
            t.memory_bytes as f64 / (1024.0 * 1024.0),
            t.evicted,
            t.orphans_removed,
            t.aged,
            t.insert_failures,
            t.clashes
        ));
    }
    out
}

/// `n` and the noun, singular or plural.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `get port` table.
pub fn port_table(interfaces: &[Interface]) -> String {
    let header = ["NAME", "INDEX", "MAC", "MTU", "STATE", "DATAPATH"];
    let rows: Vec<Vec<String>> = interfaces
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.index.to_string(),
                i.mac.clone(),
                i.mtu.to_string(),
                if i.up { "up" } else { "down" }.to_owned(),
                if i.attached { "attached" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    render(&header, &rows)
}

/// `get ip` table.
pub fn ip_table(addresses: &[Address]) -> String {
    let header = ["ADDRESS", "INTERFACE"];
    let rows: Vec<Vec<String>> = addresses
        .iter()
        .map(|a| vec![a.address.clone(), a.interface.clone()])
        .collect();
    render(&header, &rows)
}

/// `get route` table: all next hops of a route (several for ECMP) share one cell.
pub fn route_table(routes: &[Route]) -> String {
    let header = ["DESTINATION", "TYPE", "NEXT HOPS"];
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            let hops = if r.next_hops.is_empty() {
                "-".to_owned()
            } else {
                let hops: Vec<String> = r.next_hops.iter().map(next_hop_label).collect();
                hops.join(", ")
            };
            vec![r.destination.clone(), r.r#type.clone(), hops]
        })
        .collect();
    render(&header, &rows)
}

/// `via GATEWAY dev INTERFACE` in `ip route` style; a part the daemon left empty
/// (no gateway for a connected route) is omitted.
fn next_hop_label(hop: &NextHop) -> String {
    let mut parts = Vec::new();
    if !hop.gateway.is_empty() {
        parts.push(format!("via {}", hop.gateway));
    }
    if !hop.interface.is_empty() {
        parts.push(format!("dev {}", hop.interface));
    }
    parts.join(" ")
}

/// `get neighbor` table.
pub fn neighbor_table(neighbours: &[Neighbour]) -> String {
    let header = ["IP", "MAC", "INTERFACE", "STATE"];
    let rows: Vec<Vec<String>> = neighbours
        .iter()
        .map(|n| {
            vec![
                n.ip.clone(),
                n.mac.clone(),
                n.interface.clone(),
                n.state.clone(),
            ]
        })
        .collect();
    render(&header, &rows)
}

fn counter_cells(counters: Option<Counters>) -> [String; 2] {
    let c = counters.unwrap_or_default();
    [c.packets.to_string(), c.bytes.to_string()]
}

/// Renders `| a | b |` rows under a header and a dashed rule, columns padded to fit.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::from("|");
        for (cell, width) in cells.zip(&widths) {
            out.push_str(&format!(" {cell:<width$} |"));
        }
        out.push('\n');
        out
    };

    let mut out = line(&mut header.iter().copied());
    out.push('|');
    for width in &widths {
        out.push_str(&"-".repeat(width + 2));
        out.push('|');
    }
    out.push('\n');
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// One line per change (`+` create, `~` update, `-` delete), then totals.
pub fn apply_report(r: &ApplyLoadBalancersResponse, dry_run: bool) -> String {
    let label = |keys: &[crate::pb::ServiceKey]| -> Vec<String> {
        keys.iter().map(service_label).collect()
    };
    let changes = [label(&r.created), label(&r.updated), label(&r.deleted)];
    report_lines("lb", changes, r.unchanged, dry_run)
}

/// `apply_report` for the firewall part of a rule file.
pub fn firewall_apply_report(r: &ApplyFirewallRulesResponse, dry_run: bool) -> String {
    let label = |keys: &[FirewallMatch]| -> Vec<String> { keys.iter().map(rule_label).collect() };
    let changes = [label(&r.created), label(&r.updated), label(&r.deleted)];
    report_lines("firewall", changes, r.unchanged, dry_run)
}

/// `[created, updated, deleted]` labels of rules of `kind`.
fn report_lines(kind: &str, changes: [Vec<String>; 3], unchanged: u32, dry_run: bool) -> String {
    let mut out = String::new();
    for (sign, labels) in ["+", "~", "-"].iter().zip(&changes) {
        for l in labels {
            out += &format!("{sign} {kind} {l}\n");
        }
    }
    let verb = if dry_run { "would be" } else { "were" };
    out += &format!(
        "{kind}: {} created, {} updated, {} deleted, {unchanged} unchanged ({verb} changed)\n",
        changes[0].len(),
        changes[1].len(),
        changes[2].len(),
    );
    out
}

/// A firewall match in `--firewallRule` syntax, with the keys that are set.
pub fn rule_label(m: &FirewallMatch) -> String {
    let mut parts = Vec::new();
    for (key, v) in [
        ("sourceIP", &m.source_ip),
        ("destinationIP", &m.destination_ip),
    ] {
        if !v.is_empty() {
            parts.push(format!("{key}:{v}"));
        }
    }
    for (name, min, max) in [
        ("Source", m.min_source_port, m.max_source_port),
        (
            "Destination",
            m.min_destination_port,
            m.max_destination_port,
        ),
    ] {
        if (min, max) != (0, 65535) && (min, max) != (0, 0) {
            parts.push(format!("min{name}Port:{min},max{name}Port:{max}"));
        }
    }
    if m.protocol != 0 {
        parts.push(format!("protocol:{}", m.protocol));
    }
    if !m.port_name.is_empty() {
        parts.push(format!("portName:{}", m.port_name));
    }
    parts.push(format!("preference:{}", m.preference));
    parts.join(",")
}

/// The action column of `get firewall`, in loxicmd's flag syntax.
fn firewall_action(o: &FirewallOptions) -> String {
    let mut parts = Vec::new();
    for (set, name) in [
        (o.allow, "allow"),
        (o.drop, "drop"),
        (o.trap, "trap"),
        (o.masquerade, "masquerade"),
        (o.record, "record"),
    ] {
        if set {
            parts.push(name.to_owned());
        }
    }
    if !o.redirect.is_empty() {
        parts.insert(0, format!("redirect={}", o.redirect));
    }
    if !o.snat_ip.is_empty() {
        let port = match o.snat_port {
            0 => String::new(),
            p => format!(",{p}"),
        };
        parts.insert(0, format!("snat={}{port}", o.snat_ip));
    }
    if let Some(mark) = o.mark {
        parts.push(format!("setmark={mark}"));
    }
    parts.join(" ")
}

/// `get firewall` table, then the default policy.
pub fn firewall_table(r: &ListFirewallRulesResponse) -> String {
    let header = [
        "SOURCE IP",
        "DESTINATION IP",
        "SPORT",
        "DPORT",
        "PROTO",
        "PORT NAME",
        "PREF",
        "ACTION",
        "PACKETS",
        "BYTES",
    ];
    let any = |s: &str| {
        if s.is_empty() {
            "any".to_owned()
        } else {
            s.to_owned()
        }
    };
    let ports = |min: u32, max: u32| match (min, max) {
        (0, 0) | (0, 65535) => "any".to_owned(),
        (a, b) if a == b => a.to_string(),
        (a, b) => format!("{a}-{b}"),
    };
    let rows: Vec<Vec<String>> = r
        .firewall_rules
        .iter()
        .map(|rule| {
            let m = rule.r#match.clone().unwrap_or_default();
            let mut row = vec![
                any(&m.source_ip),
                any(&m.destination_ip),
                ports(m.min_source_port, m.max_source_port),
                ports(m.min_destination_port, m.max_destination_port),
                match m.protocol {
                    0 => "any".to_owned(),
                    p => p.to_string(),
                },
                any(&m.port_name),
                m.preference.to_string(),
                firewall_action(&rule.options.clone().unwrap_or_default()),
            ];
            row.extend(counter_cells(rule.counters));
            row
        })
        .collect();
    format!(
        "{}Default policy: {}\n",
        render(&header, &rows),
        r.default_policy
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Endpoint, ListRoutesResponse};

    fn sample() -> Vec<LoadBalancer> {
        let endpoint = |ip: &str, weight, packets, bytes| Endpoint {
            ip: ip.to_owned(),
            target_port: 8080,
            weight,
            counters: Some(Counters { packets, bytes }),
            state: if weight == 1 { "up" } else { "down" }.to_owned(),
        };
        vec![LoadBalancer {
            service: Some(ServiceKey {
                external_ip: "20.20.20.1".to_owned(),
                port: 2020,
                protocol: "tcp".to_owned(),
                port_max: 0,
            }),
            name: "web".to_owned(),
            selection: "rr".to_owned(),
            mode: "default".to_owned(),
            endpoints: vec![
                endpoint("31.31.31.1", 1, 7, 700),
                endpoint("32.32.32.1", 2, 3, 300),
            ],
            counters: Some(Counters {
                packets: 10,
                bytes: 1000,
            }),
            inactivity_timeout: 0,
            monitor: true,
            bgp: false,
            ..Default::default()
        }]
    }

    #[test]
    fn endpoint_table_shows_state_and_source() {
        let probes = [
            EndpointProbe {
                ip: "31.31.31.1".into(),
                probe_type: "http".into(),
                port: 8080,
                request: "/health".into(),
                response: "OK".into(),
                period: 5,
                retries: 2,
                rise: 3,
                state: "down".into(),
                configured: true,
                last_error: "connect: Connection refused".into(),
            },
            EndpointProbe {
                ip: "32.32.32.1".into(),
                probe_type: "ping".into(),
                period: 10,
                retries: 2,
                rise: 2,
                state: "up".into(),
                ..Default::default()
            },
        ];
        let rows = endpoint_table(&probes);
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(lines.len(), 4, "{rows}");
        assert!(lines[0].starts_with("| HOST "), "{rows}");
        assert!(
            lines[2].contains("| http ")
                && lines[2].contains("| down ")
                && lines[2].contains("| endpoint ")
                && lines[2].contains("refused"),
            "{rows}"
        );
        assert!(
            lines[3].contains("| -    ") && lines[3].contains("| monitor "),
            "{rows}"
        );
    }

    #[test]
    fn lb_table_lists_rules() {
        let expected = "\
| EXT IP     | PORT | PROTO | NAME | SEL | MODE    | # OF ENDPOINTS | PACKETS | BYTES |
|------------|------|-------|------|-----|---------|----------------|---------|-------|
| 20.20.20.1 | 2020 | tcp   | web  | rr  | default | 2              | 10      | 1000  |
";
        assert_eq!(lb_table(&sample(), false), expected);
    }

    #[test]
    fn wide_lb_table_adds_endpoint_rows() {
        let expected = "\
| EXT IP     | PORT | PROTO | NAME | SEL | MODE    | MONITOR | BGP | ENDPOINT   | TARGET PORT | WEIGHT | STATE | PACKETS | BYTES |
|------------|------|-------|------|-----|---------|---------|-----|------------|-------------|--------|-------|---------|-------|
| 20.20.20.1 | 2020 | tcp   | web  | rr  | default | yes     | no  |            |             |        |       | 10      | 1000  |
|            |      |       |      |     |         |         |     | 31.31.31.1 | 8080        | 1      | up    | 7       | 700   |
|            |      |       |      |     |         |         |     | 32.32.32.1 | 8080        | 2      | down  | 3       | 300   |
";
        assert_eq!(lb_table(&sample(), true), expected);
    }

    #[test]
    fn ranges_and_icmp_show_their_ports() {
        let mut lbs = sample();
        lbs.push(lbs[0].clone());
        let range = lbs[0].service.as_mut().unwrap();
        range.port_max = 2029;
        let icmp = lbs[1].service.as_mut().unwrap();
        (icmp.port, icmp.protocol) = (0, "icmp".to_owned());
        for e in &mut lbs[1].endpoints {
            e.target_port = 0;
        }
        let table = lb_table(&lbs, true);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert!(
            rows[0].starts_with("| 20.20.20.1 | 2020-2029 | tcp "),
            "{table}"
        );
        assert!(rows[1].contains("| 31.31.31.1 | 8080 "), "{table}");
        assert!(
            rows[3].starts_with("| 20.20.20.1 | -         | icmp "),
            "{table}"
        );
        assert!(rows[4].contains("| 31.31.31.1 | -  "), "{table}");
    }

    #[test]
    fn empty_table_keeps_header() {
        let table = ct_table(&[]);
        assert_eq!(table.lines().count(), 2);
        assert!(table.starts_with("| SERVICE | DEST IP | SRC IP | DPORT |"));
    }

    #[test]
    fn ct_table_columns() {
        let entry = ConntrackEntry {
            service: "web".to_owned(),
            src_ip: "10.0.0.5".to_owned(),
            dest_ip: "20.20.20.1".to_owned(),
            src_port: 40000,
            dest_port: 2020,
            protocol: "tcp".to_owned(),
            state: "est".to_owned(),
            action: "dnat-31.31.31.1:8080".to_owned(),
            packets: 4,
            bytes: 256,
            idle_seconds: 7,
        };
        let table = ct_table(&[entry]);
        let row = table.lines().nth(2).unwrap();
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "web",
                "20.20.20.1",
                "10.0.0.5",
                "2020",
                "40000",
                "tcp",
                "est",
                "dnat-31.31.31.1:8080",
                "4",
                "256",
                "7s"
            ]
        );
    }

    #[test]
    fn ct_summary_counts_flows_and_the_table() {
        let count = |protocol: &str, state: &str, flows| ConntrackCount {
            protocol: protocol.to_owned(),
            state: state.to_owned(),
            flows,
        };
        let table = ConntrackTable {
            capacity: 1_000_000,
            entries: 2500,
            memory_bytes: 128_778_112,
            evicted: 3,
            orphans_removed: 1,
            aged: 40,
            insert_failures: 0,
            clashes: 2,
        };
        let counts = [count("tcp", "est", 1000), count("udp", "udp-est", 250)];
        assert_eq!(
            ct_summary(2500, Some(1000), &counts, Some(&table)),
            "Matched 2500 entries (1250 flows: tcp est 1000, udp udp-est 250), showing the first 1000 (--limit)\n\
             Table: 2500 of 1000000 entries, 122.8 MiB (128 B per entry); evicted 3, orphans removed 1, \
             aged 40, insert failures 0, clashes 2\n"
        );
        assert_eq!(
            ct_summary(0, Some(0), &[], None),
            "Matched 0 entries (0 flows)\n"
        );
    }

    #[test]
    fn port_table_shows_state_and_datapath() {
        let interface = |name: &str, index, mac: &str, mtu, up, attached| Interface {
            name: name.to_owned(),
            index,
            mac: mac.to_owned(),
            mtu,
            up,
            attached,
        };
        let interfaces = [
            interface("eth1", 3, "52:54:00:12:34:56", 1500, true, true),
            interface("lo", 1, "00:00:00:00:00:00", 65536, true, false),
            interface("eth2", 4, "52:54:00:ab:cd:ef", 9000, false, false),
        ];
        let expected = "\
| NAME | INDEX | MAC               | MTU   | STATE | DATAPATH |
|------|-------|-------------------|-------|-------|----------|
| eth1 | 3     | 52:54:00:12:34:56 | 1500  | up    | attached |
| lo   | 1     | 00:00:00:00:00:00 | 65536 | up    | -        |
| eth2 | 4     | 52:54:00:ab:cd:ef | 9000  | down  | -        |
";
        assert_eq!(port_table(&interfaces), expected);
    }

    #[test]
    fn ip_table_lists_addresses() {
        let address = |address: &str, interface: &str, index| Address {
            address: address.to_owned(),
            interface: interface.to_owned(),
            index,
        };
        let addresses = [
            address("10.0.0.2/24", "eth1", 3),
            address("fd00::2/64", "eth1", 3),
        ];
        let expected = "\
| ADDRESS     | INTERFACE |
|-------------|-----------|
| 10.0.0.2/24 | eth1      |
| fd00::2/64  | eth1      |
";
        assert_eq!(ip_table(&addresses), expected);
    }

    #[test]
    fn route_table_joins_next_hops() {
        let hop = |gateway: &str, interface: &str, index| NextHop {
            gateway: gateway.to_owned(),
            interface: interface.to_owned(),
            index,
        };
        let route = |destination: &str, kind: &str, next_hops| Route {
            destination: destination.to_owned(),
            r#type: kind.to_owned(),
            next_hops,
        };
        let routes = [
            route(
                "0.0.0.0/0",
                "unicast",
                vec![hop("10.0.0.1", "eth1", 3), hop("10.0.1.1", "eth2", 4)],
            ),
            route("10.0.0.0/24", "unicast", vec![hop("", "eth1", 3)]),
            route("fd00:1::/64", "unicast", vec![hop("fd00::1", "eth1", 3)]),
            route("192.0.2.0/24", "blackhole", vec![]),
        ];
        let expected = "\
| DESTINATION  | TYPE      | NEXT HOPS                                    |
|--------------|-----------|----------------------------------------------|
| 0.0.0.0/0    | unicast   | via 10.0.0.1 dev eth1, via 10.0.1.1 dev eth2 |
| 10.0.0.0/24  | unicast   | dev eth1                                     |
| fd00:1::/64  | unicast   | via fd00::1 dev eth1                         |
| 192.0.2.0/24 | blackhole | -                                            |
";
        assert_eq!(route_table(&routes), expected);
    }

    #[test]
    fn neighbor_table_lists_entries() {
        let neighbour = |ip: &str, mac: &str, state: &str| Neighbour {
            ip: ip.to_owned(),
            mac: mac.to_owned(),
            interface: "eth1".to_owned(),
            index: 3,
            state: state.to_owned(),
        };
        let neighbours = [
            neighbour("10.0.0.1", "52:54:00:00:00:01", "reachable"),
            neighbour("fd00::1", "52:54:00:00:00:01", "stale"),
        ];
        let expected = "\
| IP       | MAC               | INTERFACE | STATE     |
|----------|-------------------|-----------|-----------|
| 10.0.0.1 | 52:54:00:00:00:01 | eth1      | reachable |
| fd00::1  | 52:54:00:00:00:01 | eth1      | stale     |
";
        assert_eq!(neighbor_table(&neighbours), expected);
    }

    #[test]
    fn route_json_names_fields_as_the_proto_does() {
        let response = ListRoutesResponse {
            routes: vec![Route {
                destination: "0.0.0.0/0".to_owned(),
                r#type: "unicast".to_owned(),
                next_hops: vec![NextHop {
                    gateway: "10.0.0.1".to_owned(),
                    interface: "eth1".to_owned(),
                    index: 3,
                }],
            }],
        };
        let value: serde_json::Value = serde_json::from_str(&json(&response).unwrap()).unwrap();
        let route = &value["routes"][0];
        assert_eq!(route["type"], "unicast");
        assert_eq!(route["nextHops"][0]["gateway"], "10.0.0.1");
        assert_eq!(route["nextHops"][0]["index"], 3);
    }

    #[test]
    fn lb_json_uses_camel_case_and_fills_counters() {
        let mut lbs = sample();
        lbs[0].counters = None;
        let text = lb_json(ListLoadBalancersResponse {
            load_balancers: lbs,
        })
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let lb = &value["loadBalancers"][0];
        assert_eq!(lb["service"]["externalIp"], "20.20.20.1");
        assert_eq!(lb["endpoints"][1]["targetPort"], 8080);
        assert_eq!(lb["endpoints"][1]["counters"]["bytes"], 300);
        assert_eq!(lb["counters"]["packets"], 0);
    }

    #[test]
    fn service_label_brackets_ipv6_and_shows_ranges() {
        let key = |ip: &str, port, port_max, protocol: &str| ServiceKey {
            external_ip: ip.to_owned(),
            port,
            protocol: protocol.to_owned(),
            port_max,
        };
        let cases = [
            (key("20.20.20.1", 2020, 0, "tcp"), "20.20.20.1:2020/tcp"),
            (key("fd00::1", 80, 0, "udp"), "[fd00::1]:80/udp"),
            (
                key("20.20.20.1", 8080, 8081, "tcp"),
                "20.20.20.1:8080-8081/tcp",
            ),
            (key("20.20.20.1", 0, 0, "icmp"), "20.20.20.1/icmp"),
        ];
        for (k, label) in cases {
            assert_eq!(service_label(&k), label);
        }
        assert_eq!(ports_label(&key("20.20.20.1", 0, 0, "icmp")), "-");
    }

    #[test]
    fn firewall_table_shows_rules_actions_and_the_default() {
        use crate::pb::FirewallRule;
        let rule = |m: FirewallMatch, o: FirewallOptions, packets| FirewallRule {
            r#match: Some(m),
            options: Some(o),
            counters: Some(Counters {
                packets,
                bytes: packets * 100,
            }),
        };
        let r = ListFirewallRulesResponse {
            firewall_rules: vec![
                rule(
                    FirewallMatch {
                        source_ip: "10.0.0.0/8".into(),
                        min_destination_port: 80,
                        max_destination_port: 90,
                        protocol: 6,
                        port_name: "eth1".into(),
                        preference: 200,
                        ..Default::default()
                    },
                    FirewallOptions {
                        snat_ip: "192.0.2.1".into(),
                        snat_port: 4000,
                        record: true,
                        mark: Some(7),
                        ..Default::default()
                    },
                    3,
                ),
                rule(
                    FirewallMatch::default(),
                    FirewallOptions {
                        drop: true,
                        ..Default::default()
                    },
                    0,
                ),
            ],
            default_policy: "allow".into(),
        };
        let expected = "\
| SOURCE IP  | DESTINATION IP | SPORT | DPORT | PROTO | PORT NAME | PREF | ACTION                               | PACKETS | BYTES |
|------------|----------------|-------|-------|-------|-----------|------|--------------------------------------|---------|-------|
| 10.0.0.0/8 | any            | any   | 80-90 | 6     | eth1      | 200  | snat=192.0.2.1,4000 record setmark=7 | 3       | 300   |
| any        | any            | any   | any   | any   | any       | 0    | drop                                 | 0       | 0     |
Default policy: allow
";
        assert_eq!(firewall_table(&r), expected);
        assert_eq!(
            rule_label(r.firewall_rules[0].r#match.as_ref().unwrap()),
            "sourceIP:10.0.0.0/8,minDestinationPort:80,maxDestinationPort:90,protocol:6,\
             portName:eth1,preference:200"
        );
    }
}
