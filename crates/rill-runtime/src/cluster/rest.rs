//! The JobManager's HTTP face: Flink's REST API, `/metrics` and the
//! dashboard, all on one port (`rest.port`, 8081 by default).
//!
//! Paths and JSON field names follow Flink's REST API wherever Flink has the
//! same resource, so `curl` habits, the Flink Kubernetes operator's status
//! polling and other Flink tooling keep working; every path is also served
//! under `/v1`, as Flink does. Where Rill differs (jobs are catalogue entries
//! submitted with `POST /jobs`; `GET /jobs/:id/history` keeps a throughput
//! history) the response says so by its own shape. Errors use Flink's
//! `{"errors": ["message"]}` body with a meaningful status, for unknown
//! paths and wrong methods too.
//!
//! Everything the API shows or does goes through the
//! [`Dispatcher`](super::dispatch::Dispatcher) trait; dispatcher calls run on
//! the blocking pool, so a dispatcher may take locks or wait on its job
//! masters without stalling other requests.
//!
//! # Threading
//!
//! The JobManager is not async, so [`RestServer::start`] binds the socket
//! on the calling thread (a bind error is returned at once), then runs the
//! server and the history sampler on a Tokio runtime of its own, on a
//! thread of its own. [`RestServer::shutdown`] stops accepting, lets
//! requests in flight finish (bounded wait) and joins that thread; dropping
//! the handle does the same. The handle can be used from async code too,
//! but `shutdown` blocks for up to a few seconds.
//!
//! | method and path | answer |
//! | --- | --- |
//! | `GET /overview` | [`ClusterOverview`] plus `flink-commit` |
//! | `GET /config` | dashboard configuration (Flink's shape) |
//! | `GET /jobmanager/config` | `[{"key", "value"}]` |
//! | `GET /jobs` | `{"jobs": [{"id", "status"}]}` |
//! | `GET /jobs/overview` | `{"jobs": [JobSummary]}` |
//! | `POST /jobs` | [`SubmitRequest`] → 202 `{"jobid", "jobUrl"}` |
//! | `GET /jobs/:id` | [`JobDetails`] |
//! | `PATCH /jobs/:id[?mode=cancel]` | 202 `{}` |
//! | `GET /jobs/:id/checkpoints` | [`CheckpointHistory`] |
//! | `POST /jobs/:id/savepoints` | 202 `{"request-id"}` |
//! | `GET /jobs/:id/savepoints/:triggerid` | Flink's asynchronous-operation result |
//! | `POST /jobs/:id/stop` | stop with savepoint → 202 `{"request-id"}` |
//! | `GET /jobs/:id/history` | [`JobHistory`](super::history::JobHistory) (Rill) |
//! | `GET /taskmanagers` | `{"taskmanagers": [TaskManagerInfo]}` |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /` | the dashboard |

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use super::dispatch::{
    CheckpointHistory, ClusterOverview, DispatchError, Dispatcher, JobDetails, JobStatus,
    SavepointStatus, SubmitRequest,
};
use super::history::{self, History};
use super::metrics::{metrics_response, ClusterMetrics};
use crate::RuntimeError;

/// Reported as `flink-revision` / `flink-commit`.
pub const REVISION: &str = concat!("rill-", env!("CARGO_PKG_VERSION"));

