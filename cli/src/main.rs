//! loxicmd: command line client for the loxilight daemon, following LoxiLB's
//! `loxicmd` syntax (`loxicmd create lb 20.20.20.1 --tcp=2020:8080 --endpoints=...`).

mod args;
mod client;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::args::{ArgError, UsageError};
use crate::client::{Client, Target, TlsOptions};
use crate::output::service_label;

mod pb {
    tonic::include_proto!("loxilight.v1");
}

#[derive(Parser)]
#[command(
    name = "loxicmd",
    version,
    about = "Command line client for the loxilight load balancer"
)]
struct Cli {
    /// Address of the loxilight API server, or unix:PATH for its unix socket
    #[arg(
        short = 's',
        long,
        global = true,
        default_value = "127.0.0.1",
        help_heading = "Global options"
    )]
    apiserver: String,
    /// Port of the loxilight API server
    #[arg(
        short,
        long,
        global = true,
        default_value_t = 11111,
        help_heading = "Global options"
    )]
    port: u16,
    /// Output format (default: table)
    #[arg(
        short,
        long,
        global = true,
        value_enum,
        help_heading = "Global options"
    )]
    output: Option<OutputFormat>,
    /// PEM CA certificate that signed the server's: talk TLS
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Global options"
    )]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (with --tls-key)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        requires_all = ["tls_ca", "tls_key"],
        help_heading = "Global options"
    )]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        requires = "tls_cert",
        help_heading = "Global options"
    )]
    tls_key: Option<PathBuf>,
    /// Name the server's certificate must carry [default: the --apiserver host]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        requires = "tls_ca",
        help_heading = "Global options"
    )]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    /// Table with one extra row per endpoint (get lb; other tables are unchanged)
    Wide,
    /// The full response as JSON
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create a resource
    Create {
        #[command(subcommand)]
        resource: CreateResource,
    },
    /// Delete a resource
    Delete {
        #[command(subcommand)]
        resource: DeleteResource,
    },
    /// Show resources
    Get {
        #[command(subcommand)]
        resource: GetResource,
    },
    /// Write the running rule set as JSON (to FILE, or standard output)
    Save {
        #[arg(short, long)]
        file: Option<PathBuf>,
    },
    /// Make the running rule set match FILE (as `save` writes it): creates,
    /// updates and deletes, all or nothing
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// Only print what would change
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CreateResource {
    /// Create load-balancer rules, one per --tcp/--udp port mapping; a rule
    /// that exists with other settings is updated
    #[command(alias = "loadbalancer")]
    Lb(CreateLb),
    /// Define the health probe of an endpoint address
    #[command(alias = "ep")]
    Endpoint(CreateEndpoint),
    /// Create a firewall rule: a match, a preference and one action
    Firewall(CreateFirewall),
}

#[derive(Subcommand)]
enum DeleteResource {
    /// Delete the load-balancer rules of the given ports
    #[command(alias = "loadbalancer")]
    Lb(DeleteLb),
    /// Delete tracked connections: those matching the filters, or --all
    #[command(alias = "conntrack")]
    Ct(DeleteCt),
    /// Delete the health probe of an endpoint address
    #[command(alias = "ep")]
    Endpoint {
        /// Endpoint IP address
        ip: String,
    },
    /// Delete the firewall rule with this match and preference
    Firewall(FirewallRuleArg),
}

#[derive(Subcommand)]
enum GetResource {
    /// List load-balancer rules
    #[command(alias = "loadbalancer")]
    Lb,
    /// List firewall rules, highest preference first, with hit counters
    Firewall,
    /// List tracked connections (both directions of each), with counts
    #[command(alias = "conntrack")]
    Ct(GetCt),
    /// List endpoint health probes and their states
    #[command(alias = "ep")]
    Endpoint,
    /// List network interfaces
    Port,
    /// List interface addresses
    Ip,
    /// List routes
    Route,
    /// List neighbour (ARP/NDP) entries
    #[command(aliases = ["neighbour", "neigh"])]
    Neighbor,
}

