//! The `DynamoCluster` custom resource (group `dynamokv.io`, version `v1alpha1`): its spec with
//! defaults and schema validation (CEL rules carried in `x-kubernetes-validations`), and its
//! status. `validate` mirrors every CEL rule on the Rust side, with the same messages.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration,
};
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator defines.
pub const GROUP: &str = "dynamokv.io";
/// API version of `DynamoCluster`.
pub const VERSION: &str = "v1alpha1";

/// Most zones a cluster may have. Bounds the cost of the CEL rules that walk the zone list.
pub const MAX_ZONES: usize = 32;
/// Most replicas (nodes) one zone may have.
pub const MAX_REPLICAS_PER_ZONE: i32 = 1000;
/// Longest `<cluster>-<zone>` StatefulSet name: Kubernetes puts the pod name plus a hash in a
/// 63-character label (`controller-revision-hash`), which leaves 52 for the StatefulSet name.
pub const MAX_STATEFULSET_NAME: usize = 52;
/// The engine of a spec in CEL, `rocksdb` (the node's default) when unset.
const ENGINE_OF_SELF: &str =
    "(has(self.nodeConfig) && has(self.nodeConfig.engine) ? self.nodeConfig.engine : 'rocksdb')";
/// The engine of the old spec in CEL.
const ENGINE_OF_OLD: &str = "(has(oldSelf.nodeConfig) && has(oldSelf.nodeConfig.engine) ? oldSelf.nodeConfig.engine : 'rocksdb')";
/// Partition counts the node accepts: powers of two in 1..=65536.
pub const PARTITION_CHOICES: &str =
    "[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]";

/// Messages of the validation rules, shared by the CEL rules in the CRD and by [`validate`]
/// so a user sees the same words whichever catches the problem.
pub mod messages {
    /// `replication.r` is larger than `replication.factor`.
    pub const R_LE_N: &str = "replication.r must be between 1 and replication.factor";
    /// `replication.w` is larger than `replication.factor`.
    pub const W_LE_N: &str = "replication.w must be between 1 and replication.factor";
    /// Fewer nodes than replicas per key.
    pub const N_LE_TOTAL: &str =
        "replication.factor must not exceed the total replicas of all zones: add replicas or lower the factor";
    /// Two zones share a name.
    pub const UNIQUE_ZONES: &str = "zone names must be unique";
    /// Partitions changed after creation.
    pub const PARTITIONS_IMMUTABLE: &str =
        "partitions is immutable: it is fixed when the cluster is created (create a new cluster to change it)";
    /// Partitions is not a power of two.
    pub const PARTITIONS_POWER_OF_TWO: &str =
        "partitions must be a power of two between 1 and 65536 (e.g. 256 or 1024)";
    /// Fewer partitions than nodes.
    pub const PARTITIONS_GE_NODES: &str =
        "partitions must be at least the total replicas of all zones (every node owns a partition)";
    /// The storage engine changed after creation.
    pub const ENGINE_IMMUTABLE: &str =
        "nodeConfig.engine is immutable: switching a live cluster's engine would start every node empty and lose every replica (create a new cluster with the other engine and copy the data)";
    /// The replication factor changed after creation.
    pub const FACTOR_IMMUTABLE: &str =
        "replication.factor is immutable: the nodes place every key on N replicas and cannot re-place existing data (create a new cluster with the new factor; r and w may change)";
    /// The volume size was lowered.
    pub const STORAGE_SHRINK: &str =
        "storage.size may only grow: a volume cannot shrink (keep the size, or create a new cluster with smaller volumes)";
    /// The StorageClass changed after creation.
    pub const STORAGE_CLASS_IMMUTABLE: &str =
        "storage.storageClassName is immutable: existing volumes cannot move to another class (create a new cluster)";
    /// `failure.forceRemoveAfter` is not a duration.
    pub const DURATION_FORMAT: &str =
        "failure.forceRemoveAfter must be a duration such as 90s, 5m or 1h30m (units h, m, s)";
    /// `tls.certificateLifetime` is not a duration or is too short.
    pub const LIFETIME_FORMAT: &str =
        "tls.certificateLifetime must be a duration of at least 2m such as 2160h, 720h or 90m (units h, m, s)";
    /// `tls.renewBefore` is not a duration.
    pub const RENEW_BEFORE_FORMAT: &str =
        "tls.renewBefore must be a duration of at least 1m such as 720h or 30m (units h, m, s)";
    /// `tls.renewBefore` is not shorter than the lifetime.
    pub const RENEW_BEFORE_LT_LIFETIME: &str =
        "tls.renewBefore must be shorter than tls.certificateLifetime, or every pass would issue a new certificate (and restart every node)";
    /// `<cluster>-<zone>` is too long to name a StatefulSet.
    pub const NAME_LENGTH: &str =
        "the cluster name plus a zone name must be at most 51 characters (they name the StatefulSet <cluster>-<zone>)";
}

