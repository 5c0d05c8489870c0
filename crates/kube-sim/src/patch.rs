//! The four PATCH flavours of the Kubernetes API, as pure functions on JSON.
//!
//! - JSON merge patch (RFC 7386, `application/merge-patch+json`),
//! - JSON patch (RFC 6902, `application/json-patch+json`),
//! - strategic merge patch (`application/strategic-merge-patch+json`), which
//!   merges lists of named things (containers, env, ports, volumes, …) by a
//!   key instead of replacing them, and understands the `$patch`,
//!   `$setElementOrder/…`, `$retainKeys` and `$deleteFromPrimitiveList/…`
//!   directives that `kubectl apply` sends,
//! - server-side apply (`application/apply-patch+yaml`), done here as
//!   create-or-strategic-merge of the applied configuration, plus removal of
//!   the fields the same manager applied before and no longer does
//!   ([`field_set`], [`remove_unowned`]).
//!
//! Strategic merge needs per-field metadata that a real server reads from Go
//! struct tags; kube-sim keeps the equivalent as a small table keyed by field
//! name and parent field ([`list_merge_key`]).

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The patch flavour, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386.
    Merge,
    /// RFC 6902.
    Json,
    /// Kubernetes strategic merge patch.
    Strategic,
    /// Server-side apply.
    Apply,
}

impl PatchKind {
    /// Map a `Content-Type` header value to a patch kind.
    pub fn from_content_type(ct: &str) -> Result<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Ok(PatchKind::Apply)
            }
            other => Err(Error::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got \"{other}\")"
            ))),
        }
    }
}

/// Apply an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = match target {
                Value::Object(t) => t.clone(),
                _ => Map::new(),
            };
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    }
}

/// Apply an RFC 6902 JSON patch (a list of operations).
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value> {
    let ops = patch
        .as_array()
        .ok_or_else(|| Error::BadRequest("json patch must be an array of operations".into()))?;
    let mut doc = target.clone();
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadRequest("json patch operation without \"op\"".into()))?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadRequest("json patch operation without \"path\"".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| Error::BadRequest(format!("json patch \"{kind}\" needs a value")))
        };
        let from = || {
            op.get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::BadRequest(format!("json patch \"{kind}\" needs \"from\"")))
        };
        match kind {
            "add" => pointer_add(&mut doc, path, value()?)?,
            "remove" => {
                pointer_remove(&mut doc, path)?;
            }
            "replace" => {
                pointer_remove(&mut doc, path)?;
                pointer_add(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = pointer_remove(&mut doc, from()?)?;
                pointer_add(&mut doc, path, v)?;
            }
            "copy" => {
                let v = doc
                    .pointer(&normalize_pointer(from()?)?)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Invalid(format!("json patch: no value at {}", from().unwrap_or("")))
                    })?;
                pointer_add(&mut doc, path, v)?;
            }
            "test" => {
                let expected = value()?;
                let actual = doc.pointer(&normalize_pointer(path)?);
                if actual != Some(&expected) {
                    return Err(Error::Invalid(format!(
                        "json patch test operation failed at {path}"
                    )));
                }
            }
            other => {
                return Err(Error::BadRequest(format!(
                    "json patch: unknown operation \"{other}\""
                )))
            }
        }
    }
    Ok(doc)
}

fn normalize_pointer(p: &str) -> Result<String> {
    if p.is_empty() || p.starts_with('/') {
        Ok(p.to_string())
    } else {
        Err(Error::BadRequest(format!("invalid JSON pointer \"{p}\"")))
    }
}

fn split_pointer(p: &str) -> Result<(String, String)> {
    let p = normalize_pointer(p)?;
    let idx = p
        .rfind('/')
        .ok_or_else(|| Error::BadRequest("cannot patch the document root".into()))?;
    let last = p[idx + 1..].replace("~1", "/").replace("~0", "~");
    Ok((p[..idx].to_string(), last))
}