#[derive(Args)]
#[command(group(ArgGroup::new("ports").required(true).multiple(true).args(PORT_FLAGS)))]
struct CreateLb {
    /// External (virtual) IP address
    ip: String,
    /// TCP port mappings, comma separated or repeated; a range MIN-MAX:TARGETPORT
    /// sends each of its ports to the target port
    #[arg(long, value_name = "PORT:TARGETPORT", value_delimiter = ',')]
    tcp: Vec<String>,
    /// UDP port mappings, as --tcp
    #[arg(long, value_name = "PORT:TARGETPORT", value_delimiter = ',')]
    udp: Vec<String>,
    /// SCTP ports, address translation only: the target port must be the port
    #[arg(long, value_name = "PORT:PORT", value_delimiter = ',')]
    sctp: Vec<String>,
    /// Load balance ICMP echo (ping) to the VIP
    #[arg(long)]
    icmp: bool,
    /// Endpoints; the weight (1-255, default 1) follows the last ':'
    #[arg(
        long,
        required_unless_present_any = ["attach_ep", "detach_ep"],
        conflicts_with_all = ["attach_ep", "detach_ep"],
        value_name = "IP:WEIGHT",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Add endpoints to the existing rules (their flows stay where they are)
    #[arg(long = "attachEP", value_name = "IP:WEIGHT", value_delimiter = ',')]
    attach_ep: Vec<String>,
    /// Remove endpoints from the existing rules: they drain (no new flows,
    /// established ones finish)
    #[arg(long = "detachEP", value_name = "IP", value_delimiter = ',')]
    detach_ep: Vec<String>,
    /// Endpoint selection: rr, hash, priority, persist, lc or maglev
    #[arg(long, default_value = "rr")]
    select: String,
    /// Seconds a client stays with its endpoint without traffic (persist)
    #[arg(long)]
    inatimeout: Option<u32>,
    /// Rule name
    #[arg(long)]
    name: Option<String>,
    /// NAT mode: default (DNAT), onearm, fullnat or dsr (needs --select=hash)
    #[arg(long, default_value = "default")]
    mode: String,
    /// Probe the endpoints; one that is down gets no new flows
    #[arg(long)]
    monitor: bool,
    /// Advertise the external IP over BGP (stored and shown for now)
    #[arg(long)]
    bgp: bool,
    /// Clients allowed to open flows (others are dropped); default: any
    #[arg(long, value_name = "PREFIX", value_delimiter = ',')]
    sources: Vec<String>,
    /// skb->mark to set on the rule's packets (TC hook only)
    #[arg(long)]
    mark: Option<String>,
}

#[derive(Args)]
struct CreateEndpoint {
    /// Endpoint IP address
    ip: String,
    /// ping, tcp, udp, http or https
    #[arg(long, default_value = "ping")]
    probetype: String,
    /// Port to probe (tcp, udp; http 80 and https 443 by default)
    #[arg(long)]
    probeport: Option<String>,
    /// udp: the datagram sent; http(s): the path requested
    #[arg(long)]
    probereq: Option<String>,
    /// Text the answer must contain (udp, http, https)
    #[arg(long)]
    proberesp: Option<String>,
    /// Seconds between probes (default 10)
    #[arg(long)]
    period: Option<String>,
    /// Consecutive failed probes that take the endpoint down (default 2)
    #[arg(long)]
    retries: Option<String>,
    /// Consecutive successful probes that bring it back (default 2)
    #[arg(long)]
    rise: Option<String>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("ports").required(true).multiple(true).args(PORT_FLAGS)))]
struct DeleteLb {
    /// External (virtual) IP address
    ip: String,
    /// TCP ports or ranges MIN-MAX (a ":TARGETPORT" suffix is ignored)
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    tcp: Vec<String>,
    /// UDP ports or ranges, as --tcp
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    udp: Vec<String>,
    /// SCTP ports, as --tcp
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    sctp: Vec<String>,
    /// The ICMP echo rule
    #[arg(long)]
    icmp: bool,
}

impl CreateLb {
    /// (protocol, flag, values) of the port flags.
    fn port_flags(&self) -> [(&'static str, &'static str, &[String]); 3] {
        [
            ("tcp", "--tcp", &self.tcp),
            ("udp", "--udp", &self.udp),
            ("sctp", "--sctp", &self.sctp),
        ]
    }
}

impl DeleteLb {
    fn port_flags(&self) -> [(&'static str, &'static str, &[String]); 3] {
        [
            ("tcp", "--tcp", &self.tcp),
            ("udp", "--udp", &self.udp),
            ("sctp", "--sctp", &self.sctp),
        ]
    }
}

