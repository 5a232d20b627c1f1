//! The network state the mirror keeps, in plain Rust types shared by the
//! mirror (which fills it from rtnetlink) and the datapath (which stores it).
use std::net::IpAddr;

pub type Mac = [u8; 6];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub mac: Mac,
    pub mtu: u32,
    /// Administratively up with carrier.
    pub up: bool,
    pub loopback: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Addr {
    pub ip: IpAddr,
    pub prefix: u8,
    pub ifindex: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub ip: IpAddr,
    pub len: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Unicast,
    Blackhole,
    Unreachable,
    Prohibit,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Unicast => "unicast",
            RouteKind::Blackhole => "blackhole",
            RouteKind::Unreachable => "unreachable",
            RouteKind::Prohibit => "prohibit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// None: on-link, the destination itself is the neighbour.
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Prefix,
    pub kind: RouteKind,
    /// Lower wins among routes to the same prefix.
    pub metric: u32,
    pub nexthops: Vec<NextHop>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neigh {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: Mac,
    /// The kernel's NUD_* state.
    pub state: u16,
}

/// NUD_* bits (include/uapi/linux/neighbour.h).
pub mod nud {
    pub const INCOMPLETE: u16 = 0x01;
    pub const REACHABLE: u16 = 0x02;
    pub const STALE: u16 = 0x04;
    pub const DELAY: u16 = 0x08;
    pub const PROBE: u16 = 0x10;
    pub const FAILED: u16 = 0x20;
    pub const NOARP: u16 = 0x40;
    pub const PERMANENT: u16 = 0x80;

    /// States whose link-layer address can be used to forward.
    pub fn usable(state: u16) -> bool {
        state & (REACHABLE | STALE | DELAY | PROBE | NOARP | PERMANENT) != 0
    }

    pub fn name(state: u16) -> &'static str {
        match state {
            s if s & PERMANENT != 0 => "permanent",
            s if s & NOARP != 0 => "noarp",
            s if s & REACHABLE != 0 => "reachable",
            s if s & STALE != 0 => "stale",
            s if s & DELAY != 0 => "delay",
            s if s & PROBE != 0 => "probe",
            s if s & FAILED != 0 => "failed",
            s if s & INCOMPLETE != 0 => "incomplete",
            _ => "none",
        }
    }
}

pub fn format_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
