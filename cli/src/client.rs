//! gRPC connection to the loxilight daemon.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tonic::transport::{Channel, Endpoint};
use tonic::{Response, Status};

use crate::pb::conntrack_service_client::ConntrackServiceClient;
use crate::pb::load_balancer_service_client::LoadBalancerServiceClient;
use crate::pb::network_service_client::NetworkServiceClient;
use crate::pb::{
    ConntrackFilter, CountConntrackRequest, CountConntrackResponse, CreateLoadBalancerRequest,
    DeleteConntrackRequest, DeleteConntrackResponse, DeleteLoadBalancerRequest,
    ListAddressesRequest, ListAddressesResponse, ListConntrackRequest, ListConntrackResponse,
    ListInterfacesRequest, ListInterfacesResponse, ListLoadBalancersRequest,
    ListLoadBalancersResponse, ListNeighboursRequest, ListNeighboursResponse, ListRoutesRequest,
    ListRoutesResponse, LoadBalancer, ServiceKey,
};

/// A daemon that is down or unroutable should fail fast, not hang the shell.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds a wedged daemon. The longest call walks a full conntrack table
/// (a million entries take about a second).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    /// `host:port` of the daemon, for error messages.
    authority: String,
    lb: LoadBalancerServiceClient<Channel>,
    ct: ConntrackServiceClient<Channel>,
    net: NetworkServiceClient<Channel>,
}

impl Client {
    /// Connects eagerly so an unreachable daemon is reported as such, rather than as
    /// the status of whichever call happened to be first.
    pub async fn connect(host: &str, port: u16) -> Result<Self> {
        let authority = authority(host, port);
        let channel = Endpoint::from_shared(format!("http://{authority}"))
            .with_context(|| format!("invalid API server address {authority}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|err| {
                // tonic's own message is just "transport error"; the useful part
                // ("Connection refused", a DNS failure) is at the bottom of the chain.
                let reason = anyhow::Error::from(err).root_cause().to_string();
                anyhow!("cannot reach loxilight at {authority}: {reason}")
            })?;
        Ok(Self {
            authority,
            lb: LoadBalancerServiceClient::new(channel.clone()),
            ct: ConntrackServiceClient::new(channel.clone()),
            net: NetworkServiceClient::new(channel),
        })
    }

    pub async fn create_lb(&mut self, load_balancer: LoadBalancer) -> Result<()> {
        let request = CreateLoadBalancerRequest {
            load_balancer: Some(load_balancer),
        };
        answer(&self.authority, self.lb.create_load_balancer(request)).await?;
        Ok(())
    }

    pub async fn delete_lb(&mut self, service: ServiceKey) -> Result<()> {
        let request = DeleteLoadBalancerRequest {
            service: Some(service),
        };
        answer(&self.authority, self.lb.delete_load_balancer(request)).await?;
        Ok(())
    }

    pub async fn list_lbs(&mut self) -> Result<ListLoadBalancersResponse> {
        let call = self.lb.list_load_balancers(ListLoadBalancersRequest {});
        answer(&self.authority, call).await
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
        answer(&self.authority, self.ct.list_conntrack(request)).await
    }

    pub async fn count_conntrack(
        &mut self,
        filter: ConntrackFilter,
    ) -> Result<CountConntrackResponse> {
        let request = CountConntrackRequest {
            filter: Some(filter),
        };
        answer(&self.authority, self.ct.count_conntrack(request)).await
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
        answer(&self.authority, self.ct.delete_conntrack(request)).await
    }

    pub async fn list_interfaces(&mut self) -> Result<ListInterfacesResponse> {
        let call = self.net.list_interfaces(ListInterfacesRequest {});
        answer(&self.authority, call).await
    }

    pub async fn list_addresses(&mut self) -> Result<ListAddressesResponse> {
        let call = self.net.list_addresses(ListAddressesRequest {});
        answer(&self.authority, call).await
    }

    pub async fn list_routes(&mut self) -> Result<ListRoutesResponse> {
        let call = self.net.list_routes(ListRoutesRequest {});
        answer(&self.authority, call).await
    }

    pub async fn list_neighbours(&mut self) -> Result<ListNeighboursResponse> {
        let call = self.net.list_neighbours(ListNeighboursRequest {});
        answer(&self.authority, call).await
    }
}

/// Awaits a call under REQUEST_TIMEOUT. The timeout is ours rather than the channel's
/// so that it can say which daemon went silent instead of tonic's bare "Timeout expired".
async fn answer<T>(
    authority: &str,
    call: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map(Response::into_inner).map_err(status_error),
        Err(_) => bail!(
            "loxilight at {authority} did not answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        ),
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
fn status_error(status: Status) -> anyhow::Error {
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
    fn status_error_is_just_the_message() {
        let err = status_error(Status::invalid_argument("endpoint 1.2.3: bad IP"));
        assert_eq!(err.to_string(), "endpoint 1.2.3: bad IP");
        let err = status_error(Status::not_found(""));
        assert_eq!(err.to_string(), "Some requested entity was not found");
    }
}
