//! The only code that touches BPF: loads the skeleton, pins its maps, attaches
//! the TC program, and gives typed access to the maps.
mod conntrack;
mod firewall;
mod hooks;
mod names;
mod network;
mod pod;
mod service;
mod skel;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, ProgramHandle};

pub use conntrack::{monotonic_ns, Ct4, Ct6, CtCounters, CtTable, Removal, CT_BATCH};
pub use firewall::{FwAction, FwDefault, FwEntry, FwEvent, FW_MAX_RULES};
pub use hooks::{Hook, HookKind};
use names::EnumLabels;
pub use skel::types;
use skel::LoxilightSkelBuilder;
use types::{ll_counters, ll_ct_state, ll_reason, ll_svc};

/// Endpoints per service and selection slots per service (bpf/lib/common.h).
pub const MAX_ENDPOINTS: usize = 32;
pub const MAX_SLOTS: usize = 128;
/// ll_ct.svc_id of a flow the firewall let in untranslated (LL_SVC_NONE).
pub const SVC_NONE: u32 = u32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("map {map} is full")]
    MapFull { map: &'static str },
}

impl Error {
    fn bpf(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> Error {
        let what = what.into();
        move |source| Error::Bpf { what, source }
    }

    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Sizes fixed at load time.
#[derive(Debug, Clone)]
pub struct Limits {
    pub services: u32,
    pub conntrack: u32,
    /// Per address family.
    pub routes: u32,
    pub neighbours: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            services: 4096,
            conntrack: 1_000_000,
            routes: 262_144,
            neighbours: 16384,
        }
    }
}

struct Maps {
    services: MapHandle,
    services6: MapHandle,
    ranges: MapHandle,
    range_vips: MapHandle,
    rr_cursor: MapHandle,
    conntrack: MapHandle,
    ct_stats: MapHandle,
    conntrack6: MapHandle,
    ct6_stats: MapHandle,
    svc_stats: MapHandle,
    ep_stats: MapHandle,
    reasons: MapHandle,
    maglev: MapHandle,
    ep_active: MapHandle,
    svc_opts: MapHandle,
    svc_sources: MapHandle,
    ifaces: MapHandle,
    locals: MapHandle,
    ifaddrs: MapHandle,
    nat_ports: MapHandle,
    routes4: MapHandle,
    routes6: MapHandle,
    neighs: MapHandle,
    neigh_miss: MapHandle,
    fw: firewall::FwMaps,
}

/// A loaded datapath. Maps and program are held by their own file
/// descriptors, so this is Send + Sync and outlives the skeleton.
pub struct Datapath {
    maps: Maps,
    tc_prog: ProgramHandle,
    xdp_prog: ProgramHandle,
    /// The NAT64 tail-call arrays (TC, XDP): the kernel empties a program
    /// array when its last user handle closes (a pin is one), so these
    /// keep them filled.
    _tails: [MapHandle; 2],
    limits: Limits,
    ncpus: usize,
    labels: EnumLabels,
    /// Interfaces the program is attached to, and how.
    hooks: Mutex<HashMap<u32, Hook>>,
    /// Serialises the daemon's updates of its conntrack counters.
    ct_stats_lock: Mutex<()>,
    /// Serialises firewall changes (each fills the inactive generation).
    fw_lock: Mutex<()>,
    /// The highest lower bound of LRU evictions seen by a table walk.
    ct_evicted: AtomicU64,
}

/// Outcome of one BPF_PROG_TEST_RUN.
#[derive(Debug)]
pub struct TestRun {
    pub retval: u32,
    pub data: Vec<u8>,
    pub duration_ns: u32,
    /// skb->mark as the program left it (TC; always 0 for XDP).
    pub mark: u32,
}