/// The flags of `create lb` and `delete lb` that name rules; one is required.
const PORT_FLAGS: [&str; 4] = ["tcp", "udp", "sctp", "icmp"];

/// ICMP has no ports: its rule's port and target port are 0.
const ICMP_PORTS: args::PortMap = args::PortMap {
    ports: args::Ports {
        port: 0,
        port_max: 0,
    },
    target_port: 0,
};

/// `--firewallRule`: what a firewall rule matches, and its preference.
#[derive(Args)]
struct FirewallRuleArg {
    /// "sourceIP:1.2.3.0/24,destinationIP:…,minSourcePort:…,maxSourcePort:…,
    /// minDestinationPort:…,maxDestinationPort:…,protocol:6,portName:eth1,
    /// preference:200"; keys left out match anything (preference: 0)
    #[arg(long = "firewallRule", value_name = "KEY:VALUE,...")]
    firewall_rule: String,
}

#[derive(Args)]
#[command(group(ArgGroup::new("action").required(true).args(
    ["allow", "drop", "trap", "redirect", "snat", "masquerade"]
)))]
struct CreateFirewall {
    #[command(flatten)]
    rule: FirewallRuleArg,
    /// Let the flow through
    #[arg(long)]
    allow: bool,
    /// Drop the flow
    #[arg(long)]
    drop: bool,
    /// Hand the flow to Linux (iptables/nftables see it)
    #[arg(long)]
    trap: bool,
    /// Send the flow out of this interface
    #[arg(long, value_name = "INTERFACE")]
    redirect: Option<String>,
    /// Source NAT to this address (and port)
    #[arg(long, value_name = "IP[,PORT]")]
    snat: Option<String>,
    /// Source NAT to the address of the outgoing interface
    #[arg(long)]
    masquerade: bool,
    /// Count the rule's hits and report the flows it judges
    #[arg(long)]
    record: bool,
    /// Set this mark on what the rule judges
    #[arg(long, value_name = "N")]
    setmark: Option<String>,
}

/// Selects tracked connections; every filter given must match.
#[derive(Args)]
struct CtFilter {
    /// Client, VIP or endpoint address (either end, or the translation)
    #[arg(long)]
    ip: Option<String>,
    /// Client, service or endpoint port (not --port: that is the API
    /// server's port)
    #[arg(long, value_name = "PORT")]
    ctport: Option<String>,
    /// tcp, udp, sctp, icmp or icmp6
    #[arg(long)]
    proto: Option<String>,
    /// e.g. est, syn-sent, fin-wait, time-wait, closed, udp-new, udp-est
    #[arg(long)]
    state: Option<String>,
}

#[derive(Args)]
struct GetCt {
    #[command(flatten)]
    filter: CtFilter,
    /// Entries to show at most (the daemon's default: 1000; at most 10000)
    #[arg(long)]
    limit: Option<String>,
    /// Only the counts, no entries
    #[arg(long)]
    count: bool,
}

