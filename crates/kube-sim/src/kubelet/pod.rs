//! One pod's life on the process kubelet: set up, run and restart its
//! containers, probe them, report status, and tear down on deletion.
//!
//! The worker's mutable state (one [`ContainerState`] per container) is the
//! single source for `status`; every change wakes the status writer, which
//! replaces the pod's status through the store when it differs from what
//! was last written.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::probe::Probe;
use super::process::{self, Launch, Mount};
use super::spec::{self, PodContext, ServiceView};
use super::Kubelet;
use crate::error::{Error, Result};
use crate::meta;
use crate::network::{Network, PodNetns};
use crate::store::Part;

/// Where the service account files appear inside a container.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

static CONTAINER_SEQ: AtomicU64 = AtomicU64::new(1);

/// A finished container instance.
#[derive(Debug, Clone, PartialEq)]
struct Terminated {
    exit_code: i32,
    signal: Option<i32>,
    reason: String,
    started_at: String,
    finished_at: String,
    id: String,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated(Terminated),
}

/// What the kubelet knows about one container.
#[derive(Debug)]
struct ContainerState {
    name: String,
    image: String,
    pgid: Option<i32>,
    id: String,
    restart_count: u32,
    state: State,
    last: Option<Terminated>,
    ready: bool,
    /// Will not run again (finished under its restart policy).
    done: bool,
}

/// Why the worker stops.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stop {
    grace: Duration,
    /// Remove the pod object afterwards (a delete, not a kubelet shutdown).
    delete: bool,
}

