//! Test fixtures: an in-memory Kubernetes API server behind a `tower_test` mock (kube's
//! `Client` talks to it as to a real one), a fake fleet of nodes implementing [`NodeAdmin`],
//! and a small simulation of what Kubernetes itself does (the StatefulSet controller creating
//! and deleting pods and volumes, kubelet probes turning pods Ready once their node is normal).
//! Controller tests drive whole flows with them: several passes, operator restarts, failures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::admin::{
    Access, AdminError, DecommissionResponse, Membership, NodeAdmin, NodeStatus, StatusResponse,
};

/// One request the fake API server received.
#[derive(Debug, Clone)]
pub struct Logged {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Query string.
    pub query: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl Logged {
    /// `METHOD path`, for compact assertions.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    log: Vec<Logged>,
    resource_version: u64,
    uid: u64,
}

/// An in-memory API server: objects by path, server-side apply (as a replace of the applier's
/// fields), JSON merge patch, create, replace with resourceVersion checks, delete, and label
/// selected lists. Enough of Kubernetes for the operator; no watch.
#[derive(Clone, Default)]
pub struct FakeApiServer(Arc<Mutex<State>>);

struct Target {
    /// Path of the collection (`.../namespaces/ns/resource`).
    collection: String,
    /// `/api/v1` or `/apis/group/version`.
    prefix: String,
    /// Resource (plural) name.
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
}

fn parse_path(path: &str) -> Target {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let base = if segments.first() == Some(&"api") { 2 } else { 3 };
    let (prefix, rest) = segments.split_at(base.min(segments.len()));
    let prefix = format!("/{}", prefix.join("/"));
    if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        Target {
            collection: format!("{prefix}/namespaces/{}/{}", rest[1], rest[2]),
            prefix: prefix.clone(),
            resource: rest[2].to_string(),
            name: rest.get(3).map(|s| s.to_string()),
            subresource: rest.get(4).map(|s| s.to_string()),
            namespace: Some(rest[1].to_string()),
        }
    } else {
        Target {
            collection: format!("{prefix}/{}", rest.first().copied().unwrap_or_default()),
            prefix: prefix.clone(),
            resource: rest.first().copied().unwrap_or_default().to_string(),
            name: rest.get(1).map(|s| s.to_string()),
            subresource: rest.get(2).map(|s| s.to_string()),
            namespace: None,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
}

fn status_body(code: u16, reason: &str, message: String) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
        Some((k, v)) => object["metadata"]["labels"][k].as_str() == Some(v),
        None => true,
    })
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Fills what the API server sets on creation.
    fn created(&mut self, mut object: Value, namespace: Option<&str>) -> Value {
        self.uid += 1;
        let meta = &mut object["metadata"];
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uid));
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        meta["generation"] = json!(1);
        if let Some(ns) = namespace {
            meta["namespace"] = json!(ns);
        }
        object["metadata"]["resourceVersion"] = json!(self.next_rv());
        object
    }

    /// Stores `new` over `old`: bumps the resourceVersion, and the generation when the spec
    /// changed; keeps what the server owns (uid, creation time).
    fn updated(&mut self, old: &Value, mut new: Value) -> Value {
        for key in ["uid", "creationTimestamp", "deletionTimestamp"] {
            if !old["metadata"][key].is_null() {
                new["metadata"][key] = old["metadata"][key].clone();
            }
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        let changed = old.get("spec") != new.get("spec");
        new["metadata"]["generation"] = json!(if changed { generation + 1 } else { generation });
        new["metadata"]["resourceVersion"] = json!(self.next_rv());
        new
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.log.push(Logged {
            method: method.clone(),
            path: path.into(),
            query: query.into(),
            body: body.clone(),
        });
        let target = parse_path(path);
        let key = target.name.as_ref().map(|n| format!("{}/{n}", target.collection));
        let not_found =
            |what: &str| (404, status_body(404, "NotFound", format!("{what} not found")));
        match (method.as_str(), key) {
            ("GET", Some(key)) => match self.objects.get(&key) {
                Some(o) => (200, o.clone()),
                None => not_found(&key),
            },
            ("GET", None) => {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let items: Vec<Value> = self
                    .objects
                    .iter()
                    .filter(|(k, _)| {
                        let t = parse_path(k);
                        t.prefix == target.prefix
                            && t.resource == target.resource
                            && (target.namespace.is_none() || t.namespace == target.namespace)
                    })
                    .map(|(_, v)| v.clone())
                    .filter(|v| labels_match(v, &selector))
                    .collect();
                let rv = self.resource_version.to_string();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            ("POST", None) => {
                let body = body.unwrap_or_default();
                let name = body["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let key = format!("{}/{name}", target.collection);
                if self.objects.contains_key(&key) {
                    return (
                        409,
                        status_body(409, "AlreadyExists", format!("{key} already exists")),
                    );
                }
                let object = self.created(body, target.namespace.as_deref());
                self.objects.insert(key, object.clone());
                (201, object)
            }
            ("PUT", Some(key)) => {
                let Some(old) = self.objects.get(&key).cloned() else { return not_found(&key) };
                let body = body.unwrap_or_default();
                let expected = body["metadata"]["resourceVersion"].as_str();
                if expected.is_some() && expected != old["metadata"]["resourceVersion"].as_str() {
                    return (
                        409,
                        status_body(409, "Conflict", format!("{key} was modified; re-read it")),
                    );
                }
                let object = self.updated(&old, body);
                self.objects.insert(key, object.clone());
                (200, object)
            }
            ("PATCH", Some(key)) => {
                let body = body.unwrap_or_default();
                let old = self.objects.get(&key).cloned();
                let status_only = target.subresource.as_deref() == Some("status");
                if target.resource == "statefulsets" && !status_only {
                    if let Some(old) = &old {
                        let templates = "volumeClaimTemplates";
                        if old["spec"][templates] != body["spec"][templates]
                            && !body["spec"][templates].is_null()
                        {
                            // As the API server does: a StatefulSet's claim template is fixed.
                            let message = format!(
                                "StatefulSet.apps \"{key}\" is invalid: spec: Forbidden: updates to statefulset spec for \
                                 fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', \
                                 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
                            );
                            return (422, status_body(422, "Invalid", message));
                        }
                    }
                }
                let object = match (content_type, old) {
                    (ct, Some(old)) if ct.starts_with("application/apply-patch") => {
                        let mut new = old.clone();
                        if status_only {
                            new["status"] = body["status"].clone();
                        } else {
                            for (k, v) in body.as_object().into_iter().flatten() {
                                if k != "status" && k != "metadata" {
                                    new[k] = v.clone();
                                }
                            }
                            for k in ["labels", "annotations", "ownerReferences"] {
                                new["metadata"][k] = body["metadata"][k].clone();
                            }
                        }
                        self.updated(&old, new)
                    }
                    (ct, None) if ct.starts_with("application/apply-patch") && !status_only => {
                        self.created(body, target.namespace.as_deref())
                    }
                    (ct, Some(old)) if ct.starts_with("application/merge-patch") => {
                        let mut new = old.clone();
                        merge(&mut new, &body);
                        self.updated(&old, new)
                    }
                    (_, None) => return not_found(&key),
                    (ct, _) => {
                        return (
                            415,
                            status_body(
                                415,
                                "UnsupportedMediaType",
                                format!("{ct} is not supported"),
                            ),
                        )
                    }
                };
                self.objects.insert(key, object.clone());
                (200, object)
            }
            ("DELETE", Some(key)) => match self.objects.remove(&key) {
                Some(o) => (200, o),
                None => not_found(&key),
            },
            (m, _) => {
                (405, status_body(405, "MethodNotAllowed", format!("{m} {path} is not supported")))
            }
        }
    }
}

impl FakeApiServer {
    /// An empty server.
    pub fn start() -> FakeApiServer {
        FakeApiServer::default()
    }

    /// A kube client talking to this server (one mock connection per client).
    pub fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.0.clone();
        // Serves until the client (and so the mock service) is dropped.
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Option<Value> = serde_json::from_slice(&bytes).ok();
                let content_type = parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let (code, value) = state.lock().unwrap().handle(
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query().unwrap_or_default(),
                    &content_type,
                    body,
                );
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        Client::new(service, "default")
    }

    /// The object at `path`, decoded.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        let state = self.0.lock().unwrap();
        state
            .objects
            .get(path)
            .map(|v| serde_json::from_value(v.clone()).expect("stored object decodes"))
    }

    /// Stores `object` at `path` as if written by someone else (new resourceVersion).
    pub fn put<T: Serialize>(&self, path: &str, object: &T) {
        let mut state = self.0.lock().unwrap();
        let mut value = serde_json::to_value(object).unwrap();
        value["metadata"]["resourceVersion"] = json!(state.next_rv());
        state.objects.insert(path.into(), value);
    }

    /// Creates `object` in the collection at `collection` as the API server would.
    pub fn create<T: Serialize>(&self, collection: &str, object: &T) {
        let mut state = self.0.lock().unwrap();
        let value = serde_json::to_value(object).unwrap();
        let name = value["metadata"]["name"].as_str().unwrap().to_string();
        let namespace = parse_path(&format!("{collection}/{name}")).namespace;
        let value = state.created(value, namespace.as_deref());
        state.objects.insert(format!("{collection}/{name}"), value);
    }

    /// Removes the object at `path`.
    pub fn remove(&self, path: &str) {
        self.0.lock().unwrap().objects.remove(path);
    }

    /// Every object in the collection at `collection`, decoded.
    pub fn list<T: DeserializeOwned>(&self, collection: &str) -> Vec<T> {
        let state = self.0.lock().unwrap();
        state
            .objects
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(collection)
                    .is_some_and(|rest| rest.starts_with('/') && !rest[1..].contains('/'))
            })
            .map(|(_, v)| serde_json::from_value(v.clone()).expect("stored object decodes"))
            .collect()
    }

    /// The requests received so far.
    pub fn requests(&self) -> Vec<Logged> {
        self.0.lock().unwrap().log.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_requests(&self) {
        self.0.lock().unwrap().log.clear();
    }
}