#[derive(Args)]
struct DeleteCt {
    #[command(flatten)]
    filter: CtFilter,
    /// Every tracked connection
    #[arg(long, conflicts_with_all = ["ip", "ctport", "proto", "state"])]
    all: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        // A bad flag value is a usage error, reported and coded like clap's own.
        Err(err) if err.is::<ArgError>() || err.is::<UsageError>() => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    fn target(&self) -> Target {
        Target {
            server: self.apiserver.clone(),
            port: self.port,
            tls: self.tls_ca.clone().map(|ca| TlsOptions {
                ca,
                identity: self.tls_cert.clone().zip(self.tls_key.clone()),
                server_name: self.tls_server_name.clone(),
            }),
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // Flag values are parsed before connecting so usage errors never wait on the network.
    let target = cli.target();
    let connect = || Client::connect(&target);
    match cli.command {
        Command::Create {
            resource: CreateResource::Lb(lb),
        } => {
            let rules = create_requests(&lb)?;
            let attach = args::parse_endpoints("--attachEP", &lb.attach_ep)?;
            let changing = !attach.is_empty() || !lb.detach_ep.is_empty();
            let mut client = connect().await?;
            for (mut rule, target_port) in rules {
                let key = rule.service.clone().unwrap_or_default();
                let label = service_label(&key);
                if changing {
                    let current = client
                        .get_lb(key.clone())
                        .await
                        .with_context(|| format!("lb {label}"))?;
                    rule = change_endpoints(current.clone(), &attach, &lb.detach_ep, target_port);
                    // Attaching what is there or detaching what is not.
                    if rule == change_endpoints(current, &[], &[], target_port) {
                        println!("Unchanged lb {label}");
                        continue;
                    }
                }
                client.create_lb(rule).await?;
                println!(
                    "{} lb {label}",
                    if changing { "Updated" } else { "Created" }
                );
            }
        }
        Command::Create {
            resource: CreateResource::Endpoint(ep),
        } => {
            let probe = endpoint_probe(&ep)?;
            connect().await?.create_probe(probe).await?;
            println!("Created endpoint {}", ep.ip);
        }
        Command::Delete {
            resource: DeleteResource::Endpoint { ip },
        } => {
            connect().await?.delete_probe(ip.clone()).await?;
            println!("Deleted endpoint {ip}");
        }
        Command::Get {
            resource: GetResource::Endpoint,
        } => {
            let response = connect().await?.list_probes().await?;
            print_list(cli.output, &response, |r| output::endpoint_table(&r.probes))?;
        }
        Command::Delete {
            resource: DeleteResource::Lb(lb),
        } => {
            let keys = delete_keys(&lb)?;
            let mut client = connect().await?;
            for key in keys {
                let label = service_label(&key);
                client.delete_lb(key).await?;
                println!("Deleted lb {label}");
            }
        }
        Command::Create {
            resource: CreateResource::Firewall(fw),
        } => {
            let rule = firewall_rule(&fw)?;
            connect().await?.create_firewall(rule).await?;
            println!("Created firewall rule {}", fw.rule.firewall_rule);
        }
        Command::Delete {
            resource: DeleteResource::Firewall(fw),
        } => {
            let m = args::parse_firewall_rule(&fw.firewall_rule)?;
            connect().await?.delete_firewall(m).await?;
            println!("Deleted firewall rule {}", fw.firewall_rule);
        }
        Command::Get {
            resource: GetResource::Firewall,
        } => {
            let response = connect().await?.list_firewall().await?;
            print_list(cli.output, &response, output::firewall_table)?;
        }
        Command::Delete {
            resource: DeleteResource::Ct(delete),
        } => {
            let filter = ct_filter(&delete.filter)?;
            if filter == pb::ConntrackFilter::default() && !delete.all {
                return Err(UsageError {
                    command: "delete ct",
                    reason: "needs a filter (--ip, --ctport, --proto, --state) or --all",
                }
                .into());
            }
            let response = connect()
                .await?
                .delete_conntrack(filter, delete.all)
                .await?;
            match cli.output {
                Some(OutputFormat::Json) => println!("{}", output::json(&response)?),
                _ => println!(
                    "Deleted {} ({})",
                    output::counted(response.flows, "flow", "flows"),
                    output::counted(response.entries, "entry", "entries")
                ),
            }
        }
        Command::Get {
            resource: GetResource::Lb,
        } => {
            let response = connect().await?.list_lbs().await?;
            match cli.output {
                None => print!("{}", output::lb_table(&response.load_balancers, false)),
                Some(OutputFormat::Wide) => {
                    print!("{}", output::lb_table(&response.load_balancers, true))
                }
                Some(OutputFormat::Json) => println!("{}", output::lb_json(response)?),
            }
        }
        Command::Save { file } => {
            let mut client = connect().await?;
            let mut rules = RuleSet {
                load_balancers: Some(client.list_lbs().await?.load_balancers),
                firewall_rules: Some(client.list_firewall().await?.firewall_rules),
            };
            for lb in rules.load_balancers.iter_mut().flatten() {
                lb.counters = None;
                lb.endpoints.iter_mut().for_each(|e| {
                    e.counters = None;
                    e.state.clear();
                });
            }
            for fw in rules.firewall_rules.iter_mut().flatten() {
                fw.counters = None;
            }
            let text = serde_json::to_string_pretty(&rules)? + "\n";
            match file {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{text}"),
            }
        }
        Command::Apply { file, dry_run } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let rules: RuleSet = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: not a rule set as `loxicmd save` writes it",
                    file.display()
                )
            })?;
            let mut client = connect().await?;
            // Both parts are checked in full before either changes, so that a
            // bad rule in one leaves the other untouched too.
            let passes: &[bool] = if dry_run { &[true] } else { &[true, false] };
            for &dry in passes {
                let lb = match &rules.load_balancers {
                    Some(lb) => Some(client.apply_lbs(lb.clone(), dry).await?),
                    None => None,
                };
                let fw = match &rules.firewall_rules {
                    Some(fw) => Some(client.apply_firewall(fw.clone(), dry).await?),
                    None => None,
                };
                if dry == dry_run {
                    if let Some(lb) = lb {
                        print!("{}", output::apply_report(&lb, dry_run));
                    }
                    if let Some(fw) = fw {
                        print!("{}", output::firewall_apply_report(&fw, dry_run));
                    }
                }
            }
        }
        Command::Get {
            resource: GetResource::Ct(get),
        } => {
            let filter = ct_filter(&get.filter)?;
            let limit = args::parse_optional_number(
                "--limit",
                get.limit.as_deref(),
                "limit must be a number",
            )?;
            let mut client = connect().await?;
            if get.count {
                let response = client.count_conntrack(filter).await?;
                print_list(cli.output, &response, |r| {
                    output::ct_summary(r.matched, None, &r.counts, r.table.as_ref())
                })?;
            } else {
                let response = client.list_conntrack(filter, limit).await?;
                print_list(cli.output, &response, |r| {
                    let shown = r.entries.len() as u64;
                    format!(
                        "{}{}",
                        output::ct_table(&r.entries),
                        output::ct_summary(r.matched, Some(shown), &r.counts, r.table.as_ref())
                    )
                })?;
            }
        }
        Command::Get {
            resource: GetResource::Port,
        } => {
            let response = connect().await?.list_interfaces().await?;
            print_list(cli.output, &response, |r| output::port_table(&r.interfaces))?;
        }
        Command::Get {
            resource: GetResource::Ip,
        } => {
            let response = connect().await?.list_addresses().await?;
            print_list(cli.output, &response, |r| output::ip_table(&r.addresses))?;
        }
        Command::Get {
            resource: GetResource::Route,
        } => {
            let response = connect().await?.list_routes().await?;
            print_list(cli.output, &response, |r| output::route_table(&r.routes))?;
        }
        Command::Get {
            resource: GetResource::Neighbor,
        } => {
            let response = connect().await?.list_neighbours().await?;
            print_list(cli.output, &response, |r| {
                output::neighbor_table(&r.neighbours)
            })?;
        }
    }
    Ok(())
}

