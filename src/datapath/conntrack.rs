//! The conntrack table: batched walks and deletes, and its bookkeeping.
//!
//! The datapath counts the entries it inserts and deletes; the daemon counts
//! its own deletions in the same pinned map, so the counts survive restarts.
//! An entry that was inserted, not deleted and is not in the table any more
//! was evicted by the LRU.
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;

use libbpf_rs::libbpf_sys;
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::types::{ll_ct, ll_ct6, ll_ct6_key, ll_ct_dir, ll_ct_key, ll_ct_stat, ll_xlate};
use super::{percpu_values, pod, Datapath, Error, Result};

/// One of the two conntrack tables, each with its own counters: IPv4 flows
/// (ll_conntrack) or IPv6 flows (ll_conntrack6, whose value starts with the
/// ll_ct of its state).
pub trait CtTable {
    type Key: Copy + Default;
    type Value: Copy + Default;
    /// The table and its ll_ct_stat counters.
    fn maps(dp: &Datapath) -> (&MapHandle, &MapHandle);
    fn ct(v: &Self::Value) -> &ll_ct;
    /// The key of the other direction of the flow that (k, v) belongs to:
    /// the translated tuple turned around (as ll_ct_partner in bpf/lib/ct.h).
    fn partner(k: &Self::Key, v: &Self::Value) -> Self::Key;
    /// The source of v's packets after translation (an IPv4-mapped one,
    /// NAT64's IPv4 side, as IPv4).
    fn nat_source(v: &Self::Value) -> IpAddr;
}

/// IPv4 flows.
pub struct Ct4;
/// IPv6 flows.
pub struct Ct6;

impl CtTable for Ct4 {
    type Key = ll_ct_key;
    type Value = ll_ct;
    fn maps(dp: &Datapath) -> (&MapHandle, &MapHandle) {
        (&dp.maps.conntrack, &dp.maps.ct_stats)
    }
    fn ct(v: &ll_ct) -> &ll_ct {
        v
    }
    fn partner(k: &ll_ct_key, v: &ll_ct) -> ll_ct_key {
        ll_ct_key {
            saddr: v.nat.daddr,
            daddr: v.nat.saddr,
            sport: v.nat.dport,
            dport: v.nat.sport,
            proto: k.proto,
            pad: [0; 3],
        }
    }
    fn nat_source(v: &ll_ct) -> IpAddr {
        v.nat.saddr.to_ne_bytes().into()
    }
}

impl CtTable for Ct6 {
    type Key = ll_ct6_key;
    type Value = ll_ct6;
    fn maps(dp: &Datapath) -> (&MapHandle, &MapHandle) {
        (&dp.maps.conntrack6, &dp.maps.ct6_stats)
    }
    fn ct(v: &ll_ct6) -> &ll_ct {
        &v.ct
    }
    fn partner(k: &ll_ct6_key, v: &ll_ct6) -> ll_ct6_key {
        ll_ct6_key {
            saddr: v.nat6.daddr,
            daddr: v.nat6.saddr,
            sport: v.ct.nat.dport,
            dport: v.ct.nat.sport,
            proto: k.proto,
            pad: [0; 3],
        }
    }
    fn nat_source(v: &ll_ct6) -> IpAddr {
        Ipv6Addr::from(v.nat6.saddr).to_canonical()
    }
}

/// Why the daemon removes entries; each reason has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Idle past its state's timeout.
    Aged,
    /// Asked for (API, rule deletion, start-up).
    Requested,
    /// Its partner was evicted by the LRU, so the flow is broken.
    Orphan,
}

impl Removal {
    fn stat(self) -> ll_ct_stat {
        match self {
            Removal::Aged => ll_ct_stat::LL_CT_STAT_AGED,
            Removal::Requested => ll_ct_stat::LL_CT_STAT_REMOVED,
            Removal::Orphan => ll_ct_stat::LL_CT_STAT_ORPHANS,
        }
    }
}

/// Running totals of conntrack entries, since the maps were created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtCounters {
    /// Inserted by the datapath.
    pub created: u64,
    /// Deleted by the datapath (the first half of a flow it then refused).
    pub datapath_deleted: u64,
    pub aged: u64,
    pub removed: u64,
    pub orphans: u64,
}

impl CtCounters {
    /// Every deletion that was not an eviction.
    pub fn deleted(&self) -> u64 {
        self.datapath_deleted + self.aged + self.removed + self.orphans
    }
}

/// Entries per batch for walks and deletes: about 256 KiB of buffers.
pub const CT_BATCH: usize = 4096;

fn errno(ret: i32) -> io::Error {
    io::Error::from_raw_os_error(-ret)
}

impl Datapath {
    /// Walks the conntrack table in batches of up to `batch` entries with
    /// BPF_MAP_LOOKUP_BATCH, handing each batch to `f` until it breaks.
    /// Entries inserted or deleted during the walk may or may not be seen;
    /// `f` may delete entries, including ones not walked yet.
    pub fn walk_conntrack(
        &self,
        batch: usize,
        f: impl FnMut(&[ll_ct_key], &[ll_ct]) -> ControlFlow<()>,
    ) -> Result<()> {
        self.walk_table::<Ct4>(batch, f)
    }

