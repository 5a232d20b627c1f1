//! Rules -> the service map's value layout.
use super::pod;
use libbpf_rs::{MapCore, MapFlags};

use super::types::{
    ll_endpoint, ll_maglev, ll_mode, ll_range_key, ll_range_vips, ll_ranges, ll_selection,
    ll_src_key, ll_svc, ll_svc6, ll_svc6_key, ll_svc_key, ll_svc_opts,
};
use super::{full_or, Datapath, Error, Result, MAX_ENDPOINTS, MAX_SLOTS};
use crate::rules::{
    Endpoint, LbRule, Mode, Selection, ServiceKey, SourcePrefix, DEFAULT_INACTIVITY_TIMEOUT,
};
use std::net::IpAddr;

/// bpf/lib/common.h LL_SVC_F_SOURCES.
const SVC_F_SOURCES: u32 = 0x1;

fn src_key(id: u32, p: &SourcePrefix) -> ll_src_key {
    ll_src_key {
        prefixlen: 32 + u32::from(p.len),
        svc_id: id.to_be(),
        addr: p.ip.octets(),
    }
}

/// A service's key in its family's map: ll_services or ll_services6.
pub(super) enum SvcKey {
    V4(ll_svc_key),
    V6(ll_svc6_key),
}

impl SvcKey {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            SvcKey::V4(k) => pod::bytes(k),
            SvcKey::V6(k) => pod::bytes(k),
        }
    }
}

pub(super) fn svc_key(k: &ServiceKey) -> SvcKey {
    match k.ip {
        IpAddr::V4(ip) => SvcKey::V4(ll_svc_key {
            vip: u32::from(ip).to_be(),
            port: k.port.to_be(),
            proto: k.proto.number(),
            pad: 0,
        }),
        IpAddr::V6(ip) => SvcKey::V6(ll_svc6_key {
            vip: ip.octets(),
            port: k.port.to_be(),
            proto: k.proto_number(),
            pad: 0,
        }),
    }
}

/// An address as an ll_endpoint holds it: IPv4 in network order, IPv6 as
/// bpf/lib/lb.h ll_fold6 folds it (its words XORed as they lie in memory).
fn endpoint_addr(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(ip) => u32::from(ip).to_be(),
        IpAddr::V6(ip) => ip
            .octets()
            .chunks_exact(4)
            .map(|w| u32::from_ne_bytes([w[0], w[1], w[2], w[3]]))
            .fold(0, |a, w| a ^ w),
    }
}

/// Port-range services per VIP and protocol (bpf/lib/common.h LL_MAX_RANGES).
pub const MAX_RANGES: usize = 16;

/// A range service sits in the service map under its first port; the range
/// map tells the datapath which first port a packet's port falls under.
pub(super) fn range_key(vip_be: u32, proto: u8) -> ll_range_key {
    ll_range_key {
        vip: vip_be,
        proto,
        pad: [0; 3],
    }
}

/// bpf/lib/common.h ll_range_bit: which bit of ll_range_vips stands for a
/// VIP (in network order, as the map keys hold it).
fn range_bit(vip_be: u32) -> usize {
    (vip_be.wrapping_mul(0x9e37_79b1) >> 22) as usize
}

