//! Native TaskManager pods: the JobManager's [`WorkerProvider`] on
//! Kubernetes ([`KubernetesWorkers`]).
//!
//! The resource manager says how many TaskManagers it wants; this driver
//! creates pods `<cluster-id>-taskmanager-<n>` from the TaskManager pod
//! template the operator mounts (`kubernetes.taskmanager.pod-template`),
//! labelled `app=<cluster-id>, component=taskmanager,
//! type=rill-native-kubernetes` and owned by the JobManager Deployment (so
//! deleting the cluster removes them). A TaskManager registers with its pod
//! name (`POD_NAME`), which is therefore the worker id [`release`] takes.
//!
//! A background pass (every `resync`) deletes terminated pods (phase
//! `Failed`/`Succeeded`; TaskManager pods use `restartPolicy: Never`) and
//! creates replacements while they are wanted. Pods are found by label, so
//! after a JobManager failover the new leader adopts the pods that exist
//! instead of starting more; until it states a desired count nothing is
//! created or scaled down.
//!
//! Owner references use `controller: false`: the Deployment's own
//! controller must not count TaskManagers as its replicas.
//!
//! Like [`crate::ha::KubernetesHa`], this owns a one-thread tokio runtime
//! (`rill-k8s-workers`) and is safe to call from any thread.
//!
//! [`release`]: WorkerProvider::release

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use rill_runtime::cluster::services::WorkerProvider;
use rill_runtime::RuntimeError;

use crate::bridge::Bridge;
use crate::config::{
    duration_key, namespace_of, required_key, KEY_CLUSTER_ID, KEY_JM_DEPLOYMENT, KEY_TM_TEMPLATE,
};
use crate::{Error, Result};

/// Main container name in TaskManager pods.
pub const TM_CONTAINER: &str = "taskmanager";
/// Resync interval key (Rill; default 2 s).
pub const KEY_RESYNC: &str = "kubernetes.taskmanager.resync-interval";

/// Which object owns the TaskManager pods.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnerSource {
    /// No owner (tests, clusters run by hand): pods outlive the JobManager.
    None,
    /// The named Deployment in the namespace (its uid is looked up).
    Deployment(String),
    /// Walk up from this pod (`POD_NAME`): pod → ReplicaSet → Deployment, or
    /// pod → Deployment.
    FromPod(String),
    /// A reference given as is.
    Reference(OwnerReference),
}

/// How TaskManager pods are made.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub namespace: String,
    pub cluster_id: String,
    /// The pod template (metadata + spec); name, labels, owner and the
    /// extra arguments are filled in per pod.
    pub template: Pod,
    pub owner: OwnerSource,
    /// Appended to the TaskManager container's args, e.g.
    /// `["-D", "jobmanager.rpc.address=10.0.0.5"]`.
    pub extra_args: Vec<String>,
    /// How often terminated pods are looked for.
    pub resync: Duration,
}

impl WorkerSettings {
    /// From Flink-style configuration: `kubernetes.cluster-id`,
    /// `kubernetes.namespace` (or the pod's own), the template file named
    /// by `kubernetes.taskmanager.pod-template`, the owner from
    /// `kubernetes.jobmanager.deployment` or else the `POD_NAME` owner
    /// chain, and `kubernetes.taskmanager.resync-interval`.
    pub fn from_flink_config(
        conf: &BTreeMap<String, String>,
        extra_args: Vec<String>,
    ) -> Result<Self> {
        let path = required_key(conf, KEY_TM_TEMPLATE)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the TaskManager pod template {path}"), e))?;
        let template: Pod = serde_yaml_ng::from_str(&text)
            .map_err(|e| Error::Config(format!("TaskManager pod template {path}: {e}")))?;
        let owner = match (conf.get(KEY_JM_DEPLOYMENT), std::env::var("POD_NAME")) {
            (Some(d), _) if !d.is_empty() => OwnerSource::Deployment(d.clone()),
            (_, Ok(pod)) if !pod.is_empty() => OwnerSource::FromPod(pod),
            _ => OwnerSource::None,
        };
        Ok(WorkerSettings {
            namespace: namespace_of(conf),
            cluster_id: required_key(conf, KEY_CLUSTER_ID)?.to_string(),
            template,
            owner,
            extra_args,
            resync: duration_key(conf, KEY_RESYNC, Duration::from_secs(2))?,
        })
    }

