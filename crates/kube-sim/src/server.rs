//! The HTTP edge: parse Kubernetes REST paths and query parameters, call the
//! store, and render results or `Status` errors.
//!
//! Routing is done by hand on path segments rather than with a router
//! table, because the API's shape (`/api/v1/namespaces/{ns}/{plural}/{name}/{sub}`,
//! the same for every group and for CRDs added at run time) is one rule,
//! not a list of routes. Protocol rules live in the store, selector and
//! patch modules; this module only translates.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::discovery;
use crate::error::{Error, Result};
use crate::gc::Propagation;
use crate::meta;
use crate::patch::PatchKind;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{DeleteOptions, EventType, Part, Store};

/// Shared state of the HTTP layer.
pub(crate) struct AppState {
    pub store: Arc<Store>,
    pub addr: SocketAddr,
    pub shutdown: watch::Receiver<bool>,
    pub bookmark_interval: Duration,
    pub requests: AtomicU64,
    /// The process kubelet, when pods run (logs and crash injection).
    pub kubelet: Option<Arc<crate::kubelet::Kubelet>>,
}

type Query = HashMap<String, String>;

fn parse_query(uri: &Uri) -> Query {
    uri.query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn error_response(e: &Error) -> Response {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &e.to_status())
}

fn not_served(path: &str) -> Error {
    Error::NotFound(format!(
        "the server could not find the requested resource (path {path})"
    ))
}

/// The single request handler.
pub(crate) async fn handle(
    state: Arc<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%method, %uri, "request");
    let started = std::time::Instant::now();
    let response = match route(&state, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code(), error = %e, "request failed");
            error_response(&e)
        }
    };
    // A watch answers at once and streams afterwards, so this is the time
    // to the response head for every request.
    let took = started.elapsed();
    if took > SLOW_REQUEST {
        tracing::warn!(%method, %uri, millis = took.as_millis() as u64, "slow request");
    }
    response
}

/// Requests slower than this are logged: clients' leader election renews
/// within seconds.
const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(500);

async fn route(
    state: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let path = uri.path();
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let types = || state.store.types();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match segs.as_slice() {
        ["version"] => ok(discovery::version()),
        ["healthz"] | ["readyz"] | ["livez"] => Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from("ok"))
            .unwrap_or_default()),
        ["api"] => ok(discovery::core_versions(&state.addr.to_string())),
        ["apis"] => ok(discovery::group_list(&types())),
        ["api", version] => discovery::resource_list(&types(), "", version)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(|| not_served(path)),
        ["apis", group] => discovery::group(&types(), group)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(|| not_served(path)),
        ["apis", group, version] => discovery::resource_list(&types(), group, version)
            .map(|v| json_response(StatusCode::OK, &v))
            .ok_or_else(|| not_served(path)),
        ["openapi", "v3"] => ok(discovery::openapi_v3_index(
            &types(),
            state.store.types().len() as u64,
        )),
        ["openapi", "v3", rest @ ..] => {
            discovery::openapi_v3_group_version(&types(), &rest.join("/"))
                .map(|v| json_response(StatusCode::OK, &v))
                .ok_or_else(|| not_served(path))
        }
        ["kube-sim", "v1", "namespaces", ns, "pods", name, "crash"] => {
            if *method != Method::POST {
                return Err(Error::MethodNotAllowed(format!(
                    "crash injection takes POST, not {method}"
                )));
            }
            let kubelet = state
                .kubelet
                .as_ref()
                .ok_or_else(|| Error::BadRequest("no kubelet runs pods in this kube-sim".into()))?;
            let q = parse_query(uri);
            ok(kubelet.crash(ns, name, q.get("container").map(String::as_str))?)
        }
        ["api", version, rest @ ..] => {
            resource(state, method, uri, headers, body, "", version, rest).await
        }
        ["apis", group, version, rest @ ..] => {
            resource(state, method, uri, headers, body, group, version, rest).await
        }
        _ => Err(not_served(path)),
    }
}

/// A parsed resource path.
struct Target<'a> {
    rt: Arc<ResourceType>,
    version: &'a str,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    sub: Option<&'a str>,
    watch_path: bool,
}

