//! Firewall rules, LoxiLB-compatible: a match (prefixes, port ranges,
//! protocol, input interface) with a preference, and one action.
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// IP protocols whose headers carry ports: TCP, UDP and SCTP.
pub const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// An address prefix without host bits, e.g. `10.0.0.0/8` or `fd00::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    /// `ADDR/LEN`, or a bare address (a host prefix). Host bits are refused
    /// rather than cleared, so that the text of a rule is its identity.
    pub fn parse(field: &str, s: &str) -> Result<IpPrefix> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            Error::invalid(
                field,
                format!("{s:?} is not an address or ADDRESS/LENGTH prefix"),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && l.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => {
                    return Err(Error::invalid(
                        field,
                        format!("{s:?}: the prefix length must be 0-{max}"),
                    ))
                }
            },
        };
        let p = IpPrefix { addr, len };
        let net = p.network();
        if net != addr {
            return Err(Error::invalid(
                field,
                format!("{s:?} has host bits set (the prefix is {net}/{len})"),
            ));
        }
        Ok(p)
    }

    /// The address with the bits past the prefix length cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                IpAddr::from((u128::from(a) & mask).to_be_bytes())
            }
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl From<IpPrefix> for String {
    fn from(p: IpPrefix) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for IpPrefix {
    type Error = Error;
    fn try_from(s: String) -> Result<IpPrefix> {
        IpPrefix::parse("prefix", &s)
    }
}

/// An inclusive port range; `0-65535` matches any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub const ANY: PortRange = PortRange { min: 0, max: 65535 };

    /// LoxiLB's min/max pair: both 0 is any port, a max of 0 means just
    /// `min`. The fields are the API paths of the two, for errors.
    pub fn parse(min_field: &str, max_field: &str, min: u32, max: u32) -> Result<PortRange> {
        let port = |field: &str, p: u32| {
            u16::try_from(p)
                .map_err(|_| Error::invalid(field, format!("port {p} is out of range (0-65535)")))
        };
        let (lo, hi) = (port(min_field, min)?, port(max_field, max)?);
        match (lo, hi) {
            (0, 0) => Ok(PortRange::ANY),
            (p, 0) => Ok(PortRange { min: p, max: p }),
            (lo, hi) if lo > hi => Err(Error::invalid(
                min_field,
                format!("{lo} is above {max_field} {hi}"),
            )),
            (min, max) => Ok(PortRange { min, max }),
        }
    }

    pub fn is_any(&self) -> bool {
        *self == PortRange::ANY
    }
}

/// What a rule matches; with the preference, the identity of the rule (as
/// in LoxiLB, where delete names the same arguments as create).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FwMatch {
    /// None matches any source (both address families).
    pub source: Option<IpPrefix>,
    pub destination: Option<IpPrefix>,
    pub source_ports: PortRange,
    pub destination_ports: PortRange,
    /// IP protocol number; None matches any.
    pub protocol: Option<u8>,
    /// Input interface by name; None matches any.
    pub port_name: Option<String>,
    /// Higher wins.
    pub preference: u32,
}

impl fmt::Display for FwMatch {
    /// LoxiLB's `--firewallRule` syntax, with only the keys that are set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(p) = self.source {
            parts.push(format!("sourceIP:{p}"));
        }
        if let Some(p) = self.destination {
            parts.push(format!("destinationIP:{p}"));
        }
        for (name, r) in [
            ("Source", self.source_ports),
            ("Destination", self.destination_ports),
        ] {
            if !r.is_any() {
                parts.push(format!("min{name}Port:{},max{name}Port:{}", r.min, r.max));
            }
        }
        if let Some(p) = self.protocol {
            parts.push(format!("protocol:{p}"));
        }
        if let Some(n) = &self.port_name {
            parts.push(format!("portName:{n}"));
        }
        parts.push(format!("preference:{}", self.preference));
        f.write_str(&parts.join(","))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FwAction {
    Allow,
    Drop,
    /// Hand the packet to Linux.
    Trap,
    /// Send the packet out of this interface (by name).
    Redirect(String),
    /// Source NAT to this address, and port when given.
    Snat {
        ip: IpAddr,
        port: Option<u16>,
    },
    /// Source NAT to the address of the outgoing interface.
    Masquerade,
}

