//! The namespace lab: a client, the load balancer and two backends on veth
//! pairs, everything torn down on drop (also on error and Ctrl-C).
//!
//! ```text
//!  client 10.77.1.2 --- 10.77.1.1 [ LB ] 10.77.2.1 --- 10.77.2.2 b1 (+ 10.2.0.0/16)
//!  (+ 10.1.0.0/16)                       10.77.3.1 --- 10.77.3.2 b2 (+ 10.3.0.0/16)
//! ```
//!
//! Each backend owns a /16 of service endpoints through a local route (any
//! address in it is its own), so every service has endpoints of its own as
//! in a real cluster, and replies of different services never share a
//! tuple. The client sends from 10.1.0.0/16, routed back to it. Neighbours
//! are static and IPv6 is off, so no ARP or ND runs during a measurement.
use std::fs;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, TcHookBuilder, Xdp, XdpFlags, TC_INGRESS};

use crate::netns::{self, ip};
use crate::skel::BenchSkelBuilder;
use crate::tcp::Server;

/// Every name a lab creates starts with this, then `<pid>-<n>`.
pub const PREFIX: &str = "llb";

/// The client's source addresses for the UDP load.
pub const CLIENT_NET: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);

static LABS: AtomicUsize = AtomicUsize::new(0);

/// One veth pair: the far end is `eth0` in `ns`, the LB end is `lb_if`.
/// Subnet 10.77.`net`.0/24, .1 on the LB, MACs 02:00:00:00:`net`:01/02.
struct Link {
    net: u8,
    lb_if: &'static str,
}

const LINKS: [Link; 3] = [
    Link {
        net: 1,
        lb_if: "veth-c",
    },
    Link {
        net: 2,
        lb_if: "veth-b1",
    },
    Link {
        net: 3,
        lb_if: "veth-b2",
    },
];

pub fn lb_mac(net: u8) -> [u8; 6] {
    [2, 0, 0, 0, net, 1]
}

pub fn far_mac(net: u8) -> [u8; 6] {
    [2, 0, 0, 0, net, 2]
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// A network namespace, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn add(name: String) -> Result<Netns> {
        ip(&format!("netns add {name}"))?;
        let ns = Netns(name);
        ip(&format!("-n {} link set lo up", ns.0))?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&format!("netns del {}", self.0)) {
            eprintln!("deleting netns {}: {e:#}", self.0);
        }
    }
}

/// A unique `llb-<pid>-<n>` name for a lab, daemon pins and temp files.
pub fn unique_name() -> String {
    format!(
        "{PREFIX}-{}-{}",
        std::process::id(),
        LABS.fetch_add(1, Ordering::SeqCst)
    )
}

pub struct Lab {
    pub name: String,
    pub client: String,
    pub lb: String,
    pub backends: [String; 2],
    /// LB-side ifindexes of the client and backend links.
    pub lb_ifindex: [u32; 3],
    pub workdir: PathBuf,
    sink: Option<MapHandle>,
    // Servers stop before their namespaces go.
    servers: Vec<Server>,
    namespaces: Vec<Netns>,
}

impl Lab {
    /// `tcp_cpu`: where the backends' servers run (see tcp.rs).
    pub fn new(tcp_cpu: usize) -> Result<Lab> {
        let name = unique_name();
        let workdir = std::env::temp_dir().join(&name);
        fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
        let mut lab = Lab {
            client: format!("{name}-c"),
            lb: format!("{name}-l"),
            backends: [format!("{name}-b1"), format!("{name}-b2")],
            name,
            lb_ifindex: [0; 3],
            workdir,
            sink: None,
            servers: Vec::new(),
            namespaces: Vec::new(),
        };
        // `lab` owns everything from here on, so a failure still tears down.
        lab.build(tcp_cpu)
            .with_context(|| format!("building lab {}", lab.name))?;
        Ok(lab)
    }

    fn far_ns(&self, link: &Link) -> &str {
        match link.net {
            1 => &self.client,
            n => &self.backends[usize::from(n) - 2],
        }
    }

