//! State and protocol names, and the filter that selects entries by them.
use std::net::IpAddr;

use super::table::{shown, View};
use crate::datapath::types::ll_ct_state;
use crate::rules::{Error, Result};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const SCTP: u8 = 132;
const ICMPV6: u8 = 58;

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        TCP => "tcp",
        UDP => "udp",
        ICMP => "icmp",
        SCTP => "sctp",
        ICMPV6 => "icmp6",
        _ => "-",
    }
}

fn parse_proto(field: &str, s: &str) -> Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(TCP),
        "udp" => Ok(UDP),
        "icmp" => Ok(ICMP),
        "sctp" => Ok(SCTP),
        "icmp6" => Ok(ICMPV6),
        other => Err(Error::invalid(
            field,
            format!("unknown protocol {other:?} (tcp, udp, sctp, icmp or icmp6)"),
        )),
    }
}

/// Every state name with its protocol and datapath state. TCP names follow
/// LoxiLB's; the other protocols only tell whether a reply was seen.
const STATES: [(&str, u8, ll_ct_state); 14] = [
    ("syn-sent", TCP, ll_ct_state::LL_CT_SYN_SENT),
    ("syn-recv", TCP, ll_ct_state::LL_CT_SYN_RECV),
    ("est", TCP, ll_ct_state::LL_CT_ESTABLISHED),
    ("fin-wait", TCP, ll_ct_state::LL_CT_FIN_WAIT),
    ("close-wait", TCP, ll_ct_state::LL_CT_CLOSE_WAIT),
    ("last-ack", TCP, ll_ct_state::LL_CT_LAST_ACK),
    ("time-wait", TCP, ll_ct_state::LL_CT_TIME_WAIT),
    ("closed", TCP, ll_ct_state::LL_CT_CLOSE),
    ("udp-new", UDP, ll_ct_state::LL_CT_UNREPLIED),
    ("udp-est", UDP, ll_ct_state::LL_CT_REPLIED),
    ("icmp-new", ICMP, ll_ct_state::LL_CT_UNREPLIED),
    ("icmp-est", ICMP, ll_ct_state::LL_CT_REPLIED),
    ("new", 0, ll_ct_state::LL_CT_UNREPLIED),
    ("est", 0, ll_ct_state::LL_CT_REPLIED),
];

/// The protocol whose states (names, timeouts) a flow of `proto` goes
/// through: SCTP TCP's (bpf/lib/common.h), ICMPv6 echo ICMP echo's.
pub fn states_of(proto: u8) -> u8 {
    match proto {
        SCTP => TCP,
        ICMPV6 => ICMP,
        _ => proto,
    }
}

/// The name of state `st` of a flow of protocol `proto`.
pub fn state_name(proto: u8, st: ll_ct_state) -> &'static str {
    let proto = match states_of(proto) {
        p @ (TCP | UDP | ICMP) => p,
        _ => 0,
    };
    STATES
        .iter()
        .find(|(_, p, s)| *p == proto && *s == st)
        .map_or("-", |(name, _, _)| name)
}

/// Which entries a request is about; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The source, destination or translated address.
    pub ip: Option<IpAddr>,
    /// The source, destination or translated port.
    pub port: Option<u16>,
    pub proto: Option<u8>,
    pub state: Option<ll_ct_state>,
}

