//! The mirrored network state <-> the forwarding maps.
use std::collections::BTreeMap;
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::pod;
use super::types::{
    ll_addr_key, ll_iface, ll_ifaddr_key, ll_local, ll_lpm4_key, ll_lpm6_key, ll_neigh,
    ll_neigh_key, ll_nexthop, ll_route, ll_route_type,
};
use super::{Datapath, Error, Result};
use crate::kernel::model::{Addr, Iface, Neigh, NextHop, Prefix, Route, RouteKind};

const AF_INET: u32 = libc::AF_INET as u32;
const AF_INET6: u32 = libc::AF_INET6 as u32;
const IF_UP: u32 = 0x1;
const IF_ATTACHED: u32 = 0x2;
/// bpf/lib/common.h LL_MAX_NEXTHOPS
pub const MAX_NEXTHOPS: usize = 8;

/// An address's family and its bytes as the maps keep them (IPv4 in the
/// first 4).
pub(super) fn family_bytes(ip: &IpAddr) -> (u32, [u8; 16]) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (AF_INET, b)
        }
        IpAddr::V6(v6) => (AF_INET6, v6.octets()),
    }
}

fn ip_from(family: u32, b: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(*b)
    }
}

fn name_bytes(name: &str) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b as i8;
    }
    out
}

fn ignore_missing(r: libbpf_rs::Result<()>, what: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::bpf(what)(e)),
    }
}

fn entries<K: Copy, V: Copy>(map: &MapHandle) -> Vec<(K, V)> {
    map.keys()
        .filter_map(|k| {
            let v = map.lookup(&k, MapFlags::ANY).ok()??;
            Some((pod::read(&k)?, pod::read(&v)?))
        })
        .collect()
}

impl Datapath {
    /// `attached`: the datapath runs on this interface, so the fast path may
    /// forward out of it.
    pub fn set_iface(&self, i: &Iface, attached: bool) -> Result<()> {
        let v = ll_iface {
            mac: i.mac,
            pad: 0,
            mtu: i.mtu,
            flags: if i.up { IF_UP } else { 0 } | if attached { IF_ATTACHED } else { 0 },
            name: name_bytes(&i.name),
        };
        self.maps
            .ifaces
            .update(&i.index.to_ne_bytes(), pod::bytes(&v), MapFlags::ANY)
            .map_err(Error::bpf(format!("writing interface {}", i.name)))
    }

    pub fn del_iface(&self, ifindex: u32) -> Result<()> {
        ignore_missing(
            self.maps.ifaces.delete(&ifindex.to_ne_bytes()),
            "deleting an interface",
        )
    }

    /// Interfaces as the datapath holds them, with whether it is attached.
    pub fn ifaces(&self) -> Vec<(Iface, bool)> {
        let mut v: Vec<(Iface, bool)> = entries::<u32, ll_iface>(&self.maps.ifaces)
            .into_iter()
            .map(|(index, i)| {
                let name: Vec<u8> = i
                    .name
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                let iface = Iface {
                    index,
                    name: String::from_utf8_lossy(&name).into_owned(),
                    mac: i.mac,
                    mtu: i.mtu,
                    up: i.flags & IF_UP != 0,
                    loopback: false,
                };
                (iface, i.flags & IF_ATTACHED != 0)
            })
            .collect();
        v.sort_by_key(|(i, _)| i.index);
        v
    }

    fn addr_key(ip: &IpAddr) -> ll_addr_key {
        let (family, addr) = family_bytes(ip);
        ll_addr_key { family, addr }
    }

    pub fn set_local(&self, a: &Addr) -> Result<()> {
        let v = ll_local {
            ifindex: a.ifindex,
            prefixlen: a.prefix.into(),
        };
        self.maps
            .locals
            .update(
                pod::bytes(&Self::addr_key(&a.ip)),
                pod::bytes(&v),
                MapFlags::ANY,
            )
            .map_err(|e| super::full_or(e, "ll_locals", "writing a local address"))
    }

    pub fn del_local(&self, ip: &IpAddr) -> Result<()> {
        ignore_missing(
            self.maps.locals.delete(pod::bytes(&Self::addr_key(ip))),
            "deleting a local address",
        )
    }