/// Spreads endpoints over the selection slots in proportion to their weights,
/// interleaved (smooth weighted round robin) so that rr alternates instead of
/// sending runs of flows to one endpoint.
fn slots(weights: &[u8]) -> Vec<u8> {
    let total: u32 = weights.iter().map(|&w| u32::from(w)).sum();
    // Scale down when the weights need more slots than there are, keeping
    // every endpoint at least one slot.
    let shares: Vec<u32> = weights
        .iter()
        .map(|&w| {
            if total as usize <= MAX_SLOTS {
                u32::from(w)
            } else {
                (u32::from(w) * MAX_SLOTS as u32 / total).max(1)
            }
        })
        .collect();
    let n: u32 = shares.iter().sum::<u32>().min(MAX_SLOTS as u32);
    let mut current = vec![0i64; shares.len()];
    let sum: i64 = shares.iter().map(|&s| i64::from(s)).sum();
    (0..n)
        .map(|_| {
            for (c, &s) in current.iter_mut().zip(&shares) {
                *c += i64::from(s);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
                .expect("a rule has at least one endpoint");
            current[best] -= sum;
            best as u8
        })
        .collect()
}

impl Datapath {
    /// Writes (or replaces) the service of `rule` under datapath id `id`,
    /// its endpoints at their list positions, all taking new flows.
    pub fn program_service(&self, id: u32, rule: &LbRule) -> Result<()> {
        let endpoints: Vec<(Endpoint, bool)> = rule.endpoints.iter().map(|e| (*e, true)).collect();
        self.program_service_endpoints(id, rule, &endpoints)
    }

    /// As `program_service`, with the endpoint array given: each entry
    /// with whether it takes new flows. One that does not gets weight 0
    /// (which lc and persist skip) and no selection slot or maglev entry.
    pub fn program_service_endpoints(
        &self,
        id: u32,
        rule: &LbRule,
        endpoints: &[(Endpoint, bool)],
    ) -> Result<()> {
        debug_assert!(!endpoints.is_empty() && endpoints.len() <= MAX_ENDPOINTS);
        let mut svc = ll_svc {
            id,
            sel: match rule.selection {
                Selection::RoundRobin => ll_selection::LL_SEL_RR,
                Selection::Hash => ll_selection::LL_SEL_HASH,
                Selection::Priority => ll_selection::LL_SEL_PRIORITY,
                Selection::Persist => ll_selection::LL_SEL_PERSIST,
                Selection::LeastConnections => ll_selection::LL_SEL_LC,
                Selection::Maglev => ll_selection::LL_SEL_MAGLEV,
            },
            n_endpoints: endpoints.len() as u8,
            mode: match rule.mode {
                _ if rule.is_nat64() => ll_mode::LL_MODE_NAT64,
                Mode::Default => ll_mode::LL_MODE_DEFAULT,
                Mode::OneArm => ll_mode::LL_MODE_ONEARM,
                Mode::FullNat => ll_mode::LL_MODE_FULLNAT,
                Mode::Dsr => ll_mode::LL_MODE_DSR,
            },
            persist_s: match rule.inactivity_timeout {
                0 => DEFAULT_INACTIVITY_TIMEOUT,
                t => t,
            },
            ..Default::default()
        };
        for (slot, (e, live)) in svc.endpoints.iter_mut().zip(endpoints) {
            *slot = ll_endpoint {
                addr: endpoint_addr(e.ip),
                port: e.port.to_be(),
                weight: if *live { e.weight } else { 0 },
                pad: 0,
            };
        }
        // Selection runs over the live endpoints; its results are mapped
        // back to array indices.
        let live: Vec<(usize, &Endpoint)> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, (_, live))| *live)
            .map(|(i, (e, _))| (i, e))
            .collect();
        // Options first: a new service must not take flows before its
        // allowed sources are in place.
        self.set_service_opts(id, rule.mark, &rule.sources)?;
        // None live: n_slots stays 0, and the VIP's new flows go to Linux
        // (LL_R_PASS_NO_ENDPOINT).
        if !live.is_empty() {
            let weights: Vec<u8> = live.iter().map(|(_, e)| e.weight).collect();
            let table = slots(&weights);
            svc.n_slots = table.len() as u16;
            for (slot, &l) in svc.slots.iter_mut().zip(&table) {
                *slot = live[usize::from(l)].0 as u8;
            }
            // The table first: the datapath must never see a maglev service
            // without (or with another service's stale) table.
            if rule.selection == Selection::Maglev {
                let names: Vec<String> = live
                    .iter()
                    .map(|(_, e)| format!("{}:{}", e.ip, e.port))
                    .collect();
                let mut m = ll_maglev {
                    slots: [0; MAGLEV_SIZE],
                    pad: [0; 3],
                };
                for (slot, l) in m.slots.iter_mut().zip(maglev(&names, &weights)) {
                    *slot = live[usize::from(l)].0 as u8;
                }
                self.set_maglev(id, &m)?;
            }
        }
        let key = svc_key(&rule.key);
        let k = &rule.key;
        let SvcKey::V4(key4) = key else {
            // IPv6 services have no port ranges (the daemon refuses them).
            let mut svc6 = ll_svc6 {
                svc,
                ..Default::default()
            };
            // NAT64's IPv4 endpoints (whose addr the datapath uses) as
            // IPv4-mapped addresses, as its conntrack keys them.
            for (a, (e, _)) in svc6.addr.iter_mut().zip(endpoints) {
                *a = match e.ip {
                    IpAddr::V6(ip) => ip.octets(),
                    IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                };
            }
            return self.upsert_service(&key, pod::bytes(&svc6));
        };
        self.upsert_service(&key, pod::bytes(&svc))?;
        // The range after its service, so that it never leads nowhere; a
        // single-port rule that replaced a range takes the range away.
        let range = range_key(key4.vip, k.proto.number());
        self.set_range(&range, k.port, (k.port_max != 0).then_some(k.port_max))
    }

    /// Sets service `id`'s mark and allowed sources (none: any client). The
    /// new prefixes go in before the flag and stale ones out after it, so a
    /// change never lets a client in that neither list allows.
    pub(super) fn set_service_opts(
        &self,
        id: u32,
        mark: u32,
        sources: &[SourcePrefix],
    ) -> Result<()> {
        let keys: Vec<ll_src_key> = sources.iter().map(|p| src_key(id, p)).collect();
        for k in &keys {
            self.maps
                .svc_sources
                .update(pod::bytes(k), &[1], MapFlags::ANY)
                .map_err(|e| full_or(e, "ll_svc_sources", "writing allowed sources"))?;
        }
        let opts = ll_svc_opts {
            mark,
            flags: if sources.is_empty() { 0 } else { SVC_F_SOURCES },
        };
        self.maps
            .svc_opts
            .update(&id.to_ne_bytes(), pod::bytes(&opts), MapFlags::ANY)
            .map_err(Error::bpf("writing service options"))?;
        let wanted: Vec<&[u8]> = keys.iter().map(pod::bytes).collect();
        let stale: Vec<Vec<u8>> = self
            .maps
            .svc_sources
            .keys()
            .filter(|k| {
                pod::read::<ll_src_key>(k).is_some_and(|s| s.svc_id == id.to_be())
                    && !wanted.contains(&k.as_slice())
            })
            .collect();
        for k in stale {
            match self.maps.svc_sources.delete(&k) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::bpf("deleting allowed sources")(e)),
            }
        }
        Ok(())
    }

    /// Deletes services, each given with the datapath id it had.
    pub fn delete_services(&self, services: &[(ServiceKey, u32)]) -> Result<()> {
        let keys: Vec<(SvcKey, u32)> = services.iter().map(|(k, id)| (svc_key(k), *id)).collect();
        self.remove_services(&keys)
    }

    /// Sets the range that starts at port `min` in the ranges of `key` to end
    /// at `max`, or removes it (`None`). The entry is replaced whole, so the
    /// datapath never sees a half-written list.
    pub(super) fn set_range(&self, key: &ll_range_key, min: u16, max: Option<u16>) -> Result<()> {
        let kb = pod::bytes(key);
        let old = self
            .maps
            .ranges
            .lookup(kb, MapFlags::ANY)
            .map_err(Error::bpf("reading port ranges"))?
            .and_then(|v| pod::read::<ll_ranges>(&v))
            .unwrap_or_default();
        let mut list: Vec<(u16, u16)> = (0..(old.n as usize).min(MAX_RANGES))
            .map(|i| (old.min[i], old.max[i]))
            .filter(|&(m, _)| m != min)
            .collect();
        list.extend(max.map(|max| (min, max)));
        if list.len() == old.n as usize && max.is_none() {
            return Ok(());
        }
        if list.is_empty() {
            match self.maps.ranges.delete(kb) {
                Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                    return Err(Error::bpf("deleting port ranges")(e));
                }
                _ => return self.mark_range_vips(),
            }
        }
        if list.len() > MAX_RANGES {
            return Err(Error::MapFull {
                map: "ll_svc_ranges (16 port ranges per VIP and protocol)",
            });
        }
        let mut new = ll_ranges {
            n: list.len() as u32,
            ..Default::default()
        };
        for (i, (lo, hi)) in list.into_iter().enumerate() {
            new.min[i] = lo;
            new.max[i] = hi;
        }
        self.maps
            .ranges
            .update(kb, pod::bytes(&new), MapFlags::ANY)
            .map_err(|e| super::full_or(e, "ll_svc_ranges", "writing port ranges"))?;
        if old.n == 0 {
            self.mark_range_vips()?;
        }
        Ok(())
    }

    /// Tells the datapath which VIPs have ranges, so that packets to other
    /// addresses skip looking for one.
    fn mark_range_vips(&self) -> Result<()> {
        let mut vips = ll_range_vips::default();
        for k in self.maps.ranges.keys() {
            if let Some(k) = pod::read::<ll_range_key>(&k) {
                let bit = range_bit(k.vip);
                vips.bits[bit / 64] |= 1 << (bit % 64);
            }
        }
        self.maps
            .range_vips
            .update(&0u32.to_ne_bytes(), pod::bytes(&vips), MapFlags::ANY)
            .map_err(Error::bpf("marking the VIPs with port ranges"))
    }
}

