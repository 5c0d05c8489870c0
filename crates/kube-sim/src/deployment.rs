//! The Deployment and ReplicaSet controllers: a Deployment keeps one
//! ReplicaSet per pod template (named `<deployment>-<template hash>`), the
//! current one scaled to `spec.replicas` and older ones to zero; a
//! ReplicaSet keeps `spec.replicas` Pod objects from its template. Both
//! report status as Kubernetes does.
//!
//! Why it exists: Rill's operator, `kubectl rollout status`, `kubectl wait
//! --for=condition=Available` and Helm's `--wait` expect Deployments to
//! produce ReplicaSets and pods. Helm's readiness checks find a Deployment's
//! newest ReplicaSet by its controller reference and template, so the layer
//! is kept as Kubernetes has it. The decisions of what to create, scale,
//! delete and report are the pure [`plan_deployment`] and
//! [`plan_replica_set`]; [`run`] is a small loop that re-plans after every
//! store change and writes the result back through the same store API
//! clients use.
//!
//! A template change rolls out by `spec.strategy`: `Recreate` waits until
//! every old pod is gone (terminating ones included) before the new
//! template's first pod, as the operator's JobManager Deployments need;
//! `RollingUpdate` (the default, 25% surge and unavailability) steps the
//! new ReplicaSet up and the old ones down within those bounds.
//!
//! Simplifications (documented, deliberate): `minReadySeconds` and
//! `progressDeadlineSeconds` are ignored (a ready pod is available at
//! once); without a kubelet, pods stay `Pending` unless `mark_pods_ready`
//! is set, in which case they are reported Running and Ready as soon as
//! they exist.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::meta;
use crate::resources::ResourceType;
use crate::store::{DeleteOptions, Part, Store};

/// The label that ties pods to one template version.
pub const HASH_LABEL: &str = "pod-template-hash";

/// The annotation numbering a Deployment's ReplicaSets by template.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Old ReplicaSets a Deployment keeps when `revisionHistoryLimit` is unset.
const DEFAULT_HISTORY: usize = 10;

/// What one reconcile of a Deployment should do.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentPlan {
    /// The ReplicaSet of the current template, when it does not exist yet.
    pub create: Option<Value>,
    /// Existing ReplicaSets whose `spec.replicas` change: (name, replicas).
    pub scale: Vec<(String, i64)>,
    /// Names of old, empty ReplicaSets beyond `revisionHistoryLimit`.
    pub delete: Vec<String>,
    /// The Deployment's new `status`.
    pub status: Value,
}

/// What one reconcile of a ReplicaSet should do.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetPlan {
    /// Pods to create (complete objects, named by `generateName`).
    pub create: Vec<Value>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The ReplicaSet's new `status`.
    pub status: Value,
}

/// Serialize with sorted keys, so equal templates hash equally.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for k in keys {
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for x in a {
                canonical(x, out);
                out.push(',');
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A short, label-safe hash of a pod template.
pub fn template_hash(template: &Value) -> String {
    let mut s = String::new();
    canonical(template, &mut s);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|_| {
            let c = ALPHABET[(h % ALPHABET.len() as u64) as usize] as char;
            h /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

/// The label selector string of a `LabelSelector` object.
pub fn selector_string(sel: &Value) -> String {
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if let Some(exprs) = sel.get("matchExpressions").and_then(Value::as_array) {
        for e in exprs {
            let key = e.get("key").and_then(Value::as_str).unwrap_or("");
            let values: Vec<&str> = e
                .get("values")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e.get("operator").and_then(Value::as_str).unwrap_or("") {
                "In" => parts.push(format!("{key} in ({})", values.join(","))),
                "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
                "Exists" => parts.push(key.to_string()),
                "DoesNotExist" => parts.push(format!("!{key}")),
                _ => {}
            }
        }
    }
    parts.join(",")
}

fn is_ready(pod: &Value) -> bool {
    meta::get_path(pod, &["status", "conditions"])
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// How a Deployment replaces the pods of an old template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// Every old pod is gone before the first new one is created.
    Recreate,
    /// New pods come up while old ones go, within the surge and
    /// unavailability bounds (resolved against `spec.replicas`).
    RollingUpdate {
        max_surge: i64,
        max_unavailable: i64,
    },
}

impl Strategy {
    /// `spec.strategy`, with Kubernetes' defaults: `RollingUpdate` with 25%
    /// surge (rounded up) and 25% unavailable (rounded down); when both
    /// resolve to zero one pod may be unavailable.
    fn of(deploy: &Value, replicas: i64) -> Strategy {
        let strategy = meta::get_path(deploy, &["spec", "strategy"]);
        if strategy.and_then(|s| s.get("type")).and_then(Value::as_str) == Some("Recreate") {
            return Strategy::Recreate;
        }
        let bound = |field: &str, round_up: bool| {
            let v = strategy
                .and_then(|s| s.get("rollingUpdate"))
                .and_then(|r| r.get(field));
            match v {
                Some(Value::Number(n)) => n.as_i64().unwrap_or(0).max(0),
                Some(Value::String(s)) => s
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<i64>().ok())
                    .map_or(0, |p| percent_of(replicas, p, round_up)),
                _ => percent_of(replicas, 25, round_up),
            }
        };
        let (max_surge, mut max_unavailable) =
            (bound("maxSurge", true), bound("maxUnavailable", false));
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        }
    }

    /// Pods that may be unready while the Deployment still counts as
    /// Available.
    fn max_unavailable(self, replicas: i64) -> i64 {
        match self {
            Strategy::Recreate => 0,
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => max_unavailable.min(replicas),
        }
    }
}

fn percent_of(replicas: i64, percent: i64, round_up: bool) -> i64 {
    let scaled = replicas.max(0) * percent.max(0);
    if round_up {
        (scaled + 99) / 100
    } else {
        scaled / 100
    }
}

/// What a Deployment's rollout looks at in one of its ReplicaSets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetCounts {
    /// `spec.replicas`.
    replicas: i64,
    /// Ready pods not being deleted.
    ready: i64,
    /// Pods still running, terminating ones included.
    running: i64,
}

