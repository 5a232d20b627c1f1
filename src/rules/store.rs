use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{
    persist, DefaultPolicy, Endpoint, EndpointProbe, Error, FwMatch, LbRule, Result, ServiceKey,
    StoredFwRule,
};
use crate::datapath::{Datapath, MAX_ENDPOINTS};

/// An endpoint address and target port that health checks found down.
pub type EndpointAddr = (IpAddr, u16);

/// Refuses a rule set (key -> index in the request) in which two rules of
/// one address and protocol share a port, naming the later one.
fn check_overlaps(wanted: &HashMap<ServiceKey, usize>) -> Result<()> {
    let mut keys: Vec<(&ServiceKey, &usize)> = wanted.iter().collect();
    keys.sort_by_key(|(k, _)| (k.ip, k.proto, k.port));
    // Sorted by first port, an overlapping pair implies an adjacent one.
    for pair in keys.windows(2) {
        let ((a, &i), (b, &j)) = (pair[0], pair[1]);
        if a.overlaps(b) {
            let (first, later, at) = if i < j { (a, b, j) } else { (b, a, i) };
            return Err(Error::invalid(
                format!("load_balancers[{at}].service.port"),
                format!("{later} overlaps the rule {first}"),
            ));
        }
    }
    Ok(())
}

/// A rule as stored, with the datapath id that indexes its counters.
#[derive(Debug, Clone)]
pub struct StoredRule {
    pub id: u32,
    pub rule: LbRule,
    /// The datapath's endpoint array. An endpoint keeps its index while it
    /// stays in the rule, since counters and flows refer to it by index;
    /// one removed from the rule stays here, draining (no new flows), until
    /// its index is needed for another.
    pub slots: Vec<Endpoint>,
}

impl StoredRule {
    fn new(id: u32, rule: LbRule) -> StoredRule {
        let slots = rule.endpoints.clone();
        StoredRule { id, rule, slots }
    }

    /// The rule with a new definition, its endpoints keeping their indices.
    fn updated(&self, rule: LbRule) -> StoredRule {
        StoredRule {
            id: self.id,
            slots: relayout(&self.slots, &rule.endpoints),
            rule,
        }
    }

    /// The datapath index of an endpoint of the rule.
    pub fn index_of(&self, e: &Endpoint) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| (s.ip, s.port) == (e.ip, e.port))
    }

    /// The datapath's endpoint array, each entry with whether it takes new
    /// flows: it is in the rule and, if the rule is monitored, not down.
    pub fn datapath_endpoints(&self, down: &HashSet<EndpointAddr>) -> Vec<(Endpoint, bool)> {
        self.slots
            .iter()
            .map(|s| {
                let live = self.rule.endpoint(s.ip, s.port).is_some()
                    && !(self.rule.monitor && down.contains(&(s.ip, s.port)));
                (*s, live)
            })
            .collect()
    }
}

/// The endpoint array after a rule's list became `new`: kept endpoints keep
/// their index (with the new weight), removed ones stay as draining entries,
/// and a new one takes a fresh index, or the first draining one once all
/// MAX_ENDPOINTS are used.
fn relayout(old: &[Endpoint], new: &[Endpoint]) -> Vec<Endpoint> {
    let find = |list: &[Endpoint], e: &Endpoint| {
        list.iter().position(|o| (o.ip, o.port) == (e.ip, e.port))
    };
    let mut slots: Vec<Endpoint> = old
        .iter()
        .map(|o| find(new, o).map_or(*o, |i| new[i]))
        .collect();
    for e in new {
        if find(&slots, e).is_some() {
            continue;
        }
        if slots.len() < MAX_ENDPOINTS {
            slots.push(*e);
        } else if let Some(i) = slots.iter().position(|s| find(new, s).is_none()) {
            slots[i] = *e;
        }
    }
    slots
}

/// One change to the rule set, with what undoing it needs.
enum Change {
    Create(StoredRule),
    Update { old: StoredRule, new: StoredRule },
    Delete(StoredRule),
}

/// What an apply changed (or, for a dry run, would change), by rule key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport<K = ServiceKey> {
    pub created: Vec<K>,
    pub updated: Vec<K>,
    pub deleted: Vec<K>,
    pub unchanged: usize,
}

impl<K> Default for ApplyReport<K> {
    fn default() -> Self {
        ApplyReport {
            created: Vec::new(),
            updated: Vec::new(),
            deleted: Vec::new(),
            unchanged: 0,
        }
    }
}