/// What an admin call presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The CA the node was verified with.
    pub ca_pem: Option<String>,
    /// The caller's certificate.
    pub cert_pem: Option<String>,
    /// The caller's bearer token.
    pub token: Option<String>,
    /// The name the node was verified under.
    pub server_name: Option<String>,
}

/// A fake node process.
#[derive(Debug, Clone)]
struct FakeNode {
    zone: String,
    membership: String,
    /// `ip:7071` (its peer port) while its pod runs.
    address: Option<String>,
}

#[derive(Default)]
struct Fleet {
    nodes: BTreeMap<String, FakeNode>,
    decommissions: Vec<(String, String)>,
    /// Decommission requests are acknowledged but lost (the node restarts before acting).
    lose_decommissions: bool,
    /// Nodes whose admin API does not answer.
    silent: BTreeSet<String>,
    /// The credentials of every status call, in order.
    callers: Vec<Caller>,
}

/// A fleet of fake nodes sharing one membership view, behind the [`NodeAdmin`] trait.
#[derive(Clone, Default)]
pub struct FakeNodes(Arc<Mutex<Fleet>>);

impl FakeNodes {
    /// A node process started for pod `id` at `address`: a new member joins; a node that had
    /// left and is added back joins again.
    pub fn start(&self, id: &str, zone: &str, address: &str) {
        let mut fleet = self.0.lock().unwrap();
        let node = fleet.nodes.entry(id.into()).or_insert_with(|| FakeNode {
            zone: zone.into(),
            membership: "joining".into(),
            address: None,
        });
        if node.membership == "left" {
            node.membership = "joining".into();
        }
        node.address = Some(address.into());
    }

