//! The Kubernetes objects a FlinkJob or FlinkSession owns, built as data.
//!
//! Every child is rendered here by pure functions and applied by the
//! controller with server-side apply under one field manager, each carrying
//! an owner reference to its custom resource (garbage collection removes
//! them with it). The JobManager's pod template carries a hash of the
//! rendered configuration, so a configuration change rolls the Deployment.
//! User pod templates are merged under the generated pods: the operator's
//! fields win, the user's extra containers, volumes, labels and scheduling
//! settings stay.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{json, Value};

use crate::config::{
    render_config_yaml, ClusterMode, ClusterSpec, Names, CONFIG_FILE, CONF_DIR, REST_PORT,
    RPC_PORT, TM_TEMPLATE_FILE,
};
use crate::workers::TM_CONTAINER;
use crate::Result;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "rill-operator";
/// Pod template annotation holding the configuration hash.
pub const CONFIG_HASH_ANNOTATION: &str = "rill.dev/config-hash";
/// Main container of JobManager pods.
pub const JM_CONTAINER: &str = "jobmanager";
const CONFIG_VOLUME: &str = "rill-config";

/// All children of one cluster.
#[derive(Debug, Clone)]
pub struct Children {
    pub config_map: ConfigMap,
    /// `None` when the spec names its own service account.
    pub service_account: Option<ServiceAccount>,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub deployment: Deployment,
    pub rest_service: Service,
    pub rpc_service: Service,
}

fn labels(names: &Names, component: &str) -> Value {
    json!({
        "app": names.cluster_id,
        "component": component,
        "type": "rill-native-kubernetes",
    })
}

fn meta(name: &str, names: &Names, owner: &OwnerReference, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": labels(names, component),
        "ownerReferences": [owner],
    })
}

