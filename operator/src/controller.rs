//! The controller: watches DynamoClusters and the objects they own, and on every pass observes
//! the cluster (StatefulSets, pods, volumes, the nodes' admin API), plans one step
//! ([`crate::scaling`]), applies the rendered objects with server-side apply under one field
//! manager, makes the admin call the plan asks for, deletes what the plan says, records events,
//! and writes the status.

mod security;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, PropagationPolicy,
};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, Predicate, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{Access, Membership, NodeAdmin, RingView};
use crate::crd::{display_name, DynamoCluster, DynamoClusterStatus};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::render::{self, RenderOptions, MANAGER};
use crate::scaling::{
    self, Observed, ObservedPod, ObservedPvc, ObservedStatefulSet, Progress, RemovedZone,
};
use crate::status;
use crate::validate::validate;
pub use security::{AdminIdentities, Secured, ADMIN_CERT_LIFETIME};

/// Next pass while something is under way (a node joining or leaving, pods rolling): membership
/// changes are not Kubernetes events, so the operator polls the nodes this often.
pub const BUSY_REQUEUE: Duration = Duration::from_secs(5);
/// Next pass of a settled cluster, to refresh the ring status.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(60);
/// Next pass after a failed one.
pub const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// What every pass needs, shared behind an `Arc`.
pub struct Context {
    /// Kubernetes API client.
    pub client: Client,
    /// Publishes events on the DynamoClusters.
    pub recorder: Recorder,
    /// The nodes' admin API.
    pub admin: Arc<dyn NodeAdmin>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Rendering settings from the operator's flags.
    pub options: RenderOptions,
    /// The admin certificates the operator issued itself, per cluster.
    pub admin_identities: AdminIdentities,
}

impl Context {
    /// A context whose events are reported as `dynamo-operator` from `instance` (the pod name).
    pub fn new(
        client: Client,
        admin: Arc<dyn NodeAdmin>,
        metrics: Arc<Metrics>,
        options: RenderOptions,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            admin,
            metrics,
            options,
            admin_identities: AdminIdentities::default(),
        }
    }
}

/// One reconcile pass of `cluster`.
pub async fn reconcile(cluster: Arc<DynamoCluster>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.reconciled(started, result.is_ok());
    result
}

/// After a failed pass: log it and try again soon.
pub fn error_policy(cluster: Arc<DynamoCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(cluster = %display_name(&cluster), %error, "reconcile failed; retrying in {ERROR_REQUEUE:?}");
    Action::requeue(ERROR_REQUEUE)
}

