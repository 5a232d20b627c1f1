//! The firewall: a rule set compiled into the classifier's maps
//! (bpf/lib/fw.h) and swapped in whole, its per-rule counters and its events.
//!
//! Rules are ordered by preference and numbered by position (0 is the
//! highest). For every field of a packet the compiler precomputes the set of
//! rules that field value satisfies, as a bitmap over positions: per source
//! and destination prefix named by a rule (with the /0 root), the rules whose
//! prefix contains it, so that the datapath's longest-prefix match yields
//! exactly the rules matching the address; per port, the rules whose range
//! holds it (ranges cut the port space into equivalence classes); per
//! protocol; per interface named by a rule. Equal bitmaps are stored once, in
//! blocks of 512 rules, and only their non-zero blocks.
//!
//! Two generations of these maps exist. A change fills the inactive one and
//! flips `ll_fw_cur`, so the datapath sees the old set or the new one, never
//! a mix, and a failure before the flip leaves the old set in force. The
//! generation being rewritten was retired by the previous change, so no
//! packet still reads it.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::types::{
    ll_counters, ll_ct, ll_ct_dir, ll_fw_action, ll_fw_block, ll_fw_block_key, ll_fw_event,
    ll_fw_gen, ll_fw_iface_key, ll_fw_lpm_key, ll_fw_rule, ll_fw_set, ll_xlate,
};
use super::{percpu_sum, pod, Ct4, Ct6, CtTable, Datapath, Error, Result, SVC_NONE};

/// Rules in one rule set at most (bpf/lib/common.h LL_FW_MAX_RULES).
pub const FW_MAX_RULES: usize = 16384;
const BLOCK_WORDS: usize = 8;
/// Port values per field: every port, and "no port" (LL_FW_NO_PORT).
const PORTS: usize = 65537;
const NO_PORT: usize = 65536;
/// Rule sets per generation at most: set ids are gen << 24 | index.
const SET_INDEX_BITS: u32 = 24;
const LL_FW_RECORD: u32 = 0x1;

/// One firewall rule as the datapath applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEntry {
    /// Stable rule id; counters and events are per id.
    pub id: u32,
    /// Higher wins.
    pub preference: u32,
    /// Source prefix; None = any address of either family.
    pub src: Option<(IpAddr, u8)>,
    pub dst: Option<(IpAddr, u8)>,
    /// Inclusive range; (0, 65535) = any, including packets without ports.
    pub sport: (u16, u16),
    pub dport: (u16, u16),
    /// IP protocol number; None = any.
    pub proto: Option<u8>,
    /// Input interface; None = any.
    pub ifindex: Option<u32>,
    pub action: FwAction,
    /// Emit an event per matched packet (logged by the daemon).
    pub record: bool,
    /// skb->mark for the flow's packets, at TC (XDP has no mark).
    pub mark: Option<u32>,
}

