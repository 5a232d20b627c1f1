//! The services under test and the rules each contender gets for them.
//!
//! Service `i` is VIP 20.20.0.0+1+i with port 80 on TCP and on UDP (so N
//! services are 2N rules for everyone), and two endpoints of its own:
//! 10.2.0.0+1+i on backend 1 and 10.3.0.0+1+i on backend 2. TCP goes to port
//! 8080 (the backends' HTTP server), UDP to 9 (the backends' sink).
use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddrV4};

use loxilight::proto::v1::{CreateLoadBalancerRequest, Endpoint, LoadBalancer, ServiceKey};

pub const VIP_PORT: u16 = 80;
pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 9;
/// A /16 of VIPs and one of endpoints per backend.
pub const MAX_SERVICES: usize = 65_000;
const PROTOS: [&str; 2] = ["tcp", "udp"];

fn offset(base: Ipv4Addr, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) + 1 + i as u32)
}

pub fn vip(i: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(20, 20, 0, 0), i)
}

/// Endpoint of service `i` on backend `b` (0 or 1).
pub fn endpoint(b: usize, i: usize) -> Ipv4Addr {
    offset(Ipv4Addr::new(10, 2 + b as u8, 0, 0), i)
}

fn target_port(proto: &str) -> u16 {
    if proto == "tcp" {
        TCP_PORT
    } else {
        UDP_PORT
    }
}

/// `k` service indices spread evenly over `n` services (repeating when
/// n < k), so traffic reaches rules all along iptables' chain.
pub fn spread(n: usize, k: usize) -> Vec<usize> {
    (0..k)
        .map(|j| if n >= k { j * n / k } else { j % n })
        .collect()
}

/// Where `k` flows go: the services' VIPs, or with `direct` (no NAT in the
/// path) the services' endpoints themselves, alternating backends.
pub fn targets(n: usize, k: usize, direct: bool, proto: &str) -> Vec<SocketAddrV4> {
    spread(n, k)
        .into_iter()
        .enumerate()
        .map(|(j, i)| match direct {
            false => SocketAddrV4::new(vip(i), VIP_PORT),
            true => SocketAddrV4::new(endpoint(j % 2, i), target_port(proto)),
        })
        .collect()
}

