use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::neighbour::NeighbourFlags;
use rtnetlink::packet_route::route::RouteMessage;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::AsyncSocket;
use rtnetlink::{new_connection, new_multicast_connection, Handle, MulticastGroup};
use tokio::sync::mpsc;

use super::convert::{self, RouteMsg};
use super::model::{nud, Addr, Iface, Neigh, Prefix, Route};
use crate::datapath::{Datapath, HookKind};

/// Which interfaces the datapath is attached to.
#[derive(Debug, Clone)]
pub enum Managed {
    /// Every interface but loopback, present and future.
    All,
    /// These names only (attached again if they vanish and come back).
    Named(Vec<String>),
}

impl Managed {
    fn wants(&self, i: &Iface) -> bool {
        match self {
            Managed::All => !i.loopback,
            Managed::Named(names) => names.contains(&i.name),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MirrorOptions {
    pub managed: Managed,
    pub hook: HookKind,
    /// Receive buffer of the event socket; when events come faster than it
    /// holds, the kernel reports ENOBUFS and the mirror dumps everything again.
    pub netlink_rcvbuf: usize,
    /// Shared with whoever reports on the mirror (the metrics endpoint).
    pub stats: Arc<MirrorStats>,
    /// Notified when an interface appears, goes or is renamed, for rules
    /// that name interfaces (the firewall's).
    pub links_changed: Arc<tokio::sync::Notify>,
}

/// What the mirror has done since start, counted as it happens so that a
/// reader never waits on the mirror's task.
#[derive(Debug, Default)]
pub struct MirrorStats {
    pub link_events: AtomicU64,
    pub address_events: AtomicU64,
    pub route_events: AtomicU64,
    pub neighbour_events: AtomicU64,
    /// The event socket overran (ENOBUFS) and events were lost.
    pub overruns: AtomicU64,
    /// Re-reads of the routes only.
    pub route_resyncs: AtomicU64,
    /// Re-reads of everything, after an overrun.
    pub full_resyncs: AtomicU64,
    /// Route events of tables other than main, which are not mirrored.
    pub other_table_routes: AtomicU64,
}

fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// Everything the kernel holds that the datapath needs.
#[derive(Debug, Default)]
struct Snapshot {
    links: Vec<Iface>,
    addrs: Vec<Addr>,
    routes: Vec<Route>,
    neighs: Vec<Neigh>,
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

struct Mirror {
    dp: Arc<Datapath>,
    opts: MirrorOptions,
    handle: Handle,
    links: HashMap<u32, Iface>,
    /// (address, ifindex) -> address.
    addrs: HashMap<(IpAddr, u32), Addr>,
    /// prefix -> metric -> route; the lowest metric is programmed.
    routes: BTreeMap<Prefix, BTreeMap<u32, Route>>,
    neighs: HashMap<(u32, IpAddr), Neigh>,
    /// Routes must be dumped again: IPv4 drops a downed link's routes
    /// silently, and IPv6 multipath routes arrive one next hop at a time.
    route_resync: bool,
    /// Events were lost (ENOBUFS): everything must be dumped again.
    overrun: bool,
}

/// Multicast and IPv6 link-local destinations always go to Linux, so their
/// routes and neighbours are not mirrored.
fn forwardable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_multicast(),
        IpAddr::V6(v6) => !v6.is_multicast() && !v6.is_unicast_link_local(),
    }
}

fn log_err(what: &str, r: anyhow::Result<()>) {
    if let Err(e) = r {
        tracing::warn!(error = %format!("{e:#}"), "{what} failed");
    }
}

/// The main table's forwardable routes, IPv4 and IPv6.
async fn dump_routes(h: &Handle) -> anyhow::Result<Vec<Route>> {
    let mut routes = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        // All tables, types and protocols: the kernel filters dumps by
        // whatever the request header sets once strict checking is on.
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let msgs: Vec<RouteMessage> = h
            .route()
            .get(req)
            .execute()
            .try_collect()
            .await
            .context("dumping routes")?;
        routes.extend(msgs.iter().filter_map(|m| match convert::route(m) {
            RouteMsg::Main(r) if forwardable(&r.dst.ip) => Some(r),
            _ => None,
        }));
    }
    Ok(routes)
}

async fn snapshot_once(h: &Handle) -> anyhow::Result<Snapshot> {
    let links = h.link().get().execute().map_ok(|m| convert::link(&m));
    let addrs = h
        .address()
        .get()
        .execute()
        .try_filter_map(|m| async move { Ok(convert::addr(&m)) });
    let neighs = h
        .neighbours()
        .get()
        .execute()
        .try_filter_map(|m| async move { Ok(convert::neigh(&m)) });
    let snap = Snapshot {
        links: links.try_collect().await.context("dumping links")?,
        addrs: addrs.try_collect().await.context("dumping addresses")?,
        neighs: neighs.try_collect().await.context("dumping neighbours")?,
        routes: dump_routes(h).await?,
    };
    Ok(snap)
}

/// The namespace's interfaces, read once.
pub async fn interfaces() -> anyhow::Result<Vec<Iface>> {
    let (conn, handle, _) = new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    Ok(snapshot(&handle).await?.links)
}

/// A dump that changes while it is read fails (EBUSY, "dump interrupted"):
/// read it again.
async fn snapshot(h: &Handle) -> anyhow::Result<Snapshot> {
    let mut attempt = 1;
    loop {
        match snapshot_once(h).await {
            Err(e) if attempt < 5 => {
                tracing::debug!(attempt, error = %format!("{e:#}"), "dump failed, retrying");
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
                attempt += 1;
            }
            res => return res,
        }
    }
}

impl Mirror {
    fn link_set(&mut self, i: Iface) -> anyhow::Result<()> {
        if self.opts.managed.wants(&i) && self.dp.hook_of(i.index).is_none() {
            let hook = self.dp.attach(i.index, self.opts.hook).with_context(|| {
                format!("attaching the datapath to {} (ifindex {})", i.name, i.index)
            })?;
            tracing::info!(interface = %i.name, ifindex = i.index, hook = hook.as_str(), "datapath attached");
        }
        self.dp.set_iface(&i, self.dp.hook_of(i.index).is_some())?;
        let old = self.links.get(&i.index);
        if old.is_some_and(|o| o.up != i.up) {
            self.route_resync = true;
        }
        if old.is_none_or(|o| o.name != i.name) {
            self.opts.links_changed.notify_one();
        }
        self.links.insert(i.index, i);
        Ok(())
    }

