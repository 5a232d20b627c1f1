use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{persist, DefaultPolicy, Error, LbRule, Result, ServiceKey};
use crate::datapath::Datapath;

/// A rule as stored, with the datapath id that indexes its counters.
#[derive(Debug, Clone)]
pub struct StoredRule {
    pub id: u32,
    pub rule: LbRule,
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
}

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
            None => persist::Saved::default(),
        };
        let limit = dp.limits().services;
        let mut rules = BTreeMap::new();
        for s in saved.load_balancers {
            if s.id >= limit || rules.values().any(|o: &StoredRule| o.id == s.id) {
                return Err(Error::Persist(format!(
                    "rule {} has id {}, a duplicate or beyond max_services ({limit})",
                    s.rule.key, s.id
                )));
            }
            dp.program_service(s.id, &s.rule)?;
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
                firewall: Default::default(),
            }),
        };
        store.open_firewall(saved.firewall_rules)?;
        Ok(store)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the API down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn program(&self, c: &Change) -> Result<()> {
        match c {
            Change::Create(s) | Change::Update { new: s, .. } => {
                self.dp.program_service(s.id, &s.rule)?
            }
            Change::Delete(s) => self.dp.delete_services(&[(s.rule.key, s.id)])?,
        }
        Ok(())
    }

    fn undo(&self, c: &Change) {
        let res = match c {
            Change::Create(s) => self.dp.delete_services(&[(s.rule.key, s.id)]),
            Change::Update { old: s, .. } | Change::Delete(s) => {
                self.dp.program_service(s.id, &s.rule)
            }
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
        let undo_all = |done: &[&Change]| done.iter().rev().for_each(|c| self.undo(c));
        for c in &others {
            if let Err(e) = self.program(c) {
                undo_all(&done);
                return Err(e);
            }
            done.push(c);
        }

        let mut rules = inner.rules.clone();
        for c in done.iter() {
            match c {
                Change::Create(s) | Change::Update { new: s, .. } => {
                    rules.insert(s.rule.key, s.clone());
                }
                Change::Delete(s) => {
                    rules.remove(&s.rule.key);
                }
            }
        }
        if let Some(path) = &self.state_file {
            if let Err(e) = persist::save(path, rules.values(), inner.firewall.rules.values()) {
                undo_all(&done);
                return Err(e);
            }
        }
        inner.rules = rules;
        inner.ids.release(keys.iter().map(|(_, id)| *id));
        Ok(())
    }

    pub fn create(&self, rule: LbRule) -> Result<StoredRule> {
        let mut inner = self.lock();
        if inner.rules.contains_key(&rule.key) {
            return Err(Error::AlreadyExists(format!("load balancer {}", rule.key)));
        }
        let stored = StoredRule {
            id: inner.ids.alloc(self.dp.limits().services, "service")?,
            rule,
        };
        let changes = vec![Change::Create(stored.clone())];
        if let Err(e) = self.commit(&mut inner, changes) {
            inner.ids.release([stored.id]);
            return Err(e);
        }
        Ok(stored)
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
        let mut wanted = HashSet::new();
        for rule in desired {
            if !wanted.insert(rule.key) {
                return Err(Error::invalid(
                    "load_balancers",
                    format!("{} is listed twice", rule.key),
                ));
            }
            match inner.rules.get(&rule.key) {
                Some(old) if old.rule == rule => report.unchanged += 1,
                Some(old) => {
                    report.updated.push(rule.key);
                    let new = StoredRule { id: old.id, rule };
                    changes.push(Change::Update {
                        old: old.clone(),
                        new,
                    });
                }
                None => {
                    report.created.push(rule.key);
                    changes.push(Change::Create(StoredRule { id: u32::MAX, rule }));
                }
            }
        }
        for (key, old) in &inner.rules {
            if !wanted.contains(key) {
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
}
