//! gRPC connection to the loxilight daemon.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tonic::{Response, Status};

use crate::pb::conntrack_service_client::ConntrackServiceClient;
use crate::pb::endpoint_service_client::EndpointServiceClient;
use crate::pb::firewall_service_client::FirewallServiceClient;
use crate::pb::load_balancer_service_client::LoadBalancerServiceClient;
use crate::pb::network_service_client::NetworkServiceClient;
use crate::pb::{
    ApplyFirewallRulesRequest, ApplyFirewallRulesResponse, ApplyLoadBalancersRequest,
    ApplyLoadBalancersResponse, ConntrackFilter, CountConntrackRequest, CountConntrackResponse,
    CreateFirewallRuleRequest, CreateLoadBalancerRequest, DeleteConntrackRequest,
    DeleteConntrackResponse, DeleteFirewallRuleRequest, DeleteLoadBalancerRequest, FirewallMatch,
    FirewallRule, ListAddressesRequest, ListAddressesResponse, ListConntrackRequest,
    ListConntrackResponse, ListFirewallRulesRequest, ListFirewallRulesResponse,
    ListInterfacesRequest, ListInterfacesResponse, ListLoadBalancersRequest,
    ListLoadBalancersResponse, ListNeighboursRequest, ListNeighboursResponse, ListRoutesRequest,
    ListRoutesResponse, LoadBalancer, ServiceKey,
};
use crate::pb::{
    CreateEndpointProbeRequest, DeleteEndpointProbeRequest, EndpointProbe, GetLoadBalancerRequest,
    ListEndpointProbesRequest, ListEndpointProbesResponse,
};

/// A daemon that is down or unroutable should fail fast, not hang the shell.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds a wedged daemon. The longest calls walk the whole conntrack table
/// (a million entries: about 0.3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the daemon is and how to talk to it.
pub struct Target {
    /// A host name or address, or `unix:PATH`.
    pub server: String,
    pub port: u16,
    pub tls: Option<TlsOptions>,
}

/// TLS towards the daemon: the CA that signed its certificate, and our own
/// certificate and key when it requires clients to have one.
pub struct TlsOptions {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the daemon's certificate must carry, if not the host dialled.
    pub server_name: Option<String>,
}

impl TlsOptions {
    fn config(&self) -> Result<ClientTlsConfig> {
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading the TLS {what} {}", p.display()))
        };
        let mut cfg =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca, "CA")?));
        if let Some((cert, key)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(
                read(cert, "certificate")?,
                read(key, "key")?,
            ));
        }
        if let Some(name) = &self.server_name {
            cfg = cfg.domain_name(name);
        }
        Ok(cfg)
    }
}

/// The daemon as dialled, for error messages.
struct Peer {
    /// `host:port` or `unix:PATH`.
    authority: String,
    tls: bool,
    client_cert: bool,
}

pub struct Client {
    peer: Peer,
    lb: LoadBalancerServiceClient<Channel>,
    ct: ConntrackServiceClient<Channel>,
    fw: FirewallServiceClient<Channel>,
    net: NetworkServiceClient<Channel>,
    ep: EndpointServiceClient<Channel>,
}