fn parse_target<'a>(
    store: &Store,
    path: &str,
    group: &str,
    version: &'a str,
    mut rest: &'a [&'a str],
) -> Result<Target<'a>> {
    let mut watch_path = false;
    if rest.first() == Some(&"watch") {
        watch_path = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.first() == Some(&"namespaces")
        && rest.len() >= 3
        && !(group.is_empty() && rest.len() == 3 && matches!(rest[2], "status" | "finalize"))
    {
        namespace = Some(rest[1]);
        rest = &rest[2..];
    }
    let (plural, name, sub) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(*n), None),
        [p, n, s] => (*p, Some(*n), Some(*s)),
        _ => return Err(not_served(path)),
    };
    let rt = store
        .find_type(group, version, plural)
        .ok_or_else(|| not_served(path))?;
    if rt.namespaced && name.is_some() && namespace.is_none() {
        return Err(not_served(path));
    }
    if !rt.namespaced && namespace.is_some() {
        return Err(not_served(path));
    }
    Ok(Target {
        rt,
        version,
        namespace,
        name,
        sub,
        watch_path,
    })
}

fn present(mut obj: Value, rt: &ResourceType, version: &str) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(rt.api_version(version)));
    }
    obj
}

fn parse_body(body: &[u8]) -> Result<Value> {
    if body.is_empty() {
        return Err(Error::BadRequest("the request body is empty".into()));
    }
    if body.starts_with(crate::protobuf::MAGIC) {
        return crate::protobuf::decode(body);
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("error decoding the request body: {e}")))
}

fn manager(q: &Query) -> &str {
    q.get("fieldManager").map(String::as_str).unwrap_or("")
}

fn dry_run(q: &Query) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    state: &Arc<AppState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response> {
    let t = parse_target(&state.store, uri.path(), group, version, rest)?;
    let q = parse_query(uri);
    let store = &state.store;
    let rt = t.rt.clone();
    let ns = t.namespace.unwrap_or("");
    let v = t.version;
    let ok = |code: StatusCode, obj: Value| Ok(json_response(code, &present(obj, &rt, v)));
    let not_allowed = || {
        Err(Error::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        )))
    };
    match (t.name, t.sub) {
        (None, None) => {
            let watching = t.watch_path || q.get("watch").is_some_and(|w| w == "1" || w == "true");
            match *method {
                Method::GET if watching => {
                    watch(state, &t, None, &q, table_mode(store, &t, headers, &q))
                }
                Method::GET => list(store, &t, &q, table_mode(store, &t, headers, &q)),
                Method::POST => {
                    if rt.namespaced && t.namespace.is_none() {
                        return Err(not_served(uri.path()));
                    }
                    let obj = parse_body(&body)?;
                    ok(
                        StatusCode::CREATED,
                        store.create(&rt, v, ns, obj, dry_run(&q))?,
                    )
                }
                Method::DELETE => delete_collection(store, &t, &q, &body),
                _ => not_allowed(),
            }
        }
        (Some(name), None) => match *method {
            Method::GET if t.watch_path => watch(
                state,
                &t,
                Some(name),
                &q,
                table_mode(store, &t, headers, &q),
            ),
            Method::GET => {
                let obj = present(store.get(&rt, ns, name)?, &rt, v);
                match table_mode(store, &t, headers, &q) {
                    Some(tm) => Ok(json_response(StatusCode::OK, &tm.render(&t, &[obj], None))),
                    None => Ok(json_response(StatusCode::OK, &obj)),
                }
            }
            Method::PUT => {
                let obj = parse_body(&body)?;
                ok(
                    StatusCode::OK,
                    store.update(&rt, v, ns, name, obj, Part::Main, dry_run(&q))?,
                )
            }
            Method::PATCH => {
                let kind = patch_kind(headers, &q)?;
                let created = kind == PatchKind::Apply && store.get(&rt, ns, name).is_err();
                let out = store.patch(
                    &rt,
                    v,
                    ns,
                    name,
                    kind,
                    &body,
                    Part::Main,
                    manager(&q),
                    dry_run(&q),
                )?;
                ok(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    out,
                )
            }
            Method::DELETE => {
                let opts = delete_options(&q, &body)?;
                ok(StatusCode::OK, store.delete(&rt, ns, name, &opts)?)
            }
            _ => not_allowed(),
        },
        (Some(name), Some("status")) if rt.status => match *method {
            Method::GET => ok(StatusCode::OK, store.get(&rt, ns, name)?),
            Method::PUT => {
                let obj = parse_body(&body)?;
                ok(
                    StatusCode::OK,
                    store.update(&rt, v, ns, name, obj, Part::Status, dry_run(&q))?,
                )
            }
            Method::PATCH => {
                let kind = patch_kind(headers, &q)?;
                ok(
                    StatusCode::OK,
                    store.patch(
                        &rt,
                        v,
                        ns,
                        name,
                        kind,
                        &body,
                        Part::Status,
                        manager(&q),
                        dry_run(&q),
                    )?,
                )
            }
            _ => not_allowed(),
        },
        (Some(name), Some("scale")) if rt.scale.is_some() => {
            scale(store, &t, name, method, headers, &q, &body)
        }
        (Some(name), Some("log")) if rt.log => match *method {
            Method::GET => pod_log(state, ns, name, &q),
            _ => not_allowed(),
        },
        _ => Err(not_served(uri.path())),
    }
}

