//! Turning a pod spec into what a process needs: environment, files and
//! mounts.
//!
//! Kubernetes assembles a container's environment from literal values,
//! the downward API, ConfigMaps and Secrets, then expands `$(VAR)`
//! references; volumes become directories. The same rules are applied
//! here against the store, with files written into the pod's state
//! directory so the process kubelet can bind-mount them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::meta;
use crate::store::Store;

/// What the downward API and references need to know about a pod.
pub(crate) struct PodContext<'a> {
    pub pod: &'a Value,
    pub pod_ip: String,
    pub host_ip: String,
    pub node: &'a str,
    pub store: &'a Store,
}

impl PodContext<'_> {
    fn ns(&self) -> &str {
        meta::namespace(self.pod)
    }

    fn object(&self, plural: &str, name: &str) -> Option<Value> {
        let rt = self.store.find_type("", "v1", plural)?;
        self.store.get(&rt, self.ns(), name).ok()
    }

    /// A ConfigMap's or Secret's entries as bytes.
    fn data(&self, secret: bool, name: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let kind = if secret { "secret" } else { "configmap" };
        let obj = self
            .object(if secret { "secrets" } else { "configmaps" }, name)
            .ok_or_else(|| Error::NotFound(format!("{kind} \"{name}\" not found")))?;
        let mut out = BTreeMap::new();
        if secret {
            if let Some(m) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in m {
                    let text = v.as_str().unwrap_or("");
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .map_err(|e| {
                            Error::Invalid(format!("secret \"{name}\" key {k}: bad base64: {e}"))
                        })?;
                    out.insert(k.clone(), bytes);
                }
            }
            if let Some(m) = obj.get("stringData").and_then(Value::as_object) {
                for (k, v) in m {
                    out.insert(k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec());
                }
            }
        } else {
            if let Some(m) = obj.get("data").and_then(Value::as_object) {
                for (k, v) in m {
                    out.insert(k.clone(), v.as_str().unwrap_or("").as_bytes().to_vec());
                }
            }
            if let Some(m) = obj.get("binaryData").and_then(Value::as_object) {
                for (k, v) in m {
                    if let Ok(b) =
                        base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap_or(""))
                    {
                        out.insert(k.clone(), b);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The value of a downward-API `fieldPath`.
    pub fn field(&self, path: &str) -> Result<String> {
        let p = self.pod;
        let s = |path: &[&str]| meta::str_at(p, path).unwrap_or("").to_string();
        let bracket = |prefix: &str, field: &str| -> Option<String> {
            let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
            Some(
                meta::get_path(p, &["metadata", field, key])
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            )
        };
        Ok(match path {
            "metadata.name" => s(&["metadata", "name"]),
            "metadata.namespace" => s(&["metadata", "namespace"]),
            "metadata.uid" => s(&["metadata", "uid"]),
            "spec.nodeName" => self.node.to_string(),
            "spec.serviceAccountName" => {
                let sa = s(&["spec", "serviceAccountName"]);
                if sa.is_empty() {
                    "default".into()
                } else {
                    sa
                }
            }
            "status.podIP" | "status.podIPs" => self.pod_ip.clone(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.clone(),
            "metadata.labels" | "metadata.annotations" => {
                let field = path.trim_start_matches("metadata.");
                let mut lines: Vec<String> = meta::get_path(p, &["metadata", field])
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                format!("{k}={}", Value::String(v.as_str().unwrap_or("").into()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                lines.sort();
                lines.join("\n")
            }
            _ => {
                if let Some(v) = bracket("metadata.labels['", "labels") {
                    v
                } else if let Some(v) = bracket("metadata.annotations['", "annotations") {
                    v
                } else {
                    return Err(Error::Invalid(format!(
                        "unsupported downward API fieldPath \"{path}\""
                    )));
                }
            }
        })
    }

    /// The container's environment from `env` and `envFrom`, expanded, on
    /// top of `base` (later entries win, as in Kubernetes).
    pub fn env(
        &self,
        container: &Value,
        base: Vec<(String, String)>,
    ) -> Result<Vec<(String, String)>> {
        let mut vars: Vec<(String, String)> = base;
        let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
            vars.retain(|(x, _)| *x != k);
            vars.push((k, v));
        };
        for src in container
            .get("envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let prefix = src.get("prefix").and_then(Value::as_str).unwrap_or("");
            for (secret, field) in [(false, "configMapRef"), (true, "secretRef")] {
                let Some(r) = src.get(field) else { continue };
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
                match self.data(secret, name) {
                    Ok(data) => {
                        for (k, v) in data {
                            set(
                                &mut vars,
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v).into(),
                            );
                        }
                    }
                    Err(_) if optional => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for e in container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = e.get("name").and_then(Value::as_str) else {
                continue;
            };
            let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
                let lookup = |k: &str| {
                    vars.iter()
                        .rev()
                        .find(|(x, _)| x == k)
                        .map(|(_, v)| v.clone())
                };
                expand(v, &lookup)
            } else if let Some(from) = e.get("valueFrom") {
                match self.value_from(from)? {
                    Some(v) => v,
                    None => continue,
                }
            } else {
                String::new()
            };
            set(&mut vars, name.to_string(), value);
        }
        Ok(vars)
    }

    fn value_from(&self, from: &Value) -> Result<Option<String>> {
        if let Some(path) = meta::str_at(from, &["fieldRef", "fieldPath"]) {
            return self.field(path).map(Some);
        }
        for (secret, field) in [(false, "configMapKeyRef"), (true, "secretKeyRef")] {
            let Some(r) = from.get(field) else { continue };
            let name = r.get("name").and_then(Value::as_str).unwrap_or("");
            let key = r.get("key").and_then(Value::as_str).unwrap_or("");
            let optional = r.get("optional").and_then(Value::as_bool) == Some(true);
            let data = match self.data(secret, name) {
                Ok(d) => d,
                Err(_) if optional => return Ok(None),
                Err(e) => return Err(e),
            };
            return match data.get(key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into())),
                None if optional => Ok(None),
                None => Err(Error::NotFound(format!(
                    "couldn't find key {key} in {} \"{name}\"",
                    if secret { "Secret" } else { "ConfigMap" }
                ))),
            };
        }
        if from.get("resourceFieldRef").is_some() {
            // No resource accounting: report "no limit" as 0.
            return Ok(Some("0".into()));
        }
        Err(Error::Invalid("unsupported valueFrom".into()))
    }

    /// Write the pod's volumes under `dir`; returns volume name → host path.
    pub fn materialise_volumes(&self, dir: &Path) -> Result<HashMap<String, PathBuf>> {
        let mut out = HashMap::new();
        for v in meta::get_path(self.pod, &["spec", "volumes"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(name) = v.get("name").and_then(Value::as_str) else {
                continue;
            };
            let path = dir.join(name);
            if let Some(hp) = meta::str_at(v, &["hostPath", "path"]) {
                if matches!(
                    meta::str_at(v, &["hostPath", "type"]),
                    Some("DirectoryOrCreate")
                ) {
                    std::fs::create_dir_all(hp)?;
                }
                out.insert(name.to_string(), PathBuf::from(hp));
                continue;
            }
            std::fs::create_dir_all(&path)?;
            for (secret, field, name_key) in
                [(false, "configMap", "name"), (true, "secret", "secretName")]
            {
                let Some(src) = v.get(field) else { continue };
                let obj_name = src.get(name_key).and_then(Value::as_str).unwrap_or("");
                let optional = src.get("optional").and_then(Value::as_bool) == Some(true);
                let data = match self.data(secret, obj_name) {
                    Ok(d) => d,
                    Err(_) if optional => BTreeMap::new(),
                    Err(e) => return Err(e),
                };
                write_items(&path, &data, src.get("items"))?;
            }
            if let Some(items) =
                meta::get_path(v, &["downwardAPI", "items"]).and_then(Value::as_array)
            {
                for item in items {
                    let (Some(rel), Some(fp)) = (
                        item.get("path").and_then(Value::as_str),
                        meta::str_at(item, &["fieldRef", "fieldPath"]),
                    ) else {
                        continue;
                    };
                    write_file(&path, rel, self.field(fp)?.as_bytes())?;
                }
            }
            out.insert(name.to_string(), path);
        }
        Ok(out)
    }
}

/// Write a ConfigMap's/Secret's entries, all or as listed in `items`.
fn write_items(dir: &Path, data: &BTreeMap<String, Vec<u8>>, items: Option<&Value>) -> Result<()> {
    match items.and_then(Value::as_array) {
        Some(items) => {
            for item in items {
                let key = item.get("key").and_then(Value::as_str).unwrap_or("");
                let rel = item.get("path").and_then(Value::as_str).unwrap_or(key);
                if let Some(bytes) = data.get(key) {
                    write_file(dir, rel, bytes)?;
                }
            }
        }
        None => {
            for (k, bytes) in data {
                write_file(dir, k, bytes)?;
            }
        }
    }
    Ok(())
}

/// Write `dir/rel`, refusing paths that leave `dir`.
fn write_file(dir: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let rel_path = Path::new(rel);
    if rel.is_empty()
        || rel_path.is_absolute()
        || rel_path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::Invalid(format!(
            "volume item path \"{rel}\" is not a relative path inside the volume"
        )));
    }
    let path = dir.join(rel_path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Kubernetes `$(VAR)` expansion: defined references are replaced, `$$`
/// escapes a `$`, anything else stays as written.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Service as pods see it in `/etc/hosts` and in `*_SERVICE_*` env vars.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServiceView {
    pub name: String,
    pub namespace: String,
    /// The ClusterIP, or the ready pod IPs of a headless service.
    pub ips: Vec<String>,
    pub headless: bool,
    /// (port name, port).
    pub ports: Vec<(String, i64)>,
}

/// All services with an address, from the store.
pub(crate) fn service_views(store: &Store) -> Vec<ServiceView> {
    let Some(svc_t) = store.find_type("", "v1", "services") else {
        return Vec::new();
    };
    let ep_t = store.find_type("", "v1", "endpoints");
    let (services, _) = store.list(&svc_t, None);
    let mut out = Vec::new();
    for s in services {
        let cip = meta::str_at(&s, &["spec", "clusterIP"]).unwrap_or("");
        let name = meta::name(&s).to_string();
        let namespace = meta::namespace(&s).to_string();
        let headless = cip == "None";
        let ips = if headless {
            ep_t.as_ref()
                .and_then(|t| store.get(t, &namespace, &name).ok())
                .map(|ep| endpoint_ips(&ep))
                .unwrap_or_default()
        } else if cip.is_empty() {
            continue;
        } else {
            vec![cip.to_string()]
        };
        let ports = meta::get_path(&s, &["spec", "ports"])
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    p.get("port").and_then(Value::as_i64).unwrap_or(0),
                )
            })
            .collect();
        out.push(ServiceView {
            name,
            namespace,
            ips,
            headless,
            ports,
        });
    }
    out
}