impl Client {
    /// Connects eagerly so an unreachable daemon is reported as such, rather than as
    /// the status of whichever call happened to be first.
    pub async fn connect(target: &Target) -> Result<Self> {
        let (authority, connected) = match target.server.strip_prefix("unix:") {
            Some(path) => {
                if target.tls.is_some() {
                    bail!("the TLS options are for TCP: a unix socket is used without them");
                }
                let authority = format!("unix:{path}");
                let path = PathBuf::from(path);
                // The URI is required but unused: the connector dials the socket.
                let connector = tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                });
                let connected = Endpoint::from_static("http://localhost")
                    .connect_timeout(CONNECT_TIMEOUT)
                    .connect_with_connector(connector)
                    .await;
                (authority, connected)
            }
            None => {
                let authority = authority(&target.server, target.port);
                let scheme = if target.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
                    .with_context(|| format!("invalid API server address {authority}"))?
                    .connect_timeout(CONNECT_TIMEOUT);
                if let Some(tls) = &target.tls {
                    endpoint = endpoint.tls_config(tls.config()?)?;
                }
                (authority, endpoint.connect().await)
            }
        };
        let peer = Peer {
            authority,
            tls: target.tls.is_some(),
            client_cert: target.tls.as_ref().is_some_and(|t| t.identity.is_some()),
        };
        let channel = connected.map_err(|err| {
            // tonic's own message is just "transport error"; the useful part
            // ("Connection refused", a DNS failure) is at the bottom of the chain.
            let reason = anyhow::Error::from(err).root_cause().to_string();
            anyhow!(
                "cannot reach loxilight at {}: {reason}{}",
                peer.authority,
                peer.hint(&reason)
            )
        })?;
        Ok(Self {
            peer,
            lb: LoadBalancerServiceClient::new(channel.clone()),
            ct: ConntrackServiceClient::new(channel.clone()),
            ep: EndpointServiceClient::new(channel.clone()),
            fw: FirewallServiceClient::new(channel.clone()),
            net: NetworkServiceClient::new(channel),
        })
    }

    pub async fn create_lb(&mut self, load_balancer: LoadBalancer) -> Result<()> {
        let request = CreateLoadBalancerRequest {
            load_balancer: Some(load_balancer),
        };
        answer(&self.peer, self.lb.create_load_balancer(request)).await?;
        Ok(())
    }

    pub async fn delete_lb(&mut self, service: ServiceKey) -> Result<()> {
        let request = DeleteLoadBalancerRequest {
            service: Some(service),
        };
        answer(&self.peer, self.lb.delete_load_balancer(request)).await?;
        Ok(())
    }

    pub async fn get_lb(&mut self, service: ServiceKey) -> Result<LoadBalancer> {
        let request = GetLoadBalancerRequest {
            service: Some(service),
        };
        let answer = answer(&self.peer, self.lb.get_load_balancer(request)).await?;
        Ok(answer.load_balancer.unwrap_or_default())
    }

    pub async fn create_probe(&mut self, probe: EndpointProbe) -> Result<()> {
        let request = CreateEndpointProbeRequest { probe: Some(probe) };
        answer(&self.peer, self.ep.create_endpoint_probe(request)).await?;
        Ok(())
    }

    pub async fn delete_probe(&mut self, ip: String) -> Result<()> {
        let request = DeleteEndpointProbeRequest { ip };
        answer(&self.peer, self.ep.delete_endpoint_probe(request)).await?;
        Ok(())
    }

    pub async fn list_probes(&mut self) -> Result<ListEndpointProbesResponse> {
        let call = self.ep.list_endpoint_probes(ListEndpointProbesRequest {});
        answer(&self.peer, call).await
    }

    pub async fn list_lbs(&mut self) -> Result<ListLoadBalancersResponse> {
        let call = self.lb.list_load_balancers(ListLoadBalancersRequest {});
        answer(&self.peer, call).await
    }

    pub async fn apply_lbs(
        &mut self,
        load_balancers: Vec<LoadBalancer>,
        dry_run: bool,
    ) -> Result<ApplyLoadBalancersResponse> {
        let request = ApplyLoadBalancersRequest {
            load_balancers,
            dry_run,
        };
        answer(&self.peer, self.lb.apply_load_balancers(request)).await
    }

    pub async fn create_firewall(&mut self, firewall_rule: FirewallRule) -> Result<()> {
        let request = CreateFirewallRuleRequest {
            firewall_rule: Some(firewall_rule),
        };
        answer(&self.peer, self.fw.create_firewall_rule(request)).await?;
        Ok(())
    }

    pub async fn delete_firewall(&mut self, r#match: FirewallMatch) -> Result<()> {
        let request = DeleteFirewallRuleRequest {
            r#match: Some(r#match),
        };
        answer(&self.peer, self.fw.delete_firewall_rule(request)).await?;
        Ok(())
    }

    pub async fn list_firewall(&mut self) -> Result<ListFirewallRulesResponse> {
        let call = self.fw.list_firewall_rules(ListFirewallRulesRequest {});
        answer(&self.peer, call).await
    }

    pub async fn apply_firewall(
        &mut self,
        firewall_rules: Vec<FirewallRule>,
        dry_run: bool,
    ) -> Result<ApplyFirewallRulesResponse> {
        let request = ApplyFirewallRulesRequest {
            firewall_rules,
            dry_run,
        };
        answer(&self.peer, self.fw.apply_firewall_rules(request)).await
    }

    pub async fn list_conntrack(
        &mut self,
        filter: ConntrackFilter,
        limit: u32,
    ) -> Result<ListConntrackResponse> {
        let request = ListConntrackRequest {
            filter: Some(filter),
            limit,
        };
        answer(&self.peer, self.ct.list_conntrack(request)).await
    }

    pub async fn count_conntrack(
        &mut self,
        filter: ConntrackFilter,
    ) -> Result<CountConntrackResponse> {
        let request = CountConntrackRequest {
            filter: Some(filter),
        };
        answer(&self.peer, self.ct.count_conntrack(request)).await
    }

    pub async fn delete_conntrack(
        &mut self,
        filter: ConntrackFilter,
        all: bool,
    ) -> Result<DeleteConntrackResponse> {
        let request = DeleteConntrackRequest {
            filter: Some(filter),
            all,
        };
        answer(&self.peer, self.ct.delete_conntrack(request)).await
    }

    pub async fn list_interfaces(&mut self) -> Result<ListInterfacesResponse> {
        let call = self.net.list_interfaces(ListInterfacesRequest {});
        answer(&self.peer, call).await
    }

    pub async fn list_addresses(&mut self) -> Result<ListAddressesResponse> {
        let call = self.net.list_addresses(ListAddressesRequest {});
        answer(&self.peer, call).await
    }

    pub async fn list_routes(&mut self) -> Result<ListRoutesResponse> {
        let call = self.net.list_routes(ListRoutesRequest {});
        answer(&self.peer, call).await
    }

    pub async fn list_neighbours(&mut self) -> Result<ListNeighboursResponse> {
        let call = self.net.list_neighbours(ListNeighboursRequest {});
        answer(&self.peer, call).await
    }
}