    pub fn locals(&self) -> Vec<Addr> {
        let mut v: Vec<Addr> = entries::<ll_addr_key, ll_local>(&self.maps.locals)
            .into_iter()
            .map(|(k, l)| Addr {
                ip: ip_from(k.family, &k.addr),
                prefix: l.prefixlen as u8,
                ifindex: l.ifindex,
            })
            .collect();
        v.sort_by_key(|a| (a.ifindex, a.ip));
        v
    }

    /// Makes ll_ifaddrs hold the addresses among `addrs` (all of the
    /// host's) that source translation picks from: per interface, family and
    /// subnet the lowest address in it, and per interface and family its
    /// lowest address as the fallback. Linux would prefer the first address
    /// added; the mirror does not know the order, so the choice is the
    /// lowest. IPv6 link-local addresses are left out: a translated flow
    /// goes beyond the link.
    pub fn set_source_addrs<'a>(&self, addrs: impl IntoIterator<Item = &'a Addr>) -> Result<()> {
        let mut want: BTreeMap<Vec<u8>, IpAddr> = BTreeMap::new();
        for a in addrs {
            let (family, width, bits) = match a.ip {
                IpAddr::V4(ip) => (4, 32, u128::from(u32::from(ip)) << 96),
                IpAddr::V6(ip) if ip.is_unicast_link_local() => continue,
                IpAddr::V6(ip) => (6, 128, u128::from(ip)),
            };
            let len = u32::from(a.prefix).min(width);
            let subnet = bits & u128::MAX.checked_shl(128 - len).unwrap_or(0);
            for (prefixlen, addr) in [(64 + len, subnet.to_be_bytes()), (64, [0; 16])] {
                let key = ll_ifaddr_key {
                    prefixlen,
                    ifindex: a.ifindex,
                    family,
                    addr,
                };
                let slot = want.entry(pod::bytes(&key).to_vec()).or_insert(a.ip);
                *slot = (*slot).min(a.ip);
            }
        }
        let map = &self.maps.ifaddrs;
        let stale: Vec<Vec<u8>> = map.keys().filter(|k| !want.contains_key(k)).collect();
        for key in stale {
            ignore_missing(map.delete(&key), "deleting a source address")?;
        }
        for (key, ip) in &want {
            map.update(key, &family_bytes(ip).1, MapFlags::ANY)
                .map_err(|e| super::full_or(e, "ll_ifaddrs", "writing a source address"))?;
        }
        Ok(())
    }

    fn route_map(&self, p: &Prefix) -> (&MapHandle, Vec<u8>) {
        match p.ip {
            IpAddr::V4(v4) => {
                let k = ll_lpm4_key {
                    prefixlen: p.len.into(),
                    addr: v4.octets(),
                };
                (&self.maps.routes4, pod::bytes(&k).to_vec())
            }
            IpAddr::V6(v6) => {
                let k = ll_lpm6_key {
                    prefixlen: p.len.into(),
                    addr: v6.octets(),
                };
                (&self.maps.routes6, pod::bytes(&k).to_vec())
            }
        }
    }

    /// Writes the route for its prefix; ECMP beyond MAX_NEXTHOPS keeps the first ones.
    pub fn set_route(&self, r: &Route) -> Result<()> {
        let mut v = ll_route {
            r#type: match r.kind {
                RouteKind::Unicast => ll_route_type::LL_RT_UNICAST,
                RouteKind::Blackhole => ll_route_type::LL_RT_BLACKHOLE,
                RouteKind::Unreachable => ll_route_type::LL_RT_UNREACHABLE,
                RouteKind::Prohibit => ll_route_type::LL_RT_PROHIBIT,
            },
            ..Default::default()
        };
        for (slot, nh) in v.nh.iter_mut().zip(&r.nexthops) {
            *slot = ll_nexthop {
                ifindex: nh.ifindex,
                pad: 0,
                gw: nh.gateway.map_or([0; 16], |g| family_bytes(&g).1),
            };
        }
        v.n_nexthops = r.nexthops.len().min(MAX_NEXTHOPS) as u32;
        let (map, key) = self.route_map(&r.dst);
        map.update(&key, pod::bytes(&v), MapFlags::ANY)
            .map_err(|e| super::full_or(e, "ll_routes", "writing a route"))
    }

    pub fn del_route(&self, p: &Prefix) -> Result<()> {
        let (map, key) = self.route_map(p);
        ignore_missing(map.delete(&key), "deleting a route")
    }

    pub fn routes(&self) -> Vec<Route> {
        let route = |dst: Prefix, r: ll_route| Route {
            dst,
            kind: match r.r#type {
                ll_route_type::LL_RT_BLACKHOLE => RouteKind::Blackhole,
                ll_route_type::LL_RT_UNREACHABLE => RouteKind::Unreachable,
                ll_route_type::LL_RT_PROHIBIT => RouteKind::Prohibit,
                _ => RouteKind::Unicast,
            },
            metric: 0,
            nexthops: r.nh[..(r.n_nexthops as usize).min(MAX_NEXTHOPS)]
                .iter()
                .map(|nh| NextHop {
                    gateway: (nh.gw != [0; 16]).then(|| {
                        ip_from(if dst.ip.is_ipv4() { AF_INET } else { AF_INET6 }, &nh.gw)
                    }),
                    ifindex: nh.ifindex,
                })
                .collect(),
        };
        let v4 = entries::<ll_lpm4_key, ll_route>(&self.maps.routes4)
            .into_iter()
            .map(|(k, r)| {
                route(
                    Prefix {
                        ip: IpAddr::from(k.addr),
                        len: k.prefixlen as u8,
                    },
                    r,
                )
            });
        let v6 = entries::<ll_lpm6_key, ll_route>(&self.maps.routes6)
            .into_iter()
            .map(|(k, r)| {
                route(
                    Prefix {
                        ip: IpAddr::from(k.addr),
                        len: k.prefixlen as u8,
                    },
                    r,
                )
            });
        let mut v: Vec<Route> = v4.chain(v6).collect();
        v.sort_by_key(|r| r.dst);
        v
    }

    fn neigh_key(ifindex: u32, ip: &IpAddr) -> ll_neigh_key {
        let (family, addr) = family_bytes(ip);
        ll_neigh_key {
            ifindex,
            family,
            addr,
        }
    }

    pub fn set_neigh(&self, n: &Neigh) -> Result<()> {
        let v = ll_neigh {
            mac: n.mac,
            state: n.state,
        };
        self.maps
            .neighs
            .update(
                pod::bytes(&Self::neigh_key(n.ifindex, &n.ip)),
                pod::bytes(&v),
                MapFlags::ANY,
            )
            .map_err(|e| super::full_or(e, "ll_neighs", "writing a neighbour"))
    }

    pub fn del_neigh(&self, ifindex: u32, ip: &IpAddr) -> Result<()> {
        ignore_missing(
            self.maps
                .neighs
                .delete(pod::bytes(&Self::neigh_key(ifindex, ip))),
            "deleting a neighbour",
        )
    }

    pub fn neighs(&self) -> Vec<Neigh> {
        let mut v: Vec<Neigh> = entries::<ll_neigh_key, ll_neigh>(&self.maps.neighs)
            .into_iter()
            .map(|(k, n)| Neigh {
                ifindex: k.ifindex,
                ip: ip_from(k.family, &k.addr),
                mac: n.mac,
                state: n.state,
            })
            .collect();
        v.sort_by_key(|n| (n.ifindex, n.ip));
        v
    }

    /// Blocks, calling `f(ifindex, next hop)` for each unresolved next hop
    /// the datapath reports, until `f` returns false.
    pub fn watch_neigh_misses(&self, mut f: impl FnMut(u32, IpAddr) -> bool) -> Result<()> {
        self.watch_ring(&self.maps.neigh_miss, "neighbour misses", |data| {
            pod::read::<ll_neigh_key>(data).is_none_or(|k| f(k.ifindex, ip_from(k.family, &k.addr)))
        })
    }

    /// Blocks, calling `f` with each record of the ring buffer `map` until
    /// it returns false.
    pub(super) fn watch_ring(
        &self,
        map: &libbpf_rs::MapHandle,
        what: &str,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<()> {
        let stop = std::cell::Cell::new(false);
        let mut builder = libbpf_rs::RingBufferBuilder::new();
        builder
            .add(map, |data: &[u8]| {
                if !f(data) {
                    stop.set(true);
                }
                0
            })
            .map_err(Error::bpf(format!("reading {what}")))?;
        let rb = builder
            .build()
            .map_err(Error::bpf(format!("reading {what}")))?;
        while !stop.get() {
            rb.poll(std::time::Duration::from_millis(500))
                .map_err(Error::bpf(format!("polling {what}")))?;
        }
        Ok(())
    }
}