async fn reconcile_inner(cluster: &DynamoCluster, ctx: &Context) -> Result<Action> {
    let name = cluster.name_any();
    let ns = cluster.namespace().ok_or_else(|| Error::NoNamespace(name.clone()))?;
    if cluster.metadata.deletion_timestamp.is_some() {
        // Every child goes with the cluster through its owner reference, and the volumes as the
        // StatefulSets' retention policy says; acting now would re-create what the garbage
        // collector is deleting.
        tracing::info!(cluster = %display_name(cluster), "being deleted; children go through garbage collection");
        return Ok(Action::await_change());
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Err(invalid) = validate(&name, &cluster.spec) {
        tracing::warn!(cluster = %display_name(cluster), %invalid, "invalid spec; changing nothing");
        publish(ctx, cluster, EventType::Warning, "InvalidSpec", "Validate", invalid.to_string())
            .await;
        write_status(ctx, cluster, status::invalid(cluster, &invalid, &now)).await?;
        return Ok(Action::requeue(IDLE_REQUEUE));
    }

    // A paused cluster gets nothing new, not even a renewed certificate; what exists is read.
    let secured = security::ensure(ctx, cluster, &ns, !cluster.spec.paused).await?;
    let observed = observe(ctx, cluster, &ns, secured.access.as_ref()).await?;
    let mut plan = scaling::plan(&name, &cluster.spec, &observed);
    if plan.paused {
        // Nothing is written but the status.
        return finish(ctx, cluster, &observed, &plan, &now, &secured).await;
    }
    ensure_secret(ctx, cluster, &ns).await?;

    apply(&Api::namespaced(ctx.client.clone(), &ns), &render::config_map(cluster)).await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&services, &render::headless_service(cluster)).await?;
    apply(&services, &render::client_service(cluster)).await?;
    apply(&Api::namespaced(ctx.client.clone(), &ns), &render::pod_disruption_budget(cluster))
        .await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&policies, &render::security::network_policy(cluster, &ctx.options)).await?;
    let Some(tls_hash) = secured.tls_hash.clone() else {
        // Pods cannot start without their certificate: no StatefulSet before it exists.
        let issuer = secured.status.as_ref().map_or("cert-manager", |s| s.issuer.as_str());
        plan.progress = Some(Progress {
            reason: "WaitingForCertificate",
            message: format!(
                "waiting for {issuer} to write the nodes' certificate into Secret {} \
                 (see the Certificate {} and its issuer's status)",
                render::security::tls_secret_name(&name),
                render::security::tls_secret_name(&name)
            ),
        });
        return finish(ctx, cluster, &observed, &plan, &now, &secured).await;
    };
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    for zone in &cluster.spec.zones {
        let sts = render::statefulset_name(&name, &zone.name);
        if plan.recreate_statefulsets.contains(&zone.name) {
            // Its claim template cannot change in place: delete it, keeping its pods; the next
            // pass creates it again with the new template and it adopts them.
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Orphan),
                ..DeleteParams::default()
            };
            ignore_not_found(statefulsets.delete(&sts, &params).await.map(|_| ()))
                .map_err(Error::kube("delete (orphaning its pods)", "StatefulSet", &sts))?;
            let note = format!(
                "re-creating StatefulSet {sts} with volumes of {}: deleted it with its pods orphaned (they keep running)",
                cluster.spec.storage.size.0
            );
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "ResizingStorage",
                "RecreateStatefulSet",
                note,
            )
            .await;
            continue;
        }
        let replicas = plan.replicas[&zone.name];
        let mut rendered = render::statefulset(cluster, zone, replicas, &ctx.options, &tls_hash);
        if let Some(size) = plan.claim_sizes.get(&zone.name) {
            // Until its claims are expanded, a StatefulSet keeps the claim template it has.
            set_claim_size(&mut rendered, size);
        }
        apply(&statefulsets, &rendered).await?;
    }
    for (zone, action) in &plan.removed_zones {
        let sts = render::statefulset_name(&name, zone);
        match action {
            RemovedZone::Replicas(replicas)
                if observed.statefulsets.get(zone).map(|s| s.replicas) != Some(*replicas) =>
            {
                // No zone spec to render from any more: change only the replicas.
                let patch = serde_json::json!({"spec": {"replicas": replicas}});
                let params =
                    PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
                statefulsets
                    .patch(&sts, &params, &Patch::Merge(&patch))
                    .await
                    .map_err(Error::kube("scale", "StatefulSet", &sts))?;
            }
            RemovedZone::Replicas(_) => {}
            RemovedZone::Delete => {
                ignore_not_found(
                    statefulsets.delete(&sts, &DeleteParams::background()).await.map(|_| ()),
                )
                .map_err(Error::kube("delete", "StatefulSet", &sts))?;
                publish(
                    ctx,
                    cluster,
                    EventType::Normal,
                    "ZoneRemoved",
                    "DeleteStatefulSet",
                    format!("zone {zone} is empty; deleted StatefulSet {sts}"),
                )
                .await;
            }
        }
    }

    if let Some(node) = &plan.added {
        ctx.metrics.count(metrics::Action::ScaleUp);
        let note =
            format!("adding {node}: its StatefulSet grows by one and it joins through the seeds");
        tracing::info!(cluster = %display_name(cluster), %node, "scaling up");
        publish(ctx, cluster, EventType::Normal, "ScalingUp", "AddNode", note).await;
    }
    if let Some(node) = &plan.removed {
        ctx.metrics.count(metrics::Action::NodeRemoved);
        tracing::info!(cluster = %display_name(cluster), %node, "removing the pod of a node that left");
        let note =
            format!("{node} has left the ring (or never joined); lowered its StatefulSet by one");
        publish(ctx, cluster, EventType::Normal, "NodeRemoved", "RemoveNode", note).await;
    }
    if plan.decommission_call.is_some() && secured.access.is_none() {
        plan.problems.push(
            "cannot call the nodes' admin API: the operator has no credentials for it yet".into(),
        );
    }
    let call = plan.decommission_call.clone().zip(secured.access.clone());
    if let Some((call, access)) = call {
        match ctx.admin.decommission(&access, &call.address, &call.node, call.force).await {
            Ok(response) => {
                ctx.metrics.count(metrics::Action::Decommission);
                let state = Membership::from_proto(response.state).map(Membership::as_str);
                tracing::info!(cluster = %display_name(cluster), node = %call.node, state = ?state, "decommission requested");
                if let (Some(d), Some(state)) = (plan.decommission.as_mut(), state) {
                    d.state = state.to_string();
                }
                let note = format!(
                    "asked {} (via {}) to decommission: it is {}",
                    call.node,
                    call.address,
                    state.unwrap_or("in an unknown state")
                );
                publish(ctx, cluster, EventType::Normal, "Decommissioning", "Decommission", note)
                    .await;
            }
            Err(e) => {
                let problem = format!("decommission of {} failed: {e}; retrying", call.node);
                tracing::warn!(cluster = %display_name(cluster), "{problem}");
                publish(
                    ctx,
                    cluster,
                    EventType::Warning,
                    "DecommissionFailed",
                    "Decommission",
                    problem.clone(),
                )
                .await;
                plan.problems.push(problem);
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let replacing = plan.progress.as_ref().is_some_and(|p| p.reason == "ReplacingNode");
    if replacing {
        // The claim first: its protection keeps it until the pod is gone, so the pod that
        // replaces this one can never mount it again.
        for pvc in &plan.delete_pvcs {
            ignore_not_found(pvcs.delete(pvc, &DeleteParams::default()).await.map(|_| ()))
                .map_err(Error::kube("delete", "PersistentVolumeClaim", pvc))?;
        }
    }
    for pod in &plan.delete_pods {
        // Only the pod observed: never one its StatefulSet has created since.
        let uid = observed.pods.iter().find(|p| &p.name == pod).and_then(|p| p.uid.clone());
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid, resource_version: None }),
            ..DeleteParams::default()
        };
        match pods.delete(pod, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => continue,
            Err(e) => return Err(Error::kube("delete", "Pod", pod)(e)),
        }
        let (reason, note) = if replacing {
            ctx.metrics.count(metrics::Action::Replaced);
            (
                "ReplacingNode",
                format!("deleted pod {pod} and its claim: a new, empty node takes its place"),
            )
        } else {
            ctx.metrics.count(metrics::Action::Restarted);
            ("RollingUpdate", format!("restarting {pod} on the new revision (one pod at a time)"))
        };
        tracing::info!(cluster = %display_name(cluster), %pod, "{note}");
        publish(ctx, cluster, EventType::Normal, reason, "DeletePod", note).await;
    }
    for (pvc, size) in &plan.expand_pvcs {
        let patch = serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}});
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..PatchParams::default() };
        match pvcs.patch(pvc, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                let note = format!("asked for claim {pvc} to grow to {size}");
                publish(ctx, cluster, EventType::Normal, "ResizingStorage", "ExpandVolume", note)
                    .await;
            }
            Err(e) => {
                // One claim that cannot grow (quota, a static volume) must not stop the rest.
                let problem = format!("claim {pvc} could not be expanded to {size}: {e}");
                tracing::warn!(cluster = %display_name(cluster), "{problem}");
                plan.problems.push(problem);
            }
        }
    }
    let deleted_first = if replacing { plan.delete_pvcs.len() } else { 0 };
    for pvc in &plan.delete_pvcs[deleted_first..] {
        ignore_not_found(pvcs.delete(pvc, &DeleteParams::default()).await.map(|_| ()))
            .map_err(Error::kube("delete", "PersistentVolumeClaim", pvc))?;
        ctx.metrics.count(metrics::Action::VolumeDeleted);
        let note = format!("deleted volume claim {pvc} of a removed node (whenScaled: Delete)");
        publish(ctx, cluster, EventType::Normal, "VolumeDeleted", "DeleteVolume", note).await;
    }

    finish(ctx, cluster, &observed, &plan, &now, &secured).await
}