/// A Dynamo cluster: zones of storage nodes (one StatefulSet per zone), with its replication
/// settings. Each zone is a Dynamo data center: every key's replicas are spread over zones
/// before a zone is repeated.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dynamokv.io",
    version = "v1alpha1",
    kind = "DynamoCluster",
    plural = "dynamoclusters",
    namespaced,
    status = "DynamoClusterStatus",
    shortname = "dc",
    shortname = "dynamo",
    category = "dynamo",
    derive = "PartialEq",
    doc = "A Dynamo key-value store cluster spread over zones",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"every node is ready and in the ring"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.readyNodes","description":"nodes that are ready (joined the ring)"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredNodes","description":"nodes asked for by the spec"}"#,
    printcolumn = r#"{"name":"Zones","type":"integer","jsonPath":".status.zoneCount","description":"zones (data centers)"}"#,
    printcolumn = r#"{"name":"Activity","type":"string","jsonPath":".status.conditions[?(@.type==\"Progressing\")].reason","description":"what the operator is doing"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.spec.zones.all(z, size(self.metadata.name) + size(z.name) <= 51)").message(messages::NAME_LENGTH)
)]
#[x_kube(
    validation = Rule::new("self.replication.factor <= self.zones.map(z, z.replicas).sum()").message(messages::N_LE_TOTAL),
    validation = Rule::new("self.zones.all(a, self.zones.exists_one(b, b.name == a.name))").message(messages::UNIQUE_ZONES),
    validation = Rule::new("self.partitions >= self.zones.map(z, z.replicas).sum()").message(messages::PARTITIONS_GE_NODES),
    validation = Rule::new(format!("{ENGINE_OF_SELF} == {ENGINE_OF_OLD}")).message(messages::ENGINE_IMMUTABLE)
)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterSpec {
    /// Container image of `dynamo-node`.
    #[serde(default = "default_image")]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The zones (Dynamo data centers), one StatefulSet each, named `<cluster>-<zone>`. Change a
    /// zone's replicas to add or remove nodes: the operator adds them one at a time and removes
    /// them by decommissioning (handing their data off) first.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub zones: Vec<ZoneSpec>,
    /// Replicas per key (N), replies per read (R) and acknowledgements per write (W).
    #[serde(default)]
    pub replication: Replication,
    /// Partitions of the ring (Q): a power of two, fixed when the cluster is created.
    #[serde(default = "default_partitions")]
    #[x_kube(
        validation = Rule::new(format!("self in {PARTITION_CHOICES}")).message(messages::PARTITIONS_POWER_OF_TWO),
        validation = Rule::new("self == oldSelf").message(messages::PARTITIONS_IMMUTABLE)
    )]
    pub partitions: i32,
    /// CPU and memory of each node's container.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    /// Each node's persistent volume. The size may grow (the operator expands every claim when
    /// the StorageClass allows it); the class is fixed at creation.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Node settings beyond those the operator derives; unset ones keep the node's defaults.
    #[serde(default, skip_serializing_if = "NodeConfigOverrides::is_empty")]
    pub node_config: NodeConfigOverrides,
    /// What happens to a node's volume when its zone is scaled down and when the cluster is
    /// deleted.
    #[serde(default)]
    pub persistent_volume_claim_retention_policy: PvcRetentionPolicy,
    /// Stops every change the operator would make (scaling, rollouts, removals, resizes) until
    /// set back to false; the status keeps being reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// How the operator treats nodes that are gone.
    #[serde(default, skip_serializing_if = "FailureSpec::is_default")]
    pub failure: FailureSpec,
    /// The nodes' certificate: issued by the operator from the cluster's own CA (default), or by
    /// cert-manager when `issuerRef` is set; its lifetime and when it is renewed.
    #[serde(default, skip_serializing_if = "TlsSpec::is_default")]
    pub tls: TlsSpec,
    /// Who may reach the nodes: the NetworkPolicy `<cluster>` the operator renders.
    #[serde(default, skip_serializing_if = "NetworkSpec::is_default")]
    pub network: NetworkSpec,
}