    fn link_del(&mut self, index: u32) -> anyhow::Result<()> {
        if let Some(i) = self.links.remove(&index) {
            tracing::info!(interface = %i.name, ifindex = index, "interface gone");
        }
        self.dp.forget(index);
        self.dp.del_iface(index)?;
        self.opts.links_changed.notify_one();
        self.route_resync = true;
        Ok(())
    }

    fn addr_set(&mut self, a: Addr) -> anyhow::Result<()> {
        self.dp.set_local(&a)?;
        self.addrs.insert((a.ip, a.ifindex), a);
        Ok(())
    }

    /// Source translation's addresses follow the address set as a whole.
    fn sync_source_addrs(&self) -> anyhow::Result<()> {
        Ok(self.dp.set_source_addrs(self.addrs.values())?)
    }

    fn addr_del(&mut self, a: &Addr) -> anyhow::Result<()> {
        self.addrs.remove(&(a.ip, a.ifindex));
        // The same address may still be on another interface.
        match self.addrs.values().find(|o| o.ip == a.ip) {
            Some(other) => self.dp.set_local(other)?,
            None => {
                self.dp.del_local(&a.ip)?;
                // A walk of the whole conntrack: off the event loop.
                let (dp, ip) = (self.dp.clone(), a.ip);
                tokio::task::spawn_blocking(move || match dp.flush_translated_to(ip) {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(address = %ip, entries = n, "flows translated to a removed address flushed")
                    }
                    Err(e) => {
                        tracing::warn!(address = %ip, error = %e, "flushing the flows translated to a removed address failed")
                    }
                });
            }
        }
        Ok(())
    }