/// How the REST server behaves; [`RestOptions::default`] matches Flink's
/// defaults where Flink has the option.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// How often the dashboard polls (`web.refresh-interval`, 3 s).
    pub refresh_interval: Duration,
    /// Time between two history samples (1 s).
    pub sample_interval: Duration,
    /// Points kept per job (600).
    pub history_capacity: usize,
    /// Largest request body accepted (`rest.server.max-content-length`,
    /// 100 MiB in Flink; 1 MiB here, since no jars are uploaded).
    pub max_body_bytes: usize,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            refresh_interval: Duration::from_secs(3),
            sample_interval: history::DEFAULT_INTERVAL,
            history_capacity: history::DEFAULT_CAPACITY,
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// A task run on the server's runtime for as long as the server runs.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// An axum router served from a thread with its own Tokio runtime.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` now, then serves `app` (and runs `background`) on a
    /// thread named `name` until [`HttpServer::shutdown`].
    pub fn start(
        addr: SocketAddr,
        name: &str,
        app: Router,
        background: Vec<BackgroundTask>,
    ) -> Result<Self, RuntimeError> {
        let listener = std::net::TcpListener::bind(addr).map_err(|source| RuntimeError::Io {
            context: format!("cannot bind {addr}"),
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| RuntimeError::Io {
            context: format!("cannot bind {addr}"),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| RuntimeError::Io {
                context: format!("cannot bind {addr}"),
                source,
            })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(16)
            .thread_name(format!("{name}-worker"))
            .enable_all()
            .build()
            .map_err(|source| RuntimeError::Io {
                context: "cannot start the HTTP server's runtime".into(),
                source,
            })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(serve(listener, app, background, stopped));
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(RuntimeError::Spawn)?;
        tracing::info!(address = %bound, server = name, "HTTP server listening");
        Ok(HttpServer {
            addr: bound,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address actually bound (the port is chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections, waits (up to 5 s) for requests in
    /// flight, and joins the server thread.
    pub fn shutdown(mut self) -> Result<(), RuntimeError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), RuntimeError> {
        if let Some(stop) = self.stop.take() {
            // The receiver is gone only if the server already ended.
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| RuntimeError::Cluster("the HTTP server's thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop_and_join() {
            tracing::warn!(%error, "HTTP server did not stop cleanly");
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    app: Router,
    background: Vec<BackgroundTask>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot register the HTTP listener");
            return;
        }
    };
    for task in background {
        tokio::spawn(task);
    }
    let (graceful, graceful_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = graceful_rx.await;
            })
            .into_future(),
    );
    // A dropped handle stops the server as well as an explicit shutdown.
    let _ = stopped.await;
    let _ = graceful.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP server failed"),
        Ok(Err(error)) => tracing::warn!(%error, "HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP server: requests still running at shutdown were dropped"),
    }
}

/// The JobManager's REST server: API, `/metrics`, dashboard, and the
/// history sampler.
#[derive(Debug)]
pub struct RestServer {
    http: HttpServer,
    history: Arc<History>,
}

impl RestServer {
    /// Binds `addr` (the JobManager passes `rest.bind-address:rest.port`)
    /// and serves until [`RestServer::shutdown`]. Safe to call from
    /// non-async code.
    pub fn start(
        addr: SocketAddr,
        dispatcher: Arc<dyn Dispatcher>,
        metrics: Arc<ClusterMetrics>,
        options: RestOptions,
    ) -> Result<Self, RuntimeError> {
        let history = Arc::new(History::new(
            options.history_capacity,
            options.sample_interval,
        ));
        let app = router(
            Arc::clone(&dispatcher),
            metrics,
            Arc::clone(&history),
            options,
        );
        let sampler: BackgroundTask =
            Box::pin(history::run_sampler(Arc::clone(&history), dispatcher));
        let http = HttpServer::start(addr, "rill-rest", app, vec![sampler])?;
        Ok(RestServer { http, history })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The sampled history (also served at `GET /jobs/:id/history`).
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    pub fn shutdown(self) -> Result<(), RuntimeError> {
        self.http.shutdown()
    }
}

#[derive(Clone)]
struct AppState {
    dispatcher: Arc<dyn Dispatcher>,
    metrics: Arc<ClusterMetrics>,
    history: Arc<History>,
    options: RestOptions,
}

/// The whole HTTP surface as a router, for embedding or testing without a
/// server thread. `history` is only read; sampling it is the caller's
/// business ([`history::run_sampler`]).
pub fn router(
    dispatcher: Arc<dyn Dispatcher>,
    metrics: Arc<ClusterMetrics>,
    history: Arc<History>,
    options: RestOptions,
) -> Router {
    let max_body = options.max_body_bytes;
    let state = AppState {
        dispatcher,
        metrics,
        history,
        options,
    };
    let api: Router<AppState> = Router::new()
        .route("/overview", get(overview))
        .route("/config", get(dashboard_config))
        .route("/jobmanager/config", get(jobmanager_config))
        .route("/jobs", get(jobs).post(submit))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job).patch(cancel))
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{trigger}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop_with_savepoint))
        .route("/jobs/{id}/history", get(job_history))
        .route("/taskmanagers", get(taskmanagers))
        .route("/metrics", get(self::metrics));
    Router::new()
        .merge(api.clone())
        .nest("/v1", api)
        .route("/", get(dashboard_index))
        .route("/index.html", get(dashboard_index))
        .route("/assets/app.js", get(dashboard_js))
        .route("/assets/app.css", get(dashboard_css))
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

// ---------------------------------------------------------------------------
// Errors

/// A refused request, answered as Flink does: `{"errors": [message]}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<DispatchError> for ApiError {
    fn from(error: DispatchError) -> Self {
        let status = match &error {
            DispatchError::NotFound(_) => StatusCode::NOT_FOUND,
            DispatchError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DispatchError::Conflict(_) => StatusCode::CONFLICT,
            DispatchError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &json!({ "errors": [self.message] }))
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json!({ "errors": [format!("cannot encode the response: {error}")] }).to_string(),
        )
            .into_response(),
    }
}

