use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::datapath::MAX_ENDPOINTS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// Only address translation: its CRC32c covers the ports (see
    /// `LbRule::validate`).
    Sctp,
    /// Echo requests and replies; the echo identifier stands in for ports.
    Icmp,
}

const PROTOCOLS: &str = "tcp, udp, sctp or icmp";

impl Protocol {
    pub fn parse(field: &str, s: &str) -> Result<Protocol> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            "sctp" => Ok(Protocol::Sctp),
            "icmp" => Ok(Protocol::Icmp),
            "" => Err(Error::invalid(field, format!("is required ({PROTOCOLS})"))),
            other => Err(Error::invalid(
                field,
                format!("unknown protocol {other:?} ({PROTOCOLS})"),
            )),
        }
    }

    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
            Protocol::Icmp => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::Icmp => "icmp",
        }
    }

    /// Whether services of this protocol have ports (ICMP has none).
    pub fn has_ports(self) -> bool {
        self != Protocol::Icmp
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

/// A unicast IPv4 or IPv6 address that traffic can be sent to or
/// translated to. IPv6 link-local addresses are refused: they are never
/// routed, and the datapath leaves them to Linux.
pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let ip: IpAddr = s
        .trim()
        .parse()
        .map_err(|_| Error::invalid(field, format!("{s:?} is not an IP address")))?;
    let unicast = match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast()),
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_multicast() || v6.is_unicast_link_local())
                && v6.to_ipv4_mapped().is_none()
        }
    };
    if !unicast || ip.is_loopback() {
        return Err(Error::invalid(
            field,
            format!("{ip} is not a unicast address"),
        ));
    }
    Ok(ip)
}

/// The name of an address's family, for messages.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
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