    /// Programs the lowest-metric route of `p`, or removes it.
    fn program_prefix(&self, p: &Prefix) -> anyhow::Result<()> {
        match self.routes.get(p).and_then(|m| m.values().next()) {
            Some(r) => self.dp.set_route(r)?,
            None => self.dp.del_route(p)?,
        }
        Ok(())
    }

    fn route_set(&mut self, r: Route) -> anyhow::Result<()> {
        let p = r.dst;
        self.routes.entry(p).or_default().insert(r.metric, r);
        self.program_prefix(&p)
    }

    fn route_del(&mut self, r: &Route) -> anyhow::Result<()> {
        if let Some(m) = self.routes.get_mut(&r.dst) {
            m.remove(&r.metric);
            if m.is_empty() {
                self.routes.remove(&r.dst);
            }
        }
        self.program_prefix(&r.dst)
    }

    /// Makes the route table exactly `routes`, touching only what changed.
    fn replace_routes(&mut self, routes: Vec<Route>) -> anyhow::Result<()> {
        let mut new: BTreeMap<Prefix, BTreeMap<u32, Route>> = BTreeMap::new();
        for r in routes {
            new.entry(r.dst).or_default().insert(r.metric, r);
        }
        let old = std::mem::replace(&mut self.routes, new);
        for p in old.keys().filter(|p| !self.routes.contains_key(p)) {
            self.dp.del_route(p)?;
        }
        for (p, m) in &self.routes {
            let best = m.values().next();
            if old.get(p).and_then(|o| o.values().next()) != best {
                self.program_prefix(p)?;
            }
        }
        Ok(())
    }

    fn neigh_set(&mut self, n: Neigh) -> anyhow::Result<()> {
        tracing::debug!(ifindex = n.ifindex, ip = %n.ip, state = nud::name(n.state), "neighbour");
        if !forwardable(&n.ip) {
            return Ok(());
        }
        if !nud::usable(n.state) || n.mac == [0; 6] {
            return self.neigh_del(n.ifindex, n.ip);
        }
        if self.neighs.get(&(n.ifindex, n.ip)) != Some(&n) {
            self.dp.set_neigh(&n)?;
            self.neighs.insert((n.ifindex, n.ip), n);
        }
        Ok(())
    }

    fn neigh_del(&mut self, ifindex: u32, ip: IpAddr) -> anyhow::Result<()> {
        self.neighs.remove(&(ifindex, ip));
        self.dp.del_neigh(ifindex, &ip)?;
        Ok(())
    }

    fn on_route(&mut self, m: &RouteMessage, add: bool) -> anyhow::Result<()> {
        match convert::route(m) {
            RouteMsg::Main(r) if !forwardable(&r.dst.ip) => {}
            RouteMsg::Main(r) if r.dst.ip.is_ipv6() => self.route_resync = true,
            RouteMsg::Main(r) if add => self.route_set(r)?,
            RouteMsg::Main(r) => self.route_del(&r)?,
            RouteMsg::OtherTable => {
                let total = bump(&self.opts.stats.other_table_routes);
                tracing::debug!(total, "route of another table ignored");
            }
            RouteMsg::Ignored => {}
        }
        Ok(())
    }

