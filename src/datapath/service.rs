//! Rules -> the service map's value layout.
use super::pod;
use super::types::{ll_endpoint, ll_maglev, ll_mode, ll_selection, ll_svc, ll_svc_key};
use super::{Datapath, Result, MAX_ENDPOINTS, MAX_SLOTS};
use crate::rules::{LbRule, Mode, Selection, ServiceKey, DEFAULT_INACTIVITY_TIMEOUT};

pub(super) fn svc_key(k: &ServiceKey) -> ll_svc_key {
    ll_svc_key {
        vip: u32::from(k.ip).to_be(),
        port: k.port.to_be(),
        proto: k.proto.number(),
        pad: 0,
    }
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
    /// Writes (or replaces) the service of `rule` under datapath id `id`.
    pub fn program_service(&self, id: u32, rule: &LbRule) -> Result<()> {
        debug_assert!(!rule.endpoints.is_empty() && rule.endpoints.len() <= MAX_ENDPOINTS);
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
            n_endpoints: rule.endpoints.len() as u8,
            mode: match rule.mode {
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
        for (slot, e) in svc.endpoints.iter_mut().zip(&rule.endpoints) {
            *slot = ll_endpoint {
                addr: u32::from(e.ip).to_be(),
                port: e.port.to_be(),
                weight: e.weight,
                pad: 0,
            };
        }
        let weights: Vec<u8> = rule.endpoints.iter().map(|e| e.weight).collect();
        let table = slots(&weights);
        svc.n_slots = table.len() as u16;
        svc.slots[..table.len()].copy_from_slice(&table);
        // The table first: the datapath must never see a maglev service
        // without (or with another service's stale) table.
        if rule.selection == Selection::Maglev {
            let names: Vec<String> = rule
                .endpoints
                .iter()
                .map(|e| format!("{}:{}", e.ip, e.port))
                .collect();
            let mut m = ll_maglev {
                slots: [0; MAGLEV_SIZE],
                pad: [0; 3],
            };
            m.slots.copy_from_slice(&maglev(&names, &weights));
            self.set_maglev(id, &m)?;
        }
        self.upsert_service(&svc_key(&rule.key), &svc)
    }

    /// Deletes services, each given with the datapath id it had.
    pub fn delete_services(&self, services: &[(ServiceKey, u32)]) -> Result<()> {
        let keys: Vec<(Vec<u8>, u32)> = services
            .iter()
            .map(|(k, id)| (pod::bytes(&svc_key(k)).to_vec(), *id))
            .collect();
        self.remove_services(&keys)
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