/// An endpoint's target port for a service of protocol `proto`: 0 for ICMP,
/// which has no ports; 1-65535 for the others.
pub fn parse_target_port(field: &str, proto: Protocol, p: u32) -> Result<u16> {
    match (proto.has_ports(), p) {
        (true, _) => parse_port(field, p),
        (false, 0) => Ok(0),
        (false, _) => Err(Error::invalid(field, "ICMP has no ports: leave it 0")),
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

/// The identity of a service: a VIP, a protocol and a port or a port range
/// (ICMP: port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    pub ip: IpAddr,
    /// The port, or the first port of the range.
    pub port: u16,
    /// The last port of a range (LoxiLB's `--tcp=8080-8081:32015`, all of
    /// whose ports go to the endpoints' target port); 0: a single port.
    #[serde(default)]
    pub port_max: u16,
    pub proto: Protocol,
}

impl ServiceKey {
    /// The IP protocol number of the service's packets: an IPv6 VIP's
    /// `icmp` is ICMPv6.
    pub fn proto_number(&self) -> u8 {
        match (self.proto, self.ip) {
            (Protocol::Icmp, IpAddr::V6(_)) => 58,
            (proto, _) => proto.number(),
        }
    }

    /// The last port the service matches.
    pub fn last_port(&self) -> u16 {
        self.port_max.max(self.port)
    }

    /// Whether `self` and `other` match a packet in common.
    pub fn overlaps(&self, other: &ServiceKey) -> bool {
        self.ip == other.ip
            && self.proto == other.proto
            && self.port <= other.last_port()
            && other.port <= self.last_port()
    }

    /// The ports as the CLI writes them: `8080` or `8080-8081` (ICMP: empty).
    pub fn ports(&self) -> String {
        match (self.proto.has_ports(), self.port_max) {
            (false, _) => String::new(),
            (true, 0) => self.port.to_string(),
            (true, max) => format!("{}-{max}", self.port),
        }
    }

    /// From the API's fields, naming `{field}.port` or `{field}.port_max` at
    /// fault. A range whose ends are equal is that single port.
    pub fn parse(field: &str, ip: &str, port: u32, port_max: u32, proto: &str) -> Result<Self> {
        let ip = parse_ip(&format!("{field}.external_ip"), ip)?;
        let proto = Protocol::parse(&format!("{field}.protocol"), proto)?;
        if !proto.has_ports() {
            if port != 0 || port_max != 0 {
                return Err(Error::invalid(
                    format!("{field}.port"),
                    "ICMP has no ports: leave port and port_max 0",
                ));
            }
            return Ok(ServiceKey {
                ip,
                port: 0,
                port_max: 0,
                proto,
            });
        }
        let port = parse_port(&format!("{field}.port"), port)?;
        let port_max = match port_max {
            0 => 0,
            m => {
                let m = parse_port(&format!("{field}.port_max"), m)?;
                if m < port {
                    return Err(Error::invalid(
                        format!("{field}.port_max"),
                        format!("{m} is below the first port {port}"),
                    ));
                }
                if m == port {
                    0
                } else {
                    m
                }
            }
        };
        Ok(ServiceKey {
            ip,
            port,
            port_max,
            proto,
        })
    }
}

/// `ip:ports/proto` (ICMP: `ip/icmp`), IPv6 addresses in brackets.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}")?,
            IpAddr::V6(ip) => write!(f, "[{ip}]")?,
        }
        match self.proto.has_ports() {
            true => write!(f, ":{}/{}", self.ports(), self.proto.as_str()),
            false => write!(f, "/{}", self.proto.as_str()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
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
    /// Probe the endpoints; one that is down gets no new flows.
    #[serde(default)]
    pub monitor: bool,
    /// Advertise the VIP over BGP (stored and shown; advertising comes later).
    #[serde(default)]
    pub bgp: bool,
    /// Clients allowed to open flows; empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourcePrefix>,
    /// skb->mark of the service's packets at TC; 0: left alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mark: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Allowed sources per rule at most (the datapath's trie is shared).
pub const MAX_SOURCES: usize = 64;

/// An IPv4 prefix, `10.0.0.0/8` (a bare address is a /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourcePrefix {
    pub ip: Ipv4Addr,
    pub len: u8,
}

impl SourcePrefix {
    pub fn parse(field: &str, s: &str) -> Result<SourcePrefix> {
        let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| Error::invalid(field, format!("{s:?} is not an IPv4 prefix")))?;
        let len: u8 = match len.parse() {
            Ok(l @ 0..=32) => l,
            _ => {
                return Err(Error::invalid(
                    field,
                    format!("{s:?}: the prefix length must be 0-32"),
                ))
            }
        };
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        if u32::from(ip) & !mask != 0 {
            return Err(Error::invalid(
                field,
                format!(
                    "{s:?} has host bits set (the prefix is {}/{len})",
                    Ipv4Addr::from(u32::from(ip) & mask)
                ),
            ));
        }
        Ok(SourcePrefix { ip, len })
    }
}

impl fmt::Display for SourcePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.len)
    }
}

impl Serialize for SourcePrefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SourcePrefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SourcePrefix::parse("sources", &s).map_err(serde::de::Error::custom)
    }
}

/// How an endpoint's health is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeType {
    /// ICMP echo.
    Ping,
    /// A TCP connect.
    Tcp,
    /// A datagram; fails on an ICMP port unreachable or a wrong answer.
    Udp,
    /// GET of the request path; a 2xx status (with the response text, if given).
    Http,
    /// As http, over TLS (the certificate is not verified).
    Https,
}

