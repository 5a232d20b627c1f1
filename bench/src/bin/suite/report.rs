//! Results of the side-by-side rounds: medians with min and max, ratios
//! taken round by round, the targets, and the terminal table.
use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::modes::Mode;
use crate::stats::Summary;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    UdpEstablished,
    UdpNew,
    TcpConnections,
    LatencyP50,
    LatencyP99,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::UdpEstablished,
        Metric::UdpNew,
        Metric::TcpConnections,
        Metric::LatencyP50,
        Metric::LatencyP99,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Metric::UdpEstablished => "udp_established_pps",
            Metric::UdpNew => "udp_new_flows_pps",
            Metric::TcpConnections => "tcp_connections_per_s",
            Metric::LatencyP50 => "latency_p50_us",
            Metric::LatencyP99 => "latency_p99_us",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::UdpEstablished => "UDP 64 B, 256 established flows",
            Metric::UdpNew => "UDP 64 B, mostly new flows (conntrack full)",
            Metric::TcpConnections => "new TCP connections",
            Metric::LatencyP50 => "request latency p50",
            Metric::LatencyP99 => "request latency p99",
        }
    }

    /// The README table's row label, with its unit.
    pub fn short(self) -> &'static str {
        match self {
            Metric::UdpEstablished => "UDP, 256 flows (packets/CPU-s)",
            Metric::UdpNew => "UDP, new flows (packets/CPU-s)",
            Metric::TcpConnections => "TCP connections (/CPU-s)",
            Metric::LatencyP50 => "latency p50 (µs)",
            Metric::LatencyP99 => "latency p99 (µs)",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::UdpEstablished | Metric::UdpNew => "packets per CPU-second",
            Metric::TcpConnections => "connections per CPU-second",
            Metric::LatencyP50 | Metric::LatencyP99 => "us",
        }
    }

    pub fn higher_is_better(self) -> bool {
        !matches!(self, Metric::LatencyP50 | Metric::LatencyP99)
    }

    pub fn applies(self, mode: Mode) -> bool {
        matches!(self, Metric::UdpEstablished | Metric::UdpNew) || mode.tcp()
    }
}

/// The comparisons the issue asks for: each loxilight hook against
/// iptables, nftables and the ceiling of the same hook.
pub const RATIOS: [(Mode, Mode); 6] = [
    (Mode::LoxTc, Mode::Iptables),
    (Mode::LoxTc, Mode::Nftables),
    (Mode::LoxTc, Mode::CeilingTc),
    (Mode::LoxXdp, Mode::Iptables),
    (Mode::LoxXdp, Mode::Nftables),
    (Mode::LoxXdp, Mode::CeilingXdp),
];

pub fn ratio_key(a: Mode, b: Mode) -> String {
    format!("{}/{}", a.key(), b.key())
}

/// One measurement, or why it failed.
pub struct Sample {
    pub value: Option<f64>,
    pub detail: Value,
}

#[derive(Default)]
pub struct Results {
    /// (metric, services, mode) -> one sample per round.
    data: BTreeMap<(Metric, usize, Mode), BTreeMap<usize, Sample>>,
}

impl Results {
    pub fn record(&mut self, m: Metric, n: usize, mode: Mode, round: usize, s: Sample) {
        self.data.entry((m, n, mode)).or_default().insert(round, s);
    }

    fn rounds(&self, m: Metric, n: usize, mode: Mode) -> BTreeMap<usize, f64> {
        self.data
            .get(&(m, n, mode))
            .map(|r| r.iter().filter_map(|(&i, s)| Some((i, s.value?))).collect())
            .unwrap_or_default()
    }

    pub fn summary(&self, m: Metric, n: usize, mode: Mode) -> Option<Summary> {
        Summary::of(&self.rounds(m, n, mode).into_values().collect::<Vec<_>>())
    }

    /// a/b, taken within each round (side by side), then summarised.
    pub fn ratio(&self, m: Metric, n: usize, a: Mode, b: Mode) -> Option<Summary> {
        let (ra, rb) = (self.rounds(m, n, a), self.rounds(m, n, b));
        let per_round: Vec<f64> = ra
            .iter()
            .filter_map(|(i, x)| Some(x / rb.get(i)?))
            .collect();
        Summary::of(&per_round)
    }

