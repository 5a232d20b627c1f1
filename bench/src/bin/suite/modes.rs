//! The contenders, each set up on a lab of its own.
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::daemon::Daemon;
use crate::lab::Lab;
use crate::netns;
use crate::services;
use crate::tcp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    LoxTc,
    LoxXdp,
    Iptables,
    Nftables,
    Forward,
    CeilingTc,
    CeilingXdp,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::LoxTc,
        Mode::LoxXdp,
        Mode::Iptables,
        Mode::Nftables,
        Mode::Forward,
        Mode::CeilingTc,
        Mode::CeilingXdp,
    ];
    pub const NAT: [Mode; 4] = [Mode::LoxTc, Mode::LoxXdp, Mode::Iptables, Mode::Nftables];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Mode::LoxTc => "loxilight_tc",
            Mode::LoxXdp => "loxilight_xdp",
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Forward => "linux_forwarding",
            Mode::CeilingTc => "ceiling_tc",
            Mode::CeilingXdp => "ceiling_xdp",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Mode::LoxTc => "loxilight TC",
            Mode::LoxXdp => "loxilight XDP",
            Mode::Iptables => "iptables (kube-proxy)",
            Mode::Nftables => "nftables (kube-proxy)",
            Mode::Forward => "Linux forwarding, no NAT",
            Mode::CeilingTc => "ceiling TC (MACs+redirect)",
            Mode::CeilingXdp => "ceiling XDP (MACs+redirect)",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::LoxTc => "the loxilight daemon, datapath at TC ingress; Linux forwarding off",
            Mode::LoxXdp => "the loxilight daemon, datapath at XDP (native on veth); Linux forwarding off",
            Mode::Iptables => "iptables-restore of kube-proxy's iptables layout (KUBE-SERVICES, KUBE-SVC-* with statistic, KUBE-SEP-* DNAT), Linux forwarding and conntrack",
            Mode::Nftables => "nft -f of kube-proxy's nftables layout (service-ips verdict map, per-service chains with numgen, endpoint chains DNAT), Linux forwarding and conntrack",
            Mode::Forward => "Linux forwarding without NAT or netfilter; traffic goes to the endpoints' addresses directly",
            Mode::CeilingTc => "bench/bpf ceiling_tc at TC ingress: destination /16 lookup, MAC rewrite, bpf_redirect; traffic to the endpoints directly",
            Mode::CeilingXdp => "bench/bpf ceiling_xdp at XDP: destination /16 lookup, MAC rewrite, bpf_redirect; traffic to the endpoints directly",
        }
    }

    /// Whether traffic goes to VIPs (translated) or to endpoints directly.
    pub fn nat(self) -> bool {
        Mode::NAT.contains(&self)
    }

    /// The ceilings forward one way only: no replies, so no TCP.
    pub fn tcp(self) -> bool {
        !matches!(self, Mode::CeilingTc | Mode::CeilingXdp)
    }
}

/// One contender on its lab with `services` services programmed.
pub struct Setup {
    pub mode: Mode,
    pub services: usize,
    /// Wall time to program the services.
    pub program_time: Option<Duration>,
    // The daemon goes before its namespace.
    pub daemon: Option<Daemon>,
    pub lab: Lab,
}

impl Setup {
    /// `ct_flows`: the loxilight conntrack table's size in flows (the
    /// default config otherwise); Linux's limit is host-wide (see conntrack.rs).
    /// `tcp_cpu`: where the TCP workloads run.
    pub fn new(
        mode: Mode,
        services: usize,
        ct_flows: Option<u64>,
        tcp_cpu: usize,
    ) -> Result<Setup> {
        let lab = Lab::new(tcp_cpu)?;
        let mut s = Setup {
            mode,
            services,
            program_time: None,
            daemon: None,
            lab,
        };
        s.program(ct_flows)
            .with_context(|| format!("setting up {} with {services} services", mode.label()))?;
        Ok(s)
    }

    fn program(&mut self, ct_flows: Option<u64>) -> Result<()> {
        let (lb, n) = (self.lab.lb.clone(), self.services);
        let linux_forwarding = matches!(self.mode, Mode::Iptables | Mode::Nftables | Mode::Forward);
        netns::sysctl(
            &lb,
            "net.ipv4.ip_forward",
            if linux_forwarding { "1" } else { "0" },
        )?;
        match self.mode {
            Mode::LoxTc | Mode::LoxXdp => {
                let hook = if self.mode == Mode::LoxXdp {
                    "xdp"
                } else {
                    "tc"
                };
                let mut config = format!("max_services = {}\n", 2 * n + 64);
                if let Some(flows) = ct_flows {
                    config += &format!("conntrack_entries = {}\n", 2 * flows);
                }
                let d = Daemon::start(
                    &lb,
                    &self.lab.workdir,
                    &["--hook", hook, "--interfaces", "veth-c,veth-b1,veth-b2"],
                    &config,
                )?;
                self.program_time = Some(d.program(services::lb_requests(n))?);
                self.daemon = Some(d);
            }
            Mode::Iptables => {
                let file = self.lab.workdir.join("rules.iptables");
                fs::write(&file, services::iptables_restore(n))?;
                self.program_time =
                    Some(timed(netns::command(&lb, "iptables-restore").arg(&file))?);
            }
            Mode::Nftables => {
                let file = self.lab.workdir.join("rules.nft");
                fs::write(&file, services::nft_ruleset(n))?;
                self.program_time = Some(timed(netns::command(&lb, "nft").arg("-f").arg(&file))?);
            }
            Mode::Forward => {}
            Mode::CeilingTc => self.lab.attach_ceiling(false)?,
            Mode::CeilingXdp => self.lab.attach_ceiling(true)?,
        }
        if self.mode.tcp() {
            let target = services::targets(n, 1, !self.mode.nat(), "tcp")[0];
            tcp::probe(&self.lab.client, target)?;
        }
        Ok(())
    }

    /// Flows the contender's connection tracking holds when full, with the
    /// daemon's default table.
    pub fn conntrack_capacity(&self) -> Result<u64> {
        Ok(match self.mode {
            // Two entries per flow.
            Mode::LoxTc | Mode::LoxXdp => {
                u64::from(loxilight::datapath::Limits::default().conntrack) / 2
            }
            _ => std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")?
                .trim()
                .parse()?,
        })
    }

    /// Flows the contender's connection tracking holds now.
    pub fn conntrack_flows(&self) -> Result<u64> {
        match &self.daemon {
            Some(d) => d.conntrack_flows(),
            None => Ok(
                netns::read_sysctl(&self.lab.lb, "net.netfilter.nf_conntrack_count")?.parse()?,
            ),
        }
    }
}

/// Runs `cmd` and returns its wall time.
pub fn timed(cmd: &mut Command) -> Result<Duration> {
    let t0 = Instant::now();
    netns::run(cmd, Duration::from_secs(600))?;
    Ok(t0.elapsed())
}