/// Prints a list response whose table has no wide form: the whole message as JSON,
/// or else the table.
fn print_list<T: Serialize>(
    format: Option<OutputFormat>,
    response: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    match format {
        Some(OutputFormat::Json) => println!("{}", output::json(response)?),
        None | Some(OutputFormat::Wide) => print!("{}", table(response)),
    }
    Ok(())
}

/// What `save` writes and `apply` reads. A part the file leaves out is left
/// as it runs, so files from before the firewall existed keep working.
#[derive(Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    load_balancers: Option<Vec<pb::LoadBalancer>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    firewall_rules: Option<Vec<pb::FirewallRule>>,
}

/// The CreateFirewallRule request of `create firewall`.
fn firewall_rule(fw: &CreateFirewall) -> Result<pb::FirewallRule, ArgError> {
    let (snat_ip, snat_port) = match &fw.snat {
        Some(v) => args::parse_snat(v)?,
        None => (String::new(), 0),
    };
    let mark = fw
        .setmark
        .as_deref()
        .map(|m| args::parse_number("--setmark", m, "mark must be a number"))
        .transpose()?;
    Ok(pb::FirewallRule {
        r#match: Some(args::parse_firewall_rule(&fw.rule.firewall_rule)?),
        options: Some(pb::FirewallOptions {
            allow: fw.allow,
            drop: fw.drop,
            trap: fw.trap,
            redirect: fw.redirect.clone().unwrap_or_default(),
            snat_ip,
            snat_port,
            masquerade: fw.masquerade,
            record: fw.record,
            mark,
        }),
        counters: None,
    })
}

