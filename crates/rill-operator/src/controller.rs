//! Reconcilers for `FlinkJob` and `FlinkSession`.
//!
//! Reconcile is thin: count, then [`finalizer`] splits into `apply` and
//! `cleanup`. `apply` asks [`lifecycle::next_action`] what the one next step
//! is and performs it: deploy the children (server-side apply, owner
//! references), roll out an upgrade per `upgradeMode`, suspend, resume,
//! take a savepoint, or just refresh status from the JobManager's REST API.
//! Long steps (savepoints) are recorded in status and continued on the next
//! reconcile, so nothing blocks and an operator restart resumes them.
//!
//! A bad spec never crash-loops: it is reported in `status.error` with a
//! Warning Event and waits for the next change. Other errors go to the
//! error policy, which counts them by label and requeues with backoff.
//! The finalizer exists only for what owner references cannot clean up:
//! the cluster's HA ConfigMaps (written by the JobManagers, deliberately
//! unowned so they survive a Deployment deletion) and, for jobs in a
//! session, cancelling the job; and an application cluster's checkpoints
//! when `execution.checkpointing.externalized-checkpoint-retention` is
//! `DELETE_ON_CANCELLATION`. Savepoints are always kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Client, Resource, ResourceExt};
use rill_runtime::cluster::dispatch::{JobStatus, SubmitRequest};
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::children::{self, Children, FIELD_MANAGER};
use crate::config::{self, ClusterSpec, Names};
use crate::crd::{
    CheckpointStatus, Condition, FlinkJob, FlinkJobStatus, FlinkSession, FlinkSessionStatus,
    LifecycleState, PendingSavepoint, SavepointStatus, TaskManagersStatus, UpgradeMode,
};
use crate::ha::{ha_selector, ADDRESS_KEY, LEADER_ANNOTATION};
use crate::lifecycle::{self, Action as Step};
use crate::metrics::Metrics;
use crate::rest::{self, RestClient, SavepointOutcome};
use crate::retention;
use crate::workers::tm_selector;
use crate::{Error, Result};

/// Finalizer on FlinkJobs and FlinkSessions.
pub const FINALIZER: &str = "rill.dev/finalizer";
/// Annotation overriding the JobManager REST base URL (tests, port
/// forwards, clusters reached through an ingress).
pub const REST_URL_ANNOTATION: &str = "rill.dev/rest-url";

/// Knobs of the reconcilers.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Timeout of one JobManager REST call.
    pub rest_timeout: Duration,
    /// `namespace/name` → REST base URL, consulted after the annotation.
    pub rest_overrides: BTreeMap<String, String>,
    /// How often a stable resource's status is refreshed.
    pub refresh: Duration,
    /// How often a savepoint or a starting cluster is polled.
    pub poll: Duration,
    /// How long cleanup waits for JobManager pods to go away.
    pub cleanup_wait: Duration,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            rest_timeout: Duration::from_secs(5),
            rest_overrides: BTreeMap::new(),
            refresh: Duration::from_secs(15),
            poll: Duration::from_secs(3),
            cleanup_wait: Duration::from_secs(30),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub options: ControllerOptions,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        options: ControllerOptions,
    ) -> Self {
        Context {
            client,
            recorder,
            metrics,
            options,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Exponential backoff per object: 1 s, 2 s, 4 s … 5 min.
    fn backoff(&self, key: &str) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        Duration::from_secs(1u64 << n.saturating_sub(1).min(8)).min(Duration::from_secs(300))
    }

    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: impl Into<String>,
    ) {
        let mut note: String = note.into();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let ev = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: reason.to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "publishing an event failed");
        }
    }
}

fn key_of<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or("default"),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

fn now() -> String {
    Timestamp::now().to_string()
}

/// Adds [`FINALIZER`] with a merge patch guarded by the resourceVersion
/// read. kube-runtime's own helper adds it with a JSON-patch `test` of a
/// missing path against `null`, which API servers accept but kube-sim (as
/// of this writing) refuses; this path works on both. The patch triggers the
/// next reconcile.
async fn add_finalizer<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut finalizers: Vec<String> = obj.meta().finalizers.clone().unwrap_or_default();
    finalizers.push(FINALIZER.to_string());
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": obj.meta().resource_version,
    }});
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

fn needs_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta().deletion_timestamp.is_none()
        && !obj
            .meta()
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

/// Status is written as a merge patch with explicit nulls for absent
/// fields, so cleared fields (an error that was fixed, a finished savepoint)
/// are removed on every API server.
fn with_nulls(mut v: serde_json::Value, fields: &[&str]) -> serde_json::Value {
    if let Some(map) = v.as_object_mut() {
        for f in fields {
            map.entry(f.to_string()).or_insert(serde_json::Value::Null);
        }
    }
    v
}

/// The outcome of `finalizer()`. A finalizer removal that finds the object
/// gone means another pass already finished the cleanup (the object was
/// deleted the moment its last finalizer went): done, not a failure.
fn finalizer_outcome(
    result: std::result::Result<Action, kube::runtime::finalizer::Error<Error>>,
) -> Result<Action> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Ok(action) => Ok(action),
        Err(F::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
        Err(other) => Err(Error::Finalizer(other.to_string())),
    }
}

/// Sets `kind` to `status` (keeping the transition time when unchanged).
fn set_condition(
    conds: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
) {
    let s = if status { "True" } else { "False" };
    if let Some(c) = conds.iter_mut().find(|c| c.kind == kind) {
        if c.status != s {
            c.last_transition_time = Some(now());
        }
        c.status = s.to_string();
        c.reason = Some(reason.to_string());
        c.message = Some(message.to_string());
    } else {
        conds.push(Condition {
            kind: kind.to_string(),
            status: s.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_transition_time: Some(now()),
        });
    }
}

// ---------------------------------------------------------------------------
// Shared cluster plumbing.

async fn apply_object<K>(client: &Client, ns: &str, obj: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await?;
    Ok(())
}

/// Server-side applies every child.
pub async fn apply_children(client: &Client, ns: &str, c: &Children) -> Result<()> {
    apply_object(client, ns, &c.config_map).await?;
    if let Some(sa) = &c.service_account {
        apply_object(client, ns, sa).await?;
    }
    apply_object(client, ns, &c.role).await?;
    apply_object(client, ns, &c.role_binding).await?;
    apply_object(client, ns, &c.rest_service).await?;
    apply_object(client, ns, &c.rpc_service).await?;
    apply_object(client, ns, &c.deployment).await?;
    Ok(())
}

