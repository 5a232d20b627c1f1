//! The benchmark suite: loxilight at TC and at XDP, iptables and nftables
//! laid out as kube-proxy does, plain Linux forwarding and the lab's
//! ceiling, side by side in one run on identical namespace labs, reported
//! as medians (min, max) over rounds and as ratios taken round by round.
//! Needs root. See the README's Performance section.
//!
//! loxilight-bench [--smoke] [--rounds N] [--services 1,1000,10000]
//!                 [--warmup S] [--window S] [--latency-rate R] [--concurrency C]
//!                 [--program-services N] [--conntrack-flows N]
//!                 [--conntrack-services N] [--micro-runs N] [--out DIR]
mod conntrack;
mod cpu;
mod daemon;
mod lab;
mod micro;
mod modes;
mod netns;
mod plot;
mod program;
mod report;
mod services;
mod skel;
mod stats;
mod sysinfo;
mod tcp;
mod udp;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use modes::{Mode, Setup};
use report::{Metric, Results, Sample};
use tcp::Timing;

struct Opts {
    rounds: usize,
    services: Vec<usize>,
    timing: Timing,
    latency_rate: f64,
    concurrency: usize,
    program_services: usize,
    conntrack_flows: u64,
    conntrack_services: usize,
    micro_runs: usize,
    out: PathBuf,
    smoke: bool,
}

/// The number a flag was given.
fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    v.trim()
        .parse()
        .with_context(|| format!("{flag} {v:?} is not a number"))
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut o = Opts {
            rounds: 3,
            services: vec![1, 1000, 10_000],
            timing: Timing {
                warmup: Duration::from_millis(250),
                window: Duration::from_millis(800),
            },
            latency_rate: 2000.0,
            concurrency: 32,
            program_services: 10_000,
            conntrack_flows: 1_000_000,
            conntrack_services: 1000,
            micro_runs: 20_000,
            out: Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
            smoke: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = || args.next().with_context(|| format!("{a} needs a value"));
            match a.as_str() {
                // One short round of everything: proves that the suite works;
                // its figures mean little.
                "--smoke" => {
                    o = Opts {
                        rounds: 1,
                        services: vec![1, 100],
                        timing: Timing {
                            warmup: Duration::from_millis(200),
                            window: Duration::from_millis(300),
                        },
                        latency_rate: 200.0,
                        concurrency: 8,
                        program_services: 200,
                        conntrack_flows: 20_000,
                        conntrack_services: 10,
                        micro_runs: 200,
                        smoke: true,
                        ..o
                    }
                }
                "--rounds" => o.rounds = num(&a, value()?)?,
                "--services" => {
                    o.services = value()?
                        .split(',')
                        .map(|s| num(&a, s.to_owned()))
                        .collect::<Result<_>>()?
                }
                "--warmup" => o.timing.warmup = Duration::from_secs_f64(num(&a, value()?)?),
                "--window" => o.timing.window = Duration::from_secs_f64(num(&a, value()?)?),
                "--latency-rate" => o.latency_rate = num(&a, value()?)?,
                "--concurrency" => o.concurrency = num(&a, value()?)?,
                "--program-services" => o.program_services = num(&a, value()?)?,
                "--conntrack-flows" => o.conntrack_flows = num(&a, value()?)?,
                "--conntrack-services" => o.conntrack_services = num(&a, value()?)?,
                "--micro-runs" => o.micro_runs = num(&a, value()?)?,
                "--out" => o.out = value()?.into(),
                other => bail!("unknown argument {other:?} (see the comment at the top of bench/src/bin/suite/main.rs)"),
            }
        }
        let in_range = |n: &usize| (1..=services::MAX_SERVICES).contains(n);
        ensure!(
            !o.services.is_empty()
                && o.services.iter().all(in_range)
                && in_range(&o.program_services)
                && in_range(&o.conntrack_services),
            "service counts must be 1-{}",
            services::MAX_SERVICES
        );
        ensure!(
            o.rounds > 0 && o.micro_runs > 0 && o.concurrency > 0,
            "counts must be positive"
        );
        ensure!(
            o.latency_rate > 0.0 && o.conntrack_flows > 0,
            "rates and sizes must be positive"
        );
        ensure!(!o.timing.window.is_zero(), "--window must be positive");
        // trafgen needs a moment to start its worker before it is measured.
        ensure!(
            o.timing.warmup >= Duration::from_millis(100),
            "--warmup must be at least 0.1 s"
        );
        Ok(o)
    }

    fn json(&self) -> Value {
        json!({
            "smoke": self.smoke,
            "rounds": self.rounds,
            "services": self.services,
            "warmup_s": self.timing.warmup.as_secs_f64(),
            "window_s": self.timing.window.as_secs_f64(),
            "latency_rate_per_s": self.latency_rate,
            "tcp_concurrency": self.concurrency,
            "udp_flows_established": udp::FLOWS,
            "frame_bytes": 60,
            "program_services": self.program_services,
            "conntrack_flows": self.conntrack_flows,
            "conntrack_services": self.conntrack_services,
            "micro_runs_per_round": self.micro_runs,
            "cpus": "trafgen runs one process, pinned by itself to the first CPU; the packets it sends are forwarded in softirq on that CPU. The TCP client and the backends' servers are pinned to the last CPU, where the forwarding of their packets then runs too. Rates are per CPU-second of that work (bench/src/bin/suite/cpu.rs).",
        })
    }
}