impl FwAction {
    pub fn as_str(&self) -> &'static str {
        match self {
            FwAction::Allow => "allow",
            FwAction::Drop => "drop",
            FwAction::Trap => "trap",
            FwAction::Redirect(_) => "redirect",
            FwAction::Snat { .. } => "snat",
            FwAction::Masquerade => "masquerade",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FwRule {
    #[serde(rename = "match")]
    pub matches: FwMatch,
    pub action: FwAction,
    /// Count the rule's hits and report each new flow it judges.
    #[serde(default)]
    pub record: bool,
    /// Set this skb mark on what the rule judges.
    #[serde(default)]
    pub mark: Option<u32>,
}

impl FwRule {
    /// Checks what single fields cannot. `m` is the API path of the match
    /// and `o` that of the options, for error messages.
    pub fn validate(&self, m: &str, o: &str) -> Result<()> {
        let r = &self.matches;
        let ported = r.protocol.is_some_and(|p| PORT_PROTOCOLS.contains(&p));
        for (name, ports) in [
            ("source", r.source_ports),
            ("destination", r.destination_ports),
        ] {
            if !ports.is_any() && !ported {
                return Err(Error::invalid(
                    format!("{m}.min_{name}_port"),
                    "a port range needs protocol 6 (TCP), 17 (UDP) or 132 (SCTP)",
                ));
            }
        }
        if let (Some(s), Some(d)) = (r.source, r.destination) {
            if s.addr.is_ipv4() != d.addr.is_ipv4() {
                return Err(Error::invalid(
                    format!("{m}.destination_ip"),
                    format!("{d} and source {s} are of different address families"),
                ));
            }
        }
        if let Some(name) = &r.port_name {
            check_ifname(&format!("{m}.port_name"), name)?;
        }
        match &self.action {
            FwAction::Redirect(name) => check_ifname(&format!("{o}.redirect"), name)?,
            FwAction::Snat { ip, port } => {
                let family = r.source.or(r.destination).map(|p| p.addr.is_ipv4());
                match family {
                    None => {
                        return Err(Error::invalid(
                            format!("{o}.snat_ip"),
                            "SNAT needs a sourceIP or destinationIP of the same family in the \
                             match (e.g. sourceIP:0.0.0.0/0)",
                        ))
                    }
                    Some(v4) if v4 != ip.is_ipv4() => {
                        return Err(Error::invalid(
                            format!("{o}.snat_ip"),
                            format!("{ip} is not of the match's address family"),
                        ))
                    }
                    Some(_) => {}
                }
                if *port == Some(0) {
                    return Err(Error::invalid(
                        format!("{o}.snat_port"),
                        "port 0 is not allowed (1-65535)",
                    ));
                }
            }
            FwAction::Masquerade | FwAction::Allow | FwAction::Drop | FwAction::Trap => {}
        }
        Ok(())
    }
}

/// A Linux interface name: 1-15 bytes, no '/', ':' or white space.
fn check_ifname(field: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == ',' || c.is_whitespace() || c.is_control())
    {
        return Err(Error::invalid(
            field,
            format!("{name:?} is not an interface name"),
        ));
    }
    Ok(())
}

/// The policy for first packets that no rule matches (config
/// `[firewall] default_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    #[default]
    Allow,
    Drop,
}

