//! kube-sim: a local Kubernetes API server for end-to-end tests and a local
//! development cluster.
//!
//! Machines without a Kubernetes cluster still have `kubectl`; kube-sim
//! serves the Kubernetes REST API on loopback so that `kubectl`, kube-rs
//! clients and Rill's operator can be exercised for real: discovery, CRUD on
//! built-in types and on CRDs registered at run time, resourceVersion
//! conflicts, label/field selectors, watches with bookmarks and 410 Gone,
//! the four patch flavours, finalizers and ownerReference garbage
//! collection.
//!
//! What is served:
//! - discovery (`/version`, `/api`, `/apis`, group-version resource lists
//!   with subresources) and minimal OpenAPI v3 documents, so `kubectl apply`
//!   works without `--validate=false`;
//! - namespaces, pods (`status`, `log`), services, endpoints, configmaps,
//!   secrets, serviceaccounts, nodes, events (core and `events.k8s.io`),
//!   deployments and replicasets (`status`, `scale`), RBAC roles and bindings, leases,
//!   CRDs, and every CRD's custom resources (`status`, `scale` when declared,
//!   `additionalPrinterColumns` in `kubectl get` tables);
//! - JSON request bodies everywhere, plus protobuf bodies for the kinds
//!   `kubectl create namespace|configmap|secret|serviceaccount` sends and
//!   for `DeleteOptions` (typed client-go clients such as Helm's);
//! - Deployment and ReplicaSet controllers ([`deployment`]) that keep
//!   ReplicaSets and pod objects.
//!
//! Known differences from a real API server: no authentication or
//! admission webhooks; CRD schemas are checked for types, `required`,
//! `enum` and ranges, defaulted and pruned, but `pattern`, formats and CEL
//! rules are not enforced;
//! server-side apply records each manager's applied fields in
//! `managedFields` (so a field dropped from an applied manifest is removed)
//! but never reports conflicts between managers, and other writes are not
//! recorded there; list pagination is
//! ignored (everything comes in one page); a Deployment's template change
//! replaces all its pods at once (no surge).
//!
//! With [`Options::kubelet`] set, pods really run: the process
//! [`kubelet`] starts each container as a local process (images map to
//! local programs through [`images::ImageMap`]), with the downward API,
//! ConfigMap/Secret/emptyDir/downwardAPI volumes and `/etc/hosts`
//! bind-mounted in a private mount namespace, readiness and liveness
//! probes, restart policies with back-off, graceful deletion and logs.
//! [`services`] gives Services ClusterIPs, Endpoints and a userspace proxy,
//! and [`KubeSim::crash`] (or `POST /kube-sim/v1/namespaces/{ns}/pods/{name}/crash`,
//! used by `kube-sim crash`) SIGKILLs a container as if it crashed.
//!
//! Network modes ([`network::NetworkMode`], chosen in
//! [`kubelet::KubeletOptions::network`] or `kube-sim up --network`):
//! - `Loopback` (default): each pod has its own 127.0.0.0/8 address,
//!   exported as `POD_IP` and `status.podIP`; programs must bind it rather
//!   than 0.0.0.0. ClusterIPs come from the same range; no privileges.
//! - `Namespace`: each pod has a network namespace with a veth on a
//!   kube-sim bridge owning `10.<n>.0.0/16`, so pods can all bind
//!   0.0.0.0:6122. ClusterIPs live on the bridge and the API server is
//!   forwarded to the bridge address. Needs root and `ip`; everything is
//!   removed on shutdown.
//!
//! Pods reach the API server through `KUBECONFIG` (a kubeconfig in the
//! mounted service account directory), which kubectl and kube-rs'
//! `Config::infer()` read first; `KUBERNETES_SERVICE_HOST`/`_PORT` are set
//! too, but the server is plain HTTP, so kube-rs' `Config::incluster()`
//! (HTTPS only) does not apply.
//!
//! Start one in-process on a free port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), kube_sim::Error> {
//! let sim = kube_sim::KubeSim::start(kube_sim::Options::default()).await?;
//! println!("kubectl --kubeconfig {} get ns", sim.kubeconfig().display());
//! sim.stop().await;
//! # Ok(())
//! # }
//! ```