impl FwEntry {
    /// A rule matching every packet, without record or mark; narrow it
    /// with struct update syntax.
    pub fn matching_all(id: u32, preference: u32, action: FwAction) -> FwEntry {
        FwEntry {
            id,
            preference,
            src: None,
            dst: None,
            sport: (0, u16::MAX),
            dport: (0, u16::MAX),
            proto: None,
            ifindex: None,
            action,
            record: false,
            mark: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FwAction {
    Allow,
    Drop,
    /// To Linux unchanged.
    Trap,
    /// Out of `ifindex`, unchanged.
    Redirect {
        ifindex: u32,
    },
    Snat {
        addr: IpAddr,
        port: Option<u16>,
    },
    Masquerade,
}

/// What happens to a new flow that no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FwDefault {
    #[default]
    Allow,
    Drop,
}

/// One packet a rule with `record` matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEvent {
    pub rule_id: u32,
    pub ifindex: u32,
    pub action: &'static str,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// The classifier's maps.
pub(super) struct FwMaps {
    pub(super) cur: MapHandle,
    pub(super) gens: MapHandle,
    pub(super) rules: MapHandle,
    pub(super) lpm: MapHandle,
    pub(super) ports: MapHandle,
    pub(super) protos: MapHandle,
    pub(super) ifaces: MapHandle,
    pub(super) blocks: MapHandle,
    pub(super) stats: MapHandle,
    pub(super) events: MapHandle,
}

/// A set of rules: bit i stands for the rule at position i.
type Bits = Vec<u64>;

/// Distinct rule sets, each stored once.
#[derive(Default)]
struct Sets {
    index: HashMap<Bits, u32>,
    all: Vec<Bits>,
}

impl Sets {
    fn intern(&mut self, bits: Bits) -> u32 {
        if let Some(&i) = self.index.get(&bits) {
            return i;
        }
        let i = self.all.len() as u32;
        self.all.push(bits.clone());
        self.index.insert(bits, i);
        i
    }
}

fn set_bit(b: &mut Bits, pos: usize) {
    b[pos / 64] |= 1 << (pos % 64);
}

fn clear_bit(b: &mut Bits, pos: usize) {
    b[pos / 64] &= !(1 << (pos % 64));
}

/// An address as (family 4 or 6, value, width in bits).
fn addr_bits(a: IpAddr) -> (u8, u128, u8) {
    match a {
        IpAddr::V4(a) => (4, u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (6, u128::from(a), 128),
    }
}

fn mask(v: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        v & ((!0u128 >> (128 - u32::from(len))) << (width - len))
    }
}

/// The source (0) or destination (1) prefix of a rule.
fn prefix(e: &FwEntry, field: usize) -> Option<(IpAddr, u8)> {
    if field == 0 {
        e.src
    } else {
        e.dst
    }
}

fn port_range(e: &FwEntry, field: usize) -> (u16, u16) {
    if field == 0 {
        e.sport
    } else {
        e.dport
    }
}

/// A prefix of one field and family: (field, family, masked value, length).
type Node = (usize, u8, u128, u8);

/// The rule set in the classifier's layout, independent of the generation
/// it is written to.
struct Compiled {
    /// Position -> rule, highest preference first.
    rules: Vec<FwEntry>,
    nwords: usize,
    sets: Sets,
    /// Every prefix named by a rule, and the /0 roots -> set.
    nodes: HashMap<Node, u32>,
    /// Prefix lengths present per (field, family), longest first.
    lens: HashMap<(usize, u8), Vec<u8>>,
    /// Per field, port value -> set.
    ports: [Vec<u32>; 2],
    protos: Vec<u32>,
    ifaces: Vec<(u32, u32)>,
    any_iface: u32,
}

impl Compiled {
    fn new(entries: &[FwEntry]) -> Compiled {
        let mut rules = entries.to_vec();
        rules.sort_by_key(|e| (std::cmp::Reverse(e.preference), e.id));
        let n = rules.len();
        let nwords = n.div_ceil(64);
        let empty = vec![0u64; nwords];
        let bits_of = |pred: &dyn Fn(&FwEntry) -> bool| {
            let mut b = empty.clone();
            for (pos, e) in rules.iter().enumerate() {
                if pred(e) {
                    set_bit(&mut b, pos);
                }
            }
            b
        };
        let mut sets = Sets::default();

        let mut nodes = HashMap::new();
        let mut lens: HashMap<(usize, u8), Vec<u8>> = HashMap::new();
        for field in 0..2 {
            let any = bits_of(&|e| prefix(e, field).is_none());
            for (fam, width) in [(4u8, 32u8), (6, 128)] {
                // Rules per prefix of this field and family.
                let mut at: HashMap<(u128, u8), Vec<usize>> = HashMap::new();
                for (pos, e) in rules.iter().enumerate() {
                    if let Some((a, len)) = prefix(e, field) {
                        let (f, v, _) = addr_bits(a);
                        if f == fam {
                            let len = len.min(width);
                            at.entry((mask(v, len, width), len)).or_default().push(pos);
                        }
                    }
                }
                let mut present: BTreeSet<u8> = at.keys().map(|&(_, l)| l).collect();
                present.insert(0);
                let all: BTreeSet<(u128, u8)> = at.keys().copied().chain([(0, 0)]).collect();
                for (v, len) in all {
                    let mut b = any.clone();
                    for &l in present.iter().take_while(|&&l| l <= len) {
                        for &pos in at.get(&(mask(v, l, width), l)).into_iter().flatten() {
                            set_bit(&mut b, pos);
                        }
                    }
                    nodes.insert((field, fam, v, len), sets.intern(b));
                }
                lens.insert((field, fam), present.into_iter().rev().collect());
            }
        }

        let ports = [0, 1].map(|field| {
            let mut starts: HashMap<usize, Vec<usize>> = HashMap::new();
            let mut ends: HashMap<usize, Vec<usize>> = HashMap::new();
            let mut bounds = BTreeSet::from([0usize]);
            for (pos, e) in rules.iter().enumerate() {
                let (lo, hi) = port_range(e, field);
                if lo <= hi {
                    let (lo, end) = (usize::from(lo), usize::from(hi) + 1);
                    starts.entry(lo).or_default().push(pos);
                    ends.entry(end).or_default().push(pos);
                    bounds.extend([lo, end]);
                }
            }
            let bounds: Vec<usize> = bounds.into_iter().filter(|&b| b < NO_PORT).collect();
            let mut table = vec![0u32; PORTS];
            let mut cur = empty.clone();
            for (i, &b) in bounds.iter().enumerate() {
                for &pos in ends.get(&b).into_iter().flatten() {
                    clear_bit(&mut cur, pos);
                }
                for &pos in starts.get(&b).into_iter().flatten() {
                    set_bit(&mut cur, pos);
                }
                let end = bounds.get(i + 1).copied().unwrap_or(NO_PORT);
                table[b..end].fill(sets.intern(cur.clone()));
            }
            table[NO_PORT] = sets.intern(bits_of(&|e| port_range(e, field) == (0, u16::MAX)));
            table
        });

        let protos = (0..=255u8)
            .map(|p| sets.intern(bits_of(&|e| e.proto.is_none_or(|q| q == p))))
            .collect();
        let named: BTreeSet<u32> = rules.iter().filter_map(|e| e.ifindex).collect();
        let ifaces = named
            .into_iter()
            .map(|i| {
                let b = bits_of(&|e| e.ifindex.is_none_or(|j| j == i));
                (i, sets.intern(b))
            })
            .collect();
        let any_iface = sets.intern(bits_of(&|e| e.ifindex.is_none()));
        Compiled {
            rules,
            nwords,
            sets,
            nodes,
            lens,
            ports,
            protos,
            ifaces,
            any_iface,
        }
    }

    /// The set of the longest prefix of `field` containing `a`.
    fn addr_set(&self, field: usize, a: IpAddr) -> &Bits {
        let (fam, v, width) = addr_bits(a);
        let idx = self.lens[&(field, fam)]
            .iter()
            .find_map(|&l| self.nodes.get(&(field, fam, mask(v, l, width), l)))
            .expect("the /0 root is always present");
        &self.sets.all[*idx as usize]
    }

    /// The first rule matching a flow's first packet, whatever interface it
    /// came in on.
    fn first_match(&self, t: &Tuple) -> Option<&FwEntry> {
        let port = |field: usize, p: Option<u16>| {
            &self.sets.all[self.ports[field][p.map_or(NO_PORT, usize::from)] as usize]
        };
        let sets = [
            self.addr_set(0, t.src),
            self.addr_set(1, t.dst),
            port(0, t.sport),
            port(1, t.dport),
            &self.sets.all[self.protos[usize::from(t.proto)] as usize],
        ];
        (0..self.nwords).find_map(|w| {
            let word = sets.iter().fold(!0u64, |acc, s| acc & s[w]);
            (word != 0).then(|| &self.rules[w * 64 + word.trailing_zeros() as usize])
        })
    }

    fn set(gen: u32, idx: u32) -> ll_fw_set {
        ll_fw_set {
            id: gen << SET_INDEX_BITS | idx,
            blocks: 0,
        }
    }
}

/// A flow as its first packet showed it.
struct Tuple {
    src: IpAddr,
    dst: IpAddr,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: u8,
}

impl Tuple {
    /// From a conntrack key's fields (ports in network order, meaningful
    /// for TCP and UDP only).
    fn new(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8) -> Tuple {
        let ports = proto == 6 || proto == 17;
        Tuple {
            src,
            dst,
            sport: ports.then(|| u16::from_be(sport)),
            dport: ports.then(|| u16::from_be(dport)),
            proto,
        }
    }
}

fn rule_value(e: &FwEntry) -> ll_fw_rule {
    let mut v = ll_fw_rule {
        id: e.id,
        flags: if e.record { LL_FW_RECORD } else { 0 },
        mark: e.mark.unwrap_or(0),
        ..Default::default()
    };
    v.action = match e.action {
        FwAction::Allow => ll_fw_action::LL_FW_ALLOW,
        FwAction::Drop => ll_fw_action::LL_FW_DROP,
        FwAction::Trap => ll_fw_action::LL_FW_TRAP,
        FwAction::Redirect { ifindex } => {
            v.ifindex = ifindex;
            ll_fw_action::LL_FW_REDIRECT
        }
        FwAction::Snat { addr, port } => {
            v.snat_addr = super::network::family_bytes(&addr).1;
            v.snat_port = port.unwrap_or(0).to_be();
            ll_fw_action::LL_FW_SNAT
        }
        FwAction::Masquerade => ll_fw_action::LL_FW_MASQUERADE,
    };
    v
}

/// Map bytes of many keys or values.
fn concat<T: Copy>(items: &[T]) -> Vec<u8> {
    items.iter().flat_map(|v| pod::bytes(v).to_vec()).collect()
}

fn update_batch<K: Copy, V: Copy>(
    map: &MapHandle,
    name: &'static str,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    map.update_batch(
        &concat(keys),
        &concat(values),
        keys.len() as u32,
        MapFlags::ANY,
        MapFlags::ANY,
    )
    .map_err(|e| super::full_or(e, name, "writing the firewall"))
}

/// Deletes the keys of `map` for which `doomed` holds.
fn delete_where<K: Copy>(map: &MapHandle, doomed: impl Fn(&K) -> bool) -> Result<()> {
    let keys: Vec<Vec<u8>> = map
        .keys()
        .filter(|k| pod::read::<K>(k).is_some_and(|k| doomed(&k)))
        .collect();
    for k in keys {
        match map.delete(&k) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::bpf("clearing the firewall")(e)),
        }
    }
    Ok(())
}