async fn apply_cluster<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    owner: &K,
    names: &Names,
    spec: &ClusterSpec,
    restore: Option<&str>,
) -> Result<()> {
    let conf = config::render(names, spec, restore)?;
    let owner_ref = owner
        .controller_owner_ref(&())
        .ok_or_else(|| Error::Internal("resource without name or uid".into()))?;
    let c = children::build(names, spec, &conf, &owner_ref)?;
    apply_children(&ctx.client, &names.namespace, &c).await
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes the JobManager Deployment and the TaskManager pods, and waits,
/// bounded, for all of the cluster's pods to disappear. Returns whether
/// they did.
///
/// TaskManager pods are owned by the Deployment, but garbage collection
/// takes its time: a new JobManager started while they linger would adopt
/// them (it finds its workers by label) and a TaskManager of the old
/// cluster could register with it. So they are deleted here and waited for.
async fn stop_cluster(ctx: &Context, names: &Names) -> Result<bool> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &names.namespace);
    delete_ignoring_missing(&deployments, &names.deployment()).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let workers =
        ListParams::default().labels(&format!("app={},component=taskmanager", names.cluster_id));
    pods.delete_collection(&DeleteParams::default(), &workers)
        .await?;
    let lp = ListParams::default().labels(&format!(
        "app={},component in (jobmanager,taskmanager)",
        names.cluster_id
    ));
    let deadline = tokio::time::Instant::now() + ctx.options.cleanup_wait;
    loop {
        let left = pods.list(&lp).await?.items;
        if left.is_empty() {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes the cluster's HA ConfigMaps: its jobs will start fresh.
pub async fn delete_ha_data(client: &Client, names: &Names) -> Result<usize> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &names.namespace);
    let lp = ListParams::default().labels(&ha_selector(&names.cluster_id));
    let mut n = 0;
    for cm in api.list(&lp).await?.items {
        delete_ignoring_missing(&api, &cm.name_any()).await?;
        n += 1;
    }
    Ok(n)
}

/// The leader's identity and REST URL from the HA ConfigMap.
async fn ha_leader(client: &Client, names: &Names) -> Result<(Option<String>, Option<String>)> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &names.namespace);
    let Some(cm) = api.get_opt(&names.ha_config_map()).await? else {
        return Ok((None, None));
    };
    let holder = cm
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LEADER_ANNOTATION))
        .and_then(|v| serde_json::from_str::<crate::election::LeaderRecord>(v).ok())
        .filter(|r| r.is_valid_at(Timestamp::now()))
        .map(|r| r.holder_identity);
    let rest = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ADDRESS_KEY))
        .and_then(|a| {
            serde_json::from_str::<rill_runtime::cluster::services::LeaderAddress>(a).ok()
        })
        .map(|a| a.rest)
        .filter(|_| holder.is_some());
    Ok((holder, rest))
}

/// Where to reach a cluster's JobManager: annotation, operator override,
/// the HA leader's published address, the REST Service.
async fn rest_for<K: Resource>(
    ctx: &Context,
    obj: &K,
    names: &Names,
    ha: bool,
) -> Result<(RestClient, Option<String>)> {
    let mut leader = None;
    let url = if let Some(u) = obj
        .meta()
        .annotations
        .as_ref()
        .and_then(|a| a.get(REST_URL_ANNOTATION))
    {
        u.clone()
    } else if let Some(u) = ctx.options.rest_overrides.get(&key_of(obj)) {
        u.clone()
    } else if ha {
        let (holder, rest) = ha_leader(&ctx.client, names).await?;
        leader = holder;
        rest.unwrap_or_else(|| names.rest_url())
    } else {
        names.rest_url()
    };
    if ha && leader.is_none() {
        leader = ha_leader(&ctx.client, names).await?.0;
    }
    Ok((RestClient::new(&url, ctx.options.rest_timeout)?, leader))
}

async fn task_managers(ctx: &Context, names: &Names, desired: u32) -> Result<TaskManagersStatus> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let lp = ListParams::default().labels(&tm_selector(&names.cluster_id));
    let ready = pods
        .list(&lp)
        .await?
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    Ok(TaskManagersStatus {
        ready: u32::try_from(ready).unwrap_or(u32::MAX),
        desired,
    })
}

// ---------------------------------------------------------------------------
// FlinkJob.