    /// The node process of `id` stopped (its pod is gone); its membership stays as gossiped.
    pub fn stop(&self, id: &str) {
        if let Some(node) = self.0.lock().unwrap().nodes.get_mut(id) {
            node.address = None;
        }
    }

    /// Every joining node finishes its join.
    pub fn finish_joins(&self) {
        for node in self.0.lock().unwrap().nodes.values_mut() {
            if node.membership == "joining" {
                node.membership = "normal".into();
            }
        }
    }

    /// `id` finishes handing off its data.
    pub fn finish_leave(&self, id: &str) {
        let mut fleet = self.0.lock().unwrap();
        let node = fleet.nodes.get_mut(id).expect("known node");
        assert_eq!(node.membership, "leaving", "{id} is not leaving");
        node.membership = "left".into();
    }

    /// Membership of `id`.
    pub fn membership(&self, id: &str) -> Option<String> {
        self.0.lock().unwrap().nodes.get(id).map(|n| n.membership.clone())
    }

    /// Decommission requests received, as (address, node).
    pub fn decommissions(&self) -> Vec<(String, String)> {
        self.0.lock().unwrap().decommissions.clone()
    }

    /// Makes decommission requests get lost (acknowledged, never acted on) or not.
    pub fn lose_decommissions(&self, lose: bool) {
        self.0.lock().unwrap().lose_decommissions = lose;
    }