fn preflight() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (network namespaces, BPF): run it as root, e.g. sudo make bench"
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in [
        "ip",
        "nsenter",
        "ethtool",
        "trafgen",
        "iptables-restore",
        "nft",
        "bpftool",
    ] {
        ensure!(
            std::env::split_paths(&path).any(|d| d.join(tool).exists()),
            "{tool} not found: `make bench` installs the suite's packages"
        );
    }
    ensure!(
        Path::new(plot::FONT).exists(),
        "{} missing: install fonts-dejavu-core",
        plot::FONT
    );
    // Every lab holds sockets; the default soft limit of 1024 is tight.
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    Ok(())
}

/// trafgen configs of one contender.
struct Loads {
    established: String,
    new_flows: String,
    /// New flows to the first service only, to fill conntrack quickly.
    fill: String,
    /// Packets that fill its conntrack table (none without one).
    fill_packets: Option<u64>,
}

impl Loads {
    fn new(s: &Setup) -> Result<Loads> {
        let t = services::targets(s.services, udp::FLOWS, !s.mode.nat(), "udp");
        let capacity = s.conntrack_capacity()?;
        Ok(Loads {
            established: udp::config(&t, false),
            new_flows: udp::config(&t, true),
            fill: udp::config(&t[..1], true),
            fill_packets: s.mode.nat().then_some(capacity + capacity / 5),
        })
    }
}

/// The backends' servers and the softirq work of the TCP CPU.
fn tcp_meter(s: &Setup, tcp_cpu: usize) -> Result<cpu::Meter> {
    s.lab
        .server_tids()
        .into_iter()
        .fold(cpu::Meter::new(), cpu::Meter::thread)
        .softirq(&[tcp_cpu])
}

