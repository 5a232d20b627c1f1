//! Rendering of daemon responses as tables or JSON.

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pb::{ConntrackEntry, Counters, ListLoadBalancersResponse, LoadBalancer};

/// `ip:port/proto`, with IPv6 addresses bracketed so the port stays readable.
pub fn service_label(ip: &str, port: u32, protocol: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}/{protocol}")
    } else {
        format!("{ip}:{port}/{protocol}")
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
        &["ENDPOINT", "TARGET PORT", "WEIGHT"][..]
    } else {
        &["# OF ENDPOINTS"][..]
    });
    header.extend(["PACKETS", "BYTES"]);

    let mut rows = Vec::new();
    for lb in lbs {
        let key = lb.service.clone().unwrap_or_default();
        let mut row = vec![
            key.external_ip,
            key.port.to_string(),
            key.protocol,
            lb.name.clone(),
            lb.selection.clone(),
            lb.mode.clone(),
        ];
        if wide {
            row.extend([String::new(), String::new(), String::new()]);
        } else {
            row.push(lb.endpoints.len().to_string());
        }
        row.extend(counter_cells(lb.counters));
        rows.push(row);

        if wide {
            for endpoint in &lb.endpoints {
                let mut row = vec![String::new(); 6];
                row.extend([
                    endpoint.ip.clone(),
                    endpoint.target_port.to_string(),
                    endpoint.weight.to_string(),
                ]);
                row.extend(counter_cells(endpoint.counters));
                rows.push(row);
            }
        }
    }
    render(&header, &rows)
}

/// `get ct` table.
pub fn ct_table(entries: &[ConntrackEntry]) -> String {
    let header = [
        "SERVICE", "DEST IP", "SRC IP", "DPORT", "SPORT", "PROTO", "STATE", "ACT", "PACKETS",
        "BYTES",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{Endpoint, ServiceKey};

    fn sample() -> Vec<LoadBalancer> {
        let endpoint = |ip: &str, weight, packets, bytes| Endpoint {
            ip: ip.to_owned(),
            target_port: 8080,
            weight,
            counters: Some(Counters { packets, bytes }),
        };
        vec![LoadBalancer {
            service: Some(ServiceKey {
                external_ip: "20.20.20.1".to_owned(),
                port: 2020,
                protocol: "tcp".to_owned(),
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
        }]
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
| EXT IP     | PORT | PROTO | NAME | SEL | MODE    | ENDPOINT   | TARGET PORT | WEIGHT | PACKETS | BYTES |
|------------|------|-------|------|-----|---------|------------|-------------|--------|---------|-------|
| 20.20.20.1 | 2020 | tcp   | web  | rr  | default |            |             |        | 10      | 1000  |
|            |      |       |      |     |         | 31.31.31.1 | 8080        | 1      | 7       | 700   |
|            |      |       |      |     |         | 32.32.32.1 | 8080        | 2      | 3       | 300   |
";
        assert_eq!(lb_table(&sample(), true), expected);
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
                "256"
            ]
        );
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
    fn service_label_brackets_ipv6() {
        assert_eq!(
            service_label("20.20.20.1", 2020, "tcp"),
            "20.20.20.1:2020/tcp"
        );
        assert_eq!(service_label("fd00::1", 80, "udp"), "[fd00::1]:80/udp");
    }
}
