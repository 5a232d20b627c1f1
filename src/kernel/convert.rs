//! rtnetlink messages -> the mirror's model.
use std::net::IpAddr;

use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};

use super::model::{Addr, Iface, Neigh, NextHop, Prefix, Route, RouteKind};

pub fn link(m: &LinkMessage) -> Iface {
    let mut iface = Iface {
        index: m.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up) && m.header.flags.contains(LinkFlags::Running),
        loopback: m.header.flags.contains(LinkFlags::Loopback),
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => iface.name = n.clone(),
            LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
            LinkAttribute::Address(mac) if mac.len() == 6 => iface.mac.copy_from_slice(mac),
            _ => {}
        }
    }
    iface
}

pub fn addr(m: &AddressMessage) -> Option<Addr> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 sends only IFA_ADDRESS.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some(Addr {
        ip: local.or(address)?,
        prefix: m.header.prefix_len,
        ifindex: m.header.index,
    })
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// What a route message means to the mirror.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMsg {
    Main(Route),
    /// A route of another table (ignored, counted).
    OtherTable,
    /// Local, broadcast, multicast, ... routes: Linux's business.
    Ignored,
}

pub fn route(m: &RouteMessage) -> RouteMsg {
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(m.header.table.into());
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return RouteMsg::OtherTable;
    }
    let kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        RouteType::Unreachable => RouteKind::Unreachable,
        RouteType::Prohibit => RouteKind::Prohibit,
        _ => return RouteMsg::Ignored,
    };
    let v6 = m.header.address_family == rtnetlink::packet_route::AddressFamily::Inet6;
    let unspecified: IpAddr = if v6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut nexthops = Vec::new();
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d).unwrap_or(unspecified),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => {
                for h in hops {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_ip(g),
                        _ => None,
                    });
                    nexthops.push(NextHop {
                        gateway: gw,
                        ifindex: h.interface_index,
                    });
                }
            }
            _ => {}
        }
    }
    if nexthops.is_empty() {
        if let Some(ifindex) = oif {
            nexthops.push(NextHop { gateway, ifindex });
        }
    }
    if kind != RouteKind::Unicast {
        nexthops.clear();
    }
    RouteMsg::Main(Route {
        dst: Prefix {
            ip: dst,
            len: m.header.destination_prefix_length,
        },
        kind,
        metric,
        nexthops,
    })
}

/// A neighbour with a link-layer address, whatever its state.
pub fn neigh(m: &NeighbourMessage) -> Option<Neigh> {
    let mut ip = None;
    let mut mac = None;
    for a in &m.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => ip = Some((*v4).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => ip = Some((*v6).into()),
            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                let mut b = [0u8; 6];
                b.copy_from_slice(l);
                mac = Some(b);
            }
            _ => {}
        }
    }
    Some(Neigh {
        ifindex: m.header.ifindex,
        ip: ip?,
        mac: mac.unwrap_or_default(),
        state: m.header.state.into(),
    })
}
