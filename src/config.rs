//! Daemon configuration: command-line flags over an optional TOML file.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use crate::datapath::{default_pin_dir, Limits};
use crate::kernel::Managed;

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
    pub managed: Managed,
    pub pin_dir: PathBuf,
    pub limits: Limits,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:11111";

impl Config {
    /// Flags (`Some`) override the file, which overrides the defaults.
    pub fn merge(
        file: FileConfig,
        listen: Option<SocketAddr>,
        interfaces: Option<Vec<String>>,
        pin_dir: Option<PathBuf>,
    ) -> anyhow::Result<Config> {
        let defaults = Limits::default();
        let limits = Limits {
            services: file.max_services.unwrap_or(defaults.services),
            conntrack: file.conntrack_entries.unwrap_or(defaults.conntrack),
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
        let interfaces = interfaces.or(file.interfaces).filter(|v| !v.is_empty());
        Ok(Config {
            listen: listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default address")),
            managed: interfaces.map_or(Managed::All, Managed::Named),
            pin_dir: pin_dir.or(file.pin_dir).unwrap_or_else(default_pin_dir),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:9\"\ninterfaces = [\"eth0\"]\nmax_services = 10\n",
        )
        .unwrap();
        let c = Config::merge(file, Some("127.0.0.1:7".parse().unwrap()), None, None).unwrap();
        assert_eq!(c.listen.port(), 7);
        assert!(matches!(c.managed, Managed::Named(ref n) if n == &["eth0"]));
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
        assert!(Config::merge(file, None, None, None).is_err());
    }
}
