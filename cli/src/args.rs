//! Parsers for loxicmd's compact flag values (`--tcp=80:8080`, `--tcp=8080-8081:32015`,
//! `--endpoints=IP:WEIGHT`).
//!
//! clap only splits the comma lists; the values are parsed here so that a bad value
//! yields one line naming the flag instead of clap's multi-line usage report.
//! Only syntax is checked: address and port ranges are the daemon's to judge.

use std::fmt;

/// An external port or port range and the endpoint port it is translated to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    pub ports: Ports,
    pub target_port: u32,
}

/// A port (`port_max` 0) or the range `port`-`port_max`, as the API takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub port: u32,
    pub port_max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointArg {
    pub ip: String,
    pub weight: u32,
}

/// A flag value that could not be parsed; shown as `--flag: "value": reason`.
#[derive(Debug, PartialEq, Eq)]
pub struct ArgError {
    flag: &'static str,
    value: String,
    reason: &'static str,
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {:?}: {}", self.flag, self.value, self.reason)
    }
}

impl std::error::Error for ArgError {}

fn fail<T>(flag: &'static str, value: &str, reason: &'static str) -> Result<T, ArgError> {
    Err(ArgError {
        flag,
        value: value.to_owned(),
        reason,
    })
}

/// Digits only: `u32::from_str` would also take a leading '+'.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A plain number flag (`--port`, `--limit`); the range is the daemon's to judge.
pub fn parse_number(
    flag: &'static str,
    value: &str,
    reason: &'static str,
) -> Result<u32, ArgError> {
    number(value).map_or_else(|| fail(flag, value, reason), Ok)
}

/// An optional number flag; absent is 0, which the daemon reads as its default.
pub fn parse_optional_number(
    flag: &'static str,
    value: Option<&str>,
    reason: &'static str,
) -> Result<u32, ArgError> {
    value.map_or(Ok(0), |v| parse_number(flag, v, reason))
}

/// A command that is incomplete as a whole, shown as `command: reason`.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    pub command: &'static str,
    pub reason: &'static str,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.command, self.reason)
    }
}

impl std::error::Error for UsageError {}

/// `PORT` or `MIN-MAX` (LoxiLB's port range); order and bounds are the daemon's to judge.
fn ports(flag: &'static str, value: &str, s: &str) -> Result<Ports, ArgError> {
    let (port, port_max) = match s.split_once('-') {
        None => (number(s), Some(0)),
        Some((lo, hi)) => (number(lo), number(hi)),
    };
    match (port, port_max) {
        (Some(port), Some(port_max)) => Ok(Ports { port, port_max }),
        _ => fail(flag, value, "port must be a number or a range MIN-MAX"),
    }
}

/// Parses `PORT:TARGETPORT` and `MIN-MAX:TARGETPORT` values of `--tcp`/`--udp`/`--sctp`
/// for `create lb`: every port of a range goes to the one target port.
pub fn parse_port_maps(flag: &'static str, values: &[String]) -> Result<Vec<PortMap>, ArgError> {
    values
        .iter()
        .map(|value| {
            let Some((port, target)) = value.split_once(':') else {
                return fail(
                    flag,
                    value,
                    "expected PORT:TARGETPORT or MIN-MAX:TARGETPORT",
                );
            };
            let ports = ports(flag, value, port)?;
            if target.contains('-') {
                return fail(flag, value, "target port ranges are not supported");
            }
            let Some(target_port) = number(target) else {
                return fail(flag, value, "target port must be a number");
            };
            Ok(PortMap { ports, target_port })
        })
        .collect()
}

/// Parses `PORT` or `MIN-MAX` values of `--tcp`/`--udp`/`--sctp` for `delete lb`; a
/// `:TARGETPORT` suffix is accepted and ignored so a create command line can be reused as is.
pub fn parse_ports(flag: &'static str, values: &[String]) -> Result<Vec<Ports>, ArgError> {
    values
        .iter()
        .map(|value| {
            ports(
                flag,
                value,
                value.split_once(':').map_or(value.as_str(), |(p, _)| p),
            )
        })
        .collect()
}

/// Parses `IP[:WEIGHT]` values of `--endpoints` (or `--attachEP`). The weight follows
/// the last ':' so IPv6 endpoints work when given with a weight (`fd00::2:1` is fd00::2,
/// weight 1).
pub fn parse_endpoints(
    flag: &'static str,
    values: &[String],
) -> Result<Vec<EndpointArg>, ArgError> {
    values
        .iter()
        .map(|value| {
            let (ip, weight) = match value.rsplit_once(':') {
                None => (value.as_str(), 1),
                Some((ip, weight)) => match number(weight) {
                    Some(w @ 1..=255) => (ip, w),
                    _ => return fail(flag, value, "weight must be a number 1-255"),
                },
            };
            if ip.is_empty() {
                return fail(flag, value, "missing IP");
            }
            // "fd00::2" reads as fd00: with weight 2: say what was meant.
            if ip.contains(':') && ip.parse::<std::net::Ipv6Addr>().is_err() {
                return fail(
                    flag,
                    value,
                    "an IPv6 endpoint takes its weight after the last ':' (fd00::2:1)",
                );
            }
            Ok(EndpointArg {
                ip: ip.to_owned(),
                weight,
            })
        })
        .collect()
}

