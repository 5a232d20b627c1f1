use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::conntrack::{self, CtEntry};
use crate::datapath::Datapath;
use crate::proto::v1::conntrack_service_server::ConntrackService;
use crate::proto::v1::{ConntrackEntry, ListConntrackRequest, ListConntrackResponse};
use crate::rules::RuleStore;

pub struct Api {
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
}

impl Api {
    pub fn new(store: Arc<RuleStore>, dp: Arc<Datapath>) -> Api {
        Api { store, dp }
    }
}

impl From<CtEntry> for ConntrackEntry {
    fn from(e: CtEntry) -> ConntrackEntry {
        ConntrackEntry {
            service: e.service,
            src_ip: e.src.to_string(),
            dest_ip: e.dst.to_string(),
            src_port: e.sport.into(),
            dest_port: e.dport.into(),
            protocol: e.proto.map_or("-", |p| p.as_str()).into(),
            state: e.state.into(),
            action: e.action,
            packets: e.packets,
            bytes: e.bytes,
        }
    }
}

#[tonic::async_trait]
impl ConntrackService for Api {
    async fn list_conntrack(
        &self,
        _req: Request<ListConntrackRequest>,
    ) -> Result<Response<ListConntrackResponse>, Status> {
        let (store, dp) = (self.store.clone(), self.dp.clone());
        // A full table is a long walk of map syscalls: keep it off the reactor.
        let entries = tokio::task::spawn_blocking(move || conntrack::list(&dp, &store))
            .await
            .map_err(|e| Status::internal(format!("listing conntrack: {e}")))?;
        Ok(Response::new(ListConntrackResponse {
            entries: entries.into_iter().map(Into::into).collect(),
        }))
    }
}