impl Datapath {
    /// Loads the program, sizing its maps from `limits`. With `pin_dir`, maps
    /// are pinned there; maps already pinned there are reused when their type,
    /// sizes and flags match, and replaced by new empty ones when not.
    pub fn load(limits: Limits, pin_dir: Option<&Path>) -> Result<Datapath> {
        let mut storage = MaybeUninit::uninit();
        let mut open = LoxilightSkelBuilder::default()
            .open(&mut storage)
            .map_err(Error::bpf("opening the BPF object"))?;
        let eps = limits
            .services
            .checked_mul(MAX_ENDPOINTS as u32)
            .ok_or_else(|| Error::Io {
                what: "sizing maps".into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "too many services"),
            })?;
        let m = &mut open.maps;
        for (map, n) in [
            (&mut m.ll_services, limits.services),
            (&mut m.ll_svc_ranges, limits.services),
            (&mut m.ll_rr_cursor, limits.services),
            (&mut m.ll_svc_stats, limits.services),
            (&mut m.ll_ep_stats, eps),
            (&mut m.ll_maglev, limits.services),
            (&mut m.ll_svc_opts, limits.services),
            (&mut m.ll_ep_active, eps),
            (&mut m.ll_conntrack, limits.conntrack),
            // IPv6 flows: a quarter of the memory.
            (&mut m.ll_conntrack6, (limits.conntrack / 4).max(1024)),
            (&mut m.ll_services6, limits.services),
            (&mut m.ll_routes4, limits.routes),
            (&mut m.ll_routes6, limits.routes),
            (&mut m.ll_neighs, limits.neighbours),
        ] {
            map.set_max_entries(n).map_err(Error::bpf("sizing a map"))?;
        }
        if let Some(dir) = pin_dir {
            fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
            // Only our state: .rodata is frozen and per-load, and the ring
            // buffers (neighbour misses, firewall events) belong to the
            // daemon that reads them. The tail-call arrays are pinned so
            // that a datapath left attached keeps its translators while no
            // daemon runs; the next load puts its own programs in them.
            for mut map in open.open_object_mut().maps_mut() {
                if !map.name().as_encoded_bytes().starts_with(b"ll_")
                    || map.map_type() == libbpf_rs::MapType::RingBuf
                {
                    continue;
                }
                let path = dir.join(map.name());
                replace_if_incompatible(&map, &path)?;
                map.set_pin_path(&path)
                    .map_err(Error::bpf(format!("pinning at {}", path.display())))?;
            }
        }
        let skel = open.load().map_err(Error::bpf("loading the BPF program"))?;
        let labels = EnumLabels::read(skel.object().btf().map_err(Error::bpf("reading BTF"))?)?;
        let handle = |map: &libbpf_rs::Map| {
            MapHandle::try_from(map).map_err(Error::bpf("taking a map handle"))
        };
        let maps = Maps {
            services: handle(&skel.maps.ll_services)?,
            services6: handle(&skel.maps.ll_services6)?,
            ranges: handle(&skel.maps.ll_svc_ranges)?,
            range_vips: handle(&skel.maps.ll_range_vips)?,
            rr_cursor: handle(&skel.maps.ll_rr_cursor)?,
            conntrack: handle(&skel.maps.ll_conntrack)?,
            ct_stats: handle(&skel.maps.ll_ct_stats)?,
            conntrack6: handle(&skel.maps.ll_conntrack6)?,
            ct6_stats: handle(&skel.maps.ll_ct6_stats)?,
            svc_stats: handle(&skel.maps.ll_svc_stats)?,
            ep_stats: handle(&skel.maps.ll_ep_stats)?,
            reasons: handle(&skel.maps.ll_reasons)?,
            maglev: handle(&skel.maps.ll_maglev)?,
            ep_active: handle(&skel.maps.ll_ep_active)?,
            svc_opts: handle(&skel.maps.ll_svc_opts)?,
            svc_sources: handle(&skel.maps.ll_svc_sources)?,
            ifaces: handle(&skel.maps.ll_ifaces)?,
            locals: handle(&skel.maps.ll_locals)?,
            ifaddrs: handle(&skel.maps.ll_ifaddrs)?,
            nat_ports: handle(&skel.maps.ll_nat_ports)?,
            routes4: handle(&skel.maps.ll_routes4)?,
            routes6: handle(&skel.maps.ll_routes6)?,
            neighs: handle(&skel.maps.ll_neighs)?,
            neigh_miss: handle(&skel.maps.ll_neigh_miss)?,
            fw: firewall::FwMaps {
                cur: handle(&skel.maps.ll_fw_cur)?,
                gens: handle(&skel.maps.ll_fw_gens)?,
                rules: handle(&skel.maps.ll_fw_rules)?,
                lpm: handle(&skel.maps.ll_fw_lpm)?,
                ports: handle(&skel.maps.ll_fw_ports)?,
                protos: handle(&skel.maps.ll_fw_protos)?,
                ifaces: handle(&skel.maps.ll_fw_ifaces)?,
                blocks: handle(&skel.maps.ll_fw_blocks)?,
                stats: handle(&skel.maps.ll_fw_stats)?,
                events: handle(&skel.maps.ll_fw_events)?,
            },
        };
        let tc_prog = ProgramHandle::try_from(&skel.progs.ll_tc_ingress)
            .map_err(Error::bpf("taking the TC program handle"))?;
        let xdp_prog = ProgramHandle::try_from(&skel.progs.ll_xdp)
            .map_err(Error::bpf("taking the XDP program handle"))?;
        let tails = [
            handle(&skel.maps.ll_tc_tails)?,
            handle(&skel.maps.ll_xdp_tails)?,
        ];
        let ncpus = libbpf_rs::num_possible_cpus().map_err(Error::bpf("counting CPUs"))?;
        Ok(Datapath {
            maps,
            tc_prog,
            xdp_prog,
            _tails: tails,
            limits,
            ncpus,
            labels,
            hooks: Mutex::new(HashMap::new()),
            ct_stats_lock: Mutex::new(()),
            fw_lock: Mutex::new(()),
            ct_evicted: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The map that holds services under `key`.
    fn services_of(&self, key: &service::SvcKey) -> (&MapHandle, &'static str) {
        match key {
            service::SvcKey::V4(_) => (&self.maps.services, "ll_services"),
            service::SvcKey::V6(_) => (&self.maps.services6, "ll_services6"),
        }
    }

    /// Adds or replaces a service (an ll_svc, or an ll_svc6 under an IPv6
    /// key) in one map update.
    fn upsert_service(&self, key: &service::SvcKey, svc: &[u8]) -> Result<()> {
        let (map, name) = self.services_of(key);
        map.update(key.bytes(), svc, MapFlags::ANY)
            .map_err(|e| full_or(e, name, "writing a service"))
    }

    /// The source ports that source-translated flows (fullnat, onearm) get.
    pub fn set_nat_ports(&self, ports: std::ops::RangeInclusive<u16>) -> Result<()> {
        let v = types::ll_nat_ports {
            min: *ports.start(),
            max: *ports.end(),
        };
        self.maps
            .nat_ports
            .update(&0u32.to_ne_bytes(), pod::bytes(&v), MapFlags::ANY)
            .map_err(Error::bpf("writing the NAT port range"))
    }

    /// Removes services (keys in map layout, with their ids); their flows
    /// leave conntrack in one walk and their counters are zeroed so that the
    /// ids can be reused cleanly.
    fn remove_services(&self, services: &[(service::SvcKey, u32)]) -> Result<()> {
        if services.is_empty() {
            return Ok(());
        }
        for (key, _) in services {
            // A range first, so that it never leads to a deleted service.
            if let service::SvcKey::V4(k) = key {
                let range = service::range_key(k.vip, k.proto);
                self.set_range(&range, u16::from_be(k.port), None)?;
            }
            match self.services_of(key).0.delete(key.bytes()) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::bpf("deleting a service")(e)),
            }
        }
        let ids: std::collections::HashSet<u32> = services.iter().map(|(_, id)| *id).collect();
        self.flush_conntrack(|_, ct| ids.contains(&ct.svc_id))?;
        self.flush_table::<conntrack::Ct6>(|_, v| ids.contains(&v.ct.svc_id))?;
        ids.iter().try_for_each(|id| {
            self.set_service_opts(*id, 0, &[])?;
            self.reset_service_counters(*id)
        })
    }