/// The endpoint probe of `create endpoint`; numbers must be numbers, the
/// rest is the daemon's to judge.
fn endpoint_probe(ep: &CreateEndpoint) -> Result<pb::EndpointProbe, ArgError> {
    let num = |flag, v: &Option<String>| {
        args::parse_optional_number(flag, v.as_deref(), "must be a number")
    };
    Ok(pb::EndpointProbe {
        ip: ep.ip.clone(),
        probe_type: ep.probetype.clone(),
        port: num("--probeport", &ep.probeport)?,
        request: ep.probereq.clone().unwrap_or_default(),
        response: ep.proberesp.clone().unwrap_or_default(),
        period: num("--period", &ep.period)?,
        retries: num("--retries", &ep.retries)?,
        rise: num("--rise", &ep.rise)?,
        ..Default::default()
    })
}

/// `current` with `attach` added (at `target_port`, or replacing the weight
/// of one already there) and the endpoints of the `detach` addresses removed.
fn change_endpoints(
    mut current: pb::LoadBalancer,
    attach: &[args::EndpointArg],
    detach: &[String],
    target_port: u32,
) -> pb::LoadBalancer {
    current.counters = None;
    current.endpoints.retain(|e| !detach.contains(&e.ip));
    for a in attach {
        current.endpoints.retain(|e| e.ip != a.ip);
        current.endpoints.push(pb::Endpoint {
            ip: a.ip.clone(),
            target_port,
            weight: a.weight,
            ..Default::default()
        });
    }
    for e in &mut current.endpoints {
        e.counters = None;
        e.state.clear();
    }
    current
}

/// One CreateLoadBalancer request per (protocol, port or range) pair, and one for
/// --icmp, each with all endpoints, and with the pair's target port.
fn create_requests(lb: &CreateLb) -> Result<Vec<(pb::LoadBalancer, u32)>, ArgError> {
    let endpoints = args::parse_endpoints("--endpoints", &lb.endpoints)?;
    let mark = args::parse_optional_number("--mark", lb.mark.as_deref(), "mark must be a number")?;
    let mut maps = Vec::new();
    for (protocol, flag, values) in lb.port_flags() {
        maps.extend(
            args::parse_port_maps(flag, values)?
                .into_iter()
                .map(|m| (protocol, m)),
        );
    }
    if lb.icmp {
        maps.push(("icmp", ICMP_PORTS));
    }
    Ok(maps
        .into_iter()
        .map(|(protocol, map)| {
            let rule = pb::LoadBalancer {
                service: Some(service_key(&lb.ip, protocol, map.ports)),
                name: lb.name.clone().unwrap_or_default(),
                selection: lb.select.clone(),
                mode: lb.mode.clone(),
                endpoints: endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        ip: e.ip.clone(),
                        target_port: map.target_port,
                        weight: e.weight,
                        ..Default::default()
                    })
                    .collect(),
                counters: None,
                inactivity_timeout: lb.inatimeout.unwrap_or(0),
                monitor: lb.monitor,
                bgp: lb.bgp,
                sources: lb.sources.clone(),
                mark,
            };
            (rule, map.target_port)
        })
        .collect())
}

fn service_key(ip: &str, protocol: &str, ports: args::Ports) -> pb::ServiceKey {
    pb::ServiceKey {
        external_ip: ip.to_owned(),
        port: ports.port,
        protocol: protocol.to_owned(),
        port_max: ports.port_max,
    }
}

/// The filter of `get ct` / `delete ct`; values are the daemon's to judge,
/// except that a port must be a number.
fn ct_filter(f: &CtFilter) -> Result<pb::ConntrackFilter, ArgError> {
    let port =
        args::parse_optional_number("--ctport", f.ctport.as_deref(), "port must be a number")?;
    Ok(pb::ConntrackFilter {
        ip: f.ip.clone().unwrap_or_default(),
        port,
        protocol: f.proto.clone().unwrap_or_default(),
        state: f.state.clone().unwrap_or_default(),
    })
}

