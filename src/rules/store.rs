use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Error, LbRule, Result, ServiceKey};
use crate::datapath::Datapath;

/// A rule as stored, with the datapath id that indexes its counters.
#[derive(Debug, Clone)]
pub struct StoredRule {
    pub id: u32,
    pub rule: LbRule,
}

struct Inner {
    rules: BTreeMap<ServiceKey, StoredRule>,
    free_ids: Vec<u32>,
    next_id: u32,
}

/// The rule set. Every change goes to the datapath first and is stored only
/// if the datapath took it, so a failed change leaves the old state intact.
pub struct RuleStore {
    dp: Arc<Datapath>,
    inner: Mutex<Inner>,
}

impl RuleStore {
    pub fn new(dp: Arc<Datapath>) -> RuleStore {
        RuleStore {
            dp,
            inner: Mutex::new(Inner {
                rules: BTreeMap::new(),
                free_ids: Vec::new(),
                next_id: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the API down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create(&self, rule: LbRule) -> Result<StoredRule> {
        let mut inner = self.lock();
        if inner.rules.contains_key(&rule.key) {
            return Err(Error::AlreadyExists(format!("load balancer {}", rule.key)));
        }
        let id = match inner.free_ids.pop() {
            Some(id) => id,
            None if inner.next_id < self.dp.limits().services => {
                inner.next_id += 1;
                inner.next_id - 1
            }
            None => {
                return Err(Error::Exhausted(format!(
                    "the service table is full ({} services)",
                    self.dp.limits().services
                )))
            }
        };
        if let Err(e) = self.dp.program_service(id, &rule) {
            inner.free_ids.push(id);
            return Err(e.into());
        }
        let stored = StoredRule { id, rule };
        inner.rules.insert(stored.rule.key, stored.clone());
        Ok(stored)
    }

    pub fn delete(&self, key: &ServiceKey) -> Result<()> {
        let mut inner = self.lock();
        let id = inner
            .rules
            .get(key)
            .map(|s| s.id)
            .ok_or_else(|| Error::NotFound(format!("load balancer {key}")))?;
        self.dp.delete_service(key, id)?;
        inner.rules.remove(key);
        inner.free_ids.push(id);
        Ok(())
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