impl Datapath {
    /// Replaces the whole rule set atomically: the datapath never sees half a
    /// rule set, and a failure leaves the old set active. Then flushes from
    /// conntrack every flow the new set would not let in as it is: flows whose
    /// first packet it drops, traps or redirects, whose mark or source
    /// translation it changes, or whose verdict depends on the interface the
    /// flow came in on (conntrack does not keep it). Flows it still allows
    /// keep going untouched.
    pub fn set_firewall(&self, entries: &[FwEntry], default: FwDefault) -> Result<()> {
        if entries.len() > FW_MAX_RULES {
            return Err(Error::MapFull { map: "ll_fw_rules" });
        }
        let c = Compiled::new(entries);
        let values: Vec<ll_fw_rule> = c.rules.iter().map(rule_value).collect();
        let _guard = self.fw_lock.lock().unwrap_or_else(|p| p.into_inner());
        let m = &self.maps.fw;
        let cur = self.fw_generation()?;
        let gen = 1 - cur;
        self.write_generation(gen, &c, &values, default)?;
        m.cur
            .update(&0u32.to_ne_bytes(), &gen.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("switching the firewall generation"))?;

        let live: HashSet<u32> = entries.iter().map(|e| e.id).collect();
        delete_where::<u32>(&m.stats, |id| !live.contains(id))?;
        let judged = |t: Tuple, v: &ll_ct, nat_src: IpAddr| {
            v.dir == ll_ct_dir::LL_CT_ORIGINAL && !still_allowed(&c, default, &t, v, nat_src)
        };
        self.flush_table::<Ct4>(|k, v| {
            let (s, d) = (k.saddr.to_ne_bytes(), k.daddr.to_ne_bytes());
            let t = Tuple::new(s.into(), d.into(), k.sport, k.dport, k.proto);
            judged(t, v, Ct4::nat_source(v))
        })?;
        self.flush_table::<Ct6>(|k, v| {
            let t = Tuple::new(k.saddr.into(), k.daddr.into(), k.sport, k.dport, k.proto);
            judged(t, &v.ct, Ct6::nat_source(v))
        })
        .map(|_| ())
    }

