//! The gRPC API: translates proto <-> domain and maps errors to status codes.
mod conntrack;
mod endpoint;
mod firewall;
mod loadbalancer;
mod network;
mod stats;
mod transport;

use std::sync::Arc;

use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::{Server, ServerTlsConfig};
use tonic::Status;

pub use transport::{check_exposure, ListenAddr, Listener, TlsFiles};

use crate::datapath::{self, Datapath};
use crate::health::Health;
use crate::metrics::ApiStats;
use crate::proto::v1::conntrack_service_server::ConntrackServiceServer;
use crate::proto::v1::endpoint_service_server::EndpointServiceServer;
use crate::proto::v1::firewall_service_server::FirewallServiceServer;
use crate::proto::v1::load_balancer_service_server::LoadBalancerServiceServer;
use crate::proto::v1::network_service_server::NetworkServiceServer;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::rules::{self, RuleStore};

impl From<rules::Error> for Status {
    fn from(e: rules::Error) -> Status {
        let msg = e.to_string();
        match e {
            rules::Error::Invalid { .. } => Status::invalid_argument(msg),
            rules::Error::AlreadyExists(_) => Status::already_exists(msg),
            rules::Error::NotFound(_) => Status::not_found(msg),
            rules::Error::Exhausted(_) => Status::resource_exhausted(msg),
            rules::Error::Datapath(datapath::Error::MapFull { .. }) => {
                Status::resource_exhausted(msg)
            }
            rules::Error::Persist(_) => {
                tracing::error!(error = %msg, "persisting the rules failed");
                Status::unavailable(msg)
            }
            rules::Error::Datapath(_) => {
                tracing::error!(error = %msg, "datapath operation failed");
                Status::internal(msg)
            }
        }
    }
}

/// Runs a rule-store change off the async reactor: it may be thousands of
/// map updates and a file write.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> rules::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("{what}: {e}")))?
        .map_err(Status::from)
}

/// Logs what an apply (not a dry run) changed.
fn log_applied<K>(report: &rules::ApplyReport<K>, what: &str) {
    tracing::info!(
        created = report.created.len(),
        updated = report.updated.len(),
        deleted = report.deleted.len(),
        "{what} applied"
    );
}

/// Serves the API on `listener` (with TLS if given; `tls` is for TCP only)
/// until `shutdown` completes, counting requests into `stats`.
pub async fn serve(
    listener: Listener,
    tls: Option<ServerTlsConfig>,
    store: Arc<RuleStore>,
    dp: Arc<Datapath>,
    health: Arc<Health>,
    stats: Arc<ApiStats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (health_reporter, grpc_health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<LoadBalancerServiceServer<loadbalancer::Api>>()
        .await;
    health_reporter
        .set_serving::<ConntrackServiceServer<conntrack::Api>>()
        .await;
    health_reporter
        .set_serving::<EndpointServiceServer<endpoint::Api>>()
        .await;
    health_reporter
        .set_serving::<FirewallServiceServer<firewall::Api>>()
        .await;

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let router = server
        .layer(stats::CountLayer(stats))
        .add_service(grpc_health)
        .add_service(reflection)
        .add_service(LoadBalancerServiceServer::new(loadbalancer::Api::new(
            store.clone(),
            dp.clone(),
            health.clone(),
        )))
        .add_service(EndpointServiceServer::new(endpoint::Api::new(
            store.clone(),
            health,
        )))
        .add_service(ConntrackServiceServer::new(conntrack::Api::new(
            store.clone(),
            dp.clone(),
        )))
        .add_service(FirewallServiceServer::new(firewall::Api::new(
            store,
            dp.clone(),
        )))
        .add_service(NetworkServiceServer::new(network::Api::new(dp)));
    match listener {
        Listener::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), shutdown)
                .await?
        }
        Listener::Unix(l, _file) => {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(l), shutdown)
                .await?
        }
    }
    Ok(())
}