fn pointer_add(doc: &mut Value, path: &str, value: Value) -> Result<()> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| Error::Invalid(format!("json patch: missing parent for {path}")))?;
    match target {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last
                .parse()
                .map_err(|_| Error::Invalid(format!("json patch: bad array index in {path}")))?;
            if i > a.len() {
                return Err(Error::Invalid(format!(
                    "json patch: index out of range in {path}"
                )));
            }
            a.insert(i, value);
            Ok(())
        }
        _ => Err(Error::Invalid(format!(
            "json patch: parent of {path} is not a container"
        ))),
    }
}

fn pointer_remove(doc: &mut Value, path: &str) -> Result<Value> {
    let (parent, last) = split_pointer(path)?;
    let target = doc
        .pointer_mut(&parent)
        .ok_or_else(|| Error::Invalid(format!("json patch: missing parent for {path}")))?;
    let missing = || Error::Invalid(format!("json patch: nothing to remove at {path}"));
    match target {
        Value::Object(m) => m.remove(&last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// How a list field merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// Replace the whole list (the default for lists).
    Replace,
    /// Merge items whose value of this key is equal.
    MergeByKey(&'static str),
    /// Merge a list of scalars as a set (e.g. `finalizers`).
    MergePrimitives,
}

/// The list strategy of `field` whose enclosing object sits under `parent`
/// (the name of the field that holds that object, or "" at the top).
pub fn list_merge_key(parent: &str, field: &str) -> ListStrategy {
    use ListStrategy::*;
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => MergeByKey("name"),
        "hostAliases" => MergeByKey("ip"),
        "volumeMounts" => MergeByKey("mountPath"),
        "volumeDevices" => MergeByKey("devicePath"),
        "ports" => match parent {
            "containers" | "initContainers" | "ephemeralContainers" => MergeByKey("containerPort"),
            "spec" => MergeByKey("port"),
            _ => Replace,
        },
        "conditions" => MergeByKey("type"),
        "ownerReferences" => MergeByKey("uid"),
        "finalizers" => MergePrimitives,
        "containerStatuses" | "initContainerStatuses" => MergeByKey("name"),
        "topologySpreadConstraints" => MergeByKey("topologyKey"),
        _ => Replace,
    }
}

/// Apply a strategic merge patch. `parent` is the name of the field holding
/// `target` ("" for a whole object).
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value> {
    smp_value(target, patch, "")
}

fn smp_value(target: &Value, patch: &Value, parent: &str) -> Result<Value> {
    match (target, patch) {
        (_, Value::Object(p)) => {
            let t = match target {
                Value::Object(t) => Some(t),
                _ => None,
            };
            smp_object(t, p, parent)
        }
        _ => Ok(patch.clone()),
    }
}

fn smp_object(
    target: Option<&Map<String, Value>>,
    patch: &Map<String, Value>,
    parent: &str,
) -> Result<Value> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            return Ok(strip_directives(&Value::Object(p)));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "unknown strategic merge patch directive $patch: {other}"
            )))
        }
    }
    let mut out = target.cloned().unwrap_or_default();
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    let mut retain: Option<Vec<String>> = None;
    for (k, v) in patch {
        if k == "$patch" {
            continue;
        }
        if k == "$retainKeys" {
            retain = Some(
                v.as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
            );
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            if let Some(a) = v.as_array() {
                orders.push((field.to_string(), a.clone()));
            }
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (out.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let merged = match v {
            Value::Array(pa) => {
                let cur = out.get(k).and_then(Value::as_array);
                smp_list(cur, pa, parent, k)?
            }
            Value::Object(_) => smp_value(out.get(k).unwrap_or(&Value::Null), v, k)?,
            _ => v.clone(),
        };
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(items)), ListStrategy::MergeByKey(key)) =
            (out.get_mut(&field), list_merge_key(parent, &field))
        {
            reorder(items, &order, Some(key));
        } else if let Some(Value::Array(items)) = out.get_mut(&field) {
            reorder(items, &order, None);
        }
    }
    if let Some(keys) = retain {
        out.retain(|k, _| keys.iter().any(|r| r == k));
    }
    Ok(Value::Object(out))
}

