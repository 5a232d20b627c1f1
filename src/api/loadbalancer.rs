use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::datapath::Datapath;
use crate::health::Health;
use crate::proto::v1 as pb;
use crate::proto::v1::load_balancer_service_server::LoadBalancerService;
use crate::rules::{
    parse_ip, parse_target_port, parse_weight, Endpoint, LbRule, Mode, RuleStore, Selection,
    ServiceKey, SourcePrefix, StoredRule,
};

pub struct Api {
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
    health: Arc<Health>,
}

impl Api {
    pub fn new(store: Arc<RuleStore>, dp: Arc<Datapath>, health: Arc<Health>) -> Api {
        Api { store, dp, health }
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
                .map(|e| pb::Endpoint {
                    ip: e.ip.to_string(),
                    target_port: e.port.into(),
                    weight: e.weight.into(),
                    counters: s
                        .index_of(e)
                        .and_then(|i| self.dp.endpoint_counters(s.id, i).ok())
                        .and_then(counters),
                    state: match (r.monitor, self.store.is_down((e.ip, e.port))) {
                        (false, _) => String::new(),
                        (true, false) => "up".into(),
                        (true, true) => "down".into(),
                    },
                })
                .collect(),
            counters: self.dp.service_counters(s.id).ok().and_then(counters),
            inactivity_timeout: r.inactivity_timeout,
            monitor: r.monitor,
            bgp: r.bgp,
            sources: r.sources.iter().map(ToString::to_string).collect(),
            mark: r.mark,
        }
    }
}

fn key_to_proto(k: &ServiceKey) -> pb::ServiceKey {
    pb::ServiceKey {
        external_ip: k.ip.to_string(),
        port: k.port.into(),
        protocol: k.proto.as_str().into(),
        port_max: k.port_max.into(),
    }
}

fn key_from_proto(field: &str, k: Option<&pb::ServiceKey>) -> crate::rules::Result<ServiceKey> {
    let k = k.ok_or_else(|| crate::rules::Error::invalid(field, "is required"))?;
    ServiceKey::parse(field, &k.external_ip, k.port, k.port_max, &k.protocol)
}

/// `f` is the request field the rule came from, for error messages.
fn rule_from_proto(f: &str, lb: Option<&pb::LoadBalancer>) -> crate::rules::Result<LbRule> {
    let lb = lb.ok_or_else(|| crate::rules::Error::invalid(f, "is required"))?;
    let key = key_from_proto(&format!("{f}.service"), lb.service.as_ref())?;
    let endpoints = lb
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let f = format!("{f}.endpoints[{i}]");
            Ok(Endpoint {
                ip: parse_ip(&format!("{f}.ip"), &e.ip)?,
                port: parse_target_port(&format!("{f}.target_port"), key.proto, e.target_port)?,
                weight: parse_weight(&format!("{f}.weight"), e.weight)?,
            })
        })
        .collect::<crate::rules::Result<Vec<_>>>()?;
    let rule = LbRule {
        key,
        name: lb.name.clone(),
        selection: Selection::parse(&format!("{f}.selection"), &lb.selection)?,
        mode: Mode::parse(&format!("{f}.mode"), &lb.mode)?,
        endpoints,
        inactivity_timeout: lb.inactivity_timeout,
        monitor: lb.monitor,
        bgp: lb.bgp,
        sources: lb
            .sources
            .iter()
            .enumerate()
            .map(|(i, s)| SourcePrefix::parse(&format!("{f}.sources[{i}]"), s))
            .collect::<crate::rules::Result<_>>()?,
        mark: lb.mark,
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
        let (stored, created) = self.store.create(rule)?;
        let verb = if created { "created" } else { "updated" };
        tracing::info!(service = %stored.rule.key, id = stored.id, "load balancer {verb}");
        self.health.notify();
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
        self.health.notify();
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
            self.health.notify();
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
