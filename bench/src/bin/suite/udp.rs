//! 64-byte UDP at the generator's full rate: trafgen (netsniff-ng) in the
//! client namespace, counted by the sink at the backends.
use std::fmt::Write;
use std::fs::{self, File};
use std::net::SocketAddrV4;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::cpu::{allowed_cpus, Meter};
use crate::lab::{far_mac, lb_mac, mac_str, Lab, CLIENT_NET};
use crate::netns;
use crate::tcp::Timing;

/// Flows of the established-flow load.
pub const FLOWS: usize = 256;

/// trafgen's packet config: one packet per target, sent in turn. 60 bytes
/// on the wire (64 with the FCS a NIC would add): Ethernet, IPv4, UDP and
/// 18 bytes of payload. With `new_flows` the source address (in
/// 10.1.0.0/16) and port are random for every packet, so nearly every
/// packet starts a flow; otherwise flow i always sends from 10.1.0.1:(10000+i).
pub fn config(targets: &[SocketAddrV4], new_flows: bool) -> String {
    let (lb, client) = (mac_str(lb_mac(1)), mac_str(far_mac(1)));
    let mut out = String::new();
    for (i, t) in targets.iter().enumerate() {
        let (src, sport) = match new_flows {
            true => (
                format!("sa={CLIENT_NET}, sa[2]=drnd(), sa[3]=drnd()"),
                "drnd(1024, 65535)".to_owned(),
            ),
            false => (
                format!("sa={}", std::net::Ipv4Addr::from(u32::from(CLIENT_NET) + 1)),
                (10_000 + i).to_string(),
            ),
        };
        let _ = writeln!(
            out,
            "{{ eth(da={lb}, sa={client}), ipv4({src}, da={}, ttl=64, df), udp(sp={sport}, dp={}), fill(0x00, 18) }}",
            t.ip(),
            t.port()
        );
    }
    out
}

/// trafgen running in the client namespace; stopped on drop.
struct Trafgen(Child);

/// trafgen's workers do not die with it, so if we are killed (SIGKILL, no
/// Drop) they would send forever: this much CPU time ends them (SIGXCPU).
/// The longest legitimate run, a conntrack fill, needs under half of it.
const CPU_LIMIT: libc::rlim_t = 300;

/// trafgen's worker processes: the parent only forks them and waits.
fn workers(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Trafgen {
    /// One process, which trafgen pins to CPU 0; it must leave the host's
    /// socket memory sysctls and IRQ affinity alone.
    fn start(lab: &Lab, config: &str) -> Result<Trafgen> {
        let cfg = lab.workdir.join("trafgen.cfg");
        fs::write(&cfg, config)?;
        let log = File::create(lab.workdir.join("trafgen.log"))?;
        let mut cmd = netns::command(&lab.client, "trafgen");
        // SAFETY: setrlimit is async-signal-safe; the limit is inherited by
        // the workers trafgen forks.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: CPU_LIMIT,
                    rlim_max: CPU_LIMIT + 10,
                };
                libc::setrlimit(libc::RLIMIT_CPU, &limit);
                Ok(())
            });
        }
        let child = cmd
            .args([
                "--dev",
                "eth0",
                "--cpus",
                "1",
                "--no-sock-mem",
                "--notouch-irq",
            ])
            .args(["--no-cpu-stats", "--conf"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting trafgen")?;
        Ok(Trafgen(child))
    }

    /// The CPU time of trafgen and of the softirq work on its CPU, which is
    /// where the forwarding of every packet it sends runs.
    fn meter(&self) -> Result<Meter> {
        let pid = self.0.id();
        let workers = workers(pid);
        let worker = *workers
            .first()
            .context("trafgen has not started its worker")?;
        let mut m = Meter::new().process(pid);
        for w in &workers {
            m = m.process(*w);
        }
        m.softirq(&allowed_cpus(worker)?)
    }

    fn check(&mut self, lab: &Lab) -> Result<()> {
        if let Some(st) = self.0.try_wait()? {
            let log = fs::read_to_string(lab.workdir.join("trafgen.log")).unwrap_or_default();
            bail!("trafgen exited ({st}): {}", log.trim());
        }
        Ok(())
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        // SIGINT stops trafgen; the parent does not pass it on to its workers.
        let pid = self.0.id();
        for p in workers(pid).into_iter().chain([pid]) {
            // SAFETY: plain kill(2); the parent is our unreaped child, the
            // workers are its children and live as long as it waits for them.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGINT) };
        }
        if netns::wait_bounded(&mut self.0, Duration::from_secs(5)).is_err() {
            eprintln!("trafgen ignored SIGINT; killed");
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UdpRate {
    /// Packets delivered to the backends per second of CPU time spent on
    /// them (generator and forwarding, all on the generator's CPU).
    pub per_cpu_second: f64,
    /// Packets per second (wall clock) that reached the backends.
    pub delivered: f64,
    /// Packets per second (wall clock) the client sent.
    pub sent: f64,
    /// CPU seconds the work got per second of the window (1 = a whole CPU).
    pub cpu_share: f64,
}

/// A connection-tracking table to fill before measuring: `packets` new
/// flows sent with `config` (aimed at the cheapest service to match, so that
/// even a slow contender fills quickly), given at most `limit`.
pub struct Fill<'a> {
    pub config: &'a str,
    pub packets: u64,
    pub limit: Duration,
}

/// Runs `fill` if any, then the load for warm-up + window, and measures the
/// window. A window in which the generator was never scheduled (seen on a
/// loaded 2-core machine with short smoke windows) is measured again, twice
/// at most.
pub fn measure(lab: &Lab, config: &str, t: Timing, fill: Option<Fill>) -> Result<UdpRate> {
    let mut fill = fill;
    let mut attempt = 0;
    loop {
        match measure_once(lab, config, t, fill.take()) {
            Err(e) if attempt < 2 && e.to_string().contains("no CPU time") => {
                eprintln!("  {e}: measuring again");
                attempt += 1;
            }
            res => return res,
        }
    }
}

fn measure_once(lab: &Lab, config: &str, t: Timing, fill: Option<Fill>) -> Result<UdpRate> {
    if let Some(f) = fill {
        let start = lab.delivered()?;
        let mut gen = Trafgen::start(lab, f.config)?;
        let t0 = Instant::now();
        while lab.delivered()? - start < f.packets && t0.elapsed() < f.limit {
            netns::sleep(Duration::from_millis(20))?;
            gen.check(lab)?;
        }
    }
    let mut gen = Trafgen::start(lab, config)?;
    netns::sleep(t.warmup)?;
    gen.check(lab)?;
    let meter = gen.meter()?;
    let (d0, s0, c0, w0) = (lab.delivered()?, lab.sent()?, meter.read(), Instant::now());
    netns::sleep(t.window)?;
    let (d1, s1, c1) = (lab.delivered()?, lab.sent()?, meter.read());
    let secs = w0.elapsed().as_secs_f64();
    gen.check(lab)?;
    let cpu = (c1 - c0) as f64 / 1e9;
    ensure!(cpu > 0.0, "trafgen got no CPU time in the window");
    Ok(UdpRate {
        per_cpu_second: (d1 - d0) as f64 / cpu,
        delivered: (d1 - d0) as f64 / secs,
        sent: (s1 - s0) as f64 / secs,
        cpu_share: cpu / secs,
    })
}