impl SetCounts {
    fn of(rs: &Value, pods: &[Arc<Value>]) -> SetCounts {
        let ready = live_pods(rs, pods).iter().filter(|p| is_ready(p)).count() as i64;
        let running = pods
            .iter()
            .filter(|p| controls(rs, p))
            .filter(|p| {
                !matches!(
                    meta::str_at(p, &["status", "phase"]),
                    Some("Succeeded" | "Failed")
                )
            })
            .count() as i64;
        SetCounts {
            replicas: replicas_of(rs),
            ready,
            running,
        }
    }
}

/// `Recreate`: old ReplicaSets go to zero; the current one gets
/// `replicas` only once no old pod runs any more (`None`: leave it, or do
/// not create it yet). Returns the old sets' targets and the current one's.
fn plan_recreate(old: &[SetCounts], replicas: i64) -> (Vec<i64>, Option<i64>) {
    let old_running = old.iter().any(|c| c.running > 0);
    (vec![0; old.len()], (!old_running).then_some(replicas))
}

/// `RollingUpdate`, one step as Kubernetes takes it: scale the current
/// ReplicaSet up as far as `max_surge` allows; when it cannot grow, scale
/// old ones (oldest first, `old` is in revision order) down as far as
/// `max_unavailable` allows, unready pods first. Returns the old sets'
/// targets and the current one's.
fn plan_rolling(
    old: &[SetCounts],
    current: Option<SetCounts>,
    replicas: i64,
    max_surge: i64,
    max_unavailable: i64,
) -> (Vec<i64>, Option<i64>) {
    let mut targets: Vec<i64> = old.iter().map(|c| c.replicas).collect();
    let new_spec = current.map_or(0, |c| c.replicas);
    let all_spec: i64 = targets.iter().sum::<i64>() + new_spec;
    let new_target = if new_spec > replicas {
        replicas
    } else {
        let room = (replicas + max_surge - all_spec).max(0);
        new_spec + room.min(replicas - new_spec)
    };
    if current.is_none() || new_target != new_spec {
        return (targets, Some(new_target));
    }
    let min_available = replicas - max_unavailable;
    let new_unavailable = current.map_or(0, |c| (c.replicas - c.ready).max(0));
    // Unready old pods go first: they add nothing to availability.
    let mut budget = all_spec - min_available - new_unavailable;
    for (c, t) in old.iter().zip(targets.iter_mut()) {
        if budget <= 0 {
            break;
        }
        let unready = (*t - c.ready).max(0).min(budget);
        *t -= unready;
        budget -= unready;
    }
    // Then ready ones, while enough stay available.
    let available: i64 = old.iter().map(|c| c.ready).sum::<i64>() + current.map_or(0, |c| c.ready);
    let mut budget = available - min_available;
    for t in targets.iter_mut() {
        if budget <= 0 {
            break;
        }
        let down = (*t).min(budget);
        *t -= down;
        budget -= down;
    }
    (targets, Some(new_target))
}

fn condition(
    prev: Option<&Value>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let old = prev
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
        });
    let same = old.is_some_and(|c| {
        c.get("status").and_then(Value::as_str) == Some(status)
            && c.get("reason").and_then(Value::as_str) == Some(reason)
    });
    let keep = |field: &str| {
        old.and_then(|c| c.get(field))
            .cloned()
            .unwrap_or_else(|| json!(now))
    };
    let (update, transition) = if same {
        (keep("lastUpdateTime"), keep("lastTransitionTime"))
    } else {
        (json!(now), json!(now))
    };
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition,
    })
}

