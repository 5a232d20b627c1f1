//! The two conntrack tables (IPv4 and IPv6 flows) seen alike: each entry as
//! its key's tuple, its translated tuple and its state.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::datapath::types::{ll_ct, ll_ct6, ll_ct6_key, ll_ct_key, ll_tuple, ll_xlate};
use crate::datapath::{Ct4, Ct6, CtTable};

/// Addresses, ports (host order) and protocol of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }
}

/// One entry: the tuple it is keyed by, the tuple its packets leave with
/// (fields it does not translate hold the key's) and its state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub key: Tuple,
    pub nat: Tuple,
    pub ct: ll_ct,
}

impl View {
    /// The key of the other direction: the translated tuple turned around
    /// (as ll_ct_partner in bpf/lib/ct.h).
    pub fn partner(&self) -> Tuple {
        self.nat.reversed()
    }

    /// A DSR flow's only entry: the endpoint answers the client directly,
    /// so there is no reply entry.
    pub fn one_way(&self) -> bool {
        self.ct.xlate.0 & ll_xlate::LL_XLATE_DSR.0 != 0
    }

    /// An IPv4 entry that only reserves a NAT64 flow's IPv4 reply tuple
    /// (bpf/lib/nat64.h). The flow is in the IPv6 table, its reply entry
    /// under this key's addresses IPv4-mapped: `Ct6::key_of(&self.key)`.
    pub fn reservation(&self) -> bool {
        self.key.src.is_ipv4() && self.ct.xlate.0 & ll_xlate::LL_XLATE_64.0 != 0
    }
}

/// An address as shown and filtered: the IPv4-mapped IPv6 addresses under
/// which NAT64 flows keep their IPv4 side as the IPv4 addresses they are.
pub(crate) fn shown(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        a => a,
    }
}

/// A conntrack table whose entries convert to and from [`View`]s.
pub(crate) trait Table: CtTable {
    fn view(k: &Self::Key, v: &Self::Value) -> View;
    fn key_of(t: &Tuple) -> Self::Key;
}

fn v4(a: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from_be(a)))
}

fn v4_be(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => u32::from(a).to_be(),
        IpAddr::V6(_) => 0,
    }
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn ports(t: &ll_tuple) -> (u16, u16) {
    (u16::from_be(t.sport), u16::from_be(t.dport))
}

impl Table for Ct4 {
    fn view(k: &ll_ct_key, v: &ll_ct) -> View {
        let (sport, dport) = ports(&v.nat);
        View {
            key: Tuple {
                src: v4(k.saddr),
                dst: v4(k.daddr),
                sport: u16::from_be(k.sport),
                dport: u16::from_be(k.dport),
                proto: k.proto,
            },
            nat: Tuple {
                src: v4(v.nat.saddr),
                dst: v4(v.nat.daddr),
                sport,
                dport,
                proto: k.proto,
            },
            ct: *v,
        }
    }

    fn key_of(t: &Tuple) -> ll_ct_key {
        ll_ct_key {
            saddr: v4_be(t.src),
            daddr: v4_be(t.dst),
            sport: t.sport.to_be(),
            dport: t.dport.to_be(),
            proto: t.proto,
            pad: [0; 3],
        }
    }
}

impl Table for Ct6 {
    fn view(k: &ll_ct6_key, v: &ll_ct6) -> View {
        let (sport, dport) = ports(&v.ct.nat);
        View {
            key: Tuple {
                src: IpAddr::V6(Ipv6Addr::from(k.saddr)),
                dst: IpAddr::V6(Ipv6Addr::from(k.daddr)),
                sport: u16::from_be(k.sport),
                dport: u16::from_be(k.dport),
                proto: k.proto,
            },
            nat: Tuple {
                src: IpAddr::V6(Ipv6Addr::from(v.nat6.saddr)),
                dst: IpAddr::V6(Ipv6Addr::from(v.nat6.daddr)),
                sport,
                dport,
                proto: k.proto,
            },
            ct: v.ct,
        }
    }

    fn key_of(t: &Tuple) -> ll_ct6_key {
        ll_ct6_key {
            saddr: v6_octets(t.src),
            daddr: v6_octets(t.dst),
            sport: t.sport.to_be(),
            dport: t.dport.to_be(),
            proto: t.proto,
            pad: [0; 3],
        }
    }
}
