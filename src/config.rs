//! Daemon configuration: command-line flags over an optional TOML file.
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::api::{check_exposure, ListenAddr, TlsFiles};
use crate::conntrack::AgeingConfig;
use crate::datapath::{default_pin_dir, HookKind, Limits};
use crate::kernel::{Managed, MirrorOptions};
use crate::rules::DefaultPolicy;

/// The config file. Every key is optional; a flag given on the command line
/// wins over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address, e.g. "127.0.0.1:11111" or "unix:/run/loxilight/api.sock".
    pub listen: Option<ListenAddr>,
    /// Prometheus metrics listen address, e.g. "127.0.0.1:11112".
    pub metrics_listen: Option<SocketAddr>,
    /// PEM certificate chain and key: serve the API over TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a plaintext API on a non-loopback address.
    pub insecure: Option<bool>,
    /// Interfaces to attach to; absent: every non-loopback interface.
    pub interfaces: Option<Vec<String>>,
    /// bpffs directory for the pinned maps.
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the service table.
    pub max_services: Option<u32>,
    /// Capacity of the conntrack table (each flow takes two entries).
    pub conntrack_entries: Option<u32>,
    /// `[conntrack]`: timeouts and ageing.
    pub conntrack: Option<ConntrackFile>,
    /// Capacity of each route table (IPv4 and IPv6).
    pub max_routes: Option<u32>,
    /// Capacity of the neighbour table.
    pub max_neighbours: Option<u32>,
    /// "tc" (default) or "xdp".
    pub hook: Option<String>,
    /// Receive buffer of the rtnetlink event socket, in bytes.
    pub netlink_rcvbuf: Option<usize>,
    /// Directory of the state file (the rules, kept across restarts).
    pub state_dir: Option<PathBuf>,
    /// Source ports of source-translated flows (fullnat, onearm), "MIN-MAX".
    pub nat_ports: Option<String>,
    /// `[firewall]`: the default policy.
    pub firewall: Option<FirewallFile>,
}

/// `[firewall]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallFile {
    /// What happens to the first packet of a flow that no rule matches:
    /// "allow" (default) or "drop".
    pub default_policy: Option<String>,
}

impl FirewallFile {
    fn default_policy(&self) -> anyhow::Result<DefaultPolicy> {
        match &self.default_policy {
            None => Ok(DefaultPolicy::default()),
            Some(p) => DefaultPolicy::parse(p).with_context(|| {
                format!("firewall.default_policy: {p:?} is neither \"allow\" nor \"drop\"")
            }),
        }
    }
}

/// A duration in the config file: seconds, or a string with a unit
/// ("500ms", "90s", "5m", "1h", "1d").
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl DurationValue {
    fn parse(&self, key: &str) -> anyhow::Result<Duration> {
        let text = match self {
            DurationValue::Seconds(s) => return Ok(Duration::from_secs(*s)),
            DurationValue::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (n, unit) = text.split_at(split);
        let n: u64 = n.parse().with_context(|| {
            format!("{key}: {text:?} is not a duration (e.g. \"90s\", \"5m\", \"1h\")")
        })?;
        let ms = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => anyhow::bail!("{key}: unknown unit {other:?} in {text:?} (ms, s, m, h or d)"),
        };
        n.checked_mul(ms)
            .map(Duration::from_millis)
            .with_context(|| format!("{key}: {text:?} is too long"))
    }
}

/// `[conntrack]`: how long a flow may stay idle in each state, and how
/// often the table is swept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackFile {
    pub tcp_syn_sent: Option<DurationValue>,
    pub tcp_syn_recv: Option<DurationValue>,
    pub tcp_established: Option<DurationValue>,
    pub tcp_fin_wait: Option<DurationValue>,
    pub tcp_close_wait: Option<DurationValue>,
    pub tcp_last_ack: Option<DurationValue>,
    pub tcp_time_wait: Option<DurationValue>,
    pub tcp_close: Option<DurationValue>,
    /// UDP before the first reply.
    pub udp: Option<DurationValue>,
    /// UDP after a reply.
    pub udp_replied: Option<DurationValue>,
    /// ICMP echo before the first reply.
    pub icmp: Option<DurationValue>,
    /// ICMP echo after a reply.
    pub icmp_replied: Option<DurationValue>,
    /// Pause between two sweeps of the table.
    pub sweep_interval: Option<DurationValue>,
}

