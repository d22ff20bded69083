//! The two Services: a headless one that gives every pod a stable DNS name, ready or not (peer
//! discovery and seeds), and a ClusterIP one for clients, which only routes to ready nodes.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{
    child_meta, client_service_name, cluster_selector, common_labels, headless_service_name,
    NODE_PORT,
};
use crate::crd::DynamoCluster;

fn grpc_port() -> ServicePort {
    ServicePort {
        name: Some("grpc".into()),
        port: NODE_PORT,
        target_port: Some(IntOrString::String("grpc".into())),
        protocol: Some("TCP".into()),
        app_protocol: Some("kubernetes.io/h2c".into()),
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
            ports: Some(vec![grpc_port()]),
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
            ports: Some(vec![grpc_port()]),
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
                "ports": [{"name": "grpc", "port": 7070, "targetPort": "grpc", "protocol": "TCP",
                           "appProtocol": "kubernetes.io/h2c"}],
            })
        );
    }

    #[test]
    fn client_service_routes_to_ready_nodes_only() {
        let svc = serde_json::to_value(client_service(&cluster(&[("zone-a", 1)]))).unwrap();
        assert_eq!(svc["metadata"]["name"], "demo");
        assert_eq!(svc["spec"]["type"], "ClusterIP");
        assert_eq!(svc["spec"].get("publishNotReadyAddresses"), None);
        assert_eq!(svc["spec"]["ports"][0]["port"], 7070);
    }
}