fn patch_kind(headers: &HeaderMap, q: &Query) -> Result<PatchKind> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let kind = PatchKind::from_content_type(ct)?;
    if kind == PatchKind::Apply && q.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return Err(Error::Invalid(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch".into(),
        ));
    }
    Ok(kind)
}

fn selectors(q: &Query) -> Result<(LabelSelector, FieldSelector)> {
    let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))?;
    Ok((labels, fields))
}

/// How to render Tables for one request, when the client asked for them.
struct TableMode {
    crd: Option<Value>,
    include_object: bool,
}

impl TableMode {
    fn render(&self, t: &Target<'_>, objects: &[Value], rv: Option<u64>) -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        crate::table::table(
            &t.rt,
            self.crd.as_ref(),
            t.version,
            objects,
            rv,
            self.include_object,
            now,
        )
    }
}

fn table_mode(store: &Store, t: &Target<'_>, headers: &HeaderMap, q: &Query) -> Option<TableMode> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !crate::table::wants_table(accept) {
        return None;
    }
    let crd = t.rt.crd.as_deref().and_then(|name| {
        let crd_t = store.find_type("apiextensions.k8s.io", "v1", "customresourcedefinitions")?;
        store.get(&crd_t, "", name).ok()
    });
    Some(TableMode {
        crd,
        include_object: q.get("includeObject").is_none_or(|v| v != "None"),
    })
}