pub mod deployment;
pub mod discovery;
pub mod error;
pub mod gc;
pub mod images;
pub mod kubeconfig;
pub mod kubelet;
pub mod meta;
pub mod network;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod schema;
pub mod selector;
mod server;
pub mod services;
pub mod store;
pub mod table;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use error::{Error, Result};
pub use images::ImageMap;
pub use kubelet::KubeletOptions;
pub use network::NetworkMode;
pub use store::Store;

/// File under the state dir that holds the objects between runs.
pub const SNAPSHOT_FILE: &str = "objects.json";

/// How to start a kube-sim server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to bind; must be loopback for tests (default 127.0.0.1).
    pub bind: IpAddr,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Where to write the kubeconfig. Default: `<state_dir>/kubeconfig`, or a
    /// fresh directory under the system temp dir that is removed on stop.
    pub kubeconfig: Option<PathBuf>,
    /// Directory for kube-sim's own files; objects are saved there on
    /// [`KubeSim::stop`] and loaded again on start.
    pub state_dir: Option<PathBuf>,
    /// How many changes watches can replay before clients get 410 Gone.
    pub watch_history: usize,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// Run the built-in Deployment controller (default true).
    pub controllers: bool,
    /// Report pods Running and Ready as soon as they exist (no kubelet runs
    /// them); default false, so pods stay `Pending`.
    pub mark_pods_ready: bool,
    /// Run pods as local processes (and serve Services) with these
    /// options; `None` (the default) leaves pods as objects only.
    pub kubelet: Option<KubeletOptions>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            kubeconfig: None,
            state_dir: None,
            watch_history: 10_000,
            bookmark_interval: Duration::from_secs(5),
            controllers: true,
            mark_pods_ready: false,
            kubelet: None,
        }
    }
}

/// A running kube-sim server. Dropping it (or calling [`KubeSim::stop`])
/// shuts the server down and ends open watches.
pub struct KubeSim {
    addr: SocketAddr,
    kubeconfig: PathBuf,
    snapshot_path: Option<PathBuf>,
    temp_dir: Option<PathBuf>,
    store: Arc<Store>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    kubelet: Option<Arc<kubelet::Kubelet>>,
    network: Option<Arc<network::Network>>,
    /// Forwards the API server to the bridge address in namespace mode.
    api_forwarder: Option<services::Forwarder>,
    kubelet_temp_dir: Option<PathBuf>,
}