async fn write_job_status(ctx: &Context, job: &FlinkJob, status: &FlinkJobStatus) -> Result<()> {
    ctx.metrics
        .lifecycle("FlinkJob", &key_of(job), status.lifecycle_state);
    if job.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<FlinkJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let patch = json!({"status": with_nulls(serde_json::to_value(status)?, &[
        "observedGeneration", "lifecycleState", "jobId", "jobState", "lastCheckpoint",
        "lastSavepoint", "pendingSavepoint", "restarts", "taskManagers", "jobManagerLeader",
        "conditions", "error", "reconciledSpec", "restoreSavepoint",
    ])});
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Moves to `state`, with a Normal event when it changes.
async fn transition(
    ctx: &Context,
    job: &FlinkJob,
    status: &mut FlinkJobStatus,
    state: LifecycleState,
    reason: &str,
    note: &str,
) {
    if status.lifecycle_state != Some(state) {
        status.lifecycle_state = Some(state);
        let type_ = if state == LifecycleState::Failed {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(job, type_, reason, note).await;
    }
}

/// Reconciles one FlinkJob.
pub async fn reconcile_job(job: Arc<FlinkJob>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciled("FlinkJob");
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let key = key_of(job.as_ref());
    let api: Api<FlinkJob> = Api::namespaced(ctx.client.clone(), &ns);
    if needs_finalizer(job.as_ref()) {
        add_finalizer(&api, job.as_ref()).await?;
        return Ok(Action::await_change());
    }
    let span = tracing::info_span!("reconcile", kind = "FlinkJob", object = %key);
    let inner = ctx.clone();
    let action = finalizer(&api, FINALIZER, job, move |event| async move {
        match event {
            FinalizerEvent::Apply(job) => apply_job(&job, &inner).await,
            FinalizerEvent::Cleanup(job) => cleanup_job(&job, &inner).await,
        }
    })
    .instrument(span)
    .await;
    let action = finalizer_outcome(action)?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Error policy: log, count by label, requeue with backoff.
pub fn job_error_policy(job: Arc<FlinkJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(job.as_ref());
    ctx.metrics.failed("FlinkJob", error);
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "FlinkJob reconcile failed");
    Action::requeue(delay)
}

async fn report_invalid(
    ctx: &Context,
    job: &FlinkJob,
    mut status: FlinkJobStatus,
    e: &Error,
) -> Result<Action> {
    let message = e.to_string();
    if status.error.as_deref() != Some(message.as_str()) {
        ctx.event(job, EventType::Warning, "InvalidSpec", message.clone())
            .await;
    }
    status.error = Some(message.clone());
    status.lifecycle_state = Some(LifecycleState::Failed);
    status.observed_generation = job.metadata.generation;
    set_condition(
        &mut status.conditions,
        "Ready",
        false,
        "InvalidSpec",
        &message,
    );
    write_job_status(ctx, job, &status).await?;
    Ok(Action::await_change())
}

async fn apply_job(job: &FlinkJob, ctx: &Context) -> Result<Action> {
    if job.spec.session_ref.is_some() {
        return apply_session_job(job, ctx).await;
    }
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let names = Names::new(&job.name_any(), &ns);
    let mut status = job.status.clone().unwrap_or_default();
    let cluster = ClusterSpec::from_job(&job.spec);
    if let Err(e) = config::validate(&cluster) {
        return report_invalid(ctx, job, status, &e).await;
    }
    if status.lifecycle_state.is_none() {
        transition(
            ctx,
            job,
            &mut status,
            LifecycleState::Created,
            "Created",
            "FlinkJob accepted",
        )
        .await;
    }
    let ha = cluster.high_availability.enabled;
    if let Some(pending) = status.pending_savepoint.clone() {
        return continue_savepoint(ctx, job, &names, &cluster, status, pending).await;
    }
    let step = lifecycle::next_action(&job.spec, Some(&status));
    tracing::debug!(?step, "next step");
    match step {
        Step::Deploy { resume } => {
            let restore = if resume {
                match job.spec.job.upgrade_mode {
                    UpgradeMode::Savepoint => {
                        status.last_savepoint.as_ref().map(|s| s.path.clone())
                    }
                    _ => None,
                }
            } else {
                job.spec.job.initial_savepoint_path.clone()
            };
            apply_cluster(ctx, job, &names, &cluster, restore.as_deref()).await?;
            status.reconciled_spec = Some(lifecycle::reconciled_spec_json(&job.spec));
            status.restore_savepoint = restore.clone();
            status.error = None;
            status.job_id = None;
            status.job_state = None;
            let note = match (&restore, resume) {
                (Some(sp), _) => format!("JobManager deployed, restoring from {sp}"),
                (None, true) => "JobManager deployed, resuming".to_string(),
                (None, false) => "JobManager deployed".to_string(),
            };
            let reason = if resume { "Resumed" } else { "Deployed" };
            transition(
                ctx,
                job,
                &mut status,
                LifecycleState::Deployed,
                reason,
                &note,
            )
            .await;
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(ctx.options.poll))
        }
        Step::Upgrade(mode) => upgrade(ctx, job, &names, &cluster, status, mode).await,
        Step::Suspend(mode) => suspend(ctx, job, &names, &cluster, status, mode).await,
        Step::TriggerSavepoint(nonce) => {
            let (rest, _) = rest_for(ctx, job, &names, ha).await?;
            match running_job(&rest, status.job_id.as_deref()).await {
                Some(job_id) => {
                    let request = rest
                        .trigger_savepoint(&job_id, SAVEPOINT_TARGET, false)
                        .await?;
                    status.pending_savepoint = Some(PendingSavepoint {
                        job_id,
                        request_id: request,
                        reason: "trigger".into(),
                        trigger_nonce: Some(nonce),
                    });
                    ctx.event(
                        job,
                        EventType::Normal,
                        "SavepointTriggered",
                        format!("savepoint for nonce {nonce}"),
                    )
                    .await;
                    finish_job(ctx, job, status).await?;
                    Ok(Action::requeue(ctx.options.poll))
                }
                None => {
                    let msg = format!("savepoint for nonce {nonce} waits for a running job");
                    if status.error.as_deref() != Some(msg.as_str()) {
                        ctx.event(job, EventType::Warning, "SavepointDeferred", msg.clone())
                            .await;
                    }
                    status.error = Some(msg);
                    finish_job(ctx, job, status).await?;
                    Ok(Action::requeue(ctx.options.refresh))
                }
            }
        }
        Step::StaySuspended => {
            finish_job(ctx, job, status).await?;
            Ok(Action::await_change())
        }
        Step::Observe => {
            apply_cluster(
                ctx,
                job,
                &names,
                &cluster,
                status.restore_savepoint.as_deref(),
            )
            .await?;
            observe_job(ctx, job, &names, &cluster, &mut status).await?;
            let stable = status.lifecycle_state == Some(LifecycleState::Stable);
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(if stable {
                ctx.options.refresh
            } else {
                ctx.options.poll
            }))
        }
    }
}

async fn finish_job(ctx: &Context, job: &FlinkJob, mut status: FlinkJobStatus) -> Result<()> {
    status.observed_generation = job.metadata.generation;
    let ok = status.error.is_none() && status.lifecycle_state != Some(LifecycleState::Failed);
    let state = status
        .lifecycle_state
        .map_or("CREATED", LifecycleState::as_str);
    let message = status.error.clone().unwrap_or_default();
    set_condition(&mut status.conditions, "Ready", ok, state, &message);
    write_job_status(ctx, job, &status).await
}

/// The target directory a savepoint request names: none. The cluster's
/// `state.savepoints.dir` (rendered from `checkpointing.storage`) says
/// where savepoints go, and the JobManager refuses a per-request directory.
const SAVEPOINT_TARGET: Option<&str> = None;

