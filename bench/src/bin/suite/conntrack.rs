//! Connection tracking with a big table: its memory, and the packet rate
//! once it is full. loxilight gets a table of that many flows (two entries
//! each, one per direction); Linux's limit is host-wide, so it is raised for
//! the phase and put back afterwards, even on failure.
use std::fs;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

use crate::modes::{Mode, Setup};
use crate::netns;
use crate::report::RATIOS;
use crate::services;
use crate::stats::Summary;
use crate::tcp::Timing;
use crate::udp;

const MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Raises the host's nf_conntrack_max (writable only in the initial
/// namespace) and restores it on drop.
struct HostLimit(Option<String>);

impl HostLimit {
    fn raise(flows: u64) -> Result<HostLimit> {
        let old = fs::read_to_string(MAX).context("reading nf_conntrack_max")?;
        if old.trim().parse::<u64>().unwrap_or(0) >= flows {
            return Ok(HostLimit(None));
        }
        fs::write(MAX, flows.to_string()).context("raising nf_conntrack_max")?;
        Ok(HostLimit(Some(old.trim().to_owned())))
    }
}

impl Drop for HostLimit {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            if let Err(e) = fs::write(MAX, old) {
                eprintln!("restoring nf_conntrack_max to {old}: {e}");
            }
        }
    }
}

fn slab_bytes() -> Result<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    let kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no Slab in /proc/meminfo")?
        .parse()?;
    Ok(kb * 1024)
}

/// Tracked flows in all namespaces (allocated nf_conntrack objects).
fn linux_flows() -> Result<u64> {
    let slabinfo = fs::read_to_string("/proc/slabinfo").context("reading /proc/slabinfo")?;
    Ok(slabinfo
        .lines()
        .find(|l| l.starts_with("nf_conntrack "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Waits until the flows of a lab torn down before are freed (namespace
/// cleanup runs in the background, and may start late), so that the next
/// slab measurement sees only its own table grow. False if they never went.
fn settle(flows: u64) -> Result<bool> {
    for _ in 0..240 {
        if linux_flows()? < flows / 20 {
            return Ok(true);
        }
        netns::sleep(Duration::from_millis(250))?;
    }
    Ok(false)
}

/// The kernel's own count of a pinned map's memory.
fn map_memory(path: &std::path::Path) -> Result<u64> {
    let out = netns::run(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(path),
        Duration::from_secs(20),
    )?;
    let v: Value = serde_json::from_str(&out).context("parsing bpftool's JSON")?;
    v["bytes_memlock"]
        .as_u64()
        .context("no bytes_memlock from bpftool")
}

pub fn run(flows: u64, n: usize, rounds: usize, t: Timing, tcp_cpu: usize) -> Result<Value> {
    let _limit = HostLimit::raise(flows)?;
    let mut out = Map::new();
    let mut rates: Map<String, Value> = Map::new();
    let mut per_round: Vec<(Mode, Vec<f64>, Vec<f64>)> = Vec::new();
    for mode in Mode::NAT {
        netns::check_interrupted()?;
        let s = Setup::new(mode, n, Some(flows), tcp_cpu)?;
        let settled = settle(flows)?;
        let slab0 = slab_bytes()?;
        let targets = services::targets(n, udp::FLOWS, false, "udp");
        let (new, est) = (udp::config(&targets, true), udp::config(&targets, false));
        let fill = udp::config(&targets[..1], true);
        let (mut new_pps, mut est_pps, mut wall) = (Vec::new(), Vec::new(), Vec::new());
        let mut memory = Value::Null;
        for round in 0..rounds {
            // Round 1 fills the table first; later rounds find it full.
            let fill = (round == 0).then(|| udp::Fill {
                config: &fill,
                packets: flows + flows / 5,
                limit: Duration::from_secs(120),
            });
            let r = udp::measure(&s.lab, &new, t, fill)?;
            if round == 0 {
                let tracked = s.conntrack_flows()?;
                memory = match &s.daemon {
                    Some(d) => {
                        let bytes = map_memory(&d.pin_dir.join("ll_conntrack"))?;
                        json!({"table_flows": tracked, "bytes": bytes, "bytes_per_flow": bytes as f64 / flows as f64,
                               "method": "bytes_memlock of the pinned ll_conntrack map (bpftool): the whole preallocated table of 2 entries per flow"})
                    }
                    None if settled => {
                        let bytes = slab_bytes()?.saturating_sub(slab0);
                        json!({"table_flows": tracked, "bytes": bytes, "bytes_per_flow": bytes as f64 / tracked.max(1) as f64,
                               "method": "growth of the kernel's slab memory (/proc/meminfo Slab) while the table filled, per tracked flow"})
                    }
                    None => json!({"table_flows": tracked, "bytes": null, "bytes_per_flow": null,
                                   "method": "not measured: the flows of an earlier lab were still being freed after 60 s"}),
                };
            }
            let e = udp::measure(&s.lab, &est, t, None)?;
            println!(
                "[conntrack {flows} flows, round {}] {:<24} new flows {:>10.0}, established {:>10.0} packets per CPU-second",
                round + 1,
                mode.label(),
                r.per_cpu_second,
                e.per_cpu_second
            );
            new_pps.push(r.per_cpu_second);
            est_pps.push(e.per_cpu_second);
            wall.push(
                json!({"udp_new_flows_pps": r.delivered, "udp_established_pps": e.delivered}),
            );
        }
        let summary = |v: &[f64]| Summary::of(v).map(|s| s.json());
        out.insert(
            mode.key().into(),
            json!({
                "memory": memory,
                "udp_new_flows_pps": summary(&new_pps),
                "udp_established_pps": summary(&est_pps),
                "rounds": {"udp_new_flows_pps": new_pps, "udp_established_pps": est_pps, "wall_clock": wall},
            }),
        );
        per_round.push((mode, new_pps, est_pps));
    }
    let find = |m: Mode| per_round.iter().find(|(x, ..)| *x == m);
    for (a, b) in RATIOS.into_iter().filter(|(_, b)| b.nat()) {
        let (Some(pa), Some(pb)) = (find(a), find(b)) else {
            continue;
        };
        let ratio = |x: &[f64], y: &[f64]| {
            let v: Vec<f64> = x.iter().zip(y).map(|(p, q)| p / q).collect();
            Summary::of(&v).map(|s| s.json())
        };
        rates.insert(
            crate::report::ratio_key(a, b),
            json!({"udp_new_flows_pps": ratio(&pa.1, &pb.1), "udp_established_pps": ratio(&pa.2, &pb.2)}),
        );
    }
    Ok(json!({
        "flows": flows,
        "services": n,
        "rounds": rounds,
        "linux_nf_conntrack_buckets": fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_buckets").unwrap_or_default().trim(),
        "unit": "packets per CPU-second",
        "method": "a new-flow load fills the table (1.2x its size in packets), then the new-flow rate (table full, every packet evicts) and the 256-flow established rate are measured",
        "contenders": out,
        "ratios": rates,
    }))
}
