//! Services: ClusterIP allocation, the Endpoints controller and a
//! userspace TCP proxy.
//!
//! Why: Rill's JobManager and TaskManagers find each other by Service name,
//! and tests reach a Deployment through its Service. The controller gives
//! each Service a ClusterIP from kube-sim's range, keeps its Endpoints
//! (ready and not-ready pod addresses, named target ports resolved through
//! container ports) in step with pods, and the proxy listens on every
//! `ClusterIP:port` and forwards each connection to a ready endpoint, round
//! robin, like kube-proxy's old userspace mode. Selector-less Services
//! whose Endpoints are written by hand are proxied too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::meta;
use crate::network::Network;
use crate::selector::LabelSelector;
use crate::store::{DeleteOptions, Part, Store};

/// Label on Endpoints this controller owns.
pub const MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const MANAGER: &str = "kube-sim-endpoint-controller";

/// Backends of one proxied address, shared with its listener task.
pub(crate) type Backends = Arc<RwLock<Vec<SocketAddr>>>;

/// A listening forwarder.
pub(crate) struct Forwarder {
    pub backends: Backends,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listen on `addr` and forward each connection to one of `backends`.
pub(crate) async fn forward(
    addr: SocketAddr,
    backends: Vec<SocketAddr>,
) -> std::io::Result<Forwarder> {
    let listener = TcpListener::bind(addr).await?;
    let backends: Backends = Arc::new(RwLock::new(backends));
    let shared = backends.clone();
    let next = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let list = shared.read().map(|b| b.clone()).unwrap_or_default();
            let start = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for k in 0..list.len() {
                    let target = list[(start + k) % list.len()];
                    let began = std::time::Instant::now();
                    let conn =
                        tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(target))
                            .await;
                    tracing::debug!(%addr, %peer, %target, millis = began.elapsed().as_millis() as u64, ok = matches!(conn, Ok(Ok(_))), "proxying");
                    if let Ok(Ok(mut outbound)) = conn {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
                // No reachable endpoint: the client sees the connection close.
                tracing::debug!(%addr, %peer, backends = list.len(), "no reachable endpoint");
            });
        }
    });
    Ok(Forwarder { backends, task })
}

/// Resolve a Service port's `targetPort` for one pod.
fn target_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    let port = svc_port.get("port").and_then(Value::as_i64)?;
    match svc_port.get("targetPort") {
        None | Some(Value::Null) => Some(port),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse::<i64>().ok().or_else(|| {
            meta::get_path(pod, &["spec", "containers"])?
                .as_array()?
                .iter()
                .flat_map(|c| {
                    c.get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                })
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s))?
                .get("containerPort")
                .and_then(Value::as_i64)
        }),
        Some(_) => None,
    }
}

fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some("Ready")
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// The Endpoints `subsets` for a Service over the candidate pods.
pub fn endpoint_subsets(svc: &Value, pods: &[Arc<Value>]) -> Vec<Value> {
    let ports: Vec<Value> = meta::get_path(svc, &["spec", "ports"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    // Pods with the same resolved ports share a subset.
    let mut groups: BTreeMap<Vec<i64>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    for p in pods {
        let Some(ip) = meta::str_at(p, &["status", "podIP"]).filter(|s| !s.is_empty()) else {
            continue;
        };
        if meta::is_deleting(p)
            || matches!(
                meta::str_at(p, &["status", "phase"]),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let Some(resolved) = ports
            .iter()
            .map(|sp| target_port(sp, p))
            .collect::<Option<Vec<i64>>>()
        else {
            continue;
        };
        let mut addr = json!({"ip": ip, "targetRef": {"kind": "Pod", "name": meta::name(p), "namespace": meta::namespace(p), "uid": meta::uid(p)}});
        if let Some(n) = meta::str_at(p, &["spec", "nodeName"]) {
            addr["nodeName"] = json!(n);
        }
        let g = groups.entry(resolved).or_default();
        if pod_ready(p) {
            g.0.push(addr);
        } else {
            g.1.push(addr);
        }
    }
    groups
        .into_iter()
        .map(|(resolved, (mut ready, mut not_ready))| {
            let by_ip = |a: &Value, b: &Value| a["ip"].as_str().cmp(&b["ip"].as_str());
            ready.sort_by(by_ip);
            not_ready.sort_by(by_ip);
            let ports: Vec<Value> = ports
                .iter()
                .zip(resolved)
                .map(|(sp, port)| {
                    let mut p = json!({"port": port, "protocol": sp.get("protocol").and_then(Value::as_str).unwrap_or("TCP")});
                    if let Some(n) = sp.get("name").and_then(Value::as_str) {
                        p["name"] = json!(n);
                    }
                    p
                })
                .collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = Value::Array(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = Value::Array(not_ready);
            }
            s
        })
        .collect()
}

/// Ready backends for one Service port, from its Endpoints object.
pub fn backends_for(endpoints: &Value, port_name: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in endpoints
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<&Value> = s
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let port = ports
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name)
            .or_else(|| {
                if ports.len() == 1 {
                    ports.first()
                } else {
                    None
                }
            })
            .and_then(|p| p.get("port").and_then(Value::as_u64))
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for a in s
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(ip) = a
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|i| i.parse::<IpAddr>().ok())
            {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    out
}

/// The controller and proxy state.
pub(crate) struct ServiceController {
    store: Arc<Store>,
    net: Arc<Network>,
    proxies: Mutex<HashMap<SocketAddr, Forwarder>>,
    claimed: Mutex<HashSet<IpAddr>>,
}

impl ServiceController {
    pub fn new(store: Arc<Store>, net: Arc<Network>) -> Arc<Self> {
        Arc::new(ServiceController {
            store,
            net,
            proxies: Mutex::new(HashMap::new()),
            claimed: Mutex::new(HashSet::new()),
        })
    }

    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.store.subscribe();
        loop {
            self.sync().await;
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        self.proxies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn sync(&self) {
        let (Some(svc_t), Some(ep_t), Some(pod_t)) = (
            self.store.find_type("", "v1", "services"),
            self.store.find_type("", "v1", "endpoints"),
            self.store.find_type("", "v1", "pods"),
        ) else {
            return;
        };
        let (services, _) = self.store.list(&svc_t, None);
        let (pods, _) = self.store.list(&pod_t, None);
        let mut live: HashSet<(String, String)> = HashSet::new();
        let mut desired: HashMap<SocketAddr, Vec<SocketAddr>> = HashMap::new();
        for svc in &services {
            let ns = meta::namespace(svc).to_string();
            let name = meta::name(svc).to_string();
            live.insert((ns.clone(), name.clone()));
            if meta::str_at(svc, &["spec", "type"]) == Some("ExternalName") {
                continue;
            }
            let mut cip = meta::str_at(svc, &["spec", "clusterIP"])
                .unwrap_or("")
                .to_string();
            if cip.is_empty() {
                match self.assign_ip(&svc_t, &ns, &name) {
                    Some(ip) => cip = ip,
                    None => continue,
                }
            }
            if let Ok(ip) = cip.parse::<IpAddr>() {
                self.claim(ip);
            }
            let selector = meta::get_path(svc, &["spec", "selector"])
                .and_then(Value::as_object)
                .filter(|m| !m.is_empty());
            if let Some(sel) = selector {
                let sel_str: Vec<String> = sel
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                let Ok(ls) = LabelSelector::parse(&sel_str.join(",")) else {
                    continue;
                };
                let matching: Vec<Arc<Value>> = pods
                    .iter()
                    .filter(|p| meta::namespace(p) == ns && ls.matches(p))
                    .cloned()
                    .collect();
                let subsets = endpoint_subsets(svc, &matching);
                self.write_endpoints(&ep_t, &ns, &name, subsets);
            }
            let Ok(ip) = cip.parse::<IpAddr>() else {
                continue; // headless
            };
            if !self.net.serves_service_ip(ip) {
                continue;
            }
            let eps = self.store.get(&ep_t, &ns, &name).unwrap_or(Value::Null);
            for sp in meta::get_path(svc, &["spec", "ports"])
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if sp
                    .get("protocol")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p != "TCP")
                {
                    continue;
                }
                let Some(port) = sp
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                let pname = sp.get("name").and_then(Value::as_str).unwrap_or("");
                desired.insert(SocketAddr::new(ip, port), backends_for(&eps, pname));
            }
        }
        self.remove_orphan_endpoints(&ep_t, &live);
        self.apply_proxies(desired).await;
    }

    fn claim(&self, ip: IpAddr) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        if claimed.insert(ip) {
            if let (IpAddr::V4(v4), true) = (ip, self.net.serves_service_ip(ip)) {
                if let Err(e) = self.net.claim_service_ip(v4) {
                    tracing::warn!(%ip, error = %e, "claiming ClusterIP");
                }
            }
        }
    }

    fn assign_ip(
        &self,
        svc_t: &crate::resources::ResourceType,
        ns: &str,
        name: &str,
    ) -> Option<String> {
        let ip = match self.net.allocate_service_ip() {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "allocating ClusterIP");
                return None;
            }
        };
        let mut cur = self.store.get(svc_t, ns, name).ok()?;
        meta::meta_mut(&mut cur).remove("resourceVersion");
        cur["spec"]["clusterIP"] = json!(ip.to_string());
        cur["spec"]["clusterIPs"] = json!([ip.to_string()]);
        match self
            .store
            .update(svc_t, "v1", ns, name, cur, Part::Main, false)
        {
            Ok(_) => Some(ip.to_string()),
            Err(e) => {
                tracing::debug!(service = %name, error = %e, "setting ClusterIP");
                None
            }
        }
    }

    fn write_endpoints(
        &self,
        ep_t: &crate::resources::ResourceType,
        ns: &str,
        name: &str,
        subsets: Vec<Value>,
    ) {
        match self.store.get(ep_t, ns, name) {
            Ok(mut cur) => {
                let same = cur.get("subsets").cloned().unwrap_or(json!([]))
                    == Value::Array(subsets.clone());
                if same {
                    return;
                }
                meta::meta_mut(&mut cur).remove("resourceVersion");
                cur["subsets"] = Value::Array(subsets);
                if let Err(e) = self
                    .store
                    .update(ep_t, "v1", ns, name, cur, Part::Main, false)
                {
                    tracing::debug!(service = %name, error = %e, "updating endpoints");
                }
            }
            Err(_) => {
                let obj = json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": name, "namespace": ns, "labels": {MANAGED_BY: MANAGER}},
                    "subsets": subsets});
                if let Err(e) = self.store.create(ep_t, "v1", ns, obj, false) {
                    tracing::debug!(service = %name, error = %e, "creating endpoints");
                }
            }
        }
    }

    fn remove_orphan_endpoints(
        &self,
        ep_t: &crate::resources::ResourceType,
        live: &HashSet<(String, String)>,
    ) {
        let (eps, _) = self.store.list(ep_t, None);
        for ep in eps {
            let ours = meta::get_path(&ep, &["metadata", "labels", MANAGED_BY])
                .and_then(Value::as_str)
                == Some(MANAGER);
            let key = (
                meta::namespace(&ep).to_string(),
                meta::name(&ep).to_string(),
            );
            if ours && !live.contains(&key) {
                let _ = self
                    .store
                    .delete(ep_t, &key.0, &key.1, &DeleteOptions::default());
            }
        }
    }

    async fn apply_proxies(&self, desired: HashMap<SocketAddr, Vec<SocketAddr>>) {
        let missing: Vec<(SocketAddr, Vec<SocketAddr>)> = {
            let mut proxies = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
            proxies.retain(|addr, _| desired.contains_key(addr));
            let mut missing = Vec::new();
            for (addr, backends) in desired {
                match proxies.get(&addr) {
                    Some(f) => {
                        if let Ok(mut b) = f.backends.write() {
                            if *b != backends {
                                *b = backends;
                            }
                        }
                    }
                    None => missing.push((addr, backends)),
                }
            }
            missing
        };
        for (addr, backends) in missing {
            match forward(addr, backends).await {
                Ok(f) => {
                    self.proxies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(addr, f);
                }
                Err(e) => tracing::warn!(%addr, error = %e, "starting service proxy"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, ready: bool) -> Arc<Value> {
        Arc::new(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("u-{name}")},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
    }

    #[test]
    fn subsets_resolve_named_ports_and_split_readiness() {
        let svc = json!({"spec": {"ports": [{"name": "web", "port": 80, "targetPort": "http"}]}});
        let subsets = endpoint_subsets(
            &svc,
            &[pod("a", "127.1.0.2", true), pod("b", "127.1.0.3", false)],
        );
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0]["ports"][0]["port"], 8080);
        assert_eq!(subsets[0]["addresses"][0]["ip"], "127.1.0.2");
        assert_eq!(subsets[0]["notReadyAddresses"][0]["ip"], "127.1.0.3");
        let eps = json!({"subsets": subsets});
        assert_eq!(
            backends_for(&eps, "web"),
            vec!["127.1.0.2:8080".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn default_target_port_is_port() {
        let svc = json!({"spec": {"ports": [{"port": 9000}]}});
        let s = endpoint_subsets(&svc, &[pod("a", "127.1.0.2", true)]);
        assert_eq!(s[0]["ports"][0]["port"], 9000);
        assert!(s[0]["ports"][0].get("name").is_none());
    }
}