    /// As [`Datapath::walk_conntrack`], over either table.
    pub fn walk_table<T: CtTable>(
        &self,
        batch: usize,
        mut f: impl FnMut(&[T::Key], &[T::Value]) -> ControlFlow<()>,
    ) -> Result<()> {
        let fd = T::maps(self).0.as_fd().as_raw_fd();
        let batch = batch.max(1);
        let mut keys = vec![T::Key::default(); batch];
        let mut values = vec![T::Value::default(); batch];
        // For hash maps the position is a bucket index (a u32).
        let mut position: u32 = 0;
        let pos = (&mut position as *mut u32).cast::<libc::c_void>();
        let opts = batch_opts();
        let mut first = true;
        loop {
            let mut count = batch as u32;
            // SAFETY: the buffers hold `batch` keys and values of exactly the
            // map's key and value sizes (both from the same BTF); pos points
            // to a live u32, read before it is written.
            let ret = unsafe {
                libbpf_sys::bpf_map_lookup_batch(
                    fd,
                    if first { std::ptr::null_mut() } else { pos },
                    pos,
                    keys.as_mut_ptr().cast(),
                    values.as_mut_ptr().cast(),
                    &mut count,
                    &opts,
                )
            };
            first = false;
            // ENOENT: this was the last batch (possibly with entries in it).
            let last = ret == -libc::ENOENT;
            if ret != 0 && !last {
                return Err(Error::Io {
                    what: "walking the conntrack table".into(),
                    source: errno(ret),
                });
            }
            let n = (count as usize).min(batch);
            if n > 0 && f(&keys[..n], &values[..n]).is_break() {
                return Ok(());
            }
            if last {
                return Ok(());
            }
        }
    }

    /// Every conntrack entry (both directions of each flow).
    pub fn conntrack(&self) -> Result<Vec<(ll_ct_key, ll_ct)>> {
        let mut all = Vec::new();
        self.walk_conntrack(CT_BATCH, |keys, values| {
            all.extend(keys.iter().copied().zip(values.iter().copied()));
            ControlFlow::Continue(())
        })?;
        Ok(all)
    }

    /// One entry, if present.
    pub fn conntrack_entry(&self, key: &ll_ct_key) -> Result<Option<ll_ct>> {
        self.entry_in::<Ct4>(key)
    }

    /// As [`Datapath::conntrack_entry`], in either table.
    pub fn entry_in<T: CtTable>(&self, key: &T::Key) -> Result<Option<T::Value>> {
        let v = T::maps(self)
            .0
            .lookup(pod::bytes(key), MapFlags::ANY)
            .map_err(Error::bpf("reading a conntrack entry"))?;
        Ok(v.and_then(|b| pod::read(&b)))
    }

    /// Deletes `keys` with BPF_MAP_DELETE_BATCH, skipping keys that are gone
    /// already, and counts them under `why`. Returns how many were deleted.
    pub fn delete_conntrack(&self, keys: &[ll_ct_key], why: Removal) -> Result<u64> {
        self.delete_in::<Ct4>(keys, why)
    }

    /// As [`Datapath::delete_conntrack`], in either table.
    pub fn delete_in<T: CtTable>(&self, keys: &[T::Key], why: Removal) -> Result<u64> {
        let fd = T::maps(self).0.as_fd().as_raw_fd();
        let opts = batch_opts();
        let mut deleted = 0u64;
        let mut rest = keys;
        while !rest.is_empty() {
            let mut count = rest.len().min(u32::MAX as usize) as u32;
            // SAFETY: rest holds `count` keys of the map's key size.
            let ret = unsafe {
                libbpf_sys::bpf_map_delete_batch(fd, rest.as_ptr().cast(), &mut count, &opts)
            };
            // The kernel stops at the first key it cannot delete and reports
            // how many it deleted before it.
            let done = (count as usize).min(rest.len());
            deleted += done as u64;
            match ret {
                0 => break,
                r if r == -libc::ENOENT => rest = &rest[done + 1..],
                r => {
                    self.count_removed::<T>(why, deleted)?;
                    return Err(Error::Io {
                        what: "deleting conntrack entries".into(),
                        source: errno(r),
                    });
                }
            }
        }
        self.count_removed::<T>(why, deleted)?;
        Ok(deleted)
    }

    /// Deletes the IPv4 flows (both entries) of which an entry satisfies
    /// `pred`; returns how many entries went.
    pub fn flush_conntrack(&self, pred: impl Fn(&ll_ct_key, &ll_ct) -> bool) -> Result<u64> {
        self.flush_table::<Ct4>(pred)
    }