    fn fw_generation(&self) -> Result<u32> {
        let v = self
            .maps
            .fw
            .cur
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("reading the firewall generation"))?;
        Ok(v.and_then(|b| pod::read::<u32>(&b)).unwrap_or(0) & 1)
    }

    /// Fills generation `gen` (not the active one) with the rule set `c`,
    /// whose rules' map values are `values` (by position).
    fn write_generation(
        &self,
        gen: u32,
        c: &Compiled,
        values: &[ll_fw_rule],
        default: FwDefault,
    ) -> Result<()> {
        let m = &self.maps.fw;
        // What a change before the previous one left in this generation.
        delete_where::<ll_fw_lpm_key>(&m.lpm, |k| u32::from(k.gen) == gen)?;
        delete_where::<ll_fw_iface_key>(&m.ifaces, |k| k.gen == gen)?;
        delete_where::<ll_fw_block_key>(&m.blocks, |k| k.set >> SET_INDEX_BITS == gen)?;

        if c.sets.all.len() >= 1 << SET_INDEX_BITS {
            return Err(Error::MapFull {
                map: "ll_fw_blocks",
            });
        }
        let mut handles = Vec::with_capacity(c.sets.all.len());
        let (mut bkeys, mut blocks) = (Vec::new(), Vec::new());
        for (i, bits) in c.sets.all.iter().enumerate() {
            let mut set = Compiled::set(gen, i as u32);
            for (b, chunk) in bits.chunks(BLOCK_WORDS).enumerate() {
                if chunk.iter().all(|&w| w == 0) {
                    continue;
                }
                let mut blk = ll_fw_block::default();
                blk.w[..chunk.len()].copy_from_slice(chunk);
                set.blocks |= 1 << b;
                bkeys.push(ll_fw_block_key {
                    set: set.id,
                    block: b as u32,
                });
                blocks.push(blk);
            }
            handles.push(set);
        }
        update_batch(&m.blocks, "ll_fw_blocks", &bkeys, &blocks)?;

        for (&(field, fam, v, len), &idx) in &c.nodes {
            let mut key = ll_fw_lpm_key {
                prefixlen: 32 + u32::from(len),
                gen: gen as u8,
                field: field as u8,
                family: fam,
                ..Default::default()
            };
            if fam == 4 {
                key.addr[..4].copy_from_slice(&(v as u32).to_be_bytes());
            } else {
                key.addr = v.to_be_bytes();
            }
            m.lpm
                .update(
                    pod::bytes(&key),
                    pod::bytes(&handles[idx as usize]),
                    MapFlags::ANY,
                )
                .map_err(|e| super::full_or(e, "ll_fw_lpm", "writing the firewall"))?;
        }

        let port_keys: Vec<u32> = (0..2 * PORTS as u32)
            .map(|i| gen * 2 * PORTS as u32 + i)
            .collect();
        let port_sets: Vec<ll_fw_set> = c
            .ports
            .iter()
            .flatten()
            .map(|&i| handles[i as usize])
            .collect();
        update_batch(&m.ports, "ll_fw_ports", &port_keys, &port_sets)?;
        let proto_keys: Vec<u32> = (0..256).map(|p| gen * 256 + p).collect();
        let proto_sets: Vec<ll_fw_set> = c.protos.iter().map(|&i| handles[i as usize]).collect();
        update_batch(&m.protos, "ll_fw_protos", &proto_keys, &proto_sets)?;
        let (ikeys, isets): (Vec<ll_fw_iface_key>, Vec<ll_fw_set>) = c
            .ifaces
            .iter()
            .map(|&(ifindex, i)| (ll_fw_iface_key { gen, ifindex }, handles[i as usize]))
            .unzip();
        update_batch(&m.ifaces, "ll_fw_ifaces", &ikeys, &isets)?;
        let rule_keys: Vec<u32> = (0..values.len() as u32)
            .map(|pos| gen * FW_MAX_RULES as u32 + pos)
            .collect();
        update_batch(&m.rules, "ll_fw_rules", &rule_keys, values)?;

        // Counters of new rules start at zero; those of kept rules go on.
        let zero = vec![pod::bytes(&ll_counters::default()).to_vec(); self.ncpus];
        for e in &c.rules {
            match m
                .stats
                .update_percpu(&e.id.to_ne_bytes(), &zero, MapFlags::NO_EXIST)
            {
                Ok(()) => {}
                Err(err) if err.kind() == libbpf_rs::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(super::full_or(err, "ll_fw_stats", "writing the firewall")),
            }
        }

        let cfg = ll_fw_gen {
            active: u32::from(!c.rules.is_empty() || default == FwDefault::Drop),
            default_drop: u32::from(default == FwDefault::Drop),
            n_rules: c.rules.len() as u32,
            pad: 0,
            any_iface: handles[c.any_iface as usize],
        };
        m.gens
            .update(&gen.to_ne_bytes(), pod::bytes(&cfg), MapFlags::ANY)
            .map_err(Error::bpf("writing the firewall"))
    }

    /// Packets and bytes per rule id: the first packets of the flows each
    /// rule matched (every packet, for rules that drop, trap or redirect,
    /// since their flows are not tracked).
    pub fn firewall_counters(&self) -> Result<HashMap<u32, ll_counters>> {
        let stats = &self.maps.fw.stats;
        stats
            .keys()
            .filter_map(|k| pod::read::<u32>(&k))
            .map(|id| Ok((id, percpu_sum(stats, id)?)))
            .collect()
    }

    /// Blocks, calling `f` for each packet a rule with `record` matched,
    /// until `f` returns false.
    pub fn watch_firewall_events(&self, mut f: impl FnMut(FwEvent) -> bool) -> Result<()> {
        self.watch_ring(&self.maps.fw.events, "firewall events", |data| {
            pod::read::<ll_fw_event>(data).is_none_or(|e| f(event(&e)))
        })
    }
}

