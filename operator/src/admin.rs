//! The nodes' admin API as the operator uses it: a [`NodeAdmin`] trait (status and
//! decommission), its real implementation over gRPC (the tonic client of `dynamo-api`, the
//! node's own contract) on the nodes' peer port with the operator's credentials, and the merge
//! of what several nodes report into one view of the ring.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dynamo_api::security::Credentials;
use futures::future::BoxFuture;
use tonic::transport::Endpoint;

/// The node's admin API (generated in `dynamo-api`; tests serve fakes with its server half).
pub use dynamo_api::pb::admin as proto;

pub use proto::{DecommissionResponse, NodeStatus, StatusResponse, Transfer};

/// A failed admin call; the controller records it and retries on a later pass.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No connection could be made (pod not listening yet, network policy, wrong address).
    #[error("cannot connect to the admin API at {address}: {message}")]
    Connect {
        /// `host:port` dialled.
        address: String,
        /// What the transport said.
        message: String,
    },
    /// The node answered with an error.
    #[error("admin call {call} to {address} failed: {status}")]
    Call {
        /// `host:port` dialled.
        address: String,
        /// Which call.
        call: &'static str,
        /// The gRPC status returned.
        status: Box<tonic::Status>,
    },
}

/// How the operator reaches the nodes of one cluster: the credentials it presents (the cluster
/// CA to verify the node, and an admin certificate or the admin token) and the name it verifies
/// the node's certificate against. Nodes are dialled by pod IP; every node's certificate names
/// the client Service, so that name identifies a node of this cluster.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// CA, identity, token. [`Credentials::insecure`] for plaintext (a `--dev --insecure` node).
    pub credentials: Arc<Credentials>,
    /// The name to verify the node's certificate against (TLS server name), instead of the IP.
    pub server_name: Option<String>,
}

/// What the operator needs from a node's admin API. A trait so that controller tests can use a
/// scripted fake; [`GrpcAdmin`] is the real one.
pub trait NodeAdmin: Send + Sync + 'static {
    /// The membership view of the node at `address` (`host:port` of its peer port).
    fn status(
        &self,
        access: &Access,
        address: &str,
    ) -> BoxFuture<'static, Result<StatusResponse, AdminError>>;
    /// Asks the node at `address` to decommission `node_id` (itself or another member); with
    /// `force`, to remove it even if it does not answer. Starting is idempotent: asking again
    /// reports the current state.
    fn decommission(
        &self,
        access: &Access,
        address: &str,
        node_id: &str,
        force: bool,
    ) -> BoxFuture<'static, Result<DecommissionResponse, AdminError>>;
}

/// The admin API over gRPC, one short-lived connection per call (the operator calls a handful
/// of nodes every few seconds at most, and pods come and go with new addresses).
#[derive(Debug, Clone)]
pub struct GrpcAdmin {
    /// Time allowed to connect and for each call; an unreachable node must not stall a pass.
    pub timeout: Duration,
}

impl Default for GrpcAdmin {
    fn default() -> Self {
        GrpcAdmin { timeout: Duration::from_secs(5) }
    }
}

/// The endpoint of `address` with `access`'s scheme and TLS settings (the node verified under
/// `access.server_name` when set).
pub fn endpoint(access: &Access, address: &str) -> Result<Endpoint, tonic::transport::Error> {
    let credentials = Credentials {
        server_name: access.server_name.clone().or_else(|| access.credentials.server_name.clone()),
        ..(*access.credentials).clone()
    };
    credentials.endpoint(address)
}

impl GrpcAdmin {
    async fn connect(
        timeout: Duration,
        access: &Access,
        address: String,
    ) -> Result<proto::admin_client::AdminClient<tonic::transport::Channel>, AdminError> {
        let endpoint = endpoint(access, &address)
            .map_err(|e| AdminError::Connect { address: address.clone(), message: e.to_string() })?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| AdminError::Connect {
            address: address.clone(),
            message: transport_message(&e),
        })?;
        Ok(proto::admin_client::AdminClient::new(channel))
    }
}