    /// Removes every service whose id is not in `live`.
    pub fn prune_services(&self, live: &std::collections::HashSet<u32>) -> Result<()> {
        let id_of = |map: &MapHandle, k: &[u8]| -> Option<u32> {
            // An ll_svc6 starts with its ll_svc.
            let v = map.lookup(k, MapFlags::ANY).ok()??;
            Some(pod::read::<ll_svc>(&v)?.id)
        };
        let mut stale: Vec<(service::SvcKey, u32)> = Vec::new();
        for k in self.maps.services.keys() {
            if let (Some(id), Some(key)) = (id_of(&self.maps.services, &k), pod::read(&k)) {
                if !live.contains(&id) {
                    stale.push((service::SvcKey::V4(key), id));
                }
            }
        }
        for k in self.maps.services6.keys() {
            if let (Some(id), Some(key)) = (id_of(&self.maps.services6, &k), pod::read(&k)) {
                if !live.contains(&id) {
                    stale.push((service::SvcKey::V6(key), id));
                }
            }
        }
        self.remove_services(&stale)
    }

    fn reset_service_counters(&self, id: u32) -> Result<()> {
        let zero = vec![pod::bytes(&ll_counters::default()).to_vec(); self.ncpus];
        let first = id * MAX_ENDPOINTS as u32;
        let reset = |map: &MapHandle, idx: u32| {
            map.update_percpu(&idx.to_ne_bytes(), &zero, MapFlags::ANY)
                .map_err(Error::bpf("resetting counters"))
        };
        reset(&self.maps.svc_stats, id)?;
        self.maps
            .rr_cursor
            .update(&id.to_ne_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("resetting the round-robin cursor"))?;
        for idx in first..first + MAX_ENDPOINTS as u32 {
            reset(&self.maps.ep_stats, idx)?;
            self.set_active(idx, 0)?;
        }
        Ok(())
    }

