//! Ageing: removes flows that have been idle longer than their state's
//! timeout. The datapath only stamps each entry with the time of its last
//! packet; a thread of the daemon sweeps the table in batches and deletes
//! expired flows, both directions together. It also removes halves whose
//! partner the LRU evicted, and keeps the eviction count up to date.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::table::{Table, Tuple, View};
use crate::datapath::types::{ll_ct, ll_ct_state};
use crate::datapath::{self, monotonic_ns, Ct4, Ct6, Datapath, Removal, CT_BATCH};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;

/// How old a NAT64 reservation must be before its flow's absence makes it
/// an orphan: the datapath creates the reservation first.
const RESERVATION_GRACE_NS: u64 = 2_000_000_000;

/// Idle time after which a flow is removed, per protocol and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_syn_recv: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_close_wait: Duration,
    pub tcp_last_ack: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    /// UDP without a reply yet.
    pub udp: Duration,
    /// UDP with replies.
    pub udp_replied: Duration,
    /// ICMP echo without a reply yet (and any other protocol).
    pub icmp: Duration,
    /// ICMP echo with replies.
    pub icmp_replied: Duration,
}

impl Default for Timeouts {
    /// Linux's defaults, except established TCP: Linux keeps an idle
    /// connection 5 days, which lets dead clients fill a load balancer's
    /// table; an hour is longer than cloud load balancers allow (4-10
    /// minutes) and than common keepalive intervals.
    fn default() -> Self {
        let s = Duration::from_secs;
        Timeouts {
            tcp_syn_sent: s(60),
            tcp_syn_recv: s(60),
            tcp_established: s(3600),
            tcp_fin_wait: s(120),
            tcp_close_wait: s(60),
            tcp_last_ack: s(30),
            tcp_time_wait: s(120),
            tcp_close: s(10),
            udp: s(30),
            udp_replied: s(120),
            icmp: s(30),
            icmp_replied: s(30),
        }
    }
}

impl Timeouts {
    /// The timeout of a flow of protocol `proto` in state `st`, by the
    /// protocol whose states it goes through (filter::states_of).
    pub fn of(&self, proto: u8, st: ll_ct_state) -> Duration {
        let proto = super::filter::states_of(proto);
        match (proto, st) {
            (TCP, ll_ct_state::LL_CT_SYN_SENT) => self.tcp_syn_sent,
            (TCP, ll_ct_state::LL_CT_SYN_RECV) => self.tcp_syn_recv,
            (TCP, ll_ct_state::LL_CT_ESTABLISHED) => self.tcp_established,
            (TCP, ll_ct_state::LL_CT_FIN_WAIT) => self.tcp_fin_wait,
            (TCP, ll_ct_state::LL_CT_CLOSE_WAIT) => self.tcp_close_wait,
            (TCP, ll_ct_state::LL_CT_LAST_ACK) => self.tcp_last_ack,
            (TCP, ll_ct_state::LL_CT_TIME_WAIT) => self.tcp_time_wait,
            (TCP, _) => self.tcp_close,
            (UDP, ll_ct_state::LL_CT_REPLIED) => self.udp_replied,
            (UDP, _) => self.udp,
            (ICMP, ll_ct_state::LL_CT_REPLIED) => self.icmp_replied,
            _ => self.icmp,
        }
    }