    /// Makes every admin API silent (`true`) or answering.
    pub fn silence_all(&self, silent: bool) {
        let mut fleet = self.0.lock().unwrap();
        fleet.silent = if silent { fleet.nodes.keys().cloned().collect() } else { BTreeSet::new() };
    }

    /// The credentials of every status call so far.
    pub fn callers(&self) -> Vec<Caller> {
        self.0.lock().unwrap().callers.clone()
    }

    fn at(fleet: &Fleet, address: &str) -> Result<String, AdminError> {
        fleet
            .nodes
            .iter()
            .find(|(id, n)| n.address.as_deref() == Some(address) && !fleet.silent.contains(*id))
            .map(|(id, _)| id.clone())
            .ok_or_else(|| AdminError::Connect {
                address: address.into(),
                message: "connection refused".into(),
            })
    }
}

impl NodeAdmin for FakeNodes {
    fn status(
        &self,
        access: &Access,
        address: &str,
    ) -> BoxFuture<'static, Result<StatusResponse, AdminError>> {
        let mut fleet = self.0.lock().unwrap();
        let credentials = &access.credentials;
        fleet.callers.push(Caller {
            ca_pem: credentials.ca_pem.clone(),
            cert_pem: credentials.identity.as_ref().map(|(cert, _)| cert.clone()),
            token: credentials.token.clone(),
            server_name: access.server_name.clone(),
        });
        let result = Self::at(&fleet, address).map(|me| StatusResponse {
            node_id: me.clone(),
            cluster: "demo.default".into(),
            n: 3,
            r: 2,
            w: 2,
            partitions: 256,
            nodes: fleet
                .nodes
                .iter()
                .map(|(id, n)| NodeStatus {
                    id: id.clone(),
                    zone: n.zone.clone(),
                    address: n.address.clone().unwrap_or_default(),
                    weight: 1,
                    reachable: n.address.is_some(),
                    is_self: *id == me,
                    membership: Membership::parse(&n.membership).map_or(0, |m| m.to_proto() as i32),
                    ..NodeStatus::default()
                })
                .collect(),
            ..StatusResponse::default()
        });
        Box::pin(async move { result })
    }

    fn decommission(
        &self,
        _access: &Access,
        address: &str,
        node_id: &str,
        _force: bool,
    ) -> BoxFuture<'static, Result<DecommissionResponse, AdminError>> {
        let mut fleet = self.0.lock().unwrap();
        let result = Self::at(&fleet, address).and_then(|_| {
            fleet.decommissions.push((address.into(), node_id.into()));
            let lose = fleet.lose_decommissions;
            let node = fleet.nodes.get_mut(node_id).ok_or_else(|| AdminError::Call {
                address: address.into(),
                call: "Decommission",
                status: Box::new(tonic::Status::not_found(format!("no member {node_id}"))),
            })?;
            if !lose && (node.membership == "normal" || node.membership == "joining") {
                node.membership = "leaving".into();
            }
            let state = if lose { "leaving" } else { node.membership.as_str() };
            let state = Membership::parse(state).map_or(0, |m| m.to_proto() as i32);
            Ok(DecommissionResponse { node_id: node_id.into(), state })
        });
        Box::pin(async move { result })
    }
}