impl KubeSim {
    /// Bind, write the kubeconfig and start serving on the current tokio runtime.
    pub async fn start(options: Options) -> Result<KubeSim> {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::new(options.bind, options.port)).await?;
        let addr = listener.local_addr()?;
        let server_url = format!("http://{addr}");
        let (kubeconfig, temp_dir) = match (&options.kubeconfig, &options.state_dir) {
            (Some(p), _) => (p.clone(), None),
            (None, Some(dir)) => (dir.join("kubeconfig"), None),
            (None, None) => {
                let dir = std::env::temp_dir().join(format!(
                    "kube-sim-{}-{}",
                    std::process::id(),
                    addr.port()
                ));
                (dir.join("kubeconfig"), Some(dir))
            }
        };
        if let Some(dir) = &options.state_dir {
            std::fs::create_dir_all(dir)?;
        }
        kubeconfig::write(&kubeconfig, &server_url)?;
        let store = Arc::new(Store::new(options.watch_history));
        let snapshot_path = options.state_dir.as_ref().map(|d| d.join(SNAPSHOT_FILE));
        if let Some(path) = &snapshot_path {
            if path.exists() {
                let text = std::fs::read(path)?;
                let snap: serde_json::Value = serde_json::from_slice(&text)
                    .map_err(|e| Error::BadRequest(format!("reading {}: {e}", path.display())))?;
                store.restore(&snap)?;
            }
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut kubelet = None;
        let mut network = None;
        let mut api_forwarder = None;
        let mut kubelet_temp_dir = None;
        if let Some(kopts) = &options.kubelet {
            let net = Arc::new(network::Network::new(kopts.network)?);
            let api_for_pods = match net.gateway() {
                Some(gw) => {
                    let a = SocketAddr::new(IpAddr::V4(gw), addr.port());
                    api_forwarder = Some(services::forward(a, vec![addr]).await?);
                    a
                }
                None => addr,
            };
            let root = match &options.state_dir {
                Some(dir) => dir.join("kubelet"),
                None => {
                    let dir = std::env::temp_dir().join(format!(
                        "kube-sim-{}-{}-kubelet",
                        std::process::id(),
                        addr.port()
                    ));
                    kubelet_temp_dir = Some(dir.clone());
                    dir
                }
            };
            kubelet = Some(kubelet::Kubelet::new(
                store.clone(),
                kopts.clone(),
                root,
                net.clone(),
                api_for_pods,
            )?);
            network = Some(net);
        }
        let state = Arc::new(server::AppState {
            store: store.clone(),
            addr,
            shutdown: shutdown_rx.clone(),
            bookmark_interval: options.bookmark_interval.max(Duration::from_millis(10)),
            requests: AtomicU64::new(0),
            kubelet: kubelet.clone(),
        });
        let app = axum::Router::new()
            .fallback(
                |State(state): State<Arc<server::AppState>>,
                 method: Method,
                 uri: Uri,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    server::handle(state, method, uri, headers, body).await
                },
            )
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(state);
        let controller = options.controllers.then(|| {
            tokio::spawn(deployment::run(
                store.clone(),
                options.mark_pods_ready,
                shutdown_rx.clone(),
            ))
        });
        let mut background = Vec::new();
        if let (Some(k), Some(net)) = (&kubelet, &network) {
            background.push(tokio::spawn(k.clone().run(shutdown_rx.clone())));
            let svc = services::ServiceController::new(store.clone(), net.clone());
            background.push(tokio::spawn(svc.run(shutdown_rx.clone())));
        }
        let mut stop_rx = shutdown_rx;
        let task = tokio::spawn(async move {
            let stopped = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "kube-sim server failed");
            }
            if let Some(c) = controller {
                let _ = c.await;
            }
            for b in background {
                let _ = b.await;
            }
        });
        tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "kube-sim serving");
        Ok(KubeSim {
            addr,
            kubeconfig,
            snapshot_path,
            temp_dir,
            store,
            shutdown,
            task: Some(task),
            kubelet,
            network,
            api_forwarder,
            kubelet_temp_dir,
        })
    }

    /// The process kubelet, when [`Options::kubelet`] was set.
    pub fn kubelet(&self) -> Option<&Arc<kubelet::Kubelet>> {
        self.kubelet.as_ref()
    }

    /// The network mode pods use, when a kubelet runs.
    pub fn network_mode(&self) -> Option<NetworkMode> {
        self.network.as_ref().map(|n| n.mode())
    }

    /// The network bridge of namespace mode (`ksim<n>`), when there is one.
    pub fn bridge(&self) -> Option<&str> {
        self.network.as_ref().and_then(|n| n.bridge())
    }

    /// SIGKILL a pod's container (the first one unless named) as if it
    /// crashed; the kubelet restarts it per `restartPolicy`.
    pub fn crash(&self, namespace: &str, pod: &str, container: Option<&str>) -> Result<()> {
        let k = self
            .kubelet
            .as_ref()
            .ok_or_else(|| Error::BadRequest("no kubelet runs pods in this kube-sim".into()))?;
        k.crash(namespace, pod, container).map(|_| ())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server URL, e.g. `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Path of the written kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The object store, for tests and for in-process controllers.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Append text to the log `kubectl logs` returns for a pod.
    pub fn append_pod_log(&self, namespace: &str, pod: &str, text: &str) {
        self.store.append_pod_log(namespace, pod, text);
    }

    /// Write the store to `<state_dir>/objects.json` (when a state dir is set).
    pub fn save(&self) -> Result<()> {
        if let Some(path) = &self.snapshot_path {
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_vec(&self.store.snapshot())
                .map_err(|e| Error::Internal(format!("encoding snapshot: {e}")))?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok(())
    }

    /// Shut down, wait (bounded) for the server task to finish, and save the
    /// store when a state dir is set.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(k) = &self.kubelet {
            k.shutdown().await;
        }
        self.api_forwarder = None;
        if let Some(n) = &self.network {
            n.teardown();
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        if let Err(e) = self.save() {
            tracing::warn!(error = %e, "saving kube-sim state");
        }
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(k) = &self.kubelet {
            k.kill_all_now();
        }
        if let Some(n) = &self.network {
            n.teardown();
        }
        if let Some(dir) = &self.kubelet_temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(task) = self.task.take() {
            // The graceful shutdown finishes by itself; make sure a stuck
            // connection cannot keep the task alive forever.
            let handle = task.abort_handle();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    handle.abort();
                });
            } else {
                handle.abort();
            }
        }
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