/// One pod's worker.
pub(crate) struct PodWorker {
    pub ns: String,
    pub name: String,
    pub uid: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    grace: Duration,
    stop: watch::Sender<Option<Stop>>,
    containers: Mutex<Vec<ContainerState>>,
    changed: Notify,
    hosts: Mutex<String>,
    netns: Mutex<Option<PodNetns>>,
    start_time: String,
    transitions: Mutex<HashMap<&'static str, (bool, String)>>,
    last_status: Mutex<Option<Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PodWorker {
    pub(super) fn new(k: &Kubelet, pod: &Value) -> Result<Arc<PodWorker>> {
        let ns = meta::namespace(pod).to_string();
        let name = meta::name(pod).to_string();
        let uid = meta::uid(pod).to_string();
        let ip = k.net.allocate_pod_ip()?;
        let dir = k.root.join(format!("{ns}_{name}_{uid}"));
        let containers = meta::get_path(pod, &["spec", "containers"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| ContainerState {
                name: c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                image: c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                pgid: None,
                id: String::new(),
                restart_count: 0,
                state: State::Waiting {
                    reason: "ContainerCreating".into(),
                    message: String::new(),
                },
                last: None,
                ready: false,
                done: false,
            })
            .collect();
        let grace = meta::get_path(pod, &["spec", "terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .unwrap_or(30);
        Ok(Arc::new(PodWorker {
            ns,
            name,
            uid,
            ip,
            dir,
            grace: Duration::from_secs(grace),
            stop: watch::channel(None).0,
            containers: Mutex::new(containers),
            changed: Notify::new(),
            hosts: Mutex::new(String::new()),
            netns: Mutex::new(None),
            start_time: meta::now_rfc3339(),
            transitions: Mutex::new(HashMap::new()),
            last_status: Mutex::new(None),
        }))
    }

    /// The pod's own grace period.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Ask the worker to stop (the first request wins, except that a
    /// shorter grace period or a delete upgrades it).
    pub fn request_stop(&self, grace: Duration, delete: bool) {
        self.stop.send_if_modified(|s| match s {
            None => {
                *s = Some(Stop { grace, delete });
                true
            }
            Some(cur) if grace < cur.grace || (delete && !cur.delete) => {
                *s = Some(Stop {
                    grace: grace.min(cur.grace),
                    delete: delete || cur.delete,
                });
                true
            }
            _ => false,
        });
    }

    pub fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    fn container_index(&self, container: Option<&str>) -> Result<usize> {
        let cs = lock(&self.containers);
        match container {
            None => {
                if cs.is_empty() {
                    Err(Error::BadRequest(format!(
                        "pod {} has no containers",
                        self.name
                    )))
                } else {
                    Ok(0)
                }
            }
            Some(c) => cs.iter().position(|x| x.name == c).ok_or_else(|| {
                Error::BadRequest(format!("container {c} is not valid for pod {}", self.name))
            }),
        }
    }

    pub fn crash(&self, container: Option<&str>) -> Result<(String, i32)> {
        let i = self.container_index(container)?;
        let cs = lock(&self.containers);
        let c = &cs[i];
        match c.pgid {
            Some(pgid) if matches!(c.state, State::Running { .. }) => {
                process::signal_group(pgid, libc::SIGKILL);
                Ok((c.name.clone(), pgid))
            }
            _ => Err(Error::Conflict(format!(
                "container {} of pod {} is not running",
                c.name, self.name
            ))),
        }
    }

    fn log_paths(&self, i: usize) -> (PathBuf, PathBuf) {
        let name = &lock(&self.containers)[i].name;
        (
            self.dir.join("logs").join(format!("{name}.log")),
            self.dir.join("logs").join(format!("{name}.previous.log")),
        )
    }

    pub fn log_path(&self, container: Option<&str>) -> Result<PathBuf> {
        let i = self.container_index(container)?;
        Ok(self.log_paths(i).0)
    }

    pub fn log(&self, container: Option<&str>, previous: bool) -> Result<String> {
        let i = self.container_index(container)?;
        let (cur, prev) = self.log_paths(i);
        let path = if previous { prev } else { cur };
        match std::fs::read(&path) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if previous {
                    let name = lock(&self.containers)[i].name.clone();
                    Err(Error::BadRequest(format!(
                        "previous terminated container \"{name}\" in pod \"{}\" not found",
                        self.name
                    )))
                } else {
                    Ok(String::new())
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether any container may still write to its log.
    pub fn active(&self) -> bool {
        !self.stopping() && lock(&self.containers).iter().any(|c| !c.done)
    }

    pub fn pids(&self) -> Vec<i32> {
        lock(&self.containers)
            .iter()
            .filter_map(|c| c.pgid)
            .collect()
    }

    pub fn kill_now(&self) {
        for pgid in self.pids() {
            process::signal_group(pgid, libc::SIGKILL);
        }
    }

    pub fn cleanup_network(&self, net: &Network) {
        if let Some(ns) = lock(&self.netns).take() {
            net.delete_netns(&ns);
        }
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.join("etc-hosts")
    }

    /// Rewrite `/etc/hosts` in place (keeping the bind-mounted inode) when
    /// the services changed.
    pub fn refresh_hosts(&self, services: &[ServiceView]) {
        let text = spec::hosts_file(&self.ns, &self.ip.to_string(), &self.name, services);
        let mut cur = lock(&self.hosts);
        if *cur != text && self.dir.exists() && std::fs::write(self.hosts_path(), &text).is_ok() {
            *cur = text;
        }
    }

    /// Write `/etc/hosts` whatever was written before: the kubelet's sync
    /// loop may have refreshed it before the pod's directory was set up.
    fn write_hosts(&self, services: &[ServiceView]) -> std::io::Result<()> {
        let text = spec::hosts_file(&self.ns, &self.ip.to_string(), &self.name, services);
        let mut cur = lock(&self.hosts);
        std::fs::write(self.hosts_path(), &text)?;
        *cur = text;
        Ok(())
    }

    fn update(&self, i: usize, f: impl FnOnce(&mut ContainerState)) {
        f(&mut lock(&self.containers)[i]);
        self.changed.notify_one();
    }

    fn set_waiting(&self, i: usize, reason: &str, message: String) {
        self.update(i, |c| {
            c.state = State::Waiting {
                reason: reason.into(),
                message,
            };
            c.ready = false;
        });
    }

    /// The pod status as a real kubelet would report it.
    fn status(&self, host_ip: &str) -> Value {
        let cs = lock(&self.containers);
        let all_ready = !cs.is_empty() && cs.iter().all(|c| c.ready);
        let all_done = !cs.is_empty() && cs.iter().all(|c| c.done);
        let phase = if all_done {
            let ok = cs
                .iter()
                .all(|c| matches!(&c.state, State::Terminated(t) if t.exit_code == 0));
            if ok {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if cs.iter().any(|c| {
            matches!(c.state, State::Running { .. })
                || c.last.is_some()
                || matches!(c.state, State::Terminated(_))
        }) {
            "Running"
        } else {
            "Pending"
        };
        let statuses: Vec<Value> = cs
            .iter()
            .map(|c| {
                let mut v = json!({
                    "name": c.name,
                    "image": c.image,
                    "imageID": format!("kube-sim://{}", c.image),
                    "ready": c.ready,
                    "started": matches!(c.state, State::Running { .. }),
                    "restartCount": c.restart_count,
                    "state": state_json(&c.state),
                    "lastState": c.last.as_ref().map(|t| json!({"terminated": terminated_json(t)})).unwrap_or_else(|| json!({})),
                });
                if !c.id.is_empty() {
                    v["containerID"] = json!(format!("kube-sim://{}", c.id));
                }
                v
            })
            .collect();
        drop(cs);
        let now = meta::now_rfc3339();
        let mut tr = lock(&self.transitions);
        let mut cond = |t: &'static str, status: bool, reason: Option<&str>| {
            let e = tr.entry(t).or_insert_with(|| (status, now.clone()));
            if e.0 != status {
                *e = (status, now.clone());
            }
            let mut c = json!({"type": t, "status": if status { "True" } else { "False" },
                               "lastProbeTime": null, "lastTransitionTime": e.1});
            if let (false, Some(r)) = (status, reason) {
                c["reason"] = json!(r);
            }
            c
        };
        let ready_reason = if all_done {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let conditions = vec![
            cond("PodReadyToStartContainers", true, None),
            cond("Initialized", true, None),
            cond("Ready", all_ready, Some(ready_reason)),
            cond("ContainersReady", all_ready, Some(ready_reason)),
            cond("PodScheduled", true, None),
        ];
        let ip = self.ip.to_string();
        json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": self.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        })
    }

    /// Write the status if it changed since the last write.
    fn write_status(&self, k: &Kubelet) {
        let status = self.status(&k.host_ip());
        let mut last = lock(&self.last_status);
        if last.as_ref() == Some(&status) {
            return;
        }
        let Some(t) = k.store.find_type("", "v1", "pods") else {
            return;
        };
        let Ok(mut cur) = k.store.get(&t, &self.ns, &self.name) else {
            return;
        };
        if meta::uid(&cur) != self.uid {
            return;
        }
        meta::meta_mut(&mut cur).remove("resourceVersion");
        cur["status"] = status.clone();
        match k
            .store
            .update(&t, "v1", &self.ns, &self.name, cur, Part::Status, false)
        {
            Ok(_) => *last = Some(status),
            Err(e) => tracing::debug!(pod = %self.name, error = %e, "writing pod status"),
        }
    }
}

fn state_json(s: &State) -> Value {
    match s {
        State::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if !message.is_empty() {
                w["message"] = json!(message);
            }
            json!({"waiting": w})
        }
        State::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        State::Terminated(t) => json!({"terminated": terminated_json(t)}),
    }
}

fn terminated_json(t: &Terminated) -> Value {
    let mut v = json!({
        "exitCode": t.exit_code,
        "reason": t.reason,
        "startedAt": t.started_at,
        "finishedAt": t.finished_at,
        "containerID": format!("kube-sim://{}", t.id),
    });
    if let Some(s) = t.signal {
        v["signal"] = json!(s);
    }
    v
}

/// Files and namespaces shared by a pod's containers.
struct PodEnv {
    volumes: HashMap<String, PathBuf>,
    sa_dir: Option<PathBuf>,
    home: PathBuf,
    netns: Option<PathBuf>,
}

/// Create the pod directory, service account files, volumes and network.
fn setup(k: &Kubelet, w: &PodWorker, pod: &Value) -> Result<PodEnv> {
    std::fs::create_dir_all(w.dir.join("logs"))?;
    let home = w.dir.join("home");
    std::fs::create_dir_all(&home)?;
    let ctx = PodContext {
        pod,
        pod_ip: w.ip.to_string(),
        host_ip: k.host_ip(),
        node: &k.opts.node_name,
        store: &k.store,
    };
    let volumes = ctx.materialise_volumes(&w.dir.join("volumes"))?;
    let automount = meta::get_path(pod, &["spec", "automountServiceAccountToken"])
        .and_then(Value::as_bool)
        != Some(false);
    let sa_dir = if automount {
        let dir = w.dir.join("serviceaccount");
        std::fs::create_dir_all(&dir)?;
        let sa = ctx.field("spec.serviceAccountName")?;
        std::fs::write(dir.join("namespace"), &w.ns)?;
        std::fs::write(dir.join("token"), format!("kube-sim:{}:{sa}", w.ns))?;
        std::fs::write(dir.join("ca.crt"), "")?;
        std::fs::write(
            dir.join("kubeconfig"),
            crate::kubeconfig::render_for(&format!("http://{}", k.api), &w.ns),
        )?;
        Some(dir)
    } else {
        None
    };
    if k.net.gateway().is_some() {
        // A pod namespace has no route to the host's resolvers; fail DNS
        // fast so `/etc/hosts` answers are not held up by timeouts.
        std::fs::write(
            w.dir.join("resolv.conf"),
            format!(
                "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver 127.0.0.1\noptions ndots:1 timeout:1 attempts:1\n",
                ns = w.ns
            ),
        )?;
    }
    w.write_hosts(&spec::service_views(&k.store))?;
    let netns = {
        let mut slot = lock(&w.netns);
        if slot.is_none() {
            *slot = k.net.create_netns(w.ip)?;
        }
        slot.as_ref().map(PodNetns::path)
    };
    Ok(PodEnv {
        volumes,
        sa_dir,
        home,
        netns,
    })
}

/// Build the launch of container `c` (environment, command, mounts).
fn launch(
    k: &Kubelet,
    w: &PodWorker,
    pod: &Value,
    c: &Value,
    env: &PodEnv,
) -> Result<(Launch, Vec<PathBuf>)> {
    let ctx = PodContext {
        pod,
        pod_ip: w.ip.to_string(),
        host_ip: k.host_ip(),
        node: &k.opts.node_name,
        store: &k.store,
    };
    let services = spec::service_views(&k.store);
    let kubeconfig = env.sa_dir.as_ref().map(|d| {
        if k.isolate {
            PathBuf::from(SERVICE_ACCOUNT_DIR).join("kubeconfig")
        } else {
            d.join("kubeconfig")
        }
    });
    let mut base = vec![
        ("PATH".to_string(), process::host_path()),
        ("HOME".into(), env.home.display().to_string()),
        ("HOSTNAME".into(), w.name.clone()),
        ("POD_IP".into(), w.ip.to_string()),
        ("POD_NAME".into(), w.name.clone()),
        ("POD_NAMESPACE".into(), w.ns.clone()),
        ("KUBERNETES_SERVICE_HOST".into(), k.api.ip().to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), k.api.port().to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{}", k.api)),
    ];
    if let Some(kc) = &kubeconfig {
        base.push(("KUBECONFIG".into(), kc.display().to_string()));
    }
    base.extend(spec::service_env(&w.ns, &services));
    let vars = ctx.env(c, base)?;
    let lookup = |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let strings = |field: &str| -> Vec<String> {
        c.get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| spec::expand(s, &lookup))
            .collect()
    };
    let image = c.get("image").and_then(Value::as_str).unwrap_or("");
    let mut argv = strings("command");
    if argv.is_empty() {
        match k.opts.images.resolve(image) {
            Some(bin) => argv.push(bin.display().to_string()),
            None => {
                return Err(Error::NotFound(format!(
                    "image \"{image}\" is not mapped to a local program (kube-sim up --image PATTERN=BINARY) and the container has no command"
                )))
            }
        }
    }
    argv.extend(strings("args"));
    let mut mounts = Vec::new();
    for m in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(target)) = (
            m.get("name").and_then(Value::as_str),
            m.get("mountPath").and_then(Value::as_str),
        ) else {
            continue;
        };
        let src = env
            .volumes
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("volumeMount {name} names no volume")))?;
        let sub = m.get("subPath").and_then(Value::as_str).unwrap_or("");
        let source = if sub.is_empty() {
            src.clone()
        } else {
            src.join(sub)
        };
        mounts.push(Mount {
            source,
            target: PathBuf::from(target),
            read_only: m.get("readOnly").and_then(Value::as_bool) == Some(true),
        });
    }
    let user_paths: Vec<PathBuf> = mounts.iter().map(|m| m.target.clone()).collect();
    if !user_paths.iter().any(|p| p == Path::new("/etc/hosts")) {
        mounts.push(Mount {
            source: w.hosts_path(),
            target: PathBuf::from("/etc/hosts"),
            read_only: false,
        });
    }
    let resolv = w.dir.join("resolv.conf");
    if resolv.exists()
        && !user_paths
            .iter()
            .any(|p| p == Path::new("/etc/resolv.conf"))
    {
        mounts.push(Mount {
            source: resolv,
            target: PathBuf::from("/etc/resolv.conf"),
            read_only: true,
        });
    }
    if let Some(d) = &env.sa_dir {
        if !user_paths
            .iter()
            .any(|p| p == Path::new(SERVICE_ACCOUNT_DIR))
        {
            mounts.push(Mount {
                source: d.clone(),
                target: PathBuf::from(SERVICE_ACCOUNT_DIR),
                read_only: true,
            });
        }
    }
    mounts.sort_by_key(|m| m.target.components().count());
    let mut created = Vec::new();
    if k.isolate {
        for m in &mounts {
            created.extend(process::prepare_mount_point(m)?);
        }
    }
    let cwd = c
        .get("workingDir")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    Ok((
        Launch {
            argv,
            env: vars,
            cwd,
            log: None,
            mounts,
            isolate: k.isolate,
            netns: env.netns.clone(),
            hostname: Some(w.name.clone()),
        },
        created,
    ))
}

/// Run the whole pod until it is stopped.
pub(super) async fn run(k: Arc<Kubelet>, w: Arc<PodWorker>, pod: Value) {
    let mut stop_rx = w.stop.subscribe();
    let env = loop {
        match setup(&k, &w, &pod) {
            Ok(env) => break Some(Arc::new(env)),
            Err(e) => {
                let n = lock(&w.containers).len();
                for i in 0..n {
                    w.set_waiting(i, "ContainerCreating", e.to_string());
                }
                w.write_status(&k);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop_rx.wait_for(Option::is_some) => break None,
                }
            }
        }
    };
    if let Some(env) = env {
        let containers: Vec<Value> = meta::get_path(&pod, &["spec", "containers"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut set = tokio::task::JoinSet::new();
        for (i, c) in containers.into_iter().enumerate() {
            set.spawn(run_container(
                k.clone(),
                w.clone(),
                pod.clone(),
                c,
                i,
                env.clone(),
            ));
        }
        w.write_status(&k);
        loop {
            tokio::select! {
                r = set.join_next() => if r.is_none() { break },
                _ = w.changed.notified() => w.write_status(&k),
            }
        }
        w.write_status(&k);
    }
    // Finished containers keep the pod until it is deleted.
    let fallback = Stop {
        grace: Duration::ZERO,
        delete: false,
    };
    let stop = match stop_rx.wait_for(Option::is_some).await {
        Ok(s) => (*s).unwrap_or(fallback),
        Err(_) => fallback,
    };
    w.kill_now();
    w.cleanup_network(&k.net);
    k.net.release_pod_ip(w.ip);
    if let Err(e) = std::fs::remove_dir_all(&w.dir) {
        tracing::debug!(pod = %w.name, error = %e, "removing pod directory");
    }
    if stop.delete {
        k.remove_pod(&w.ns, &w.name, &w.uid);
    }
}

fn restart_policy(pod: &Value) -> &str {
    meta::str_at(pod, &["spec", "restartPolicy"]).unwrap_or("Always")
}

/// Run one container: start, probe, wait, restart per policy.
async fn run_container(
    k: Arc<Kubelet>,
    w: Arc<PodWorker>,
    pod: Value,
    c: Value,
    i: usize,
    env: Arc<PodEnv>,
) {
    let mut stop_rx = w.stop.subscribe();
    let mut backoff = k.opts.backoff_initial;
    let policy = restart_policy(&pod).to_string();
    let mut first = true;
    loop {
        if stop_rx.borrow().is_some() {
            break;
        }
        let prepared = launch(&k, &w, &pod, &c, &env);
        let (mut l, created) = match prepared {
            Ok(x) => x,
            Err(e) => {
                let reason = match e {
                    Error::NotFound(ref m) if m.starts_with("image") => "ErrImageNeverPull",
                    _ => "CreateContainerConfigError",
                };
                w.set_waiting(i, reason, e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_rx.wait_for(Option::is_some) => break,
                }
                backoff = (backoff * 2).min(k.opts.backoff_max);
                continue;
            }
        };
        k.remember_created(created);
        let (log, prev) = w.log_paths(i);
        if !first {
            let _ = std::fs::rename(&log, &prev);
            w.update(i, |s| s.restart_count += 1);
        }
        first = false;
        l.log = Some(log);
        let started_at = meta::now_rfc3339();
        let started = Instant::now();
        let id = format!("{:016x}", CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed));
        let (exit_code, signal, stopped, start_error) = match process::spawn(&l) {
            Err(e) => {
                if let Some(f) = l.log.as_ref() {
                    let _ = std::fs::write(f, format!("{e}\n"));
                }
                (128, None, false, true)
            }
            Ok(mut child) => {
                let pid = child.id().map(|p| p as i32);
                let ready_without_probe = c.get("readinessProbe").is_none();
                w.update(i, |s| {
                    s.pgid = pid;
                    s.id = id.clone();
                    s.state = State::Running {
                        started_at: started_at.clone(),
                    };
                    s.ready = ready_without_probe;
                });
                let probes = start_probes(&w, &c, i, &l, pid);
                let stop_grace = {
                    let wait = child.wait();
                    tokio::pin!(wait);
                    tokio::select! {
                        s = &mut wait => Err(s),
                        s = stop_rx.wait_for(Option::is_some) => {
                            Ok(s.ok().and_then(|s| s.map(|s| s.grace)).unwrap_or_default())
                        }
                    }
                };
                let outcome = match stop_grace {
                    Err(status) => (status, false),
                    Ok(grace) => (terminate(&mut child, pid, grace).await, true),
                };
                for p in probes {
                    p.abort();
                }
                if let Some(pgid) = pid {
                    // Whatever the main process left behind goes with it.
                    process::signal_group(pgid, libc::SIGKILL);
                }
                match outcome.0 {
                    Ok(status) => {
                        let (code, sig) = process::exit_code(&status);
                        (code, sig, outcome.1, false)
                    }
                    Err(_) => (-1, None, outcome.1, false),
                }
            }
        };
        let t = Terminated {
            exit_code,
            signal,
            reason: if start_error {
                "StartError"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into(),
            started_at: started_at.clone(),
            finished_at: meta::now_rfc3339(),
            id: id.clone(),
        };
        let restart = !stopped
            && match policy.as_str() {
                "Never" => false,
                "OnFailure" => exit_code != 0,
                _ => true,
            };
        w.update(i, |s| {
            s.pgid = None;
            s.ready = false;
            if restart {
                s.last = Some(t.clone());
                s.state = State::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {backoff:?} restarting failed container={} pod={}",
                        s.name, w.name
                    ),
                };
            } else {
                s.state = State::Terminated(t.clone());
                s.done = !stopped;
            }
        });
        if !restart {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = k.opts.backoff_initial;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_rx.wait_for(Option::is_some) => break,
        }
        backoff = (backoff * 2).min(k.opts.backoff_max);
    }
}

/// SIGTERM the group, wait up to `grace`, then SIGKILL.
async fn terminate(
    child: &mut tokio::process::Child,
    pid: Option<i32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(pgid) = pid {
        process::signal_group(pgid, libc::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(r) => r,
        Err(_) => {
            if let Some(pgid) = pid {
                process::signal_group(pgid, libc::SIGKILL);
            }
            child.wait().await
        }
    }
}

/// Start readiness and liveness probe loops for a running container.
fn start_probes(
    w: &Arc<PodWorker>,
    c: &Value,
    i: usize,
    l: &Launch,
    pid: Option<i32>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut out = Vec::new();
    let ip = w.ip.to_string();
    if let Some(p) = c.get("readinessProbe") {
        let probe = Probe::parse(p, c, &ip);
        let w = w.clone();
        let l = l.clone();
        out.push(tokio::spawn(async move {
            tokio::time::sleep(probe.initial_delay).await;
            let (mut ok, mut bad) = (0u32, 0u32);
            loop {
                match probe.run(&l).await {
                    Ok(()) => {
                        ok += 1;
                        bad = 0;
                        if ok >= probe.success_threshold {
                            w.set_ready(i, true);
                        }
                    }
                    Err(e) => {
                        bad += 1;
                        ok = 0;
                        tracing::debug!(pod = %w.name, error = %e, "readiness probe failed");
                        if bad >= probe.failure_threshold {
                            w.set_ready(i, false);
                        }
                    }
                }
                tokio::time::sleep(probe.period).await;
            }
        }));
    }
    if let Some(p) = c.get("livenessProbe") {
        let probe = Probe::parse(p, c, &ip);
        let w = w.clone();
        let l = l.clone();
        out.push(tokio::spawn(async move {
            tokio::time::sleep(probe.initial_delay).await;
            let mut bad = 0u32;
            loop {
                match probe.run(&l).await {
                    Ok(()) => bad = 0,
                    Err(e) => {
                        bad += 1;
                        if bad >= probe.failure_threshold {
                            tracing::info!(pod = %w.name, error = %e, "liveness probe failed; restarting container");
                            if let Some(pgid) = pid {
                                process::signal_group(pgid, libc::SIGTERM);
                                tokio::time::sleep(w.grace.min(Duration::from_secs(2))).await;
                                process::signal_group(pgid, libc::SIGKILL);
                            }
                            return;
                        }
                    }
                }
                tokio::time::sleep(probe.period).await;
            }
        }));
    }
    out
}

impl PodWorker {
    fn set_ready(&self, i: usize, ready: bool) {
        let changed = {
            let mut cs = lock(&self.containers);
            let c = &mut cs[i];
            let running = matches!(c.state, State::Running { .. });
            let next = ready && running;
            let changed = c.ready != next;
            c.ready = next;
            changed
        };
        if changed {
            self.changed.notify_one();
        }
    }
}