/// The error with its causes: a TLS failure (unknown CA, wrong name) is only in the sources.
fn transport_message(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// A request carrying `access`'s bearer token, if it has one.
fn request<T>(access: &Access, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    access.credentials.authorize(&mut request);
    request
}

impl NodeAdmin for GrpcAdmin {
    fn status(
        &self,
        access: &Access,
        address: &str,
    ) -> BoxFuture<'static, Result<StatusResponse, AdminError>> {
        let (timeout, access, address) = (self.timeout, access.clone(), address.to_string());
        Box::pin(async move {
            let mut client = Self::connect(timeout, &access, address.clone()).await?;
            client
                .status(request(&access, proto::StatusRequest {}))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| AdminError::Call {
                    address,
                    call: "Status",
                    status: Box::new(status),
                })
        })
    }

    fn decommission(
        &self,
        access: &Access,
        address: &str,
        node_id: &str,
        force: bool,
    ) -> BoxFuture<'static, Result<DecommissionResponse, AdminError>> {
        let (timeout, access, address, node_id) =
            (self.timeout, access.clone(), address.to_string(), node_id.to_string());
        Box::pin(async move {
            let mut client = Self::connect(timeout, &access, address.clone()).await?;
            client
                .decommission(request(&access, proto::DecommissionRequest { node_id, force }))
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| AdminError::Call {
                    address,
                    call: "Decommission",
                    status: Box::new(status),
                })
        })
    }
}

/// Ring membership of a node, in the order a node goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Membership {
    /// Announced, receiving its partitions.
    Joining,
    /// A full member.
    Normal,
    /// Decommissioning: handing its partitions off.
    Leaving,
    /// Gone: its partitions have moved to others.
    Left,
}

impl Membership {
    /// The admin API's value; `None` for unspecified or unknown values.
    pub fn from_proto(value: i32) -> Option<Membership> {
        match proto::MemberState::try_from(value).ok()? {
            proto::MemberState::Joining => Some(Membership::Joining),
            proto::MemberState::Normal => Some(Membership::Normal),
            proto::MemberState::Leaving => Some(Membership::Leaving),
            proto::MemberState::Left => Some(Membership::Left),
            proto::MemberState::Unspecified => None,
        }
    }

    /// The admin API's value.
    pub fn to_proto(self) -> proto::MemberState {
        match self {
            Membership::Joining => proto::MemberState::Joining,
            Membership::Normal => proto::MemberState::Normal,
            Membership::Leaving => proto::MemberState::Leaving,
            Membership::Left => proto::MemberState::Left,
        }
    }

    /// Parses the lowercase name ("joining", ...); `None` for anything else.
    pub fn parse(s: &str) -> Option<Membership> {
        match s {
            "joining" => Some(Membership::Joining),
            "normal" => Some(Membership::Normal),
            "leaving" => Some(Membership::Leaving),
            "left" => Some(Membership::Left),
            _ => None,
        }
    }

    /// The lowercase name, as `dynamoctl status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Joining => "joining",
            Membership::Normal => "normal",
            Membership::Leaving => "leaving",
            Membership::Left => "left",
        }
    }
}

/// One member as the merged view sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    /// Zone the member reports.
    pub zone: String,
    /// Its membership.
    pub membership: Membership,
    /// Whether it answered its own admin API on this pass.
    pub reachable: bool,
    /// Other nodes that found it reachable on this pass.
    pub seen_up_by: usize,
    /// Other nodes that found it unreachable on this pass.
    pub seen_down_by: usize,
    /// The shortest time any of those has found it unreachable (`None` when none has).
    pub down_for: Option<Duration>,
}

impl MemberView {
    /// Gone for at least `grace` as far as the operator can tell: it does not answer its own
    /// admin API, no node that answered finds it reachable, at least one finds it down, and
    /// every one of those has found it down for `grace` or longer.
    pub fn gone_for(&self, grace: Duration) -> bool {
        !self.reachable
            && self.seen_up_by == 0
            && self.seen_down_by > 0
            && self.down_for.is_some_and(|d| d >= grace)
    }
}

/// The ring as the nodes that answered see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RingView {
    /// How many nodes answered a status call on this pass (0: no membership is known).
    pub answered: usize,
    /// Every member any node reported, by node id.
    pub members: BTreeMap<String, MemberView>,
    /// The largest `pending_partitions` any node reported.
    pub pending_partitions: u32,
    /// Transfers not yet done, deduplicated by (partition, from, to).
    pub active_transfers: usize,
    /// Transfers done.
    pub done_transfers: usize,
    /// Hints held for each node (keys, summed over the nodes that hold them).
    pub hints_for: BTreeMap<String, u64>,
    /// Keys sent by all transfers.
    pub keys_sent: u64,
    /// Bytes sent by all transfers.
    pub bytes_sent: u64,
}