/// Writes the status and metrics of a pass and says when to come back (at the latest when the
/// nodes' certificate is due for renewal).
async fn finish(
    ctx: &Context,
    cluster: &DynamoCluster,
    observed: &Observed,
    plan: &scaling::Plan,
    now: &Time,
    secured: &Secured,
) -> Result<Action> {
    let mut new_status = status::build(cluster, observed, plan, now);
    new_status.tls =
        secured.status.clone().or_else(|| cluster.status.as_ref().and_then(|s| s.tls.clone()));
    ctx.metrics.cluster_nodes(
        &cluster.namespace().unwrap_or_default(),
        &cluster.name_any(),
        new_status.ready_nodes.into(),
        new_status.desired_nodes.into(),
    );
    write_status(ctx, cluster, new_status).await?;
    let busy = (plan.progress.is_some() && !plan.paused) || !plan.problems.is_empty();
    let next = if busy { BUSY_REQUEUE } else { IDLE_REQUEUE };
    // A second late rather than early: the renewal is due once the time has passed.
    let renewal = secured.renew_in.map(|d| d + Duration::from_secs(1));
    Ok(Action::requeue(renewal.map_or(next, |r| r.min(next))))
}

/// Sets the storage request of `sts`'s volume claim template.
fn set_claim_size(sts: &mut StatefulSet, size: &str) {
    let claims = sts.spec.volume_claim_templates.as_mut();
    for claim in claims.into_iter().flatten() {
        if let Some(requests) =
            claim.spec.as_mut().and_then(|s| s.resources.as_mut()).and_then(|r| r.requests.as_mut())
        {
            requests.insert(
                "storage".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity(size.into()),
            );
        }
    }
}

