//! The catalogue of resource types the server serves.
//!
//! Built-in types (core, apps, rbac, coordination, events, apiextensions) and
//! types registered at run time by a CustomResourceDefinition share one
//! description, [`ResourceType`], from which both discovery documents and
//! request routing are derived. Converting a CRD object into a
//! `ResourceType` is a pure function so its validation is testable.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::meta;

/// Where the replica count and selector live, for the `scale` subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSpec {
    /// JSON path (dotted, leading dot) of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas_path: String,
    /// JSON path of the observed replicas, e.g. `.status.replicas`.
    pub status_replicas_path: String,
    /// JSON path of the label selector string, if any.
    pub label_selector_path: Option<String>,
}

/// One served resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Served versions, the preferred (storage) one first.
    pub versions: Vec<String>,
    /// Lower-case plural, the path segment.
    pub plural: String,
    /// Lower-case singular.
    pub singular: String,
    /// `kind`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Categories (e.g. `all`).
    pub categories: Vec<String>,
    /// Has a `status` subresource (status is ignored on main-resource writes).
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: Option<ScaleSpec>,
    /// Has a `log` subresource (pods).
    pub log: bool,
    /// `metadata.generation` is maintained (bumped on non-metadata, non-status changes).
    pub tracks_generation: bool,
    /// The CRD that defined this type, if any.
    pub crd: Option<String>,
}

impl ResourceType {
    /// `group/version` or just `version` for the core group.
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The preferred version.
    pub fn preferred_version(&self) -> &str {
        self.versions.first().map(String::as_str).unwrap_or("v1")
    }

    /// Whether `version` is served.
    pub fn serves(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v == version)
    }

    /// `plural.group` or `plural`, as used in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
    status: bool,
    generation: bool,
) -> ResourceType {
    ResourceType {
        group: group.into(),
        versions: vec![version.into()],
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status,
        scale: None,
        log: false,
        tracks_generation: generation,
        crd: None,
    }
}

/// The built-in resource types.
pub fn builtins() -> Vec<ResourceType> {
    let mut pods = builtin("", "v1", "pods", "Pod", true, &["po"], true, false);
    pods.log = true;
    pods.categories = vec!["all".into()];
    let mut services = builtin("", "v1", "services", "Service", true, &["svc"], true, false);
    services.categories = vec!["all".into()];
    let mut deployments = builtin(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        true,
    );
    deployments.categories = vec!["all".into()];
    deployments.scale = Some(ScaleSpec {
        spec_replicas_path: ".spec.replicas".into(),
        status_replicas_path: ".status.replicas".into(),
        label_selector_path: Some(".status.selector".into()),
    });
    let mut replica_sets = builtin(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
        true,
    );
    replica_sets.categories = vec!["all".into()];
    replica_sets.scale = Some(ScaleSpec {
        spec_replicas_path: ".spec.replicas".into(),
        status_replicas_path: ".status.replicas".into(),
        label_selector_path: None,
    });
    vec![
        builtin(
            "",
            "v1",
            "namespaces",
            "Namespace",
            false,
            &["ns"],
            true,
            false,
        ),
        pods,
        services,
        builtin(
            "",
            "v1",
            "endpoints",
            "Endpoints",
            true,
            &["ep"],
            false,
            false,
        ),
        builtin(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
            true,
            &["cm"],
            false,
            false,
        ),
        builtin("", "v1", "secrets", "Secret", true, &[], false, false),
        builtin(
            "",
            "v1",
            "serviceaccounts",
            "ServiceAccount",
            true,
            &["sa"],
            false,
            false,
        ),
        builtin("", "v1", "events", "Event", true, &["ev"], false, false),
        builtin("", "v1", "nodes", "Node", false, &["no"], true, false),
        deployments,
        replica_sets,
        builtin(
            "events.k8s.io",
            "v1",
            "events",
            "Event",
            true,
            &["ev"],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
            false,
            false,
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
            false,
            false,
        ),
        builtin(
            "coordination.k8s.io",
            "v1",
            "leases",
            "Lease",
            true,
            &[],
            false,
            false,
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            &["crd", "crds"],
            true,
            true,
        ),
    ]
}