impl RingView {
    /// Merges the reports of the nodes that answered. A node's report about itself wins (it is
    /// the authority on its own state); for a node that did not answer, the most advanced state
    /// any other node reports is taken (gossip only moves a node forward: joining, normal,
    /// leaving, left). Unknown membership values are ignored.
    pub fn merge(reports: &[StatusResponse]) -> RingView {
        let mut view = RingView { answered: reports.len(), ..RingView::default() };
        let mut own: BTreeMap<String, MemberView> = BTreeMap::new();
        let mut liveness: BTreeMap<String, Seen> = BTreeMap::new();
        let mut transfers: BTreeMap<(u32, String, String), &Transfer> = BTreeMap::new();
        for report in reports {
            view.pending_partitions = view.pending_partitions.max(report.pending_partitions);
            for node in &report.nodes {
                let Some(membership) = Membership::from_proto(node.membership) else { continue };
                let is_self = node.is_self || node.id == report.node_id;
                let member = MemberView {
                    zone: node.zone.clone(),
                    membership,
                    reachable: is_self,
                    seen_up_by: 0,
                    seen_down_by: 0,
                    down_for: None,
                };
                if is_self {
                    own.insert(node.id.clone(), member);
                } else {
                    let down_for =
                        (!node.reachable).then_some(Duration::from_millis(node.down_for_ms.max(1)));
                    *liveness.entry(node.id.clone()).or_default() += (node.reachable, down_for);
                    view.members
                        .entry(node.id.clone())
                        .and_modify(|m| {
                            if membership > m.membership {
                                m.membership = membership;
                            }
                        })
                        .or_insert(member);
                }
            }
            for h in &report.hints {
                *view.hints_for.entry(h.target.clone()).or_default() += h.count;
            }
            for t in &report.transfers {
                let key = (t.partition, t.from.clone(), t.to.clone());
                // Both ends report a transfer; keep the one further along.
                let entry = transfers.entry(key).or_insert(t);
                if t.keys_sent > entry.keys_sent || (is_done(t) && !is_done(entry)) {
                    *entry = t;
                }
            }
        }
        view.members.extend(own);
        for (id, seen) in liveness {
            if let Some(m) = view.members.get_mut(&id) {
                (m.seen_up_by, m.seen_down_by, m.down_for) = (seen.up, seen.down, seen.down_for);
            }
        }
        for t in transfers.values() {
            if is_done(t) {
                view.done_transfers += 1;
            } else {
                view.active_transfers += 1;
            }
            view.keys_sent += t.keys_sent;
            view.bytes_sent += t.bytes_sent;
        }
        view
    }

    /// Membership of `id`, if any node reported it.
    pub fn membership(&self, id: &str) -> Option<Membership> {
        self.members.get(id).map(|m| m.membership)
    }

    /// Members in `state`, by id.
    pub fn in_state(&self, state: Membership) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, m)| m.membership == state)
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// What the other nodes found of one node.
#[derive(Default)]
struct Seen {
    up: usize,
    down: usize,
    down_for: Option<Duration>,
}

