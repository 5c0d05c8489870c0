//! Discovery and OpenAPI documents, generated from the type catalogue.
//!
//! kubectl and kube-rs learn what a server offers from `/api`, `/apis` and
//! the per group-version resource lists; kubectl additionally reads the
//! OpenAPI v3 documents to learn that the server validates fields itself
//! (the `fieldValidation` parameter on PATCH), which lets `kubectl apply`
//! work without `--validate=false`. Everything here is derived from the
//! same [`ResourceType`] list that routes requests, so a CRD registered at
//! run time shows up in discovery the moment it is served.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// The Kubernetes version kube-sim reports.
pub const MAJOR: &str = "1";
/// The Kubernetes minor version kube-sim reports.
pub const MINOR: &str = "32";

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": format!("v{MAJOR}.{MINOR}.0-kube-sim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.23.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// Group name → (versions in preference order).
fn groups(types: &[Arc<ResourceType>]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        let vs = out.entry(t.group.clone()).or_default();
        for v in &t.versions {
            if !vs.contains(v) {
                vs.push(v.clone());
            }
        }
    }
    out
}

fn group_doc(name: &str, versions: &[String]) -> Value {
    let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
    json!({
        "name": name,
        "versions": versions.iter().map(gv).collect::<Vec<_>>(),
        "preferredVersion": versions.first().map(gv).unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub fn group_list(types: &[Arc<ResourceType>]) -> Value {
    let groups: Vec<Value> = groups(types)
        .iter()
        .map(|(g, vs)| group_doc(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, or `None` when the group is unknown.
pub fn group(types: &[Arc<ResourceType>], name: &str) -> Option<Value> {
    let groups = groups(types);
    let vs = groups.get(name)?;
    let mut doc = group_doc(name, vs);
    if let Some(m) = doc.as_object_mut() {
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
    }
    Some(doc)
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` when nothing is served there.
pub fn resource_list(types: &[Arc<ResourceType>], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Arc<ResourceType>> = types
        .iter()
        .filter(|t| t.group == group && t.serves(version))
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in served {
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": VERBS,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        resources.push(r);
        if t.status {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.scale.is_some() {
            resources.push(json!({
                "name": format!("{}/scale", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if t.log {
            resources.push(json!({
                "name": format!("{}/log", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// Path key of a group-version in the OpenAPI v3 index (`api/v1`, `apis/g/v`).
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group-version.
pub fn openapi_v3_index(types: &[Arc<ResourceType>], generation: u64) -> Value {
    let mut paths = serde_json::Map::new();
    for t in types {
        for v in &t.versions {
            let p = gv_path(&t.group, v);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={generation:016X}")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<gv path>`: a minimal document that declares, for every
/// kind served in the group-version, a PATCH operation accepting the
/// `fieldValidation` parameter (so kubectl leaves validation to the server).
pub fn openapi_v3_group_version(types: &[Arc<ResourceType>], gv: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let mut any = false;
    for t in types {
        for v in &t.versions {
            if gv_path(&t.group, v) != gv {
                continue;
            }
            any = true;
            let prefix = if t.group.is_empty() {
                format!("/api/{v}")
            } else {
                format!("/apis/{}/{v}", t.group)
            };
            let path = if t.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
            } else {
                format!("{prefix}/{}/{{name}}", t.plural)
            };
            paths.insert(
                path,
                json!({
                    "patch": {
                        "operationId": format!("patch{}", t.kind),
                        "x-kubernetes-action": "patch",
                        "x-kubernetes-group-version-kind": {"group": t.group, "version": v, "kind": t.kind},
                        "parameters": [
                            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
                        ],
                        "responses": {"200": {"description": "OK"}}
                    }
                }),
            );
        }
    }
    any.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": format!("v{MAJOR}.{MINOR}.0")},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::builtins;

    fn types() -> Vec<Arc<ResourceType>> {
        builtins().into_iter().map(Arc::new).collect()
    }

    #[test]
    fn core_list_has_subresources() {
        let l = resource_list(&types(), "", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        for n in [
            "pods",
            "pods/status",
            "pods/log",
            "configmaps",
            "namespaces",
            "events",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        let apps = resource_list(&types(), "apps", "v1").unwrap();
        assert!(apps["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "deployments/scale" && r["kind"] == "Scale"));
        assert!(resource_list(&types(), "apps", "v2").is_none());
    }

    #[test]
    fn groups_and_openapi() {
        let g = group_list(&types());
        assert!(g["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "coordination.k8s.io"));
        let idx = openapi_v3_index(&types(), 1);
        assert!(idx["paths"].get("api/v1").is_some());
        let doc = openapi_v3_group_version(&types(), "apis/apps/v1").unwrap();
        let p = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(p["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(openapi_v3_group_version(&types(), "apis/nope/v1").is_none());
    }
}