    /// Every sample, summary and ratio.
    pub fn json(&self, services: &[usize]) -> (Value, Value) {
        let mut results = Map::new();
        let mut ratios = Map::new();
        for m in Metric::ALL {
            let mut by_n = Map::new();
            let mut ratio_by_n = Map::new();
            for &n in services {
                let mut modes = Map::new();
                for mode in Mode::ALL.into_iter().filter(|&mode| m.applies(mode)) {
                    let rounds: Vec<Value> = self
                        .data
                        .get(&(m, n, mode))
                        .map(|r| {
                            r.values()
                                .map(|s| json!({"value": s.value, "detail": s.detail}))
                                .collect()
                        })
                        .unwrap_or_default();
                    let mut entry = self
                        .summary(m, n, mode)
                        .map(|s| s.json())
                        .unwrap_or_else(|| json!({"median": null, "min": null, "max": null}));
                    entry["rounds"] = Value::Array(rounds);
                    modes.insert(mode.key().into(), entry);
                }
                by_n.insert(n.to_string(), Value::Object(modes));
                let mut r = Map::new();
                for (a, b) in RATIOS.into_iter().filter(|&(_, b)| m.applies(b)) {
                    let v = self
                        .ratio(m, n, a, b)
                        .map(|s| s.json())
                        .unwrap_or(Value::Null);
                    r.insert(ratio_key(a, b), v);
                }
                ratio_by_n.insert(n.to_string(), Value::Object(r));
            }
            results.insert(
                m.key().into(),
                json!({
                    "label": m.label(),
                    "unit": m.unit(),
                    "better": if m.higher_is_better() { "higher" } else { "lower" },
                    "services": by_n,
                }),
            );
            ratios.insert(m.key().into(), Value::Object(ratio_by_n));
        }
        (Value::Object(results), Value::Object(ratios))
    }

    /// Measurements that failed, for the exit status.
    pub fn failures(&self) -> usize {
        self.data
            .values()
            .flat_map(|r| r.values())
            .filter(|s| s.value.is_none())
            .count()
    }

    /// How far ahead `a` is of `b`: >1 when better, whatever the metric's direction.
    pub fn advantage(&self, m: Metric, n: usize, a: Mode, b: Mode) -> Option<f64> {
        let r = self.ratio(m, n, a, b)?.median;
        Some(if m.higher_is_better() { r } else { 1.0 / r })
    }
}