fn reorder(items: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let id = |v: &Value| -> Option<Value> {
        match key {
            Some(k) => v.get(k).cloned(),
            None => Some(v.clone()),
        }
    };
    let mut rest = std::mem::take(items);
    for o in order {
        let want = id(o);
        if let Some(pos) = rest.iter().position(|x| id(x) == want) {
            items.push(rest.remove(pos));
        }
    }
    items.extend(rest);
}

/// Remove `$…` directive keys (used when a list item is inserted as-is).
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn smp_list(
    current: Option<&Vec<Value>>,
    patch: &[Value],
    parent: &str,
    field: &str,
) -> Result<Value> {
    // A `{"$patch": "replace"}` item anywhere replaces the whole list.
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let items = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return Ok(Value::Array(items));
    }
    match list_merge_key(parent, field) {
        ListStrategy::Replace => Ok(Value::Array(patch.iter().map(strip_directives).collect())),
        ListStrategy::MergePrimitives => {
            let mut out = current.cloned().unwrap_or_default();
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListStrategy::MergeByKey(key) => {
            let mut out = current.cloned().unwrap_or_default();
            for item in patch {
                let Some(id) = item.get(key) else {
                    // Items without the merge key cannot be matched; a real
                    // server rejects them, and so do we.
                    if item.get("$patch").is_some() {
                        continue;
                    }
                    return Err(Error::Invalid(format!(
                        "strategic merge patch: an item of \"{field}\" lacks its merge key \"{key}\""
                    )));
                };
                let pos = out.iter().position(|x| x.get(key) == Some(id));
                let directive = item.get("$patch").and_then(Value::as_str);
                match (pos, directive) {
                    (Some(i), Some("delete")) => {
                        out.remove(i);
                    }
                    (None, Some("delete")) => {}
                    (Some(i), _) => {
                        let merged = smp_value(&out[i], item, field)?;
                        out[i] = merged;
                    }
                    (None, _) => out.push(smp_value(&Value::Null, item, field)?),
                }
            }
            Ok(Value::Array(out))
        }
    }
}

/// Server-side apply, reduced to create-or-merge: the applied configuration
/// is strategically merged into the live object (or becomes it).
pub fn apply(live: Option<&Value>, applied: &Value) -> Result<Value> {
    match live {
        None => Ok(strip_directives(applied)),
        Some(live) => strategic_merge(live, &strip_directives(applied)),
    }
}

/// The set of fields an applied configuration sets, in the API's
/// `fieldsV1` notation (`f:name` for fields, `k:{...}` for keyed list items,
/// `v:...` for set members). Identity fields (apiVersion, kind, name,
/// namespace) are not owned.
pub fn field_set(applied: &Value) -> Value {
    let mut top = applied.clone();
    if let Some(m) = top.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
        if m.get("metadata")
            .and_then(Value::as_object)
            .is_some_and(Map::is_empty)
        {
            m.remove("metadata");
        }
    }
    fields_of(&top, "")
}

fn fields_of(v: &Value, parent: &str) -> Value {
    let mut out = Map::new();
    let Some(m) = v.as_object() else {
        return Value::Object(out);
    };
    for (k, child) in m {
        if k.starts_with('$') {
            continue;
        }
        let entry = match child {
            Value::Object(c) if !c.is_empty() => fields_of(child, k),
            Value::Array(items) => match list_merge_key(parent, k) {
                ListStrategy::MergeByKey(key) => {
                    let mut set = Map::new();
                    for item in items {
                        if let Some(id) = item.get(key) {
                            let mut inner = match fields_of(item, k) {
                                Value::Object(x) => x,
                                _ => Map::new(),
                            };
                            inner.insert(".".into(), Value::Object(Map::new()));
                            set.insert(format!("k:{{\"{key}\":{id}}}"), Value::Object(inner));
                        }
                    }
                    Value::Object(set)
                }
                ListStrategy::MergePrimitives => Value::Object(
                    items
                        .iter()
                        .map(|i| (format!("v:{i}"), Value::Object(Map::new())))
                        .collect(),
                ),
                ListStrategy::Replace => Value::Object(Map::new()),
            },
            _ => Value::Object(Map::new()),
        };
        out.insert(format!("f:{k}"), entry);
    }
    Value::Object(out)
}

