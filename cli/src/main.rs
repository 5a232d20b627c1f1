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
    /// Create load-balancer rules, one per --tcp/--udp port mapping
    #[command(alias = "loadbalancer")]
    Lb(CreateLb),
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
#[command(group(ArgGroup::new("ports").required(true).multiple(true).args(["tcp", "udp"])))]
struct CreateLb {
    /// External (virtual) IP address
    ip: String,
    /// TCP port mappings, comma separated or repeated
    #[arg(long, value_name = "PORT:TARGETPORT", value_delimiter = ',')]
    tcp: Vec<String>,
    /// UDP port mappings, comma separated or repeated
    #[arg(long, value_name = "PORT:TARGETPORT", value_delimiter = ',')]
    udp: Vec<String>,
    /// Endpoints; the weight (1-255, default 1) follows the last ':'
    #[arg(long, required = true, value_name = "IP:WEIGHT", value_delimiter = ',')]
    endpoints: Vec<String>,
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
}

#[derive(Args)]
#[command(group(ArgGroup::new("ports").required(true).multiple(true).args(["tcp", "udp"])))]
struct DeleteLb {
    /// External (virtual) IP address
    ip: String,
    /// TCP ports (a ":TARGETPORT" suffix is ignored)
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    tcp: Vec<String>,
    /// UDP ports (a ":TARGETPORT" suffix is ignored)
    #[arg(long, value_name = "PORT", value_delimiter = ',')]
    udp: Vec<String>,
}

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
    /// tcp, udp or icmp
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
            let mut client = connect().await?;
            for rule in rules {
                let key = rule.service.clone().unwrap_or_default();
                client.create_lb(rule).await?;
                let label = service_label(&key.external_ip, key.port, &key.protocol);
                println!("Created lb {label}");
            }
        }
        Command::Delete {
            resource: DeleteResource::Lb(lb),
        } => {
            let keys = delete_keys(&lb)?;
            let mut client = connect().await?;
            for key in keys {
                let label = service_label(&key.external_ip, key.port, &key.protocol);
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
                lb.endpoints.iter_mut().for_each(|e| e.counters = None);
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
            let limit = get
                .limit
                .as_deref()
                .map(|l| args::parse_number("--limit", l, "limit must be a number"))
                .transpose()?
                .unwrap_or(0);
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

/// One CreateLoadBalancer request per (protocol, port) pair, each with all endpoints.
fn create_requests(lb: &CreateLb) -> Result<Vec<pb::LoadBalancer>, ArgError> {
    let endpoints = args::parse_endpoints(&lb.endpoints)?;
    let mut requests = Vec::new();
    for (protocol, flag, values) in [("tcp", "--tcp", &lb.tcp), ("udp", "--udp", &lb.udp)] {
        for map in args::parse_port_maps(flag, values)? {
            requests.push(pb::LoadBalancer {
                service: Some(pb::ServiceKey {
                    external_ip: lb.ip.clone(),
                    port: map.port,
                    protocol: protocol.to_owned(),
                }),
                name: lb.name.clone().unwrap_or_default(),
                selection: lb.select.clone(),
                mode: lb.mode.clone(),
                endpoints: endpoints
                    .iter()
                    .map(|e| pb::Endpoint {
                        ip: e.ip.clone(),
                        target_port: map.target_port,
                        weight: e.weight,
                        counters: None,
                    })
                    .collect(),
                counters: None,
                inactivity_timeout: lb.inatimeout.unwrap_or(0),
            });
        }
    }
    Ok(requests)
}

/// The filter of `get ct` / `delete ct`; values are the daemon's to judge,
/// except that a port must be a number.
fn ct_filter(f: &CtFilter) -> Result<pb::ConntrackFilter, ArgError> {
    let port = f
        .ctport
        .as_deref()
        .map(|p| args::parse_number("--ctport", p, "port must be a number"))
        .transpose()?
        .unwrap_or(0);
    Ok(pb::ConntrackFilter {
        ip: f.ip.clone().unwrap_or_default(),
        port,
        protocol: f.proto.clone().unwrap_or_default(),
        state: f.state.clone().unwrap_or_default(),
    })
}

fn delete_keys(lb: &DeleteLb) -> Result<Vec<pb::ServiceKey>, ArgError> {
    let mut keys = Vec::new();
    for (protocol, flag, values) in [("tcp", "--tcp", &lb.tcp), ("udp", "--udp", &lb.udp)] {
        for port in args::parse_ports(flag, values)? {
            keys.push(pb::ServiceKey {
                external_ip: lb.ip.clone(),
                port,
                protocol: protocol.to_owned(),
            });
        }
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
            "loxicmd create lb 20.20.20.1 --tcp=80:8080,443:8443 --udp=53:5353 \
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
            .map(|r| {
                let key = r.service.clone().unwrap();
                assert_eq!((r.name.as_str(), r.selection.as_str()), ("web", "hash"));
                assert_eq!(r.mode, "default");
                let eps: Vec<String> = r
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {} {}", e.ip, e.target_port, e.weight))
                    .collect();
                format!("{}/{} -> {}", key.protocol, key.port, eps.join(", "))
            })
            .collect();
        assert_eq!(
            summary,
            [
                "tcp/80 -> 31.31.31.1 8080 1, fd00::2 8080 3",
                "tcp/443 -> 31.31.31.1 8443 1, fd00::2 8443 3",
                "udp/53 -> 31.31.31.1 5353 1, fd00::2 5353 3",
            ]
        );
    }

    #[test]
    fn create_needs_a_port_and_endpoints() {
        let missing_port = "loxicmd create lb 20.20.20.1 --endpoints=31.31.31.1:1";
        assert!(Cli::try_parse_from(missing_port.split_whitespace()).is_err());
        let missing_endpoints = "loxicmd create lb 20.20.20.1 --tcp=80:8080";
        assert!(Cli::try_parse_from(missing_endpoints.split_whitespace()).is_err());
    }

    #[test]
    fn delete_keys_cover_both_protocols() {
        let cli = parse("loxicmd delete lb 20.20.20.1 --tcp=2020:8080 --tcp 2021 --udp=53");
        let Command::Delete {
            resource: DeleteResource::Lb(lb),
        } = cli.command
        else {
            panic!("not delete lb");
        };
        let keys: Vec<(u32, String)> = delete_keys(&lb)
            .unwrap()
            .into_iter()
            .map(|k| (k.port, k.protocol))
            .collect();
        assert_eq!(
            keys,
            vec![
                (2020, "tcp".to_owned()),
                (2021, "tcp".to_owned()),
                (53, "udp".to_owned())
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