impl DefaultPolicy {
    pub fn parse(s: &str) -> Option<DefaultPolicy> {
        match s {
            "allow" => Some(DefaultPolicy::Allow),
            "drop" => Some(DefaultPolicy::Drop),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Allow => "allow",
            DefaultPolicy::Drop => "drop",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn prefixes_parse_and_name_the_field_when_bad() {
        let p = IpPrefix::parse("f", "10.1.0.0/16").unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        assert_eq!(IpPrefix::parse("f", "1.2.3.2").unwrap().len, 32);
        assert_eq!(IpPrefix::parse("f", "fd00::1").unwrap().len, 128);
        assert_eq!(IpPrefix::parse("f", "0.0.0.0/0").unwrap().len, 0);
        assert_eq!(IpPrefix::parse("f", "::/0").unwrap().to_string(), "::/0");
        for (bad, why) in [
            ("1.2.3", "is not an address"),
            ("1.2.3.4/33", "0-32"),
            ("fd00::/129", "0-128"),
            ("1.2.3.4/-1", "0-32"),
            ("1.2.3.4/+8", "0-32"),
            ("10.1.2.3/16", "host bits set (the prefix is 10.1.0.0/16)"),
            ("", "is not an address"),
        ] {
            let e = err(IpPrefix::parse("m.source_ip", bad));
            assert!(
                e.starts_with("m.source_ip: ") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn port_ranges_follow_loxilb() {
        assert_eq!(PortRange::parse("a", "b", 0, 0).unwrap(), PortRange::ANY);
        assert_eq!(
            PortRange::parse("a", "b", 80, 0).unwrap(),
            PortRange { min: 80, max: 80 }
        );
        assert_eq!(
            PortRange::parse("a", "b", 0, 1023).unwrap(),
            PortRange { min: 0, max: 1023 }
        );
        assert_eq!(
            err(PortRange::parse(
                "m.min_source_port",
                "m.max_source_port",
                65536,
                0
            )),
            "m.min_source_port: port 65536 is out of range (0-65535)"
        );
        assert!(err(PortRange::parse("a", "m.max_dp", 1, 70000)).starts_with("m.max_dp: "));
        assert_eq!(
            err(PortRange::parse(
                "m.min_source_port",
                "m.max_source_port",
                90,
                80
            )),
            "m.min_source_port: 90 is above m.max_source_port 80"
        );
    }

    fn rule(protocol: Option<u8>, action: FwAction) -> FwRule {
        FwRule {
            matches: FwMatch {
                source: Some(IpPrefix::parse("f", "10.0.0.0/8").unwrap()),
                destination: None,
                source_ports: PortRange::ANY,
                destination_ports: PortRange { min: 80, max: 80 },
                protocol,
                port_name: Some("eth1".into()),
                preference: 200,
            },
            action,
            record: false,
            mark: None,
        }
    }

    #[test]
    fn rules_are_checked_across_fields() {
        assert!(rule(Some(6), FwAction::Drop).validate("m", "o").is_ok());
        assert!(rule(Some(132), FwAction::Allow).validate("m", "o").is_ok());
        for proto in [None, Some(1)] {
            let e = err(rule(proto, FwAction::Drop).validate("m", "o"));
            assert!(
                e.starts_with("m.min_destination_port: a port range needs"),
                "{e}"
            );
        }
        let mut r = rule(Some(6), FwAction::Drop);
        r.matches.destination = Some(IpPrefix::parse("f", "fd00::/8").unwrap());
        assert!(err(r.validate("m", "o")).starts_with("m.destination_ip: "));

        let snat = |ip: &str| FwAction::Snat {
            ip: ip.parse().unwrap(),
            port: Some(4000),
        };
        assert!(rule(Some(6), snat("192.0.2.1")).validate("m", "o").is_ok());
        assert!(err(rule(Some(6), snat("fd00::1")).validate("m", "o"))
            .starts_with("o.snat_ip: fd00::1 is not of the match's address family"));
        let mut r = rule(Some(6), snat("fd00::1"));
        r.matches.source = Some(IpPrefix::parse("f", "fd00::/8").unwrap());
        assert!(r.validate("m", "o").is_ok());
        r.action = FwAction::Masquerade;
        assert!(r.validate("m", "o").is_ok());
        let mut r = rule(Some(6), snat("192.0.2.1"));
        r.matches.source = None;
        assert!(err(r.validate("m", "o")).contains("SNAT needs a sourceIP"));
        let mut r = rule(Some(6), FwAction::Drop);
        r.matches.port_name = Some("a b".into());
        assert!(err(r.validate("m", "o")).starts_with("m.port_name: "));
        assert!(
            err(rule(Some(6), FwAction::Redirect(String::new())).validate("m", "o"))
                .starts_with("o.redirect: ")
        );
    }

    #[test]
    fn the_match_prints_in_loxilb_syntax() {
        assert_eq!(
            rule(Some(6), FwAction::Drop).matches.to_string(),
            "sourceIP:10.0.0.0/8,minDestinationPort:80,maxDestinationPort:80,protocol:6,\
             portName:eth1,preference:200"
        );
    }

    /// SNAT targets go through the same address parser as endpoints.
    #[test]
    fn snat_addresses_must_be_unicast() {
        assert!(crate::rules::parse_ip("s", "fd00::5").is_ok());
        for bad in [
            "",
            "x",
            "0.0.0.0",
            "224.0.0.1",
            "127.0.0.1",
            "::",
            "fe80::1",
        ] {
            let e = crate::rules::parse_ip("o.snat_ip", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("o.snat_ip: "), "{e}");
        }
    }
}