/// Plays Kubernetes' part for the StatefulSets in namespace `default`: creates each missing pod
/// (with an IP, its node process started) and its volume, deletes pods above the replicas (their
/// node process stops), turns pods Ready exactly when their node is a normal member, and
/// updates the StatefulSets' status. Pods are created with the revision of their StatefulSet's
/// template (`controller-revision-hash`) and keep it, as with the `OnDelete` strategy. Volumes are left alone: deleting them is the operator's job.
pub fn simulate_kubernetes(server: &FakeApiServer, nodes: &FakeNodes) {
    const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets";
    const PODS: &str = "/api/v1/namespaces/default/pods";
    const PVCS: &str = "/api/v1/namespaces/default/persistentvolumeclaims";
    let statefulsets: Vec<Value> = server.list(STS);
    let pods: Vec<Value> = server.list(PODS);
    let mut wanted = BTreeSet::new();
    for sts in &statefulsets {
        let name = sts["metadata"]["name"].as_str().unwrap();
        let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1);
        let mut labels = sts["spec"]["template"]["metadata"]["labels"].clone();
        let zone = labels["dynamokv.io/zone"].as_str().unwrap().to_string();
        // The revision of the template, as the StatefulSet controller names it.
        let template = serde_json::to_string(&sts["spec"]["template"]).unwrap();
        let hash = template.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let revision = format!("{name}-{:x}", hash & 0xff_ffff);
        labels[crate::render::REVISION_LABEL] = json!(revision);
        let mut ready = 0;
        for ordinal in 0..replicas {
            let pod = format!("{name}-{ordinal}");
            wanted.insert(pod.clone());
            let path = format!("{PODS}/{pod}");
            let mut object: Value = match server.get(&path) {
                Some(o) => o,
                None => {
                    let ip = {
                        let mut state = server.0.lock().unwrap();
                        state.uid += 1;
                        format!("10.1.{}.{}", state.uid / 250, state.uid % 250 + 1)
                    };
                    nodes.start(&pod, &zone, &format!("{ip}:7071"));
                    let claim = format!("data-{pod}");
                    if server.get::<Value>(&format!("{PVCS}/{claim}")).is_none() {
                        let template = &sts["spec"]["volumeClaimTemplates"][0];
                        let size = template["spec"]["resources"]["requests"]["storage"].clone();
                        server.create(
                            PVCS,
                            &json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": claim, "labels": template["metadata"]["labels"]},
                            "spec": template["spec"],
                            "status": {"phase": "Bound", "capacity": {"storage": size}}}),
                        );
                    }
                    server.create(
                        PODS,
                        &json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod, "labels": labels},
                        "status": {"podIP": ip}}),
                    );
                    server.get(&path).unwrap()
                }
            };
            let is_ready = nodes.membership(&pod).as_deref() == Some("normal");
            ready += i64::from(is_ready);
            object["status"]["conditions"] =
                json!([{"type": "Ready", "status": if is_ready { "True" } else { "False" }}]);
            server.put(&path, &object);
        }
        let mut updated = sts.clone();
        updated["status"] = json!({"replicas": replicas, "readyReplicas": ready,
                                   "observedGeneration": sts["metadata"]["generation"],
                                   "updateRevision": revision});
        server.put(&format!("{STS}/{name}"), &updated);
    }
    // The resizer: a claim that asks for more than it has grows (every class expands here).
    for mut pvc in server.list::<Value>(PVCS) {
        let requested = pvc["spec"]["resources"]["requests"]["storage"].clone();
        if !requested.is_null() && pvc["status"]["capacity"]["storage"] != requested {
            pvc["status"]["capacity"]["storage"] = requested;
            let name = pvc["metadata"]["name"].as_str().unwrap().to_string();
            server.put(&format!("{PVCS}/{name}"), &pvc);
        }
    }
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap();
        if !wanted.contains(name) {
            server.remove(&format!("{PODS}/{name}"));
            nodes.stop(name);
        }
    }
}
