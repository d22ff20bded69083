//! The two Services: a headless one that gives every pod a stable DNS name, ready or not (peer
//! discovery and seeds; the client and peer ports), and a ClusterIP one for clients, which only
//! routes to ready nodes and exposes only the client port.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    child_meta, client_service_name, cluster_selector, common_labels, headless_service_name,
    CLIENT_PORT, PEER_PORT,
};
use crate::crd::DynamoCluster;

/// A port by the container port's name (`client` or `peer`). Both speak gRPC over TLS.
fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// `<cluster>-peers`: headless, publishing not-ready pods too, so a node can be found (and can
/// find its seeds) before it has joined the ring and turned Ready.
pub fn headless_service(cluster: &DynamoCluster) -> Service {
    let name = cluster.name_any();
    Service {
        metadata: child_meta(cluster, headless_service_name(&name), common_labels(&name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster_selector(&name)),
            ports: Some(vec![port("client", CLIENT_PORT), port("peer", PEER_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// `<cluster>`: what clients connect to; any ready node coordinates any request.
pub fn client_service(cluster: &DynamoCluster) -> Service {
    let name = cluster.name_any();
    Service {
        metadata: child_meta(cluster, client_service_name(&name), common_labels(&name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(cluster_selector(&name)),
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::render::tests::cluster;

    #[test]
    fn headless_service_publishes_not_ready_pods() {
        let svc = serde_json::to_value(headless_service(&cluster(&[("zone-a", 1)]))).unwrap();
        assert_eq!(svc["metadata"]["name"], "demo-peers");
        assert_eq!(
            svc["spec"],
            json!({
                "clusterIP": "None",
                "publishNotReadyAddresses": true,
                "selector": {"app.kubernetes.io/name": "dynamo", "dynamokv.io/cluster": "demo"},
                "ports": [
                    {"name": "client", "port": 7070, "targetPort": "client", "protocol": "TCP"},
                    {"name": "peer", "port": 7071, "targetPort": "peer", "protocol": "TCP"},
                ],
            })
        );
    }

    #[test]
    fn client_service_routes_to_ready_nodes_only() {
        let svc = serde_json::to_value(client_service(&cluster(&[("zone-a", 1)]))).unwrap();
        assert_eq!(svc["metadata"]["name"], "demo");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"].get("publishNotReadyAddresses"), None);
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"name": "client", "port": 7070, "targetPort": "client", "protocol": "TCP"}]),
            "clients reach the client port only"
        );
    }
}