/// Remove from `live` the fields a manager owned before (`old`) but no
/// longer applies (`new`): what makes dropping a field from an applied
/// manifest delete it.
pub fn remove_unowned(live: &mut Value, old: &Value, new: &Value) {
    let (Some(old), Some(live)) = (old.as_object(), live.as_object_mut()) else {
        return;
    };
    let empty = Map::new();
    let new = new.as_object().unwrap_or(&empty);
    for (path, old_child) in old {
        let Some(field) = path.strip_prefix("f:") else {
            continue;
        };
        match new.get(path) {
            None => {
                live.remove(field);
            }
            Some(new_child) => {
                let Some(target) = live.get_mut(field) else {
                    continue;
                };
                if let Value::Array(items) = target {
                    remove_list_items(items, old_child, new_child);
                } else {
                    remove_unowned(target, old_child, new_child);
                }
            }
        }
    }
}

fn remove_list_items(items: &mut Vec<Value>, old: &Value, new: &Value) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return;
    };
    for (id, old_item) in old {
        if let Some(spec) = id.strip_prefix("k:") {
            let Ok(Value::Object(key)) = serde_json::from_str::<Value>(spec) else {
                continue;
            };
            let matches = |x: &Value| key.iter().all(|(k, v)| x.get(k) == Some(v));
            match new.get(id) {
                None => items.retain(|x| !matches(x)),
                Some(new_item) => {
                    for x in items.iter_mut().filter(|x| matches(x)) {
                        remove_unowned(x, old_item, new_item);
                    }
                }
            }
        } else if let Some(v) = id.strip_prefix("v:") {
            if !new.contains_key(id) {
                if let Ok(val) = serde_json::from_str::<Value>(v) {
                    items.retain(|x| x != &val);
                }
            }
        }
    }
}