impl Filter {
    /// From the API's fields (empty or 0: any), naming the field at fault
    /// under `prefix`, e.g. "filter.port".
    pub fn parse(prefix: &str, ip: &str, port: u32, protocol: &str, state: &str) -> Result<Filter> {
        let field = |f: &str| format!("{prefix}.{f}");
        let ip =
            match ip.trim() {
                "" => None,
                s => Some(s.parse().map_err(|_| {
                    Error::invalid(field("ip"), format!("{s:?} is not an IP address"))
                })?),
            };
        let port = match port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                Error::invalid(field("port"), format!("port {p} is out of range (1-65535)"))
            })?),
        };
        let proto = match protocol.trim() {
            "" => None,
            s => Some(parse_proto(&field("protocol"), s)?),
        };
        let state = match state.trim() {
            "" => None,
            s => {
                let s = s.to_ascii_lowercase();
                let states_of = proto.map(states_of);
                // "est" is TCP's unless the protocol says otherwise.
                let (_, p, st) = STATES
                    .iter()
                    .find(|(name, p, _)| *name == s && states_of.is_none_or(|q| q == *p || *p == 0))
                    .or_else(|| STATES.iter().find(|(name, _, _)| *name == s))
                    .ok_or_else(|| {
                        let names: Vec<&str> = STATES[..12].iter().map(|(n, _, _)| *n).collect();
                        Error::invalid(
                            field("state"),
                            format!("unknown state {s:?} ({})", names.join(", ")),
                        )
                    })?;
                if let Some(q) = proto.filter(|_| states_of.is_some_and(|q| *p != 0 && q != *p)) {
                    return Err(Error::invalid(
                        field("state"),
                        format!("{s} is a {} state, not {}", proto_name(*p), proto_name(q)),
                    ));
                }
                Some(*st)
            }
        };
        Ok(Filter {
            ip,
            port,
            proto,
            state,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub(crate) fn matches(&self, e: &View) -> bool {
        let (k, n) = (&e.key, &e.nat);
        if self.proto.is_some_and(|p| p != k.proto) {
            return false;
        }
        if self.state.is_some_and(|s| s != e.ct.state) {
            return false;
        }
        if self
            .ip
            .is_some_and(|ip| ![k.src, k.dst, n.src, n.dst].map(shown).contains(&ip))
        {
            return false;
        }
        if self
            .port
            .is_some_and(|p| ![k.sport, k.dport, n.sport, n.dport].contains(&p))
        {
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::Table;
    use super::*;
    use crate::datapath::types::{ll_addrs6, ll_xlate};
    use crate::datapath::types::{ll_ct, ll_ct6, ll_ct6_key, ll_ct_dir, ll_ct_key, ll_tuple};
    use crate::datapath::{Ct4, Ct6};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn parse(ip: &str, port: u32, proto: &str, state: &str) -> Result<Filter> {
        Filter::parse("filter", ip, port, proto, state)
    }

    fn err(r: Result<Filter>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn every_datapath_state_has_a_name() {
        for st in 0..ll_ct_state::LL_CT_STATE_MAX.0 {
            let st = ll_ct_state(st);
            let names: Vec<&str> = [TCP, UDP, ICMP]
                .iter()
                .map(|&p| state_name(p, st))
                .filter(|n| *n != "-")
                .collect();
            assert!(!names.is_empty(), "{st:?} has no name");
        }
        assert_eq!(state_name(TCP, ll_ct_state::LL_CT_TIME_WAIT), "time-wait");
        assert_eq!(state_name(UDP, ll_ct_state::LL_CT_REPLIED), "udp-est");
        assert_eq!(state_name(ICMP, ll_ct_state::LL_CT_UNREPLIED), "icmp-new");
        assert_eq!(state_name(UDP, ll_ct_state::LL_CT_ESTABLISHED), "-");
        assert_eq!(state_name(SCTP, ll_ct_state::LL_CT_SYN_SENT), "syn-sent");
    }

    #[test]
    fn names_parse_back_to_their_state() {
        for (name, proto, st) in &STATES[..12] {
            let f = parse("", 0, proto_name(*proto), name).unwrap();
            assert_eq!(f.state, Some(*st), "{name}");
            assert_eq!(state_name(*proto, *st), *name);
        }
        assert_eq!(
            parse("", 0, "", "EST").unwrap().state,
            Some(ll_ct_state::LL_CT_ESTABLISHED)
        );
        // SCTP's states are TCP's.
        let f = parse("", 0, "sctp", "est").unwrap();
        assert_eq!(
            (f.proto, f.state),
            (Some(SCTP), Some(ll_ct_state::LL_CT_ESTABLISHED))
        );
        assert_eq!(
            err(parse("", 0, "sctp", "udp-est")),
            "filter.state: udp-est is a udp state, not sctp"
        );
        // ICMPv6 echo's are ICMP's.
        let f = parse("", 0, "icmp6", "icmp-est").unwrap();
        assert_eq!(
            (f.proto, f.state),
            (Some(ICMPV6), Some(ll_ct_state::LL_CT_REPLIED))
        );
        assert_eq!(state_name(ICMPV6, ll_ct_state::LL_CT_REPLIED), "icmp-est");
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            err(parse("1.2.3", 0, "", "")),
            r#"filter.ip: "1.2.3" is not an IP address"#
        );
        assert_eq!(
            err(parse("", 70000, "", "")),
            "filter.port: port 70000 is out of range (1-65535)"
        );
        assert!(err(parse("", 0, "gre", "")).starts_with("filter.protocol: unknown protocol"));
        assert!(err(parse("", 0, "", "open")).starts_with("filter.state: unknown state"));
        assert_eq!(
            err(parse("", 0, "tcp", "udp-est")),
            "filter.state: udp-est is a udp state, not tcp"
        );
        assert_eq!(
            err(parse("", 0, "udp", "time-wait")),
            "filter.state: time-wait is a tcp state, not udp"
        );
    }

    #[test]
    fn ip_and_port_match_either_end_or_the_translation() {
        let k = ll_ct_key {
            saddr: u32::from(Ipv4Addr::new(10, 0, 0, 1)).to_be(),
            daddr: u32::from(Ipv4Addr::new(20, 20, 20, 1)).to_be(),
            sport: 40000u16.to_be(),
            dport: 2020u16.to_be(),
            proto: TCP,
            pad: [0; 3],
        };
        let v = ll_ct {
            nat: ll_tuple {
                saddr: k.saddr,
                daddr: u32::from(Ipv4Addr::new(31, 31, 31, 1)).to_be(),
                sport: k.sport,
                dport: 8080u16.to_be(),
            },
            xlate: ll_xlate::LL_XLATE_DST,
            dir: ll_ct_dir::LL_CT_ORIGINAL,
            state: ll_ct_state::LL_CT_ESTABLISHED,
            ..Default::default()
        };
        let e = Ct4::view(&k, &v);
        for ip in ["10.0.0.1", "20.20.20.1", "31.31.31.1"] {
            assert!(parse(ip, 0, "", "").unwrap().matches(&e), "{ip}");
        }
        for port in [40000, 2020, 8080] {
            assert!(parse("", port, "", "").unwrap().matches(&e), "{port}");
        }
        assert!(!parse("10.0.0.2", 0, "", "").unwrap().matches(&e));
        assert!(!parse("", 8081, "", "").unwrap().matches(&e));
        assert!(!parse("", 0, "udp", "").unwrap().matches(&e));
        assert!(parse("10.0.0.1", 2020, "tcp", "est").unwrap().matches(&e));
        assert!(!parse("", 0, "", "time-wait").unwrap().matches(&e));
        assert!(Filter::default().matches(&e));
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn ipv6_entries_match_their_addresses() {
        let (client, vip, ep): (Ipv6Addr, Ipv6Addr, Ipv6Addr) = (
            "fd00:c::7".parse().unwrap(),
            "fd00::100".parse().unwrap(),
            "fd00::2:1".parse().unwrap(),
        );
        let k = ll_ct6_key {
            saddr: client.octets(),
            daddr: vip.octets(),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: TCP,
            pad: [0; 3],
        };
        let v = ll_ct6 {
            ct: ll_ct {
                nat: ll_tuple {
                    sport: k.sport,
                    dport: 8080u16.to_be(),
                    ..Default::default()
                },
                xlate: ll_xlate::LL_XLATE_DST,
                ..Default::default()
            },
            nat6: ll_addrs6 {
                saddr: client.octets(),
                daddr: ep.octets(),
            },
        };
        let e = Ct6::view(&k, &v);
        for ip in ["fd00:c::7", "fd00::100", "fd00::2:1"] {
            assert!(parse(ip, 0, "", "").unwrap().matches(&e), "{ip}");
        }
        assert!(parse("", 8080, "", "").unwrap().matches(&e));
        assert!(!parse("fd00::3:1", 0, "", "").unwrap().matches(&e));
        assert_eq!(Ct6::key_of(&e.key).saddr, k.saddr, "the key converts back");
    }
}