/// bpf/lib/common.h LL_MAGLEV_SIZE (a prime).
pub const MAGLEV_SIZE: usize = 1021;

/// FNV-1a with a seed: a hash that never changes across builds, so a
/// restarted daemon computes the same maglev table.
fn fnv(seed: u64, s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The maglev lookup table (Eisenbud et al., NSDI 2016), weighted: in each
/// round, endpoint i claims `weights[i]` entries from its own permutation.
/// Endpoints are identified by name, so one leaving or joining disturbs
/// only about 1/N of the table.
fn maglev(names: &[String], weights: &[u8]) -> Vec<u8> {
    let m = MAGLEV_SIZE as u64;
    let perm: Vec<(u64, u64)> = names
        .iter()
        .map(|n| (fnv(0x9e37_79b9, n) % m, fnv(0x85eb_ca6b, n) % (m - 1) + 1))
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut table = vec![u8::MAX; MAGLEV_SIZE];
    let mut filled = 0;
    while filled < MAGLEV_SIZE {
        for (i, &(offset, skip)) in perm.iter().enumerate() {
            for _ in 0..weights[i].max(1) {
                let slot = loop {
                    let c = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[c] == u8::MAX {
                        break c;
                    }
                };
                table[slot] = i as u8;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    return table;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::{maglev, slots, MAGLEV_SIZE};

    fn count(t: &[u8], ep: u8) -> usize {
        t.iter().filter(|&&e| e == ep).count()
    }

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn maglev_spreads_by_weight_and_moves_little_on_removal() {
        let t = maglev(&names(4), &[1, 1, 1, 1]);
        for ep in 0..4u8 {
            let share = count(&t, ep) as f64 / MAGLEV_SIZE as f64;
            assert!((share - 0.25).abs() < 0.02, "endpoint {ep}: {share}");
        }
        let t = maglev(&names(2), &[3, 1]);
        let share = count(&t, 0) as f64 / MAGLEV_SIZE as f64;
        assert!((share - 0.75).abs() < 0.02, "{share}");

        // Removing the third of four endpoints: its entries move, and few others.
        let before = maglev(&names(4), &[1; 4]);
        let mut left = names(4);
        left.remove(2);
        let after = maglev(&left, &[1; 3]);
        let name = |t: &[u8], names: &[String], i: usize| names[t[i] as usize].clone();
        let all = names(4);
        let moved = (0..MAGLEV_SIZE)
            .filter(|&i| before[i] != 2 && name(&before, &all, i) != name(&after, &left, i))
            .count();
        assert!(
            moved < MAGLEV_SIZE / 20,
            "{moved} entries of surviving endpoints moved"
        );
        assert_eq!(
            maglev(&names(4), &[1; 4]),
            before,
            "the table is deterministic"
        );
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(slots(&[1, 1]), vec![0, 1]);
        assert_eq!(slots(&[1, 1, 1]), vec![0, 1, 2]);
    }

    #[test]
    fn weights_are_proportional_and_interleaved() {
        let t = slots(&[3, 1]);
        assert_eq!(t.len(), 4);
        assert_eq!(count(&t, 0), 3);
        assert_eq!(count(&t, 1), 1);
        assert_ne!(t, vec![0, 0, 0, 1].into_iter().rev().collect::<Vec<_>>());
        let t = slots(&[2, 2, 1]);
        assert_eq!((count(&t, 0), count(&t, 1), count(&t, 2)), (2, 2, 1));
        assert_ne!(
            t[0], t[1],
            "smooth WRR does not repeat an endpoint at once: {t:?}"
        );
    }

    #[test]
    fn large_weights_are_scaled_into_the_table() {
        let t = slots(&[255, 255, 1]);
        assert!(t.len() <= super::MAX_SLOTS);
        assert!(count(&t, 2) >= 1, "every endpoint keeps a slot");
        let (a, b) = (count(&t, 0), count(&t, 1));
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
    }
}
