//! A Deployment controller: keeps `spec.replicas` Pod objects from each
//! Deployment's template and reports the Deployment's status.
//!
//! Why it exists: Rill's operator and `kubectl wait --for=condition=Available`
//! expect Deployments to produce pods. The decision of what to create,
//! delete and report is the pure [`plan`]; [`run`] is a small loop that
//! re-plans after every store change and writes the result back through the
//! same store API clients use.
//!
//! Simplifications (documented, deliberate): pods are owned directly by the
//! Deployment (no ReplicaSet layer); a template change replaces all old pods
//! at once rather than surging; without a kubelet, pods stay `Pending`
//! unless `mark_pods_ready` is set, in which case they are reported Running
//! and Ready as soon as they exist.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::meta;
use crate::store::{DeleteOptions, Part, Store};

/// The label that ties pods to one template version.
pub const HASH_LABEL: &str = "pod-template-hash";

/// What one reconcile of a Deployment should do.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Pods to create (complete objects, named by `generateName`).
    pub create: Vec<Value>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The Deployment's new `status`.
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

/// Whether `deploy` manages `pod`: like Kubernetes, only a pod whose
/// controller reference (`controller: true`) names the Deployment and whose
/// labels match its selector. Pods that merely list the Deployment as an
/// owner (e.g. for garbage collection) are left alone.
pub fn manages(deploy: &Value, pod: &Value) -> bool {
    let uid = meta::uid(deploy);
    let controlled = meta::get_path(pod, &["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                r.get("uid").and_then(Value::as_str) == Some(uid)
                    && r.get("controller").and_then(Value::as_bool) == Some(true)
            })
        });
    controlled
        && meta::get_path(deploy, &["spec", "selector"]).is_some_and(|sel| {
            crate::selector::LabelSelector::parse(&selector_string(sel))
                .is_ok_and(|s| !s.is_empty() && s.matches(pod))
        })
}