/// Parses `--firewallRule="KEY:VALUE,..."` (LoxiLB's syntax). An IPv6 value
/// keeps its colons: only the first one separates the key.
pub fn parse_firewall_rule(value: &str) -> Result<crate::pb::FirewallMatch, ArgError> {
    const FLAG: &str = "--firewallRule";
    let mut m = crate::pb::FirewallMatch::default();
    let mut seen = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let Some((key, v)) = item.split_once(':') else {
            return fail(FLAG, item, "expected KEY:VALUE");
        };
        if v.is_empty() {
            return fail(FLAG, item, "missing value");
        }
        if seen.contains(&key) {
            return fail(FLAG, item, "key given twice");
        }
        seen.push(key);
        let num = |slot: &mut u32| {
            *slot = number(v).map_or_else(|| fail(FLAG, item, "must be a number"), Ok)?;
            Ok(())
        };
        match key {
            "sourceIP" => m.source_ip = v.to_owned(),
            "destinationIP" => m.destination_ip = v.to_owned(),
            "minSourcePort" => num(&mut m.min_source_port)?,
            "maxSourcePort" => num(&mut m.max_source_port)?,
            "minDestinationPort" => num(&mut m.min_destination_port)?,
            "maxDestinationPort" => num(&mut m.max_destination_port)?,
            "protocol" => num(&mut m.protocol)?,
            "portName" => m.port_name = v.to_owned(),
            "preference" => num(&mut m.preference)?,
            _ => return fail(FLAG, item, FW_KEYS_REASON),
        }
    }
    Ok(m)
}

/// The keys of `--firewallRule`, as LoxiLB's loxicmd names them.
const FW_KEYS_REASON: &str = "unknown key (sourceIP, destinationIP, minSourcePort, \
     maxSourcePort, minDestinationPort, maxDestinationPort, protocol, portName, preference)";