fn delete_keys(lb: &DeleteLb) -> Result<Vec<pb::ServiceKey>, ArgError> {
    let mut keys = Vec::new();
    for (protocol, flag, values) in lb.port_flags() {
        for ports in args::parse_ports(flag, values)? {
            keys.push(service_key(&lb.ip, protocol, ports));
        }
    }
    if lb.icmp {
        keys.push(service_key(&lb.ip, "icmp", ICMP_PORTS.ports));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Cli {
        Cli::try_parse_from(line.split_whitespace()).unwrap()
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_makes_one_request_per_protocol_port() {
        let cli = parse(
            "loxicmd create lb 20.20.20.1 --tcp=80:8080,443:8443,9000-9009:90 --udp=53:5353 \
             --sctp=38412:38412 --icmp \
             --endpoints=31.31.31.1:1,fd00::2:3 --select=hash --name=web -s 10.0.0.1 -p 5000",
        );
        assert_eq!((cli.apiserver.as_str(), cli.port), ("10.0.0.1", 5000));
        let Command::Create {
            resource: CreateResource::Lb(lb),
        } = cli.command
        else {
            panic!("not create lb");
        };
        let requests = create_requests(&lb).unwrap();
        // One line per request: "proto/port -> ip target_port weight, ..."
        let summary: Vec<String> = requests
            .iter()
            .map(|(r, _)| {
                let key = r.service.clone().unwrap();
                assert_eq!((r.name.as_str(), r.selection.as_str()), ("web", "hash"));
                assert_eq!(r.mode, "default");
                let eps: Vec<String> = r
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {} {}", e.ip, e.target_port, e.weight))
                    .collect();
                format!("{} -> {}", service_label(&key), eps.join(", "))
            })
            .collect();
        assert_eq!(
            summary,
            [
                "20.20.20.1:80/tcp -> 31.31.31.1 8080 1, fd00::2 8080 3",
                "20.20.20.1:443/tcp -> 31.31.31.1 8443 1, fd00::2 8443 3",
                "20.20.20.1:9000-9009/tcp -> 31.31.31.1 90 1, fd00::2 90 3",
                "20.20.20.1:53/udp -> 31.31.31.1 5353 1, fd00::2 5353 3",
                "20.20.20.1:38412/sctp -> 31.31.31.1 38412 1, fd00::2 38412 3",
                "20.20.20.1/icmp -> 31.31.31.1 0 1, fd00::2 0 3",
            ]
        );
    }

    #[test]
    fn attach_and_detach_change_only_the_endpoints() {
        let cli = parse("loxicmd create lb 20.20.20.1 --tcp=80:8080 --attachEP=3.3.3.3:4,1.1.1.1:2 --detachEP=2.2.2.2");
        let Command::Create {
            resource: CreateResource::Lb(lb),
        } = cli.command
        else {
            panic!("not create lb");
        };
        let attach = args::parse_endpoints("--attachEP", &lb.attach_ep).unwrap();
        let ep = |ip: &str, target_port, weight| pb::Endpoint {
            ip: ip.into(),
            target_port,
            weight,
            ..Default::default()
        };
        let current = pb::LoadBalancer {
            name: "web".into(),
            selection: "maglev".into(),
            monitor: true,
            endpoints: vec![ep("1.1.1.1", 8080, 1), ep("2.2.2.2", 8080, 1)],
            counters: Some(pb::Counters::default()),
            ..Default::default()
        };
        let changed = change_endpoints(current.clone(), &attach, &lb.detach_ep, 8080);
        let eps: Vec<(&str, u32, u32)> = changed
            .endpoints
            .iter()
            .map(|e| (e.ip.as_str(), e.target_port, e.weight))
            .collect();
        assert_eq!(eps, [("3.3.3.3", 8080, 4), ("1.1.1.1", 8080, 2)]);
        assert_eq!(
            (changed.name.as_str(), changed.selection.as_str()),
            ("web", "maglev")
        );
        assert!(changed.monitor && changed.counters.is_none());
    }

    #[test]
    fn create_needs_a_port_and_endpoints() {
        let missing_port = "loxicmd create lb 20.20.20.1 --endpoints=31.31.31.1:1";
        assert!(Cli::try_parse_from(missing_port.split_whitespace()).is_err());
        let missing_endpoints = "loxicmd create lb 20.20.20.1 --tcp=80:8080";
        assert!(Cli::try_parse_from(missing_endpoints.split_whitespace()).is_err());
    }

    #[test]
    fn delete_keys_cover_every_protocol() {
        let cli = parse(
            "loxicmd delete lb 20.20.20.1 --tcp=2020:8080 --tcp 2021 --udp=53 \
             --tcp=8080-8081 --sctp=38412 --icmp",
        );
        let Command::Delete {
            resource: DeleteResource::Lb(lb),
        } = cli.command
        else {
            panic!("not delete lb");
        };
        let keys: Vec<String> = delete_keys(&lb)
            .unwrap()
            .iter()
            .map(service_label)
            .collect();
        assert_eq!(
            keys,
            [
                "20.20.20.1:2020/tcp",
                "20.20.20.1:2021/tcp",
                "20.20.20.1:8080-8081/tcp",
                "20.20.20.1:53/udp",
                "20.20.20.1:38412/sctp",
                "20.20.20.1/icmp",
            ]
        );
    }

    #[test]
    fn network_get_commands_and_aliases() {
        let resource = |line: &str| match parse(line).command {
            Command::Get { resource } => resource,
            _ => panic!("not get: {line}"),
        };
        assert!(matches!(resource("loxicmd get port"), GetResource::Port));
        assert!(matches!(
            resource("loxicmd get ip -o json"),
            GetResource::Ip
        ));
        assert!(matches!(resource("loxicmd get route"), GetResource::Route));
        for name in ["neighbor", "neighbour", "neigh"] {
            let line = format!("loxicmd get {name}");
            assert!(matches!(resource(&line), GetResource::Neighbor), "{name}");
        }
    }

    #[test]
    fn create_firewall_takes_exactly_one_action() {
        let rule = "--firewallRule=sourceIP:10.0.0.0/8,protocol:17,preference:9";
        let cli = parse(&format!(
            "loxicmd create firewall {rule} --snat=192.0.2.1,4000 --record --setmark=7"
        ));
        let Command::Create {
            resource: CreateResource::Firewall(fw),
        } = cli.command
        else {
            panic!("not create firewall");
        };
        let r = firewall_rule(&fw).unwrap();
        let (m, o) = (r.r#match.unwrap(), r.options.unwrap());
        assert_eq!(
            (m.source_ip.as_str(), m.protocol, m.preference),
            ("10.0.0.0/8", 17, 9)
        );
        assert_eq!((o.snat_ip.as_str(), o.snat_port), ("192.0.2.1", 4000));
        assert!(o.record && !o.allow && !o.drop);
        assert_eq!(o.mark, Some(7));
        for line in [
            format!("loxicmd create firewall {rule}"),
            format!("loxicmd create firewall {rule} --allow --drop"),
            "loxicmd create firewall --drop".to_owned(),
        ] {
            assert!(
                Cli::try_parse_from(line.split_whitespace()).is_err(),
                "{line}"
            );
        }
        let cli = parse(&format!(
            "loxicmd create firewall {rule} --drop --setmark=x"
        ));
        let Command::Create {
            resource: CreateResource::Firewall(fw),
        } = cli.command
        else {
            panic!("not create firewall");
        };
        assert!(firewall_rule(&fw)
            .unwrap_err()
            .to_string()
            .contains("--setmark"));
    }

    #[test]
    fn rule_files_leave_out_what_they_do_not_change() {
        let old: RuleSet = serde_json::from_str(r#"{"loadBalancers": []}"#).unwrap();
        assert!(old.firewall_rules.is_none());
        assert_eq!(old.load_balancers.map(|l| l.len()), Some(0));
        let new: RuleSet = serde_json::from_str(
            r#"{"firewallRules": [{"match": {"sourceIp": "10.0.0.0/8", "preference": 3},
                "options": {"drop": true}}]}"#,
        )
        .unwrap();
        assert!(new.load_balancers.is_none());
        let rules = new.firewall_rules.unwrap();
        assert_eq!(rules[0].r#match.as_ref().unwrap().preference, 3);
        assert!(rules[0].options.as_ref().unwrap().drop);
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let before = parse("loxicmd -o wide -s ::1 get lb");
        let after = parse("loxicmd get lb -o wide -s ::1");
        for cli in [before, after] {
            assert!(matches!(cli.output, Some(OutputFormat::Wide)));
            assert_eq!(cli.apiserver, "::1");
            assert_eq!(cli.port, 11111);
        }
    }
}
