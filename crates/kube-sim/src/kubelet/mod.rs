//! The process kubelet: runs each pod's containers as local processes.
//!
//! Why: the operator's end-to-end tests need pods that really run (the
//! `rill` binary as JobManager and TaskManagers), reach each other through
//! Services and pod IPs, crash, restart and get deleted, without a
//! container engine. The kubelet binds every unscheduled pod to its one
//! node, then keeps a worker per pod (by uid) that prepares the pod's
//! directory (volumes, `/etc/hosts`, service account files), starts the
//! containers, probes them, restarts them per `restartPolicy` with a short
//! capped back-off and reports `status` through the same store clients use.
//!
//! Deleting a pod marks it (`deletionTimestamp`); the worker sends SIGTERM
//! to each container's process group, waits the grace period, sends
//! SIGKILL, cleans up and only then removes the pod object, as a real
//! kubelet does.
//!
//! How a pod reaches the API server: `KUBECONFIG` points at a kubeconfig in
//! the service account directory (`/var/run/secrets/kubernetes.io/serviceaccount/kubeconfig`
//! when mount namespaces work), next to `token`, `namespace` and an empty
//! `ca.crt`; `KUBERNETES_SERVICE_HOST`/`_PORT` name the same plain-HTTP
//! endpoint. kube-rs' `Config::infer()` and kubectl read `KUBECONFIG`
//! first; `Config::incluster()` alone does not work because it insists on
//! HTTPS.

mod pod;
mod probe;
mod process;
pub(crate) mod spec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::images::ImageMap;
use crate::meta;
use crate::network::{Network, NetworkMode};
use crate::patch::PatchKind;
use crate::store::{DeleteOptions, Part, Store};

pub(crate) use pod::PodWorker;

/// How the kubelet runs pods.
#[derive(Debug, Clone)]
pub struct KubeletOptions {
    /// Image → local binary rules.
    pub images: ImageMap,
    /// How pods get addresses (see [`crate::network`]).
    pub network: NetworkMode,
    /// The node pods are bound to (also a Node object).
    pub node_name: String,
    /// First restart back-off (doubles per crash, reset after 10 s of running).
    pub backoff_initial: Duration,
    /// Longest restart back-off.
    pub backoff_max: Duration,
    /// Use private mount namespaces for volumes and `/etc/hosts` when the
    /// system allows (default true); without them, volumes are written but
    /// not visible at their `mountPath`.
    pub mount_namespaces: bool,
    /// Upper bound on a pod's grace period when kube-sim itself stops.
    pub shutdown_grace: Duration,
}