impl ConntrackFile {
    fn merge(&self) -> anyhow::Result<AgeingConfig> {
        let mut cfg = AgeingConfig::default();
        let t = &mut cfg.timeouts;
        for (key, value, slot) in [
            ("tcp_syn_sent", &self.tcp_syn_sent, &mut t.tcp_syn_sent),
            ("tcp_syn_recv", &self.tcp_syn_recv, &mut t.tcp_syn_recv),
            (
                "tcp_established",
                &self.tcp_established,
                &mut t.tcp_established,
            ),
            ("tcp_fin_wait", &self.tcp_fin_wait, &mut t.tcp_fin_wait),
            (
                "tcp_close_wait",
                &self.tcp_close_wait,
                &mut t.tcp_close_wait,
            ),
            ("tcp_last_ack", &self.tcp_last_ack, &mut t.tcp_last_ack),
            ("tcp_time_wait", &self.tcp_time_wait, &mut t.tcp_time_wait),
            ("tcp_close", &self.tcp_close, &mut t.tcp_close),
            ("udp", &self.udp, &mut t.udp),
            ("udp_replied", &self.udp_replied, &mut t.udp_replied),
            ("icmp", &self.icmp, &mut t.icmp),
            ("icmp_replied", &self.icmp_replied, &mut t.icmp_replied),
        ] {
            if let Some(v) = value {
                let key = format!("conntrack.{key}");
                *slot = v.parse(&key)?;
                anyhow::ensure!(*slot >= Duration::from_secs(1), "{key} must be at least 1s");
            }
        }
        if let Some(v) = &self.sweep_interval {
            cfg.interval = v.parse("conntrack.sweep_interval")?;
            anyhow::ensure!(
                cfg.interval >= Duration::from_millis(100),
                "conntrack.sweep_interval must be at least 100ms"
            );
        }
        Ok(cfg)
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenAddr,
    pub metrics_listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub mirror: MirrorOptions,
    pub ageing: AgeingConfig,
    pub firewall_default: DefaultPolicy,
    pub nat_ports: RangeInclusive<u16>,
}

/// The default source ports of translated flows: above the well-known ones.
pub const DEFAULT_NAT_PORTS: RangeInclusive<u16> = 1024..=65535;

/// `nat_ports`: "MIN-MAX" with 1 <= MIN <= MAX <= 65535.
pub fn parse_nat_ports(s: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let bad =
        || anyhow::anyhow!("nat_ports: {s:?} is not a port range MIN-MAX (e.g. \"1024-65535\")");
    let (min, max) = s.trim().split_once('-').ok_or_else(bad)?;
    let (min, max): (u16, u16) = (
        min.trim().parse().map_err(|_| bad())?,
        max.trim().parse().map_err(|_| bad())?,
    );
    anyhow::ensure!(
        min >= 1 && min <= max,
        "nat_ports: {s:?} must go from a port 1-65535 up to one at least as high"
    );
    Ok(min..=max)
}

pub fn parse_hook(s: &str) -> anyhow::Result<HookKind> {
    match s {
        "tc" => Ok(HookKind::Tc),
        "xdp" => Ok(HookKind::Xdp),
        other => anyhow::bail!("unknown hook {other:?} (tc or xdp)"),
    }
}

/// Flags given on the command line; each wins over the file.
#[derive(Debug, Default)]
pub struct Overrides {
    pub listen: Option<ListenAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub insecure: bool,
    pub interfaces: Option<Vec<String>>,
    pub pin_dir: Option<PathBuf>,
    pub hook: Option<String>,
    pub state_dir: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:11111";
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:11112";

/// The TLS files from flags over file; a key without a certificate (or the
/// reverse) is a mistake, and so is a client CA without either.
fn tls_files(file: &FileConfig, flags: &Overrides) -> anyhow::Result<Option<TlsFiles>> {
    let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>| flag.clone().or(key.clone());
    let cert = pick(&flags.tls_cert, &file.tls_cert);
    let key = pick(&flags.tls_key, &file.tls_key);
    let client_ca = pick(&flags.tls_client_ca, &file.tls_client_ca);
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => anyhow::bail!("tls_client_ca needs tls_cert and tls_key"),
        _ => anyhow::bail!("tls_cert and tls_key go together: give both or neither"),
    }
}

impl Config {
    /// Flags override the file, which overrides the defaults.
    pub fn merge(file: FileConfig, flags: Overrides) -> anyhow::Result<Config> {
        let tls = tls_files(&file, &flags)?;
        let d = Limits::default();
        let limits = Limits {
            services: file.max_services.unwrap_or(d.services),
            conntrack: file.conntrack_entries.unwrap_or(d.conntrack),
            routes: file.max_routes.unwrap_or(d.routes),
            neighbours: file.max_neighbours.unwrap_or(d.neighbours),
        };
        anyhow::ensure!(
            (1..=65536).contains(&limits.services),
            "max_services must be 1-65536, not {}",
            limits.services
        );
        anyhow::ensure!(
            limits.conntrack >= 2,
            "conntrack_entries must be at least 2"
        );
        anyhow::ensure!(limits.routes >= 1, "max_routes must be at least 1");
        anyhow::ensure!(limits.neighbours >= 1, "max_neighbours must be at least 1");
        let interfaces = flags
            .interfaces
            .or(file.interfaces)
            .filter(|v| !v.is_empty());
        let hook = parse_hook(flags.hook.or(file.hook).as_deref().unwrap_or("tc"))?;
        let ageing = file.conntrack.unwrap_or_default().merge()?;
        let firewall_default = file.firewall.unwrap_or_default().default_policy()?;
        let nat_ports = file
            .nat_ports
            .as_deref()
            .map_or(Ok(DEFAULT_NAT_PORTS), parse_nat_ports)?;
        let listen = flags
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address"));
        check_exposure(
            &listen,
            tls.as_ref(),
            flags.insecure || file.insecure == Some(true),
        )?;
        Ok(Config {
            listen,
            metrics_listen: flags
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| {
                    DEFAULT_METRICS_LISTEN
                        .parse()
                        .expect("valid default address")
                }),
            tls,
            pin_dir: flags
                .pin_dir
                .or(file.pin_dir)
                .unwrap_or_else(default_pin_dir),
            state_dir: flags
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            limits,
            mirror: MirrorOptions {
                managed: interfaces.map_or(Managed::All, Managed::Named),
                hook,
                netlink_rcvbuf: file.netlink_rcvbuf.unwrap_or(DEFAULT_NETLINK_RCVBUF),
                stats: Default::default(),
                links_changed: Default::default(),
            },
            ageing,
            firewall_default,
            nat_ports,
        })
    }
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/loxilight";

impl Config {
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// Big enough for a burst of thousands of route changes.
pub const DEFAULT_NETLINK_RCVBUF: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9\"\ninterfaces = [\"eth0\"]\nmax_services = 10\n",
        )
        .unwrap();
        let flags = Overrides {
            listen: Some("127.0.0.1:7".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::merge(file, flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7".parse().unwrap());
        assert_eq!(c.metrics_listen.port(), 11112);
        assert!(c.tls.is_none());
        assert!(matches!(c.mirror.managed, Managed::Named(ref n) if n == &["eth0"]));
        assert_eq!(c.mirror.hook, HookKind::Tc);
        assert_eq!(c.limits.services, 10);
        assert_eq!(c.pin_dir, default_pin_dir());
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        assert!(toml::from_str::<FileConfig>("listn = \"x\"").is_err());
        let file = FileConfig {
            max_services: Some(0),
            ..Default::default()
        };
        assert!(Config::merge(file, Overrides::default()).is_err());
        let file = FileConfig {
            hook: Some("ebpf".into()),
            ..Default::default()
        };
        assert!(Config::merge(file, Overrides::default()).is_err());
    }

    fn ageing(toml: &str) -> anyhow::Result<AgeingConfig> {
        let file: FileConfig = toml::from_str(toml)?;
        Ok(Config::merge(file, Overrides::default())?.ageing)
    }

    #[test]
    fn conntrack_timeouts_take_units_or_seconds() {
        let a = ageing(
            "[conntrack]\ntcp_time_wait = \"2m\"\nudp = 5\ntcp_established = \"1d\"\nsweep_interval = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(a.timeouts.tcp_time_wait, Duration::from_secs(120));
        assert_eq!(a.timeouts.udp, Duration::from_secs(5));
        assert_eq!(a.timeouts.tcp_established, Duration::from_secs(86400));
        assert_eq!(a.interval, Duration::from_millis(500));
        // Keys not given keep their defaults.
        assert_eq!(a.timeouts.tcp_close, Duration::from_secs(10));
        assert_eq!(ageing("").unwrap(), AgeingConfig::default());
    }

    #[test]
    fn bad_conntrack_keys_are_refused_naming_the_key() {
        let msg = |t: &str| format!("{:#}", ageing(t).unwrap_err());
        assert!(msg("[conntrack]\nudp = \"5x\"").contains("conntrack.udp: unknown unit"));
        assert!(msg("[conntrack]\nudp = \"soon\"").contains("conntrack.udp"));
        assert!(msg("[conntrack]\nudp = 0").contains("conntrack.udp must be at least 1s"));
        assert!(msg("[conntrack]\nsweep_interval = \"10ms\"").contains("sweep_interval"));
        assert!(msg("[conntrack]\ntcp_timewait = 5").contains("tcp_timewait"));
    }

    #[test]
    fn the_packaged_config_documents_every_key_with_its_default() {
        let template = include_str!("../packaging/loxilight.toml");
        // The first commented-out `key = value` of each key, and the
        // `[table]` headers (tables come last), uncommented.
        let mut seen = std::collections::HashSet::new();
        let text: String = template
            .lines()
            .filter_map(|l| {
                let line = l.strip_prefix('#')?;
                if line.starts_with('[') && line.ends_with(']') {
                    return Some(format!("{line}\n"));
                }
                let (key, _) = line.split_once(" = ")?;
                let is_key = key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                (is_key && seen.insert(key)).then(|| format!("{line}\n"))
            })
            .collect();
        // No `..`: a key added to FileConfig does not compile here until it
        // is documented in the packaged file.
        let FileConfig {
            listen,
            metrics_listen,
            tls_cert,
            tls_key,
            tls_client_ca,
            insecure,
            interfaces,
            pin_dir,
            max_services,
            conntrack_entries,
            conntrack,
            max_routes,
            max_neighbours,
            hook,
            netlink_rcvbuf,
            state_dir,
            firewall,
            nat_ports,
        } = toml::from_str(&text).unwrap();
        let d = Limits::default();
        assert_eq!(listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(
            metrics_listen,
            Some(DEFAULT_METRICS_LISTEN.parse().unwrap())
        );
        assert!(tls_cert.is_some() && tls_key.is_some() && tls_client_ca.is_some());
        assert_eq!(insecure, Some(false));
        assert!(interfaces.is_some());
        assert_eq!(pin_dir, Some(default_pin_dir()));
        assert_eq!(max_services, Some(d.services));
        assert_eq!(conntrack_entries, Some(d.conntrack));
        let ageing = conntrack.expect("a [conntrack] table").merge().unwrap();
        assert_eq!(ageing, AgeingConfig::default());
        assert_eq!(max_routes, Some(d.routes));
        assert_eq!(max_neighbours, Some(d.neighbours));
        assert_eq!(hook.as_deref(), Some("tc"));
        assert_eq!(netlink_rcvbuf, Some(DEFAULT_NETLINK_RCVBUF));
        assert_eq!(state_dir, Some(PathBuf::from(DEFAULT_STATE_DIR)));
        let policy = firewall.expect("a [firewall] table").default_policy();
        assert_eq!(policy.unwrap(), DefaultPolicy::default());
        assert_eq!(
            parse_nat_ports(&nat_ports.expect("nat_ports")).unwrap(),
            DEFAULT_NAT_PORTS
        );
    }

    #[test]
    fn the_firewall_default_policy_is_allow_or_drop() {
        let policy = |t: &str| {
            let file: FileConfig = toml::from_str(t)?;
            Config::merge(file, Overrides::default()).map(|c| c.firewall_default)
        };
        assert_eq!(policy("").unwrap(), DefaultPolicy::Allow);
        let drop = "[firewall]\ndefault_policy = \"drop\"";
        assert_eq!(policy(drop).unwrap(), DefaultPolicy::Drop);
        let e = format!(
            "{:#}",
            policy("[firewall]\ndefault_policy = \"deny\"").unwrap_err()
        );
        assert!(e.contains("firewall.default_policy: \"deny\""), "{e}");
        assert!(policy("[firewall]\npolicy = \"drop\"").is_err());
    }

    #[test]
    fn nat_ports_are_a_range_named_in_errors() {
        let merge = |v: &str| {
            let file = FileConfig {
                nat_ports: Some(v.into()),
                ..Default::default()
            };
            Config::merge(file, Overrides::default()).map(|c| c.nat_ports)
        };
        assert_eq!(merge("40000-40015").unwrap(), 40000..=40015);
        assert_eq!(merge(" 7 - 7 ").unwrap(), 7..=7);
        for bad in ["", "1024", "0-10", "20-10", "1-65536", "a-b"] {
            let e = merge(bad).unwrap_err().to_string();
            assert!(e.starts_with("nat_ports: "), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_files_come_in_pairs_and_open_non_loopback_listeners() {
        let file: FileConfig = toml::from_str(
            "listen = \"0.0.0.0:11111\"\ntls_cert = \"/c.pem\"\ntls_client_ca = \"/ca.pem\"\n",
        )
        .unwrap();
        let err = Config::merge(file, Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");

        let file: FileConfig =
            toml::from_str("listen = \"0.0.0.0:11111\"\ntls_cert = \"/c.pem\"\n").unwrap();
        let flags = Overrides {
            tls_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let c = Config::merge(file, flags).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("/c.pem"), Some("/k.pem"))
        );

        let plain: FileConfig = toml::from_str("listen = \"0.0.0.0:11111\"\n").unwrap();
        assert!(Config::merge(plain, Overrides::default()).is_err());
        let insecure: FileConfig =
            toml::from_str("listen = \"0.0.0.0:11111\"\ninsecure = true\n").unwrap();
        assert!(Config::merge(insecure, Overrides::default()).is_ok());
        let unix: FileConfig = toml::from_str("listen = \"unix:/run/l.sock\"\n").unwrap();
        let c = Config::merge(unix, Overrides::default()).unwrap();
        assert_eq!(c.listen, ListenAddr::Unix("/run/l.sock".into()));
    }
}