fn ok<T: Serialize + ?Sized>(value: &T) -> ApiResult {
    Ok(json_response(StatusCode::OK, value))
}

/// Turns axum's plain-text rejections (bad path parameters, body too large,
/// wrong method) into Flink's JSON error body, keeping their status and
/// headers.
async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => format!("Method {method} not allowed on {path}"),
        _ if !text.is_empty() => text,
        _ => status
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_owned(),
    };
    let body = json!({ "errors": [message] }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("Not found: {}", request.uri().path()))
}

// ---------------------------------------------------------------------------
// Helpers

impl AppState {
    /// Runs a dispatcher call on the blocking pool; a panicking dispatcher
    /// answers 500 instead of taking the server down.
    async fn ask<T, F>(&self, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Dispatcher) -> T + Send + 'static,
    {
        let dispatcher = Arc::clone(&self.dispatcher);
        tokio::task::spawn_blocking(move || call(&*dispatcher))
            .await
            .map_err(|error| {
                tracing::error!(%error, "dispatcher call failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the JobManager failed to answer the request",
                )
            })
    }

    async fn job_or_404(&self, id: &str) -> Result<JobDetails, ApiError> {
        let lookup = id.to_owned();
        self.ask(move |d| d.job(&lookup))
            .await?
            .ok_or_else(|| job_not_found(id))
    }

    /// A job that can still take a request (savepoint, cancel, stop).
    async fn live_job(&self, id: &str) -> Result<JobDetails, ApiError> {
        let job = self.job_or_404(id).await?;
        if job.state.is_terminal() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("Job {id} is already in terminal state {:?}", job.state),
            ));
        }
        Ok(job)
    }
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Job {id} not found"))
}

/// Parses a JSON body; `allow_empty` lets a missing body mean all defaults.
fn parse_body<T: DeserializeOwned + Default>(
    body: &[u8],
    allow_empty: bool,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if allow_empty {
            Ok(T::default())
        } else {
            Err(ApiError::bad_request("Request body is empty"))
        };
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("Request body is not valid: {error}")))
}

fn is_job_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// ---------------------------------------------------------------------------
// Cluster

async fn overview(State(state): State<AppState>) -> ApiResult {
    let overview: ClusterOverview = state.ask(|d| d.overview()).await?;
    let mut value = serde_json::to_value(&overview)
        .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.insert("flink-commit".to_owned(), json!(REVISION));
    }
    ok(&value)
}

async fn dashboard_config(State(state): State<AppState>) -> ApiResult {
    let version = state.ask(|d| d.overview().flink_version).await?;
    ok(&json!({
        "refresh-interval": u64::try_from(state.options.refresh_interval.as_millis()).unwrap_or(u64::MAX),
        // Times are sent as epoch milliseconds; the dashboard shows them in
        // the browser's zone, so the server states UTC.
        "timezone-name": "UTC",
        "timezone-offset": 0,
        "flink-version": version,
        "flink-revision": REVISION,
        "features": {
            "web-submit": false,
            "web-cancel": true,
            "web-rescale": false,
            "web-history": false,
        },
    }))
}

#[derive(Serialize)]
struct ConfigEntry {
    key: String,
    value: String,
}

async fn jobmanager_config(State(state): State<AppState>) -> ApiResult {
    let config = state.ask(|d| d.config()).await?;
    let entries: Vec<ConfigEntry> = config
        .into_iter()
        .map(|(key, value)| ConfigEntry { key, value })
        .collect();
    ok(&entries)
}