fn list(store: &Store, t: &Target<'_>, q: &Query, tm: Option<TableMode>) -> Result<Response> {
    let (labels, fields) = selectors(q)?;
    let (items, rv) = store.list(&t.rt, t.namespace);
    let items: Vec<Value> = items
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
        .map(|o| present((**o).clone(), &t.rt, t.version))
        .collect();
    if let Some(tm) = tm {
        return Ok(json_response(
            StatusCode::OK,
            &tm.render(t, &items, Some(rv)),
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": t.rt.api_version(t.version),
            "kind": format!("{}List", t.rt.kind),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions> {
    let body: Value = if body.is_empty() {
        Value::Null
    } else if body.starts_with(crate::protobuf::MAGIC) {
        crate::protobuf::decode(body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(format!("error decoding DeleteOptions: {e}")))?
    };
    let policy = q
        .get("propagationPolicy")
        .map(String::as_str)
        .or_else(|| body.get("propagationPolicy").and_then(Value::as_str));
    let orphan = body.get("orphanDependents").and_then(Value::as_bool) == Some(true)
        || q.get("orphanDependents").is_some_and(|v| v == "true");
    let propagation = match policy {
        Some(p) => Propagation::parse(p)
            .ok_or_else(|| Error::BadRequest(format!("unsupported propagationPolicy \"{p}\"")))?,
        None if orphan => Propagation::Orphan,
        None => Propagation::Background,
    };
    let pre = body.get("preconditions");
    let pre_str = |k: &str| {
        pre.and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let dry = q.get("dryRun").is_some_and(|v| v == "All")
        || body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    let grace_period = match q.get("gracePeriodSeconds") {
        Some(g) => Some(g.parse::<i64>().map_err(|_| {
            Error::BadRequest(format!(
                "gracePeriodSeconds must be an integer, got \"{g}\""
            ))
        })?),
        None => body.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    Ok(DeleteOptions {
        propagation,
        uid: pre_str("uid"),
        resource_version: pre_str("resourceVersion"),
        dry_run: dry,
        grace_period,
    })
}

fn delete_collection(store: &Store, t: &Target<'_>, q: &Query, body: &[u8]) -> Result<Response> {
    let (labels, fields) = selectors(q)?;
    let opts = delete_options(q, body)?;
    let (items, rv) = store.list(&t.rt, t.namespace);
    let mut out = Vec::new();
    for o in items
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        match store.delete(&t.rt, meta::namespace(o), meta::name(o), &opts) {
            Ok(v) => out.push(present(v, &t.rt, t.version)),
            Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": t.rt.api_version(t.version),
            "kind": format!("{}List", t.rt.kind),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": out,
        }),
    ))
}

fn pod_log(state: &Arc<AppState>, ns: &str, name: &str, q: &Query) -> Result<Response> {
    let store = &state.store;
    let pods = store
        .find_type("", "v1", "pods")
        .ok_or_else(|| Error::Internal("pods are not served".into()))?;
    store.get(&pods, ns, name)?;
    let container = q.get("container").map(String::as_str);
    let previous = q.get("previous").is_some_and(|v| v == "true");
    let follow = q.get("follow").is_some_and(|v| v == "true");
    let from_kubelet = match &state.kubelet {
        Some(k) => k.logs(ns, name, container, previous)?,
        None => None,
    };
    let text = match from_kubelet {
        Some(t) => t,
        None => store.pod_log(ns, name).unwrap_or_default(),
    };
    let text = match q.get("tailLines").map(|n| n.parse::<usize>()) {
        Some(Ok(n)) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut t = lines[start..].join("\n");
            if !t.is_empty() {
                t.push('\n');
            }
            t
        }
        Some(Err(_)) => return Err(Error::BadRequest("tailLines must be an integer".into())),
        None => text,
    };
    if follow && !previous {
        if let Some((path, worker)) = match &state.kubelet {
            Some(k) => k.log_file(ns, name, container)?,
            None => None,
        } {
            let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let (tx, rx) = mpsc::channel(16);
            let mut shutdown = state.shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = follow_file(path, offset, worker, tx) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            });
            let mut resp = stream_response(vec![Bytes::from(text)], Some(rx));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain"),
            );
            return Ok(resp);
        }
    }
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text))
        .unwrap_or_default())
}

/// Stream what is appended to a container log until the container's
/// instance ends (its log is rotated) or the pod stops.
async fn follow_file(
    path: std::path::PathBuf,
    mut offset: u64,
    worker: Arc<crate::kubelet::PodWorker>,
    tx: mpsc::Sender<Bytes>,
) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(&path) else {
        return;
    };
    loop {
        let mut buf = Vec::new();
        if file.seek(SeekFrom::Start(offset)).is_ok()
            && file.read_to_end(&mut buf).is_ok()
            && !buf.is_empty()
        {
            offset += buf.len() as u64;
            if tx.send(Bytes::from(buf)).await.is_err() {
                return;
            }
        }
        let rotated = match (std::fs::metadata(&path), file.metadata()) {
            (Ok(a), Ok(b)) => {
                use std::os::unix::fs::MetadataExt;
                a.ino() != b.ino()
            }
            _ => true,
        };
        if rotated || !worker.active() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Read a dotted path like `.spec.replicas`.
fn get_dotted<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    meta::get_path(obj, &parts)
}

