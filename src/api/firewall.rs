use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::datapath::Datapath;
use crate::proto::v1 as pb;
use crate::proto::v1::firewall_service_server::FirewallService;
use crate::rules::{
    parse_ip, Error, FwAction, FwMatch, FwRule, IpPrefix, PortRange, Result, RuleStore,
    StoredFwRule,
};

pub struct Api {
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
}

/// `field` is the request path of the match, e.g. `firewall_rule.match`.
fn match_from_proto(field: &str, m: Option<&pb::FirewallMatch>) -> Result<FwMatch> {
    let m = m.ok_or_else(|| Error::invalid(field, "is required"))?;
    let f = |name: &str| format!("{field}.{name}");
    let prefix = |name: &str, s: &str| {
        (!s.trim().is_empty())
            .then(|| IpPrefix::parse(&f(name), s))
            .transpose()
    };
    let protocol = match m.protocol {
        0 => None,
        p => Some(u8::try_from(p).map_err(|_| {
            Error::invalid(f("protocol"), format!("{p} is not an IP protocol (0-255)"))
        })?),
    };
    Ok(FwMatch {
        source: prefix("source_ip", &m.source_ip)?,
        destination: prefix("destination_ip", &m.destination_ip)?,
        source_ports: PortRange::parse(
            &f("min_source_port"),
            &f("max_source_port"),
            m.min_source_port,
            m.max_source_port,
        )?,
        destination_ports: PortRange::parse(
            &f("min_destination_port"),
            &f("max_destination_port"),
            m.min_destination_port,
            m.max_destination_port,
        )?,
        protocol,
        port_name: (!m.port_name.is_empty()).then(|| m.port_name.clone()),
        preference: m.preference,
    })
}

fn match_to_proto(m: &FwMatch) -> pb::FirewallMatch {
    let prefix = |p: Option<IpPrefix>| p.map(|p| p.to_string()).unwrap_or_default();
    pb::FirewallMatch {
        source_ip: prefix(m.source),
        destination_ip: prefix(m.destination),
        min_source_port: m.source_ports.min.into(),
        max_source_port: m.source_ports.max.into(),
        min_destination_port: m.destination_ports.min.into(),
        max_destination_port: m.destination_ports.max.into(),
        protocol: m.protocol.map_or(0, u32::from),
        port_name: m.port_name.clone().unwrap_or_default(),
        preference: m.preference,
    }
}