fn endpoint_ips(ep: &Value) -> Vec<String> {
    let mut ips: Vec<String> = ep
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s.get("addresses")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .filter_map(|a| a.get("ip").and_then(Value::as_str).map(String::from))
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// The pod's `/etc/hosts`.
pub(crate) fn hosts_file(
    pod_ns: &str,
    pod_ip: &str,
    hostname: &str,
    services: &[ServiceView],
) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file (kube-sim).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    out.push_str(&format!("{pod_ip}\t{hostname}\n"));
    for s in services {
        let fqdn = format!("{}.{}.svc.cluster.local", s.name, s.namespace);
        let mut names = vec![
            fqdn,
            format!("{}.{}.svc", s.name, s.namespace),
            format!("{}.{}", s.name, s.namespace),
        ];
        if s.namespace == pod_ns {
            names.push(s.name.clone());
        }
        for ip in &s.ips {
            out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    out
}

/// Docker-link-style `{NAME}_SERVICE_HOST/PORT` variables for the
/// namespace's ClusterIP services.
pub(crate) fn service_env(pod_ns: &str, services: &[ServiceView]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in services
        .iter()
        .filter(|s| s.namespace == pod_ns && !s.headless)
    {
        let (Some(ip), Some((_, first))) = (s.ips.first(), s.ports.first()) else {
            continue;
        };
        let prefix = s.name.to_uppercase().replace('-', "_");
        out.push((format!("{prefix}_SERVICE_HOST"), ip.clone()));
        out.push((format!("{prefix}_SERVICE_PORT"), first.to_string()));
        for (name, port) in &s.ports {
            if !name.is_empty() {
                out.push((
                    format!(
                        "{prefix}_SERVICE_PORT_{}",
                        name.to_uppercase().replace('-', "_")
                    ),
                    port.to_string(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_like_kubernetes() {
        let look = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand("x$(A)y", &look), "x1y");
        assert_eq!(expand("$(B)", &look), "$(B)");
        assert_eq!(expand("$$(A)", &look), "$(A)");
        assert_eq!(expand("$(A", &look), "$(A");
        assert_eq!(expand("a$b", &look), "a$b");
    }

    #[test]
    fn downward_fields() {
        let store = Store::new(10);
        let pod = json!({"metadata": {"name": "p", "namespace": "n", "uid": "u", "labels": {"app": "x"}},
                         "spec": {"serviceAccountName": "sa"}});
        let ctx = PodContext {
            pod: &pod,
            pod_ip: "127.9.0.2".into(),
            host_ip: "127.0.0.1".into(),
            node: "kube-sim",
            store: &store,
        };
        assert_eq!(ctx.field("metadata.name").unwrap(), "p");
        assert_eq!(ctx.field("metadata.labels['app']").unwrap(), "x");
        assert_eq!(ctx.field("status.podIP").unwrap(), "127.9.0.2");
        assert_eq!(ctx.field("spec.serviceAccountName").unwrap(), "sa");
        assert!(ctx.field("spec.bogus").is_err());
        let c = json!({"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "$(A)-2"},
                               {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                               {"name": "M", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}]});
        let env = ctx.env(&c, vec![]).unwrap();
        assert!(env.contains(&("B".into(), "1-2".into())));
        assert!(env.contains(&("N".into(), "n".into())));
        assert!(!env.iter().any(|(k, _)| k == "M"));
        let missing = json!({"env": [{"name": "M", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}]});
        assert!(ctx.env(&missing, vec![]).is_err());
    }

    #[test]
    fn volume_paths_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_file(dir.path(), "../x", b"").is_err());
        assert!(write_file(dir.path(), "/etc/x", b"").is_err());
        write_file(dir.path(), "a/b", b"hi").unwrap();
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"hi");
    }

    #[test]
    fn hosts_lists_services() {
        let svcs = vec![ServiceView {
            name: "web".into(),
            namespace: "default".into(),
            ips: vec!["127.5.128.1".into()],
            headless: false,
            ports: vec![("http".into(), 80)],
        }];
        let h = hosts_file("default", "127.5.0.2", "pod-a", &svcs);
        assert!(h.contains(
            "127.5.128.1\tweb.default.svc.cluster.local web.default.svc web.default web\n"
        ));
        assert!(h.contains("127.5.0.2\tpod-a\n"));
        let other = hosts_file("other", "127.5.0.3", "pod-b", &svcs);
        assert!(!other.contains(" web\n"));
        let env = service_env("default", &svcs);
        assert!(env.contains(&("WEB_SERVICE_HOST".into(), "127.5.128.1".into())));
        assert!(env.contains(&("WEB_SERVICE_PORT_HTTP".into(), "80".into())));
    }
}