/// Whether `owner` (a Deployment or ReplicaSet) controls `obj`: like
/// Kubernetes, only when `obj`'s controller reference (`controller: true`)
/// names the owner and its labels match the owner's selector. Objects that
/// merely list the owner (e.g. for garbage collection, as TaskManager pods
/// list their JobManager's Deployment) are left alone.
pub fn controls(owner: &Value, obj: &Value) -> bool {
    let uid = meta::uid(owner);
    let controlled = meta::get_path(obj, &["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(uid)
                    && r.get("controller").and_then(Value::as_bool) == Some(true)
            })
        });
    controlled
        && meta::get_path(owner, &["spec", "selector"]).is_some_and(|sel| {
            crate::selector::LabelSelector::parse(&selector_string(sel))
                .is_ok_and(|s| !s.is_empty() && s.matches(obj))
        })
}

fn replicas_of(obj: &Value) -> i64 {
    meta::get_path(obj, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0)
}

fn hash_of(obj: &Value) -> Option<&str> {
    meta::labels(obj)
        .into_iter()
        .find(|(k, _)| *k == HASH_LABEL)
        .map(|(_, v)| v)
}

fn revision_of(obj: &Value) -> i64 {
    meta::get_path(obj, &["metadata", "annotations", REVISION_ANNOTATION])
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn controller_ref(owner: &Value, kind: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": kind, "name": meta::name(owner),
        "uid": meta::uid(owner), "controller": true, "blockOwnerDeletion": true,
    })
}

/// Pods `owner` controls that are not being deleted.
fn live_pods<'a>(owner: &Value, pods: &'a [Arc<Value>]) -> Vec<&'a Arc<Value>> {
    pods.iter()
        .filter(|p| controls(owner, p) && !meta::is_deleting(p))
        .collect()
}

/// The ReplicaSet a Deployment runs `template` (with `hash`) in.
fn new_replica_set(deploy: &Value, template: &Value, hash: &str, revision: i64) -> Value {
    let replicas = replicas_of(deploy);
    let mut template = template.clone();
    let labels = meta::meta_mut(&mut template)
        .entry("labels")
        .or_insert_with(|| json!({}));
    if let Some(m) = labels.as_object_mut() {
        m.insert(HASH_LABEL.into(), json!(hash));
    }
    let labels = template["metadata"]["labels"].clone();
    let mut selector = meta::get_path(deploy, &["spec", "selector"])
        .cloned()
        .unwrap_or(json!({}));
    if let Some(m) = selector.as_object_mut() {
        let ml = m.entry("matchLabels").or_insert_with(|| json!({}));
        if let Some(ml) = ml.as_object_mut() {
            ml.insert(HASH_LABEL.into(), json!(hash));
        }
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": format!("{}-{hash}", meta::name(deploy)),
            "namespace": meta::namespace(deploy),
            "labels": labels,
            "annotations": {
                REVISION_ANNOTATION: revision.to_string(),
                "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
            },
            "ownerReferences": [controller_ref(deploy, "Deployment")],
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template},
    })
}