pub fn fmt_value(m: Metric, v: f64) -> String {
    match m {
        Metric::LatencyP50 | Metric::LatencyP99 => format!("{v:.0}"),
        _ if v >= 1e6 => format!("{:.2}M", v / 1e6),
        _ if v >= 1e3 => format!("{:.0}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

/// Medians (min-max) per contender and number of services, then the ratios.
pub fn table(r: &Results, services: &[usize], rounds: usize) -> String {
    let mut out = String::new();
    let col = 22;
    for m in Metric::ALL {
        let _ = writeln!(
            out,
            "\n{} ({}, median [min-max] of {rounds} rounds)",
            m.label(),
            m.unit()
        );
        let _ = write!(out, "  {:<30}", "services");
        for n in services {
            let _ = write!(out, "{n:>col$}");
        }
        out.push('\n');
        for mode in Mode::ALL.into_iter().filter(|&mode| m.applies(mode)) {
            let _ = write!(out, "  {:<30}", mode.label());
            for &n in services {
                let cell = match r.summary(m, n, mode) {
                    Some(s) => format!(
                        "{} [{}-{}]",
                        fmt_value(m, s.median),
                        fmt_value(m, s.min),
                        fmt_value(m, s.max)
                    ),
                    None => "failed".into(),
                };
                let _ = write!(out, "{cell:>col$}");
            }
            out.push('\n');
        }
        for (a, b) in RATIOS.into_iter().filter(|&(_, b)| m.applies(b)) {
            let _ = write!(out, "  {:<30}", format!("  ratio {}", ratio_key(a, b)));
            for &n in services {
                let cell = r
                    .ratio(m, n, a, b)
                    .map(|s| format!("{:.2}x", s.median))
                    .unwrap_or_else(|| "-".into());
                let _ = write!(out, "{cell:>col$}");
            }
            out.push('\n');
        }
    }
    out
}

/// The yardsticks, each with whether the run met it and the figures.
pub fn targets(r: &Results, services: &[usize], program: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let largest = *services.iter().max().expect("at least one service count");
    for (lox, ceiling) in [
        (Mode::LoxTc, Mode::CeilingTc),
        (Mode::LoxXdp, Mode::CeilingXdp),
    ] {
        let mut worst: Option<(f64, String)> = None;
        for m in [Metric::UdpEstablished, Metric::UdpNew] {
            for &n in services {
                if let Some(s) = r.ratio(m, n, lox, ceiling) {
                    if worst.as_ref().is_none_or(|(w, _)| s.median < *w) {
                        worst = Some((s.median, format!("{} at {n} services", m.key())));
                    }
                }
            }
        }
        out.push(json!({
            "target": format!("{} packet rate at 0.95x the lab ceiling ({}) or better", lox.label(), ceiling.label()),
            "met": worst.as_ref().map(|(w, _)| *w >= 0.95),
            "detail": worst.map(|(w, at)| format!("lowest ratio {w:.2}x ({at})")),
        }));
        for other in [Mode::Iptables, Mode::Nftables] {
            let (mut won, mut total, mut lost) = (0, 0, Vec::new());
            for m in Metric::ALL {
                for &n in services {
                    if let Some(a) = r.advantage(m, n, lox, other) {
                        total += 1;
                        if a > 1.0 {
                            won += 1;
                        } else {
                            lost.push(format!("{} at {n} ({:.2}x)", m.key(), a));
                        }
                    }
                }
            }
            out.push(json!({
                "target": format!("{} ahead of {} on every workload", lox.label(), other.label()),
                "met": (total > 0).then_some(won == total),
                "detail": format!("ahead on {won} of {total}; advantage is loxilight's ratio, inverted for latency; behind or even: {}", if lost.is_empty() { "none".into() } else { lost.join(", ") }),
            }));
            let margins: Vec<String> = Metric::ALL
                .iter()
                .map(|&m| {
                    let by_n: Vec<String> = services
                        .iter()
                        .map(|&n| match r.advantage(m, n, lox, other) {
                            Some(a) => format!("{n}: {a:.2}x"),
                            None => format!("{n}: -"),
                        })
                        .collect();
                    format!("{} {}", m.key(), by_n.join(" "))
                })
                .collect();
            let widest_at_largest = Metric::ALL.iter().all(|&m| {
                let at = |n| r.advantage(m, n, lox, other).unwrap_or(f64::NAN);
                services.iter().all(|&n| at(largest) >= at(n))
            });
            out.push(json!({
                "target": format!("{} vs {}: widest margin at {largest} services", lox.label(), other.label()),
                "met": widest_at_largest,
                "detail": margins.join("; "),
            }));
            let new_wider = services.iter().all(|&n| {
                let a = |m| r.advantage(m, n, lox, other).unwrap_or(f64::NAN);
                a(Metric::UdpNew) >= a(Metric::UdpEstablished)
            });
            out.push(json!({
                "target": format!("{} vs {}: wider margin on new flows than on established ones", lox.label(), other.label()),
                "met": new_wider,
                "detail": services.iter().map(|&n| format!("{n}: new {:.2}x, established {:.2}x",
                    r.advantage(Metric::UdpNew, n, lox, other).unwrap_or(f64::NAN),
                    r.advantage(Metric::UdpEstablished, n, lox, other).unwrap_or(f64::NAN))).collect::<Vec<_>>().join("; "),
            }));
        }
    }
    let secs = |k: &str| program[k]["seconds"]["median"].as_f64();
    out.push(json!({
        "target": format!("{} services programmed faster than nft -f", program["services"]),
        "met": secs("loxilight_grpc").zip(secs("nft_f")).map(|(l, n)| l < n),
        "detail": format!("loxilight (pipelined gRPC) {:.2} s, nft -f {:.2} s, iptables-restore {:.2} s (medians)",
            secs("loxilight_grpc").unwrap_or(f64::NAN), secs("nft_f").unwrap_or(f64::NAN), secs("iptables_restore").unwrap_or(f64::NAN)),
    }));
    out
}

/// The README's table: one row per workload and number of services, the
/// medians of every contender, then loxilight's ratios.
pub fn markdown(r: &Results, services: &[usize]) -> String {
    let short = |m: Mode| match m {
        Mode::LoxTc => "loxilight TC",
        Mode::LoxXdp => "loxilight XDP",
        Mode::Iptables => "iptables",
        Mode::Nftables => "nftables",
        Mode::Forward => "Linux fwd",
        Mode::CeilingTc => "ceiling TC",
        Mode::CeilingXdp => "ceiling XDP",
    };
    let ratio_head = |(a, b): (Mode, Mode)| {
        let hook = if a == Mode::LoxTc { "TC" } else { "XDP" };
        let other = match b {
            Mode::Iptables => "ipt",
            Mode::Nftables => "nft",
            _ => "ceiling",
        };
        format!("{hook}/{other}")
    };
    let mut out = String::from("| workload | services |");
    for m in Mode::ALL {
        let _ = write!(out, " {} |", short(m));
    }
    for p in RATIOS {
        let _ = write!(out, " {} |", ratio_head(p));
    }
    out.push_str("\n|---|--:|");
    out.push_str(&"--:|".repeat(Mode::ALL.len() + RATIOS.len()));
    out.push('\n');
    for m in Metric::ALL {
        for (i, &n) in services.iter().enumerate() {
            // The workload's name on its first row only.
            let name = match i {
                0 => m.short(),
                _ => "",
            };
            let _ = write!(out, "| {name} | {n} |");
            for mode in Mode::ALL {
                let cell = match (m.applies(mode), r.summary(m, n, mode)) {
                    (false, _) => "-".to_owned(),
                    (true, Some(s)) => fmt_value(m, s.median),
                    (true, None) => "failed".to_owned(),
                };
                let _ = write!(out, " {cell} |");
            }
            for (a, b) in RATIOS {
                let cell = match r.ratio(m, n, a, b) {
                    Some(s) if m.applies(b) => format!("{:.2}", s.median),
                    _ => "-".to_owned(),
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
    }
    out
}