    /// The labels every TaskManager pod of this cluster carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        tm_labels(&self.cluster_id)
    }
}

/// `app=<cluster-id>, component=taskmanager, type=rill-native-kubernetes`.
pub fn tm_labels(cluster_id: &str) -> BTreeMap<String, String> {
    [
        ("app".to_string(), cluster_id.to_string()),
        ("component".to_string(), "taskmanager".to_string()),
        ("type".to_string(), "rill-native-kubernetes".to_string()),
    ]
    .into()
}

/// The label selector of a cluster's TaskManager pods.
pub fn tm_selector(cluster_id: &str) -> String {
    format!("app={cluster_id},component=taskmanager")
}

fn pod_index(cluster_id: &str, name: &str) -> Option<u64> {
    name.strip_prefix(cluster_id)?
        .strip_prefix("-taskmanager-")?
        .parse()
        .ok()
}

fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds the downward-API variables a Rill process expects if missing.
pub(crate) fn ensure_pod_env(container: &mut Container) {
    let env = container.env.get_or_insert_with(Vec::new);
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ] {
        if !env.iter().any(|e| e.name == name) {
            env.push(field_env(name, path));
        }
    }
}

/// One TaskManager pod from the template (pure).
pub fn build_pod(settings: &WorkerSettings, owner: Option<&OwnerReference>, index: u64) -> Pod {
    let mut pod = settings.template.clone();
    let name = format!("{}-taskmanager-{index}", settings.cluster_id);
    pod.metadata.name = Some(name);
    pod.metadata.generate_name = None;
    pod.metadata.namespace = Some(settings.namespace.clone());
    pod.metadata.resource_version = None;
    pod.metadata.uid = None;
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .extend(settings.labels());
    pod.metadata.owner_references = owner.map(|o| vec![o.clone()]);
    pod.status = None;
    let spec = pod.spec.get_or_insert_with(Default::default);
    if spec.restart_policy.is_none() {
        spec.restart_policy = Some("Never".to_string());
    }
    if spec.containers.is_empty() {
        spec.containers.push(Container {
            name: TM_CONTAINER.to_string(),
            ..Default::default()
        });
    }
    let main = spec
        .containers
        .iter()
        .position(|c| c.name == TM_CONTAINER)
        .unwrap_or(0);
    let container = &mut spec.containers[main];
    if !settings.extra_args.is_empty() {
        container
            .args
            .get_or_insert_with(Vec::new)
            .extend(settings.extra_args.iter().cloned());
    }
    ensure_pod_env(container);
    pod
}

#[derive(Debug, Default)]
struct State {
    /// `None` until the resource manager states what it wants.
    desired: Option<usize>,
    next_index: u64,
}

struct Inner {
    api: Api<Pod>,
    settings: WorkerSettings,
    owner: Option<OwnerReference>,
    state: Mutex<State>,
    /// Serialises passes so two never create the same pods.
    pass: tokio::sync::Mutex<()>,
}