    fn on_message(&mut self, msg: RouteNetlinkMessage) -> anyhow::Result<()> {
        use RouteNetlinkMessage as M;
        let s = &self.opts.stats;
        match &msg {
            M::NewLink(_) | M::DelLink(_) => bump(&s.link_events),
            M::NewAddress(_) | M::DelAddress(_) => bump(&s.address_events),
            M::NewRoute(_) | M::DelRoute(_) => bump(&s.route_events),
            M::NewNeighbour(_) | M::DelNeighbour(_) => bump(&s.neighbour_events),
            _ => 0,
        };
        match msg {
            M::NewLink(m) => self.link_set(convert::link(&m)),
            M::DelLink(m) => self.link_del(m.header.index),
            M::NewAddress(m) => convert::addr(&m).map_or(Ok(()), |a| {
                self.addr_set(a)?;
                self.sync_source_addrs()
            }),
            M::DelAddress(m) => convert::addr(&m).map_or(Ok(()), |a| {
                self.addr_del(&a)?;
                self.sync_source_addrs()
            }),
            M::NewRoute(m) => self.on_route(&m, true),
            M::DelRoute(m) => self.on_route(&m, false),
            M::NewNeighbour(m) => convert::neigh(&m).map_or(Ok(()), |n| self.neigh_set(n)),
            M::DelNeighbour(m) => {
                convert::neigh(&m).map_or(Ok(()), |n| self.neigh_del(n.ifindex, n.ip))
            }
            _ => Ok(()),
        }
    }

    fn handle(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) {
        match msg.payload {
            NetlinkPayload::InnerMessage(m) => {
                log_err("applying a netlink event", self.on_message(m))
            }
            NetlinkPayload::Overrun(_) => {
                bump(&self.opts.stats.overruns);
                tracing::warn!(
                    rcvbuf = self.opts.netlink_rcvbuf,
                    "netlink events overran (ENOBUFS); dumping again"
                );
                self.overrun = true;
            }
            _ => {}
        }
    }

    /// Makes the mirror exactly `snap`: attaches to new managed links,
    /// removes what vanished, writes what changed.
    fn apply_snapshot(&mut self, snap: Snapshot) -> anyhow::Result<()> {
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter(|i| !snap.links.iter().any(|l| l.index == **i))
            .copied()
            .collect();
        for index in gone {
            self.link_del(index)?;
        }
        for l in snap.links {
            self.link_set(l)?;
        }

        let addrs: HashMap<(IpAddr, u32), Addr> = snap
            .addrs
            .into_iter()
            .map(|a| ((a.ip, a.ifindex), a))
            .collect();
        let stale: Vec<Addr> = self
            .addrs
            .values()
            .filter(|a| !addrs.contains_key(&(a.ip, a.ifindex)))
            .copied()
            .collect();
        for a in &stale {
            self.addr_del(a)?;
        }
        for a in addrs.into_values() {
            self.addr_set(a)?;
        }
        self.sync_source_addrs()?;

        self.replace_routes(snap.routes)?;

        let neighs: HashMap<(u32, IpAddr), Neigh> = snap
            .neighs
            .into_iter()
            .map(|n| ((n.ifindex, n.ip), n))
            .collect();
        let stale: Vec<(u32, IpAddr)> = self
            .neighs
            .keys()
            .filter(|k| !neighs.contains_key(k))
            .copied()
            .collect();
        for (i, ip) in stale {
            self.neigh_del(i, ip)?;
        }
        for n in neighs.into_values() {
            self.neigh_set(n)?;
        }
        Ok(())
    }

    async fn resync(&mut self) {
        let started = std::time::Instant::now();
        let (what, res) = if std::mem::take(&mut self.overrun) {
            self.route_resync = false;
            bump(&self.opts.stats.full_resyncs);
            (
                "everything",
                async { self.apply_snapshot(snapshot(&self.handle).await?) }.await,
            )
        } else {
            self.route_resync = false;
            bump(&self.opts.stats.route_resyncs);
            let res = async {
                let routes = match dump_routes(&self.handle).await {
                    Ok(r) => r,
                    // Interrupted by a concurrent change: the full retrying dump.
                    Err(_) => snapshot(&self.handle).await?.routes,
                };
                self.replace_routes(routes)
            }
            .await;
            ("routes", res)
        };
        tracing::info!(
            what,
            took_ms = started.elapsed().as_millis() as u64,
            "mirror resynchronised"
        );
        log_err("resynchronising the mirror", res);
    }