/// Creates `<cluster>-secret` with a random value when it does not exist; never rewrites it.
async fn ensure_secret(ctx: &Context, cluster: &DynamoCluster, ns: &str) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = render::secret_name(&cluster.name_any());
    if secrets.get_opt(&name).await.map_err(Error::kube("get", "Secret", &name))?.is_some() {
        return Ok(());
    }
    let secret = render::cluster_secret(cluster, &render::random_secret());
    let params = PostParams { field_manager: Some(MANAGER.into()), ..PostParams::default() };
    match secrets.create(&params, &secret).await {
        Ok(_) => {
            publish(
                ctx,
                cluster,
                EventType::Normal,
                "SecretCreated",
                "CreateSecret",
                format!("created {name} with a random cluster secret"),
            )
            .await;
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube("create", "Secret", &name)(e)),
    }
}

/// Reads the StatefulSets, pods and volumes of the cluster and asks every running node for its
/// view of the ring (when there is a way in: `access`).
async fn observe(
    ctx: &Context,
    cluster: &DynamoCluster,
    ns: &str,
    access: Option<&Access>,
) -> Result<Observed> {
    let name = cluster.name_any();
    let selector = render::cluster_selector_string(&name);
    let params = ListParams::default().labels(&selector);
    let zone_of = |labels: &std::collections::BTreeMap<String, String>| {
        labels.get(render::ZONE_LABEL).cloned()
    };

    let mut observed = Observed::default();
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    for sts in
        statefulsets.list(&params).await.map_err(Error::kube("list", "StatefulSet", &selector))?
    {
        let Some(zone) = zone_of(sts.labels()) else { continue };
        if sts.name_any() != render::statefulset_name(&name, &zone) {
            continue;
        }
        let status = sts.status.clone().unwrap_or_default();
        let spec = sts.spec.clone();
        let claim_size = spec
            .volume_claim_templates
            .iter()
            .flatten()
            .find(|c| c.metadata.name.as_deref() == Some(render::VOLUME_NAME))
            .and_then(|c| c.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage"))
            .map(|q| q.0.clone());
        observed.statefulsets.insert(
            zone,
            ObservedStatefulSet {
                replicas: spec.replicas.unwrap_or(1),
                ready_replicas: status.ready_replicas.unwrap_or(0),
                caught_up: status.observed_generation >= sts.metadata.generation,
                update_revision: status.update_revision.filter(|r| !r.is_empty()),
                claim_size,
            },
        );
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pod_list = pods.list(&params).await.map_err(Error::kube("list", "Pod", &selector))?;
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let claim_list = pvcs.list(&params).await.map_err(Error::kube(
        "list",
        "PersistentVolumeClaim",
        &selector,
    ))?;
    // Only the claims of pods the scheduler has not placed can be lost volumes worth a look.
    let unscheduled: std::collections::BTreeSet<String> = pod_list
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
        .map(|p| format!("{}-{}", render::VOLUME_NAME, p.name_any()))
        .collect();
    let suspects = claim_list.iter().filter(|c| unscheduled.contains(&c.name_any()));
    let volumes = match lost_volumes(ctx, suspects).await {
        Ok(lost) => lost,
        Err(e) => {
            // Without read access to PersistentVolumes and Nodes (an older chart), lost volumes
            // are not detected; everything else works.
            tracing::warn!(%e, "cannot tell lost volumes apart; replace such nodes with the dynamokv.io/replace annotation");
            Default::default()
        }
    };
    for pod in pod_list {
        let Some(zone) = zone_of(pod.labels()) else { continue };
        let pod_name = pod.name_any();
        let Some(ordinal) = render::ordinal_of(&name, &zone, &pod_name) else { continue };
        let status = pod.status.clone().unwrap_or_default();
        let ready =
            status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        let unschedulable = (!scheduled)
            .then(|| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
            .flatten()
            .map(|c| {
                let reason = c.reason.clone().unwrap_or_else(|| "Unschedulable".into());
                match c.message.as_deref() {
                    Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                    _ => reason,
                }
            });
        let claim = format!("{}-{pod_name}", render::VOLUME_NAME);
        observed.pods.push(ObservedPod {
            uid: pod.metadata.uid.clone(),
            lost_volume: !scheduled && volumes.contains(&claim),
            revision: pod.labels().get(render::REVISION_LABEL).cloned(),
            replace: pod.annotations().get(render::REPLACE_ANNOTATION).map(String::as_str)
                == Some("true"),
            unschedulable,
            name: pod_name,
            zone,
            ordinal,
            ip: status.pod_ip.filter(|ip| !ip.is_empty()),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        });
    }
    observed.pods.sort_by(|a, b| (&a.zone, a.ordinal).cmp(&(&b.zone, b.ordinal)));

    let expandable = expandable_classes(ctx).await.unwrap_or_else(|e| {
        tracing::warn!(%e, "cannot read StorageClasses; volumes will not be expanded");
        Classes::default()
    });
    for pvc in claim_list {
        let Some(zone) = zone_of(pvc.labels()) else { continue };
        let pvc_name = pvc.name_any();
        let Some(ordinal) =
            pvc_name.strip_prefix("data-").and_then(|pod| render::ordinal_of(&name, &zone, pod))
        else {
            continue;
        };
        let spec = pvc.spec.clone().unwrap_or_default();
        let class = spec.storage_class_name.clone().or_else(|| expandable.default.clone());
        observed.pvcs.push(ObservedPvc {
            name: pvc_name,
            zone,
            ordinal,
            terminating: pvc.metadata.deletion_timestamp.is_some(),
            requested: spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone())),
            capacity: pvc
                .status
                .as_ref()
                .and_then(|s| s.capacity.as_ref())
                .and_then(|c| c.get("storage").map(|q| q.0.clone())),
            expandable: class.as_ref().and_then(|c| expandable.classes.get(c).copied()),
            class,
            bound: pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"),
            filesystem_resize_pending: pvc
                .status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "FileSystemResizePending" && c.status == "True"),
        });
    }

    let calls = observed
        .pods
        .iter()
        .filter(|_| access.is_some())
        .filter(|p| !p.terminating)
        .filter_map(|p| p.ip.as_ref().map(|ip| (p.name.clone(), render::node_address(ip))))
        .filter_map(|(pod, address)| {
            let call = ctx.admin.status(access?, &address);
            Some(async move { (pod, call.await) })
        });
    let mut reports = Vec::new();
    for (pod, result) in futures::future::join_all(calls).await {
        match result {
            Ok(report) => reports.push(report),
            Err(e) => tracing::debug!(%pod, error = %e, "node did not answer its admin API"),
        }
    }
    observed.ring = RingView::merge(&reports);
    Ok(observed)
}

