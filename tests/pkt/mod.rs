//! Frame builders and checksum checks for the datapath tests: Ethernet, an
//! optional 802.1Q tag, IPv4 with options, then TCP, UDP, SCTP, ICMP echo or
//! a raw payload.
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use loxilight::datapath::types::ll_ct_key;
use loxilight::datapath::{Datapath, HookKind, Limits};
use loxilight::rules::{Endpoint, LbRule, Mode, Selection, ServiceKey};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const SCTP: u8 = 132;
pub const ICMP_ECHO: u8 = 8;
pub const ICMP_ECHOREPLY: u8 = 0;
/// SCTP chunk types.
pub const SCTP_DATA: u8 = 0;
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
pub const SCTP_ABORT: u8 = 6;
pub const SCTP_SHUTDOWN: u8 = 7;
pub const SCTP_SHUTDOWN_ACK: u8 = 8;
pub const SCTP_COOKIE_ECHO: u8 = 10;
pub const SCTP_COOKIE_ACK: u8 = 11;
pub const SCTP_SHUTDOWN_COMPLETE: u8 = 14;
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const ACK: u8 = 0x10;
pub const IP_DF: u16 = 0x4000;

pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];

#[derive(Debug, Clone)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    /// `checksum: false` sends 0, "no checksum".
    Udp {
        checksum: bool,
    },
    /// One chunk of type `chunk` carrying the payload; ports from the addresses.
    Sctp {
        chunk: u8,
    },
    /// An ICMP echo request or reply (`kind`) with identifier `id`; ports unused.
    IcmpEcho {
        kind: u8,
        id: u16,
    },
    /// Another IP protocol; the payload is its whole body and ports are unused.
    Raw(u8),
}

/// One IPv4 frame; change fields with struct update syntax, then `build`.
#[derive(Debug, Clone)]
pub struct Packet {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub l4: L4,
    pub vlan: Option<u16>,
    /// Raw IPv4 options, a multiple of 4 bytes long.
    pub options: Vec<u8>,
    /// Flags and fragment offset, host order.
    pub frag_off: u16,
    pub ttl: u8,
    /// TCP sequence and acknowledgement numbers.
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
}