    /// Asks the kernel to resolve a next hop the datapath found unresolved
    /// (NTF_USE, as a sent packet would); the answer arrives as an event.
    async fn resolve(&self, ifindex: u32, ip: IpAddr) {
        if self.dp.hook_of(ifindex).is_none() {
            return;
        }
        tracing::debug!(ifindex, %ip, "resolving next hop");
        let res = self
            .handle
            .neighbours()
            .add(ifindex, ip)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute()
            .await;
        if let Err(e) = res {
            tracing::debug!(ifindex, %ip, error = %e, "neighbour resolution request failed");
        }
    }
}

async fn run(
    mut m: Mirror,
    mut events: Events,
    mut misses: mpsc::UnboundedReceiver<(u32, IpAddr)>,
) {
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some((msg, _)) => m.handle(msg),
                None => break,
            },
            Some((ifindex, ip)) = misses.recv() => m.resolve(ifindex, ip).await,
        }
        // Apply what is already queued before any dump, so a burst of
        // changes costs one dump, not one per event.
        while let Ok((msg, _)) = events.try_recv() {
            m.handle(msg);
        }
        if m.overrun || m.route_resync {
            m.resync().await;
        }
    }
    tracing::error!("rtnetlink subscription ended: the mirror no longer follows the kernel");
}

fn force_rcvbuf(sock: &rtnetlink::sys::Socket, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    // SAFETY: a valid socket fd and a pointer to an int of the given size.
    // SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Dumps the kernel's state into the datapath and attaches to the managed
/// interfaces, then returns the task that follows changes; spawn it.
pub async fn start(
    dp: Arc<Datapath>,
    opts: MirrorOptions,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    // Subscribe before dumping so that no change in between is missed.
    let (mut conn, _, events) = new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
    ])
    .context("subscribing to rtnetlink events")?;
    force_rcvbuf(conn.socket_mut().socket_mut(), opts.netlink_rcvbuf)
        .context("sizing the rtnetlink event socket")?;
    tokio::spawn(conn);
    let (conn, handle, _) = new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);

    let snap = snapshot(&handle).await?;
    if let Managed::Named(names) = &opts.managed {
        for n in names {
            if !snap.links.iter().any(|l| l.name == *n) {
                bail!("unknown interface {n:?}: no such interface in this network namespace");
            }
        }
    }
    let mut m = Mirror {
        dp: dp.clone(),
        opts,
        handle,
        // What the (possibly adopted) maps hold now, so that the first
        // snapshot also removes what went stale while no daemon ran.
        links: dp.ifaces().into_iter().map(|(i, _)| (i.index, i)).collect(),
        addrs: dp
            .locals()
            .into_iter()
            .map(|a| ((a.ip, a.ifindex), a))
            .collect(),
        routes: dp.routes().into_iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.dst)
                .or_insert_with(BTreeMap::new)
                .insert(r.metric, r);
            m
        }),
        neighs: dp
            .neighs()
            .into_iter()
            .map(|n| ((n.ifindex, n.ip), n))
            .collect(),
        route_resync: false,
        overrun: false,
    };
    m.apply_snapshot(snap)?;

    let (tx, misses) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("neigh-miss".into())
        .spawn(move || {
            if let Err(e) = dp.watch_neigh_misses(|ifindex, ip| tx.send((ifindex, ip)).is_ok()) {
                tracing::error!(error = %e, "reading neighbour misses failed; unresolved next hops wait for Linux");
            }
        })
        .context("starting the neighbour-miss reader")?;
    Ok(run(m, events, misses))
}