/// StorageClasses by name with whether they allow volume expansion, and the default class.
#[derive(Default)]
struct Classes {
    classes: std::collections::BTreeMap<String, bool>,
    default: Option<String>,
}

async fn expandable_classes(ctx: &Context) -> Result<Classes> {
    let api: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut classes = Classes::default();
    for class in
        api.list(&ListParams::default()).await.map_err(Error::kube("list", "StorageClass", ""))?
    {
        let name = class.name_any();
        if class
            .annotations()
            .get("storageclass.kubernetes.io/is-default-class")
            .map(String::as_str)
            == Some("true")
        {
            classes.default = Some(name.clone());
        }
        classes.classes.insert(name, class.allow_volume_expansion == Some(true));
    }
    Ok(classes)
}

/// Claims of the cluster whose volume is pinned (by required node affinity, as local volumes
/// are) to a Kubernetes node that no longer exists: the data on it is gone with the machine.
async fn lost_volumes(
    ctx: &Context,
    claims: impl Iterator<Item = &PersistentVolumeClaim>,
) -> Result<std::collections::BTreeSet<String>> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut lost = std::collections::BTreeSet::new();
    let mut known_nodes: Option<std::collections::BTreeSet<String>> = None;
    for claim in claims {
        let Some(volume) = claim.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
            continue;
        };
        let Some(pv) = volumes.get_opt(&volume).await.map_err(Error::kube(
            "get",
            "PersistentVolume",
            &volume,
        ))?
        else {
            continue;
        };
        let pinned: Vec<String> = pv
            .spec
            .as_ref()
            .and_then(|s| s.node_affinity.as_ref()?.required.as_ref())
            .map(|r| {
                r.node_selector_terms
                    .iter()
                    .flat_map(|t| t.match_expressions.iter().flatten())
                    .filter(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
                    .flat_map(|e| e.values.iter().flatten().cloned())
                    .collect()
            })
            .unwrap_or_default();
        if pinned.is_empty() {
            continue;
        }
        if known_nodes.is_none() {
            let list = nodes
                .list(&ListParams::default())
                .await
                .map_err(Error::kube("list", "Node", ""))?;
            known_nodes = Some(
                list.iter()
                    .flat_map(|n| {
                        [Some(n.name_any()), n.labels().get("kubernetes.io/hostname").cloned()]
                    })
                    .flatten()
                    .collect(),
            );
        }
        let known = known_nodes.as_ref().expect("listed above");
        if pinned.iter().all(|host| !known.contains(host)) {
            lost.insert(claim.name_any());
        }
    }
    Ok(lost)
}

