//! Daemon configuration: command-line flags over an optional TOML file.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::datapath::{default_pin_dir, HookKind, Limits};
use crate::kernel::{Managed, MirrorOptions};

/// The config file. Every key is optional; a flag given on the command line
/// wins over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// gRPC listen address, e.g. "127.0.0.1:11111".
    pub listen: Option<SocketAddr>,
    /// Interfaces to attach to; absent: every non-loopback interface.
    pub interfaces: Option<Vec<String>>,
    /// bpffs directory for the pinned maps.
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the service table.
    pub max_services: Option<u32>,
    /// Capacity of the conntrack table (each flow takes two entries).
    pub conntrack_entries: Option<u32>,
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
    pub listen: SocketAddr,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub limits: Limits,
    pub mirror: MirrorOptions,
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
    pub listen: Option<SocketAddr>,
    pub interfaces: Option<Vec<String>>,
    pub pin_dir: Option<PathBuf>,
    pub hook: Option<String>,
    pub state_dir: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:11111";

impl Config {
    /// Flags override the file, which overrides the defaults.
    pub fn merge(file: FileConfig, flags: Overrides) -> anyhow::Result<Config> {
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
        Ok(Config {
            listen: flags
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
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
            },
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
        assert_eq!(c.listen.port(), 7);
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
}