/// Awaits a call under REQUEST_TIMEOUT. The timeout is ours rather than the channel's
/// so that it can say which daemon went silent instead of tonic's bare "Timeout expired".
async fn answer<T>(
    peer: &Peer,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result
            .map(Response::into_inner)
            .map_err(|s| status_error(peer, s)),
        Err(_) => bail!(
            "loxilight at {} did not answer within {}s",
            peer.authority,
            REQUEST_TIMEOUT.as_secs()
        ),
    }
}

impl Peer {
    /// What the user can do about a failed connection, where the cause and the
    /// way we dialled say it.
    fn hint(&self, cause: &str) -> &'static str {
        let cause = cause.to_ascii_lowercase();
        let has = |s: &str| cause.contains(s);
        // The daemon hung up on the first bytes, as a TLS server does with a
        // plaintext client and a mutual-TLS server with a client without a cert.
        let hung_up = [
            "broken pipe",
            "connection closed",
            "connection reset",
            "frame with invalid size",
        ]
        .iter()
        .any(|s| has(s));
        if has("certificaterequired") || (self.tls && !self.client_cert && hung_up) {
            " (the daemon requires a client certificate: give --tls-cert and --tls-key)"
        } else if has("invalid peer certificate") {
            " (check --tls-ca, and --tls-server-name if the certificate names another host)"
        } else if has("corrupt message") {
            " (is the daemon serving without TLS? drop the --tls-* options)"
        } else if !self.tls && hung_up {
            " (does the daemon serve TLS? give --tls-ca)"
        } else {
            ""
        }
    }
}

/// `host:port`, bracketing IPv6 literals as URIs require.
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The daemon's status message is written for users; the code and metadata are not.
/// A status that the connection made rather than the daemon carries its cause in
/// its source chain.
fn status_error(peer: &Peer, status: Status) -> anyhow::Error {
    if let Some(source) = std::error::Error::source(&status) {
        let mut causes = Vec::new();
        let mut next = Some(source);
        while let Some(e) = next {
            causes.push(e.to_string());
            next = e.source();
        }
        // Wrappers repeat their inner error in their own message.
        causes.dedup_by(|inner, outer| outer.contains(inner.as_str()));
        let cause = causes.join(": ");
        return anyhow!(
            "cannot talk to loxilight at {}: {cause}{}",
            peer.authority,
            peer.hint(&cause)
        );
    }
    if status.message().is_empty() {
        anyhow!("{}", status.code().description())
    } else {
        anyhow!("{}", status.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(authority("127.0.0.1", 11111), "127.0.0.1:11111");
        assert_eq!(authority("::1", 11111), "[::1]:11111");
        assert_eq!(authority("[::1]", 80), "[::1]:80");
        assert_eq!(authority("localhost", 80), "localhost:80");
    }

    #[test]
    fn hints_follow_the_cause_and_how_we_dialled() {
        let peer = |tls, client_cert| Peer {
            authority: "h:1".into(),
            tls,
            client_cert,
        };
        let hung_up = "connection error: stream closed because of a broken pipe";
        assert!(peer(false, false).hint(hung_up).contains("give --tls-ca"));
        assert!(peer(true, false)
            .hint(hung_up)
            .contains("requires a client certificate"));
        assert_eq!(peer(true, true).hint(hung_up), "");
        let bad = "invalid peer certificate: UnknownIssuer";
        assert!(peer(true, true).hint(bad).contains("check --tls-ca"));
        let plain = "received corrupt message of type InvalidContentType";
        assert!(peer(true, false).hint(plain).contains("without TLS"));
        assert_eq!(
            peer(false, false).hint("Connection refused (os error 111)"),
            ""
        );
    }

    #[test]
    fn status_error_is_just_the_message() {
        let peer = Peer {
            authority: "h:1".into(),
            tls: false,
            client_cert: false,
        };
        let err = status_error(&peer, Status::invalid_argument("endpoint 1.2.3: bad IP"));
        assert_eq!(err.to_string(), "endpoint 1.2.3: bad IP");
        let err = status_error(&peer, Status::not_found(""));
        assert_eq!(err.to_string(), "Some requested entity was not found");
    }
}