/// The id of the job if the JobManager reports it running.
async fn running_job(rest: &RestClient, known: Option<&str>) -> Option<String> {
    let jobs = rest.jobs().await.ok()?;
    rest::pick_job(&jobs, known)
        .filter(|j| j.state == JobStatus::Running)
        .map(|j| j.jid.clone())
}

/// Refreshes status from the JobManager; a JobManager that does not answer
/// leaves the job fields as they were.
async fn observe_job(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    cluster: &ClusterSpec,
    status: &mut FlinkJobStatus,
) -> Result<()> {
    let ha = cluster.high_availability.enabled;
    let (rest, leader) = rest_for(ctx, job, names, ha).await?;
    status.job_manager_leader = leader;
    let parallelism = job.spec.job.parallelism.unwrap_or(1);
    let desired = parallelism.div_ceil(cluster.slots().max(1));
    status.task_managers = Some(task_managers(ctx, names, desired).await?);
    let jobs = match rest.jobs().await {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "JobManager not answering yet");
            set_condition(
                &mut status.conditions,
                "JobManagerReachable",
                false,
                "RestUnavailable",
                &e.to_string(),
            );
            return Ok(());
        }
    };
    set_condition(
        &mut status.conditions,
        "JobManagerReachable",
        true,
        "RestAnswered",
        "",
    );
    let picked = rest::pick_job(&jobs, status.job_id.as_deref()).cloned();
    let (details, checkpoints) = match &picked {
        Some(j) => (
            rest.job(&j.jid).await.ok(),
            rest.checkpoints(&j.jid).await.ok(),
        ),
        None => (None, None),
    };
    let o = rest::observe(picked.as_ref(), details.as_ref(), checkpoints.as_ref());
    if o.job_id.is_some() {
        status.job_id = o.job_id.clone();
    }
    status.job_state = o.job_state.map(rest::job_state_name);
    if o.restarts.is_some() {
        status.restarts = o.restarts;
    }
    if o.last_checkpoint.is_some() {
        status.last_checkpoint = o.last_checkpoint.clone();
    }
    let next = rest::lifecycle_for(o.job_state);
    match next {
        LifecycleState::Failed => {
            let why = o.failure.clone().unwrap_or_else(|| "job failed".into());
            status.error = Some(why.clone());
            transition(ctx, job, status, next, "JobFailed", &why).await;
        }
        LifecycleState::Stable => {
            status.error = None;
            transition(ctx, job, status, next, "JobRunning", "job is running").await;
        }
        _ => {
            if status.lifecycle_state != Some(LifecycleState::Upgrading) {
                transition(ctx, job, status, next, "JobStarting", "job is starting").await;
            }
        }
    }
    set_condition(
        &mut status.conditions,
        "JobRunning",
        o.job_state == Some(JobStatus::Running),
        status.job_state.as_deref().unwrap_or("Unknown"),
        "",
    );
    Ok(())
}

/// How a redeploy carries state over.
struct Carry<'a> {
    /// Savepoint the new cluster starts from.
    restore: Option<String>,
    /// Remove the HA pointers (the new cluster must not recover the old job).
    clear_ha: bool,
    note: &'a str,
}

/// Replaces the running cluster with one built from the current spec.
async fn redeploy(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    cluster: &ClusterSpec,
    mut status: FlinkJobStatus,
    carry: Carry<'_>,
) -> Result<Action> {
    let Carry {
        restore,
        clear_ha,
        note,
    } = carry;
    let gone = stop_cluster(ctx, names).await?;
    if !gone {
        return Err(Error::Internal(
            "old JobManager pods are still terminating".into(),
        ));
    }
    if clear_ha {
        delete_ha_data(&ctx.client, names).await?;
    }
    apply_cluster(ctx, job, names, cluster, restore.as_deref()).await?;
    status.reconciled_spec = Some(lifecycle::reconciled_spec_json(&job.spec));
    status.restore_savepoint = restore;
    status.error = None;
    status.job_state = None;
    if clear_ha {
        status.job_id = None;
    }
    status.lifecycle_state = Some(LifecycleState::Upgrading);
    ctx.event(job, EventType::Normal, "Upgraded", note.to_string())
        .await;
    transition(
        ctx,
        job,
        &mut status,
        LifecycleState::Deployed,
        "Redeployed",
        note,
    )
    .await;
    finish_job(ctx, job, status).await?;
    Ok(Action::requeue(ctx.options.poll))
}

async fn upgrade(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    cluster: &ClusterSpec,
    mut status: FlinkJobStatus,
    mode: UpgradeMode,
) -> Result<Action> {
    transition(
        ctx,
        job,
        &mut status,
        LifecycleState::Upgrading,
        "UpgradeStarted",
        &format!("spec changed; upgrade mode {mode:?}"),
    )
    .await;
    match mode {
        UpgradeMode::Stateless => {
            redeploy(
                ctx,
                job,
                names,
                cluster,
                status,
                Carry {
                    restore: None,
                    clear_ha: true,
                    note: "redeployed without state (stateless)",
                },
            )
            .await
        }
        UpgradeMode::LastState => {
            let restore = status.restore_savepoint.clone();
            redeploy(
                ctx,
                job,
                names,
                cluster,
                status,
                Carry {
                    restore,
                    clear_ha: false,
                    note: "redeployed; the JobManager restores the latest checkpoint (last-state)",
                },
            )
            .await
        }
        UpgradeMode::Savepoint => {
            let (rest, _) = rest_for(ctx, job, names, cluster.high_availability.enabled).await?;
            match running_job(&rest, status.job_id.as_deref()).await {
                Some(job_id) => {
                    let request = rest
                        .trigger_savepoint(&job_id, SAVEPOINT_TARGET, true)
                        .await?;
                    ctx.event(
                        job,
                        EventType::Normal,
                        "SavepointTriggered",
                        format!("savepoint with cancel of job {job_id} for the upgrade"),
                    )
                    .await;
                    status.pending_savepoint = Some(PendingSavepoint {
                        job_id,
                        request_id: request,
                        reason: "upgrade".into(),
                        trigger_nonce: None,
                    });
                    finish_job(ctx, job, status).await?;
                    Ok(Action::requeue(ctx.options.poll))
                }
                None => {
                    let restore = status
                        .last_savepoint
                        .as_ref()
                        .map(|s| s.path.clone())
                        .or_else(|| status.last_checkpoint.as_ref().and_then(|c| c.path.clone()));
                    ctx.event(
                        job,
                        EventType::Warning,
                        "UpgradeWithoutSavepoint",
                        format!(
                            "no running job to take a savepoint of; restoring from {}",
                            restore.as_deref().unwrap_or("nothing")
                        ),
                    )
                    .await;
                    redeploy(
                        ctx,
                        job,
                        names,
                        cluster,
                        status,
                        Carry {
                            restore,
                            clear_ha: true,
                            note: "redeployed from the last known state",
                        },
                    )
                    .await
                }
            }
        }
    }
}