/// The nodes' certificate. One certificate (Secret `<cluster>-tls`) serves every node: its names
/// are the wildcard of the headless Service and the client Service's names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.renewBefore) || !self.certificateLifetime.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') || !self.renewBefore.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') || duration(self.renewBefore) < duration(self.certificateLifetime)").message(messages::RENEW_BEFORE_LT_LIFETIME)
)]
pub struct TlsSpec {
    /// A cert-manager issuer (Issuer in the cluster's namespace, or ClusterIssuer) that issues
    /// the nodes' certificate instead of the operator. It must be a CA-type issuer: the Secret it
    /// writes must hold the CA in `ca.crt`, which the nodes and the operator verify peers with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// How long the nodes' certificate is valid. A duration: `2160h` (90 days, default), `90m`.
    #[serde(default = "default_certificate_lifetime")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('2m')").message(messages::LIFETIME_FORMAT))]
    pub certificate_lifetime: String,
    /// How long before it expires the certificate is renewed (and every node restarted onto it,
    /// one at a time). Default: a third of the lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != '' && duration(self) >= duration('1m')").message(messages::RENEW_BEFORE_FORMAT))]
    pub renew_before: Option<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            issuer_ref: None,
            certificate_lifetime: default_certificate_lifetime(),
            renew_before: None,
        }
    }
}

impl TlsSpec {
    /// True when every setting has its default.
    pub fn is_default(&self) -> bool {
        self == &TlsSpec::default()
    }

    /// The certificate's lifetime; `None` when it is not a duration.
    pub fn lifetime(&self) -> Option<std::time::Duration> {
        parse_duration(&self.certificate_lifetime)
    }

    /// How long before expiry it is renewed: `renewBefore`, else a third of the lifetime.
    pub fn renew_before(&self) -> Option<std::time::Duration> {
        match &self.renew_before {
            Some(text) => parse_duration(text),
            None => self.lifetime().map(|l| l / 3),
        }
    }
}

fn default_certificate_lifetime() -> String {
    "2160h".into()
}

/// A cert-manager issuer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer or ClusterIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace, default) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// API group of the issuer (default `cert-manager.io`; another for external issuers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Kind of a cert-manager issuer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IssuerKind {
    /// An Issuer in the cluster's namespace.
    #[default]
    Issuer,
    /// A cluster-wide ClusterIssuer.
    ClusterIssuer,
}

impl IssuerKind {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// Who may reach the nodes' ports (rendered as the NetworkPolicy `<cluster>`): the peer port
/// only from the cluster's own pods and the operator, the health port from anywhere (kubelet
/// probes), and the client port as `clientFrom` says.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Who may reach the client port (7070), as NetworkPolicy peers (`podSelector`,
    /// `namespaceSelector`, `ipBlock`). Unset: every pod of the cluster's namespace. An empty
    /// list: nobody (unless another NetworkPolicy allows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_from: Option<Vec<NetworkPolicyPeer>>,
}

impl NetworkSpec {
    /// True when every setting has its default.
    pub fn is_default(&self) -> bool {
        self == &NetworkSpec::default()
    }
}

/// How the operator treats nodes that are gone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailureSpec {
    /// How long a node must have been unreachable (seen down by every node the operator can
    /// reach, and not answering its own admin API) before a scale-down or a replacement removes
    /// it by force, without its cooperation. A duration: `90s`, `5m`, `1h30m`.
    #[serde(default = "default_force_remove_after")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+h)?([0-9]+m)?([0-9]+s)?$') && self != ''").message(messages::DURATION_FORMAT))]
    pub force_remove_after: String,
    /// Replace, without being asked, a node whose pod is stuck Pending because its volume is
    /// bound to a Kubernetes node that no longer exists: its member is removed by force, its
    /// claim and pod are deleted, and the new pod joins empty and receives its partitions. Off:
    /// annotate the pod `dynamokv.io/replace=true` to do it by hand.
    #[serde(default)]
    pub replace_lost_volumes: bool,
}

impl Default for FailureSpec {
    fn default() -> Self {
        FailureSpec {
            force_remove_after: default_force_remove_after(),
            replace_lost_volumes: false,
        }
    }
}

impl FailureSpec {
    /// True when every setting has its default.
    pub fn is_default(&self) -> bool {
        self == &FailureSpec::default()
    }

    /// `force_remove_after` as a duration; `None` when it is not one (see
    /// [`parse_duration`]).
    pub fn force_remove_after(&self) -> Option<std::time::Duration> {
        parse_duration(&self.force_remove_after)
    }
}

fn default_force_remove_after() -> String {
    "5m".into()
}