impl Default for KubeletOptions {
    fn default() -> Self {
        KubeletOptions {
            images: ImageMap::new(),
            network: NetworkMode::Loopback,
            node_name: "kube-sim".into(),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(5),
            mount_namespaces: true,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

struct Entry {
    worker: Arc<PodWorker>,
    task: JoinHandle<()>,
}

/// The running kubelet.
pub struct Kubelet {
    store: Arc<Store>,
    opts: KubeletOptions,
    root: PathBuf,
    net: Arc<Network>,
    /// The API server as pods reach it.
    api: SocketAddr,
    isolate: bool,
    workers: Mutex<HashMap<String, Entry>>,
    /// Mount points created on the host, removed (when empty) at the end.
    created: Mutex<Vec<PathBuf>>,
}

impl Kubelet {
    /// A kubelet keeping pod directories under `root`.
    pub(crate) fn new(
        store: Arc<Store>,
        opts: KubeletOptions,
        root: PathBuf,
        net: Arc<Network>,
        api: SocketAddr,
    ) -> Result<Arc<Kubelet>> {
        std::fs::create_dir_all(&root)?;
        let isolate = opts.mount_namespaces && process::mount_namespaces_work();
        if opts.mount_namespaces && !isolate {
            tracing::warn!(
                "mount namespaces are not available; volumes are not mounted at their mountPath"
            );
        }
        store.set_graceful_pods(true);
        let k = Arc::new(Kubelet {
            store,
            opts,
            root,
            net,
            api,
            isolate,
            workers: Mutex::new(HashMap::new()),
            created: Mutex::new(Vec::new()),
        });
        k.register_node();
        Ok(k)
    }

    /// Whether containers get private mount namespaces.
    pub fn isolated(&self) -> bool {
        self.isolate
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register_node(&self) {
        let Some(t) = self.store.find_type("", "v1", "nodes") else {
            return;
        };
        let host_ip = self.host_ip();
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.opts.node_name, "labels": {
                "kubernetes.io/hostname": self.opts.node_name, "kubernetes.io/os": "linux"}},
            "spec": {},
        });
        if self.store.get(&t, "", &self.opts.node_name).is_err() {
            if let Err(e) = self.store.create(&t, "v1", "", node, false) {
                tracing::warn!(error = %e, "registering node");
                return;
            }
        }
        if let Ok(mut cur) = self.store.get(&t, "", &self.opts.node_name) {
            meta::meta_mut(&mut cur).remove("resourceVersion");
            cur["status"] = json!({
                "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": self.opts.node_name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "kube-sim process kubelet is posting ready status",
                                "lastHeartbeatTime": meta::now_rfc3339(), "lastTransitionTime": meta::now_rfc3339()}],
                "nodeInfo": {"kubeletVersion": "v1.30.0-kube-sim", "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
                             "containerRuntimeVersion": "kube-sim-process://1"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "250"},
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "250"},
            });
            let _ = self
                .store
                .update(&t, "v1", "", &self.opts.node_name, cur, Part::Status, false);
        }
    }

    /// The node's address as pods see it.
    fn host_ip(&self) -> String {
        self.net
            .gateway()
            .map(|g| g.to_string())
            .unwrap_or_else(|| self.api.ip().to_string())
    }

    /// Keep pods running until `shutdown` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        loop {
            self.sync();
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
    }

    /// One pass: bind new pods, start workers, forward deletions, refresh
    /// `/etc/hosts` files.
    fn sync(self: &Arc<Self>) {
        let Some(pods_t) = self.store.find_type("", "v1", "pods") else {
            return;
        };
        let (pods, _) = self.store.list(&pods_t, None);
        let mut seen = std::collections::HashSet::new();
        for p in &pods {
            let uid = meta::uid(p).to_string();
            let node = meta::str_at(p, &["spec", "nodeName"]).unwrap_or("");
            if node.is_empty() {
                if !meta::is_deleting(p) {
                    self.bind(&pods_t, p);
                }
                continue;
            }
            if node != self.opts.node_name {
                continue;
            }
            seen.insert(uid.clone());
            let deleting = meta::is_deleting(p);
            let mut workers = self.workers();
            match workers.get(&uid) {
                Some(e) if deleting => {
                    let grace = meta::get_path(p, &["metadata", "deletionGracePeriodSeconds"])
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                        .max(0);
                    e.worker
                        .request_stop(Duration::from_secs(grace as u64), true);
                }
                Some(_) => {}
                None if deleting => {
                    drop(workers);
                    self.remove_pod(meta::namespace(p), meta::name(p), &uid);
                }
                None => {
                    let terminal = matches!(
                        meta::str_at(p, &["status", "phase"]),
                        Some("Succeeded" | "Failed")
                    );
                    if terminal {
                        continue;
                    }
                    match PodWorker::new(self, p) {
                        Ok(worker) => {
                            let task =
                                tokio::spawn(pod::run(self.clone(), worker.clone(), (**p).clone()));
                            workers.insert(uid, Entry { worker, task });
                        }
                        Err(e) => tracing::warn!(pod = %meta::name(p), error = %e, "starting pod"),
                    }
                }
            }
        }
        let services = spec::service_views(&self.store);
        let mut workers = self.workers();
        workers.retain(|uid, e| {
            if !seen.contains(uid) {
                // Removed without a graceful delete: stop at once.
                e.worker.request_stop(Duration::ZERO, false);
            }
            !e.task.is_finished()
        });
        for e in workers.values() {
            e.worker.refresh_hosts(&services);
        }
    }

    fn bind(&self, pods_t: &crate::resources::ResourceType, p: &Value) {
        let body = json!({"spec": {"nodeName": self.opts.node_name}}).to_string();
        if let Err(e) = self.store.patch(
            pods_t,
            "v1",
            meta::namespace(p),
            meta::name(p),
            PatchKind::Merge,
            body.as_bytes(),
            Part::Main,
            "kube-sim-scheduler",
            false,
        ) {
            tracing::debug!(pod = %meta::name(p), error = %e, "binding pod");
        }
    }

    /// Remove a pod object after its processes are gone.
    fn remove_pod(&self, ns: &str, name: &str, uid: &str) {
        let Some(t) = self.store.find_type("", "v1", "pods") else {
            return;
        };
        let opts = DeleteOptions {
            uid: Some(uid.to_string()),
            grace_period: Some(0),
            ..Default::default()
        };
        match self.store.delete(&t, ns, name, &opts) {
            Ok(_) => {}
            Err(Error::NotFound(_)) | Err(Error::Conflict(_)) => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "removing pod"),
        }
    }

    fn find(&self, ns: &str, name: &str) -> Option<Arc<PodWorker>> {
        let workers = self.workers();
        let mut found: Vec<&Entry> = workers
            .values()
            .filter(|e| e.worker.ns == ns && e.worker.name == name)
            .collect();
        // Prefer a worker that is not shutting down.
        found.sort_by_key(|e| e.worker.stopping());
        found.first().map(|e| e.worker.clone())
    }

    /// Kill a container's processes with SIGKILL, as if it crashed; the
    /// kubelet then restarts it per `restartPolicy`.
    pub fn crash(&self, ns: &str, name: &str, container: Option<&str>) -> Result<Value> {
        let w = self
            .find(ns, name)
            .ok_or_else(|| Error::not_found("pods", name))?;
        let (cname, pid) = w.crash(container)?;
        tracing::info!(pod = %name, container = %cname, pid, "crash injected");
        Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                  "message": format!("killed container {cname} of pod {ns}/{name} (pid {pid})"),
                  "details": {"name": name, "kind": "pods", "container": cname, "pid": pid}}),
        )
    }

    /// A container's log (`previous` for the last terminated instance).
    pub fn logs(
        &self,
        ns: &str,
        name: &str,
        container: Option<&str>,
        previous: bool,
    ) -> Result<Option<String>> {
        match self.find(ns, name) {
            Some(w) => w.log(container, previous).map(Some),
            None => Ok(None),
        }
    }

    /// Where a container's current log is and whether it may still grow.
    pub(crate) fn log_file(
        &self,
        ns: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<Option<(PathBuf, Arc<PodWorker>)>> {
        match self.find(ns, name) {
            Some(w) => Ok(Some((w.log_path(container)?, w))),
            None => Ok(None),
        }
    }

    /// Process group ids of every running container (for tests and tools).
    pub fn container_pids(&self) -> Vec<i32> {
        self.workers()
            .values()
            .flat_map(|e| e.worker.pids())
            .collect()
    }

    /// Stop every pod's processes (objects stay) and wait, bounded.
    pub(crate) async fn shutdown(&self) {
        let entries: Vec<(Arc<PodWorker>, JoinHandle<()>)> = self
            .workers()
            .drain()
            .map(|(_, e)| (e.worker, e.task))
            .collect();
        for (w, _) in &entries {
            w.request_stop(w.grace().min(self.opts.shutdown_grace), false);
        }
        let deadline = self.opts.shutdown_grace + Duration::from_secs(5);
        for (w, task) in entries {
            if tokio::time::timeout(deadline, task).await.is_err() {
                w.kill_now();
            }
        }
        self.remove_created_paths();
    }

    /// SIGKILL every container now (used when kube-sim is dropped).
    pub(crate) fn kill_all_now(&self) {
        for e in self.workers().values() {
            e.worker.kill_now();
            e.worker.cleanup_network(&self.net);
            e.task.abort();
        }
        self.remove_created_paths();
    }

    fn remember_created(&self, paths: Vec<PathBuf>) {
        if !paths.is_empty() {
            self.created
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(paths);
        }
    }

    fn remove_created_paths(&self) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        // Deepest first; only empty directories and empty files go.
        while let Some(p) = created.pop() {
            if p.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else if std::fs::metadata(&p).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}