/// Read a CRD object and describe the type it defines. Errors are `422 Invalid`.
pub fn from_crd(crd: &Value) -> Result<ResourceType> {
    let invalid = |m: &str| {
        Error::Invalid(format!(
            "CustomResourceDefinition.apiextensions.k8s.io \"{}\" is invalid: {m}",
            meta::name(crd)
        ))
    };
    let spec = crd
        .get("spec")
        .ok_or_else(|| invalid("spec: Required value"))?;
    let s = |path: &[&str]| meta::str_at(spec, path).unwrap_or("").to_string();
    let group = s(&["group"]);
    let plural = s(&["names", "plural"]);
    let kind = s(&["names", "kind"]);
    if group.is_empty() || !group.contains('.') {
        return Err(invalid(
            "spec.group: Invalid value: should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() || !meta::is_dns1123_label(&plural) {
        return Err(invalid("spec.names.plural: Invalid value"));
    }
    if kind.is_empty() {
        return Err(invalid("spec.names.kind: Required value"));
    }
    if meta::name(crd) != format!("{plural}.{group}") {
        return Err(invalid(&format!(
            "metadata.name: Invalid value: \"{}\": must be spec.names.plural+\".\"+spec.group",
            meta::name(crd)
        )));
    }
    let namespaced = match s(&["scope"]).as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        _ => {
            return Err(invalid(
                "spec.scope: Unsupported value: must be Namespaced or Cluster",
            ))
        }
    };
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("spec.versions: Required value"))?;
    let storage_count = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if storage_count != 1 {
        return Err(invalid(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        ));
    }
    let mut served: Vec<(bool, String)> = Vec::new();
    let mut status = false;
    let mut scale = None;
    for v in versions {
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() {
            return Err(invalid("spec.versions[].name: Required value"));
        }
        if v.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let storage = v.get("storage").and_then(Value::as_bool) == Some(true);
        served.push((storage, name.to_string()));
        if let Some(sub) = v.get("subresources") {
            status |= sub.get("status").is_some();
            if let Some(sc) = sub.get("scale") {
                let path = |k: &str| sc.get(k).and_then(Value::as_str).map(String::from);
                scale = Some(ScaleSpec {
                    spec_replicas_path: path("specReplicasPath")
                        .ok_or_else(|| invalid("scale.specReplicasPath: Required value"))?,
                    status_replicas_path: path("statusReplicasPath")
                        .ok_or_else(|| invalid("scale.statusReplicasPath: Required value"))?,
                    label_selector_path: path("labelSelectorPath"),
                });
            }
        }
    }
    if served.is_empty() {
        return Err(invalid(
            "spec.versions: Invalid value: at least one version must be served",
        ));
    }
    served.sort_by_key(|(storage, _)| !*storage);
    let list = |k: &str| -> Vec<String> {
        spec.get("names")
            .and_then(|n| n.get(k))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let singular = {
        let s = s(&["names", "singular"]);
        if s.is_empty() {
            kind.to_ascii_lowercase()
        } else {
            s
        }
    };
    Ok(ResourceType {
        group,
        versions: served.into_iter().map(|(_, v)| v).collect(),
        plural,
        singular,
        kind,
        namespaced,
        short_names: list("shortNames"),
        categories: list("categories"),
        status,
        scale,
        log: false,
        tracks_generation: true,
        crd: Some(meta::name(crd).to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1beta1", "served": true, "storage": false},
                    {"name": "v1", "served": true, "storage": true,
                     "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}}}
                ]
            }
        })
    }

    #[test]
    fn reads_a_crd() {
        let t = from_crd(&crd()).unwrap();
        assert_eq!(t.group, "example.com");
        assert_eq!(
            t.versions,
            vec!["v1", "v1beta1"],
            "storage version preferred"
        );
        assert_eq!(t.singular, "widget");
        assert!(t.status && t.namespaced && t.tracks_generation);
        assert_eq!(t.scale.unwrap().spec_replicas_path, ".spec.replicas");
        assert_eq!(t.short_names, vec!["wd"]);
    }

    #[test]
    fn rejects_bad_crds() {
        let mut bad_name = crd();
        bad_name["metadata"]["name"] = json!("wrong.example.com");
        assert_eq!(from_crd(&bad_name).unwrap_err().code(), 422);
        let mut no_storage = crd();
        no_storage["spec"]["versions"][1]["storage"] = json!(false);
        assert_eq!(from_crd(&no_storage).unwrap_err().code(), 422);
        let mut bad_scope = crd();
        bad_scope["spec"]["scope"] = json!("Galaxy");
        assert_eq!(from_crd(&bad_scope).unwrap_err().code(), 422);
        assert_eq!(from_crd(&json!({})).unwrap_err().code(), 422);
    }

    #[test]
    fn builtins_are_unique() {
        let b = builtins();
        for (i, a) in b.iter().enumerate() {
            for c in &b[i + 1..] {
                assert!(
                    !(a.group == c.group && a.plural == c.plural),
                    "{}",
                    a.plural
                );
            }
        }
    }
}