/// Parses `1h30m`, `5m`, `90s`: hours, minutes and seconds, each optional, in that order, at
/// least one. The CRD's pattern accepts the same strings.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut seconds = 0u64;
    let mut rest = text;
    let mut last_unit = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        let (unit, rank) = match &rest[digits..digits + 1] {
            "h" => (3600, 1),
            "m" => (60, 2),
            "s" => (1, 3),
            _ => return None,
        };
        if rank <= last_unit {
            return None;
        }
        last_unit = rank;
        seconds = seconds.checked_add(value.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(std::time::Duration::from_secs(seconds))
}

/// One zone: a Dynamo data center, run as one StatefulSet pinned to a Kubernetes zone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneSpec {
    /// Zone name (a DNS label). Names the StatefulSet `<cluster>-<zone>` and is the node's zone.
    #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Nodes in this zone.
    #[serde(default = "default_zone_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Where this zone's pods run. Unset: `topology.kubernetes.io/zone: <name>`; set it (even to
    /// `{}`) to replace that default, e.g. when Kubernetes zones are named differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity of this zone's pods, used as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Tolerations of this zone's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Replication: N replicas per key, R replies per read, W acknowledgements per write. N is
/// fixed at creation; R and W may change.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.r <= self.factor").message(messages::R_LE_N),
    validation = Rule::new("self.w <= self.factor").message(messages::W_LE_N),
    validation = Rule::new("self.factor == oldSelf.factor").message(messages::FACTOR_IMMUTABLE)
)]
pub struct Replication {
    /// Replicas of each key (Dynamo's N), `factor` in the resource: a bare `n` is read as
    /// `false` by the YAML 1.1 parser kubectl and helm use.
    #[serde(rename = "factor")]
    #[schemars(range(min = 1, max = 16))]
    pub n: i32,
    /// Replies a read waits for (R), 1..=N.
    #[schemars(range(min = 1, max = 16))]
    pub r: i32,
    /// Acknowledgements a write waits for (W), 1..=N.
    #[schemars(range(min = 1, max = 16))]
    pub w: i32,
}

impl Default for Replication {
    fn default() -> Self {
        Replication { n: 3, r: 2, w: 2 }
    }
}

/// Image pull policy of the node container.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node does not have the image.
    #[default]
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Each node's persistent volume, mounted at the node's data directory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.size == oldSelf.size || quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0").message(messages::STORAGE_SHRINK),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message(messages::STORAGE_CLASS_IMMUTABLE)
)]
pub struct StorageSpec {
    /// Size of each node's volume. May grow, never shrink: the operator expands every claim
    /// (when the StorageClass allows expansion) without restarting a node.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the volumes; unset uses the cluster's default class. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec { size: default_storage_size(), storage_class_name: None }
    }
}

/// Storage engine of the nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Durable, on the node's volume.
    #[default]
    Rocksdb,
    /// In memory: lost when the pod restarts. For tests and caches only.
    Memory,
}

/// Node settings the user may override; each unset one keeps the node's own default.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfigOverrides {
    /// Storage engine (node default: rocksdb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<Engine>,
    /// How long a coordinator waits for its quorum, in milliseconds (node default: 2000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub request_timeout_ms: Option<i64>,
    /// fsync the write-ahead log on every write (node default: false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_writes: Option<bool>,
    /// Request size limits.
    #[serde(default, skip_serializing_if = "LimitsOverrides::is_empty")]
    pub limits: LimitsOverrides,
}

impl NodeConfigOverrides {
    /// True when nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self == &NodeConfigOverrides::default()
    }
}

/// Request size limits of the nodes; each unset one keeps the node's default.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LimitsOverrides {
    /// Longest key, bytes (node default: 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_key_bytes: Option<i64>,
    /// Largest value, bytes (node default: 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_value_bytes: Option<i64>,
    /// Most concurrent values (siblings) per key (node default: 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_siblings: Option<i64>,
    /// Largest sum of a key's sibling values, bytes (node default: 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_object_bytes: Option<i64>,
}

impl LimitsOverrides {
    /// True when nothing is overridden.
    pub fn is_empty(&self) -> bool {
        self == &LimitsOverrides::default()
    }
}

/// What happens to a volume when it is no longer used.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetentionPolicy {
    /// Keep the PersistentVolumeClaim (and its data).
    Retain,
    /// Delete the PersistentVolumeClaim.
    Delete,
}

impl RetentionPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionPolicy::Retain => "Retain",
            RetentionPolicy::Delete => "Delete",
        }
    }
}

