//! The object store: all API objects, the global resourceVersion counter and
//! the recent change history that watches replay.
//!
//! Every write goes through one mutex-protected [`Inner`], which gives the
//! same guarantees a single etcd gives an API server: writes are totally
//! ordered by resourceVersion, an update with a stale resourceVersion fails
//! with 409, and a watch started at version N sees exactly the changes after
//! N (or 410 Gone once they have been compacted away). Admission-like
//! defaults (uid, timestamps, generation, namespace checks, CRD
//! registration) and garbage collection run inside the same critical
//! section, so a write and its consequences are observed together.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::gc::{self, DeleteOutcome, Propagation};
use crate::meta;
use crate::patch::{self, PatchKind};
use crate::resources::{self, ResourceType};

/// Storage key: (group, plural, namespace, name); namespace is "" for
/// cluster-scoped objects.
pub type ObjKey = (String, String, String, String);

/// Watch event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed from storage.
    Deleted,
}

impl EventType {
    /// Wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as kept in the history.
#[derive(Debug, Clone)]
pub struct Event {
    /// The resourceVersion the change produced.
    pub rv: u64,
    /// What happened.
    pub kind: EventType,
    /// The object's group.
    pub group: String,
    /// The object's plural.
    pub plural: String,
    /// The object after the change (the final state for `Deleted`).
    pub object: Arc<Value>,
    /// The object before the change, for `Modified`.
    pub prev: Option<Arc<Value>>,
}

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource (status changes are ignored when the type has a status subresource).
    Main,
    /// The `status` subresource (only status changes are taken).
    Status,
}

