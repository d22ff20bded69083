//! The controller: watches DynamoClusters and the objects they own, and on every pass observes
//! the cluster (StatefulSets, pods, volumes, the nodes' admin API), plans one step
//! ([`crate::scaling`]), applies the rendered objects with server-side apply under one field
//! manager, makes the admin call the plan asks for, deletes what the plan says, records events,
//! and writes the status.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{predicates, watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::admin::{Membership, NodeAdmin, RingView};
use crate::crd::{display_name, DynamoCluster, DynamoClusterStatus};
use crate::error::{Error, Result};
use crate::metrics::{self, Metrics};
use crate::render::{self, RenderOptions, MANAGER};
use crate::scaling::{self, Observed, ObservedPod, ObservedPvc, ObservedStatefulSet, RemovedZone};
use crate::status;
use crate::validate::validate;

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

    ensure_secret(ctx, cluster, &ns).await?;
    let observed = observe(ctx, cluster, &ns).await?;
    let mut plan = scaling::plan(&name, &cluster.spec, &observed);

    apply(&Api::namespaced(ctx.client.clone(), &ns), &render::config_map(cluster)).await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    apply(&services, &render::headless_service(cluster)).await?;
    apply(&services, &render::client_service(cluster)).await?;
    apply(&Api::namespaced(ctx.client.clone(), &ns), &render::pod_disruption_budget(cluster))
        .await?;
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    for zone in &cluster.spec.zones {
        let replicas = plan.replicas[&zone.name];
        apply(&statefulsets, &render::statefulset(cluster, zone, replicas, &ctx.options)).await?;
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
    if let Some(call) = plan.decommission_call.clone() {
        match ctx.admin.decommission(&call.address, &call.node, call.force).await {
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
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    for pvc in &plan.delete_pvcs {
        ignore_not_found(pvcs.delete(pvc, &DeleteParams::default()).await.map(|_| ()))
            .map_err(Error::kube("delete", "PersistentVolumeClaim", pvc))?;
        ctx.metrics.count(metrics::Action::VolumeDeleted);
        let note = format!("deleted volume claim {pvc} of a removed node (whenScaled: Delete)");
        publish(ctx, cluster, EventType::Normal, "VolumeDeleted", "DeleteVolume", note).await;
    }

    let new_status = status::build(cluster, &observed, &plan, &now);
    ctx.metrics.cluster_nodes(
        &ns,
        &name,
        new_status.ready_nodes.into(),
        new_status.desired_nodes.into(),
    );
    write_status(ctx, cluster, new_status).await?;
    Ok(Action::requeue(if plan.progress.is_some() || !plan.problems.is_empty() {
        BUSY_REQUEUE
    } else {
        IDLE_REQUEUE
    }))
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
/// view of the ring.
async fn observe(ctx: &Context, cluster: &DynamoCluster, ns: &str) -> Result<Observed> {
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
        observed.statefulsets.insert(
            zone,
            ObservedStatefulSet {
                replicas: sts.spec.replicas.unwrap_or(1),
                ready_replicas: status.ready_replicas.unwrap_or(0),
                caught_up: status.observed_generation >= sts.metadata.generation,
            },
        );
    }

    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for pod in pods.list(&params).await.map_err(Error::kube("list", "Pod", &selector))? {
        let Some(zone) = zone_of(pod.labels()) else { continue };
        let pod_name = pod.name_any();
        let Some(ordinal) = render::ordinal_of(&name, &zone, &pod_name) else { continue };
        let status = pod.status.clone().unwrap_or_default();
        let ready =
            status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
        observed.pods.push(ObservedPod {
            name: pod_name,
            zone,
            ordinal,
            ip: status.pod_ip.filter(|ip| !ip.is_empty()),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        });
    }
    observed.pods.sort_by(|a, b| (&a.zone, a.ordinal).cmp(&(&b.zone, b.ordinal)));

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    for pvc in
        pvcs.list(&params).await.map_err(Error::kube("list", "PersistentVolumeClaim", &selector))?
    {
        let Some(zone) = zone_of(pvc.labels()) else { continue };
        let pvc_name = pvc.name_any();
        let Some(ordinal) =
            pvc_name.strip_prefix("data-").and_then(|pod| render::ordinal_of(&name, &zone, pod))
        else {
            continue;
        };
        observed.pvcs.push(ObservedPvc {
            name: pvc_name,
            zone,
            ordinal,
            terminating: pvc.metadata.deletion_timestamp.is_some(),
        });
    }

    let calls = observed
        .pods
        .iter()
        .filter(|p| !p.terminating)
        .filter_map(|p| p.ip.as_ref().map(|ip| (p.name.clone(), render::node_address(ip))))
        .map(|(pod, address)| {
            let call = ctx.admin.status(&address);
            async move { (pod, call.await) }
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
    // Only spec changes (a new generation) of a DynamoCluster start a pass: the operator's own
    // status writes must not, or a changing status would loop. Children's changes and requeues
    // start the others.
    let (reader, writer) = reflector::store();
    let stream = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(stream, reader)
        .with_config(ControllerConfig::default().debounce(Duration::from_secs(1)))
        .owns(api::<StatefulSet>(&client, &children), owned.clone())
        .owns(api::<Service>(&client, &children), owned.clone())
        .owns(api::<ConfigMap>(&client, &children), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, &children), owned)
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