pub fn lb_requests(n: usize) -> Vec<CreateLoadBalancerRequest> {
    (0..n)
        .flat_map(|i| {
            PROTOS.map(|proto| CreateLoadBalancerRequest {
                load_balancer: Some(LoadBalancer {
                    service: Some(ServiceKey {
                        external_ip: vip(i).to_string(),
                        port: VIP_PORT.into(),
                        protocol: proto.into(),
                        port_max: 0,
                    }),
                    name: format!("svc-{i}-{proto}"),
                    selection: "rr".into(),
                    endpoints: (0..2)
                        .map(|b| Endpoint {
                            ip: endpoint(b, i).to_string(),
                            target_port: target_port(proto).into(),
                            weight: 1,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
            })
        })
        .collect()
}

/// kube-proxy's chain names are a hash of what they stand for.
fn chain_id(s: &str) -> String {
    // FNV-1a, 64 bits.
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016X}")
}

/// An `iptables-restore` file laid out the way kube-proxy's iptables mode
/// does it: KUBE-SERVICES matches each service in turn and jumps to its
/// KUBE-SVC chain, which picks an endpoint with `statistic`; the endpoint's
/// KUBE-SEP chain marks hairpin traffic for masquerade and DNATs. The filter
/// table drops invalid conntrack states and accepts established flows.
pub fn iptables_restore(n: usize) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for i in 0..n {
        for proto in PROTOS {
            let svc = format!("svc-{i}:{proto}");
            let svc_chain = format!("KUBE-SVC-{}", chain_id(&svc));
            let _ = writeln!(chains, ":{svc_chain} - [0:0]");
            let _ = writeln!(
                rules,
                "-A KUBE-SERVICES -d {}/32 -p {proto} -m comment --comment \"{svc} cluster IP\" -m {proto} --dport {VIP_PORT} -j {svc_chain}",
                vip(i)
            );
            for b in 0..2 {
                let ep = format!("{}:{}", endpoint(b, i), target_port(proto));
                let sep_chain = format!("KUBE-SEP-{}", chain_id(&format!("{svc}/{ep}")));
                let _ = writeln!(chains, ":{sep_chain} - [0:0]");
                let pick = match b {
                    0 => "-m statistic --mode random --probability 0.50000000000 ",
                    _ => "",
                };
                let _ = writeln!(
                    rules,
                    "-A {svc_chain} -m comment --comment \"{svc} -> {ep}\" {pick}-j {sep_chain}"
                );
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -s {}/32 -m comment --comment \"{svc}\" -j KUBE-MARK-MASQ",
                    endpoint(b, i)
                );
                let _ = writeln!(
                    rules,
                    "-A {sep_chain} -p {proto} -m comment --comment \"{svc}\" -m {proto} -j DNAT --to-destination {ep}"
                );
            }
        }
    }
    format!(
        "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
{chains}-A PREROUTING -m comment --comment \"service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"service SNAT\" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
{rules}-A KUBE-SERVICES -m comment --comment \"node ports, last\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
-A FORWARD -m comment --comment \"service forwarding\" -j KUBE-FORWARD
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"
    )
}

/// An `nft -f` file laid out the way kube-proxy's nftables mode does it:
/// one verdict map from (address, protocol, port) to a chain per service,
/// which picks an endpoint chain with `numgen random`, which DNATs.
pub fn nft_ruleset(n: usize) -> String {
    const T: &str = "ip kube-proxy";
    const KEY: &str = "ipv4_addr . inet_proto . inet_service";
    let mut out = format!(
        "add table {T}
add chain {T} mark-for-masquerade
add rule {T} mark-for-masquerade meta mark set meta mark or 0x4000
add chain {T} masquerading
add rule {T} masquerading meta mark & 0x4000 == 0 return
add rule {T} masquerading meta mark set meta mark xor 0x4000
add rule {T} masquerading masquerade fully-random
add chain {T} nat-prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain {T} nat-output {{ type nat hook output priority -100; policy accept; }}
add chain {T} nat-postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {T} filter-forward {{ type filter hook forward priority -110; policy accept; }}
add chain {T} services
add chain {T} nodeports
add chain {T} endpoints-check
add map {T} service-ips {{ type {KEY} : verdict; }}
add map {T} service-nodeports {{ type inet_proto . inet_service : verdict; }}
add map {T} no-endpoint-services {{ type {KEY} : verdict; }}
add rule {T} nat-prerouting jump services
add rule {T} nat-output jump services
add rule {T} nat-postrouting jump masquerading
add rule {T} filter-forward ct state invalid drop
add rule {T} filter-forward ct state new jump endpoints-check
add rule {T} endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services
add rule {T} nodeports meta l4proto . th dport vmap @service-nodeports
"
    );
    let mut elements = Vec::with_capacity(2 * n);
    for i in 0..n {
        for proto in PROTOS {
            let svc = format!("service-{i}-{proto}");
            let eps: Vec<String> = (0..2)
                .map(|b| format!("endpoint-{i}-{proto}-{b}"))
                .collect();
            for (b, ep_chain) in eps.iter().enumerate() {
                let ep = endpoint(b, i);
                let _ = write!(
                    out,
                    "add chain {T} {ep_chain}\n\
                     add rule {T} {ep_chain} ip saddr {ep} jump mark-for-masquerade\n\
                     add rule {T} {ep_chain} meta l4proto {proto} dnat to {ep}:{}\n",
                    target_port(proto)
                );
            }
            let _ = write!(
                out,
                "add chain {T} {svc}\n\
                 add rule {T} {svc} numgen random mod 2 vmap {{ 0 : goto {}, 1 : goto {} }}\n",
                eps[0], eps[1]
            );
            elements.push(format!("{} . {proto} . {VIP_PORT} : goto {svc}", vip(i)));
        }
    }
    // The map's elements once their chains exist, in one statement.
    let _ = writeln!(
        out,
        "add element {T} service-ips {{ {} }}",
        elements.join(", ")
    );
    let _ = write!(
        out,
        "add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips\n\
         add rule {T} services fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_reaches_the_whole_range() {
        assert_eq!(spread(1, 3), vec![0, 0, 0]);
        assert_eq!(spread(4, 2), vec![0, 2]);
        let s = spread(10_000, 256);
        assert_eq!(s.len(), 256);
        assert!(s.last().is_some_and(|&i| i > 9_900));
    }

    #[test]
    fn addresses_stay_inside_their_prefixes() {
        assert_eq!(vip(0), Ipv4Addr::new(20, 20, 0, 1));
        assert_eq!(endpoint(1, 0), Ipv4Addr::new(10, 3, 0, 1));
        let last = MAX_SERVICES - 1;
        assert_eq!(vip(last).octets()[..2], [20, 20]);
        assert_eq!(endpoint(0, last).octets()[..2], [10, 2]);
    }

    #[test]
    fn every_contender_gets_two_rules_per_service() {
        assert_eq!(lb_requests(3).len(), 6);
        let ipt = iptables_restore(3);
        assert_eq!(ipt.matches("-A KUBE-SERVICES -d ").count(), 6);
        assert_eq!(ipt.matches("-j DNAT").count(), 12);
        let nft = nft_ruleset(3);
        assert_eq!(nft.matches(" : goto service-").count(), 6);
        assert_eq!(nft.matches(" dnat to ").count(), 12);
    }
}
