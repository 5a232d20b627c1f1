//! Endpoint health checks. Every endpoint of a monitored rule is probed:
//! with the probe defined for its address (EndpointService), or else a TCP
//! connect to the rule's target port. Each probe target runs in its own
//! tokio task with a timeout, so a slow endpoint delays nobody (and never
//! the API). A state change reprograms the rules that use the endpoint
//! (through the rule store), taking it out of or back into selection.
mod probe;
mod state;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::rules::{
    EndpointAddr, EndpointProbe, ProbeType, RuleStore, DEFAULT_PROBE_PERIOD, DEFAULT_PROBE_RETRIES,
    DEFAULT_PROBE_RISE,
};
use state::Hysteresis;

/// The longest a probe may take (shorter if the period is).
const MAX_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the set of targets is recomputed from the rules, besides when
/// told of a change.
const RESYNC: Duration = Duration::from_secs(2);

/// One probe target as `get endpoint` shows it.
#[derive(Debug, Clone)]
pub struct TargetStatus {
    pub probe: EndpointProbe,
    /// False for the default probe of a monitored rule.
    pub configured: bool,
    pub up: bool,
    pub last_error: String,
}

struct Target {
    status: TargetStatus,
    state: Hysteresis,
    task: Option<JoinHandle<()>>,
}

pub struct Health {
    store: Arc<RuleStore>,
    targets: Mutex<HashMap<EndpointProbe, Target>>,
    changed: Notify,
}

/// The default probe of an endpoint of a monitored rule.
fn default_probe((ip, port): EndpointAddr) -> EndpointProbe {
    EndpointProbe {
        ip,
        probe: ProbeType::Tcp,
        port,
        request: String::new(),
        response: String::new(),
        period_s: DEFAULT_PROBE_PERIOD,
        retries: DEFAULT_PROBE_RETRIES,
        rise: DEFAULT_PROBE_RISE,
    }
}

impl Health {
    /// Starts probing; runs until the runtime stops.
    pub fn spawn(store: Arc<RuleStore>) -> Arc<Health> {
        let h = Arc::new(Health {
            store,
            targets: Mutex::default(),
            changed: Notify::new(),
        });
        tokio::spawn(h.clone().supervise());
        h
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<EndpointProbe, Target>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the supervisor that rules or probes changed.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    /// Every target, configured probes first, by address.
    pub fn list(&self) -> Vec<TargetStatus> {
        let mut v: Vec<TargetStatus> = self.lock().values().map(|t| t.status.clone()).collect();
        v.sort_by_key(|t| (!t.configured, t.probe.ip, t.probe.port));
        v
    }

    /// Which probe decides each endpoint of a monitored rule, and the
    /// configured probes.
    fn wanted(store: &RuleStore) -> (HashMap<EndpointAddr, EndpointProbe>, HashSet<EndpointProbe>) {
        let configured: HashMap<_, _> = store.probes().into_iter().map(|p| (p.ip, p)).collect();
        let mut by_endpoint = HashMap::new();
        for s in store.list().iter().filter(|s| s.rule.monitor) {
            for e in &s.rule.endpoints {
                let p = configured
                    .get(&e.ip)
                    .cloned()
                    .unwrap_or_else(|| default_probe((e.ip, e.port)));
                by_endpoint.insert((e.ip, e.port), p);
            }
        }
        (by_endpoint, configured.into_values().collect())
    }

    async fn supervise(self: Arc<Self>) {
        loop {
            self.sync().await;
            let _ = tokio::time::timeout(RESYNC, self.changed.notified()).await;
        }
    }

    /// Starts the probes newly needed, stops the ones no longer needed, and
    /// hands the endpoints that are down to the store.
    async fn sync(self: &Arc<Self>) {
        // The store's lock may be held by a long apply: wait for it off the reactor.
        let store = self.store.clone();
        let Ok((by_endpoint, configured)) =
            tokio::task::spawn_blocking(move || Health::wanted(&store)).await
        else {
            return;
        };
        let down: HashSet<EndpointAddr> = {
            let mut targets = self.lock();
            let needed: HashSet<&EndpointProbe> =
                by_endpoint.values().chain(configured.iter()).collect();
            targets.retain(|p, t| {
                let keep = needed.contains(p);
                if let (false, Some(task)) = (keep, &t.task) {
                    task.abort();
                }
                keep
            });
            for p in needed {
                let t = targets.entry(p.clone()).or_insert_with(|| Target {
                    status: TargetStatus {
                        probe: p.clone(),
                        configured: false,
                        up: true,
                        last_error: String::new(),
                    },
                    state: Hysteresis::default(),
                    task: None,
                });
                t.status.configured = configured.contains(p);
                if t.task.is_none() {
                    t.task = Some(tokio::spawn(self.clone().run(p.clone())));
                }
            }
            by_endpoint
                .iter()
                .filter(|(_, p)| targets.get(p).is_some_and(|t| !t.state.is_up()))
                .map(|(ep, _)| *ep)
                .collect()
        };
        let store = self.store.clone();
        // Map updates, and again the store's lock.
        match tokio::task::spawn_blocking(move || store.set_down(down)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reprogramming rules after a health change failed")
            }
            Err(e) => tracing::error!(error = %e, "reprogramming rules after a health change"),
        }
    }

    /// Probes `p` every period and records the results.
    async fn run(self: Arc<Self>, p: EndpointProbe) {
        let period = Duration::from_secs(p.period_s.into());
        let timeout = period.min(MAX_TIMEOUT);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // udp waits for an answer a little less than the whole timeout.
            let res = match tokio::time::timeout(timeout, probe::probe(&p, timeout * 3 / 4)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            let flipped = {
                let mut targets = self.lock();
                let Some(t) = targets.get_mut(&p) else { return };
                let flipped = t.state.record(res.is_ok(), p.retries, p.rise);
                t.status.up = t.state.is_up();
                if let Err(e) = &res {
                    t.status.last_error = e.clone();
                }
                flipped
            };
            if flipped {
                let up = res.is_ok();
                tracing::info!(
                    endpoint = %p.ip, port = p.port, probe = p.probe.as_str(),
                    state = if up { "up" } else { "down" }, error = res.err().unwrap_or_default(),
                    "endpoint health changed"
                );
                self.notify();
            }
        }
    }
}
