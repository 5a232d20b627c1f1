use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::datapath::Datapath;
use crate::kernel::model::{format_mac, nud, Iface};
use crate::proto::v1 as pb;
use crate::proto::v1::network_service_server::NetworkService;

/// Answers from what the datapath holds, not from the kernel, so a client
/// sees exactly the state packets are forwarded with.
pub struct Api {
    dp: Arc<Datapath>,
}

impl Api {
    pub fn new(dp: Arc<Datapath>) -> Api {
        Api { dp }
    }

    fn names(&self) -> std::collections::HashMap<u32, String> {
        self.dp
            .ifaces()
            .into_iter()
            .map(|(i, _)| (i.index, i.name))
            .collect()
    }
}

fn name_of(names: &std::collections::HashMap<u32, String>, index: u32) -> String {
    names.get(&index).cloned().unwrap_or_default()
}

#[tonic::async_trait]
impl NetworkService for Api {
    async fn list_interfaces(
        &self,
        _req: Request<pb::ListInterfacesRequest>,
    ) -> Result<Response<pb::ListInterfacesResponse>, Status> {
        let interfaces = self
            .dp
            .ifaces()
            .into_iter()
            .map(|(i, attached): (Iface, bool)| pb::Interface {
                name: i.name,
                index: i.index,
                mac: format_mac(&i.mac),
                mtu: i.mtu,
                up: i.up,
                attached,
            })
            .collect();
        Ok(Response::new(pb::ListInterfacesResponse { interfaces }))
    }

    async fn list_addresses(
        &self,
        _req: Request<pb::ListAddressesRequest>,
    ) -> Result<Response<pb::ListAddressesResponse>, Status> {
        let names = self.names();
        let addresses = self
            .dp
            .locals()
            .into_iter()
            .map(|a| pb::Address {
                address: format!("{}/{}", a.ip, a.prefix),
                interface: name_of(&names, a.ifindex),
                index: a.ifindex,
            })
            .collect();
        Ok(Response::new(pb::ListAddressesResponse { addresses }))
    }

    async fn list_routes(
        &self,
        _req: Request<pb::ListRoutesRequest>,
    ) -> Result<Response<pb::ListRoutesResponse>, Status> {
        let names = self.names();
        let routes = self
            .dp
            .routes()
            .into_iter()
            .map(|r| pb::Route {
                destination: format!("{}/{}", r.dst.ip, r.dst.len),
                r#type: r.kind.as_str().into(),
                next_hops: r
                    .nexthops
                    .iter()
                    .map(|nh| pb::NextHop {
                        gateway: nh.gateway.map(|g| g.to_string()).unwrap_or_default(),
                        interface: name_of(&names, nh.ifindex),
                        index: nh.ifindex,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::ListRoutesResponse { routes }))
    }

    async fn list_neighbours(
        &self,
        _req: Request<pb::ListNeighboursRequest>,
    ) -> Result<Response<pb::ListNeighboursResponse>, Status> {
        let names = self.names();
        let neighbours = self
            .dp
            .neighs()
            .into_iter()
            .map(|n| pb::Neighbour {
                ip: n.ip.to_string(),
                mac: format_mac(&n.mac),
                interface: name_of(&names, n.ifindex),
                index: n.ifindex,
                state: nud::name(n.state).into(),
            })
            .collect();
        Ok(Response::new(pb::ListNeighboursResponse { neighbours }))
    }
}