async fn suspend(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    cluster: &ClusterSpec,
    mut status: FlinkJobStatus,
    mode: UpgradeMode,
) -> Result<Action> {
    if status.reconciled_spec.is_some() && mode == UpgradeMode::Savepoint {
        let (rest, _) = rest_for(ctx, job, names, cluster.high_availability.enabled).await?;
        if let Some(job_id) = running_job(&rest, status.job_id.as_deref()).await {
            let request = rest
                .trigger_savepoint(&job_id, SAVEPOINT_TARGET, true)
                .await?;
            ctx.event(
                job,
                EventType::Normal,
                "SavepointTriggered",
                format!("savepoint with cancel of job {job_id} to suspend"),
            )
            .await;
            status.pending_savepoint = Some(PendingSavepoint {
                job_id,
                request_id: request,
                reason: "suspend".into(),
                trigger_nonce: None,
            });
            finish_job(ctx, job, status).await?;
            return Ok(Action::requeue(ctx.options.poll));
        }
    }
    finish_suspend(ctx, job, names, status, mode != UpgradeMode::LastState).await
}

async fn finish_suspend(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    mut status: FlinkJobStatus,
    clear_ha: bool,
) -> Result<Action> {
    let gone = stop_cluster(ctx, names).await?;
    if !gone {
        return Err(Error::Internal(
            "JobManager pods are still terminating".into(),
        ));
    }
    if clear_ha {
        delete_ha_data(&ctx.client, names).await?;
    }
    status.job_state = None;
    status.task_managers = None;
    status.job_manager_leader = None;
    transition(
        ctx,
        job,
        &mut status,
        LifecycleState::Suspended,
        "Suspended",
        "cluster removed; state kept",
    )
    .await;
    finish_job(ctx, job, status).await?;
    Ok(Action::await_change())
}

async fn continue_savepoint(
    ctx: &Context,
    job: &FlinkJob,
    names: &Names,
    cluster: &ClusterSpec,
    mut status: FlinkJobStatus,
    pending: PendingSavepoint,
) -> Result<Action> {
    let (rest, _) = rest_for(ctx, job, names, cluster.high_availability.enabled).await?;
    let outcome = match rest.savepoint(&pending.job_id, &pending.request_id).await {
        Ok(o) => o,
        Err(e) => {
            tracing::info!(error = %e, "savepoint status not available yet");
            return Ok(Action::requeue(ctx.options.poll));
        }
    };
    match outcome {
        SavepointOutcome::InProgress => Ok(Action::requeue(ctx.options.poll)),
        SavepointOutcome::Failed(cause) => {
            status.pending_savepoint = None;
            status.error = Some(format!("savepoint failed: {cause}"));
            ctx.event(job, EventType::Warning, "SavepointFailed", cause)
                .await;
            if status.lifecycle_state == Some(LifecycleState::Upgrading) {
                status.lifecycle_state = Some(LifecycleState::Deployed);
            }
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(ctx.options.refresh))
        }
        SavepointOutcome::Completed(location) => {
            status.pending_savepoint = None;
            status.last_savepoint = Some(SavepointStatus {
                path: location.clone(),
                time: Some(now()),
                trigger_nonce: pending.trigger_nonce,
            });
            ctx.event(
                job,
                EventType::Normal,
                "SavepointCompleted",
                format!("savepoint at {location}"),
            )
            .await;
            // Recorded before the cluster goes: if the redeploy or suspend
            // below has to be retried, the old JobManager (the only one
            // that knew this request) may be gone, and the retry starts
            // from `lastSavepoint` instead.
            finish_job(ctx, job, status.clone()).await?;
            match pending.reason.as_str() {
                "upgrade" => {
                    redeploy(
                        ctx,
                        job,
                        names,
                        cluster,
                        status,
                        Carry {
                            restore: Some(location),
                            clear_ha: true,
                            note: "redeployed from the upgrade savepoint",
                        },
                    )
                    .await
                }
                "suspend" => finish_suspend(ctx, job, names, status, true).await,
                _ => {
                    finish_job(ctx, job, status).await?;
                    Ok(Action::requeue(ctx.options.poll))
                }
            }
        }
    }
}

async fn cleanup_job(job: &FlinkJob, ctx: &Context) -> Result<Action> {
    let key = key_of(job);
    ctx.metrics
        .lifecycle("FlinkJob", &key, Some(LifecycleState::Deleting));
    if job.spec.session_ref.is_some() {
        cleanup_session_job(job, ctx).await?;
        ctx.metrics.lifecycle("FlinkJob", &key, None);
        return Ok(Action::await_change());
    }
    let names = Names::new(
        &job.name_any(),
        &job.namespace().unwrap_or_else(|| "default".into()),
    );
    ctx.event(
        job,
        EventType::Normal,
        "Deleting",
        "stopping the cluster and removing HA data",
    )
    .await;
    if !stop_cluster(ctx, &names).await? {
        return Err(Error::Finalizer(
            "JobManager pods are still terminating".into(),
        ));
    }
    let n = delete_ha_data(&ctx.client, &names).await?;
    apply_retention(job, ctx).await?;
    tracing::info!(object = %key, ha_config_maps = n, "FlinkJob cleaned up");
    ctx.metrics.lifecycle("FlinkJob", &key, None);
    Ok(Action::await_change())
}