    fn expired(&self, now: u64, proto: u8, v: &ll_ct) -> bool {
        let timeout = self.of(proto, v.state).as_nanos() as u64;
        now.saturating_sub(v.last_seen_ns) > timeout
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgeingConfig {
    pub timeouts: Timeouts,
    /// Pause between the end of one sweep and the start of the next.
    pub interval: Duration,
}

impl Default for AgeingConfig {
    fn default() -> Self {
        AgeingConfig {
            timeouts: Timeouts::default(),
            interval: Duration::from_secs(10),
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Entries walked.
    pub entries: u64,
    /// Entries deleted because their flow expired.
    pub aged: u64,
    /// Entries deleted because the LRU had evicted their partner.
    pub orphans: u64,
    /// LRU evictions so far (lower bound).
    pub evicted: u64,
    /// Time spent working, without the pauses.
    pub busy: Duration,
}

/// One sweep over both tables (IPv4 flows, then IPv6 flows) at time `now`
/// (the datapath's clock). After each batch, `rest` is told how long the
/// batch took and may pause (to bound the sweep's share of a CPU) or stop
/// the sweep.
pub fn sweep(
    dp: &Datapath,
    timeouts: &Timeouts,
    now: u64,
    mut rest: impl FnMut(Duration) -> ControlFlow<()>,
) -> datapath::Result<SweepReport> {
    let before = dp.conntrack_counters()?;
    let mut report = sweep_in::<Ct4>(dp, timeouts, now, &mut rest)?;
    // The eviction census counts the IPv4 table, whose counters these are.
    let after = dp.conntrack_counters()?;
    let present = report.entries.saturating_sub(report.aged + report.orphans);
    report.evicted = dp.note_conntrack_census(&before, &after, present);
    let v6 = sweep_in::<Ct6>(dp, timeouts, now, &mut rest)?;
    report.entries += v6.entries;
    report.aged += v6.aged;
    report.orphans += v6.orphans;
    report.busy += v6.busy;
    Ok(report)
}

/// One sweep over table T (`evicted` left 0).
fn sweep_in<T: Table>(
    dp: &Datapath,
    timeouts: &Timeouts,
    now: u64,
    rest: &mut impl FnMut(Duration) -> ControlFlow<()>,
) -> datapath::Result<SweepReport> {
    let expired = |e: &View| timeouts.expired(now, e.key.proto, &e.ct);
    let mut report = SweepReport::default();
    // Expired entries whose partner has not been walked yet, by their tuple.
    let mut waiting: HashMap<Tuple, T::Key> = HashMap::new();
    let mut doomed: Vec<T::Key> = Vec::new();
    // NAT64 reservations, which live as long as their flow does.
    let mut reservations: Vec<(T::Key, View)> = Vec::new();
    let mut failed = None;
    let mut started = Instant::now();
    dp.walk_table::<T>(CT_BATCH, |keys, values| {
        report.entries += keys.len() as u64;
        doomed.clear();
        for (k, v) in keys.iter().zip(values) {
            let e = T::view(k, v);
            let pk = e.partner();
            if e.reservation() {
                reservations.push((*k, e));
            } else if !expired(&e) {
                // A flow lives while either direction does.
                waiting.remove(&pk);
            } else if e.one_way() {
                doomed.push(*k);
            } else if waiting.remove(&pk).is_some() {
                doomed.extend([*k, T::key_of(&pk)]);
            } else {
                waiting.insert(e.key, *k);
            }
        }
        match dp.delete_in::<T>(&doomed, Removal::Aged) {
            Ok(n) => report.aged += n,
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        let worked = started.elapsed();
        report.busy += worked;
        let flow = rest(worked);
        started = Instant::now();
        flow
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    // The rest expired while their partner was walked earlier (and may be
    // alive) or is gone. Look again at both: they may have moved meanwhile.
    doomed.clear();
    let mut orphans = Vec::new();
    for k in waiting.into_values() {
        let Some(v) = dp.entry_in::<T>(&k)? else {
            continue;
        };
        let e = T::view(&k, &v);
        if !expired(&e) {
            continue;
        }
        let pk = T::key_of(&e.partner());
        match dp.entry_in::<T>(&pk)? {
            None => orphans.push(k),
            Some(pv) if expired(&T::view(&pk, &pv)) => doomed.extend([k, pk]),
            Some(_) => {}
        }
    }
    // A reservation whose flow is gone (aged, removed or evicted) frees its
    // port. A young one may be waiting for its flow's entries.
    for (k, e) in reservations {
        if now.saturating_sub(e.ct.last_seen_ns) > RESERVATION_GRACE_NS
            && dp.entry_in::<Ct6>(&Ct6::key_of(&e.key))?.is_none()
        {
            orphans.push(k);
        }
    }
    report.aged += dp.delete_in::<T>(&doomed, Removal::Aged)?;
    report.orphans = dp.delete_in::<T>(&orphans, Removal::Orphan)?;
    report.busy += started.elapsed();
    Ok(report)
}

/// The ageing thread. Dropping it (or calling `stop`) stops it.
pub struct Ageing {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ageing {
    /// Starts sweeping `dp` every `cfg.interval` on a thread of its own, so
    /// that a sweep of a large table never holds up the API.
    pub fn spawn(dp: Arc<Datapath>, cfg: AgeingConfig) -> std::io::Result<Ageing> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ct-ageing".into())
            .spawn(move || run(&dp, &cfg, &flag))?;
        Ok(Ageing {
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ageing {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Waits `d` unless told to stop; Break when stopping.
fn pause(stop: &(Mutex<bool>, Condvar), d: Duration) -> ControlFlow<()> {
    let (lock, cv) = stop;
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let (stopped, _) = cv
        .wait_timeout_while(guard, d, |stopped| !*stopped)
        .unwrap_or_else(|p| p.into_inner());
    if *stopped {
        ControlFlow::Break(())
    } else {
        ControlFlow::Continue(())
    }
}

fn run(dp: &Datapath, cfg: &AgeingConfig, stop: &(Mutex<bool>, Condvar)) {
    let mut evicted = dp.conntrack_evicted();
    while pause(stop, cfg.interval).is_continue() {
        let started = Instant::now();
        // Resting as long as each batch took keeps a sweep to half a CPU.
        let result = sweep(dp, &cfg.timeouts, monotonic_ns(), |worked| {
            pause(stop, worked)
        });
        match result {
            Ok(r) => {
                tracing::debug!(
                    entries = r.entries,
                    aged = r.aged,
                    orphans = r.orphans,
                    busy_ms = r.busy.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "conntrack sweep"
                );
                if r.evicted > evicted {
                    tracing::warn!(
                        evicted = r.evicted - evicted,
                        total = r.evicted,
                        entries = r.entries,
                        capacity = dp.limits().conntrack,
                        "conntrack table full: the LRU evicted entries (raise conntrack_entries or lower the timeouts)"
                    );
                    evicted = r.evicted;
                }
            }
            Err(e) => tracing::error!(error = %e, "conntrack sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_has_its_timeout() {
        let t = Timeouts {
            tcp_syn_sent: Duration::from_secs(1),
            tcp_syn_recv: Duration::from_secs(2),
            tcp_established: Duration::from_secs(3),
            tcp_fin_wait: Duration::from_secs(4),
            tcp_close_wait: Duration::from_secs(5),
            tcp_last_ack: Duration::from_secs(6),
            tcp_time_wait: Duration::from_secs(7),
            tcp_close: Duration::from_secs(8),
            udp: Duration::from_secs(9),
            udp_replied: Duration::from_secs(10),
            icmp: Duration::from_secs(11),
            icmp_replied: Duration::from_secs(12),
        };
        let got: Vec<u64> = (0..8)
            .map(|st| t.of(TCP, ll_ct_state(st)).as_secs())
            .chain([
                t.of(UDP, ll_ct_state::LL_CT_UNREPLIED).as_secs(),
                t.of(UDP, ll_ct_state::LL_CT_REPLIED).as_secs(),
                t.of(ICMP, ll_ct_state::LL_CT_UNREPLIED).as_secs(),
                t.of(ICMP, ll_ct_state::LL_CT_REPLIED).as_secs(),
                // SCTP and ICMPv6 echo go through TCP's and ICMP's states.
                t.of(132, ll_ct_state::LL_CT_ESTABLISHED).as_secs(),
                t.of(132, ll_ct_state::LL_CT_TIME_WAIT).as_secs(),
                t.of(58, ll_ct_state::LL_CT_REPLIED).as_secs(),
                t.of(47, ll_ct_state::LL_CT_REPLIED).as_secs(),
            ])
            .collect();
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 7, 12, 11]);
    }

    #[test]
    fn expiry_is_strictly_after_the_timeout() {
        let t = Timeouts::default();
        let v = ll_ct {
            state: ll_ct_state::LL_CT_UNREPLIED,
            last_seen_ns: 1_000,
            ..Default::default()
        };
        let timeout = t.udp.as_nanos() as u64;
        assert!(!t.expired(1_000 + timeout, UDP, &v));
        assert!(t.expired(1_001 + timeout, UDP, &v));
        // A clock behind the stamp (another CPU's) is not expiry.
        assert!(!t.expired(0, UDP, &v));
    }
}