fn set_dotted(obj: &mut Value, path: &str, v: Value) {
    let parts: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    let mut cur = obj;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let Some(m) = cur.as_object_mut() else { return };
        if i + 1 == parts.len() {
            m.insert(p.to_string(), v);
            return;
        }
        cur = m.entry(p.to_string()).or_insert_with(|| json!({}));
    }
}

fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let Some(spec) = &rt.scale else {
        return Value::Null;
    };
    let selector = if rt.group == "apps" {
        obj.get("spec")
            .and_then(|s| s.get("selector"))
            .map(crate::deployment::selector_string)
    } else {
        spec.label_selector_path
            .as_deref()
            .and_then(|p| get_dotted(obj, p))
            .and_then(Value::as_str)
            .map(String::from)
    };
    let mut status = json!({
        "replicas": get_dotted(obj, &spec.status_replicas_path).cloned().unwrap_or(json!(0)),
    });
    if let Some(s) = selector {
        status["selector"] = json!(s);
    }
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": get_dotted(obj, &spec.spec_replicas_path).cloned().unwrap_or(json!(0))},
        "status": status,
    })
}

fn scale(
    store: &Store,
    t: &Target<'_>,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
    q: &Query,
    body: &[u8],
) -> Result<Response> {
    let rt = &t.rt;
    let ns = t.namespace.unwrap_or("");
    let Some(spec) = &rt.scale else {
        return Err(not_served("scale"));
    };
    if *method == Method::GET {
        return Ok(json_response(
            StatusCode::OK,
            &scale_of(rt, &store.get(rt, ns, name)?),
        ));
    }
    if *method != Method::PUT && *method != Method::PATCH {
        return Err(Error::MethodNotAllowed(
            "scale supports get, update and patch".into(),
        ));
    }
    let kind = if *method == Method::PATCH {
        Some(patch_kind(headers, q)?)
    } else {
        None
    };
    let patch_doc: Value = match kind {
        Some(PatchKind::Apply) => crate::patch::parse_apply_body(body)?,
        _ => parse_body(body)?,
    };
    // Retry internal races; a client-supplied resourceVersion still conflicts.
    for _ in 0..10 {
        let obj = store.get(rt, ns, name)?;
        let current = scale_of(rt, &obj);
        let desired = match kind {
            None => patch_doc.clone(),
            Some(PatchKind::Merge) => crate::patch::merge_patch(&current, &patch_doc),
            Some(PatchKind::Json) => crate::patch::json_patch(&current, &patch_doc)?,
            Some(PatchKind::Strategic) | Some(PatchKind::Apply) => {
                crate::patch::strategic_merge(&current, &patch_doc)?
            }
        };
        let client_rv = meta::resource_version(&desired).to_string();
        if !client_rv.is_empty() && client_rv != meta::resource_version(&obj) {
            return Err(Error::stale(&rt.qualified(), name));
        }
        let replicas = desired
            .get("spec")
            .and_then(|s| s.get("replicas"))
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                Error::Invalid("Scale is invalid: spec.replicas: Required value".into())
            })?;
        if replicas < 0 {
            return Err(Error::Invalid(
                "Scale is invalid: spec.replicas: Invalid value: must be greater than or equal to 0".into(),
            ));
        }
        let mut next = obj.clone();
        set_dotted(&mut next, &spec.spec_replicas_path, json!(replicas));
        match store.update(rt, t.version, ns, name, next, Part::Main, dry_run(q)) {
            Ok(updated) => return Ok(json_response(StatusCode::OK, &scale_of(rt, &updated))),
            Err(Error::Conflict(_)) if client_rv.is_empty() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::stale(&rt.qualified(), name))
}

fn watch_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(rt: &ResourceType, version: &str, rv: u64, initial_end: bool) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": rt.kind, "apiVersion": rt.api_version(version), "metadata": m})
}

