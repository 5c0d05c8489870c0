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
//! Simplifications (documented, deliberate): a template change scales the
//! old ReplicaSets to zero at once rather than surging (as the `Recreate`
//! strategy does); without a kubelet, pods stay `Pending` unless
//! `mark_pods_ready` is set, in which case they are reported Running and
//! Ready as soon as they exist.

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

/// `maxUnavailable` resolved against `replicas` (percentages round down).
fn max_unavailable(deploy: &Value, replicas: i64) -> i64 {
    let v = meta::get_path(
        deploy,
        &["spec", "strategy", "rollingUpdate", "maxUnavailable"],
    );
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .map(|p| replicas * p / 100)
            .unwrap_or(0),
        _ => 0,
    }
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
    let mut scale = Vec::new();
    let create = match current {
        Some(s) if replicas_of(s) != replicas => {
            scale.push((meta::name(s).to_string(), replicas));
            None
        }
        Some(_) => None,
        None => {
            let revision = owned.iter().map(|s| revision_of(s)).max().unwrap_or(0) + 1;
            Some(new_replica_set(deploy, &template, &hash, revision))
        }
    };
    let mut old: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|s| hash_of(s) != Some(hash.as_str()))
        .copied()
        .collect();
    for s in &old {
        if replicas_of(s) != 0 {
            scale.push((meta::name(s).to_string(), 0));
        }
    }
    // Old ReplicaSets that are empty go beyond the history limit, oldest first.
    let limit = meta::get_path(deploy, &["spec", "revisionHistoryLimit"])
        .and_then(Value::as_u64)
        .map_or(DEFAULT_HISTORY, |n| n as usize);
    old.retain(|s| replicas_of(s) == 0 && live_pods(s, pods).is_empty());
    old.sort_by_key(|s| revision_of(s));
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
    let available_ok = ready >= replicas - max_unavailable(deploy, replicas);
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

    #[test]
    fn a_template_change_scales_the_old_replica_set_to_zero_and_prunes_history() {
        let old_d = deploy(2, "a");
        let old = set_of(&old_d, 1);
        let pods = vec![pod_of(&old, "web-a-1", true), pod_of(&old, "web-a-2", true)];
        let d = deploy(2, "b");
        let p = plan_deployment(&d, std::slice::from_ref(&old), &pods, "t");
        let new = p.create.expect("a ReplicaSet for the new template");
        assert_eq!(new["metadata"]["annotations"][REVISION_ANNOTATION], "2");
        assert_eq!(p.scale, vec![(meta::name(&old).to_string(), 0)]);
        assert_eq!(p.status["updatedReplicas"], 0);
        assert_eq!(p.status["replicas"], 2);
        assert!(p.delete.is_empty(), "the old set still has pods");

        // Once empty, old sets beyond revisionHistoryLimit go, oldest first.
        let mut limited = d.clone();
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