    fn build(&mut self, tcp_cpu: usize) -> Result<()> {
        for ns in [&self.client, &self.lb, &self.backends[0], &self.backends[1]] {
            self.namespaces.push(Netns::add(ns.clone())?);
            // Before any link exists, so none gets an IPv6 address.
            netns::sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
            netns::sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        let lb = self.lb.clone();
        for (i, link) in LINKS.iter().enumerate() {
            let (ns, n, lb_if) = (self.far_ns(link).to_owned(), link.net, link.lb_if);
            let (near, far) = (mac_str(lb_mac(n)), mac_str(far_mac(n)));
            ip(&format!(
                "-n {ns} link add eth0 address {far} type veth peer name {lb_if} address {near} netns {lb}"
            ))?;
            ip(&format!("-n {ns} addr add 10.77.{n}.2/24 dev eth0"))?;
            ip(&format!("-n {lb} addr add 10.77.{n}.1/24 dev {lb_if}"))?;
            ip(&format!("-n {ns} link set eth0 up"))?;
            ip(&format!("-n {lb} link set {lb_if} up"))?;
            ip(&format!("-n {ns} route add default via 10.77.{n}.1"))?;
            ip(&format!(
                "-n {ns} neigh replace 10.77.{n}.1 lladdr {near} dev eth0 nud permanent"
            ))?;
            ip(&format!(
                "-n {lb} neigh replace 10.77.{n}.2 lladdr {far} dev {lb_if} nud permanent"
            ))?;
            // The far end owns 10.<n>.0.0/16: clients for net 1, endpoints behind backends.
            ip(&format!("-n {lb} route add 10.{n}.0.0/16 via 10.77.{n}.2"))?;
            if n != 1 {
                ip(&format!("-n {ns} route add local 10.{n}.0.0/16 dev lo"))?;
            }
            // XDP on veth: redirected frames reach the peer only through its NAPI
            // (GRO on), and carry no checksum state, so senders checksum in full
            // (TX offload off). Every mode runs on the same settings.
            netns::run(
                netns::command(&ns, "ethtool").args(["-K", "eth0", "tx", "off", "gro", "on"]),
                Duration::from_secs(20),
            )?;
            self.lb_ifindex[i] = ifindex(&lb, lb_if)?;
        }
        self.attach_sinks()?;
        for (i, b) in self.backends.iter().enumerate() {
            self.servers
                .push(Server::start(b, ["b1", "b2"][i], tcp_cpu)?);
        }
        Ok(())
    }

    /// The sink program at each backend's TC ingress; its counter stays ours.
    fn attach_sinks(&mut self) -> Result<()> {
        let mut storage = MaybeUninit::uninit();
        let skel = BenchSkelBuilder::default()
            .open(&mut storage)
            .context("opening the bench BPF object")?
            .load()
            .context("loading the bench BPF object")?;
        for ns in &self.backends {
            let prog = skel.progs.sink.as_fd();
            netns::in_ns(ns, || {
                let ifindex = ifindex(ns, "eth0")?;
                let mut hook = TcHookBuilder::new(prog)
                    .ifindex(ifindex as i32)
                    .replace(true)
                    .handle(1)
                    .priority(1)
                    .hook(TC_INGRESS);
                hook.create().context("creating clsact")?;
                hook.attach().context("attaching the sink")?;
                Ok(())
            })?;
        }
        self.sink = Some(MapHandle::try_from(&skel.maps.sink_packets)?);
        Ok(())
    }

    /// UDP load packets the backends have received, in total.
    pub fn delivered(&self) -> Result<u64> {
        let map = self.sink.as_ref().context("no sink")?;
        let per_cpu = map
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)?
            .context("the sink counter is missing")?;
        Ok(per_cpu
            .iter()
            .map(|b| u64::from_ne_bytes(b[..8].try_into().expect("8-byte counter")))
            .sum())
    }

    /// The backends' HTTP server threads.
    pub fn server_tids(&self) -> Vec<i32> {
        self.servers.iter().map(|s| s.tid).collect()
    }

    /// Packets the client's eth0 has sent.
    pub fn sent(&self) -> Result<u64> {
        netns::in_ns(&self.client, || {
            // /proc/thread-self/net is this thread's namespace, /proc/self/net the process's.
            let dev = fs::read_to_string("/proc/thread-self/net/dev")?;
            let line = dev
                .lines()
                .find(|l| l.trim_start().starts_with("eth0:"))
                .context("no eth0 in /proc/net/dev")?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            // eth0: rx bytes packets errs drop fifo frame compressed multicast, tx bytes packets
            fields
                .get(10)
                .context("short /proc/net/dev line")?
                .parse()
                .context("parsing tx packets")
        })
    }

    /// Attaches the ceiling program to the client link: by destination /16,
    /// endpoints of b1 and b2 go straight to their backend.
    pub fn attach_ceiling(&self, xdp: bool) -> Result<()> {
        let mut storage = MaybeUninit::uninit();
        let skel = BenchSkelBuilder::default()
            .open(&mut storage)
            .context("opening the bench BPF object")?
            .load()
            .context("loading the bench BPF object")?;
        for (i, net) in [2u8, 3].into_iter().enumerate() {
            let mut hop = self.lb_ifindex[i + 1].to_ne_bytes().to_vec();
            hop.extend_from_slice(&far_mac(net));
            hop.extend_from_slice(&lb_mac(net));
            let key = Ipv4Addr::new(10, net, 0, 0).octets();
            skel.maps
                .ceiling_hops
                .update(&key, &hop, MapFlags::ANY)
                .context("filling ceiling_hops")?;
        }
        let ifindex = self.lb_ifindex[0] as i32;
        let (tc_prog, xdp_prog) = (
            skel.progs.ceiling_tc.as_fd(),
            skel.progs.ceiling_xdp.as_fd(),
        );
        netns::in_ns(&self.lb, || {
            if xdp {
                Xdp::new(xdp_prog)
                    .attach(ifindex, XdpFlags::DRV_MODE)
                    .context("attaching the XDP ceiling")
            } else {
                let mut hook = TcHookBuilder::new(tc_prog)
                    .ifindex(ifindex)
                    .replace(true)
                    .handle(1)
                    .priority(1)
                    .hook(TC_INGRESS);
                hook.create().context("creating clsact")?;
                hook.attach().context("attaching the TC ceiling")?;
                Ok(())
            }
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        self.namespaces.clear();
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

fn ifindex(ns: &str, name: &str) -> Result<u32> {
    let cname = std::ffi::CString::new(name)?;
    netns::in_ns(ns, || {
        // SAFETY: a valid C string; if_nametoindex asks the calling thread's namespace.
        match unsafe { libc::if_nametoindex(cname.as_ptr()) } {
            0 => bail!("{ns}: no interface {name}"),
            i => Ok(i),
        }
    })
}

/// Removes namespaces, pins and temp dirs that killed runs left behind
/// (`llb-<pid>-...` whose pid is gone).
pub fn remove_stale() {
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| dead(n))
                    .collect()
            })
            .unwrap_or_default()
    };
    for ns in names(Path::new("/run/netns")) {
        let _ = ip(&format!("netns del {ns}"));
    }
    for dir in [PathBuf::from("/sys/fs/bpf"), std::env::temp_dir()] {
        for n in names(&dir) {
            let _ = fs::remove_dir_all(dir.join(n));
        }
    }
}