impl ProbeType {
    pub fn parse(field: &str, s: &str) -> Result<ProbeType> {
        match s.to_ascii_lowercase().as_str() {
            "" | "ping" => Ok(ProbeType::Ping),
            "tcp" => Ok(ProbeType::Tcp),
            "udp" => Ok(ProbeType::Udp),
            "http" => Ok(ProbeType::Http),
            "https" => Ok(ProbeType::Https),
            other => Err(Error::invalid(
                field,
                format!("unknown probe type {other:?} (ping, tcp, udp, http or https)"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProbeType::Ping => "ping",
            ProbeType::Tcp => "tcp",
            ProbeType::Udp => "udp",
            ProbeType::Http => "http",
            ProbeType::Https => "https",
        }
    }
}

/// A health probe of one endpoint address, used for it by every monitored
/// rule (instead of the default TCP connect to the rule's target port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EndpointProbe {
    pub ip: IpAddr,
    pub probe: ProbeType,
    /// 0 for ping.
    pub port: u16,
    /// udp: the datagram sent; http(s): the path.
    pub request: String,
    /// Expected in the answer (udp: the datagram, http(s): the body); empty: anything.
    pub response: String,
    pub period_s: u32,
    /// Consecutive failures that take the endpoint down.
    pub retries: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
}

pub const DEFAULT_PROBE_PERIOD: u32 = 10;
pub const DEFAULT_PROBE_RETRIES: u32 = 2;
pub const DEFAULT_PROBE_RISE: u32 = 2;

impl EndpointProbe {
    /// Fills in the defaults (0 and empty mean "default") and checks the
    /// fields; `field` is the API path of the probe.
    pub fn normalize(mut self, field: &str) -> Result<EndpointProbe> {
        let count = |name: &str, v: u32, default: u32, max: u32| match v {
            0 => Ok(default),
            1.. if v <= max => Ok(v),
            _ => Err(Error::invalid(
                format!("{field}.{name}"),
                format!("{v} is out of range (1-{max})"),
            )),
        };
        self.period_s = count("period", self.period_s, DEFAULT_PROBE_PERIOD, 3600)?;
        self.retries = count("retries", self.retries, DEFAULT_PROBE_RETRIES, 100)?;
        self.rise = count("rise", self.rise, DEFAULT_PROBE_RISE, 100)?;
        self.port = match (self.probe, self.port) {
            (ProbeType::Ping, 0) => 0,
            (ProbeType::Ping, _) => {
                return Err(Error::invalid(
                    format!("{field}.port"),
                    "a ping probe has no port",
                ))
            }
            (ProbeType::Http, 0) => 80,
            (ProbeType::Https, 0) => 443,
            (ProbeType::Tcp | ProbeType::Udp, 0) => {
                return Err(Error::invalid(
                    format!("{field}.port"),
                    format!("a {} probe needs a port", self.probe.as_str()),
                ))
            }
            (_, p) => p,
        };
        if matches!(self.probe, ProbeType::Http | ProbeType::Https) {
            if self.request.is_empty() {
                self.request = "/".into();
            } else if !self.request.starts_with('/') {
                return Err(Error::invalid(
                    format!("{field}.request"),
                    "an http(s) probe request is a path starting with /",
                ));
            }
        }
        for (name, text) in [("request", &self.request), ("response", &self.response)] {
            if text.len() > 255 || text.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    "must be at most 255 characters, without control characters",
                ));
            }
            if self.probe == ProbeType::Ping && !text.is_empty() {
                return Err(Error::invalid(
                    format!("{field}.{name}"),
                    "a ping probe sends and expects no text",
                ));
            }
        }
        if self.probe == ProbeType::Tcp && !(self.request.is_empty() && self.response.is_empty()) {
            return Err(Error::invalid(
                format!("{field}.request"),
                "a tcp probe only connects: no request or response",
            ));
        }
        Ok(self)
    }
}

/// The `persist` stickiness when a rule sets no inactivity timeout.
pub const DEFAULT_INACTIVITY_TIMEOUT: u32 = 1800;