/// One workload on one contender; an error is recorded, not fatal, unless
/// the run was interrupted.
fn measure(
    o: &Opts,
    s: &Setup,
    metric: Metric,
    loads: &Loads,
    tcp_cpu: usize,
) -> Result<Vec<(Metric, Sample)>> {
    let n = s.services;
    let tcp_targets = || services::targets(n, 256, !s.mode.nat(), "tcp");
    let result: Result<Vec<(Metric, Sample)>> = (|| match metric {
        Metric::UdpEstablished | Metric::UdpNew => {
            let new = metric == Metric::UdpNew;
            let cfg = if new {
                &loads.new_flows
            } else {
                &loads.established
            };
            let fill = loads.fill_packets.filter(|_| new).map(|packets| udp::Fill {
                config: &loads.fill,
                packets,
                limit: Duration::from_secs(30),
            });
            let r = udp::measure(&s.lab, cfg, o.timing, fill)?;
            let mut detail =
                json!({"delivered_pps": r.delivered, "sent_pps": r.sent, "cpu_share": r.cpu_share});
            if new && s.mode.nat() {
                detail["conntrack_flows_after"] = json!(s.conntrack_flows()?);
            }
            Ok(vec![(
                metric,
                Sample {
                    value: Some(r.per_cpu_second),
                    detail,
                },
            )])
        }
        Metric::TcpConnections => {
            let meter = tcp_meter(s, tcp_cpu)?;
            let r = tcp::conn_rate(
                &s.lab.client,
                &tcp_targets(),
                o.concurrency,
                o.timing,
                tcp_cpu,
                meter,
            )?;
            let detail =
                json!({"per_second": r.per_second, "cpu_share": r.cpu_share, "errors": r.errors});
            Ok(vec![(
                metric,
                Sample {
                    value: Some(r.per_cpu_second),
                    detail,
                },
            )])
        }
        Metric::LatencyP50 | Metric::LatencyP99 => {
            let meter = tcp_meter(s, tcp_cpu)?;
            let r = tcp::latency(
                &s.lab.client,
                &tcp_targets(),
                o.latency_rate,
                o.timing,
                tcp_cpu,
                meter,
            )?;
            let detail = json!({"samples": r.samples, "errors": r.errors, "others_cpu_share": r.others_cpu_share});
            Ok(vec![
                (
                    Metric::LatencyP50,
                    Sample {
                        value: Some(r.p50),
                        detail: detail.clone(),
                    },
                ),
                (
                    Metric::LatencyP99,
                    Sample {
                        value: Some(r.p99),
                        detail,
                    },
                ),
            ])
        }
    })();
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            netns::check_interrupted()?;
            eprintln!(
                "  {} / {} / {n} services failed: {e:#}",
                metric.key(),
                s.mode.label()
            );
            let detail = json!({"error": format!("{e:#}")});
            let metrics = match metric {
                Metric::LatencyP50 | Metric::LatencyP99 => {
                    vec![Metric::LatencyP50, Metric::LatencyP99]
                }
                m => vec![m],
            };
            Ok(metrics
                .into_iter()
                .map(|m| {
                    (
                        m,
                        Sample {
                            value: None,
                            detail: detail.clone(),
                        },
                    )
                })
                .collect())
        }
    }
}

/// Every contender on a lab of its own with `n` services, then the rounds:
/// each workload on each contender in turn, the order rotating per round.
fn side_by_side(o: &Opts, n: usize, tcp_cpu: usize, results: &mut Results) -> Result<Value> {
    println!("== {n} services: setting up {} labs", Mode::ALL.len());
    let t0 = Instant::now();
    let setups: Vec<Setup> = Mode::ALL
        .iter()
        .map(|&m| Setup::new(m, n, None, tcp_cpu))
        .collect::<Result<_>>()?;
    let loads: Vec<Loads> = setups.iter().map(Loads::new).collect::<Result<_>>()?;
    println!("   ready in {:.1} s", t0.elapsed().as_secs_f64());
    let workloads = [
        Metric::UdpEstablished,
        Metric::UdpNew,
        Metric::TcpConnections,
        Metric::LatencyP99,
    ];
    for round in 0..o.rounds {
        for metric in workloads {
            for k in 0..setups.len() {
                let i = (k + round) % setups.len();
                let s = &setups[i];
                if !metric.applies(s.mode) {
                    continue;
                }
                netns::check_interrupted()?;
                for (m, sample) in measure(o, s, metric, &loads[i], tcp_cpu)? {
                    if let Some(v) = sample.value {
                        // How much of the CPU the work had to itself, for judging noise.
                        let share = match sample.detail["others_cpu_share"].as_f64() {
                            Some(others) => {
                                format!("others took {:.0}% of the CPU", others * 100.0)
                            }
                            None => format!(
                                "ran on {:.0}% of a CPU",
                                sample.detail["cpu_share"].as_f64().unwrap_or(0.0) * 100.0
                            ),
                        };
                        println!(
                            "[{n} services, round {}] {:<24} {:<26} {:>10}  ({share})",
                            round + 1,
                            m.key(),
                            s.mode.label(),
                            report::fmt_value(m, v)
                        );
                    }
                    results.record(m, n, s.mode, round, sample);
                }
            }
        }
    }
    let program: serde_json::Map<String, Value> = setups
        .iter()
        .filter_map(|s| Some((s.mode.key().into(), json!(s.program_time?.as_secs_f64()))))
        .collect();
    Ok(Value::Object(program))
}