/// FNV-1a, stable across builds (unlike `DefaultHasher`).
fn fnv64(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Deep-merges `overlay` onto `base`: objects key by key, the lists of
/// named things (containers, volumes, env, ports, mounts) by name, other
/// values replaced by the overlay.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o))
            if o.iter().chain(b.iter()).all(|v| v.get("name").is_some()) && !o.is_empty() =>
        {
            for item in o {
                match b.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn resources(r: &Option<crate::crd::ResourceSpec>) -> Value {
    let Some(r) = r else { return Value::Null };
    let mut q = serde_json::Map::new();
    if let Some(cpu) = &r.cpu {
        q.insert("cpu".into(), json!(cpu));
    }
    if let Some(mem) = &r.memory {
        q.insert("memory".into(), json!(mem));
    }
    if q.is_empty() {
        return Value::Null;
    }
    json!({"requests": q, "limits": q})
}

fn pod_env() -> Value {
    json!([
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "RILL_CONF_DIR", "value": CONF_DIR},
    ])
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// A pod from the user's template with the generated parts laid over it.
/// Under both lie defaults the template may change: logs at `info`, as
/// Flink's processes log.
fn with_template(user: &Option<Value>, generated: Value) -> Value {
    let containers: Vec<Value> = generated["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"name": c["name"], "env": [{"name": "RUST_LOG", "value": "info"}]}))
        .collect();
    let mut pod = json!({"spec": {"containers": containers}});
    let mut template = user.clone().unwrap_or_else(|| json!({}));
    if let Some(obj) = template.as_object_mut() {
        obj.remove("apiVersion");
        obj.remove("kind");
        obj.remove("status");
    }
    merge(&mut pod, &template);
    merge(&mut pod, &generated);
    strip_nulls(&mut pod);
    pod
}

fn service_account_name(names: &Names, spec: &ClusterSpec) -> String {
    spec.service_account
        .clone()
        .unwrap_or_else(|| names.service_account())
}

/// The TaskManager pod template file (a Pod) the JobManager creates
/// TaskManagers from.
pub fn taskmanager_pod_template(names: &Names, spec: &ClusterSpec) -> Value {
    let generated = json!({
        "metadata": {"labels": labels(names, "taskmanager")},
        "spec": {
            "serviceAccountName": service_account_name(names, spec),
            "restartPolicy": "Never",
            "containers": [{
                "name": TM_CONTAINER,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy.map(|p| p.as_str()),
                "args": ["taskmanager", "--config-dir", CONF_DIR],
                "env": pod_env(),
                "ports": [{"name": "data", "containerPort": 6121}, {"name": "rpc", "containerPort": 6122}],
                "resources": resources(&spec.tm_resources),
                "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONF_DIR}],
            }],
            "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": names.config_map()}}],
        }
    });
    let mut pod = with_template(&spec.tm_pod_template, generated);
    if let Some(obj) = pod.as_object_mut() {
        obj.insert("apiVersion".into(), json!("v1"));
        obj.insert("kind".into(), json!("Pod"));
    }
    pod
}

fn jobmanager_args(spec: &ClusterSpec) -> Vec<String> {
    let mut args = vec![
        "jobmanager".to_string(),
        "--config-dir".to_string(),
        CONF_DIR.to_string(),
    ];
    if let ClusterMode::Application(job) = &spec.mode {
        args.push("--job".into());
        args.push(job.entry.clone());
        args.extend(job.args.iter().cloned());
    }
    args
}

/// Least privilege for a JobManager: TaskManager pods, HA ConfigMaps and
/// leases, its own Deployment (owner lookup), Events.
pub fn jobmanager_rules() -> Value {
    json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["configmaps"],
         "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "verbs": ["get", "list", "watch", "create", "update", "patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"], "verbs": ["get"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// Renders every child of a cluster from its resolved configuration.
pub fn build(
    names: &Names,
    spec: &ClusterSpec,
    flink_config: &BTreeMap<String, String>,
    owner: &OwnerReference,
) -> Result<Children> {
    let config_yaml = render_config_yaml(flink_config)?;
    let tm_template = serde_yaml_ng::to_string(&taskmanager_pod_template(names, spec))?;
    let hash = fnv64(&[&config_yaml, &tm_template]);
    let sa = service_account_name(names, spec);

    let config_map: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": meta(&names.config_map(), names, owner, "config"),
        "data": {CONFIG_FILE: config_yaml, TM_TEMPLATE_FILE: tm_template},
    }))?;
    let service_account = if spec.service_account.is_none() {
        Some(serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(&names.service_account(), names, owner, "jobmanager"),
        }))?)
    } else {
        None
    };
    let role: Role = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(&names.role(), names, owner, "jobmanager"),
        "rules": jobmanager_rules(),
    }))?;
    let role_binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": meta(&names.role(), names, owner, "jobmanager"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.role()},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": names.namespace}],
    }))?;

    let selector = json!({"app": names.cluster_id, "component": "jobmanager"});
    let generated_pod = json!({
        "metadata": {
            "labels": labels(names, "jobmanager"),
            "annotations": {
                CONFIG_HASH_ANNOTATION: hash,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": REST_PORT.to_string(),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": {
            "serviceAccountName": sa,
            "containers": [{
                "name": JM_CONTAINER,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy.map(|p| p.as_str()),
                "args": jobmanager_args(spec),
                "env": pod_env(),
                "ports": [
                    {"name": "rest", "containerPort": REST_PORT},
                    {"name": "rpc", "containerPort": RPC_PORT},
                ],
                "resources": resources(&spec.job_manager.resources),
                "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONF_DIR}],
            }],
            "volumes": [{"name": CONFIG_VOLUME, "configMap": {"name": names.config_map()}}],
        }
    });
    let template = with_template(&spec.job_manager.pod_template, generated_pod);
    let deployment: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta(&names.deployment(), names, owner, "jobmanager"),
        "spec": {
            "replicas": spec.job_manager_replicas(),
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": template,
        }
    }))?;
    let rest_service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(&names.rest_service(), names, owner, "jobmanager"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "rest", "port": REST_PORT, "targetPort": "rest"}],
        }
    }))?;
    let rpc_service: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": meta(&names.rpc_service(), names, owner, "jobmanager"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector,
            "ports": [{"name": "rpc", "port": RPC_PORT, "targetPort": "rpc"}],
        }
    }))?;
    Ok(Children {
        config_map,
        service_account,
        role,
        role_binding,
        deployment,
        rest_service,
        rpc_service,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::render;
    use crate::crd::{FlinkJobSpec, JobManagerSpec, JobSpec};

    fn spec() -> FlinkJobSpec {
        FlinkJobSpec {
            image: "rill:1".into(),
            image_pull_policy: None,
            service_account: None,
            job: JobSpec {
                entry: "windowed-sum".into(),
                args: vec!["--rate".into(), "10".into()],
                ..Default::default()
            },
            checkpointing: None,
            state_backend: None,
            restart_strategy: None,
            high_availability: None,
            job_manager: Some(JobManagerSpec {
                resources: None,
                pod_template: Some(json!({
                    "metadata": {"labels": {"team": "data"}},
                    "spec": {
                        "nodeSelector": {"disk": "ssd"},
                        "containers": [
                            {"name": "jobmanager", "image": "ignored", "env": [{"name": "X", "value": "1"}]},
                            {"name": "sidecar", "image": "busybox"}
                        ]
                    }
                })),
            }),
            task_manager: None,
            flink_configuration: Default::default(),
            session_ref: None,
        }
    }

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "rill.dev/v1alpha1".into(),
            kind: "FlinkJob".into(),
            name: "wsum".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    #[test]
    fn children_carry_owner_labels_and_the_job() {
        let names = Names::new("wsum", "jobs");
        let cs = ClusterSpec::from_job(&spec());
        let conf = render(&names, &cs, None).expect("render");
        let c = build(&names, &cs, &conf, &owner()).expect("build");
        let d = serde_json::to_value(&c.deployment).expect("json");
        assert_eq!(d["metadata"]["name"], "wsum-jobmanager");
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(d["spec"]["replicas"], 1);
        let pod = &d["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"]["team"], "data");
        assert_eq!(pod["metadata"]["labels"]["component"], "jobmanager");
        assert_eq!(pod["spec"]["nodeSelector"]["disk"], "ssd");
        let containers = pod["spec"]["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 2);
        let jm = &containers[0];
        assert_eq!(jm["image"], "rill:1", "operator fields win");
        assert_eq!(
            jm["args"],
            json!([
                "jobmanager",
                "--config-dir",
                "/opt/rill/conf",
                "--job",
                "windowed-sum",
                "--rate",
                "10"
            ])
        );
        let env: Vec<&str> = jm["env"]
            .as_array()
            .expect("env")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(
            env,
            vec![
                "RUST_LOG",
                "X",
                "POD_NAME",
                "POD_NAMESPACE",
                "POD_IP",
                "RILL_CONF_DIR"
            ]
        );
        let cm = c.config_map.data.clone().expect("data");
        assert!(cm["config.yaml"].contains("kubernetes.cluster-id: wsum"));
        assert!(cm["taskmanager-pod-template.yaml"].contains("restartPolicy: Never"));
        assert_eq!(
            c.rpc_service
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.as_deref()),
            Some("None")
        );
        assert!(c.service_account.is_some());
        let verbs: Vec<String> = c
            .role
            .rules
            .iter()
            .flatten()
            .filter(|r| r.resources.iter().flatten().any(|x| x == "pods"))
            .flat_map(|r| r.verbs.clone())
            .collect();
        assert_eq!(verbs, vec!["get", "list", "watch", "create", "delete"]);
    }

    #[test]
    fn a_config_change_changes_the_pod_template_hash() {
        let names = Names::new("wsum", "jobs");
        let cs = ClusterSpec::from_job(&spec());
        let a = build(
            &names,
            &cs,
            &render(&names, &cs, None).expect("r"),
            &owner(),
        )
        .expect("b");
        let b = build(
            &names,
            &cs,
            &render(&names, &cs, Some("file:///sp/1")).expect("r"),
            &owner(),
        )
        .expect("b");
        let hash = |c: &Children| {
            c.deployment
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
        };
        assert!(hash(&a).is_some());
        assert_ne!(hash(&a), hash(&b));
    }
}