/// Deletes a stopped application cluster's checkpoints when its
/// configuration asks for it (see [`retention`]). A value that cannot be
/// read keeps them: deletion must never lose data by mistake.
async fn apply_retention(job: &FlinkJob, ctx: &Context) -> Result<()> {
    let conf = &job.spec.flink_configuration;
    let storage = job
        .spec
        .checkpointing
        .as_ref()
        .and_then(|c| c.storage.as_deref());
    let job_id = job.status.as_ref().and_then(|s| s.job_id.as_deref());
    let (Ok(retention::Retention::Delete), Some(storage), Some(job_id)) =
        (retention::retention(conf), storage, job_id)
    else {
        return Ok(());
    };
    let n = retention::delete_checkpoints(storage.trim_end_matches('/'), conf, job_id).await?;
    ctx.event(
        job,
        EventType::Normal,
        "CheckpointsDeleted",
        format!(
            "{n} checkpoints of job {job_id} deleted ({})",
            retention::RETENTION_KEY
        ),
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------
// FlinkJob in a FlinkSession.

async fn session_rest(
    ctx: &Context,
    job: &FlinkJob,
) -> Result<Option<(RestClient, Arc<FlinkSession>)>> {
    let ns = job.namespace().unwrap_or_else(|| "default".into());
    let Some(sref) = &job.spec.session_ref else {
        return Ok(None);
    };
    let api: Api<FlinkSession> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(session) = api.get_opt(&sref.name).await? else {
        return Ok(None);
    };
    let names = Names::new(&session.name_any(), &ns);
    let ha = session
        .spec
        .high_availability
        .as_ref()
        .is_some_and(|h| h.enabled);
    let (rest, _) = rest_for(ctx, &session, &names, ha).await?;
    Ok(Some((rest, Arc::new(session))))
}

fn submit_request(job: &FlinkJob, savepoint: Option<String>, job_id: String) -> SubmitRequest {
    SubmitRequest {
        entry: job.spec.job.entry.clone(),
        args: job.spec.job.args.clone(),
        parallelism: job.spec.job.parallelism.map(|p| p as usize),
        savepoint_path: savepoint,
        allow_non_restored_state: job.spec.job.allow_non_restored_state,
        job_id: Some(job_id),
    }
}

/// The id this FlinkJob's current generation runs under in its session.
fn session_job_id(job: &FlinkJob) -> String {
    let uid = job.uid().unwrap_or_else(|| key_of(job));
    lifecycle::session_job_id(&uid, job.metadata.generation.unwrap_or(0))
}

async fn apply_session_job(job: &FlinkJob, ctx: &Context) -> Result<Action> {
    let mut status = job.status.clone().unwrap_or_default();
    if job.spec.job.entry.trim().is_empty() {
        return report_invalid(
            ctx,
            job,
            status,
            &Error::InvalidSpec("job.entry must not be empty".into()),
        )
        .await;
    }
    let session_name = job
        .spec
        .session_ref
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let Some((rest, _session)) = session_rest(ctx, job).await? else {
        let msg = format!("FlinkSession {session_name} not found");
        if status.error.as_deref() != Some(msg.as_str()) {
            ctx.event(job, EventType::Warning, "SessionMissing", msg.clone())
                .await;
        }
        status.error = Some(msg);
        if status.lifecycle_state.is_none() {
            status.lifecycle_state = Some(LifecycleState::Created);
        }
        finish_job(ctx, job, status).await?;
        return Ok(Action::requeue(ctx.options.refresh));
    };
    if let Some(pending) = status.pending_savepoint.clone() {
        let outcome = match rest.savepoint(&pending.job_id, &pending.request_id).await {
            Ok(o) => o,
            Err(_) => return Ok(Action::requeue(ctx.options.poll)),
        };
        match outcome {
            SavepointOutcome::InProgress => return Ok(Action::requeue(ctx.options.poll)),
            SavepointOutcome::Failed(cause) => {
                status.pending_savepoint = None;
                status.error = Some(format!("savepoint failed: {cause}"));
                ctx.event(job, EventType::Warning, "SavepointFailed", cause)
                    .await;
                finish_job(ctx, job, status).await?;
                return Ok(Action::requeue(ctx.options.refresh));
            }
            SavepointOutcome::Completed(location) => {
                status.pending_savepoint = None;
                status.last_savepoint = Some(SavepointStatus {
                    path: location.clone(),
                    time: Some(now()),
                    trigger_nonce: pending.trigger_nonce,
                });
                ctx.event(
                    job,
                    EventType::Normal,
                    "SavepointCompleted",
                    format!("savepoint at {location}"),
                )
                .await;
                match pending.reason.as_str() {
                    "upgrade" => {
                        return submit_session_job(
                            ctx,
                            job,
                            &rest,
                            status,
                            Some(location),
                            "Upgraded",
                        )
                        .await
                    }
                    "suspend" => {
                        status.job_state = None;
                        transition(
                            ctx,
                            job,
                            &mut status,
                            LifecycleState::Suspended,
                            "Suspended",
                            "job cancelled with a savepoint",
                        )
                        .await;
                        finish_job(ctx, job, status).await?;
                        return Ok(Action::await_change());
                    }
                    _ => {}
                }
            }
        }
    }
    match lifecycle::next_action(&job.spec, Some(&status)) {
        Step::Deploy { resume } => {
            let savepoint = if resume {
                resume_point(job.spec.job.upgrade_mode, &status)
            } else {
                job.spec.job.initial_savepoint_path.clone()
            };
            submit_session_job(
                ctx,
                job,
                &rest,
                status,
                savepoint,
                if resume { "Resumed" } else { "Submitted" },
            )
            .await
        }
        Step::Upgrade(mode) | Step::Suspend(mode) => {
            let suspending = job.spec.job.state == crate::crd::DesiredJobState::Suspended;
            let running = running_job(&rest, status.job_id.as_deref()).await;
            if mode == UpgradeMode::Savepoint {
                if let Some(job_id) = running {
                    let request = rest.trigger_savepoint(&job_id, None, true).await?;
                    status.pending_savepoint = Some(PendingSavepoint {
                        job_id,
                        request_id: request,
                        reason: if suspending { "suspend" } else { "upgrade" }.into(),
                        trigger_nonce: None,
                    });
                    transition(
                        ctx,
                        job,
                        &mut status,
                        LifecycleState::Upgrading,
                        "SavepointTriggered",
                        "savepoint with cancel",
                    )
                    .await;
                    finish_job(ctx, job, status).await?;
                    return Ok(Action::requeue(ctx.options.poll));
                }
            } else if let Some(job_id) = &status.job_id {
                if let Err(e) = rest.cancel(job_id).await {
                    tracing::info!(error = %e, "cancelling the previous job");
                }
            }
            if suspending {
                status.job_state = None;
                transition(
                    ctx,
                    job,
                    &mut status,
                    LifecycleState::Suspended,
                    "Suspended",
                    "job cancelled",
                )
                .await;
                finish_job(ctx, job, status).await?;
                return Ok(Action::await_change());
            }
            let savepoint = resume_point(mode, &status);
            submit_session_job(ctx, job, &rest, status, savepoint, "Upgraded").await
        }
        Step::TriggerSavepoint(nonce) => {
            if let Some(job_id) = running_job(&rest, status.job_id.as_deref()).await {
                let request = rest.trigger_savepoint(&job_id, None, false).await?;
                status.pending_savepoint = Some(PendingSavepoint {
                    job_id,
                    request_id: request,
                    reason: "trigger".into(),
                    trigger_nonce: Some(nonce),
                });
                ctx.event(
                    job,
                    EventType::Normal,
                    "SavepointTriggered",
                    format!("savepoint for nonce {nonce}"),
                )
                .await;
            }
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(ctx.options.poll))
        }
        Step::StaySuspended => {
            finish_job(ctx, job, status).await?;
            Ok(Action::await_change())
        }
        Step::Observe => {
            match rest.jobs().await {
                Ok(jobs) => {
                    let picked = status
                        .job_id
                        .as_deref()
                        .and_then(|id| jobs.iter().find(|j| j.jid == id))
                        .cloned();
                    let (details, cps) = match &picked {
                        Some(j) => (
                            rest.job(&j.jid).await.ok(),
                            rest.checkpoints(&j.jid).await.ok(),
                        ),
                        None => (None, None),
                    };
                    let o = rest::observe(picked.as_ref(), details.as_ref(), cps.as_ref());
                    status.job_state = o.job_state.map(rest::job_state_name);
                    if o.restarts.is_some() {
                        status.restarts = o.restarts;
                    }
                    if o.last_checkpoint.is_some() {
                        status.last_checkpoint = o.last_checkpoint.clone();
                    }
                    let next = rest::lifecycle_for(o.job_state);
                    if next == LifecycleState::Failed {
                        status.error = o.failure.clone().or(Some("job failed".into()));
                    } else if next == LifecycleState::Stable {
                        status.error = None;
                    }
                    let note = status.job_state.clone().unwrap_or_default();
                    transition(ctx, job, &mut status, next, "JobStateChanged", &note).await;
                }
                Err(e) => tracing::debug!(error = %e, "session JobManager not answering"),
            }
            let stable = status.lifecycle_state == Some(LifecycleState::Stable);
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(if stable {
                ctx.options.refresh
            } else {
                ctx.options.poll
            }))
        }
    }
}

