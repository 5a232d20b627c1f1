use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::datapath::MAX_ENDPOINTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn parse(field: &str, s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "" => Err(Error::invalid(field, "is required (tcp or udp)")),
            other => Err(Error::invalid(
                field,
                format!("unknown protocol {other:?} (tcp or udp)"),
            )),
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Protocol> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How an endpoint is chosen for a new flow. Weights count for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Selection {
    /// Round robin.
    #[default]
    #[serde(rename = "rr")]
    RoundRobin,
    /// Flow hash: one 5-tuple, one endpoint.
    #[serde(rename = "hash")]
    Hash,
    /// Random, in the ratio of the weights.
    #[serde(rename = "priority")]
    Priority,
    /// A client address keeps its endpoint while it stays active.
    #[serde(rename = "persist")]
    Persist,
    /// Least active connections (per weight).
    #[serde(rename = "lc")]
    LeastConnections,
    /// Consistent hashing: removing one of N endpoints moves about 1/N flows.
    #[serde(rename = "maglev")]
    Maglev,
}

const SELECTIONS: &str = "rr, hash, priority, persist, lc or maglev";

impl Selection {
    pub fn parse(field: &str, s: &str) -> Result<Selection> {
        match s.to_ascii_lowercase().as_str() {
            "" | "rr" => Ok(Selection::RoundRobin),
            "hash" => Ok(Selection::Hash),
            "priority" => Ok(Selection::Priority),
            "persist" => Ok(Selection::Persist),
            "lc" => Ok(Selection::LeastConnections),
            "maglev" => Ok(Selection::Maglev),
            other => Err(Error::invalid(
                field,
                format!("unknown selection {other:?} ({SELECTIONS})"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Selection::RoundRobin => "rr",
            Selection::Hash => "hash",
            Selection::Priority => "priority",
            Selection::Persist => "persist",
            Selection::LeastConnections => "lc",
            Selection::Maglev => "maglev",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// DNAT to the endpoint, reverse translation on replies.
    #[default]
    Default,
    /// Out the interface the packet came in, with its source translated to
    /// the LB's address there, so that replies come back through the LB.
    OneArm,
    /// Source translated to the LB's address towards the endpoint, so that
    /// endpoints need no route back to clients.
    FullNat,
    /// L2 direct server return: only the destination MAC changes; endpoints
    /// hold the VIP themselves and answer clients directly.
    Dsr,
}

impl Mode {
    pub fn parse(field: &str, s: &str) -> Result<Mode> {
        match s.to_ascii_lowercase().as_str() {
            "" | "default" => Ok(Mode::Default),
            "onearm" => Ok(Mode::OneArm),
            "fullnat" => Ok(Mode::FullNat),
            "dsr" => Ok(Mode::Dsr),
            other => Err(Error::invalid(
                field,
                format!("unknown mode {other:?} (default, onearm, fullnat, dsr)"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Default => "default",
            Mode::OneArm => "onearm",
            Mode::FullNat => "fullnat",
            Mode::Dsr => "dsr",
        }
    }
}

/// A unicast IPv4 address that traffic can be sent to or translated to.
pub fn parse_ip(field: &str, s: &str) -> Result<Ipv4Addr> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let ip: Ipv4Addr = s.trim().parse().map_err(|_| {
        if s.contains(':') {
            Error::invalid(field, format!("{s:?}: IPv6 is not supported yet"))
        } else {
            Error::invalid(field, format!("{s:?} is not an IPv4 address"))
        }
    })?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        return Err(Error::invalid(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(ip)
}

pub fn parse_port(field: &str, p: u32) -> Result<u16> {
    match u16::try_from(p) {
        Ok(0) => Err(Error::invalid(field, "port 0 is not allowed (1-65535)")),
        Ok(p) => Ok(p),
        Err(_) => Err(Error::invalid(
            field,
            format!("port {p} is out of range (1-65535)"),
        )),
    }
}

/// 0 (unset) means 1.
pub fn parse_weight(field: &str, w: u32) -> Result<u8> {
    match w {
        0 => Ok(1),
        1..=255 => Ok(w as u8),
        _ => Err(Error::invalid(
            field,
            format!("weight {w} is out of range (1-255)"),
        )),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbRule {
    pub key: ServiceKey,
    pub name: String,
    pub selection: Selection,
    pub mode: Mode,
    pub endpoints: Vec<Endpoint>,
    /// Seconds a client stays stuck to its endpoint without traffic
    /// (`persist` selection); 0 means the default.
    #[serde(default)]
    pub inactivity_timeout: u32,
}

/// The `persist` stickiness when a rule sets no inactivity timeout.
pub const DEFAULT_INACTIVITY_TIMEOUT: u32 = 1800;

impl LbRule {
    /// Checks what single fields cannot: the endpoint list and the name.
    /// `field` is the API path of the rule, for error messages.
    pub fn validate(&self, field: &str) -> Result<()> {
        if self.endpoints.is_empty() {
            return Err(Error::invalid(
                format!("{field}.endpoints"),
                "at least one endpoint is required",
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(Error::invalid(
                format!("{field}.endpoints"),
                format!(
                    "{} endpoints, at most {MAX_ENDPOINTS} are allowed",
                    self.endpoints.len()
                ),
            ));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if self.endpoints[..i]
                .iter()
                .any(|o| o.ip == e.ip && o.port == e.port)
            {
                return Err(Error::invalid(
                    format!("{field}.endpoints[{i}]"),
                    format!("{}:{} is listed twice", e.ip, e.port),
                ));
            }
        }
        if self.mode == Mode::Dsr {
            self.validate_dsr(field)?;
        }
        if self.name.len() > 63
            || self
                .name
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::invalid(
                format!("{field}.name"),
                "must be at most 63 characters, without spaces or control characters",
            ));
        }
        Ok(())
    }
}

impl LbRule {
    /// DSR keeps no reply state: every packet of a flow must find the same
    /// endpoint by its hash, and the endpoint receives the packet unchanged.
    fn validate_dsr(&self, field: &str) -> Result<()> {
        if self.selection != Selection::Hash {
            return Err(Error::invalid(
                format!("{field}.selection"),
                format!(
                    "mode dsr needs selection hash, not {}",
                    self.selection.as_str()
                ),
            ));
        }
        if let Some(i) = self.endpoints.iter().position(|e| e.port != self.key.port) {
            return Err(Error::invalid(
                format!("{field}.endpoints[{i}].target_port"),
                format!(
                    "mode dsr does not change ports: must be the service port {}, not {}",
                    self.key.port, self.endpoints[i].port
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(endpoints: Vec<Endpoint>) -> LbRule {
        LbRule {
            key: ServiceKey {
                ip: Ipv4Addr::new(20, 20, 20, 1),
                port: 2020,
                proto: Protocol::Tcp,
            },
            name: String::new(),
            selection: Selection::RoundRobin,
            mode: Mode::Default,
            endpoints,
            inactivity_timeout: 0,
        }
    }

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(31, 31, 31, last),
            port: 8080,
            weight: 1,
        }
    }

    #[test]
    fn ports_are_checked_and_named() {
        assert_eq!(parse_port("p", 1).unwrap(), 1);
        assert_eq!(parse_port("p", 65535).unwrap(), 65535);
        assert_eq!(
            parse_port("svc.port", 0).unwrap_err().to_string(),
            "svc.port: port 0 is not allowed (1-65535)"
        );
        assert!(parse_port("p", 65536)
            .unwrap_err()
            .to_string()
            .contains("65536 is out of range"));
    }

    #[test]
    fn addresses_must_be_unicast_ipv4() {
        assert_eq!(
            parse_ip("ip", "20.20.20.1").unwrap(),
            Ipv4Addr::new(20, 20, 20, 1)
        );
        for bad in [
            "",
            "300.1.1.1",
            "abc",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "fd00::1",
        ] {
            let e = parse_ip("x.ip", bad).unwrap_err().to_string();
            assert!(e.starts_with("x.ip: "), "{bad}: {e}");
        }
    }

    #[test]
    fn enums_parse_case_insensitively_and_refuse_unknown() {
        assert_eq!(Protocol::parse("p", "TCP").unwrap(), Protocol::Tcp);
        assert!(Protocol::parse("p", "sctp")
            .unwrap_err()
            .to_string()
            .contains("unknown protocol"));
        assert_eq!(Selection::parse("s", "").unwrap(), Selection::RoundRobin);
        assert_eq!(Selection::parse("s", "hash").unwrap(), Selection::Hash);
        assert_eq!(Selection::parse("s", "maglev").unwrap(), Selection::Maglev);
        assert_eq!(
            Selection::parse("s", "LC").unwrap(),
            Selection::LeastConnections
        );
        assert!(Selection::parse("s", "wrr")
            .unwrap_err()
            .to_string()
            .contains("maglev"));
        assert_eq!(Mode::parse("m", "DSR").unwrap(), Mode::Dsr);
        assert_eq!(Mode::parse("m", "onearm").unwrap(), Mode::OneArm);
        assert_eq!(Mode::parse("m", "fullnat").unwrap(), Mode::FullNat);
        assert!(Mode::parse("m", "l3dsr")
            .unwrap_err()
            .to_string()
            .contains("onearm, fullnat, dsr"));
        assert_eq!(parse_weight("w", 0).unwrap(), 1);
        assert!(parse_weight("w", 256).is_err());
    }

    #[test]
    fn endpoint_lists_are_validated() {
        assert!(rule(vec![ep(1), ep(2)]).validate("lb").is_ok());
        assert_eq!(
            rule(vec![]).validate("lb").unwrap_err().to_string(),
            "lb.endpoints: at least one endpoint is required"
        );
        let e = rule(vec![ep(1), ep(1)])
            .validate("lb")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("lb.endpoints[1]: "), "{e}");
        let many = (0..=MAX_ENDPOINTS as u8).map(ep).collect();
        assert!(rule(many).validate("lb").is_err());
    }

    #[test]
    fn dsr_needs_hash_and_unchanged_ports() {
        let same_port = |last| Endpoint {
            port: 2020,
            ..ep(last)
        };
        let mut r = LbRule {
            mode: Mode::Dsr,
            ..rule(vec![same_port(1), same_port(2)])
        };
        assert_eq!(
            r.validate("lb").unwrap_err().to_string(),
            "lb.selection: mode dsr needs selection hash, not rr"
        );
        r.selection = Selection::Hash;
        assert!(r.validate("lb").is_ok());
        r.endpoints[1].port = 8080;
        assert_eq!(
            r.validate("lb").unwrap_err().to_string(),
            "lb.endpoints[1].target_port: mode dsr does not change ports: \
             must be the service port 2020, not 8080"
        );
    }
}
