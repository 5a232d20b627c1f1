//! Rules -> the service map's value layout.
use super::pod;
use super::types::{ll_endpoint, ll_selection, ll_svc, ll_svc_key};
use super::{Datapath, Result, MAX_ENDPOINTS, MAX_SLOTS};
use crate::rules::{LbRule, Selection, ServiceKey};

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
            },
            n_endpoints: rule.endpoints.len() as u8,
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
        let table = slots(&rule.endpoints.iter().map(|e| e.weight).collect::<Vec<_>>());
        svc.n_slots = table.len() as u16;
        svc.slots[..table.len()].copy_from_slice(&table);
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

#[cfg(test)]
mod tests {
    use super::slots;

    fn count(t: &[u8], ep: u8) -> usize {
        t.iter().filter(|&&e| e == ep).count()
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
