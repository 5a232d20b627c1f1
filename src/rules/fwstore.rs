//! The firewall part of the rule store. The datapath takes the whole rule
//! set at once (`set_firewall`), so every change computes the new set,
//! programs it, persists it, and programs the old set again if persisting
//! fails: a failed change leaves the old rules in force.
use std::collections::{BTreeMap, HashMap, HashSet};

use super::firewall::{DefaultPolicy, FwAction, FwMatch, FwRule};
use super::store::{ApplyReport, IdPool, Inner, RuleStore};
use super::{Error, Result};
use crate::datapath::{self, FwDefault, FwEntry};

/// A firewall rule as stored, with the id that its counters are kept under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFwRule {
    pub id: u32,
    pub rule: FwRule,
}

/// Interface names the programmed rule set uses, with the index each
/// resolved to (None: no such interface then).
type Resolved = HashMap<String, Option<u32>>;

#[derive(Default)]
pub(super) struct FirewallState {
    pub(super) rules: BTreeMap<FwMatch, StoredFwRule>,
    ids: IdPool,
    resolved: Resolved,
}

/// Rule ids are u32 and the datapath's tables bound the rule count.
const ID_LIMIT: u32 = u32::MAX;

impl RuleStore {
    /// The datapath's form of `rules`, with interface names resolved
    /// against the interfaces the kernel mirror has put in the datapath.
    /// A rule whose input interface does not exist matches nothing, so it
    /// is left out; a redirect to a missing interface drops.
    fn fw_entries<'a>(
        &self,
        rules: impl Iterator<Item = &'a StoredFwRule>,
    ) -> (Vec<FwEntry>, Resolved) {
        let ifaces: HashMap<String, u32> = self
            .dp
            .ifaces()
            .into_iter()
            .map(|(i, _)| (i.name, i.index))
            .collect();
        let mut resolved = Resolved::new();
        let mut resolve = |name: &String| {
            let index = ifaces.get(name).copied();
            resolved.insert(name.clone(), index);
            index
        };
        let mut entries = Vec::new();
        for s in rules {
            let (m, r) = (&s.rule.matches, &s.rule);
            let ifindex = match &m.port_name {
                None => None,
                Some(name) => match resolve(name) {
                    Some(i) => Some(i),
                    None => continue,
                },
            };
            let action = match &r.action {
                FwAction::Allow => datapath::FwAction::Allow,
                FwAction::Drop => datapath::FwAction::Drop,
                FwAction::Trap => datapath::FwAction::Trap,
                FwAction::Redirect(name) => match resolve(name) {
                    Some(ifindex) => datapath::FwAction::Redirect { ifindex },
                    None => datapath::FwAction::Drop,
                },
                FwAction::Snat { ip, port } => datapath::FwAction::Snat {
                    addr: *ip,
                    port: *port,
                },
                FwAction::Masquerade => datapath::FwAction::Masquerade,
            };
            entries.push(FwEntry {
                id: s.id,
                preference: m.preference,
                src: m.source.map(|p| (p.addr, p.len)),
                dst: m.destination.map(|p| (p.addr, p.len)),
                sport: (m.source_ports.min, m.source_ports.max),
                dport: (m.destination_ports.min, m.destination_ports.max),
                proto: m.protocol,
                ifindex,
                action,
                record: r.record,
                mark: r.mark,
            });
        }
        (entries, resolved)
    }

    fn fw_default(&self) -> FwDefault {
        match self.fw_default {
            DefaultPolicy::Allow => FwDefault::Allow,
            DefaultPolicy::Drop => FwDefault::Drop,
        }
    }

    fn program_firewall<'a>(
        &self,
        rules: impl Iterator<Item = &'a StoredFwRule>,
    ) -> Result<Resolved> {
        let (entries, resolved) = self.fw_entries(rules);
        self.dp.set_firewall(&entries, self.fw_default())?;
        Ok(resolved)
    }

    /// Programs the saved rules (and the default policy) at start.
    pub(super) fn open_firewall(&self, saved: Vec<StoredFwRule>) -> Result<()> {
        let mut inner = self.lock();
        let fw = &mut inner.firewall;
        for s in saved {
            if fw.rules.values().any(|o| o.id == s.id) {
                return Err(Error::Persist(format!(
                    "firewall rule {} has id {}, a duplicate",
                    s.rule.matches, s.id
                )));
            }
            if fw.rules.contains_key(&s.rule.matches) {
                return Err(Error::Persist(format!(
                    "firewall rule {} is listed twice",
                    s.rule.matches
                )));
            }
            fw.rules.insert(s.rule.matches.clone(), s);
        }
        let live: HashSet<u32> = fw.rules.values().map(|s| s.id).collect();
        fw.ids = IdPool::with_live(&live);
        let resolved = self.program_firewall(fw.rules.values())?;
        fw.resolved = resolved;
        Ok(())
    }

    /// Makes `rules` the firewall: programs, persists and commits them, or
    /// leaves the old set in force.
    fn commit_firewall(
        &self,
        inner: &mut Inner,
        rules: BTreeMap<FwMatch, StoredFwRule>,
    ) -> Result<()> {
        let resolved = self.program_firewall(rules.values())?;
        if let Err(e) = self.save(&inner.rules, &inner.probes, &rules) {
            if let Err(u) = self.program_firewall(inner.firewall.rules.values()) {
                tracing::error!(error = %u, "undoing a failed firewall change left the datapath inconsistent");
            }
            return Err(e);
        }
        inner.firewall.rules = rules;
        inner.firewall.resolved = resolved;
        Ok(())
    }

    pub fn create_firewall_rule(&self, rule: FwRule) -> Result<StoredFwRule> {
        let mut inner = self.lock();
        if inner.firewall.rules.contains_key(&rule.matches) {
            return Err(Error::AlreadyExists(format!(
                "firewall rule {}",
                rule.matches
            )));
        }
        let stored = StoredFwRule {
            id: inner.firewall.ids.alloc(ID_LIMIT, "firewall rule")?,
            rule,
        };
        let mut rules = inner.firewall.rules.clone();
        rules.insert(stored.rule.matches.clone(), stored.clone());
        if let Err(e) = self.commit_firewall(&mut inner, rules) {
            inner.firewall.ids.release([stored.id]);
            return Err(e);
        }
        Ok(stored)
    }

    pub fn delete_firewall_rule(&self, key: &FwMatch) -> Result<()> {
        let mut inner = self.lock();
        let mut rules = inner.firewall.rules.clone();
        let old = rules
            .remove(key)
            .ok_or_else(|| Error::NotFound(format!("firewall rule {key}")))?;
        self.commit_firewall(&mut inner, rules)?;
        inner.firewall.ids.release([old.id]);
        Ok(())
    }

    /// Makes the firewall exactly `desired`, in one datapath update: rules
    /// whose match is kept keep their id (and counters), all or nothing.
    /// With `dry_run`, only reports.
    pub fn apply_firewall_rules(
        &self,
        desired: Vec<FwRule>,
        dry_run: bool,
    ) -> Result<ApplyReport<FwMatch>> {
        let mut inner = self.lock();
        let mut report = ApplyReport::default();
        let mut rules = BTreeMap::new();
        let mut created = Vec::new();
        for rule in desired {
            let key = rule.matches.clone();
            let id = match inner.firewall.rules.get(&key) {
                Some(old) if old.rule == rule => {
                    report.unchanged += 1;
                    old.id
                }
                Some(old) => {
                    report.updated.push(key.clone());
                    old.id
                }
                None => {
                    report.created.push(key.clone());
                    created.push(key.clone());
                    u32::MAX
                }
            };
            if rules
                .insert(key.clone(), StoredFwRule { id, rule })
                .is_some()
            {
                return Err(Error::invalid(
                    "firewall_rules",
                    format!("{key} is listed twice"),
                ));
            }
        }
        let gone: Vec<u32> = inner
            .firewall
            .rules
            .iter()
            .filter(|(k, _)| !rules.contains_key(*k))
            .map(|(k, old)| {
                report.deleted.push(k.clone());
                old.id
            })
            .collect();
        let changed =
            !(report.created.is_empty() && report.updated.is_empty() && report.deleted.is_empty());
        if dry_run || !changed {
            return Ok(report);
        }
        // Deleted ids are only freed once the new set is in force, so that
        // no new rule takes over the counters of a rule still programmed.
        let mut allocated = Vec::new();
        for key in &created {
            match inner.firewall.ids.alloc(ID_LIMIT, "firewall rule") {
                Ok(id) => {
                    allocated.push(id);
                    if let Some(s) = rules.get_mut(key) {
                        s.id = id;
                    }
                }
                Err(e) => {
                    inner.firewall.ids.release(allocated);
                    return Err(e);
                }
            }
        }
        if let Err(e) = self.commit_firewall(&mut inner, rules) {
            inner.firewall.ids.release(allocated);
            return Err(e);
        }
        inner.firewall.ids.release(gone);
        Ok(report)
    }

    /// The rules, highest preference first (the order they are judged in).
    pub fn list_firewall_rules(&self) -> Vec<StoredFwRule> {
        let mut v: Vec<StoredFwRule> = self.lock().firewall.rules.values().cloned().collect();
        v.sort_by(|a, b| {
            b.rule
                .matches
                .preference
                .cmp(&a.rule.matches.preference)
                .then(a.id.cmp(&b.id))
        });
        v
    }

    /// The default policy the firewall runs with.
    pub fn firewall_default(&self) -> DefaultPolicy {
        self.fw_default
    }

    /// Programs the firewall again if an interface that its rules name has
    /// come, gone or changed index; the kernel mirror's link events call it.
    pub fn refresh_firewall_interfaces(&self) -> Result<()> {
        let mut inner = self.lock();
        let (entries, resolved) = self.fw_entries(inner.firewall.rules.values());
        if resolved == inner.firewall.resolved {
            return Ok(());
        }
        self.dp.set_firewall(&entries, self.fw_default())?;
        tracing::info!(
            interfaces = ?resolved,
            "firewall reprogrammed after an interface change"
        );
        inner.firewall.resolved = resolved;
        Ok(())
    }
}