impl Inner {
    fn desired(&self) -> Result<Option<usize>> {
        Ok(self.lock()?.desired)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| Error::Internal("worker state lock poisoned".into()))
    }

    /// One reconciliation: drop terminated pods, then create or delete to
    /// reach the desired count. Returns the live pod names.
    async fn reconcile(&self) -> Result<Vec<String>> {
        let _pass = self.pass.lock().await;
        let lp = ListParams::default().labels(&tm_selector(&self.settings.cluster_id));
        let pods = self.api.list(&lp).await?.items;
        let mut live: Vec<&Pod> = Vec::new();
        let mut max_index = None;
        for pod in &pods {
            let name = pod.name_any();
            max_index = max_index.max(pod_index(&self.settings.cluster_id, &name));
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if is_terminated(pod) {
                tracing::info!(pod = %name, "TaskManager pod terminated; deleting it");
                self.delete(&name).await?;
                continue;
            }
            live.push(pod);
        }
        let desired = {
            let mut st = self.lock()?;
            if let Some(m) = max_index {
                st.next_index = st.next_index.max(m + 1);
            }
            st.desired
        };
        let mut names: Vec<String> = live.iter().map(|p| p.name_any()).collect();
        let Some(desired) = desired else {
            return Ok(names);
        };
        if live.len() > desired {
            // Prefer pods that are not running yet, newest first.
            let mut surplus = live.clone();
            surplus.sort_by_key(|p| {
                (
                    is_running(p),
                    std::cmp::Reverse(pod_index(&self.settings.cluster_id, &p.name_any())),
                )
            });
            for pod in surplus.into_iter().take(live.len() - desired) {
                let name = pod.name_any();
                tracing::info!(pod = %name, desired, "scaling TaskManagers down");
                self.delete(&name).await?;
                names.retain(|n| *n != name);
            }
        }
        while names.len() < desired {
            let index = {
                let mut st = self.lock()?;
                let i = st.next_index;
                st.next_index += 1;
                i
            };
            let pod = build_pod(&self.settings, self.owner.as_ref(), index);
            match self.api.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    let name = created.name_any();
                    tracing::info!(pod = %name, desired, "created TaskManager pod");
                    names.push(name);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(names)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        match self.api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.settings.resync).await;
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e, "TaskManager pod resync failed");
            }
        }
    }
}

async fn resolve_owner(
    client: &Client,
    ns: &str,
    source: &OwnerSource,
) -> Result<Option<OwnerReference>> {
    fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> Result<OwnerReference> {
        let meta = obj.meta();
        Ok(OwnerReference {
            api_version: K::api_version(&()).to_string(),
            kind: K::kind(&()).to_string(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta
                .uid
                .clone()
                .ok_or_else(|| Error::Config("owner has no uid".into()))?,
            controller: Some(false),
            block_owner_deletion: Some(true),
        })
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    match source {
        OwnerSource::None => Ok(None),
        OwnerSource::Reference(r) => Ok(Some(r.clone())),
        OwnerSource::Deployment(name) => Ok(Some(reference(&deployments.get(name).await?)?)),
        OwnerSource::FromPod(pod_name) => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
            let pod = pods.get(pod_name).await?;
            for o in pod.owner_references() {
                if o.kind == "Deployment" {
                    return Ok(Some(reference(&deployments.get(&o.name).await?)?));
                }
                if o.kind == "ReplicaSet" {
                    let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                        Api::namespaced(client.clone(), ns);
                    let rs = sets.get(&o.name).await?;
                    if let Some(d) = rs
                        .owner_references()
                        .iter()
                        .find(|o| o.kind == "Deployment")
                    {
                        return Ok(Some(reference(&deployments.get(&d.name).await?)?));
                    }
                }
            }
            tracing::warn!(pod = %pod_name, "JobManager pod has no Deployment owner; TaskManager pods get none");
            Ok(None)
        }
    }
}

/// TaskManager pods on Kubernetes as the JobManager's [`WorkerProvider`].
pub struct KubernetesWorkers {
    inner: Arc<Inner>,
    bridge: Bridge,
}

impl KubernetesWorkers {
    /// Connects with `config`, resolves the owner, adopts the existing pods
    /// and starts the resync loop.
    pub fn new(config: kube::Config, settings: WorkerSettings) -> Result<Self> {
        let bridge = Bridge::new("rill-k8s-workers", 1)?;
        let inner = bridge.run(async move {
            let client = Client::try_from(config)?;
            Self::connect(client, settings).await
        })??;
        Ok(Self::start(bridge, inner))
    }

    /// From Flink-style configuration (see
    /// [`WorkerSettings::from_flink_config`]), connecting in-cluster or
    /// through `KUBECONFIG`.
    pub fn from_flink_config(
        conf: &BTreeMap<String, String>,
        extra_args: Vec<String>,
    ) -> Result<Self> {
        let settings = WorkerSettings::from_flink_config(conf, extra_args)?;
        let bridge = Bridge::new("rill-k8s-workers", 1)?;
        let inner = bridge.run(async move {
            let config = kube::Config::infer()
                .await
                .map_err(|e| Error::Config(format!("no Kubernetes configuration: {e}")))?;
            Self::connect(Client::try_from(config)?, settings).await
        })??;
        Ok(Self::start(bridge, inner))
    }

    async fn connect(client: Client, settings: WorkerSettings) -> Result<Arc<Inner>> {
        let owner = resolve_owner(&client, &settings.namespace, &settings.owner).await?;
        let inner = Arc::new(Inner {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            owner,
            state: Mutex::new(State::default()),
            pass: tokio::sync::Mutex::new(()),
        });
        // Adopt: learn the pods and indices that exist.
        inner.reconcile().await?;
        Ok(inner)
    }

    fn start(bridge: Bridge, inner: Arc<Inner>) -> Self {
        bridge.handle().spawn(inner.clone().run());
        KubernetesWorkers { inner, bridge }
    }

    /// The owner reference put on pods, if any.
    pub fn owner(&self) -> Option<&OwnerReference> {
        self.inner.owner.as_ref()
    }

    /// The desired count, once the resource manager set one.
    pub fn desired(&self) -> Option<usize> {
        self.inner.desired().ok().flatten()
    }

    /// Runs one pass now and returns the live pod names.
    pub fn sync(&self) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        self.bridge.run(async move { inner.reconcile().await })?
    }
}