    fn set_maglev(&self, id: u32, table: &types::ll_maglev) -> Result<()> {
        self.maps
            .maglev
            .update(&id.to_ne_bytes(), pod::bytes(table), MapFlags::ANY)
            .map_err(Error::bpf("writing a maglev table"))
    }

    /// Sets the active-flow count of endpoint `idx` (service id *
    /// MAX_ENDPOINTS + endpoint) that least-connections selection reads.
    fn set_active(&self, idx: u32, n: u32) -> Result<()> {
        self.maps
            .ep_active
            .update(&idx.to_ne_bytes(), &n.to_ne_bytes(), MapFlags::ANY)
            .map_err(Error::bpf("writing active-flow counts"))
    }

    /// Rewrites the active-flow counts of services `ids` from `counts`
    /// ((service id, endpoint) -> flows); endpoints not in it have none.
    pub fn set_active_flows(
        &self,
        ids: &[u32],
        counts: &std::collections::HashMap<(u32, u32), u32>,
    ) -> Result<()> {
        for &id in ids {
            for ep in 0..MAX_ENDPOINTS as u32 {
                let n = counts.get(&(id, ep)).copied().unwrap_or(0);
                self.set_active(id * MAX_ENDPOINTS as u32 + ep, n)?;
            }
        }
        Ok(())
    }

    /// Packets and bytes of a service, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<ll_counters> {
        percpu_sum(&self.maps.svc_stats, id)
    }

    /// Packets and bytes sent to endpoint `idx` of service `id`.
    pub fn endpoint_counters(&self, id: u32, idx: usize) -> Result<ll_counters> {
        percpu_sum(&self.maps.ep_stats, id * MAX_ENDPOINTS as u32 + idx as u32)
    }

    /// Packets and bytes per verdict reason.
    pub fn reason_counters(&self) -> Result<Vec<(ll_reason, ll_counters)>> {
        (0..ll_reason::LL_R_MAX.0)
            .map(|r| Ok((ll_reason(r), percpu_sum(&self.maps.reasons, r)?)))
            .collect()
    }

    /// `reason`'s name in bpf/lib/common.h, in snake case without the
    /// prefix (`pass_no_route`).
    pub fn reason_label(&self, reason: ll_reason) -> Option<&str> {
        self.labels.get("ll_reason", reason.0)
    }

    /// `state`'s name in bpf/lib/common.h, like [`Datapath::reason_label`].
    pub fn ct_state_label(&self, state: ll_ct_state) -> Option<&str> {
        self.labels.get("ll_ct_state", u32::from(state.0))
    }

    /// Runs the program of `hook` once over `pkt` with BPF_PROG_TEST_RUN
    /// (`repeat` times when timing it).
    pub fn test_run(&self, hook: HookKind, pkt: &[u8], repeat: u32) -> Result<TestRun> {
        use libbpf_rs::libbpf_sys;
        let mut out = vec![0u8; pkt.len() + 256];
        // SAFETY: zeroed is a valid bpf_test_run_opts; the pointers stay
        // valid for the call and the sizes match the buffers.
        let mut opts: libbpf_sys::bpf_test_run_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of_val(&opts) as _;
        opts.data_in = pkt.as_ptr().cast();
        opts.data_size_in = pkt.len() as u32;
        opts.data_out = out.as_mut_ptr().cast();
        opts.data_size_out = out.len() as u32;
        opts.repeat = repeat.max(1) as _;
        // A zeroed struct __sk_buff (192 bytes today; the kernel accepts a
        // longer one with a zero tail) in, mark (its third field) out.
        let mut skb = [0u32; 64];
        if hook == HookKind::Tc {
            let size = std::mem::size_of_val(&skb) as u32;
            let ctx = skb.as_mut_ptr();
            opts.ctx_in = ctx.cast();
            opts.ctx_size_in = size;
            opts.ctx_out = ctx.cast();
            opts.ctx_size_out = size;
        }
        // SAFETY: see above; the fd is owned by self.
        let ret = unsafe {
            libbpf_sys::bpf_prog_test_run_opts(self.prog(hook).as_fd().as_raw_fd(), &mut opts)
        };
        if ret != 0 {
            return Err(Error::Io {
                what: "BPF_PROG_TEST_RUN".into(),
                source: io::Error::from_raw_os_error(-ret),
            });
        }
        out.truncate(opts.data_size_out as usize);
        Ok(TestRun {
            retval: opts.retval,
            data: out,
            duration_ns: opts.duration,
            mark: skb[2],
        })
    }
}