fn event(e: &ll_fw_event) -> FwEvent {
    let addr = |a: &[u8; 16]| -> IpAddr {
        if e.family == 4 {
            IpAddr::from([a[0], a[1], a[2], a[3]])
        } else {
            IpAddr::from(*a)
        }
    };
    FwEvent {
        rule_id: e.rule_id,
        ifindex: e.ifindex,
        action: match e.action {
            ll_fw_action::LL_FW_ALLOW => "allow",
            ll_fw_action::LL_FW_DROP => "drop",
            ll_fw_action::LL_FW_TRAP => "trap",
            ll_fw_action::LL_FW_REDIRECT => "redirect",
            ll_fw_action::LL_FW_SNAT => "snat",
            ll_fw_action::LL_FW_MASQUERADE => "masquerade",
            _ => "-",
        },
        src: addr(&e.saddr),
        dst: addr(&e.daddr),
        sport: u16::from_be(e.sport),
        dport: u16::from_be(e.dport),
        proto: e.proto,
    }
}

/// Whether the flow `t`, whose original entry is `v` with the translated
/// source address `nat_src`, would be let in as it is by the rule set `c`
/// with policy `default`.
fn still_allowed(c: &Compiled, default: FwDefault, t: &Tuple, v: &ll_ct, nat_src: IpAddr) -> bool {
    let rule = match c.first_match(t) {
        None if default == FwDefault::Allow => None,
        None => return false,
        // Conntrack does not keep the interface: judge such flows again.
        Some(e) if e.ifindex.is_some() => return false,
        Some(e) => Some(e),
    };
    let action = rule.map_or(FwAction::Allow, |e| e.action);
    if !matches!(
        action,
        FwAction::Allow | FwAction::Snat { .. } | FwAction::Masquerade
    ) {
        return false;
    }
    // Load-balanced flows are translated by their service and carry no mark.
    if v.svc_id != SVC_NONE {
        return true;
    }
    let translated = v.xlate.0 & ll_xlate::LL_XLATE_SRC.0 != 0;
    let same_nat = match action {
        FwAction::Snat { addr, .. } => translated && nat_src == addr,
        // The egress interface's address when the flow started.
        FwAction::Masquerade => translated,
        _ => !translated,
    };
    same_nat && v.ep_idx == rule.and_then(|e| e.mark).unwrap_or(0)
}