impl WorkerProvider for KubernetesWorkers {
    fn set_desired(&self, count: usize) -> Result<(), RuntimeError> {
        self.inner.lock()?.desired = Some(count);
        self.sync()?;
        Ok(())
    }

    fn release(&self, worker_id: &str) -> Result<(), RuntimeError> {
        if pod_index(&self.inner.settings.cluster_id, worker_id).is_none() {
            return Err(RuntimeError::Cluster(format!(
                "'{worker_id}' is not a TaskManager pod of cluster {}",
                self.inner.settings.cluster_id
            )));
        }
        {
            let mut st = self.inner.lock()?;
            st.desired = Some(st.desired.unwrap_or(0).saturating_sub(1));
        }
        let inner = self.inner.clone();
        let name = worker_id.to_string();
        self.bridge.run(async move {
            let _pass = inner.pass.lock().await;
            inner.delete(&name).await
        })??;
        tracing::info!(pod = %worker_id, "released TaskManager pod");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WorkerSettings {
        let template: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"team": "data"}},
            "spec": {"containers": [
                {"name": "sidecar", "image": "busybox"},
                {"name": "taskmanager", "image": "rill:1", "args": ["taskmanager"]}
            ]}
        }))
        .expect("template");
        WorkerSettings {
            namespace: "ns".into(),
            cluster_id: "wsum".into(),
            template,
            owner: OwnerSource::None,
            extra_args: vec!["-D".into(), "jobmanager.rpc.address=10.0.0.5".into()],
            resync: Duration::from_secs(1),
        }
    }

    #[test]
    fn pods_are_built_from_the_template() {
        let owner = OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "wsum-jobmanager".into(),
            uid: "u-1".into(),
            controller: Some(false),
            block_owner_deletion: Some(true),
        };
        let pod = build_pod(&settings(), Some(&owner), 7);
        assert_eq!(pod.metadata.name.as_deref(), Some("wsum-taskmanager-7"));
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels.get("app").map(String::as_str), Some("wsum"));
        assert_eq!(
            labels.get("component").map(String::as_str),
            Some("taskmanager")
        );
        assert_eq!(
            labels.get("type").map(String::as_str),
            Some("rill-native-kubernetes")
        );
        assert_eq!(labels.get("team").map(String::as_str), Some("data"));
        assert_eq!(pod.metadata.owner_references, Some(vec![owner]));
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let tm = &spec.containers[1];
        assert_eq!(
            tm.args.clone().expect("args"),
            vec!["taskmanager", "-D", "jobmanager.rpc.address=10.0.0.5"]
        );
        let env: Vec<_> = tm.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(env, vec!["POD_NAME", "POD_NAMESPACE", "POD_IP"]);
        assert!(spec.containers[0].args.is_none(), "sidecar untouched");
    }

    #[test]
    fn indices_come_from_pod_names() {
        assert_eq!(pod_index("wsum", "wsum-taskmanager-12"), Some(12));
        assert_eq!(pod_index("wsum", "other-taskmanager-1"), None);
        assert_eq!(pod_index("wsum", "wsum-jobmanager-1"), None);
    }
}
