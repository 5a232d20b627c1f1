use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::conntrack::{self, CtEntry, Filter, StateCount, TableStats};
use crate::datapath::Datapath;
use crate::proto::v1::conntrack_service_server::ConntrackService;
use crate::proto::v1::{
    ConntrackCount, ConntrackEntry, ConntrackFilter, ConntrackTable, CountConntrackRequest,
    CountConntrackResponse, DeleteConntrackRequest, DeleteConntrackResponse, ListConntrackRequest,
    ListConntrackResponse,
};
use crate::rules::{self, RuleStore};

pub struct Api {
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
}

impl Api {
    pub fn new(store: Arc<RuleStore>, dp: Arc<Datapath>) -> Api {
        Api { store, dp }
    }

    /// Runs a walk of the table off the reactor: a full table is a few
    /// hundred milliseconds of map syscalls (more with deletes).
    async fn blocking<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&Datapath, &RuleStore) -> Result<T, rules::Error> + Send + 'static,
    ) -> Result<T, Status> {
        let (store, dp) = (self.store.clone(), self.dp.clone());
        tokio::task::spawn_blocking(move || f(&dp, &store))
            .await
            .map_err(|e| Status::internal(format!("{what}: {e}")))?
            .map_err(Status::from)
    }
}

fn filter(f: Option<ConntrackFilter>) -> Result<Filter, rules::Error> {
    let f = f.unwrap_or_default();
    Filter::parse("filter", &f.ip, f.port, &f.protocol, &f.state)
}

impl From<CtEntry> for ConntrackEntry {
    fn from(e: CtEntry) -> ConntrackEntry {
        ConntrackEntry {
            service: e.service,
            src_ip: e.src.to_string(),
            dest_ip: e.dst.to_string(),
            src_port: e.sport.into(),
            dest_port: e.dport.into(),
            protocol: e.proto.into(),
            state: e.state.into(),
            action: e.action,
            packets: e.packets,
            bytes: e.bytes,
            idle_seconds: e.idle_secs,
        }
    }
}

impl From<StateCount> for ConntrackCount {
    fn from(c: StateCount) -> ConntrackCount {
        ConntrackCount {
            protocol: c.proto.into(),
            state: c.state.into(),
            flows: c.flows,
        }
    }
}

impl From<TableStats> for ConntrackTable {
    fn from(t: TableStats) -> ConntrackTable {
        ConntrackTable {
            capacity: t.capacity,
            entries: t.entries,
            memory_bytes: t.memory_bytes,
            evicted: t.evicted,
            orphans_removed: t.orphans_removed,
            aged: t.aged,
            insert_failures: t.insert_failures,
            clashes: t.clashes,
        }
    }
}

#[tonic::async_trait]
impl ConntrackService for Api {
    async fn list_conntrack(
        &self,
        req: Request<ListConntrackRequest>,
    ) -> Result<Response<ListConntrackResponse>, Status> {
        let req = req.into_inner();
        let filter = filter(req.filter)?;
        let limit = match req.limit as usize {
            0 => conntrack::DEFAULT_LIMIT,
            n if n > conntrack::MAX_LIMIT => {
                return Err(rules::Error::invalid(
                    "limit",
                    format!(
                        "{n} is more than {}: narrow the filter",
                        conntrack::MAX_LIMIT
                    ),
                )
                .into())
            }
            n => n,
        };
        let l = self
            .blocking("listing conntrack", move |dp, store| {
                Ok(conntrack::list(dp, store, &filter, limit)?)
            })
            .await?;
        Ok(Response::new(ListConntrackResponse {
            entries: l.entries.into_iter().map(Into::into).collect(),
            matched: l.matched,
            counts: l.counts.into_iter().map(Into::into).collect(),
            table: Some(l.table.into()),
        }))
    }

    async fn count_conntrack(
        &self,
        req: Request<CountConntrackRequest>,
    ) -> Result<Response<CountConntrackResponse>, Status> {
        let filter = filter(req.into_inner().filter)?;
        let l = self
            .blocking("counting conntrack", move |dp, store| {
                Ok(conntrack::list(dp, store, &filter, 0)?)
            })
            .await?;
        Ok(Response::new(CountConntrackResponse {
            matched: l.matched,
            counts: l.counts.into_iter().map(Into::into).collect(),
            table: Some(l.table.into()),
        }))
    }

    async fn delete_conntrack(
        &self,
        req: Request<DeleteConntrackRequest>,
    ) -> Result<Response<DeleteConntrackResponse>, Status> {
        let req = req.into_inner();
        let filter = filter(req.filter)?;
        match (filter.is_empty(), req.all) {
            (true, false) => {
                return Err(rules::Error::invalid(
                    "filter",
                    "give a filter, or set all to delete every flow",
                )
                .into())
            }
            (false, true) => {
                return Err(
                    rules::Error::invalid("all", "all cannot be combined with a filter").into(),
                )
            }
            _ => {}
        }
        let d = self
            .blocking("deleting conntrack", move |dp, _| {
                Ok(conntrack::delete(dp, &filter)?)
            })
            .await?;
        tracing::info!(
            flows = d.flows,
            entries = d.entries,
            "deleted conntrack flows on request"
        );
        Ok(Response::new(DeleteConntrackResponse {
            flows: d.flows,
            entries: d.entries,
        }))
    }
}