/// Datapath ids of one kind of rule: the lowest free ones are reused, so
/// that ids stay below the size of the tables they index.
#[derive(Default)]
pub(super) struct IdPool {
    free: Vec<u32>,
    next: u32,
}

impl IdPool {
    /// A pool where `live` are taken.
    pub(super) fn with_live(live: &HashSet<u32>) -> IdPool {
        let next = live.iter().max().map_or(0, |m| m + 1);
        let mut free: Vec<u32> = (0..next).filter(|i| !live.contains(i)).collect();
        free.reverse();
        IdPool { free, next }
    }

    /// `what` names the table in the error when `limit` ids are taken.
    pub(super) fn alloc(&mut self, limit: u32, what: &str) -> Result<u32> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next >= limit {
            return Err(Error::Exhausted(format!(
                "the {what} table is full ({limit} entries)"
            )));
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    pub(super) fn release(&mut self, ids: impl IntoIterator<Item = u32>) {
        self.free.extend(ids);
        // Lowest last, so that it is reused first.
        self.free.sort_unstable_by(|a, b| b.cmp(a));
    }
}

pub(super) struct Inner {
    pub(super) rules: BTreeMap<ServiceKey, StoredRule>,
    ids: IdPool,
    pub(super) probes: BTreeMap<IpAddr, EndpointProbe>,
    /// Endpoints that health checks found down (for monitored rules).
    down: HashSet<EndpointAddr>,
    pub(super) firewall: super::fwstore::FirewallState,
}

/// The rule set: the single source of truth the datapath is programmed from.
/// A change goes to the datapath first, then to the state file, and is kept
/// only if both took it; otherwise it is undone, so a failed change leaves
/// the old state intact.
pub struct RuleStore {
    pub(super) dp: Arc<Datapath>,
    pub(super) state_file: Option<PathBuf>,
    /// For first packets that no firewall rule matches.
    pub(super) fw_default: DefaultPolicy,
    inner: Mutex<Inner>,
    /// The state file's generation and its journal's length. Changed only
    /// under the inner lock; atomics for the shared borrow.
    generation: AtomicU64,
    journaled: AtomicUsize,
}

/// The journal is folded into the state file once it holds more entries
/// than the rule set has rules, and not below this.
const JOURNAL_MIN: usize = 1024;

impl RuleStore {
    /// A store persisted in `state_file` (when given). Rules saved there are
    /// programmed again under their old ids, so a restarted daemon adopts
    /// the pinned counters and flows; services the file does not know are
    /// removed from the datapath. The firewall is programmed with
    /// `fw_default` for what its rules do not match.
    pub fn open(
        dp: Arc<Datapath>,
        state_file: Option<PathBuf>,
        fw_default: DefaultPolicy,
    ) -> Result<RuleStore> {
        let saved = match &state_file {
            Some(path) => persist::load(path)?,
            None => persist::State::default(),
        };
        let limit = dp.limits().services;
        let mut rules = BTreeMap::new();
        for s in saved.rules {
            if s.id >= limit || rules.values().any(|o: &StoredRule| o.id == s.id) {
                return Err(Error::Persist(format!(
                    "rule {} has id {}, a duplicate or beyond max_services ({limit})",
                    s.rule.key, s.id
                )));
            }
            dp.program_service_endpoints(s.id, &s.rule, &s.datapath_endpoints(&HashSet::new()))?;
            rules.insert(s.rule.key, s);
        }
        let live: HashSet<u32> = rules.values().map(|s| s.id).collect();
        dp.prune_services(&live)?;
        let store = RuleStore {
            dp,
            state_file,
            fw_default,
            inner: Mutex::new(Inner {
                rules,
                ids: IdPool::with_live(&live),
                probes: saved.probes.into_iter().map(|p| (p.ip, p)).collect(),
                down: HashSet::new(),
                firewall: Default::default(),
            }),
            generation: AtomicU64::new(saved.generation),
            journaled: AtomicUsize::new(saved.journaled),
        };
        store.open_firewall(saved.firewall)?;
        // Fold the journal into the file, which any version reads whole.
        if saved.journaled > 0 {
            let inner = store.lock();
            store.save(&inner.rules, &inner.probes, &inner.firewall.rules)?;
        }
        Ok(store)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the API down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn program_rule(&self, s: &StoredRule, down: &HashSet<EndpointAddr>) -> Result<()> {
        Ok(self
            .dp
            .program_service_endpoints(s.id, &s.rule, &s.datapath_endpoints(down))?)
    }

    fn program(&self, c: &Change, down: &HashSet<EndpointAddr>) -> Result<()> {
        match c {
            Change::Create(s) | Change::Update { new: s, .. } => self.program_rule(s, down),
            Change::Delete(s) => Ok(self.dp.delete_services(&[(s.rule.key, s.id)])?),
        }
    }

    fn undo(&self, c: &Change, down: &HashSet<EndpointAddr>) {
        let res = match c {
            Change::Create(s) => self
                .dp
                .delete_services(&[(s.rule.key, s.id)])
                .map_err(Error::from),
            Change::Update { old: s, .. } | Change::Delete(s) => self.program_rule(s, down),
        };
        if let Err(e) = res {
            tracing::error!(error = %e, "undoing a failed change left the datapath inconsistent");
        }
    }

    /// Programs `changes` (deletes in one batch, so conntrack is walked
    /// once), persists the result and commits it, or undoes all of it.
    fn commit(&self, inner: &mut Inner, changes: Vec<Change>) -> Result<()> {
        let (deletes, others): (Vec<Change>, Vec<Change>) = changes
            .into_iter()
            .partition(|c| matches!(c, Change::Delete(_)));
        let keys: Vec<(ServiceKey, u32)> = deletes
            .iter()
            .filter_map(|c| match c {
                Change::Delete(s) => Some((s.rule.key, s.id)),
                _ => None,
            })
            .collect();
        self.dp.delete_services(&keys)?;
        let mut done: Vec<&Change> = deletes.iter().collect();
        let down = &inner.down;
        let undo_all = |done: &[&Change]| done.iter().rev().for_each(|c| self.undo(c, down));
        for c in &others {
            if let Err(e) = self.program(c, down) {
                undo_all(&done);
                return Err(e);
            }
            done.push(c);
        }

        // Applied in place (a copy of the set per change cost O(N)), with
        // what each replaced, to put back if the change cannot be persisted.
        let replaced: Vec<(ServiceKey, Option<StoredRule>)> = done
            .iter()
            .map(|c| match c {
                Change::Create(s) | Change::Update { new: s, .. } => {
                    (s.rule.key, inner.rules.insert(s.rule.key, s.clone()))
                }
                Change::Delete(s) => (s.rule.key, inner.rules.remove(&s.rule.key)),
            })
            .collect();
        if let Err(e) = self.persist(inner, &done) {
            for (key, old) in replaced.into_iter().rev() {
                match old {
                    Some(s) => inner.rules.insert(key, s),
                    None => inner.rules.remove(&key),
                };
            }
            undo_all(&done);
            return Err(e);
        }
        inner.ids.release(keys.iter().map(|(_, id)| *id));
        Ok(())
    }

    /// Persists rule changes `done`, already in `inner`: appended to the
    /// state file's journal, or the whole set written once the journal
    /// would outgrow it.
    fn persist(&self, inner: &Inner, done: &[&Change]) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let journaled = self.journaled.load(Relaxed) + done.len();
        // Generation 0: no file of this version yet (none, or one from
        // before the journal), so one is written.
        let generation = self.generation.load(Relaxed);
        if generation == 0 || journaled > inner.rules.len().max(JOURNAL_MIN) {
            return self.save(&inner.rules, &inner.probes, &inner.firewall.rules);
        }
        let puts = done.iter().filter_map(|c| match c {
            Change::Create(s) | Change::Update { new: s, .. } => Some(s),
            Change::Delete(_) => None,
        });
        let deletes = done.iter().filter_map(|c| match c {
            Change::Delete(s) => Some(&s.rule.key),
            _ => None,
        });
        persist::append(path, generation, puts, deletes)?;
        self.journaled.store(journaled, Relaxed);
        Ok(())
    }