impl std::ops::AddAssign<(bool, Option<Duration>)> for Seen {
    fn add_assign(&mut self, (reachable, down_for): (bool, Option<Duration>)) {
        if reachable {
            self.up += 1;
        } else {
            self.down += 1;
            self.down_for = match (self.down_for, down_for) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
}

fn is_done(t: &Transfer) -> bool {
    t.state() == proto::TransferState::Done
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node's report listing `members` as (id, zone, membership); `self_id` is the reporter.
    pub fn report(self_id: &str, members: &[(&str, &str, &str)]) -> StatusResponse {
        StatusResponse {
            node_id: self_id.into(),
            cluster: "demo.default".into(),
            n: 3,
            r: 2,
            w: 2,
            partitions: 256,
            nodes: members
                .iter()
                .map(|(id, zone, membership)| NodeStatus {
                    id: (*id).into(),
                    zone: (*zone).into(),
                    address: format!("{id}:7070"),
                    weight: 1,
                    reachable: true,
                    is_self: *id == self_id,
                    membership: Membership::parse(membership).map_or(0, |m| m.to_proto() as i32),
                    ..NodeStatus::default()
                })
                .collect(),
            ..StatusResponse::default()
        }
    }

    #[test]
    fn a_node_is_the_authority_on_itself() {
        let a = report("a", &[("a", "z1", "normal"), ("b", "z2", "normal")]);
        let b = report("b", &[("a", "z1", "normal"), ("b", "z2", "joining")]);
        let view = RingView::merge(&[a, b]);
        assert_eq!(view.answered, 2);
        assert_eq!(view.membership("b"), Some(Membership::Joining));
        assert!(view.members["b"].reachable);
    }

    #[test]
    fn unreachable_nodes_take_the_most_advanced_state_reported() {
        let a = report("a", &[("a", "z1", "normal"), ("c", "z3", "leaving")]);
        let b = report("b", &[("b", "z2", "normal"), ("c", "z3", "left")]);
        let view = RingView::merge(&[a, b]);
        assert_eq!(view.membership("c"), Some(Membership::Left));
        assert!(!view.members["c"].reachable);
        assert_eq!(view.in_state(Membership::Normal), ["a", "b"]);
        assert_eq!(view.membership("zz"), None);
    }

    #[test]
    fn transfers_are_counted_once_and_pending_is_the_maximum() {
        let t = |p, state: &str, keys| Transfer {
            partition: p,
            from: "a".into(),
            to: "b".into(),
            keys_sent: keys,
            bytes_sent: keys * 10,
            state: proto::TransferState::from_str_name(state).map_or(0, |s| s as i32),
            ..Transfer::default()
        };
        let mut a = report("a", &[("a", "z", "leaving")]);
        a.transfers = vec![t(1, "TRANSFER_STATE_STREAMING", 5), t(2, "TRANSFER_STATE_DONE", 7)];
        a.pending_partitions = 3;
        let mut b = report("b", &[("b", "z", "normal")]);
        b.transfers = vec![t(1, "TRANSFER_STATE_STREAMING", 6)];
        b.pending_partitions = 2;
        let view = RingView::merge(&[a, b]);
        assert_eq!(view.pending_partitions, 3);
        assert_eq!((view.active_transfers, view.done_transfers), (1, 1));
        assert_eq!((view.keys_sent, view.bytes_sent), (13, 130));
    }

    #[test]
    fn liveness_and_hints_are_merged_over_the_reporters() {
        let members = [("a", "z1", "normal"), ("b", "z2", "normal"), ("c", "z3", "normal")];
        let mut a = report("a", &members);
        let mut b = report("b", &members);
        for (r, ms) in [(&mut a, 90_000), (&mut b, 30_000)] {
            let c = r.nodes.iter_mut().find(|n| n.id == "c").unwrap();
            (c.reachable, c.down_for_ms) = (false, ms);
            r.hints.push(proto::HintSummary { target: "c".into(), count: 7, bytes: 70 });
        }
        let view = RingView::merge(&[a.clone(), b.clone()]);
        let c = &view.members["c"];
        assert_eq!((c.seen_up_by, c.seen_down_by), (0, 2));
        assert_eq!(c.down_for, Some(Duration::from_secs(30)), "the shortest view counts");
        assert!(c.gone_for(Duration::from_secs(30)));
        assert!(!c.gone_for(Duration::from_secs(31)));
        assert_eq!(view.hints_for["c"], 14);
        assert_eq!(view.members["a"].seen_up_by, 1);

        // One node still reaches it: not gone, whatever the others say.
        b.nodes.iter_mut().find(|n| n.id == "c").unwrap().reachable = true;
        let view = RingView::merge(&[a, b]);
        assert!(!view.members["c"].gone_for(Duration::ZERO));
    }

    #[test]
    fn unknown_membership_values_are_ignored() {
        let mut a = report("a", &[("a", "z", "normal"), ("b", "z", "normal")]);
        a.nodes[0].membership = 0;
        a.nodes[1].membership = 99;
        let view = RingView::merge(&[a]);
        assert!(view.members.is_empty());
        assert_eq!(view.answered, 1);
    }

    /// A node's admin service answering from fixed data.
    /// A node's admin API; with `require_admin`, it answers only a caller with an admin
    /// certificate or the bearer token `tok`, as a node does.
    struct FakeAdminService {
        require_admin: bool,
    }

    #[tonic::async_trait]
    impl proto::admin_server::Admin for FakeAdminService {
        async fn status(
            &self,
            request: tonic::Request<proto::StatusRequest>,
        ) -> Result<tonic::Response<StatusResponse>, tonic::Status> {
            use dynamo_api::security::{identity_of, Role};
            let certificate_role = request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|der| identity_of(der)))
                .map(|identity| identity.role);
            let bearer = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
            if self.require_admin
                && certificate_role != Some(Role::Admin)
                && bearer != Some("Bearer tok")
            {
                return Err(tonic::Status::unauthenticated("an admin credential is needed"));
            }
            Ok(tonic::Response::new(report(
                "n1",
                &[("n1", "z1", "normal"), ("n2", "z2", "joining")],
            )))
        }

        async fn decommission(
            &self,
            request: tonic::Request<proto::DecommissionRequest>,
        ) -> Result<tonic::Response<DecommissionResponse>, tonic::Status> {
            let node_id = request.into_inner().node_id;
            if node_id != "n2" {
                return Err(tonic::Status::not_found(format!("no member {node_id}")));
            }
            let state = proto::MemberState::Leaving as i32;
            Ok(tonic::Response::new(DecommissionResponse { node_id, state }))
        }
    }