fn resume_point(mode: UpgradeMode, status: &FlinkJobStatus) -> Option<String> {
    match mode {
        UpgradeMode::Savepoint => status.last_savepoint.as_ref().map(|s| s.path.clone()),
        UpgradeMode::LastState => status
            .last_checkpoint
            .as_ref()
            .and_then(|c: &CheckpointStatus| c.path.clone())
            .or_else(|| status.last_savepoint.as_ref().map(|s| s.path.clone())),
        UpgradeMode::Stateless => None,
    }
}

async fn submit_session_job(
    ctx: &Context,
    job: &FlinkJob,
    rest: &RestClient,
    mut status: FlinkJobStatus,
    savepoint: Option<String>,
    reason: &str,
) -> Result<Action> {
    // A job the session already has under this generation's id was
    // submitted before (the answer or the status write got lost): adopt it
    // instead of running it twice.
    let job_id = session_job_id(job);
    let submitted = match rest.job(&job_id).await {
        Ok(_) => {
            tracing::info!(job_id, "the session already runs this submission");
            Ok(job_id)
        }
        Err(_) => {
            rest.submit(&submit_request(job, savepoint.clone(), job_id))
                .await
        }
    };
    match submitted {
        Ok(job_id) => {
            status.job_id = Some(job_id.clone());
            status.job_state = None;
            status.error = None;
            status.reconciled_spec = Some(lifecycle::reconciled_spec_json(&job.spec));
            status.restore_savepoint = savepoint;
            status.lifecycle_state = Some(LifecycleState::Upgrading);
            transition(
                ctx,
                job,
                &mut status,
                LifecycleState::Deployed,
                reason,
                &format!("job {job_id} submitted to the session"),
            )
            .await;
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(ctx.options.poll))
        }
        Err(e) => {
            let msg = format!("submitting to the session failed: {e}");
            if status.error.as_deref() != Some(msg.as_str()) {
                ctx.event(job, EventType::Warning, "SubmitFailed", msg.clone())
                    .await;
            }
            status.error = Some(msg);
            finish_job(ctx, job, status).await?;
            Ok(Action::requeue(ctx.options.refresh))
        }
    }
}