fn full_or(e: libbpf_rs::Error, map: &'static str, what: &str) -> Error {
    // E2BIG from a hash map update means max_entries was reached.
    if e.kind() == libbpf_rs::ErrorKind::TooBig {
        Error::MapFull { map }
    } else {
        Error::bpf(what)(e)
    }
}

/// The value of `idx` on each CPU.
fn percpu_values<T: Copy>(map: &MapHandle, idx: u32) -> Result<Vec<T>> {
    let per_cpu = map
        .lookup_percpu(&idx.to_ne_bytes(), MapFlags::ANY)
        .map_err(Error::bpf("reading counters"))?
        .unwrap_or_default();
    Ok(per_cpu.iter().filter_map(|b| pod::read::<T>(b)).collect())
}

fn percpu_sum(map: &MapHandle, idx: u32) -> Result<ll_counters> {
    Ok(percpu_values::<ll_counters>(map, idx)?
        .iter()
        .fold(ll_counters::default(), |acc, c| ll_counters {
            packets: acc.packets + c.packets,
            bytes: acc.bytes + c.bytes,
        }))
}

/// Sends libbpf's own messages to tracing. Netlink complaints that our code
/// handles (an existing clsact qdisc) stay at debug level.
pub fn route_libbpf_logs() {
    fn log(level: libbpf_rs::PrintLevel, msg: String) {
        let msg = msg.trim_end();
        match level {
            libbpf_rs::PrintLevel::Warn if !msg.starts_with("libbpf: Kernel error message") => {
                tracing::warn!(target: "libbpf", "{msg}")
            }
            _ => tracing::debug!(target: "libbpf", "{msg}"),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, log)));
}

/// Default pin directory.
/// What libbpf compares before it reuses a pinned map.
#[derive(Debug, PartialEq, Eq)]
struct MapShape {
    map_type: libbpf_rs::MapType,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// Removes the map pinned at `path` if this object's `map` could not reuse
/// it: a new version's layout or a new table size. libbpf then pins a new,
/// empty map there. Programs still attached keep the old map until they are
/// replaced. A pin that cannot be read is left for libbpf to report.
fn replace_if_incompatible(map: &libbpf_rs::OpenMapMut<'_>, path: &Path) -> Result<()> {
    let Ok(old) = MapHandle::from_pinned_path(path) else {
        return Ok(());
    };
    let Ok(info) = old.info() else {
        return Ok(());
    };
    let was = MapShape {
        map_type: old.map_type(),
        key_size: old.key_size(),
        value_size: old.value_size(),
        max_entries: old.max_entries(),
        flags: info.info.map_flags,
    };
    let now = MapShape {
        map_type: map.map_type(),
        key_size: map.key_size(),
        value_size: map.value_size(),
        max_entries: map.max_entries(),
        flags: map.map_flags(),
    };
    if was == now {
        return Ok(());
    }
    tracing::warn!(
        map = %map.name().to_string_lossy(),
        was = ?was,
        now = ?now,
        "the pinned map does not fit this version or configuration: replacing it, its entries are lost"
    );
    fs::remove_file(path).map_err(Error::io(format!("removing {}", path.display())))
}

pub fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/loxilight")
}
