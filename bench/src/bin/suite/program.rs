//! Time to program N services, each contender in an empty namespace of its
//! own: loxilight through its gRPC API (pipelined CreateLoadBalancer calls
//! until batch apply exists), `iptables-restore` and `nft -f` of the same
//! rules (files written beforehand, so only the tool's work is timed).
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::daemon::Daemon;
use crate::lab::{unique_name, Netns};
use crate::modes::timed;
use crate::netns;
use crate::services;
use crate::stats::Summary;

/// An empty namespace and a temp dir, both removed on drop.
struct Bare {
    workdir: PathBuf,
    ns: Netns,
}

impl Bare {
    fn new() -> Result<Bare> {
        let name = unique_name();
        let ns = Netns::add(name.clone())?;
        let workdir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&workdir)?;
        Ok(Bare { workdir, ns })
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

#[derive(Clone, Copy)]
enum Tool {
    Loxilight,
    Iptables,
    Nft,
}

impl Tool {
    fn key(self) -> &'static str {
        match self {
            Tool::Loxilight => "loxilight_grpc",
            Tool::Iptables => "iptables_restore",
            Tool::Nft => "nft_f",
        }
    }

    fn time(self, n: usize) -> Result<Duration> {
        let bare = Bare::new()?;
        let ns = &bare.ns.0;
        match self {
            Tool::Loxilight => {
                let config = format!("max_services = {}\n", 2 * n + 64);
                let d = Daemon::start(ns, &bare.workdir, &[], &config)?;
                d.program(services::lb_requests(n))
            }
            Tool::Iptables => {
                let file = bare.workdir.join("rules.iptables");
                fs::write(&file, services::iptables_restore(n))?;
                timed(netns::command(ns, "iptables-restore").arg(&file))
            }
            Tool::Nft => {
                let file = bare.workdir.join("rules.nft");
                fs::write(&file, services::nft_ruleset(n))?;
                timed(netns::command(ns, "nft").arg("-f").arg(&file))
            }
        }
    }
}

/// A tool is timed again only while its runs so far took less than this
/// (nft -f of 10,000 services takes over a minute here).
const BUDGET: Duration = Duration::from_secs(60);

pub fn run(n: usize, rounds: usize) -> Result<Value> {
    let tools = [Tool::Loxilight, Tool::Iptables, Tool::Nft];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    for round in 0..rounds {
        for k in 0..tools.len() {
            // A different contender goes first each round.
            let i = (k + round) % tools.len();
            if secs[i].iter().sum::<f64>() >= BUDGET.as_secs_f64() {
                continue;
            }
            netns::check_interrupted()?;
            let d = tools[i]
                .time(n)
                .with_context(|| format!("programming {n} services with {}", tools[i].key()))?;
            println!(
                "[program {n} services, round {}] {:<18} {:.2} s",
                round + 1,
                tools[i].key(),
                d.as_secs_f64()
            );
            secs[i].push(d.as_secs_f64());
        }
    }
    let mut out = json!({
        "services": n,
        "rules": 2 * n,
        "rounds": rounds,
        "method": "each contender in an empty namespace; loxilight: CreateLoadBalancer calls, 64 in flight on one HTTP/2 connection, from the first call to the last answer (batch apply will replace this); iptables-restore and nft -f: the command's wall time. A tool is timed again only while its runs so far took under 60 s.",
    });
    for (i, t) in tools.iter().enumerate() {
        let s = Summary::of(&secs[i]).context("no rounds")?;
        out[t.key()] = json!({"seconds": s.json(), "rounds": secs[i]});
    }
    // Round by round where both ran; a tool over budget ran in round 1 only.
    let ratio = |a: usize, b: usize| {
        let per_round: Vec<f64> = secs[a].iter().zip(&secs[b]).map(|(x, y)| x / y).collect();
        Summary::of(&per_round).map(|s| s.json())
    };
    out["ratios"] = json!({
        "loxilight_grpc/iptables_restore": ratio(0, 1),
        "loxilight_grpc/nft_f": ratio(0, 2),
    });
    Ok(out)
}