fn run() -> Result<bool> {
    let o = Opts::parse()?;
    preflight()?;
    netns::catch_signals();
    lab::remove_stale();
    let started = SystemTime::now();
    let t0 = Instant::now();
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let system = sysinfo::collect();

    println!("== datapath micro benchmark (BPF_PROG_TEST_RUN)");
    let micro = micro::run(o.micro_runs, o.rounds)?;

    // UDP load runs where trafgen pins itself (the first CPU), TCP on the last.
    let tcp_cpu = *cpu::allowed_cpus(std::process::id())?
        .last()
        .context("no CPU to run on")?;
    let mut results = Results::default();
    let mut setup_times = serde_json::Map::new();
    for &n in &o.services {
        let t = side_by_side(&o, n, tcp_cpu, &mut results)?;
        setup_times.insert(n.to_string(), t);
    }

    println!("== time to program {} services", o.program_services);
    let program = program::run(o.program_services, o.rounds)?;

    println!("== connection tracking with {} flows", o.conntrack_flows);
    let conntrack = conntrack::run(
        o.conntrack_flows,
        o.conntrack_services,
        o.rounds,
        o.timing,
        tcp_cpu,
    )?;

    let (res_json, ratios) = results.json(&o.services);
    let targets = report::targets(&results, &o.services, &program);
    let workloads = json!({
        "udp_established_pps": "trafgen sends 60-byte UDP frames (64 with FCS) as fast as it can, round robin over 256 flows spread evenly over the services (to the VIPs, or to the endpoints for contenders without NAT); the figure is packets per second counted by the sink at the backends",
        "udp_new_flows_pps": "as above, with a random source address (10.1.0.0/16) and port on every packet, measured once the contender's connection-tracking table is full, so every packet evicts a flow",
        "tcp_connections_per_s": "closed loop: concurrent clients each open a connection, send an HTTP request, read the answer until the server closes, and start the next; over 256 services spread over the range",
        "latency_p50_us": "open loop at the fixed request rate: time from connect() to the last byte of the answer, each request on a new connection; wall-clock time, so other tenants of the CPU add to it (others_cpu_share in each round's detail says how much of the CPU they took)",
        "latency_p99_us": "as above, 99th percentile",
    });
    let contenders: serde_json::Map<String, Value> = Mode::ALL
        .iter()
        .map(|m| {
            (
                m.key().into(),
                json!({"label": m.label(), "what": m.describe()}),
            )
        })
        .collect();
    let doc = json!({
        "suite": "loxilight-bench",
        "started": sysinfo::utc(started),
        "duration_s": t0.elapsed().as_secs_f64(),
        "system": system,
        "settings": o.json(),
        "contenders": contenders,
        "workloads": workloads,
        "results": res_json,
        "ratios": ratios,
        "setup_program_s": setup_times,
        "program": program,
        "conntrack": conntrack,
        "micro": micro,
        "targets": targets,
        "failed_measurements": results.failures(),
        "plot": "latest.png",
    });
    let json_path = o.out.join("latest.json");
    let tmp = o.out.join("latest.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::rename(&tmp, &json_path)?;
    let md = report::markdown(&results, &o.services);
    std::fs::write(o.out.join("latest.md"), &md)?;
    let title = format!(
        "loxilight vs iptables vs nftables: {} on {} CPUs, kernel {} ({})",
        doc["system"]["cpu"].as_str().unwrap_or("?"),
        doc["system"]["cpus"],
        doc["system"]["kernel"].as_str().unwrap_or("?"),
        doc["started"].as_str().unwrap_or("?"),
    );
    plot::draw(&results, &o.services, &title, &o.out.join("latest.png"))?;

    println!("{}", report::table(&results, &o.services, o.rounds));
    println!("\nTargets (issue #7):");
    for t in &doc["targets"].as_array().cloned().unwrap_or_default() {
        let met = match t["met"].as_bool() {
            Some(true) => "met    ",
            Some(false) => "NOT met",
            None => "n/a    ",
        };
        println!(
            "  [{met}] {}\n            {}",
            t["target"].as_str().unwrap_or(""),
            t["detail"].as_str().unwrap_or("")
        );
    }
    println!(
        "\nwrote {}, {} and {} in {:.0} s",
        json_path.display(),
        o.out.join("latest.md").display(),
        o.out.join("latest.png").display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(results.failures() == 0)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("loxilight-bench: some measurements failed (see above and failed_measurements in the JSON)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loxilight-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