/// The one action among the options; `o` is their request path.
fn action_from_proto(o: &str, opts: &pb::FirewallOptions) -> Result<FwAction> {
    let mut actions = Vec::new();
    if opts.allow {
        actions.push(FwAction::Allow);
    }
    if opts.drop {
        actions.push(FwAction::Drop);
    }
    if opts.trap {
        actions.push(FwAction::Trap);
    }
    if !opts.redirect.is_empty() {
        actions.push(FwAction::Redirect(opts.redirect.clone()));
    }
    if !opts.snat_ip.is_empty() {
        let port = match opts.snat_port {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                Error::invalid(
                    format!("{o}.snat_port"),
                    format!("port {p} is out of range (1-65535)"),
                )
            })?),
        };
        let ip = parse_ip(&format!("{o}.snat_ip"), &opts.snat_ip)?;
        actions.push(FwAction::Snat { ip, port });
    } else if opts.snat_port != 0 {
        return Err(Error::invalid(format!("{o}.snat_port"), "needs snat_ip"));
    }
    if opts.masquerade {
        actions.push(FwAction::Masquerade);
    }
    match actions.len() {
        1 => Ok(actions.remove(0)),
        0 => Err(Error::invalid(
            o,
            "needs an action: allow, drop, trap, redirect, snat_ip or masquerade",
        )),
        _ => Err(Error::invalid(
            o,
            format!(
                "has {} actions ({}): give exactly one",
                actions.len(),
                actions
                    .iter()
                    .map(FwAction::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// `f` is the request path of the rule.
fn rule_from_proto(f: &str, r: Option<&pb::FirewallRule>) -> Result<FwRule> {
    let r = r.ok_or_else(|| Error::invalid(f, "is required"))?;
    let (m, o) = (format!("{f}.match"), format!("{f}.options"));
    let opts = r
        .options
        .as_ref()
        .ok_or_else(|| Error::invalid(&o, "is required"))?;
    let rule = FwRule {
        matches: match_from_proto(&m, r.r#match.as_ref())?,
        action: action_from_proto(&o, opts)?,
        record: opts.record,
        mark: opts.mark,
    };
    rule.validate(&m, &o)?;
    Ok(rule)
}

/// Refuses a rule naming an interface that this network namespace does
/// not have (as the kernel mirror last saw it).
fn check_interfaces(f: &str, r: &FwRule, known: &HashSet<String>) -> Result<()> {
    let mut named = Vec::new();
    if let Some(n) = &r.matches.port_name {
        named.push((format!("{f}.match.port_name"), n));
    }
    if let FwAction::Redirect(n) = &r.action {
        named.push((format!("{f}.options.redirect"), n));
    }
    for (field, name) in named {
        if !known.contains(name) {
            return Err(Error::invalid(
                field,
                format!("no interface {name:?} in this network namespace"),
            ));
        }
    }
    Ok(())
}

impl Api {
    pub fn new(store: Arc<RuleStore>, dp: Arc<Datapath>) -> Api {
        Api { store, dp }
    }

    fn interfaces(&self) -> HashSet<String> {
        self.dp.ifaces().into_iter().map(|(i, _)| i.name).collect()
    }

    /// The rule, with its counters when `counters` (by rule id) is given.
    fn to_proto(
        s: &StoredFwRule,
        counters: Option<&HashMap<u32, pb::Counters>>,
    ) -> pb::FirewallRule {
        let r = &s.rule;
        let mut o = pb::FirewallOptions {
            record: r.record,
            mark: r.mark,
            ..Default::default()
        };
        match &r.action {
            FwAction::Allow => o.allow = true,
            FwAction::Drop => o.drop = true,
            FwAction::Trap => o.trap = true,
            FwAction::Redirect(n) => o.redirect = n.clone(),
            FwAction::Snat { ip, port } => {
                o.snat_ip = ip.to_string();
                o.snat_port = port.map_or(0, u32::from);
            }
            FwAction::Masquerade => o.masquerade = true,
        }
        pb::FirewallRule {
            r#match: Some(match_to_proto(&r.matches)),
            options: Some(o),
            counters: counters.map(|c| c.get(&s.id).cloned().unwrap_or_default()),
        }
    }

    /// Hit counters by rule id; none (logged) if the datapath cannot say.
    fn counters(&self) -> HashMap<u32, pb::Counters> {
        match self.dp.firewall_counters() {
            Ok(m) => m
                .into_iter()
                .map(|(id, c)| {
                    let c = pb::Counters {
                        packets: c.packets,
                        bytes: c.bytes,
                    };
                    (id, c)
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading firewall counters failed");
                HashMap::new()
            }
        }
    }
}

#[tonic::async_trait]
impl FirewallService for Api {
    async fn create_firewall_rule(
        &self,
        req: Request<pb::CreateFirewallRuleRequest>,
    ) -> std::result::Result<Response<pb::CreateFirewallRuleResponse>, Status> {
        let f = "firewall_rule";
        let rule = rule_from_proto(f, req.get_ref().firewall_rule.as_ref())?;
        check_interfaces(f, &rule, &self.interfaces())?;
        let store = self.store.clone();
        let stored = super::blocking("creating", move || store.create_firewall_rule(rule)).await?;
        tracing::info!(rule = %stored.rule.matches, action = stored.rule.action.as_str(), id = stored.id, "firewall rule created");
        Ok(Response::new(pb::CreateFirewallRuleResponse {
            firewall_rule: Some(Self::to_proto(&stored, None)),
        }))
    }

    async fn delete_firewall_rule(
        &self,
        req: Request<pb::DeleteFirewallRuleRequest>,
    ) -> std::result::Result<Response<pb::DeleteFirewallRuleResponse>, Status> {
        let key = match_from_proto("match", req.get_ref().r#match.as_ref())?;
        let store = self.store.clone();
        let deleted = key.clone();
        super::blocking("deleting", move || store.delete_firewall_rule(&deleted)).await?;
        tracing::info!(rule = %key, "firewall rule deleted");
        Ok(Response::new(pb::DeleteFirewallRuleResponse {}))
    }

    async fn list_firewall_rules(
        &self,
        _req: Request<pb::ListFirewallRulesRequest>,
    ) -> std::result::Result<Response<pb::ListFirewallRulesResponse>, Status> {
        let counters = self.counters();
        let firewall_rules = self
            .store
            .list_firewall_rules()
            .iter()
            .map(|s| Self::to_proto(s, Some(&counters)))
            .collect();
        Ok(Response::new(pb::ListFirewallRulesResponse {
            firewall_rules,
            default_policy: self.store.firewall_default().as_str().into(),
        }))
    }

    async fn apply_firewall_rules(
        &self,
        req: Request<pb::ApplyFirewallRulesRequest>,
    ) -> std::result::Result<Response<pb::ApplyFirewallRulesResponse>, Status> {
        let req = req.into_inner();
        let known = self.interfaces();
        let rules = req
            .firewall_rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let f = format!("firewall_rules[{i}]");
                let rule = rule_from_proto(&f, Some(r))?;
                check_interfaces(&f, &rule, &known)?;
                Ok(rule)
            })
            .collect::<Result<Vec<_>>>()?;
        let store = self.store.clone();
        let report = super::blocking("applying", move || {
            store.apply_firewall_rules(rules, req.dry_run)
        })
        .await?;
        if !req.dry_run {
            super::log_applied(&report, "firewall rule set");
        }
        let keys = |v: &[FwMatch]| v.iter().map(match_to_proto).collect();
        Ok(Response::new(pb::ApplyFirewallRulesResponse {
            created: keys(&report.created),
            updated: keys(&report.updated),
            deleted: keys(&report.deleted),
            unchanged: report.unchanged as u32,
        }))
    }
}