async fn taskmanagers(State(state): State<AppState>) -> ApiResult {
    let taskmanagers = state.ask(|d| d.taskmanagers()).await?;
    ok(&json!({ "taskmanagers": taskmanagers }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    metrics_response(&state.metrics)
}

// ---------------------------------------------------------------------------
// Jobs

#[derive(Serialize)]
struct JobIdAndStatus {
    id: String,
    status: JobStatus,
}

async fn jobs(State(state): State<AppState>) -> ApiResult {
    let jobs: Vec<JobIdAndStatus> = state
        .ask(|d| d.jobs())
        .await?
        .into_iter()
        .map(|job| JobIdAndStatus {
            id: job.jid,
            status: job.state,
        })
        .collect();
    ok(&json!({ "jobs": jobs }))
}

async fn jobs_overview(State(state): State<AppState>) -> ApiResult {
    let jobs = state.ask(|d| d.jobs()).await?;
    ok(&json!({ "jobs": jobs }))
}

async fn job(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let job = state.job_or_404(&id).await?;
    ok(&job)
}

async fn submit(State(state): State<AppState>, body: Bytes) -> ApiResult {
    let request: SubmitRequest = parse_body(&body, false)?;
    if request.entry.trim().is_empty() {
        return Err(ApiError::bad_request("entry must name a catalogue entry"));
    }
    if request.parallelism == Some(0) {
        return Err(ApiError::bad_request("parallelism must be at least 1"));
    }
    if let Some(job_id) = &request.job_id {
        if !is_job_id(job_id) {
            return Err(ApiError::bad_request(format!(
                "jobId must be 32 hexadecimal digits, got '{job_id}'"
            )));
        }
    }
    let jobid = state.ask(move |d| d.submit(request)).await??;
    let url = format!("/jobs/{jobid}");
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "jobid": jobid, "jobUrl": url }),
    ))
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult {
    let mode = query
        .as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(key, _)| key == "mode")
                .map(|(_, value)| value.into_owned())
        })
        .unwrap_or_default();
    match mode.as_deref() {
        None | Some("cancel") => {}
        Some("stop") => {
            return Err(ApiError::bad_request(
                "mode=stop is not supported: stop a job with a savepoint through \
                 POST /jobs/:jobid/stop (or POST /jobs/:jobid/savepoints with \"cancel-job\": true)",
            ))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown termination mode '{other}' (expected 'cancel')"
            )))
        }
    }
    state.live_job(&id).await?;
    state.ask(move |d| d.cancel(&id)).await??;
    Ok(json_response(StatusCode::ACCEPTED, &json!({})))
}

async fn checkpoints(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    let lookup = id.clone();
    let history: Option<CheckpointHistory> = state.ask(move |d| d.checkpoints(&lookup)).await?;
    let history = history.ok_or_else(|| job_not_found(&id))?;
    ok(&history)
}

/// `POST /jobs/:id/savepoints` body (Flink's `SavepointTriggerRequestBody`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavepointTrigger {
    #[serde(rename = "target-directory")]
    target_directory: Option<String>,
    #[serde(rename = "cancel-job", default)]
    cancel_job: bool,
    /// Accepted for Flink clients; Rill has one savepoint format.
    #[serde(rename = "formatType")]
    format_type: Option<String>,
}

/// `POST /jobs/:id/stop` body (Flink's `StopWithSavepointRequestBody`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StopRequest {
    target_directory: Option<String>,
    #[serde(default)]
    drain: bool,
    format_type: Option<String>,
}

fn check_format(format: Option<&str>) -> Result<(), ApiError> {
    match format {
        None | Some("CANONICAL") | Some("NATIVE") => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown savepoint format '{other}' (expected CANONICAL or NATIVE)"
        ))),
    }
}

async fn trigger_savepoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: SavepointTrigger = parse_body(&body, true)?;
    check_format(request.format_type.as_deref())?;
    state.live_job(&id).await?;
    let request_id = state
        .ask(move |d| d.trigger_savepoint(&id, request.target_directory, request.cancel_job))
        .await??;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "request-id": request_id }),
    ))
}

async fn stop_with_savepoint(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let request: StopRequest = parse_body(&body, true)?;
    check_format(request.format_type.as_deref())?;
    if request.drain {
        return Err(ApiError::bad_request(
            "drain is not supported: Rill stops with a savepoint without advancing \
             the watermark to the end of time",
        ));
    }
    state.live_job(&id).await?;
    let request_id = state
        .ask(move |d| d.trigger_savepoint(&id, request.target_directory, true))
        .await??;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({ "request-id": request_id }),
    ))
}

async fn savepoint_status(
    State(state): State<AppState>,
    Path((id, trigger)): Path<(String, String)>,
) -> ApiResult {
    state.job_or_404(&id).await?;
    let lookup = (id.clone(), trigger.clone());
    let status = state
        .ask(move |d| d.savepoint_status(&lookup.0, &lookup.1))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("No savepoint request {trigger} for job {id}"))
        })?;
    ok(&async_operation(&status))
}

/// Flink's `AsynchronousOperationResult` for a savepoint.
fn async_operation(status: &SavepointStatus) -> serde_json::Value {
    match status {
        SavepointStatus::InProgress => json!({ "status": { "id": "IN_PROGRESS" } }),
        SavepointStatus::Completed { location } => json!({
            "status": { "id": "COMPLETED" },
            "operation": { "location": location },
        }),
        SavepointStatus::Failed { cause } => json!({
            "status": { "id": "COMPLETED" },
            "operation": {
                "failure-cause": {
                    "class": "rill.SavepointFailure",
                    "stack-trace": cause,
                    "serialized-throwable": null,
                }
            },
        }),
    }
}

async fn job_history(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult {
    if let Some(history) = state.history.get(&id) {
        return ok(&history);
    }
    state.job_or_404(&id).await?;
    ok(&state.history.empty(&id))
}

// ---------------------------------------------------------------------------
// Dashboard

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn dashboard_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn dashboard_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