    /// As [`Datapath::flush_conntrack`], in either table.
    pub fn flush_table<T: CtTable>(
        &self,
        pred: impl Fn(&T::Key, &T::Value) -> bool,
    ) -> Result<u64> {
        let mut doomed = Vec::new();
        let mut deleted = 0;
        let mut failed = None;
        self.walk_table::<T>(CT_BATCH, |keys, values| {
            doomed.clear();
            doomed.extend(
                keys.iter()
                    .zip(values)
                    .filter(|(k, v)| pred(k, v))
                    .flat_map(|(k, v)| [*k, T::partner(k, v)]),
            );
            match self.delete_in::<T>(&doomed, Removal::Requested) {
                Ok(n) => {
                    deleted += n;
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        failed.map_or(Ok(deleted), Err)
    }

    /// Flushes the flows whose source was translated to `ip` (masquerade,
    /// SNAT, fullnat, onearm, NAT64), once `ip` has left the host: their
    /// replies could not come back, and their next packet takes a new
    /// translation (as Linux's masquerade flushes on an address's removal).
    /// Returns how many entries went.
    pub fn flush_translated_to(&self, ip: IpAddr) -> Result<u64> {
        fn to_ip<T: CtTable>(v: &T::Value, ip: IpAddr) -> bool {
            let ct = T::ct(v);
            ct.dir == ll_ct_dir::LL_CT_ORIGINAL
                && ct.xlate.0 & ll_xlate::LL_XLATE_SRC.0 != 0
                && T::nat_source(v) == ip
        }
        Ok(self.flush_table::<Ct4>(|_, v| to_ip::<Ct4>(v, ip))?
            + self.flush_table::<Ct6>(|_, v| to_ip::<Ct6>(v, ip))?)
    }

    /// The IPv4 table's running totals.
    pub fn conntrack_counters(&self) -> Result<CtCounters> {
        self.table_counters::<Ct4>()
    }

    /// The running totals of either table.
    pub fn table_counters<T: CtTable>(&self) -> Result<CtCounters> {
        let stats = T::maps(self).1;
        let sum = |stat: ll_ct_stat| -> Result<u64> {
            Ok(percpu_values::<u64>(stats, stat.0)?.iter().sum())
        };
        Ok(CtCounters {
            created: sum(ll_ct_stat::LL_CT_STAT_CREATED)?,
            datapath_deleted: sum(ll_ct_stat::LL_CT_STAT_DELETED)?,
            aged: sum(ll_ct_stat::LL_CT_STAT_AGED)?,
            removed: sum(ll_ct_stat::LL_CT_STAT_REMOVED)?,
            orphans: sum(ll_ct_stat::LL_CT_STAT_ORPHANS)?,
        })
    }

    /// Adds `n` to the daemon's counter for `why`. The datapath never
    /// writes these keys, so the daemon may rewrite all CPUs' slots; the lock
    /// keeps two daemon threads from losing each other's additions.
    fn count_removed<T: CtTable>(&self, why: Removal, n: u64) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let stats = T::maps(self).1;
        let _guard = self.ct_stats_lock.lock().unwrap_or_else(|p| p.into_inner());
        let key = why.stat().0;
        let total: u64 = percpu_values::<u64>(stats, key)?.iter().sum::<u64>() + n;
        let mut slots = vec![0u64.to_ne_bytes().to_vec(); self.ncpus];
        slots[0] = total.to_ne_bytes().to_vec();
        stats
            .update_percpu(&key.to_ne_bytes(), &slots, MapFlags::ANY)
            .map_err(Error::bpf("counting removed conntrack entries"))
    }

    /// Records what one walk of the table saw: `before` read as it started,
    /// `after` as it ended, `present` entries walked and still there. Every
    /// entry created before the walk and neither deleted nor present was
    /// evicted, so `before.created - after.deleted() - present` is a lower
    /// bound of the evictions so far (exact when the table stood still). The
    /// highest bound seen is kept; returns it.
    pub fn note_conntrack_census(
        &self,
        before: &CtCounters,
        after: &CtCounters,
        present: u64,
    ) -> u64 {
        let bound = before
            .created
            .saturating_sub(after.deleted())
            .saturating_sub(present);
        self.ct_evicted
            .fetch_max(bound, Ordering::Relaxed)
            .max(bound)
    }

    /// Entries the LRU evicted (a lower bound; see
    /// [`Datapath::note_conntrack_census`]).
    pub fn conntrack_evicted(&self) -> u64 {
        self.ct_evicted.load(Ordering::Relaxed)
    }

    /// Kernel memory of the conntrack table (its `memlock` in fdinfo).
    pub fn conntrack_memory(&self) -> Result<u64> {
        let fd = self.maps.conntrack.as_fd().as_raw_fd();
        let path = format!("/proc/self/fdinfo/{fd}");
        let text = std::fs::read_to_string(&path).map_err(Error::io(format!("reading {path}")))?;
        text.lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| Error::Io {
                what: format!("reading {path}"),
                source: io::Error::new(io::ErrorKind::InvalidData, "no memlock line"),
            })
    }
}

fn batch_opts() -> libbpf_sys::bpf_map_batch_opts {
    libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    }
}

/// The datapath's clock (bpf_ktime_get_ns): CLOCK_MONOTONIC, in ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