/// Options of a delete request.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `propagationPolicy`.
    pub propagation: Propagation,
    /// `preconditions.uid`.
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`.
    pub resource_version: Option<String>,
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `gracePeriodSeconds`: for pods run by a kubelet, how long the
    /// processes get between SIGTERM and SIGKILL (`Some(0)` removes at once).
    pub grace_period: Option<i64>,
}

struct Inner {
    rv: u64,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
    /// Highest resourceVersion no longer in `history`.
    compacted: u64,
    types: Vec<Arc<ResourceType>>,
    logs: HashMap<(String, String), String>,
    /// A kubelet runs pods: deleting a pod bound to a node only marks it,
    /// and the kubelet removes it once its processes are gone.
    graceful_pods: bool,
}

/// The shared store.
pub struct Store {
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
}

fn key(rt: &ResourceType, ns: &str, name: &str) -> ObjKey {
    (
        rt.group.clone(),
        rt.plural.clone(),
        if rt.namespaced {
            ns.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

/// Everything but `metadata` and `status`: what `generation` tracks.
fn spec_part(obj: &Value) -> Value {
    match obj {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| {
                    !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind")
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Two objects equal apart from resourceVersion and managedFields.
fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        let m = meta::meta_mut(&mut v);
        m.remove("resourceVersion");
        // Only the time of a managedFields entry is not content.
        if let Some(Value::Array(entries)) = m.get_mut("managedFields") {
            for e in entries {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

fn is_rbac(rt: &ResourceType) -> bool {
    rt.group == "rbac.authorization.k8s.io"
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.plural == "namespaces"
}

fn is_crd(rt: &ResourceType) -> bool {
    rt.group == "apiextensions.k8s.io" && rt.plural == "customresourcedefinitions"
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<()> {
    let ok = if is_rbac(rt) {
        !name.is_empty() && !name.contains('/') && name != "." && name != ".."
    } else if is_namespace(rt) {
        meta::is_dns1123_label(name)
    } else {
        meta::is_dns1123_subdomain(name)
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            rt.kind
        )))
    }
}

impl Store {
    /// A store with the built-in types and the standard namespaces.
    pub fn new(history_cap: usize) -> Self {
        let (notify, _) = watch::channel(0);
        let store = Store {
            inner: Mutex::new(Inner {
                rv: 0,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
                compacted: 0,
                types: resources::builtins().into_iter().map(Arc::new).collect(),
                logs: HashMap::new(),
                graceful_pods: false,
            }),
            notify,
        };
        if let Some(ns_type) = store.find_type("", "v1", "namespaces") {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let obj =
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                // Creating a fixed, valid name in an empty store cannot fail.
                let _ = store.create(&ns_type, "v1", "", obj, false);
            }
        }
        store
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data behind (all
        // mutations are single inserts/removes), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, inner: MutexGuard<'_, Inner>) {
        let rv = inner.rv;
        drop(inner);
        self.notify.send_if_modified(|v| {
            let changed = rv > *v;
            if changed {
                *v = rv;
            }
            changed
        });
    }

    /// Make pod deletion graceful: a pod with `spec.nodeName` set is only
    /// marked with `deletionTimestamp` and `deletionGracePeriodSeconds`, and
    /// stays until the kubelet deletes it with a grace period of 0.
    pub fn set_graceful_pods(&self, on: bool) {
        self.lock().graceful_pods = on;
    }

    /// A receiver that changes whenever the store's resourceVersion moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The current global resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// All served types (built-in and from CRDs).
    pub fn types(&self) -> Vec<Arc<ResourceType>> {
        self.lock().types.clone()
    }

    /// Find the type served at group/version/plural.
    pub fn find_type(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.lock()
            .types
            .iter()
            .find(|t| t.group == group && t.plural == plural && t.serves(version))
            .cloned()
    }

    /// Read one object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value> {
        self.lock()
            .objects
            .get(&key(rt, ns, name))
            .map(|o| (**o).clone())
            .ok_or_else(|| Error::not_found(&rt.qualified(), name))
    }

    /// List objects of a type (optionally in one namespace) at the current version.
    pub fn list(&self, rt: &ResourceType, ns: Option<&str>) -> (Vec<Arc<Value>>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                g == &rt.group && p == &rt.plural && ns.is_none_or(|ns| !rt.namespaced || n == ns)
            })
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Changes after `since`, or `Gone` when some of them were compacted.
    pub fn events_after(&self, since: u64) -> Result<(Vec<Arc<Event>>, u64)> {
        let inner = self.lock();
        if since < inner.compacted {
            return Err(Error::Gone(format!(
                "too old resource version: {since} ({})",
                inner.compacted + 1
            )));
        }
        let start = inner.history.partition_point(|e| e.rv <= since);
        Ok((inner.history.range(start..).cloned().collect(), inner.rv))
    }

    /// Everything needed to restart with the same objects: the global
    /// resourceVersion and every stored object.
    pub fn snapshot(&self) -> Value {
        let inner = self.lock();
        let objects: Vec<Value> = inner
            .objects
            .iter()
            .map(|((g, p, _, _), o)| json!({"group": g, "plural": p, "object": **o}))
            .collect();
        json!({"resourceVersion": inner.rv, "objects": objects})
    }

    /// Replace the contents with a [`Store::snapshot`]. Watches cannot
    /// replay across a restore: older versions get 410 Gone.
    pub fn restore(&self, snapshot: &Value) -> Result<()> {
        let bad = |m: &str| Error::BadRequest(format!("invalid snapshot: {m}"));
        let rv = snapshot
            .get("resourceVersion")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("no resourceVersion"))?;
        let entries = snapshot
            .get("objects")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no objects"))?;
        let mut objects = BTreeMap::new();
        for e in entries {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(String::from);
            let (Some(group), Some(plural), Some(obj)) = (s("group"), s("plural"), e.get("object"))
            else {
                return Err(bad("entry without group, plural or object"));
            };
            let k = (
                group,
                plural,
                meta::namespace(obj).to_string(),
                meta::name(obj).to_string(),
            );
            objects.insert(k, Arc::new(obj.clone()));
        }
        let mut inner = self.lock();
        inner.objects = objects;
        inner.rv = inner.rv.max(rv);
        inner.history.clear();
        inner.compacted = inner.rv;
        inner.refresh_crd_types();
        self.finish(inner);
        Ok(())
    }

    /// Stored log text of a pod.
    pub fn pod_log(&self, ns: &str, pod: &str) -> Option<String> {
        self.lock()
            .logs
            .get(&(ns.to_string(), pod.to_string()))
            .cloned()
    }

    /// Append text to a pod's log.
    pub fn append_pod_log(&self, ns: &str, pod: &str, text: &str) {
        self.lock()
            .logs
            .entry((ns.to_string(), pod.to_string()))
            .or_default()
            .push_str(text);
    }

    /// Create an object.
    pub fn create(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let out = inner.create(rt, version, ns, obj, dry_run)?;
        if !dry_run {
            inner.collect_garbage();
        }
        self.finish(inner);
        Ok(out)
    }

    /// Replace an object (PUT), honouring resourceVersion preconditions.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        obj: Value,
        part: Part,
        dry_run: bool,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let out = inner.update(rt, version, ns, name, obj, part, dry_run)?;
        if !dry_run {
            inner.collect_garbage();
        }
        self.finish(inner);
        Ok(out)
    }

    /// Patch an object. `Apply` creates the object when it does not exist.
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        part: Part,
        field_manager: &str,
        dry_run: bool,
    ) -> Result<Value> {
        let patch_doc: Value = match kind {
            PatchKind::Apply => patch::parse_apply_body(body)?,
            _ => serde_json::from_slice(body)
                .map_err(|e| Error::BadRequest(format!("error decoding patch: {e}")))?,
        };
        let mut inner = self.lock();
        let current = inner.objects.get(&key(rt, ns, name)).cloned();
        let out = match current {
            None if kind == PatchKind::Apply && part == Part::Main => {
                check_apply_identity(rt, version, name, &patch_doc)?;
                let mut obj = patch::apply(None, &patch_doc)?;
                let entry = apply_entry(field_manager, &rt.api_version(version), &patch_doc);
                meta::meta_mut(&mut obj).insert("managedFields".into(), json!([entry]));
                inner.create(rt, version, ns, obj, dry_run)?
            }
            None => return Err(Error::not_found(&rt.qualified(), name)),
            Some(cur) => {
                let mut cur = (*cur).clone();
                if let Some(m) = cur.as_object_mut() {
                    m.insert("apiVersion".into(), Value::String(rt.api_version(version)));
                }
                let patched = match kind {
                    PatchKind::Merge => patch::merge_patch(&cur, &patch_doc),
                    PatchKind::Json => patch::json_patch(&cur, &patch_doc)?,
                    PatchKind::Strategic => {
                        if rt.crd.is_some() {
                            return Err(Error::UnsupportedMediaType(
                                "strategic merge patch is not supported for custom resources"
                                    .into(),
                            ));
                        }
                        patch::strategic_merge(&cur, &patch_doc)?
                    }
                    PatchKind::Apply => {
                        check_apply_identity(rt, version, name, &patch_doc)?;
                        let mut merged = patch::apply(Some(&cur), &patch_doc)?;
                        if part == Part::Main {
                            record_apply(
                                &mut merged,
                                &cur,
                                field_manager,
                                &rt.api_version(version),
                                &patch_doc,
                            );
                        }
                        merged
                    }
                };
                inner.update(rt, version, ns, name, patched, part, dry_run)?
            }
        };
        if !dry_run {
            inner.collect_garbage();
        }
        self.finish(inner);
        Ok(out)
    }

    /// Delete an object; returns its last state (with `deletionTimestamp`
    /// set when finalizers keep it around).
    pub fn delete(
        &self,
        rt: &ResourceType,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value> {
        let mut inner = self.lock();
        let k = key(rt, ns, name);
        let cur = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| Error::not_found(&rt.qualified(), name))?;
        if let Some(uid) = &opts.uid {
            if meta::uid(&cur) != uid {
                return Err(Error::Conflict(format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta::uid(&cur)
                )));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if meta::resource_version(&cur) != rv {
                return Err(Error::Conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    meta::resource_version(&cur)
                )));
            }
        }
        if opts.dry_run {
            return Ok((*cur).clone());
        }
        let out = inner.delete_key(&k, opts.propagation, opts.grace_period);
        inner.collect_garbage();
        self.finish(inner);
        Ok(out.unwrap_or_else(|| (*cur).clone()))
    }
}

/// A `managedFields` entry for an apply by `manager`.
fn apply_entry(manager: &str, api_version: &str, applied: &Value) -> Value {
    json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": meta::now_rfc3339(),
        "fieldsType": "FieldsV1",
        "fieldsV1": patch::field_set(applied),
    })
}

/// After merging an apply into `merged`: drop the fields this manager applied
/// last time but no longer does, and record its new field set.
fn record_apply(
    merged: &mut Value,
    cur: &Value,
    manager: &str,
    api_version: &str,
    applied: &Value,
) {
    let is_mine = |e: &Value| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply")
            && e.get("subresource").is_none()
    };
    let mut entries: Vec<Value> = meta::get_path(cur, &["metadata", "managedFields"])
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let new_fields = patch::field_set(applied);
    if let Some(old) = entries
        .iter()
        .find(|e| is_mine(e))
        .and_then(|e| e.get("fieldsV1"))
    {
        patch::remove_unowned(merged, old, &new_fields);
    }
    entries.retain(|e| !is_mine(e));
    entries.push(apply_entry(manager, api_version, applied));
    meta::meta_mut(merged).insert("managedFields".into(), Value::Array(entries));
}

fn check_apply_identity(rt: &ResourceType, version: &str, name: &str, doc: &Value) -> Result<()> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    if api_version.is_empty() || kind.is_empty() {
        return Err(Error::BadRequest(
            "apply patches must set apiVersion and kind".into(),
        ));
    }
    if kind != rt.kind || api_version != rt.api_version(version) {
        return Err(Error::BadRequest(format!(
            "the apply patch is for {api_version}, Kind={kind} but the request is for {}, Kind={}",
            rt.api_version(version),
            rt.kind
        )));
    }
    let body_name = meta::name(doc);
    if !body_name.is_empty() && body_name != name {
        return Err(Error::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}

fn check_identity(rt: &ResourceType, version: &str, obj: &Value) -> Result<()> {
    if !obj.is_object() {
        return Err(Error::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
        if kind != rt.kind {
            return Err(Error::BadRequest(format!(
                "the kind of the object ({kind}) does not match the kind served at this path ({})",
                rt.kind
            )));
        }
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        let group_of = |av: &str| {
            av.rsplit_once('/')
                .map(|(g, _)| g.to_string())
                .unwrap_or_default()
        };
        if group_of(av) != rt.group {
            return Err(Error::BadRequest(format!(
                "the API version of the object ({av}) does not match the group served at this path ({})",
                rt.api_version(version)
            )));
        }
    }
    Ok(())
}

impl Inner {
    fn type_of(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
    }

    fn push_event(
        &mut self,
        kind: EventType,
        k: &ObjKey,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        self.history.push_back(Arc::new(Event {
            rv: self.rv,
            kind,
            group: k.0.clone(),
            plural: k.1.clone(),
            object,
            prev,
        }));
        while self.history.len() > self.history_cap {
            if let Some(e) = self.history.pop_front() {
                self.compacted = e.rv;
            }
        }
    }

    /// Store `obj` under `k` with a fresh resourceVersion.
    fn commit(&mut self, k: ObjKey, mut obj: Value, kind: EventType) -> Value {
        self.rv += 1;
        meta::meta_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let arc = Arc::new(obj.clone());
        let prev = self.objects.insert(k.clone(), arc.clone());
        self.push_event(kind, &k, arc, prev);
        if k.0 == "apiextensions.k8s.io" && k.1 == "customresourcedefinitions" {
            self.refresh_crd_types();
        }
        obj
    }

    /// Remove `k` from storage, emitting `Deleted` with the final state.
    fn remove(&mut self, k: &ObjKey) -> Option<Value> {
        let old = self.objects.remove(k)?;
        self.rv += 1;
        let mut obj = (*old).clone();
        meta::meta_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.push_event(EventType::Deleted, k, Arc::new(obj.clone()), Some(old));
        if k.0 == "apiextensions.k8s.io" && k.1 == "customresourcedefinitions" {
            if let Ok(rt) = resources::from_crd(&obj) {
                let doomed: Vec<ObjKey> = self
                    .objects
                    .keys()
                    .filter(|(g, p, _, _)| g == &rt.group && p == &rt.plural)
                    .cloned()
                    .collect();
                for d in doomed {
                    self.remove(&d);
                }
            }
            self.refresh_crd_types();
        }
        self.logs.remove(&(k.2.clone(), k.3.clone()));
        Some(obj)
    }

    fn refresh_crd_types(&mut self) {
        let mut types: Vec<Arc<ResourceType>> =
            resources::builtins().into_iter().map(Arc::new).collect();
        for (k, crd) in &self.objects {
            if k.0 == "apiextensions.k8s.io" && k.1 == "customresourcedefinitions" {
                if let Ok(rt) = resources::from_crd(crd) {
                    types.push(Arc::new(rt));
                }
            }
        }
        self.types = types;
    }

    fn create(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value> {
        check_identity(rt, version, &obj)?;
        let body_ns = meta::namespace(&obj).to_string();
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(Error::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(rt.api_version(version)));
            m.insert("kind".into(), Value::String(rt.kind.clone()));
        }
        let mut name = meta::name(&obj).to_string();
        if name.is_empty() {
            let prefix = meta::str_at(&obj, &["metadata", "generateName"])
                .unwrap_or("")
                .to_string();
            if prefix.is_empty() {
                return Err(Error::Invalid(format!(
                    "{} is invalid: metadata.name: Required value: name or generateName is required",
                    rt.kind
                )));
            }
            name = loop {
                let candidate = format!("{prefix}{}", meta::random_suffix());
                if !self.objects.contains_key(&key(rt, ns, &candidate)) {
                    break candidate;
                }
            };
        }
        validate_name(rt, &name)?;
        if rt.namespaced {
            if ns.is_empty() {
                return Err(Error::BadRequest(format!(
                    "{} is namespaced: a namespace is required",
                    rt.qualified()
                )));
            }
            match self.objects.get(&(String::new(), "namespaces".into(), String::new(), ns.to_string())) {
                None => return Err(Error::not_found("namespaces", ns)),
                Some(n) if meta::is_deleting(n) => {
                    return Err(Error::Forbidden(format!(
                        "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        rt.qualified()
                    )))
                }
                Some(_) => {}
            }
        }
        let k = key(rt, ns, &name);
        if self.objects.contains_key(&k) {
            return Err(Error::AlreadyExists(format!(
                "{} \"{name}\" already exists",
                rt.qualified()
            )));
        }
        let now = meta::now_rfc3339();
        {
            let m = meta::meta_mut(&mut obj);
            m.insert("name".into(), Value::String(name.clone()));
            if rt.namespaced {
                m.insert("namespace".into(), Value::String(ns.to_string()));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), Value::String(meta::new_uid()));
            m.insert("creationTimestamp".into(), Value::String(now.clone()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("selfLink");
            if rt.tracks_generation {
                m.insert("generation".into(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        self.apply_defaults(rt, &mut obj, &now)?;
        self.check_schema(rt, version, &mut obj)?;
        if dry_run {
            return Ok(obj);
        }
        let out = self.commit(k, obj, EventType::Added);
        if is_namespace(rt) {
            if let Some(sa) = self.type_of("", "serviceaccounts") {
                let default_sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
                let _ = self.create(&sa, "v1", &name, default_sa, false);
            }
        }
        Ok(out)
    }

    /// Default, prune and validate a custom resource against its CRD schema.
    fn check_schema(&self, rt: &ResourceType, version: &str, obj: &mut Value) -> Result<()> {
        let Some(crd_name) = &rt.crd else {
            return Ok(());
        };
        let crd_key = (
            "apiextensions.k8s.io".to_string(),
            "customresourcedefinitions".to_string(),
            String::new(),
            crd_name.clone(),
        );
        let Some(crd) = self.objects.get(&crd_key) else {
            return Ok(());
        };
        let schema = meta::get_path(crd, &["spec", "versions"])
            .and_then(Value::as_array)
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
            })
            .and_then(|v| meta::get_path(v, &["schema", "openAPIV3Schema"]));
        let Some(schema) = schema else { return Ok(()) };
        let errors = crate::schema::apply(obj, schema);
        match errors.as_slice() {
            [] => Ok(()),
            [one] => Err(Error::Invalid(format!(
                "{}.{} \"{}\" is invalid: {one}",
                rt.kind,
                rt.group,
                meta::name(obj)
            ))),
            many => Err(Error::Invalid(format!(
                "{}.{} \"{}\" is invalid: [{}]",
                rt.kind,
                rt.group,
                meta::name(obj),
                many.join(", ")
            ))),
        }
    }

    /// Server-side defaults and status resets on create.
    fn apply_defaults(&self, rt: &ResourceType, obj: &mut Value, now: &str) -> Result<()> {
        let Some(m) = obj.as_object_mut() else {
            return Ok(());
        };
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "namespaces") => {
                m.insert("spec".into(), json!({"finalizers": ["kubernetes"]}));
                m.insert("status".into(), json!({"phase": "Active"}));
            }
            ("", "pods") => {
                m.insert(
                    "status".into(),
                    json!({"phase": "Pending", "qosClass": "BestEffort"}),
                );
                let spec = m.entry("spec").or_insert_with(|| json!({}));
                if let Some(s) = spec.as_object_mut() {
                    s.entry("restartPolicy").or_insert(json!("Always"));
                    s.entry("terminationGracePeriodSeconds")
                        .or_insert(json!(30));
                    s.entry("dnsPolicy").or_insert(json!("ClusterFirst"));
                    s.entry("serviceAccountName").or_insert(json!("default"));
                }
            }
            ("", "secrets") => {
                if m.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    m.insert("type".into(), json!("Opaque"));
                }
            }
            ("", "services") => {
                m.insert("status".into(), json!({"loadBalancer": {}}));
                let spec = m.entry("spec").or_insert_with(|| json!({}));
                if let Some(s) = spec.as_object_mut() {
                    s.entry("type").or_insert(json!("ClusterIP"));
                    s.entry("sessionAffinity").or_insert(json!("None"));
                }
            }
            ("apps", "deployments") => {
                m.remove("status");
                let spec = m.entry("spec").or_insert_with(|| json!({}));
                if let Some(s) = spec.as_object_mut() {
                    s.entry("replicas").or_insert(json!(1));
                    s.entry("revisionHistoryLimit").or_insert(json!(10));
                    s.entry("progressDeadlineSeconds").or_insert(json!(600));
                    s.entry("strategy").or_insert(json!({
                        "type": "RollingUpdate",
                        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
                    }));
                }
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let crd = Value::Object(m.clone());
                let new_type = resources::from_crd(&crd)?;
                if self.types.iter().any(|t| {
                    t.group == new_type.group
                        && t.plural == new_type.plural
                        && t.crd.as_deref() != Some(meta::name(&crd))
                }) {
                    return Err(Error::Invalid(format!(
                        "CustomResourceDefinition \"{}\" is invalid: {} is already served",
                        meta::name(&crd),
                        new_type.qualified()
                    )));
                }
                m.insert("status".into(), crd_status(&crd, &new_type, now));
            }
            _ => {
                if rt.status {
                    m.remove("status");
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        part: Part,
        dry_run: bool,
    ) -> Result<Value> {
        check_identity(rt, version, &obj)?;
        let k = key(rt, ns, name);
        let cur = self
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| Error::not_found(&rt.qualified(), name))?;
        let body_name = meta::name(&obj);
        if !body_name.is_empty() && body_name != name {
            return Err(Error::BadRequest(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_ns = meta::namespace(&obj);
        if rt.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(Error::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        let rv = meta::resource_version(&obj);
        if !rv.is_empty() && rv != meta::resource_version(&cur) {
            return Err(Error::stale(&rt.qualified(), name));
        }
        if let Some(m) = obj.as_object_mut() {
            m.insert("apiVersion".into(), Value::String(rt.api_version(version)));
            m.insert("kind".into(), Value::String(rt.kind.clone()));
        }
        let mut next = match part {
            Part::Status => {
                let mut next = (*cur).clone();
                if let Some(m) = next.as_object_mut() {
                    match obj.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                next
            }
            Part::Main => {
                if rt.status {
                    if let Some(m) = obj.as_object_mut() {
                        match cur.get("status") {
                            Some(s) => m.insert("status".into(), s.clone()),
                            None => m.remove("status"),
                        };
                    }
                }
                // Immutable metadata comes from storage.
                let keep = [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                    "namespace",
                    "name",
                ];
                let cur_meta = cur
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let m = meta::meta_mut(&mut obj);
                for f in keep {
                    match cur_meta.get(f) {
                        Some(v) => m.insert(f.to_string(), v.clone()),
                        None => m.remove(f),
                    };
                }
                if is_namespace(rt) {
                    if let (Some(o), Some(spec)) = (obj.as_object_mut(), cur.get("spec")) {
                        o.insert("spec".into(), spec.clone());
                    }
                }
                obj
            }
        };
        if meta::is_deleting(&cur) {
            let before = meta::finalizers(&cur);
            if meta::finalizers(&next).iter().any(|f| !before.contains(f)) {
                return Err(Error::Invalid(format!(
                    "{} \"{name}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                    rt.kind
                )));
            }
        }
        self.check_schema(rt, version, &mut next)?;
        if rt.tracks_generation && spec_part(&next) != spec_part(&cur) {
            let g = cur
                .get("metadata")
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta::meta_mut(&mut next).insert("generation".into(), json!(g + 1));
        }
        if is_crd(rt) && part == Part::Main {
            let new_type = resources::from_crd(&next)?;
            let now = meta::now_rfc3339();
            let status = crd_status(&next, &new_type, &now);
            if let Some(m) = next.as_object_mut() {
                m.insert("status".into(), status);
            }
        }
        meta::meta_mut(&mut next).insert(
            "resourceVersion".into(),
            Value::String(meta::resource_version(&cur).to_string()),
        );
        if same_content(&next, &cur) || dry_run {
            return Ok(next);
        }
        if meta::is_deleting(&next) && meta::finalizers(&next).is_empty() && !is_namespace(rt) {
            self.objects.insert(k.clone(), Arc::new(next));
            return Ok(self.remove(&k).unwrap_or_default());
        }
        Ok(self.commit(k, next, EventType::Modified))
    }

    /// Delete by key with a propagation policy; returns the resulting state.
    fn delete_key(
        &mut self,
        k: &ObjKey,
        propagation: Propagation,
        grace: Option<i64>,
    ) -> Option<Value> {
        let cur = self.objects.get(k).cloned()?;
        if let Some(out) = self.graceful_pod_delete(k, &cur, grace) {
            return out;
        }
        let ns_object = k.0.is_empty() && k.1 == "namespaces";
        let mut fins = meta::finalizers(&cur);
        let spec_fins: Vec<String> = if ns_object {
            meta::get_path(&cur, &["spec", "finalizers"])
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        fins.extend(spec_fins.iter().cloned());
        match gc::delete_outcome(&fins, propagation, meta::is_deleting(&cur)) {
            DeleteOutcome::Remove => self.remove(k),
            DeleteOutcome::MarkDeleting { finalizers } => {
                let meta_fins: Vec<Value> = finalizers
                    .into_iter()
                    .filter(|f| !spec_fins.contains(f))
                    .map(Value::String)
                    .collect();
                let mut next = (*cur).clone();
                let already = meta::is_deleting(&cur);
                {
                    let m = meta::meta_mut(&mut next);
                    if !already {
                        m.insert(
                            "deletionTimestamp".into(),
                            Value::String(meta::now_rfc3339()),
                        );
                        m.insert("deletionGracePeriodSeconds".into(), json!(0));
                    }
                    if meta_fins.is_empty() {
                        m.remove("finalizers");
                    } else {
                        m.insert("finalizers".into(), Value::Array(meta_fins));
                    }
                }
                if ns_object {
                    if let Some(o) = next.as_object_mut() {
                        o.insert("status".into(), json!({"phase": "Terminating"}));
                    }
                }
                if same_content(&next, &cur) {
                    return Some(next);
                }
                Some(self.commit(k.clone(), next, EventType::Modified))
            }
        }
    }

    /// Graceful deletion of a pod a kubelet runs: `None` when the normal rules
    /// apply, else the delete's result (the pod marked, or left as it is
    /// while its grace period runs).
    fn graceful_pod_delete(
        &mut self,
        k: &ObjKey,
        cur: &Arc<Value>,
        grace: Option<i64>,
    ) -> Option<Option<Value>> {
        let is_pod = k.0.is_empty() && k.1 == "pods";
        let bound = meta::str_at(cur, &["spec", "nodeName"]).is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            meta::str_at(cur, &["status", "phase"]),
            Some("Succeeded" | "Failed")
        );
        if !self.graceful_pods || !is_pod || !bound || terminal || grace == Some(0) {
            return None;
        }
        if meta::is_deleting(cur) {
            return Some(Some((**cur).clone()));
        }
        let grace = grace
            .or_else(|| {
                meta::get_path(cur, &["spec", "terminationGracePeriodSeconds"])
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0);
        let mut next = (**cur).clone();
        let m = meta::meta_mut(&mut next);
        m.insert(
            "deletionTimestamp".into(),
            Value::String(meta::now_rfc3339()),
        );
        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
        Some(Some(self.commit(k.clone(), next, EventType::Modified)))
    }

    fn remove_finalizer(&mut self, k: &ObjKey, f: &str) {
        let Some(cur) = self.objects.get(k).cloned() else {
            return;
        };
        let mut next = (*cur).clone();
        let fins: Vec<Value> = meta::finalizers(&cur)
            .into_iter()
            .filter(|x| x != f)
            .map(Value::String)
            .collect();
        let empty = fins.is_empty();
        {
            let m = meta::meta_mut(&mut next);
            if empty {
                m.remove("finalizers");
            } else {
                m.insert("finalizers".into(), Value::Array(fins));
            }
        }
        if empty
            && meta::is_deleting(&next)
            && !(k.0.is_empty() && k.1 == "namespaces" && has_spec_finalizers(&next))
        {
            self.objects.insert(k.clone(), Arc::new(next));
            self.remove(k);
        } else if !same_content(&next, &cur) {
            self.commit(k.clone(), next, EventType::Modified);
        }
    }

    /// Run GC rounds until nothing is left to do (bounded).
    fn collect_garbage(&mut self) {
        for _ in 0..1000 {
            let nodes: Vec<gc::Node<ObjKey>> = self
                .objects
                .iter()
                .map(|(k, o)| {
                    let ns_object = k.0.is_empty() && k.1 == "namespaces";
                    let mut finalizers = meta::finalizers(o);
                    if ns_object && has_spec_finalizers(o) {
                        finalizers.push("kubernetes".into());
                    }
                    gc::Node {
                        key: k.clone(),
                        uid: meta::uid(o).to_string(),
                        namespace: k.2.clone(),
                        owners: meta::owner_refs(o),
                        deleting: meta::is_deleting(o),
                        finalizers,
                        namespace_name: ns_object.then(|| k.3.clone()),
                    }
                })
                .collect();
            let actions = gc::plan(&nodes);
            if actions.is_empty() {
                return;
            }
            for a in actions {
                match a {
                    gc::Action::Delete(k, p) => {
                        self.delete_key(&k, p, None);
                    }
                    gc::Action::RemoveOwnerRefs(k, uids) => {
                        if let Some(cur) = self.objects.get(&k).cloned() {
                            let mut next = (*cur).clone();
                            let m = meta::meta_mut(&mut next);
                            if let Some(Value::Array(refs)) = m.get_mut("ownerReferences") {
                                refs.retain(|r| {
                                    !r.get("uid")
                                        .and_then(Value::as_str)
                                        .is_some_and(|u| uids.iter().any(|x| x == u))
                                });
                                if refs.is_empty() {
                                    m.remove("ownerReferences");
                                }
                            }
                            self.commit(k, next, EventType::Modified);
                        }
                    }
                    gc::Action::RemoveFinalizer(k, f) => self.remove_finalizer(&k, f),
                    gc::Action::FinalizeNamespace(k) => {
                        if let Some(cur) = self.objects.get(&k).cloned() {
                            let mut next = (*cur).clone();
                            if let Some(spec) = next.get_mut("spec").and_then(Value::as_object_mut)
                            {
                                spec.remove("finalizers");
                            }
                            if meta::finalizers(&next).is_empty() {
                                self.objects.insert(k.clone(), Arc::new(next));
                                self.remove(&k);
                            } else if !same_content(&next, &cur) {
                                self.commit(k, next, EventType::Modified);
                            }
                        }
                    }
                }
            }
        }
        tracing::warn!("garbage collection did not settle after 1000 rounds");
    }
}

fn has_spec_finalizers(ns: &Value) -> bool {
    meta::get_path(ns, &["spec", "finalizers"])
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn crd_status(crd: &Value, rt: &ResourceType, now: &str) -> Value {
    let mut names: Map<String, Value> = crd
        .get("spec")
        .and_then(|s| s.get("names"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    names.insert("singular".into(), Value::String(rt.singular.clone()));
    names
        .entry("listKind")
        .or_insert_with(|| Value::String(format!("{}List", rt.kind)));
    json!({
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
        ],
        "acceptedNames": names,
        "storedVersions": [rt.preferred_version()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm_type(s: &Store) -> Arc<ResourceType> {
        s.find_type("", "v1", "configmaps").unwrap()
    }

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}})
    }

    #[test]
    fn resource_versions_are_global_and_increasing() {
        let s = Store::new(100);
        let t = cm_type(&s);
        let a = s.create(&t, "v1", "default", cm("a"), false).unwrap();
        let b = s.create(&t, "v1", "default", cm("b"), false).unwrap();
        let ra: u64 = meta::resource_version(&a).parse().unwrap();
        let rb: u64 = meta::resource_version(&b).parse().unwrap();
        assert!(rb > ra);
        assert_eq!(s.current_rv(), rb);
        assert!(!meta::uid(&a).is_empty());
        assert_ne!(meta::uid(&a), meta::uid(&b));
    }

    #[test]
    fn stale_update_conflicts() {
        let s = Store::new(100);
        let t = cm_type(&s);
        let a = s.create(&t, "v1", "default", cm("a"), false).unwrap();
        let mut first = a.clone();
        first["data"]["a"] = json!("2");
        let mut second = a.clone();
        second["data"]["a"] = json!("3");
        s.update(&t, "v1", "default", "a", first, Part::Main, false)
            .unwrap();
        let err = s
            .update(&t, "v1", "default", "a", second.clone(), Part::Main, false)
            .unwrap_err();
        assert_eq!(err.code(), 409);
        assert_eq!(err.reason(), "Conflict");
        // Without a resourceVersion the update is unconditional.
        meta::meta_mut(&mut second).remove("resourceVersion");
        let ok = s
            .update(&t, "v1", "default", "a", second, Part::Main, false)
            .unwrap();
        assert_eq!(ok["data"]["a"], "3");
    }

    #[test]
    fn no_op_update_keeps_resource_version() {
        let s = Store::new(100);
        let t = cm_type(&s);
        let a = s.create(&t, "v1", "default", cm("a"), false).unwrap();
        let again = s
            .update(&t, "v1", "default", "a", a.clone(), Part::Main, false)
            .unwrap();
        assert_eq!(meta::resource_version(&again), meta::resource_version(&a));
    }

    #[test]
    fn create_rules() {
        let s = Store::new(100);
        let t = cm_type(&s);
        s.create(&t, "v1", "default", cm("a"), false).unwrap();
        assert_eq!(
            s.create(&t, "v1", "default", cm("a"), false)
                .unwrap_err()
                .code(),
            409
        );
        assert_eq!(
            s.create(&t, "v1", "nope", cm("b"), false)
                .unwrap_err()
                .code(),
            404
        );
        assert_eq!(
            s.create(&t, "v1", "default", cm("Bad_Name"), false)
                .unwrap_err()
                .code(),
            422
        );
        let nameless = json!({"metadata": {}});
        assert_eq!(
            s.create(&t, "v1", "default", nameless, false)
                .unwrap_err()
                .code(),
            422
        );
        let generated = json!({"metadata": {"generateName": "gen-"}});
        let g = s.create(&t, "v1", "default", generated, false).unwrap();
        assert!(meta::name(&g).starts_with("gen-") && meta::name(&g).len() == 9);
        let wrong_kind = json!({"kind": "Secret", "metadata": {"name": "x"}});
        assert_eq!(
            s.create(&t, "v1", "default", wrong_kind, false)
                .unwrap_err()
                .code(),
            400
        );
    }

    #[test]
    fn generation_tracks_spec_only() {
        let s = Store::new(100);
        let t = s.find_type("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        let d = s.create(&t, "v1", "default", d, false).unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        let mut labelled = d.clone();
        labelled["metadata"]["labels"] = json!({"x": "y"});
        let d = s
            .update(&t, "v1", "default", "d", labelled, Part::Main, false)
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        let mut status = d.clone();
        status["status"] = json!({"replicas": 1});
        let d = s
            .update(&t, "v1", "default", "d", status, Part::Status, false)
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 1);
        assert_eq!(d["status"]["replicas"], 1);
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["status"] = json!({"replicas": 99});
        let d = s
            .update(&t, "v1", "default", "d", scaled, Part::Main, false)
            .unwrap();
        assert_eq!(d["metadata"]["generation"], 2);
        assert_eq!(d["status"]["replicas"], 1, "main writes ignore status");
    }

    #[test]
    fn watch_history_compacts_to_gone() {
        let s = Store::new(3);
        let t = cm_type(&s);
        let start = s.current_rv();
        for i in 0..5 {
            s.create(&t, "v1", "default", cm(&format!("c{i}")), false)
                .unwrap();
        }
        assert_eq!(s.events_after(start).unwrap_err().code(), 410);
        let (events, _) = s.events_after(s.current_rv() - 2).unwrap();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn finalizers_hold_deletion() {
        let s = Store::new(100);
        let t = cm_type(&s);
        let mut obj = cm("f");
        obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
        s.create(&t, "v1", "default", obj, false).unwrap();
        let d = s
            .delete(&t, "default", "f", &DeleteOptions::default())
            .unwrap();
        assert!(meta::is_deleting(&d));
        let mut added = d.clone();
        added["metadata"]["finalizers"] = json!(["example.com/hold", "more"]);
        assert_eq!(
            s.update(&t, "v1", "default", "f", added, Part::Main, false)
                .unwrap_err()
                .code(),
            422
        );
        let mut released = s.get(&t, "default", "f").unwrap();
        released["metadata"]["finalizers"] = json!([]);
        s.update(&t, "v1", "default", "f", released, Part::Main, false)
            .unwrap();
        assert_eq!(s.get(&t, "default", "f").unwrap_err().code(), 404);
    }

    #[test]
    fn namespace_deletion_removes_contents() {
        let s = Store::new(1000);
        let ns_t = s.find_type("", "v1", "namespaces").unwrap();
        let t = cm_type(&s);
        s.create(&ns_t, "v1", "", json!({"metadata": {"name": "tmp"}}), false)
            .unwrap();
        s.create(&t, "v1", "tmp", cm("x"), false).unwrap();
        s.delete(&ns_t, "", "tmp", &DeleteOptions::default())
            .unwrap();
        assert_eq!(s.get(&t, "tmp", "x").unwrap_err().code(), 404);
        assert_eq!(s.get(&ns_t, "", "tmp").unwrap_err().code(), 404);
    }

    #[test]
    fn owner_deletion_collects_dependents() {
        let s = Store::new(1000);
        let t = cm_type(&s);
        let owner = s.create(&t, "v1", "default", cm("owner"), false).unwrap();
        let mut dep = cm("dep");
        dep["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": meta::uid(&owner), "blockOwnerDeletion": true
        }]);
        s.create(&t, "v1", "default", dep, false).unwrap();
        let opts = DeleteOptions {
            propagation: Propagation::Foreground,
            ..Default::default()
        };
        s.delete(&t, "default", "owner", &opts).unwrap();
        assert_eq!(s.get(&t, "default", "dep").unwrap_err().code(), 404);
        assert_eq!(s.get(&t, "default", "owner").unwrap_err().code(), 404);
    }

    #[test]
    fn snapshot_round_trip() {
        let s = Store::new(100);
        let t = cm_type(&s);
        s.create(&t, "v1", "default", cm("kept"), false).unwrap();
        let snap = s.snapshot();
        let other = Store::new(100);
        other.restore(&snap).unwrap();
        assert_eq!(other.get(&t, "default", "kept").unwrap()["data"]["a"], "1");
        assert_eq!(other.current_rv(), s.current_rv());
        assert_eq!(other.events_after(1).unwrap_err().code(), 410);
        assert!(other.restore(&json!({"objects": []})).is_err());
    }

    #[test]
    fn crds_register_types() {
        let s = Store::new(1000);
        let crd_t = s
            .find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .unwrap();
        let crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        });
        let created = s.create(&crd_t, "v1", "", crd, false).unwrap();
        assert_eq!(created["status"]["conditions"][1]["type"], "Established");
        let w = s.find_type("example.com", "v1", "widgets").unwrap();
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}, "status": {"x": 1}});
        let o = s.create(&w, "v1", "default", obj, false).unwrap();
        assert!(o.get("status").is_none(), "status dropped on create");
        s.delete(&crd_t, "", "widgets.example.com", &DeleteOptions::default())
            .unwrap();
        assert!(s.find_type("example.com", "v1", "widgets").is_none());
        assert_eq!(s.list(&w, None).0.len(), 0);
    }
}