/// Volume retention, as a StatefulSet's `persistentVolumeClaimRetentionPolicy`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionPolicy {
    /// A node removed by scaling down has handed its data off first, so its volume only holds
    /// stale copies: `Delete` (default) removes it once the pod is gone; `Retain` keeps it, and a
    /// node later added at the same ordinal starts from it.
    #[serde(default = "default_when_scaled")]
    pub when_scaled: RetentionPolicy,
    /// On deleting the cluster: `Retain` (default) keeps every volume (and the cluster Secret),
    /// `Delete` removes them with the cluster.
    #[serde(default = "default_when_deleted")]
    pub when_deleted: RetentionPolicy,
}

impl Default for PvcRetentionPolicy {
    fn default() -> Self {
        PvcRetentionPolicy {
            when_scaled: default_when_scaled(),
            when_deleted: default_when_deleted(),
        }
    }
}

/// Registry and organisation of the project's images. Their tag is the crate's version, set once
/// in the workspace's `Cargo.toml`; `images/refs` prints the same references for the scripts,
/// the chart's `values.yaml` and `appVersion` follow them (`operator/tests/packaging.rs`).
pub const IMAGE_REGISTRY: &str = "ghcr.io/dynamokv";

/// The node image of this release: the default of `spec.image`.
pub fn default_node_image() -> String {
    format!("{IMAGE_REGISTRY}/dynamo-node:{}", env!("CARGO_PKG_VERSION"))
}

/// The operator image of this release (the chart's `image.repository` and `appVersion`).
pub fn default_operator_image() -> String {
    format!("{IMAGE_REGISTRY}/dynamo-operator:{}", env!("CARGO_PKG_VERSION"))
}

fn default_image() -> String {
    default_node_image()
}

fn default_partitions() -> i32 {
    256
}

fn default_zone_replicas() -> i32 {
    1
}

fn default_storage_size() -> Quantity {
    Quantity("10Gi".into())
}

fn default_when_scaled() -> RetentionPolicy {
    RetentionPolicy::Delete
}

fn default_when_deleted() -> RetentionPolicy {
    RetentionPolicy::Retain
}

/// Default container resources: enough for a small node; set `resources` for real loads.
pub fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([("cpu".into(), q("250m")), ("memory".into(), q("512Mi"))])),
        limits: Some(BTreeMap::from([("memory".into(), q("1Gi"))])),
        ..ResourceRequirements::default()
    }
}

impl DynamoClusterSpec {
    /// A spec with the given zones and every other setting at its default.
    pub fn with_zones(zones: Vec<ZoneSpec>) -> Self {
        DynamoClusterSpec {
            image: default_image(),
            image_pull_policy: PullPolicy::default(),
            image_pull_secrets: Vec::new(),
            zones,
            replication: Replication::default(),
            partitions: default_partitions(),
            resources: default_resources(),
            storage: StorageSpec::default(),
            node_config: NodeConfigOverrides::default(),
            persistent_volume_claim_retention_policy: PvcRetentionPolicy::default(),
            paused: false,
            failure: FailureSpec::default(),
            tls: TlsSpec::default(),
            network: NetworkSpec::default(),
        }
    }

    /// Total nodes asked for, over every zone.
    pub fn total_replicas(&self) -> i32 {
        self.zones.iter().map(|z| z.replicas).sum()
    }

    /// The zone named `name`, if the spec has it.
    pub fn zone(&self, name: &str) -> Option<&ZoneSpec> {
        self.zones.iter().find(|z| z.name == name)
    }
}

impl ZoneSpec {
    /// A zone with default placement (pinned to the Kubernetes zone of the same name).
    pub fn new(name: &str, replicas: i32) -> Self {
        ZoneSpec {
            name: name.into(),
            replicas,
            node_selector: None,
            affinity: None,
            tolerations: Vec::new(),
        }
    }
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every node ready and in the ring), `Progressing` (nodes being added, removed or
    /// rolled) and `Degraded` (invalid spec, unreachable nodes, a failed step), each with a reason
    /// and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Nodes whose pod is Ready, which means the node has joined the ring.
    #[serde(default)]
    pub ready_nodes: i32,
    /// Nodes asked for by the spec, over every zone.
    #[serde(default)]
    pub desired_nodes: i32,
    /// Zones in the spec.
    #[serde(default)]
    pub zone_count: i32,
    /// Per-zone replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<ZoneStatus>,
    /// Ring members as the nodes report them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// Partition transfers under way (joins and decommissions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance: Option<RebalanceStatus>,
    /// The scale-down in progress: the node being decommissioned before its StatefulSet shrinks.
    /// A record for people; the operator re-derives it on every pass from the spec, the
    /// StatefulSets and the nodes' own reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decommission: Option<DecommissionStatus>,
    /// The rolling change of the pod template (new image, settings, resources, or a restart
    /// asked for with `dynamokv.io/restartedAt`): one pod at a time across every zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Volume expansion after `storage.size` grew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// The nodes' certificate: who issued it, when it expires and when it is renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsStatus>,
}