/// Parse an apply body, which may be YAML or JSON.
pub fn parse_apply_body(body: &[u8]) -> Result<Value> {
    serde_yaml_ng::from_slice::<Value>(body)
        .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let p = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(
            merge_patch(&t, &p),
            json!({"a": "z", "c": {"d": "e"}, "l": [3]})
        );
        assert_eq!(merge_patch(&json!({"a": 1}), &json!("x")), json!("x"));
    }

    #[test]
    fn json_patch_ops() {
        let t = json!({"spec": {"replicas": 1, "list": ["a", "b"]}, "metadata": {"labels": {"x/y": "1"}}});
        let p = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/1", "value": "c"},
            {"op": "add", "path": "/spec/list/-", "value": "d"},
            {"op": "remove", "path": "/metadata/labels/x~1y"},
            {"op": "test", "path": "/spec/replicas", "value": 3},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copied"},
            {"op": "move", "from": "/spec/copied", "path": "/moved"},
        ]);
        assert_eq!(
            json_patch(&t, &p).unwrap(),
            json!({"spec": {"replicas": 3, "list": ["a", "c", "b", "d"]}, "metadata": {"labels": {}}, "moved": 3})
        );
        let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert_eq!(json_patch(&t, &failing).unwrap_err().code(), 422);
        assert_eq!(
            json_patch(&t, &json!({"op": "add"})).unwrap_err().code(),
            400
        );
        let missing = json!([{"op": "remove", "path": "/nope"}]);
        assert_eq!(json_patch(&t, &missing).unwrap_err().code(), 422);
    }

    #[test]
    fn strategic_merge_containers_by_name() {
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80, "name": "http"}]},
            {"name": "sidecar", "image": "side:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
        "containers": [
            {"name": "app", "image": "app:2", "env": [{"name": "B", "value": "3"}, {"name": "A", "$patch": "delete"}],
             "ports": [{"containerPort": 81}]},
        ]}}}});
        let out = strategic_merge(&live, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["name"], "sidecar");
        assert_eq!(cs[1]["image"], "app:2");
        assert_eq!(cs[1]["env"], json!([{"name": "B", "value": "3"}]));
        assert_eq!(
            cs[1]["ports"],
            json!([{"containerPort": 80, "name": "http"}, {"containerPort": 81}])
        );
    }

    #[test]
    fn strategic_merge_directives() {
        let live = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
                          "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                                   "args": ["1", "2"]}});
        let patch = json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"], "labels": {"x": null}},
                           "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                                    "args": ["3"]}});
        let out = strategic_merge(&live, &patch).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        assert_eq!(out["metadata"]["labels"], json!({"y": "2"}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            out["spec"]["args"],
            json!(["3"]),
            "plain lists are replaced"
        );
        let replace = json!({"spec": {"strategy": {"$patch": "replace", "type": "X"}}});
        assert_eq!(
            strategic_merge(&live, &replace).unwrap()["spec"]["strategy"],
            json!({"type": "X"})
        );
        let bad = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        assert_eq!(strategic_merge(&live, &bad).unwrap_err().code(), 422);
    }

    #[test]
    fn service_ports_merge_by_port() {
        let live = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}, {"port": 443}]}});
        let out = strategic_merge(&live, &patch).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn apply_creates_or_merges() {
        let applied = json!({"data": {"a": "1"}});
        assert_eq!(apply(None, &applied).unwrap(), applied);
        let live = json!({"data": {"b": "2"}, "metadata": {"name": "x"}});
        assert_eq!(
            apply(Some(&live), &applied).unwrap(),
            json!({"data": {"a": "1", "b": "2"}, "metadata": {"name": "x"}})
        );
        assert_eq!(
            parse_apply_body(b"a: 1\nb: [x]\n").unwrap(),
            json!({"a": 1, "b": ["x"]})
        );
        assert!(parse_apply_body(b"a: [").is_err());
    }

    #[test]
    fn apply_removes_fields_dropped_from_the_manifest() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "1"}},
                           "data": {"keep": "1", "drop": "2"}});
        let fs1 = field_set(&first);
        assert_eq!(
            fs1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}}, "f:data": {"f:keep": {}, "f:drop": {}}})
        );
        let mut live = apply(None, &first).unwrap();
        live["data"]["other"] = json!("set by someone else");
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"keep": "1"}});
        let fs2 = field_set(&second);
        let mut merged = apply(Some(&live), &second).unwrap();
        remove_unowned(&mut merged, &fs1, &fs2);
        assert_eq!(
            merged["data"],
            json!({"keep": "1", "other": "set by someone else"})
        );
        assert!(merged["metadata"].get("labels").is_none());
    }

    #[test]
    fn apply_removes_dropped_list_items() {
        let c = |names: &[&str]| {
            json!({"spec": {"containers": names.iter().map(|n| json!({"name": n, "image": "i"})).collect::<Vec<_>>(),
                            "finalizers": names}})
        };
        let fs1 = field_set(&c(&["a", "b"]));
        assert!(
            fs1["f:spec"]["f:containers"]
                .get("k:{\"name\":\"b\"}")
                .is_some(),
            "{fs1}"
        );
        let mut merged = apply(Some(&c(&["a", "b"])), &c(&["a"])).unwrap();
        remove_unowned(&mut merged, &fs1, &field_set(&c(&["a"])));
        assert_eq!(
            merged["spec"]["containers"],
            json!([{"name": "a", "image": "i"}])
        );
        assert_eq!(merged["spec"]["finalizers"], json!(["a"]));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8").unwrap(),
            PatchKind::Merge
        );
        assert_eq!(
            PatchKind::from_content_type("text/plain")
                .unwrap_err()
                .code(),
            415
        );
    }
}
