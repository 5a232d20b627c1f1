use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::health::{Health, TargetStatus};
use crate::proto::v1 as pb;
use crate::proto::v1::endpoint_service_server::EndpointService;
use crate::rules::{parse_ip, EndpointProbe, ProbeType, RuleStore};

pub struct Api {
    store: Arc<RuleStore>,
    health: Arc<Health>,
}

impl Api {
    pub fn new(store: Arc<RuleStore>, health: Arc<Health>) -> Api {
        Api { store, health }
    }
}

fn probe_to_proto(p: &EndpointProbe) -> pb::EndpointProbe {
    pb::EndpointProbe {
        ip: p.ip.to_string(),
        probe_type: p.probe.as_str().into(),
        port: p.port.into(),
        request: p.request.clone(),
        response: p.response.clone(),
        period: p.period_s,
        retries: p.retries,
        rise: p.rise,
        ..Default::default()
    }
}

fn status_to_proto(t: &TargetStatus) -> pb::EndpointProbe {
    pb::EndpointProbe {
        state: if t.up { "up" } else { "down" }.into(),
        configured: t.configured,
        last_error: t.last_error.clone(),
        ..probe_to_proto(&t.probe)
    }
}

fn probe_from_proto(p: Option<&pb::EndpointProbe>) -> crate::rules::Result<EndpointProbe> {
    let f = "probe";
    let p = p.ok_or_else(|| crate::rules::Error::invalid(f, "is required"))?;
    let port = u16::try_from(p.port).map_err(|_| {
        crate::rules::Error::invalid(
            format!("{f}.port"),
            format!("port {} is out of range (1-65535)", p.port),
        )
    })?;
    EndpointProbe {
        ip: parse_ip(&format!("{f}.ip"), &p.ip)?,
        probe: ProbeType::parse(&format!("{f}.probe_type"), &p.probe_type)?,
        port,
        request: p.request.clone(),
        response: p.response.clone(),
        period_s: p.period,
        retries: p.retries,
        rise: p.rise,
    }
    .normalize(f)
}

#[tonic::async_trait]
impl EndpointService for Api {
    async fn create_endpoint_probe(
        &self,
        req: Request<pb::CreateEndpointProbeRequest>,
    ) -> Result<Response<pb::CreateEndpointProbeResponse>, Status> {
        let probe = probe_from_proto(req.get_ref().probe.as_ref())?;
        let store = self.store.clone();
        let p = probe.clone();
        // A file write.
        tokio::task::spawn_blocking(move || store.create_probe(p))
            .await
            .map_err(|e| Status::internal(format!("creating the probe: {e}")))??;
        tracing::info!(endpoint = %probe.ip, probe = probe.probe.as_str(), "endpoint probe set");
        self.health.notify();
        Ok(Response::new(pb::CreateEndpointProbeResponse {
            probe: Some(probe_to_proto(&probe)),
        }))
    }

    async fn delete_endpoint_probe(
        &self,
        req: Request<pb::DeleteEndpointProbeRequest>,
    ) -> Result<Response<pb::DeleteEndpointProbeResponse>, Status> {
        let ip = parse_ip("ip", &req.get_ref().ip)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.delete_probe(ip))
            .await
            .map_err(|e| Status::internal(format!("deleting the probe: {e}")))??;
        tracing::info!(endpoint = %ip, "endpoint probe deleted");
        self.health.notify();
        Ok(Response::new(pb::DeleteEndpointProbeResponse {}))
    }

    async fn list_endpoint_probes(
        &self,
        _req: Request<pb::ListEndpointProbesRequest>,
    ) -> Result<Response<pb::ListEndpointProbesResponse>, Status> {
        Ok(Response::new(pb::ListEndpointProbesResponse {
            probes: self.health.list().iter().map(status_to_proto).collect(),
        }))
    }
}