async fn cleanup_session_job(job: &FlinkJob, ctx: &Context) -> Result<()> {
    let status = job.status.clone().unwrap_or_default();
    if matches!(
        status.job_state.as_deref(),
        Some("FINISHED" | "FAILED" | "CANCELED")
    ) {
        return Ok(());
    }
    // Without a recorded id the job may still have been submitted (its
    // status write lost): cancel the current generation's id if it runs.
    let recorded = status.job_id.is_some();
    let job_id = status.job_id.unwrap_or_else(|| session_job_id(job));
    match session_rest(ctx, job).await? {
        Some((rest, _)) => match rest.cancel(&job_id).await {
            Ok(()) => {
                ctx.event(
                    job,
                    EventType::Normal,
                    "Cancelled",
                    format!("job {job_id} cancelled"),
                )
                .await;
            }
            Err(e) if recorded => {
                ctx.event(
                    job,
                    EventType::Warning,
                    "CancelFailed",
                    format!("cancelling job {job_id}: {e}"),
                )
                .await;
            }
            Err(e) => tracing::debug!(job_id, error = %e, "no job was submitted"),
        },
        None => tracing::info!(job_id, "session gone; nothing to cancel"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// FlinkSession.

async fn write_session_status(
    ctx: &Context,
    s: &FlinkSession,
    status: &FlinkSessionStatus,
) -> Result<()> {
    ctx.metrics
        .lifecycle("FlinkSession", &key_of(s), status.lifecycle_state);
    if s.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<FlinkSession> =
        Api::namespaced(ctx.client.clone(), &s.namespace().unwrap_or_default());
    let patch = json!({"status": with_nulls(serde_json::to_value(status)?, &[
        "observedGeneration", "lifecycleState", "jobsRunning", "taskManagers",
        "jobManagerLeader", "conditions", "error", "reconciledSpec",
    ])});
    api.patch_status(
        &s.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Reconciles one FlinkSession.
pub async fn reconcile_session(session: Arc<FlinkSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciled("FlinkSession");
    let ns = session.namespace().unwrap_or_else(|| "default".into());
    let key = key_of(session.as_ref());
    let api: Api<FlinkSession> = Api::namespaced(ctx.client.clone(), &ns);
    if needs_finalizer(session.as_ref()) {
        add_finalizer(&api, session.as_ref()).await?;
        return Ok(Action::await_change());
    }
    let span = tracing::info_span!("reconcile", kind = "FlinkSession", object = %key);
    let inner = ctx.clone();
    let action = finalizer(&api, FINALIZER, session, move |event| async move {
        match event {
            FinalizerEvent::Apply(s) => apply_session(&s, &inner).await,
            FinalizerEvent::Cleanup(s) => cleanup_session(&s, &inner).await,
        }
    })
    .instrument(span)
    .await;
    let action = finalizer_outcome(action)?;
    ctx.succeeded(&key);
    Ok(action)
}

/// Error policy of FlinkSessions.
pub fn session_error_policy(s: Arc<FlinkSession>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = key_of(s.as_ref());
    ctx.metrics.failed("FlinkSession", error);
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "FlinkSession reconcile failed");
    Action::requeue(delay)
}

async fn apply_session(s: &FlinkSession, ctx: &Context) -> Result<Action> {
    let ns = s.namespace().unwrap_or_else(|| "default".into());
    let names = Names::new(&s.name_any(), &ns);
    let mut status = s.status.clone().unwrap_or_default();
    status.observed_generation = s.metadata.generation;
    let cluster = ClusterSpec::from_session(&s.spec);
    if let Err(e) = config::validate(&cluster) {
        let message = e.to_string();
        if status.error.as_deref() != Some(message.as_str()) {
            ctx.event(s, EventType::Warning, "InvalidSpec", message.clone())
                .await;
        }
        status.error = Some(message.clone());
        status.lifecycle_state = Some(LifecycleState::Failed);
        set_condition(
            &mut status.conditions,
            "Ready",
            false,
            "InvalidSpec",
            &message,
        );
        write_session_status(ctx, s, &status).await?;
        return Ok(Action::await_change());
    }
    let spec_json = serde_json::to_string(&s.spec)?;
    let changed = status.reconciled_spec.as_deref() != Some(spec_json.as_str());
    apply_cluster(ctx, s, &names, &cluster, None).await?;
    if changed {
        let reason = if status.reconciled_spec.is_some() {
            "Upgraded"
        } else {
            "Deployed"
        };
        ctx.event(s, EventType::Normal, reason, "session cluster applied")
            .await;
        status.reconciled_spec = Some(spec_json);
        status.lifecycle_state = Some(LifecycleState::Deployed);
    }
    let ha = cluster.high_availability.enabled;
    let (rest, leader) = rest_for(ctx, s, &names, ha).await?;
    status.job_manager_leader = leader;
    let tm = s.spec.task_manager.clone().unwrap_or_default();
    let mut desired = config::session_task_managers(
        0,
        cluster.slots(),
        tm.min_task_managers,
        tm.max_task_managers,
    );
    match rest.jobs().await {
        Ok(jobs) => {
            let running = jobs
                .iter()
                .filter(|j| j.state == JobStatus::Running)
                .count();
            status.jobs_running = Some(u32::try_from(running).unwrap_or(u32::MAX));
            // Slots the unfinished jobs hold or wait for.
            let mut wanted = 0u32;
            for j in jobs.iter().filter(|j| !j.state.is_terminal()) {
                if let Ok(d) = rest.job(&j.jid).await {
                    wanted =
                        wanted.saturating_add(u32::try_from(d.parallelism).unwrap_or(u32::MAX));
                }
            }
            desired = config::session_task_managers(
                wanted,
                cluster.slots(),
                tm.min_task_managers,
                tm.max_task_managers,
            );
            if status.lifecycle_state != Some(LifecycleState::Stable) {
                status.lifecycle_state = Some(LifecycleState::Stable);
                ctx.event(
                    s,
                    EventType::Normal,
                    "SessionReady",
                    "session JobManager answers",
                )
                .await;
            }
            status.error = None;
        }
        Err(e) => {
            tracing::debug!(error = %e, "session JobManager not answering yet");
            if status.lifecycle_state.is_none() {
                status.lifecycle_state = Some(LifecycleState::Deployed);
            }
        }
    }
    status.task_managers = Some(task_managers(ctx, &names, desired).await?);
    let ok = status.lifecycle_state == Some(LifecycleState::Stable);
    let state = status
        .lifecycle_state
        .map_or("CREATED", LifecycleState::as_str);
    set_condition(&mut status.conditions, "Ready", ok, state, "");
    write_session_status(ctx, s, &status).await?;
    Ok(Action::requeue(if ok {
        ctx.options.refresh
    } else {
        ctx.options.poll
    }))
}

async fn cleanup_session(s: &FlinkSession, ctx: &Context) -> Result<Action> {
    let key = key_of(s);
    ctx.metrics
        .lifecycle("FlinkSession", &key, Some(LifecycleState::Deleting));
    let names = Names::new(
        &s.name_any(),
        &s.namespace().unwrap_or_else(|| "default".into()),
    );
    ctx.event(
        s,
        EventType::Normal,
        "Deleting",
        "stopping the session and removing HA data",
    )
    .await;
    if !stop_cluster(ctx, &names).await? {
        return Err(Error::Finalizer(
            "JobManager pods are still terminating".into(),
        ));
    }
    delete_ha_data(&ctx.client, &names).await?;
    ctx.metrics.lifecycle("FlinkSession", &key, None);
    Ok(Action::await_change())
}