    /// Writes the state file, when there is one, with these contents, as
    /// the next generation (its journal starts empty).
    pub(super) fn save(
        &self,
        rules: &BTreeMap<ServiceKey, StoredRule>,
        probes: &BTreeMap<IpAddr, EndpointProbe>,
        firewall: &BTreeMap<FwMatch, StoredFwRule>,
    ) -> Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let next = self.generation.load(Relaxed) + 1;
        persist::save(
            path,
            next,
            rules.values(),
            probes.values(),
            firewall.values(),
        )?;
        self.generation.store(next, Relaxed);
        self.journaled.store(0, Relaxed);
        Ok(())
    }

    /// Creates the rule, or updates it in place when its key exists with
    /// another definition (its flows stay on their endpoints, a removed
    /// endpoint drains). Returns the rule and whether it was created.
    pub fn create(&self, rule: LbRule) -> Result<(StoredRule, bool)> {
        let mut inner = self.lock();
        if let Some(old) = inner.rules.get(&rule.key) {
            if old.rule == rule {
                return Err(Error::AlreadyExists(format!("load balancer {}", rule.key)));
            }
            let new = old.updated(rule);
            let changes = vec![Change::Update {
                old: old.clone(),
                new: new.clone(),
            }];
            self.commit(&mut inner, changes)?;
            return Ok((new, false));
        }
        if let Some(other) = inner.rules.keys().find(|k| k.overlaps(&rule.key)) {
            return Err(Error::invalid(
                "load_balancer.service.port",
                format!("{} overlaps the rule {other}", rule.key),
            ));
        }
        let stored = StoredRule::new(inner.ids.alloc(self.dp.limits().services, "service")?, rule);
        let changes = vec![Change::Create(stored.clone())];
        if let Err(e) = self.commit(&mut inner, changes) {
            inner.ids.release([stored.id]);
            return Err(e);
        }
        Ok((stored, true))
    }