/// Decide the ReplicaSets and status of one Deployment, given the
/// ReplicaSets and pods in its namespace.
pub fn plan_deployment(
    deploy: &Value,
    sets: &[Arc<Value>],
    pods: &[Arc<Value>],
    now: &str,
) -> DeploymentPlan {
    let name = meta::name(deploy);
    let replicas = replicas_of(deploy);
    let template = meta::get_path(deploy, &["spec", "template"])
        .cloned()
        .unwrap_or(json!({}));
    let hash = template_hash(&template);
    let owned: Vec<&Arc<Value>> = sets
        .iter()
        .filter(|s| controls(deploy, s) && !meta::is_deleting(s))
        .collect();
    let current = owned.iter().find(|s| hash_of(s) == Some(hash.as_str()));
    let mut old: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|s| hash_of(s) != Some(hash.as_str()))
        .copied()
        .collect();
    old.sort_by_key(|s| revision_of(s));
    let old_counts: Vec<SetCounts> = old.iter().map(|s| SetCounts::of(s, pods)).collect();
    let mut scale = Vec::new();
    let mut create = None;
    let (old_targets, new_target) = match Strategy::of(deploy, replicas) {
        Strategy::Recreate => plan_recreate(&old_counts, replicas),
        Strategy::RollingUpdate {
            max_surge,
            max_unavailable,
        } => plan_rolling(
            &old_counts,
            current.map(|s| SetCounts::of(s, pods)),
            replicas,
            max_surge,
            max_unavailable,
        ),
    };
    for (s, target) in old.iter().zip(old_targets) {
        if replicas_of(s) != target {
            scale.push((meta::name(s).to_string(), target));
        }
    }
    match (current, new_target) {
        (Some(s), Some(target)) if replicas_of(s) != target => {
            scale.push((meta::name(s).to_string(), target));
        }
        (None, Some(target)) => {
            let revision = owned.iter().map(|s| revision_of(s)).max().unwrap_or(0) + 1;
            let mut rs = new_replica_set(deploy, &template, &hash, revision);
            rs["spec"]["replicas"] = json!(target);
            create = Some(rs);
        }
        _ => {}
    }
    // Old ReplicaSets that are empty go beyond the history limit, oldest first.
    let limit = meta::get_path(deploy, &["spec", "revisionHistoryLimit"])
        .and_then(Value::as_u64)
        .map_or(DEFAULT_HISTORY, |n| n as usize);
    old.retain(|s| replicas_of(s) == 0 && live_pods(s, pods).is_empty());
    let delete = old
        .iter()
        .take(old.len().saturating_sub(limit))
        .map(|s| meta::name(s).to_string())
        .collect();

    let mut total = 0i64;
    let mut ready = 0i64;
    let mut updated = 0i64;
    for s in &owned {
        let mine = live_pods(s, pods);
        total += mine.len() as i64;
        ready += mine.iter().filter(|p| is_ready(p)).count() as i64;
        if hash_of(s) == Some(hash.as_str()) {
            updated += mine.len() as i64;
        }
    }
    let prev = deploy.get("status");
    let available_ok = ready >= replicas - Strategy::of(deploy, replicas).max_unavailable(replicas);
    let done = current.is_some() && updated == replicas && ready == replicas && total == replicas;
    let new_set = format!("{name}-{hash}");
    let mut status = json!({
        "observedGeneration": meta::get_path(deploy, &["metadata", "generation"]).cloned().unwrap_or(json!(1)),
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "conditions": [
            condition(prev, "Available", available_ok,
                      if available_ok { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                      if available_ok { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                      now),
            condition(prev, "Progressing", true,
                      if done { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                      &if done {
                          format!("ReplicaSet \"{new_set}\" has successfully progressed.")
                      } else {
                          format!("ReplicaSet \"{new_set}\" is progressing.")
                      },
                      now),
        ],
    });
    let unavailable = (replicas - ready).max(0);
    if unavailable > 0 {
        status["unavailableReplicas"] = json!(unavailable);
    }
    if ready == 0 {
        if let Some(m) = status.as_object_mut() {
            m.remove("readyReplicas");
            m.remove("availableReplicas");
        }
    }
    DeploymentPlan {
        create,
        scale,
        delete,
        status,
    }
}

/// Decide creations, deletions and status for one ReplicaSet, given all
/// pods in its namespace. Surplus pods go not-ready first, newest first.
pub fn plan_replica_set(rs: &Value, pods: &[Arc<Value>]) -> ReplicaSetPlan {
    let name = meta::name(rs);
    let replicas = replicas_of(rs);
    let template = meta::get_path(rs, &["spec", "template"])
        .cloned()
        .unwrap_or(json!({}));
    let mut current = live_pods(rs, pods);
    current.sort_by(|a, b| {
        is_ready(b)
            .cmp(&is_ready(a))
            .then_with(|| meta::name(a).cmp(meta::name(b)))
    });
    let mut create = Vec::new();
    let mut delete = Vec::new();
    let have = current.len() as i64;
    if have > replicas {
        for p in current.iter().rev().take((have - replicas) as usize) {
            delete.push(meta::name(p).to_string());
        }
        current.truncate(replicas as usize);
    } else {
        let labels = meta::get_path(&template, &["metadata", "labels"])
            .cloned()
            .unwrap_or(json!({}));
        let annotations = meta::get_path(&template, &["metadata", "annotations"]).cloned();
        for _ in have..replicas {
            let mut metadata = json!({
                "generateName": format!("{name}-"),
                "labels": labels,
                "ownerReferences": [controller_ref(rs, "ReplicaSet")],
            });
            if let Some(a) = &annotations {
                metadata["annotations"] = a.clone();
            }
            create.push(json!({
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": metadata,
                "spec": template.get("spec").cloned().unwrap_or(json!({})),
            }));
        }
    }
    let count = current.len() as i64;
    let ready = current.iter().filter(|p| is_ready(p)).count() as i64;
    let mut status = json!({
        "observedGeneration": meta::get_path(rs, &["metadata", "generation"]).cloned().unwrap_or(json!(1)),
        "replicas": count,
        "fullyLabeledReplicas": count,
        "readyReplicas": ready,
        "availableReplicas": ready,
    });
    if let Some(m) = status.as_object_mut() {
        // Kubernetes omits zero counts but `replicas`.
        m.retain(|k, v| k == "replicas" || k == "observedGeneration" || v != &json!(0));
    }
    ReplicaSetPlan {
        create,
        delete,
        status,
    }
}

/// A Running/Ready status for a pod, used when no kubelet runs pods.
pub fn ready_status(pod: &Value, now: &str) -> Value {
    let containers: Vec<Value> = meta::get_path(pod, &["spec", "containers"])
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c.get("name").cloned().unwrap_or(json!("")),
                        "image": c.get("image").cloned().unwrap_or(json!("")),
                        "imageID": "",
                        "ready": true,
                        "started": true,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now}},
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    json!({
        "phase": "Running",
        "conditions": [cond("Initialized"), cond("Ready"), cond("ContainersReady"), cond("PodScheduled")],
        "containerStatuses": containers,
        "startTime": now,
        "qosClass": "BestEffort",
    })
}