/// Parses `--snat=IP[,PORT]` into the address and the port (0: none).
pub fn parse_snat(value: &str) -> Result<(String, u32), ArgError> {
    const FLAG: &str = "--snat";
    let (ip, port) = match value.split_once(',') {
        None => (value, 0),
        Some((ip, port)) => match number(port) {
            Some(p) => (ip, p),
            None => return fail(FLAG, value, "expected IP[,PORT]: the port must be a number"),
        },
    };
    if ip.is_empty() {
        return fail(FLAG, value, "missing IP");
    }
    Ok((ip.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| s.to_string()).collect()
    }

    fn endpoint(ip: &str, weight: u32) -> EndpointArg {
        EndpointArg {
            ip: ip.to_owned(),
            weight,
        }
    }

    #[test]
    fn endpoint_weight_is_after_last_colon() {
        let parsed =
            parse_endpoints("--endpoints", &strings(&["31.31.31.1:1", "32.32.32.1:200"])).unwrap();
        assert_eq!(
            parsed,
            vec![endpoint("31.31.31.1", 1), endpoint("32.32.32.1", 200)]
        );
    }

    #[test]
    fn endpoint_without_weight_defaults_to_one() {
        let parsed = parse_endpoints("--endpoints", &strings(&["31.31.31.1"])).unwrap();
        assert_eq!(parsed, vec![endpoint("31.31.31.1", 1)]);
    }

    #[test]
    fn ipv6_endpoint_keeps_all_but_last_group() {
        let parsed = parse_endpoints("--endpoints", &strings(&["fd00::2:1", "fd00::3:7"])).unwrap();
        assert_eq!(parsed, vec![endpoint("fd00::2", 1), endpoint("fd00::3", 7)]);
    }

    #[test]
    fn bad_endpoint_weight_names_flag_and_value() {
        let err = parse_endpoints("--endpoints", &strings(&["31.31.31.1:x"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--endpoints: "31.31.31.1:x": weight must be a number 1-255"#
        );
        for bad in [
            "31.31.31.1:0",
            "31.31.31.1:256",
            "31.31.31.1:",
            "31.31.31.1:+5",
        ] {
            let err = parse_endpoints("--endpoints", &strings(&[bad])).unwrap_err();
            assert!(err.to_string().contains("weight must be"), "{bad}: {err}");
        }
    }

    #[test]
    fn endpoint_without_ip_is_rejected() {
        let err = parse_endpoints("--endpoints", &strings(&["fd00::2"])).unwrap_err();
        assert!(
            err.to_string().contains("weight after the last ':'"),
            "{err}"
        );
        let err = parse_endpoints("--endpoints", &strings(&[":3"])).unwrap_err();
        assert_eq!(err.to_string(), r#"--endpoints: ":3": missing IP"#);
        assert!(parse_endpoints("--endpoints", &strings(&[""])).is_err());
    }

    fn map(port: u32, port_max: u32, target_port: u32) -> PortMap {
        PortMap {
            ports: Ports { port, port_max },
            target_port,
        }
    }

    #[test]
    fn port_map_list() {
        let maps = parse_port_maps("--tcp", &strings(&["80:8080", "443:8443"])).unwrap();
        assert_eq!(maps, vec![map(80, 0, 8080), map(443, 0, 8443)]);
    }

    #[test]
    fn port_ranges_map_to_one_target_port() {
        let maps = parse_port_maps("--tcp", &strings(&["8080-8081:32015"])).unwrap();
        assert_eq!(maps, vec![map(8080, 8081, 32015)]);
        let err = parse_port_maps("--tcp", &strings(&["5000:5201-5300"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--tcp: "5000:5201-5300": target port ranges are not supported"#
        );
    }

    #[test]
    fn port_range_is_left_to_the_daemon() {
        let maps = parse_port_maps("--udp", &strings(&["70000:0", "9-8:1"])).unwrap();
        assert_eq!(maps, vec![map(70000, 0, 0), map(9, 8, 1)]);
    }

    #[test]
    fn bad_port_maps_name_the_flag() {
        let cases = [
            (
                "http:8080",
                r#"--tcp: "http:8080": port must be a number or a range MIN-MAX"#,
            ),
            ("80:web", r#"--tcp: "80:web": target port must be a number"#),
            (
                "80",
                r#"--tcp: "80": expected PORT:TARGETPORT or MIN-MAX:TARGETPORT"#,
            ),
            (
                "-1:80",
                r#"--tcp: "-1:80": port must be a number or a range MIN-MAX"#,
            ),
            (
                "1-:80",
                r#"--tcp: "1-:80": port must be a number or a range MIN-MAX"#,
            ),
        ];
        for (value, message) in cases {
            let err = parse_port_maps("--tcp", &strings(&[value])).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(
            parse_number("--port", "8080", "port must be a number"),
            Ok(8080)
        );
        let err = parse_number("--port", "+80", "port must be a number").unwrap_err();
        assert_eq!(err.to_string(), r#"--port: "+80": port must be a number"#);
        assert!(parse_number("--limit", "", "limit must be a number").is_err());
    }

    #[test]
    fn delete_ports_ignore_target_port() {
        let ports = parse_ports(
            "--tcp",
            &strings(&["2020", "2021:8080", "2022:", "8080-8081"]),
        )
        .unwrap();
        let p = |port, port_max| Ports { port, port_max };
        assert_eq!(
            ports,
            vec![p(2020, 0), p(2021, 0), p(2022, 0), p(8080, 8081)]
        );
        let err = parse_ports("--udp", &strings(&["x:53"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"--udp: "x:53": port must be a number or a range MIN-MAX"#
        );
    }

    #[test]
    fn firewall_rules_use_loxilb_keys() {
        let m = parse_firewall_rule(
            "sourceIP:1.2.3.2/32,destinationIP:fd00::/64,minSourcePort:100,maxSourcePort:200,\
             minDestinationPort:80,maxDestinationPort:90,protocol:6,portName:eth1,preference:200",
        )
        .unwrap();
        assert_eq!(
            (m.source_ip.as_str(), m.destination_ip.as_str()),
            ("1.2.3.2/32", "fd00::/64")
        );
        assert_eq!((m.min_source_port, m.max_source_port), (100, 200));
        assert_eq!((m.min_destination_port, m.max_destination_port), (80, 90));
        assert_eq!(
            (m.protocol, m.port_name.as_str(), m.preference),
            (6, "eth1", 200)
        );
        // Ranges are the daemon's to judge.
        assert_eq!(
            parse_firewall_rule("minSourcePort:65536")
                .unwrap()
                .min_source_port,
            65536
        );
        assert_eq!(parse_firewall_rule("").unwrap(), Default::default());
    }

    #[test]
    fn bad_firewall_rules_name_the_item() {
        for (value, message) in [
            (
                "sourceIp:1.2.3.4",
                r#""sourceIp:1.2.3.4": unknown key (sourceIP"#,
            ),
            ("protocol:tcp", r#""protocol:tcp": must be a number"#),
            ("preference", r#""preference": expected KEY:VALUE"#),
            ("portName:", r#""portName:": missing value"#),
            (
                "protocol:6,protocol:17",
                r#""protocol:17": key given twice"#,
            ),
        ] {
            let err = parse_firewall_rule(value).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--firewallRule: {message}")),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn snat_takes_an_optional_port() {
        assert_eq!(parse_snat("10.0.0.1").unwrap(), ("10.0.0.1".into(), 0));
        assert_eq!(
            parse_snat("fd00::1,4000").unwrap(),
            ("fd00::1".into(), 4000)
        );
        assert!(parse_snat("10.0.0.1,x").is_err());
        assert!(parse_snat(",80").is_err());
    }
}
