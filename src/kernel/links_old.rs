//! The kernel mirror: the only code that talks rtnetlink. So far it tracks the
//! namespace's interfaces and keeps the datapath attached to the managed ones,
//! including interfaces that appear after start.
use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::{Stream, StreamExt, TryStreamExt};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{new_connection, new_multicast_connection, MulticastGroup};

use crate::datapath::Datapath;

/// Which interfaces the datapath is attached to.
#[derive(Debug, Clone)]
pub enum Managed {
    /// Every interface but loopback, present and future.
    All,
    /// These names only (attached again if they vanish and come back).
    Named(Vec<String>),
}

impl Managed {
    fn wants(&self, link: &Link) -> bool {
        match self {
            Managed::All => !link.loopback,
            Managed::Named(names) => names.contains(&link.name),
        }
    }
}

#[derive(Debug)]
struct Link {
    index: u32,
    name: String,
    loopback: bool,
}

fn link(msg: &LinkMessage) -> Link {
    let name = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Link {
        index: msg.header.index,
        name,
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
    }
}

fn attach(dp: &Datapath, l: &Link) -> anyhow::Result<()> {
    dp.attach(l.index)
        .with_context(|| format!("attaching the datapath to {} (ifindex {})", l.name, l.index))?;
    tracing::info!(interface = %l.name, ifindex = l.index, "datapath attached");
    Ok(())
}

/// Attaches to the managed interfaces present now, then returns the watcher
/// that follows links appearing and vanishing; run it as a task.
pub async fn start(
    dp: Arc<Datapath>,
    managed: Managed,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    // Subscribe before dumping so that no link added in between is missed.
    let (conn, _mc_handle, events) = new_multicast_connection(&[MulticastGroup::Link])
        .context("subscribing to rtnetlink link events")?;
    tokio::spawn(conn);
    let (conn, handle, _) = new_connection().context("opening rtnetlink")?;
    tokio::spawn(conn);
    let links: Vec<Link> = handle
        .link()
        .get()
        .execute()
        .map_ok(|m| link(&m))
        .try_collect()
        .await
        .context("listing interfaces over rtnetlink")?;

    if let Managed::Named(names) = &managed {
        for n in names {
            if !links.iter().any(|l| l.name == *n) {
                bail!("unknown interface {n:?}: no such interface in this network namespace");
            }
        }
    }
    for l in links.iter().filter(|l| managed.wants(l)) {
        attach(&dp, l)?;
    }
    let attached: HashSet<u32> = dp.attached().into_iter().collect();
    Ok(watch(dp, managed, attached, events))
}

async fn watch(
    dp: Arc<Datapath>,
    managed: Managed,
    mut attached: HashSet<u32>,
    mut events: impl Stream<
            Item = (
                rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
                rtnetlink::sys::SocketAddr,
            ),
        > + Unpin,
) {
    while let Some((msg, _)) = events.next().await {
        match msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                let l = link(&m);
                if managed.wants(&l) && !attached.contains(&l.index) {
                    match attach(&dp, &l) {
                        Ok(()) => {
                            attached.insert(l.index);
                        }
                        // The link may be gone again already; keep watching.
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "attach failed"),
                    }
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                let index = m.header.index;
                if attached.remove(&index) {
                    dp.forget(index);
                    tracing::info!(ifindex = index, "interface gone, datapath detached");
                }
            }
            _ => {}
        }
    }
    tracing::error!("rtnetlink link subscription ended; new interfaces will not be attached");
}