/// Decide creations, deletions and status for one Deployment, given all pods
/// in its namespace.
pub fn plan(deploy: &Value, pods: &[Arc<Value>], now: &str) -> Plan {
    let name = meta::name(deploy);
    let uid = meta::uid(deploy);
    let replicas = meta::get_path(deploy, &["spec", "replicas"])
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0);
    let template = meta::get_path(deploy, &["spec", "template"])
        .cloned()
        .unwrap_or(json!({}));
    let hash = template_hash(&template);
    let owned: Vec<&Arc<Value>> = pods
        .iter()
        .filter(|p| manages(deploy, p) && !meta::is_deleting(p))
        .collect();
    let hash_of = |p: &Value| {
        meta::labels(p)
            .into_iter()
            .find(|(k, _)| *k == HASH_LABEL)
            .map(|(_, v)| v.to_string())
    };
    let mut current: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|p| hash_of(p).as_deref() == Some(hash.as_str()))
        .copied()
        .collect();
    current.sort_by(|a, b| meta::name(a).cmp(meta::name(b)));
    let mut delete: Vec<String> = owned
        .iter()
        .filter(|p| hash_of(p).as_deref() != Some(hash.as_str()))
        .map(|p| meta::name(p).to_string())
        .collect();
    let mut create = Vec::new();
    let have = current.len() as i64;
    if have > replicas {
        for p in current.iter().rev().take((have - replicas) as usize) {
            delete.push(meta::name(p).to_string());
        }
        current.truncate(replicas as usize);
    } else {
        let mut labels: Map<String, Value> = meta::get_path(&template, &["metadata", "labels"])
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        labels.insert(HASH_LABEL.into(), json!(hash));
        let annotations = meta::get_path(&template, &["metadata", "annotations"]).cloned();
        for _ in have..replicas {
            let mut metadata = json!({
                "generateName": format!("{name}-{hash}-"),
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
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
    let ready = current.iter().filter(|p| is_ready(p)).count() as i64;
    let total = owned.len() as i64 - delete.len() as i64 + create.len() as i64;
    let updated = current.len() as i64 + create.len() as i64;
    let prev = deploy.get("status");
    let available_ok = ready >= replicas - max_unavailable(deploy, replicas);
    let done = updated == replicas && ready == replicas && total == replicas;
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
                      &format!("Pods of \"{name}\" with template {hash} are {}.", if done { "available" } else { "progressing" }),
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
    Plan {
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

/// Reconcile every Deployment once.
pub fn reconcile_all(store: &Store, mark_pods_ready: bool) {
    let (Some(deploy_t), Some(pod_t)) = (
        store.find_type("apps", "v1", "deployments"),
        store.find_type("", "v1", "pods"),
    ) else {
        return;
    };
    let (deployments, _) = store.list(&deploy_t, None);
    for d in deployments {
        if meta::is_deleting(&d) {
            continue;
        }
        let ns = meta::namespace(&d).to_string();
        let name = meta::name(&d).to_string();
        let (pods, _) = store.list(&pod_t, Some(&ns));
        if mark_pods_ready {
            for p in pods.iter().filter(|p| {
                manages(&d, p) && meta::str_at(p, &["status", "phase"]) == Some("Pending")
            }) {
                let mut next = (**p).clone();
                next["status"] = ready_status(p, &meta::now_rfc3339());
                if let Err(e) =
                    store.update(&pod_t, "v1", &ns, meta::name(p), next, Part::Status, false)
                {
                    tracing::debug!(error = %e, "marking pod ready");
                }
            }
        }
        let (pods, _) = store.list(&pod_t, Some(&ns));
        let p = plan(&d, &pods, &meta::now_rfc3339());
        for pod in p.create {
            match store.create(&pod_t, "v1", &ns, pod, false) {
                Ok(created) if mark_pods_ready => {
                    let mut next = created.clone();
                    next["status"] = ready_status(&created, &meta::now_rfc3339());
                    let _ = store.update(
                        &pod_t,
                        "v1",
                        &ns,
                        meta::name(&created),
                        next,
                        Part::Status,
                        false,
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(deployment = %name, error = %e, "creating pod"),
            }
        }
        for pod in p.delete {
            if let Err(e) = store.delete(&pod_t, &ns, &pod, &DeleteOptions::default()) {
                tracing::debug!(deployment = %name, error = %e, "deleting pod");
            }
        }
        // Re-plan against the pods as they are now, so status counts them.
        let Ok(fresh) = store.get(&deploy_t, &ns, &name) else {
            continue;
        };
        let (pods, _) = store.list(&pod_t, Some(&ns));
        let status = plan(&fresh, &pods, &meta::now_rfc3339()).status;
        let mut next = fresh.clone();
        next["status"] = status;
        if let Err(e) = store.update(&deploy_t, "v1", &ns, &name, next, Part::Status, false) {
            tracing::debug!(deployment = %name, error = %e, "writing status");
        }
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

    fn pod_of(d: &Value, name: &str, ready: bool) -> Arc<Value> {
        let hash = template_hash(&d["spec"]["template"]);
        let mut p = json!({
            "metadata": {"name": name, "labels": {"app": "web", HASH_LABEL: hash},
                         "ownerReferences": [{"uid": "d-uid", "kind": "Deployment", "name": "web", "controller": true}]},
            "status": {"phase": "Pending"}
        });
        if ready {
            p["status"] = ready_status(&p, "t");
        }
        Arc::new(p)
    }

    #[test]
    fn creates_missing_pods() {
        let d = deploy(3, "a");
        let p = plan(&d, &[pod_of(&d, "web-1", true)], "t");
        assert_eq!(p.create.len(), 2);
        assert!(p.delete.is_empty());
        let pod = &p.create[0];
        assert!(pod["metadata"]["generateName"]
            .as_str()
            .unwrap()
            .starts_with("web-"));
        assert_eq!(pod["metadata"]["labels"]["app"], "web");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(p.status["observedGeneration"], 3);
        assert_eq!(p.status["conditions"][0]["status"], "False");
    }

    #[test]
    fn scales_down_and_replaces_old_templates() {
        let d = deploy(1, "a");
        let pods = vec![pod_of(&d, "web-1", true), pod_of(&d, "web-2", true)];
        let p = plan(&d, &pods, "t");
        assert_eq!(p.delete, vec!["web-2"]);
        assert_eq!(p.status["conditions"][0]["status"], "True");
        let changed = deploy(1, "b");
        let p = plan(&changed, &pods, "t");
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn leaves_pods_it_does_not_control_alone() {
        let d = deploy(1, "a");
        let mine = pod_of(&d, "web-1", true);
        // Owned for garbage collection only (controller: false), as
        // TaskManager pods are by their JobManager's Deployment.
        let worker = Arc::new(json!({
            "metadata": {"name": "tm-1", "labels": {"app": "web", "component": "tm"},
                         "ownerReferences": [{"uid": "d-uid", "kind": "Deployment", "name": "web", "controller": false}]},
            "status": {"phase": "Running"}
        }));
        // Controlled, but outside the selector.
        let stray = Arc::new(json!({
            "metadata": {"name": "other-1", "labels": {"app": "other"},
                         "ownerReferences": [{"uid": "d-uid", "kind": "Deployment", "name": "web", "controller": true}]},
            "status": {"phase": "Running"}
        }));
        assert!(manages(&d, &mine));
        assert!(!manages(&d, &worker));
        assert!(!manages(&d, &stray));
        let p = plan(&d, &[mine, worker, stray], "t");
        assert!(p.delete.is_empty(), "{:?}", p.delete);
        assert!(p.create.is_empty());
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

    #[test]
    fn available_when_enough_ready() {
        let d = deploy(4, "a");
        let pods: Vec<_> = (0..4)
            .map(|i| pod_of(&d, &format!("web-{i}"), i != 0))
            .collect();
        let p = plan(&d, &pods, "t");
        assert_eq!(p.status["readyReplicas"], 3);
        assert_eq!(
            p.status["conditions"][0]["status"], "True",
            "25% of 4 may be unavailable"
        );
    }
}