    #[tokio::test]
    async fn grpc_admin_talks_to_a_node() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::admin_server::AdminServer::new(FakeAdminService {
                    require_admin: false,
                }))
                .serve_with_incoming_shutdown(tokio_stream_from(listener), async move {
                    stop.cancelled().await
                }),
        );
        let admin = GrpcAdmin::default();
        let plain = Access::default();
        let status = admin.status(&plain, &address).await.unwrap();
        assert_eq!(status.node_id, "n1");
        assert_eq!(RingView::merge(&[status]).membership("n2"), Some(Membership::Joining));
        let answer = admin.decommission(&plain, &address, "n2", false).await.unwrap();
        assert_eq!(answer.state(), proto::MemberState::Leaving);
        let err = admin.decommission(&plain, &address, "n9", false).await.unwrap_err();
        assert!(err.to_string().contains("admin call Decommission to"), "{err}");
        assert!(err.to_string().contains("no member n9"), "{err}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    /// The accepted connections of `listener` as the stream tonic serves.
    fn tokio_stream_from(
        listener: tokio::net::TcpListener,
    ) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
        futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        })
    }

    #[tokio::test]
    async fn grpc_admin_reports_an_unreachable_node_as_a_connect_error() {
        // Port 1 on loopback: nothing listens there.
        let admin = GrpcAdmin { timeout: Duration::from_millis(500) };
        let err = admin.status(&Access::default(), "127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err}");
        assert!(
            err.to_string().contains("cannot connect to the admin API at 127.0.0.1:1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn grpc_admin_calls_a_tls_node_with_a_certificate_or_the_token() {
        use dynamo_api::security::{Ca, CertRequest, Role};
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};

        let day = Duration::from_secs(86_400);
        let ca = Ca::generate("demo.default", day).unwrap();
        let node = ca
            .issue(&CertRequest {
                name: "dynamo-node".into(),
                role: Role::Peer,
                dns_names: vec!["demo.default.svc".into()],
                ips: vec![],
                lifetime: day,
            })
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let stop = shutdown.clone();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(&node.cert_pem, &node.key_pem))
            .client_ca_root(Certificate::from_pem(ca.cert_pem()))
            .client_auth_optional(true);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(proto::admin_server::AdminServer::new(FakeAdminService {
                    require_admin: true,
                }))
                .serve_with_incoming_shutdown(tokio_stream_from(listener), async move {
                    stop.cancelled().await
                }),
        );
        let admin = GrpcAdmin { timeout: Duration::from_secs(5) };
        let access =
            |identity: Option<&dynamo_api::security::Issued>, token: Option<&str>| Access {
                credentials: Arc::new(Credentials {
                    ca_pem: Some(ca.cert_pem().to_string()),
                    identity: identity.map(|i| (i.cert_pem.clone(), i.key_pem.clone())),
                    token: token.map(Into::into),
                    server_name: None,
                }),
                server_name: Some("demo.default.svc".into()),
            };

        // The operator's own admin certificate.
        let operator = ca.issue(&CertRequest::client("dynamo-operator", Role::Admin, day)).unwrap();
        let status = admin.status(&access(Some(&operator), None), &address).await.unwrap();
        assert_eq!(status.node_id, "n1");
        // The admin token (cert-manager issues the nodes' certificate; the operator has no CA key).
        admin.status(&access(None, Some("tok")), &address).await.unwrap();
        // Neither: the node refuses.
        let err = admin.status(&access(None, Some("guess")), &address).await.unwrap_err();
        assert!(err.to_string().contains("an admin credential is needed"), "{err}");
        // A node presenting a certificate of another CA is not trusted.
        let other = Ca::generate("demo.default", day).unwrap();
        let mut wrong = access(Some(&operator), None);
        wrong.credentials = Arc::new(Credentials {
            ca_pem: Some(other.cert_pem().to_string()),
            ..(*wrong.credentials).clone()
        });
        let err = admin.status(&wrong, &address).await.unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err}");
        // Nor one whose certificate does not carry the name verified.
        let mut misnamed = access(Some(&operator), None);
        misnamed.server_name = Some("other.default.svc".into());
        let err = admin.status(&misnamed, &address).await.unwrap_err();
        assert!(matches!(err, AdminError::Connect { .. }), "{err}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
