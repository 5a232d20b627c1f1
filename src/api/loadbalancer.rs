use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::datapath::Datapath;
use crate::proto::v1 as pb;
use crate::proto::v1::load_balancer_service_server::LoadBalancerService;
use crate::rules::{
    parse_ip, parse_port, parse_weight, Endpoint, LbRule, Mode, Protocol, RuleStore, Selection,
    ServiceKey, StoredRule,
};

pub struct Api {
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
}

impl Api {
    pub fn new(store: Arc<RuleStore>, dp: Arc<Datapath>) -> Api {
        Api { store, dp }
    }

    /// The stored rule with its live counters.
    fn to_proto(&self, s: &StoredRule) -> pb::LoadBalancer {
        let counters = |c: crate::datapath::types::ll_counters| {
            Some(pb::Counters {
                packets: c.packets,
                bytes: c.bytes,
            })
        };
        let r = &s.rule;
        pb::LoadBalancer {
            service: Some(key_to_proto(&r.key)),
            name: r.name.clone(),
            selection: r.selection.as_str().into(),
            mode: r.mode.as_str().into(),
            endpoints: r
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| pb::Endpoint {
                    ip: e.ip.to_string(),
                    target_port: e.port.into(),
                    weight: e.weight.into(),
                    counters: self.dp.endpoint_counters(s.id, i).ok().and_then(counters),
                })
                .collect(),
            counters: self.dp.service_counters(s.id).ok().and_then(counters),
            inactivity_timeout: r.inactivity_timeout,
        }
    }
}

fn key_to_proto(k: &ServiceKey) -> pb::ServiceKey {
    pb::ServiceKey {
        external_ip: k.ip.to_string(),
        port: k.port.into(),
        protocol: k.proto.as_str().into(),
    }
}

fn key_from_proto(field: &str, k: Option<&pb::ServiceKey>) -> crate::rules::Result<ServiceKey> {
    let k = k.ok_or_else(|| crate::rules::Error::invalid(field, "is required"))?;
    Ok(ServiceKey {
        ip: parse_ip(&format!("{field}.external_ip"), &k.external_ip)?,
        port: parse_port(&format!("{field}.port"), k.port)?,
        proto: Protocol::parse(&format!("{field}.protocol"), &k.protocol)?,
    })
}

/// `f` is the request field the rule came from, for error messages.
fn rule_from_proto(f: &str, lb: Option<&pb::LoadBalancer>) -> crate::rules::Result<LbRule> {
    let lb = lb.ok_or_else(|| crate::rules::Error::invalid(f, "is required"))?;
    let endpoints = lb
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let f = format!("{f}.endpoints[{i}]");
            Ok(Endpoint {
                ip: parse_ip(&format!("{f}.ip"), &e.ip)?,
                port: parse_port(&format!("{f}.target_port"), e.target_port)?,
                weight: parse_weight(&format!("{f}.weight"), e.weight)?,
            })
        })
        .collect::<crate::rules::Result<Vec<_>>>()?;
    let rule = LbRule {
        key: key_from_proto(&format!("{f}.service"), lb.service.as_ref())?,
        name: lb.name.clone(),
        selection: Selection::parse(&format!("{f}.selection"), &lb.selection)?,
        mode: Mode::parse(&format!("{f}.mode"), &lb.mode)?,
        endpoints,
        inactivity_timeout: lb.inactivity_timeout,
    };
    rule.validate(f)?;
    Ok(rule)
}

#[tonic::async_trait]
impl LoadBalancerService for Api {
    async fn create_load_balancer(
        &self,
        req: Request<pb::CreateLoadBalancerRequest>,
    ) -> Result<Response<pb::CreateLoadBalancerResponse>, Status> {
        let rule = rule_from_proto("load_balancer", req.get_ref().load_balancer.as_ref())?;
        let stored = self.store.create(rule)?;
        tracing::info!(service = %stored.rule.key, id = stored.id, "load balancer created");
        Ok(Response::new(pb::CreateLoadBalancerResponse {
            load_balancer: Some(self.to_proto(&stored)),
        }))
    }

    async fn delete_load_balancer(
        &self,
        req: Request<pb::DeleteLoadBalancerRequest>,
    ) -> Result<Response<pb::DeleteLoadBalancerResponse>, Status> {
        let key = key_from_proto("service", req.get_ref().service.as_ref())?;
        self.store.delete(&key)?;
        tracing::info!(service = %key, "load balancer deleted");
        Ok(Response::new(pb::DeleteLoadBalancerResponse {}))
    }

    async fn get_load_balancer(
        &self,
        req: Request<pb::GetLoadBalancerRequest>,
    ) -> Result<Response<pb::GetLoadBalancerResponse>, Status> {
        let key = key_from_proto("service", req.get_ref().service.as_ref())?;
        let stored = self.store.get(&key)?;
        Ok(Response::new(pb::GetLoadBalancerResponse {
            load_balancer: Some(self.to_proto(&stored)),
        }))
    }

    async fn apply_load_balancers(
        &self,
        req: Request<pb::ApplyLoadBalancersRequest>,
    ) -> Result<Response<pb::ApplyLoadBalancersResponse>, Status> {
        let req = req.into_inner();
        let rules = req
            .load_balancers
            .iter()
            .enumerate()
            .map(|(i, lb)| rule_from_proto(&format!("load_balancers[{i}]"), Some(lb)))
            .collect::<crate::rules::Result<Vec<_>>>()?;
        let store = self.store.clone();
        let report = super::blocking("applying", move || store.apply(rules, req.dry_run)).await?;
        if !req.dry_run {
            super::log_applied(&report, "rule set");
        }
        let keys = |v: &[crate::rules::ServiceKey]| v.iter().map(key_to_proto).collect();
        Ok(Response::new(pb::ApplyLoadBalancersResponse {
            created: keys(&report.created),
            updated: keys(&report.updated),
            deleted: keys(&report.deleted),
            unchanged: report.unchanged as u32,
        }))
    }

    async fn list_load_balancers(
        &self,
        _req: Request<pb::ListLoadBalancersRequest>,
    ) -> Result<Response<pb::ListLoadBalancersResponse>, Status> {
        let load_balancers = self.store.list().iter().map(|s| self.to_proto(s)).collect();
        Ok(Response::new(pb::ListLoadBalancersResponse {
            load_balancers,
        }))
    }
}