/// Create `pods`; with `mark_ready`, report them Running and Ready at once.
fn create_pods(store: &Store, pod_t: &ResourceType, ns: &str, pods: Vec<Value>, mark_ready: bool) {
    for pod in pods {
        match store.create(pod_t, "v1", ns, pod, false) {
            Ok(created) if mark_ready => {
                let mut next = created.clone();
                next["status"] = ready_status(&created, &meta::now_rfc3339());
                let name = meta::name(&created);
                if let Err(e) = store.update(pod_t, "v1", ns, name, next, Part::Status, false) {
                    tracing::debug!(pod = %name, error = %e, "marking pod ready");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "creating pod"),
        }
    }
}

/// Write `status` into `obj` unless it is gone or unchanged.
fn write_status(store: &Store, rt: &ResourceType, obj: &Value, status: Value) {
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut next = obj.clone();
    next["status"] = status;
    let (ns, name) = (meta::namespace(obj), meta::name(obj));
    if let Err(e) = store.update(rt, "v1", ns, name, next, Part::Status, false) {
        tracing::debug!(kind = %rt.kind, %name, error = %e, "writing status");
    }
}

/// Reconcile every Deployment, then every ReplicaSet, once.
pub fn reconcile_all(store: &Store, mark_pods_ready: bool) {
    let (Some(deploy_t), Some(rs_t), Some(pod_t)) = (
        store.find_type("apps", "v1", "deployments"),
        store.find_type("apps", "v1", "replicasets"),
        store.find_type("", "v1", "pods"),
    ) else {
        return;
    };
    let now = meta::now_rfc3339;
    let (deployments, _) = store.list(&deploy_t, None);
    for d in deployments.iter().filter(|d| !meta::is_deleting(d)) {
        let ns = meta::namespace(d);
        let (sets, _) = store.list(&rs_t, Some(ns));
        let (pods, _) = store.list(&pod_t, Some(ns));
        let plan = plan_deployment(d, &sets, &pods, &now());
        if let Some(rs) = plan.create {
            if let Err(e) = store.create(&rs_t, "v1", ns, rs, false) {
                tracing::warn!(deployment = %meta::name(d), error = %e, "creating ReplicaSet");
            }
        }
        for (name, replicas) in plan.scale {
            let scaled = store.get(&rs_t, ns, &name).and_then(|mut rs| {
                rs["spec"]["replicas"] = json!(replicas);
                store.update(&rs_t, "v1", ns, &name, rs, Part::Main, false)
            });
            if let Err(e) = scaled {
                tracing::debug!(replicaset = %name, error = %e, "scaling ReplicaSet");
            }
        }
        for name in plan.delete {
            if let Err(e) = store.delete(&rs_t, ns, &name, &DeleteOptions::default()) {
                tracing::debug!(replicaset = %name, error = %e, "deleting old ReplicaSet");
            }
        }
    }

    let (sets, _) = store.list(&rs_t, None);
    for rs in sets.iter().filter(|s| !meta::is_deleting(s)) {
        let ns = meta::namespace(rs);
        if mark_pods_ready {
            let (pods, _) = store.list(&pod_t, Some(ns));
            for p in live_pods(rs, &pods)
                .into_iter()
                .filter(|p| meta::str_at(p, &["status", "phase"]) == Some("Pending"))
            {
                let mut next = (**p).clone();
                next["status"] = ready_status(p, &now());
                if let Err(e) =
                    store.update(&pod_t, "v1", ns, meta::name(p), next, Part::Status, false)
                {
                    tracing::debug!(error = %e, "marking pod ready");
                }
            }
        }
        let (pods, _) = store.list(&pod_t, Some(ns));
        let plan = plan_replica_set(rs, &pods);
        create_pods(store, &pod_t, ns, plan.create, mark_pods_ready);
        for pod in plan.delete {
            if let Err(e) = store.delete(&pod_t, ns, &pod, &DeleteOptions::default()) {
                tracing::debug!(replicaset = %meta::name(rs), error = %e, "deleting pod");
            }
        }
        // Status counts the pods as they are now.
        let (Ok(fresh), (pods, _)) = (
            store.get(&rs_t, ns, meta::name(rs)),
            store.list(&pod_t, Some(ns)),
        ) else {
            continue;
        };
        write_status(store, &rs_t, &fresh, plan_replica_set(&fresh, &pods).status);
    }

    let (deployments, _) = store.list(&deploy_t, None);
    for d in deployments.iter().filter(|d| !meta::is_deleting(d)) {
        let ns = meta::namespace(d);
        let (sets, _) = store.list(&rs_t, Some(ns));
        let (pods, _) = store.list(&pod_t, Some(ns));
        write_status(
            store,
            &deploy_t,
            d,
            plan_deployment(d, &sets, &pods, &now()).status,
        );
    }
}

/// Run the controller until `shutdown` turns true.
pub async fn run(store: Arc<Store>, mark_pods_ready: bool, mut shutdown: watch::Receiver<bool>) {
    let mut changes = store.subscribe();
    loop {
        reconcile_all(&store, mark_pods_ready);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::LabelSelector;

    fn deploy(replicas: i64, image: &str) -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 3},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "strategy": {"rollingUpdate": {"maxUnavailable": "25%"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}
        })
    }

    /// The ReplicaSet `d` creates, stored with a uid and generation.
    fn set_of(d: &Value, revision: i64) -> Arc<Value> {
        let hash = template_hash(&d["spec"]["template"]);
        let mut rs = new_replica_set(d, &d["spec"]["template"], &hash, revision);
        rs["metadata"]["uid"] = json!(format!("rs-{hash}"));
        rs["metadata"]["generation"] = json!(1);
        Arc::new(rs)
    }

    fn pod_of(rs: &Value, name: &str, ready: bool) -> Arc<Value> {
        let mut p = json!({
            "metadata": {"name": name, "labels": rs["spec"]["template"]["metadata"]["labels"].clone(),
                         "ownerReferences": [controller_ref(rs, "ReplicaSet")]},
            "status": {"phase": "Pending"}
        });
        if ready {
            p["status"] = ready_status(&p, "t");
        }
        Arc::new(p)
    }

    #[test]
    fn a_deployment_creates_its_replica_set_with_the_template_and_selector() {
        let d = deploy(3, "a");
        let p = plan_deployment(&d, &[], &[], "t");
        let rs = p.create.expect("a ReplicaSet");
        let hash = template_hash(&d["spec"]["template"]);
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(rs["metadata"]["annotations"][REVISION_ANNOTATION], "1");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["uid"], "d-uid");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(rs["spec"]["replicas"], 3);
        assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
        assert_eq!(
            rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
            hash
        );
        assert_eq!(
            rs["spec"]["template"]["spec"],
            d["spec"]["template"]["spec"]
        );
        assert!(controls(&d, &rs));
        assert_eq!(p.status["observedGeneration"], 3);
        assert_eq!(p.status["conditions"][0]["status"], "False");
        assert_eq!(p.status["conditions"][1]["reason"], "ReplicaSetUpdated");
    }

    #[test]
    fn a_replica_set_creates_missing_pods_and_reports_them() {
        let d = deploy(3, "a");
        let rs = set_of(&d, 1);
        let p = plan_replica_set(&rs, &[pod_of(&rs, "web-x-1", true)]);
        assert_eq!(p.create.len(), 2);
        assert!(p.delete.is_empty());
        let pod = &p.create[0];
        assert_eq!(
            pod["metadata"]["generateName"],
            format!("{}-", rs["metadata"]["name"].as_str().unwrap())
        );
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p.status["replicas"], 1);
        assert_eq!(p.status["readyReplicas"], 1);
        assert_eq!(p.status["observedGeneration"], 1);
    }

    #[test]
    fn a_replica_set_scales_down_unready_pods_first() {
        let d = deploy(1, "a");
        let rs = set_of(&d, 1);
        let pods = vec![pod_of(&rs, "web-1", false), pod_of(&rs, "web-2", true)];
        let p = plan_replica_set(&rs, &pods);
        assert_eq!(p.delete, vec!["web-1"]);
        assert!(p.create.is_empty());
    }

    /// A pod of `rs` on its way out (`deletionTimestamp` set).
    fn terminating(pod: &Arc<Value>) -> Arc<Value> {
        let mut p = (**pod).clone();
        p["metadata"]["deletionTimestamp"] = json!("t");
        Arc::new(p)
    }

    #[test]
    fn recreate_starts_the_new_template_only_when_every_old_pod_is_gone() {
        let mut old_d = deploy(2, "a");
        old_d["spec"]["strategy"] = json!({"type": "Recreate"});
        let old = set_of(&old_d, 1);
        let pods = vec![pod_of(&old, "web-a-1", true), pod_of(&old, "web-a-2", true)];
        let mut d = old_d.clone();
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("b");
        let sets = std::slice::from_ref(&old);
        let p = plan_deployment(&d, sets, &pods, "t");
        assert_eq!(p.scale, vec![(meta::name(&old).to_string(), 0)]);
        assert!(p.create.is_none(), "old pods still run");
        assert_eq!(p.status["updatedReplicas"], 0);
        assert_eq!(p.status["replicas"], 2);

        // Terminating pods still run: the new template waits for them.
        let mut old0 = (*old).clone();
        old0["spec"]["replicas"] = json!(0);
        let old0 = Arc::new(old0);
        let sets = std::slice::from_ref(&old0);
        let going: Vec<_> = pods.iter().map(terminating).collect();
        let p = plan_deployment(&d, sets, &going, "t");
        assert!(p.create.is_none() && p.scale.is_empty(), "{p:?}");
        assert_eq!(p.status["conditions"][0]["status"], "False");

        let p = plan_deployment(&d, sets, &[], "t");
        let new = p.create.expect("the new template's ReplicaSet");
        assert_eq!(new["metadata"]["annotations"][REVISION_ANNOTATION], "2");
        assert_eq!(new["spec"]["replicas"], 2);
        assert!(p.delete.is_empty(), "within the history limit");
    }

    #[test]
    fn old_empty_replica_sets_beyond_the_history_limit_go_oldest_first() {
        let mut limited = deploy(2, "b");
        limited["spec"]["revisionHistoryLimit"] = json!(1);
        let mut sets = Vec::new();
        for (i, image) in ["x", "y", "z"].iter().enumerate() {
            let mut s = (*set_of(&deploy(2, image), i as i64 + 1)).clone();
            s["spec"]["replicas"] = json!(0);
            sets.push(Arc::new(s));
        }
        let p = plan_deployment(&limited, &sets, &[], "t");
        let names: Vec<String> = sets[..2]
            .iter()
            .map(|s| meta::name(s).to_string())
            .collect();
        assert_eq!(p.delete, names);
        assert!(p.scale.is_empty());
    }

    #[test]
    fn rolling_update_bounds_resolve_like_kubernetes() {
        let mut d = deploy(10, "a");
        d["spec"]["strategy"] = json!({});
        let s = Strategy::of(&d, 10);
        assert_eq!(
            s,
            Strategy::RollingUpdate {
                max_surge: 3,
                max_unavailable: 2
            },
            "25% of 10: surge rounds up, unavailable down"
        );
        assert_eq!(s.max_unavailable(10), 2);
        d["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}});
        assert_eq!(
            Strategy::of(&d, 10),
            Strategy::RollingUpdate {
                max_surge: 0,
                max_unavailable: 1
            },
            "both zero would never progress"
        );
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(Strategy::of(&d, 10).max_unavailable(10), 0);
    }

    /// Rolls `from` to `to` step by step (a created pod turns ready one step
    /// later, a deleted one is gone at once), checking the bounds at every
    /// step; returns the steps taken.
    fn roll(from: &Value, to: &Value, surge: i64, unavailable: i64) -> usize {
        let replicas = replicas_of(to);
        let first = set_of(from, 1);
        let mut sets = vec![first.clone()];
        let mut pods: Vec<Arc<Value>> = (0..replicas)
            .map(|i| pod_of(&first, &format!("old-{i}"), true))
            .collect();
        let mut serial = 0;
        for step in 1..=50 {
            // Pods created last step are ready now.
            pods = pods
                .iter()
                .map(|p| pod_of(&owner_of(&sets, p), meta::name(p), true))
                .collect();
            let plan = plan_deployment(to, &sets, &pods, "t");
            if let Some(mut rs) = plan.create {
                rs["metadata"]["uid"] = json!(format!("rs-{step}"));
                sets.push(Arc::new(rs));
            }
            for (name, n) in plan.scale {
                let at = sets.iter().position(|s| meta::name(s) == name).unwrap();
                let mut rs = (*sets[at]).clone();
                rs["spec"]["replicas"] = json!(n);
                sets[at] = Arc::new(rs);
            }
            for rs in &sets {
                let p = plan_replica_set(rs, &pods);
                pods.retain(|x| !p.delete.iter().any(|d| d == meta::name(x)));
                for _ in p.create {
                    serial += 1;
                    pods.push(pod_of(rs, &format!("new-{serial}"), false));
                }
            }
            let ready = pods.iter().filter(|p| is_ready(p)).count() as i64;
            assert!(
                pods.len() as i64 <= replicas + surge,
                "step {step}: {} pods",
                pods.len()
            );
            assert!(
                ready >= replicas - unavailable,
                "step {step}: {ready} ready"
            );
            let hash = template_hash(&to["spec"]["template"]);
            let done = pods.len() as i64 == replicas
                && pods.iter().all(|p| hash_of(p) == Some(hash.as_str()));
            if done {
                return step;
            }
        }
        panic!("the rollout did not finish in 50 steps");
    }

    fn owner_of(sets: &[Arc<Value>], pod: &Value) -> Value {
        (**sets.iter().find(|s| controls(s, pod)).expect("an owner")).clone()
    }

    #[test]
    fn a_rolling_update_replaces_pods_within_surge_and_unavailability() {
        // 25% of 4: one extra pod, one unavailable.
        let steps = roll(&deploy(4, "a"), &deploy(4, "b"), 1, 1);
        assert!(steps > 2, "the rollout goes in steps, took {steps}");
        // No surge: old pods go first, one at a time.
        let mut to = deploy(3, "b");
        to["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}});
        roll(&deploy(3, "a"), &to, 0, 1);
        // No unavailability: new pods must be ready before old ones go.
        to["spec"]["strategy"] = json!({"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        roll(&deploy(3, "a"), &to, 1, 0);
    }

    #[test]
    fn a_deployment_counts_the_pods_of_its_replica_sets() {
        let d = deploy(4, "a");
        let rs = set_of(&d, 1);
        let pods: Vec<_> = (0..4)
            .map(|i| pod_of(&rs, &format!("web-{i}"), i != 0))
            .collect();
        let p = plan_deployment(&d, std::slice::from_ref(&rs), &pods, "t");
        assert!(p.create.is_none() && p.scale.is_empty() && p.delete.is_empty());
        assert_eq!(p.status["replicas"], 4);
        assert_eq!(p.status["updatedReplicas"], 4);
        assert_eq!(p.status["readyReplicas"], 3);
        assert_eq!(
            p.status["conditions"][0]["status"], "True",
            "25% of 4 may be unavailable"
        );
        assert_eq!(p.status["conditions"][1]["reason"], "ReplicaSetUpdated");
        let all_ready: Vec<_> = (0..4)
            .map(|i| pod_of(&rs, &format!("web-{i}"), true))
            .collect();
        let p = plan_deployment(&d, std::slice::from_ref(&rs), &all_ready, "t");
        assert_eq!(
            p.status["conditions"][1]["reason"],
            "NewReplicaSetAvailable"
        );
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(6);
        let p = plan_deployment(&scaled, std::slice::from_ref(&rs), &all_ready, "t");
        assert_eq!(p.scale, vec![(meta::name(&rs).to_string(), 6)]);
    }

    #[test]
    fn leaves_objects_it_does_not_control_alone() {
        let d = deploy(1, "a");
        let rs = set_of(&d, 1);
        let mine = pod_of(&rs, "web-1", true);
        // Owned for garbage collection only (controller: false), as
        // TaskManager pods are by their JobManager's Deployment.
        let worker = Arc::new(json!({
            "metadata": {"name": "tm-1", "labels": rs["spec"]["template"]["metadata"]["labels"].clone(),
                         "ownerReferences": [{"uid": meta::uid(&rs), "kind": "ReplicaSet", "name": "web", "controller": false}]},
            "status": {"phase": "Running"}
        }));
        // Controlled, but outside the selector.
        let stray = Arc::new(json!({
            "metadata": {"name": "other-1", "labels": {"app": "other"},
                         "ownerReferences": [controller_ref(&rs, "ReplicaSet")]},
            "status": {"phase": "Running"}
        }));
        assert!(controls(&rs, &mine));
        assert!(!controls(&rs, &worker));
        assert!(!controls(&rs, &stray));
        assert!(!controls(&d, &mine), "pods belong to the ReplicaSet");
        let p = plan_replica_set(&rs, &[mine, worker, stray]);
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert!(p.create.is_empty());
        // A ReplicaSet some other owner controls is not the Deployment's.
        let mut foreign = (*set_of(&d, 1)).clone();
        foreign["metadata"]["ownerReferences"][0]["uid"] = json!("other");
        let p = plan_deployment(&d, &[Arc::new(foreign)], &[], "t");
        assert!(p.create.is_some());
    }

    #[test]
    fn hash_ignores_key_order() {
        let a = json!({"x": 1, "y": {"b": 2, "a": 1}});
        let b = json!({"y": {"a": 1, "b": 2}, "x": 1});
        assert_eq!(template_hash(&a), template_hash(&b));
        assert_ne!(template_hash(&a), template_hash(&json!({"x": 2})));
        assert_eq!(
            selector_string(
                &json!({"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "c", "operator": "In", "values": ["d", "e"]}]})
            ),
            "a=b,c in (d,e)"
        );
        assert!(
            LabelSelector::parse(&selector_string(&json!({"matchLabels": {"a": "b"}}))).is_ok()
        );
    }
}