    pub fn delete(&self, key: &ServiceKey) -> Result<()> {
        let mut inner = self.lock();
        let old = inner
            .rules
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("load balancer {key}")))?;
        self.commit(&mut inner, vec![Change::Delete(old)])
    }

    /// Makes the rule set exactly `desired`: creates what is new, updates
    /// what differs (keeping its id, so its flows and counters stay), deletes
    /// what is missing; all or nothing. With `dry_run`, only reports.
    pub fn apply(&self, desired: Vec<LbRule>, dry_run: bool) -> Result<ApplyReport> {
        let mut inner = self.lock();
        let mut report = ApplyReport::default();
        let mut changes = Vec::new();
        let mut wanted = HashMap::new();
        for (i, rule) in desired.into_iter().enumerate() {
            if wanted.insert(rule.key, i).is_some() {
                return Err(Error::invalid(
                    "load_balancers",
                    format!("{} is listed twice", rule.key),
                ));
            }
            match inner.rules.get(&rule.key) {
                Some(old) if old.rule == rule => report.unchanged += 1,
                Some(old) => {
                    report.updated.push(rule.key);
                    changes.push(Change::Update {
                        old: old.clone(),
                        new: old.updated(rule),
                    });
                }
                None => {
                    report.created.push(rule.key);
                    changes.push(Change::Create(StoredRule::new(u32::MAX, rule)));
                }
            }
        }
        check_overlaps(&wanted)?;
        for (key, old) in &inner.rules {
            if !wanted.contains_key(key) {
                report.deleted.push(*key);
                changes.push(Change::Delete(old.clone()));
            }
        }
        if dry_run || changes.is_empty() {
            return Ok(report);
        }
        // Ids only once the whole plan is known; deleted ids are freed only
        // by the commit, so an undo never finds its id taken.
        let limit = self.dp.limits().services;
        let mut allocated = Vec::new();
        for c in changes.iter_mut() {
            if let Change::Create(s) = c {
                match inner.ids.alloc(limit, "service") {
                    Ok(id) => {
                        s.id = id;
                        allocated.push(id);
                    }
                    Err(e) => {
                        inner.ids.release(allocated);
                        return Err(e);
                    }
                }
            }
        }
        if let Err(e) = self.commit(&mut inner, changes) {
            inner.ids.release(allocated);
            return Err(e);
        }
        Ok(report)
    }

    pub fn get(&self, key: &ServiceKey) -> Result<StoredRule> {
        self.lock()
            .rules
            .get(key)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("load balancer {key}")))
    }

    /// Each rule's display name (its key when unnamed) by datapath id.
    pub fn names_by_id(&self) -> HashMap<u32, String> {
        self.lock()
            .rules
            .values()
            .map(|s| {
                let name = if s.rule.name.is_empty() {
                    s.rule.key.to_string()
                } else {
                    s.rule.name.clone()
                };
                (s.id, name)
            })
            .collect()
    }

    pub fn list(&self) -> Vec<StoredRule> {
        self.lock().rules.values().cloned().collect()
    }

    /// Takes the endpoints health checks found down out of (or back into)
    /// the selection of the monitored rules whose endpoints changed state.
    /// Indices stay, so flows and counters are untouched.
    pub fn set_down(&self, down: HashSet<EndpointAddr>) -> Result<()> {
        let mut inner = self.lock();
        if inner.down == down {
            return Ok(());
        }
        let mut first_err = None;
        for s in inner.rules.values().filter(|s| s.rule.monitor) {
            if s.datapath_endpoints(&inner.down) != s.datapath_endpoints(&down) {
                if let Err(e) = self.program_rule(s, &down) {
                    first_err.get_or_insert(e);
                }
            }
        }
        inner.down = down;
        first_err.map_or(Ok(()), Err)
    }

    /// Whether health checks have this endpoint down.
    pub fn is_down(&self, ep: EndpointAddr) -> bool {
        self.lock().down.contains(&ep)
    }

    /// Adds an endpoint probe, or replaces the probe of that address when
    /// it differs; the identical probe is ALREADY_EXISTS.
    pub fn create_probe(&self, probe: EndpointProbe) -> Result<()> {
        let mut inner = self.lock();
        if inner.probes.get(&probe.ip) == Some(&probe) {
            return Err(Error::AlreadyExists(format!("endpoint {}", probe.ip)));
        }
        let mut probes = inner.probes.clone();
        probes.insert(probe.ip, probe);
        self.save(&inner.rules, &probes, &inner.firewall.rules)?;
        inner.probes = probes;
        Ok(())
    }

    pub fn delete_probe(&self, ip: IpAddr) -> Result<()> {
        let mut inner = self.lock();
        let mut probes = inner.probes.clone();
        if probes.remove(&ip).is_none() {
            return Err(Error::NotFound(format!("endpoint {ip}")));
        }
        self.save(&inner.rules, &probes, &inner.firewall.rules)?;
        inner.probes = probes;
        Ok(())
    }

    pub fn probes(&self) -> Vec<EndpointProbe> {
        self.lock().probes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ep(last: u8, weight: u8) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(10, 0, 0, last).into(),
            port: 80,
            weight,
        }
    }

    fn lasts(slots: &[Endpoint]) -> Vec<u8> {
        slots
            .iter()
            .map(|e| match e.ip {
                std::net::IpAddr::V4(ip) => ip.octets()[3],
                std::net::IpAddr::V6(ip) => ip.octets()[15],
            })
            .collect()
    }

    #[test]
    fn endpoints_keep_their_index_and_removed_ones_drain() {
        let old = [ep(1, 1), ep(2, 1), ep(3, 1)];
        // 2 removed, 4 added, 3 reweighted: 2 stays in place, draining.
        let new = relayout(&old, &[ep(3, 5), ep(4, 1), ep(1, 1)]);
        assert_eq!(lasts(&new), [1, 2, 3, 4]);
        assert_eq!(new[2].weight, 5);
        // 2 back: its old index again.
        assert_eq!(lasts(&relayout(&new, &[ep(2, 1)])), [1, 2, 3, 4]);
    }

    #[test]
    fn a_full_array_reuses_a_draining_index() {
        let old: Vec<Endpoint> = (1..=MAX_ENDPOINTS as u8).map(|i| ep(i, 1)).collect();
        let mut keep = old.clone();
        keep.remove(4);
        keep.push(ep(200, 1));
        let new = relayout(&old, &keep);
        assert_eq!(new.len(), MAX_ENDPOINTS);
        assert_eq!(new[4].ip, IpAddr::from(Ipv4Addr::new(10, 0, 0, 200)));
    }

    #[test]
    fn only_monitored_rules_take_down_endpoints_out() {
        let mut rule = StoredRule::new(
            0,
            LbRule {
                key: ServiceKey {
                    ip: Ipv4Addr::new(20, 20, 20, 1).into(),
                    port: 80,
                    port_max: 0,
                    proto: super::super::Protocol::Tcp,
                },
                name: String::new(),
                selection: Default::default(),
                mode: Default::default(),
                endpoints: vec![ep(1, 1), ep(2, 1)],
                inactivity_timeout: 0,
                monitor: false,
                bgp: false,
                sources: vec![],
                mark: 0,
            },
        );
        let down = HashSet::from([(IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)), 80)]);
        let live = |r: &StoredRule| -> Vec<bool> {
            r.datapath_endpoints(&down).iter().map(|e| e.1).collect()
        };
        assert_eq!(live(&rule), [true, true]);
        rule.rule.monitor = true;
        assert_eq!(live(&rule), [false, true]);
        let mut detached = rule.rule.clone();
        detached.endpoints.remove(1);
        assert_eq!(live(&rule.updated(detached)), [false, false]);
    }
}