/// The nodes' certificate (Secret `<cluster>-tls`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    /// The Secret holding it (`ca.crt`, `tls.crt`, `tls.key`).
    pub secret_name: String,
    /// `operator` (the cluster CA in `<cluster>-ca`) or the cert-manager issuer (`Issuer/<name>`,
    /// `ClusterIssuer/<name>`).
    pub issuer: String,
    /// When the certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the operator renews it (RFC 3339); cert-manager renews its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
    /// SHA-256 (first 16 hex digits) of the certificate the pods are rolled onto (the pod
    /// template annotation `dynamokv.io/tls-hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A rolling change of the pod template.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The revision every pod is moving to: the StatefulSets' update revisions, one per zone,
    /// joined by `,` in spec order.
    pub target_revision: String,
    /// Pods running the target revision.
    pub updated_pods: i32,
    /// Pods of the cluster.
    pub total_pods: i32,
    /// The pod being restarted now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarting: Option<String>,
    /// What the rollout waits for, or that it is done.
    pub message: String,
}

/// Expansion of the node volumes to `storage.size`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    /// The size asked for.
    pub size: String,
    /// Claims whose capacity has reached it.
    pub expanded_claims: i32,
    /// Claims of the cluster.
    pub total_claims: i32,
    /// Where it stands.
    pub message: String,
}

/// Replicas of one zone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ZoneStatus {
    /// Zone name.
    pub name: String,
    /// Replicas the spec asks for.
    pub desired_replicas: i32,
    /// Replicas of the zone's StatefulSet now (moves one node at a time towards the desired).
    pub replicas: i32,
    /// Pods that are Ready (joined the ring).
    pub ready_replicas: i32,
}

/// One ring member.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Node id (the pod name).
    pub id: String,
    /// Zone of the node.
    pub zone: String,
    /// `joining`, `normal`, `leaving` or `left`.
    pub membership: String,
    /// Whether the node answered its admin API on this pass.
    pub reachable: bool,
}

/// Progress of partition transfers, summed over what the nodes report.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RebalanceStatus {
    /// Partitions still to move before the ring is balanced (the largest any node reports).
    pub pending_partitions: i64,
    /// Transfers not yet done.
    pub active_transfers: i64,
    /// Transfers done.
    pub done_transfers: i64,
    /// Keys sent so far by the transfers.
    pub keys_sent: i64,
    /// Bytes sent so far by the transfers.
    pub bytes_sent: i64,
}

/// A node being removed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DecommissionStatus {
    /// Zone being scaled down.
    pub zone: String,
    /// Node (pod) being decommissioned: the zone's highest ordinal.
    pub node: String,
    /// Where it stands: `requested`, `leaving`, `left` or `waiting`.
    pub state: String,
    /// Details for people.
    pub message: String,
}

/// The CustomResourceDefinition as YAML, as committed in `crds/dynamoclusters.yaml`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml =
        serde_yaml::to_string(&DynamoCluster::crd()).expect("the CRD always serializes to YAML");
    format!(
        "# Generated by `cargo run -p dynamo-operator --bin crdgen`; do not edit.\n\
         # The same file is charts/dynamo-operator/crds/dynamoclusters.yaml.\n{yaml}"
    )
}

/// `namespace/name` of a cluster, for logs and messages.
pub fn display_name(cluster: &DynamoCluster) -> String {
    use kube::ResourceExt;
    format!("{}/{}", cluster.namespace().unwrap_or_default(), cluster.name_any())
}