impl Packet {
    pub fn new(src: SocketAddrV4, dst: SocketAddrV4, l4: L4) -> Packet {
        Packet {
            src,
            dst,
            l4,
            vlan: None,
            options: Vec::new(),
            frag_off: IP_DF,
            ttl: 64,
            seq: 0x0102_0304,
            ack: 0,
            payload: b"loxilight test payload".to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let (proto, l4) = self.l4_bytes();
        let mut f = Vec::with_capacity(80 + l4.len());
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        if let Some(vid) = self.vlan {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ETH_P_IP.to_be_bytes());
        let hlen = 20 + self.options.len();
        let mut ip = vec![0x40 | (hlen / 4) as u8, 0];
        ip.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&0x1234u16.to_be_bytes());
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.extend_from_slice(&[self.ttl, proto, 0, 0]);
        ip.extend_from_slice(&self.src.ip().octets());
        ip.extend_from_slice(&self.dst.ip().octets());
        ip.extend_from_slice(&self.options);
        let c = !fold(sum16(&ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    fn l4_bytes(&self) -> (u8, Vec<u8>) {
        let ports = |h: &mut Vec<u8>| {
            h.extend_from_slice(&self.src.port().to_be_bytes());
            h.extend_from_slice(&self.dst.port().to_be_bytes());
        };
        let (proto, mut seg, csum_at) = match self.l4 {
            L4::Tcp { flags } => {
                let mut h = Vec::with_capacity(20 + self.payload.len());
                ports(&mut h);
                h.extend_from_slice(&self.seq.to_be_bytes());
                h.extend_from_slice(&self.ack.to_be_bytes());
                h.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
                (TCP, h, Some(16))
            }
            L4::Udp { checksum } => {
                let mut h = Vec::with_capacity(8 + self.payload.len());
                ports(&mut h);
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                (UDP, h, checksum.then_some(6))
            }
            L4::Sctp { chunk } => {
                let mut h = Vec::with_capacity(16 + self.payload.len());
                ports(&mut h);
                // INIT goes out with verification tag 0.
                let vtag: u32 = if chunk == SCTP_INIT { 0 } else { 0x1122_3344 };
                h.extend_from_slice(&vtag.to_be_bytes());
                h.extend_from_slice(&[0; 4]);
                h.extend_from_slice(&[chunk, 0]);
                h.extend_from_slice(&((4 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&self.payload);
                // Chunks are padded to 4 bytes.
                h.resize(h.len().next_multiple_of(4), 0);
                let crc = crc32c(&h);
                h[8..12].copy_from_slice(&crc.to_le_bytes());
                return (SCTP, h);
            }
            L4::IcmpEcho { kind, id } => {
                let mut h = vec![kind, 0, 0, 0];
                h.extend_from_slice(&id.to_be_bytes());
                h.extend_from_slice(&1u16.to_be_bytes());
                h.extend_from_slice(&self.payload);
                let c = !fold(sum16(&h));
                h[2..4].copy_from_slice(&c.to_be_bytes());
                return (ICMP, h);
            }
            L4::Raw(proto) => (proto, Vec::new(), None),
        };
        seg.extend_from_slice(&self.payload);
        if let Some(at) = csum_at {
            let mut c =
                !fold(pseudo(*self.src.ip(), *self.dst.ip(), proto, seg.len()) + sum16(&seg));
            if proto == UDP && c == 0 {
                c = 0xffff;
            }
            seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        (proto, seg)
    }
}

/// An ARP request (who has 20.20.20.1).
pub fn arp() -> Vec<u8> {
    let mut f = [[0xff; 6], SRC_MAC].concat();
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[20, 20, 20, 1]);
    f
}

/// An IPv6 TCP SYN to port 2020; the checksum is not needed.
pub fn ipv6_tcp() -> Vec<u8> {
    let mut f = [DST_MAC, SRC_MAC].concat();
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, TCP, 64]);
    f.extend_from_slice(&[0xfd; 16]);
    f.extend_from_slice(&[0xfe; 16]);
    f.extend_from_slice(&[0x9c, 0x40, 0x07, 0xe4]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&[5 << 4, SYN, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// Where the headers of a well-formed IPv4 TCP or UDP frame are, and its
/// addresses and ports.
#[derive(Debug)]
pub struct Parsed {
    pub l3: usize,
    pub l4: usize,
    pub proto: u8,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
}

pub fn parse(f: &[u8]) -> Parsed {
    let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let l3 = if be16(12) == ETH_P_8021Q {
        ETH_HLEN + 4
    } else {
        ETH_HLEN
    };
    assert_eq!(be16(l3 - 2), ETH_P_IP, "not IPv4: {f:02x?}");
    let l4 = l3 + usize::from(f[l3] & 0x0f) * 4;
    let ip = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    Parsed {
        l3,
        l4,
        proto: f[l3 + 9],
        src: SocketAddrV4::new(ip(l3 + 12), be16(l4)),
        dst: SocketAddrV4::new(ip(l3 + 16), be16(l4 + 2)),
    }
}

/// Asserts that the IPv4 header checksum and the TCP, UDP, SCTP (CRC32c) or
/// ICMP checksum of `f` verify (a UDP checksum of 0, "none", is accepted).
pub fn assert_checksums(f: &[u8]) {
    let p = parse(f);
    assert_eq!(
        fold(sum16(&f[p.l3..p.l4])),
        0xffff,
        "IPv4 checksum: {f:02x?}"
    );
    let tot_len = usize::from(u16::from_be_bytes([f[p.l3 + 2], f[p.l3 + 3]]));
    let seg = &f[p.l4..p.l3 + tot_len];
    match p.proto {
        UDP if seg[6..8] == [0, 0] => return,
        ICMP => {
            assert_eq!(fold(sum16(seg)), 0xffff, "ICMP checksum: {f:02x?}");
            return;
        }
        SCTP => {
            let mut zeroed = seg.to_vec();
            zeroed[8..12].fill(0);
            assert_eq!(
                crc32c(&zeroed).to_le_bytes(),
                seg[8..12],
                "SCTP CRC32c: {f:02x?}"
            );
            return;
        }
        _ => assert!(p.proto == TCP || p.proto == UDP, "not TCP or UDP"),
    }
    let sum = pseudo(*p.src.ip(), *p.dst.ip(), p.proto, seg.len()) + sum16(seg);
    assert_eq!(fold(sum), 0xffff, "L4 checksum: {f:02x?}");
}

/// An ICMP error from `src` to `dst` (TTL 64, to DST_MAC) quoting `quoted`
/// (an IP packet, as much of it as given), every checksum valid.
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, (kind, code): (u8, u8), quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0xdc];
    icmp.extend_from_slice(quoted);
    let c = !fold(sum16(&icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, ICMP, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = !fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = [DST_MAC, SRC_MAC].concat();
    f.extend_from_slice(&ETH_P_IP.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// `p` from its IP header on, as an ICMP error quotes it.
pub fn quoted(p: &Packet) -> Vec<u8> {
    p.build()[ETH_HLEN..].to_vec()
}

/// One's complement sum of big-endian 16-bit words, odd byte padded with 0.
pub fn sum16(b: &[u8]) -> u32 {
    b.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum()
}

pub fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    sum16(&src.octets()) + sum16(&dst.octets()) + u32::from(proto) + len as u32
}

/// CRC32c (Castagnoli, reflected), as SCTP computes it over its packet.
pub fn crc32c(b: &[u8]) -> u32 {
    !b.iter().fold(!0u32, |crc, &byte| {
        (0..8).fold(crc ^ u32::from(byte), |c, _| {
            (c >> 1) ^ (0x82f6_3b78 & (c & 1).wrapping_neg())
        })
    })
}

/// Runs `p` through `hook`; the program must hand it on (not forwarded: no
/// interfaces are mirrored) with valid checksums. Returns the frame.
pub fn run(dp: &Datapath, hook: HookKind, p: &Packet) -> Vec<u8> {
    let pass = match hook {
        HookKind::Tc => 0,
        HookKind::Xdp => 2,
    };
    let r = dp
        .test_run(hook, &p.build(), 1)
        .unwrap_or_else(|e| panic!("test run: {e}"));
    assert_eq!(r.retval, pass, "verdict for {p:?}");
    assert_checksums(&r.data);
    r.data
}

/// The conntrack key of the direction from `src` to `dst`.
pub fn ct_key(src: SocketAddrV4, dst: SocketAddrV4, proto: u8) -> ll_ct_key {
    ll_ct_key {
        saddr: u32::from(*src.ip()).to_be(),
        daddr: u32::from(*dst.ip()).to_be(),
        sport: src.port().to_be(),
        dport: dst.port().to_be(),
        proto,
        pad: [0; 3],
    }
}

/// A datapath with small maps and `conntrack` entries, for test runs.
pub fn load_with(conntrack: u32) -> Datapath {
    let limits = Limits {
        services: 64,
        conntrack,
        routes: 64,
        neighbours: 64,
    };
    Datapath::load(limits, None)
        .unwrap_or_else(|e| panic!("datapath tests need root with CAP_BPF: {e}"))
}

/// A datapath with small maps, for test runs.
pub fn load() -> Datapath {
    load_with(1024)
}

/// A default-mode rule for `key` to `eps` (address, target port), weight 1,
/// every option at its default.
pub fn lb_rule(key: ServiceKey, selection: Selection, eps: &[(IpAddr, u16)]) -> LbRule {
    LbRule {
        key,
        name: String::new(),
        selection,
        mode: Mode::Default,
        endpoints: eps
            .iter()
            .map(|&(ip, port)| Endpoint {
                ip,
                port,
                weight: 1,
            })
            .collect(),
        inactivity_timeout: 0,
        monitor: false,
        bgp: false,
        sources: vec![],
        mark: 0,
    }
}

/// Packets per reason, indexed by ll_reason.
pub fn reasons(dp: &Datapath) -> Vec<u64> {
    let r = dp.reason_counters().expect("reading reason counters");
    r.iter().map(|(_, c)| c.packets).collect()
}