/// Server-side apply of `obj` under the operator's field manager, taking over fields another
/// manager changed (the operator is the owner of what it renders).
async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K>
where
    K: Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await.map_err(
        |source| Error::Kube {
            action: "apply",
            kind: <K as k8s_openapi::Resource>::KIND,
            name,
            source,
        },
    )
}

/// Writes the status (server-side apply on the status subresource) unless it is unchanged.
async fn write_status(
    ctx: &Context,
    cluster: &DynamoCluster,
    new: DynamoClusterStatus,
) -> Result<()> {
    if cluster.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let name = cluster.name_any();
    let api: Api<DynamoCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": DynamoCluster::api_version(&()),
        "kind": DynamoCluster::kind(&()),
        "status": new,
    });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube("write status of", "DynamoCluster", &name))?;
    Ok(())
}

fn ignore_not_found(result: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other,
    }
}

/// Publishes an event on the cluster; a failure is logged, never fatal.
async fn publish(
    ctx: &Context,
    cluster: &DynamoCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::warn!(cluster = %display_name(cluster), error = %e, "could not publish event {reason}");
    }
}

/// Runs the controller until `shutdown` is cancelled. `namespace` limits it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let (clusters, children) = match &namespace {
        Some(ns) => (Api::<DynamoCluster>::namespaced(client.clone(), ns), Some(ns.clone())),
        None => (Api::<DynamoCluster>::all(client.clone()), None),
    };
    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>>(
        client: &Client,
        ns: &Option<String>,
    ) -> Api<K> {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // Only spec changes (a new generation) and annotation changes (restartedAt) of a
    // DynamoCluster start a pass: the operator's own status writes must not, or a changing
    // status would loop. Children's changes and requeues
    // start the others.
    let (reader, writer) = reflector::store();
    let (metrics, store) = (ctx.metrics.clone(), reader.clone());
    let stream = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        // A deleted cluster's gauges go with it (deletions missed while disconnected: after the
        // re-list, whatever is not in the store).
        .inspect_ok(move |event| match event {
            watcher::Event::Delete(cluster) => metrics
                .forget_cluster(&cluster.namespace().unwrap_or_default(), &cluster.name_any()),
            watcher::Event::InitDone => metrics.retain_clusters(|namespace, name| {
                store.get(&ObjectRef::new(name).within(namespace)).is_some()
            }),
            _ => {}
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    Controller::for_stream(stream, reader)
        .with_config(ControllerConfig::default().debounce(Duration::from_secs(1)))
        .owns(api::<StatefulSet>(&client, &children), owned.clone())
        .owns(api::<Service>(&client, &children), owned.clone())
        .owns(api::<ConfigMap>(&client, &children), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &children), owned.clone())
        .owns(api::<NetworkPolicy>(&client, &children), owned)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(cluster = %object_name(&object), "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not run or failed"),
            }
        })
        .await;
    tracing::info!("controller stopped");
}

fn object_name(object: &ObjectRef<DynamoCluster>) -> String {
    format!("{}/{}", object.namespace.as_deref().unwrap_or_default(), object.name)
}

#[cfg(test)]
mod tests;