fn watch(
    state: &Arc<AppState>,
    t: &Target<'_>,
    name: Option<&str>,
    q: &Query,
    tm: Option<TableMode>,
) -> Result<Response> {
    let render = {
        let rt = t.rt.clone();
        let version = t.version.to_string();
        move |obj: Value| -> Value {
            match &tm {
                Some(tm) => {
                    let target = Target {
                        rt: rt.clone(),
                        version: &version,
                        namespace: None,
                        name: None,
                        sub: None,
                        watch_path: false,
                    };
                    tm.render(&target, &[obj], None)
                }
                None => obj,
            }
        }
    };
    let (labels, fields) = selectors(q)?;
    let rt = t.rt.clone();
    let version = t.version.to_string();
    let ns = t.namespace.map(String::from);
    let name = name.map(String::from);
    let bookmarks = q
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true" || v == "1");
    let send_initial = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = match q.get("timeoutSeconds") {
        Some(s) => Some(Duration::from_secs(s.parse::<u64>().map_err(|_| {
            Error::BadRequest(format!("invalid timeoutSeconds \"{s}\""))
        })?)),
        None => None,
    };
    let rv_param = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let store = state.store.clone();
    let in_scope = {
        let rt = rt.clone();
        let ns = ns.clone();
        let name = name.clone();
        move |o: &Value| -> bool {
            (ns.is_none() || !rt.namespaced || ns.as_deref() == Some(meta::namespace(o)))
                && name.as_deref().is_none_or(|n| n == meta::name(o))
                && labels.matches(o)
                && fields.matches(o)
        }
    };
    let mut first: Vec<Bytes> = Vec::new();
    let start_rv = if rv_param.is_empty() || rv_param == "0" || send_initial {
        let (items, rv) = store.list(&rt, ns.as_deref());
        for o in items.iter().filter(|o| in_scope(o)) {
            first.push(watch_line(
                "ADDED",
                &render(present((**o).clone(), &rt, &version)),
            ));
        }
        if send_initial && bookmarks {
            first.push(watch_line("BOOKMARK", &bookmark(&rt, &version, rv, true)));
        }
        rv
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| Error::BadRequest(format!("invalid resource version \"{rv_param}\"")))?;
        if let Err(e) = store.events_after(rv) {
            first.push(watch_line("ERROR", &e.to_status()));
            return Ok(stream_response(first, None));
        }
        rv
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut shutdown = state.shutdown.clone();
    let interval = state.bookmark_interval;
    tokio::spawn(async move {
        let mut notify = store.subscribe();
        let mut last = start_rv;
        let deadline = timeout.and_then(|d| tokio::time::Instant::now().checked_add(d));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            match store.events_after(last) {
                Ok((events, current)) => {
                    for ev in events {
                        if ev.group != rt.group || ev.plural != rt.plural {
                            continue;
                        }
                        let now_in = in_scope(&ev.object);
                        let was_in = ev.prev.as_deref().is_some_and(&in_scope);
                        let kind = match ev.kind {
                            EventType::Added if now_in => "ADDED",
                            EventType::Deleted if was_in || now_in => "DELETED",
                            EventType::Modified if now_in && was_in => "MODIFIED",
                            EventType::Modified if now_in => "ADDED",
                            EventType::Modified if was_in => "DELETED",
                            _ => continue,
                        };
                        let obj = render(present((*ev.object).clone(), &rt, &version));
                        if tx.send(watch_line(kind, &obj)).await.is_err() {
                            return;
                        }
                    }
                    last = current;
                }
                Err(e) => {
                    let _ = tx.send(watch_line("ERROR", &e.to_status())).await;
                    return;
                }
            }
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = notify.changed() => if changed.is_err() { return },
                _ = sleep => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(watch_line("BOOKMARK", &bookmark(&rt, &version, last, false))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(stream_response(first, Some(rx)))
}

fn stream_response(first: Vec<Bytes>, rx: Option<mpsc::Receiver<Bytes>>) -> Response {
    let head = futures_util::stream::iter(first.into_iter().map(Ok::<Bytes, Infallible>));
    let tail = futures_util::stream::unfold(rx, |rx| async move {
        let mut rx = rx?;
        let b = rx.recv().await?;
        Some((Ok::<Bytes, Infallible>(b), Some(rx)))
    });
    use futures_util::StreamExt;
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(head.chain(tail)))
        .unwrap_or_default()
}