impl LbRule {
    /// The rule's endpoint with this address and port, if it has one.
    pub fn endpoint(&self, ip: IpAddr, port: u16) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.ip == ip && e.port == port)
    }

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
        // What ServiceKey::parse ensures, for rules read back from a file.
        let k = &self.key;
        if (k.port_max != 0 && k.port_max <= k.port) || (!k.proto.has_ports() && k.last_port() != 0)
        {
            return Err(Error::invalid(
                format!("{field}.service.port_max"),
                format!(
                    "{}-{} is not a port range of {}",
                    k.port,
                    k.port_max,
                    k.proto.as_str()
                ),
            ));
        }
        if self.key.proto == Protocol::Sctp {
            self.validate_sctp(field)?;
        }
        self.validate_families(field)?;
        if self.sources.len() > MAX_SOURCES {
            return Err(Error::invalid(
                format!("{field}.sources"),
                format!(
                    "{} prefixes, at most {MAX_SOURCES} are allowed",
                    self.sources.len()
                ),
            ));
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

    /// An IPv6 VIP served by IPv4 endpoints: the datapath translates
    /// between the families (bpf/lib/nat64.h).
    pub fn is_nat64(&self) -> bool {
        self.key.ip.is_ipv6() && self.endpoints.first().is_some_and(|e| e.ip.is_ipv4())
    }

    /// An IPv4 VIP has IPv4 endpoints; an IPv6 VIP has IPv6 endpoints, or
    /// IPv4 ones only (NAT64). An IPv6 VIP has no port ranges, no allowed
    /// sources (IPv4 prefixes) and no ICMP (ICMPv6 is left to Linux), and
    /// the default mode, or for NAT64 fullnat too (which NAT64 always is).
    fn validate_families(&self, field: &str) -> Result<()> {
        let vip = family(self.key.ip);
        // The family every endpoint must have: the VIP's, or for an IPv6
        // VIP the first endpoint's.
        let want = if self.key.ip.is_ipv4() {
            self.key.ip
        } else {
            self.endpoints.first().map_or(self.key.ip, |e| e.ip)
        };
        if let Some(i) = self
            .endpoints
            .iter()
            .position(|e| e.ip.is_ipv4() != want.is_ipv4())
        {
            let e = self.endpoints[i].ip;
            let why = if self.key.ip.is_ipv4() {
                "an IPv4 VIP's endpoints are of its family (NAT46 is not supported)".to_string()
            } else {
                format!(
                    "endpoints[0] is {}, and a rule's endpoints are of one family \
                     (IPv6, or IPv4 for NAT64)",
                    family(want)
                )
            };
            return Err(Error::invalid(
                format!("{field}.endpoints[{i}].ip"),
                format!("{e} is an {} endpoint of an {vip} VIP: {why}", family(e)),
            ));
        }
        if self.key.ip.is_ipv4() {
            return Ok(());
        }
        let nat64 = self.is_nat64();
        // DSR needs the VIP on IPv4 endpoints; NAT64 translates on the way.
        if self.mode == Mode::Dsr || (nat64 && self.mode == Mode::OneArm) {
            return Err(Error::invalid(
                format!("{field}.mode"),
                format!(
                    "{} does not apply to an IPv6 VIP{}: it takes the default mode, fullnat{}",
                    self.mode.as_str(),
                    if nat64 { " with IPv4 endpoints" } else { "" },
                    if nat64 { "" } else { " or onearm" }
                ),
            ));
        }
        if nat64 && !matches!(self.key.proto, Protocol::Tcp | Protocol::Udp) {
            return Err(Error::invalid(
                format!("{field}.service.protocol"),
                format!(
                    "NAT64 (an IPv6 VIP with IPv4 endpoints) takes tcp or udp, not {}",
                    self.key.proto.as_str()
                ),
            ));
        }
        if self.key.port_max != 0 {
            return Err(Error::invalid(
                format!("{field}.service.port_max"),
                "IPv6 VIPs take single ports, no port ranges",
            ));
        }
        if !self.sources.is_empty() {
            return Err(Error::invalid(
                format!("{field}.sources"),
                "allowed sources are IPv4 prefixes: an IPv6 VIP takes none",
            ));
        }
        Ok(())
    }

    /// SCTP's checksum is a CRC32c over the whole packet, not a sum that a
    /// field change can be patched into: translating a port would mean
    /// recomputing it over every packet's payload. Addresses are not
    /// covered, so an SCTP service translates them only.
    fn validate_sctp(&self, field: &str) -> Result<()> {
        if self.key.port_max != 0 {
            return Err(Error::invalid(
                format!("{field}.service.port_max"),
                "SCTP services take one port: a range would translate ports, \
                 which SCTP's CRC32c checksum does not allow",
            ));
        }
        self.require_service_port(
            field,
            "SCTP ports are not translated (its CRC32c checksum covers them)",
        )
    }

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
        self.require_service_port(field, "mode dsr does not change ports")
    }

    /// Every endpoint's target port must be the service's own port.
    fn require_service_port(&self, field: &str, why: &str) -> Result<()> {
        match self.endpoints.iter().position(|e| e.port != self.key.port) {
            Some(i) => Err(Error::invalid(
                format!("{field}.endpoints[{i}].target_port"),
                format!(
                    "{why}: use the service port {}, not {}",
                    self.key.port, self.endpoints[i].port
                ),
            )),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(endpoints: Vec<Endpoint>) -> LbRule {
        LbRule {
            key: ServiceKey {
                ip: Ipv4Addr::new(20, 20, 20, 1).into(),
                port: 2020,
                port_max: 0,
                proto: Protocol::Tcp,
            },
            name: String::new(),
            selection: Selection::RoundRobin,
            mode: Mode::Default,
            endpoints,
            inactivity_timeout: 0,
            monitor: false,
            bgp: false,
            sources: vec![],
            mark: 0,
        }
    }

    fn ep(last: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(31, 31, 31, last).into(),
            port: 8080,
            weight: 1,
        }
    }

    /// An IPv6 VIP takes IPv6 endpoints, or IPv4 ones (NAT64: TCP or UDP,
    /// default or fullnat), never a mix; an IPv4 VIP IPv4 endpoints only.
    #[test]
    fn endpoint_families_and_nat64() {
        let v6 = |endpoints: Vec<Endpoint>, mode: Mode, proto: Protocol| LbRule {
            key: ServiceKey {
                ip: "fd00::100".parse().unwrap(),
                proto,
                ..rule(vec![]).key
            },
            mode,
            ..rule(endpoints)
        };
        let ep6 = Endpoint {
            ip: "fd00::2".parse().unwrap(),
            ..ep(2)
        };
        let err = |r: LbRule| r.validate("lb").unwrap_err().to_string();
        let nat64 = v6(vec![ep(1), ep(2)], Mode::Default, Protocol::Tcp);
        assert!(nat64.is_nat64() && nat64.validate("lb").is_ok());
        assert!(v6(vec![ep(1)], Mode::FullNat, Protocol::Udp)
            .validate("lb")
            .is_ok());
        assert!(!v6(vec![ep6], Mode::Default, Protocol::Tcp).is_nat64());
        assert!(
            err(v6(vec![ep(1)], Mode::OneArm, Protocol::Tcp)).starts_with(
                "lb.mode: onearm does not apply to an IPv6 VIP with IPv4 endpoints: it takes \
                 the default mode, fullnat"
            )
        );
        for mode in [Mode::FullNat, Mode::OneArm] {
            assert!(v6(vec![ep6], mode, Protocol::Tcp).validate("lb").is_ok());
        }
        assert!(err(v6(vec![ep6], Mode::Dsr, Protocol::Tcp))
            .ends_with("an IPv6 VIP: it takes the default mode, fullnat or onearm"));
        // SCTP keeps its ports (validate_sctp): the same port on both sides.
        let same_port = Endpoint {
            port: 2020,
            ..ep(1)
        };
        assert!(
            err(v6(vec![same_port], Mode::Default, Protocol::Sctp)).contains(
                "lb.service.protocol: NAT64 (an IPv6 VIP with IPv4 endpoints) takes tcp or udp"
            )
        );
        assert!(err(v6(vec![ep(1), ep6], Mode::Default, Protocol::Tcp))
            .starts_with("lb.endpoints[1].ip: fd00::2 is an IPv6 endpoint of an IPv6 VIP: endpoints[0] is IPv4"));
        assert!(err(rule(vec![ep(1), ep6]))
            .contains("lb.endpoints[1].ip: fd00::2 is an IPv6 endpoint of an IPv4 VIP"));
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
    fn addresses_must_be_unicast() {
        assert_eq!(
            parse_ip("ip", "20.20.20.1").unwrap(),
            Ipv4Addr::new(20, 20, 20, 1)
        );
        assert_eq!(
            parse_ip("ip", "fd00::2").unwrap(),
            "fd00::2".parse::<IpAddr>().unwrap()
        );
        for bad in [
            "",
            "300.1.1.1",
            "abc",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "::",
            "::1",
            "ff02::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "fd00:",
        ] {
            let e = parse_ip("x.ip", bad).unwrap_err().to_string();
            assert!(e.starts_with("x.ip: "), "{bad}: {e}");
        }
    }

    #[test]
    fn enums_parse_case_insensitively_and_refuse_unknown() {
        assert_eq!(Protocol::parse("p", "TCP").unwrap(), Protocol::Tcp);
        assert_eq!(Protocol::parse("p", "Sctp").unwrap(), Protocol::Sctp);
        assert_eq!(Protocol::parse("p", "icmp").unwrap(), Protocol::Icmp);
        assert!(Protocol::parse("p", "gre")
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
    fn source_prefixes_parse_and_refuse_host_bits() {
        let p = SourcePrefix::parse("s", "10.77.0.0/16").unwrap();
        assert_eq!(
            (p.ip, p.len, p.to_string()),
            (Ipv4Addr::new(10, 77, 0, 0), 16, "10.77.0.0/16".into())
        );
        assert_eq!(SourcePrefix::parse("s", "10.77.1.2").unwrap().len, 32);
        assert_eq!(SourcePrefix::parse("s", "0.0.0.0/0").unwrap().len, 0);
        for (bad, why) in [
            ("10.77.1.2/16", "host bits"),
            ("10.77.0.0/33", "0-32"),
            ("10.77.0.0/x", "0-32"),
            ("fd00::/8", "not an IPv4 prefix"),
            ("", "not an IPv4 prefix"),
        ] {
            let e = SourcePrefix::parse("lb.sources[0]", bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("lb.sources[0]: ") && e.contains(why),
                "{bad}: {e}"
            );
        }
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

    fn parse_key(port: u32, port_max: u32, proto: &str) -> Result<ServiceKey> {
        ServiceKey::parse("lb.service", "20.20.20.1", port, port_max, proto)
    }

    #[test]
    fn port_ranges_are_checked_and_named() {
        let k = parse_key(8080, 8081, "tcp").unwrap();
        assert_eq!((k.port, k.port_max, k.last_port()), (8080, 8081, 8081));
        assert_eq!(k.to_string(), "20.20.20.1:8080-8081/tcp");
        // A range of one port is that port.
        assert_eq!(parse_key(80, 80, "udp").unwrap().port_max, 0);
        assert_eq!(
            parse_key(8081, 8080, "tcp").unwrap_err().to_string(),
            "lb.service.port_max: 8080 is below the first port 8081"
        );
        assert!(parse_key(1, 70000, "tcp")
            .unwrap_err()
            .to_string()
            .starts_with("lb.service.port_max: port 70000"));
        let icmp = parse_key(0, 0, "icmp").unwrap();
        assert_eq!(icmp.to_string(), "20.20.20.1/icmp");
        assert_eq!(
            parse_key(80, 0, "icmp").unwrap_err().to_string(),
            "lb.service.port: ICMP has no ports: leave port and port_max 0"
        );
        assert!(parse_target_port("t", Protocol::Icmp, 80).is_err());
        assert_eq!(parse_target_port("t", Protocol::Icmp, 0).unwrap(), 0);
        assert!(parse_target_port("t", Protocol::Tcp, 0).is_err());
    }

    #[test]
    fn overlaps_need_the_same_address_protocol_and_a_common_port() {
        let range = parse_key(8080, 8090, "tcp").unwrap();
        for (port, max, proto, overlap) in [
            (8090, 0, "tcp", true),
            (8000, 8080, "tcp", true),
            (8085, 8086, "tcp", true),
            (8091, 9000, "tcp", false),
            (8080, 0, "udp", false),
        ] {
            let other = parse_key(port, max, proto).unwrap();
            assert_eq!(range.overlaps(&other), overlap, "{other}");
            assert_eq!(other.overlaps(&range), overlap, "{other}");
        }
    }

    #[test]
    fn sctp_rules_do_not_translate_ports() {
        let mut r = rule(vec![ep(1)]);
        r.key = parse_key(38412, 0, "sctp").unwrap();
        assert_eq!(
            r.validate("lb").unwrap_err().to_string(),
            "lb.endpoints[0].target_port: SCTP ports are not translated \
             (its CRC32c checksum covers them): use the service port 38412, not 8080"
        );
        r.endpoints[0].port = 38412;
        assert!(r.validate("lb").is_ok());
        r.key.port_max = 38413;
        assert!(r
            .validate("lb")
            .unwrap_err()
            .to_string()
            .starts_with("lb.service.port_max: SCTP services take one port"));
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
             use the service port 2020, not 8080"
        );
    }
}