#[cfg(test)]
mod tests {
    /// Plain scalars that YAML 1.1 (go-yaml v2, under kubectl's and helm's sigs.k8s.io/yaml)
    /// reads as booleans where YAML 1.2 (serde_yaml) reads strings: as a key or list item in a
    /// manifest they silently become `true`/`false`.
    const YAML11_BOOLEANS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];

    /// Lines of `yaml` whose key or list item is one of [`YAML11_BOOLEANS`].
    fn yaml11_booleans(yaml: &str) -> Vec<String> {
        yaml.lines()
            .filter(|line| {
                let t = line.trim_start();
                let t = t.strip_prefix("- ").unwrap_or(t);
                let token = t.split(':').next().unwrap_or_default().trim();
                YAML11_BOOLEANS.contains(&token)
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn manifests_mean_the_same_to_yaml_1_1_readers() {
        assert_eq!(yaml11_booleans("required:\n- n\n- r\nn: 3\non: x\nname: n\n").len(), 3);
        assert_eq!(yaml11_booleans(&crd_yaml()), Vec::<String>::new(), "rename these fields");
        let example = include_str!("../../examples/cluster.yaml");
        assert_eq!(yaml11_booleans(example), Vec::<String>::new());
    }

    use kube::core::cel::{validate_cel, validate_cel_update};
    use kube::CustomResourceExt;

    use super::*;

    const REGENERATE: &str =
        "run cargo run -p dynamo-operator --bin crdgen > crds/dynamoclusters.yaml \
        (and copy it to charts/dynamo-operator/crds/)";

    fn example() -> DynamoCluster {
        let mut c = DynamoCluster::new(
            "demo",
            DynamoClusterSpec::with_zones(vec![
                ZoneSpec::new("zone-a", 1),
                ZoneSpec::new("zone-b", 1),
                ZoneSpec::new("zone-c", 1),
            ]),
        );
        c.metadata.namespace = Some("default".into());
        c
    }

    fn rejected(c: &DynamoCluster) -> String {
        validate_cel(c).expect_err("the CEL rules should reject this").to_string()
    }

    #[test]
    fn committed_crd_is_fresh() {
        let rendered = crd_yaml();
        for path in
            ["../crds/dynamoclusters.yaml", "../charts/dynamo-operator/crds/dynamoclusters.yaml"]
        {
            let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(committed == rendered, "{} is stale: {REGENERATE}", file.display());
        }
    }

    #[test]
    fn crd_has_the_names_columns_and_subresources_users_rely_on() {
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        assert_eq!(crd["metadata"]["name"], "dynamoclusters.dynamokv.io");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["shortNames"], serde_json::json!(["dc", "dynamo"]));
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, ["Ready", "Nodes", "Desired", "Zones", "Activity", "Age"]);
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["zones"]));
        assert_eq!(spec["properties"]["partitions"]["default"], 256);
        assert_eq!(
            spec["properties"]["replication"]["default"],
            serde_json::json!({"factor": 3, "r": 2, "w": 2})
        );
        assert_eq!(spec["properties"]["zones"]["minItems"], 1);
        assert_eq!(spec["properties"]["zones"]["x-kubernetes-list-type"], "map");
        let rules =
            serde_json::to_string(&spec["properties"]["partitions"]["x-kubernetes-validations"])
                .unwrap();
        assert!(rules.contains("self == oldSelf"), "{rules}");
    }

    #[test]
    fn cel_accepts_the_example() {
        validate_cel(&example()).unwrap();
        validate_cel_update(&example(), &example()).unwrap();
    }

    #[test]
    fn cel_bounds_r_and_w_by_n() {
        let mut c = example();
        c.spec.replication.r = 4;
        assert!(rejected(&c).contains(messages::R_LE_N));
        let mut c = example();
        c.spec.replication.w = 4;
        assert!(rejected(&c).contains(messages::W_LE_N));
    }

    #[test]
    fn cel_bounds_n_by_the_nodes() {
        let mut c = example();
        c.spec.zones[0].replicas = 0;
        assert!(rejected(&c).contains(messages::N_LE_TOTAL));
    }

    #[test]
    fn cel_rejects_duplicate_zones() {
        let mut c = example();
        c.spec.zones[2].name = "zone-a".into();
        assert!(rejected(&c).contains(messages::UNIQUE_ZONES));
    }

    #[test]
    fn cel_wants_a_power_of_two_partitions_covering_the_nodes() {
        let mut c = example();
        c.spec.partitions = 100;
        assert!(rejected(&c).contains(messages::PARTITIONS_POWER_OF_TWO));
        c.spec.partitions = 2;
        assert!(rejected(&c).contains(messages::PARTITIONS_GE_NODES));
        c.spec.partitions = 1024;
        validate_cel(&c).unwrap();
    }

    #[test]
    fn cel_keeps_what_would_destroy_data_immutable() {
        let old = example();
        let mut new = example();
        new.spec.partitions = 1024;
        let err = validate_cel_update(&new, &old).unwrap_err().to_string();
        assert!(err.contains(messages::PARTITIONS_IMMUTABLE), "{err}");
        let mut new = example();
        new.spec.storage.storage_class_name = Some("fast".into());
        let err = validate_cel_update(&new, &old).unwrap_err().to_string();
        assert!(err.contains(messages::STORAGE_CLASS_IMMUTABLE), "{err}");
        let mut new = example();
        new.spec.replication.n = 5;
        new.spec.zones[0].replicas = 3;
        let err = validate_cel_update(&new, &old).unwrap_err().to_string();
        assert!(err.contains(messages::FACTOR_IMMUTABLE), "{err}");
        let mut new = example();
        new.spec.node_config.engine = Some(Engine::Memory);
        let err = validate_cel_update(&new, &old).unwrap_err().to_string();
        assert!(err.contains(messages::ENGINE_IMMUTABLE), "{err}");
        // Setting the default explicitly changes nothing.
        new.spec.node_config.engine = Some(Engine::Rocksdb);
        validate_cel_update(&new, &old).unwrap();
        let mut new = example();
        new.spec.replication.r = 3;
        new.spec.replication.w = 1;
        validate_cel_update(&new, &old).unwrap();
        let mut new = example();
        new.spec.zones[0].replicas = 5;
        validate_cel_update(&new, &old).unwrap();
    }

    #[test]
    fn durations_parse_as_the_crd_pattern_accepts_them() {
        use std::time::Duration;
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h0m5s"), Some(Duration::from_secs(3605)));
        for bad in ["", "5", "m", "5x", "30s5m", "5m5m", "-5m", "5 m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        for (text, ok) in [("15s", true), ("1h30m", true), ("5", false), ("30s5m", false)] {
            let mut c = example();
            c.spec.failure.force_remove_after = text.into();
            assert_eq!(validate_cel(&c).is_ok(), ok, "CEL on {text}");
            let rust = crate::validate::validate("demo", &c.spec);
            assert_eq!(rust.is_ok(), ok, "Rust on {text}: {rust:?}");
        }
    }

    #[test]
    fn certificate_durations_are_checked_alike_by_cel_and_rust() {
        for (lifetime, renew, message) in [
            ("2160h", None, None),
            ("3m", Some("2m"), None),
            ("90m", Some("30m"), None),
            ("1m", None, Some(messages::LIFETIME_FORMAT)),
            ("90 days", None, Some(messages::LIFETIME_FORMAT)),
            ("3m", Some("3m"), Some(messages::RENEW_BEFORE_LT_LIFETIME)),
            ("3m", Some("1h"), Some(messages::RENEW_BEFORE_LT_LIFETIME)),
            ("3m", Some("30s"), Some(messages::RENEW_BEFORE_FORMAT)),
            ("3m", Some("x"), Some(messages::RENEW_BEFORE_FORMAT)),
        ] {
            let mut c = example();
            c.spec.tls.certificate_lifetime = lifetime.into();
            c.spec.tls.renew_before = renew.map(Into::into);
            let cel = validate_cel(&c);
            let rust = crate::validate::validate("demo", &c.spec);
            match message {
                None => {
                    assert!(cel.is_ok(), "CEL on {lifetime}/{renew:?}: {cel:?}");
                    assert!(rust.is_ok(), "Rust on {lifetime}/{renew:?}: {rust:?}");
                }
                Some(m) => {
                    let cel = cel.expect_err("CEL rejects").to_string();
                    assert!(cel.contains(m), "CEL on {lifetime}/{renew:?}: {cel}");
                    let rust = rust.expect_err("Rust rejects").to_string();
                    assert!(rust.contains(m), "Rust on {lifetime}/{renew:?}: {rust}");
                }
            }
        }
        assert_eq!(
            TlsSpec::default().renew_before(),
            Some(std::time::Duration::from_secs(720 * 3600))
        );
    }

    #[test]
    fn cel_limits_the_statefulset_name() {
        let mut c = example();
        // 46 + "zone-a" is 52 characters: one too many.
        c.metadata.name = Some("x".repeat(46));
        assert!(rejected(&c).contains(messages::NAME_LENGTH));
        c.metadata.name = Some("x".repeat(45));
        validate_cel(&c).unwrap();
    }

    #[test]
    fn rust_validation_agrees_with_cel_on_these_cases() {
        let mut cases = Vec::new();
        let mut c = example();
        c.spec.replication.r = 4;
        cases.push(c);
        let mut c = example();
        c.spec.zones[0].replicas = 0;
        cases.push(c);
        let mut c = example();
        c.spec.zones[2].name = "zone-a".into();
        cases.push(c);
        let mut c = example();
        c.spec.partitions = 96;
        cases.push(c);
        cases.push(example());
        for c in cases {
            let rust = crate::validate::validate("demo", &c.spec).is_ok();
            let cel = validate_cel(&c).is_ok();
            assert_eq!(rust, cel, "{:?}", c.spec);
        }
    }
}
