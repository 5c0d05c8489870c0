//! The operator, run in-process against kube-sim, with a fake JobManager
//! REST API standing in for the real one.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, patch, post};
use common::{Sim, LIMIT};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use rill_operator::controller::{ControllerOptions, REST_URL_ANNOTATION};
use rill_operator::crd::{FlinkJob, LifecycleState};
use rill_operator::election::ElectionTiming;
use rill_operator::{Operator, OperatorOptions};
use serde_json::{json, Value};

// --- A fake JobManager ------------------------------------------------------

#[derive(Default)]
struct FakeJm {
    /// (jid, state, start)
    jobs: Vec<(String, String, u64)>,
    savepoints: Vec<(String, Value)>,
    submissions: Vec<Value>,
    cancelled: Vec<String>,
}

type Shared = Arc<Mutex<FakeJm>>;

fn reply(v: Value) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

fn body_json(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

const SAVEPOINT: &str = "file:///tmp/rill-test/savepoints/savepoint-1";

fn summary(j: &(String, String, u64)) -> Value {
    json!({"jid": j.0, "name": "windowed-sum", "state": j.1, "start-time": j.2,
           "end-time": -1, "duration": 1, "last-modification": j.2, "tasks": 2})
}

async fn start_fake_jm(initial: Vec<(String, String, u64)>) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(FakeJm {
        jobs: initial,
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route(
            "/jobs/overview",
            get(|State(s): State<Shared>| async move {
                let s = s.lock().expect("lock");
                reply(json!({"jobs": s.jobs.iter().map(summary).collect::<Vec<_>>()}))
            }),
        )
        .route(
            "/jobs/{id}",
            get(|State(s): State<Shared>, Path(id): Path<String>| async move {
                let s = s.lock().expect("lock");
                let j = s.jobs.iter().find(|j| j.0 == id).cloned().unwrap_or((id, "RUNNING".into(), 1));
                reply(json!({"jid": j.0, "name": "windowed-sum", "state": j.1, "start-time": j.2,
                    "end-time": -1, "duration": 1, "now": 2, "entry": "windowed-sum", "args": [],
                    "parallelism": 2, "restarts": 1, "failure": null, "vertices": []}))
            }),
        )
        .route(
            "/jobs/{id}",
            patch(|State(s): State<Shared>, Path(id): Path<String>| async move {
                let mut s = s.lock().expect("lock");
                for j in s.jobs.iter_mut().filter(|j| j.0 == id) {
                    j.1 = "CANCELED".into();
                }
                s.cancelled.push(id);
                reply(json!({}))
            }),
        )
        .route(
            "/jobs/{id}/checkpoints",
            get(|Path(id): Path<String>| async move {
                let cp = json!({"id": 7, "status": "COMPLETED", "is_savepoint": false,
                    "trigger_timestamp": 1_700_000_000_000u64, "latest_ack_timestamp": 1_700_000_001_000u64,
                    "state_size": 1, "end_to_end_duration": 1,
                    "external_path": format!("file:///tmp/rill-test/ckpt/{id}/chk-7"), "failure_message": null});
                reply(json!({"counts": {"restored": 0, "total": 7, "in_progress": 0, "completed": 7, "failed": 0},
                    "latest": {"completed": cp, "savepoint": null, "failed": null, "restored": null},
                    "history": []}))
            }),
        )
        .route(
            "/jobs/{id}/savepoints",
            post(|State(s): State<Shared>, Path(id): Path<String>, body: Bytes| async move {
                let body = body_json(&body);
                let mut s = s.lock().expect("lock");
                if body["cancel-job"] == json!(true) {
                    for j in s.jobs.iter_mut().filter(|j| j.0 == id) {
                        j.1 = "CANCELED".into();
                    }
                    // The redeployed JobManager will run the job again.
                    let n = s.jobs.len() as u64 + 1;
                    s.jobs.push((format!("j{n}"), "RUNNING".into(), 100 * n));
                }
                s.savepoints.push((id, body));
                (axum::http::StatusCode::ACCEPTED, reply(json!({"request-id": "sp-1"})))
            }),
        )
        .route(
            "/jobs/{id}/savepoints/{rid}",
            get(|| async { reply(json!({"status": {"id": "COMPLETED"}, "operation": {"location": SAVEPOINT}})) }),
        )
        .route(
            "/jobs",
            post(|State(s): State<Shared>, body: Bytes| async move {
                let body = body_json(&body);
                let mut s = s.lock().expect("lock");
                let n = s.jobs.len() as u64 + 1;
                let jid = format!("s{n}");
                s.jobs.push((jid.clone(), "RUNNING".into(), 100 * n));
                s.submissions.push(body);
                (axum::http::StatusCode::ACCEPTED, reply(json!({"jobid": jid, "jobUrl": format!("/jobs/{jid}")})))
            }),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), state)
}

// --- Helpers -----------------------------------------------------------------

fn options(sim: &Sim, identity: &str) -> OperatorOptions {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    OperatorOptions {
        namespaces: vec!["default".into()],
        identity: identity.into(),
        lease_name: "rill-operator-leader".into(),
        lease_namespace: "default".into(),
        timing: ElectionTiming {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
        },
        metrics_addr: None,
        controller: ControllerOptions {
            rest_timeout: Duration::from_secs(1),
            rest_overrides: Default::default(),
            refresh: Duration::from_millis(500),
            poll: Duration::from_millis(200),
            cleanup_wait: Duration::from_secs(5),
        },
        kube_config: Some(sim.config.clone()),
    }
}

struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<rill_operator::metrics::Metrics>,
}

impl Running {
    async fn start(opts: OperatorOptions) -> Running {
        let op = Operator::new(opts).await.expect("operator");
        let metrics = op.metrics();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            op.run(async move {
                let _ = rx.await;
            })
            .await
            .expect("operator run");
        });
        Running {
            stop: Some(tx),
            task,
            metrics,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("operator stops")
            .expect("join");
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn job(name: &str, rest_url: &str, spec: Value) -> FlinkJob {
    serde_json::from_value(json!({
        "apiVersion": "rill.dev/v1alpha1", "kind": "FlinkJob",
        "metadata": {"name": name, "annotations": {REST_URL_ANNOTATION: rest_url}},
        "spec": spec,
    }))
    .expect("flinkjob")
}

fn app_spec(parallelism: u32) -> Value {
    json!({
        "image": "rill:1",
        "job": {"entry": "windowed-sum", "parallelism": parallelism, "upgradeMode": "savepoint"},
        "checkpointing": {"interval": "1s", "storage": "file:///tmp/rill-test/ckpt"},
        "highAvailability": {"enabled": true, "jobManagerReplicas": 2},
        "taskManager": {"slots": 2}
    })
}

async fn config_of(cms: &Api<ConfigMap>, name: &str) -> std::collections::BTreeMap<String, String> {
    let cm = cms.get(name).await.expect("config map");
    let text = cm
        .data
        .unwrap_or_default()
        .get("config.yaml")
        .cloned()
        .unwrap_or_default();
    rill_operator::config::parse_config_yaml(&text).expect("config.yaml")
}

fn config_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| {
            a.get(rill_operator::children::CONFIG_HASH_ANNOTATION)
                .cloned()
        })
}

async fn event_reasons(client: &kube::Client) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

// --- Tests -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_job_children_upgrade_and_cleanup() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("rill_operator=warn")
        .with_test_writer()
        .try_init();
    let sim = Sim::start(Default::default()).await;
    sim.install_crds().await;
    let client = sim.client();
    let (url, fake) = start_fake_jm(vec![("j1".into(), "RUNNING".into(), 100)]).await;
    let op = Running::start(options(&sim, "op-1")).await;

    let jobs: Api<FlinkJob> = Api::namespaced(client.clone(), "default");
    let created = jobs
        .create(&PostParams::default(), &job("wsum", &url, app_spec(2)))
        .await
        .expect("create");
    let uid = created.uid().expect("uid");

    // Children, each owned by the FlinkJob.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = wait_for("the JobManager Deployment", || {
        let deployments = deployments.clone();
        async move { deployments.get_opt("wsum-jobmanager").await.ok().flatten() }
    })
    .await;
    let owned_by_job =
        |refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]| {
            refs.iter()
                .any(|o| o.uid == uid && o.kind == "FlinkJob" && o.controller == Some(true))
        };
    assert!(owned_by_job(d.owner_references()));
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let args = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].args.clone());
    assert_eq!(
        args.flatten(),
        Some(
            vec![
                "jobmanager",
                "--config-dir",
                "/opt/rill/conf",
                "--job",
                "windowed-sum"
            ]
            .into_iter()
            .map(String::from)
            .collect()
        )
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    assert!(owned_by_job(
        cms.get("wsum-config").await.expect("cm").owner_references()
    ));
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    assert!(owned_by_job(
        sas.get("wsum-jobmanager")
            .await
            .expect("sa")
            .owner_references()
    ));
    let roles: Api<Role> = Api::namespaced(client.clone(), "default");
    let role = roles.get("wsum-jobmanager").await.expect("role");
    assert!(owned_by_job(role.owner_references()));
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), "default");
    assert!(owned_by_job(
        bindings
            .get("wsum-jobmanager")
            .await
            .expect("rb")
            .owner_references()
    ));
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    for s in ["wsum-rest", "wsum-rpc"] {
        assert!(
            owned_by_job(services.get(s).await.expect("svc").owner_references()),
            "{s}"
        );
    }
    let conf = config_of(&cms, "wsum-config").await;
    assert_eq!(
        conf.get("high-availability.type").map(String::as_str),
        Some("kubernetes")
    );
    assert_eq!(
        conf.get("parallelism.default").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        conf.get("kubernetes.cluster-id").map(String::as_str),
        Some("wsum")
    );

    // Status from the (fake) JobManager.
    let status = wait_for("a STABLE status with the job and checkpoint", || {
        let jobs = jobs.clone();
        async move {
            let s = jobs.get("wsum").await.ok()?.status?;
            (s.lifecycle_state == Some(LifecycleState::Stable)
                && s.last_checkpoint.as_ref().map(|c| c.id) == Some(7))
            .then_some(s)
        }
    })
    .await;
    assert_eq!(status.job_id.as_deref(), Some("j1"));
    assert_eq!(status.job_state.as_deref(), Some("RUNNING"));
    assert_eq!(status.restarts, Some(1));
    assert_eq!(status.observed_generation, Some(1));
    let hash_before = config_hash(&d);

    // Spec change with upgradeMode savepoint: savepoint with cancel, then a
    // redeploy from it.
    jobs.patch(
        "wsum",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"job": {"parallelism": 4}}})),
    )
    .await
    .expect("patch spec");
    let status = wait_for("the upgrade from a savepoint", || {
        let jobs = jobs.clone();
        async move {
            let s = jobs.get("wsum").await.ok()?.status?;
            (s.last_savepoint.as_ref().map(|p| p.path.as_str()) == Some(SAVEPOINT)
                && s.lifecycle_state == Some(LifecycleState::Stable)
                && s.observed_generation == Some(2))
            .then_some(s)
        }
    })
    .await;
    assert_eq!(status.job_id.as_deref(), Some("j2"));
    assert_eq!(status.restore_savepoint.as_deref(), Some(SAVEPOINT));
    {
        let f = fake.lock().expect("lock");
        assert_eq!(f.savepoints.len(), 1);
        assert_eq!(f.savepoints[0].0, "j1");
        assert_eq!(f.savepoints[0].1["cancel-job"], json!(true));
        // The JobManager refuses a per-request directory; the cluster's
        // configuration says where savepoints go.
        assert_eq!(f.savepoints[0].1["target-directory"], json!(null));
    }
    let conf = config_of(&cms, "wsum-config").await;
    assert_eq!(
        conf.get("state.savepoints.dir").map(String::as_str),
        Some("file:///tmp/rill-test/ckpt/savepoints")
    );
    assert_eq!(
        conf.get("parallelism.default").map(String::as_str),
        Some("4")
    );
    assert_eq!(
        conf.get("execution.savepoint.path").map(String::as_str),
        Some(SAVEPOINT)
    );
    let d = deployments
        .get("wsum-jobmanager")
        .await
        .expect("deployment");
    assert_ne!(config_hash(&d), hash_before, "the JobManager pods roll");

    // A savepoint on request (nonce), recorded in status.
    jobs.patch(
        "wsum",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"job": {"savepointTriggerNonce": 7}}})),
    )
    .await
    .expect("nonce");
    wait_for("the triggered savepoint", || {
        let jobs = jobs.clone();
        async move {
            let s = jobs.get("wsum").await.ok()?.status?;
            (s.last_savepoint.as_ref().and_then(|p| p.trigger_nonce) == Some(7)).then_some(())
        }
    })
    .await;
    assert_eq!(
        fake.lock()
            .expect("lock")
            .savepoints
            .last()
            .map(|s| s.1["cancel-job"].clone()),
        Some(json!(false))
    );
    assert!(deployments
        .get_opt("wsum-jobmanager")
        .await
        .expect("get")
        .is_some());

    // The JobManagers' HA ConfigMap is not owned; the finalizer removes it.
    let ha: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "wsum-cluster-config-map",
                     "labels": {"app": "wsum", "configmap-type": "high-availability"}},
        "data": {"checkpoint-j2": "{}"}
    }))
    .expect("cm");
    cms.create(&PostParams::default(), &ha)
        .await
        .expect("ha cm");
    let other: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "unrelated", "labels": {"app": "other", "configmap-type": "high-availability"}}
    }))
    .expect("cm");
    cms.create(&PostParams::default(), &other)
        .await
        .expect("other cm");
    let live = jobs.get("wsum").await.expect("job");
    assert!(live
        .finalizers()
        .iter()
        .any(|f| f == rill_operator::controller::FINALIZER));
    jobs.delete("wsum", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the FlinkJob to be gone", || {
        let jobs = jobs.clone();
        async move { jobs.get_opt("wsum").await.ok()?.is_none().then_some(()) }
    })
    .await;
    assert!(cms
        .get_opt("wsum-cluster-config-map")
        .await
        .expect("get")
        .is_none());
    assert!(
        cms.get_opt("unrelated").await.expect("get").is_some(),
        "only this cluster's HA data"
    );

    let reasons = event_reasons(&client).await;
    for want in [
        "Deployed",
        "JobRunning",
        "UpgradeStarted",
        "SavepointTriggered",
        "SavepointCompleted",
        "Upgraded",
        "Deleting",
    ] {
        assert!(
            reasons.iter().any(|(_, r)| r == want),
            "event {want} missing in {reasons:?}"
        );
    }
    assert_eq!(op.metrics.error_count(), 0, "{}", op.metrics.render());
    assert!(op.metrics.reconcile_count() > 0);
    op.stop().await;
    sim.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_spec_is_reported_and_fixed_without_crash_looping() {
    let sim = Sim::start(Default::default()).await;
    sim.install_crds().await;
    let client = sim.client();
    let op = Running::start(options(&sim, "op-1")).await;
    let jobs: Api<FlinkJob> = Api::namespaced(client.clone(), "default");
    let mut spec = app_spec(2);
    spec["checkpointing"]["interval"] = json!("every now and then");
    jobs.create(
        &PostParams::default(),
        &job("bad", "http://127.0.0.1:1", spec),
    )
    .await
    .expect("the schema cannot tell; admitted");
    let status = wait_for("status.error", || {
        let jobs = jobs.clone();
        async move {
            jobs.get("bad")
                .await
                .ok()?
                .status
                .filter(|s| s.error.is_some())
        }
    })
    .await;
    assert_eq!(status.lifecycle_state, Some(LifecycleState::Failed));
    assert!(
        status
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("checkpointing.interval"),
        "{status:?}"
    );
    let reasons = wait_for("the Warning event", || {
        let client = client.clone();
        async move {
            let r = event_reasons(&client).await;
            r.iter()
                .any(|(t, r)| t == "Warning" && r == "InvalidSpec")
                .then_some(r)
        }
    })
    .await;
    assert_eq!(
        reasons.iter().filter(|(_, r)| r == "InvalidSpec").count(),
        1
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    assert!(deployments
        .get_opt("bad-jobmanager")
        .await
        .expect("get")
        .is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        op.metrics.error_count(),
        0,
        "a bad spec is not an error loop"
    );

    // Fixing the spec deploys it and clears the error.
    jobs.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"checkpointing": {"interval": "10s"}}})),
    )
    .await
    .expect("fix");
    wait_for("the fixed job to deploy", || {
        let jobs = jobs.clone();
        async move {
            let s = jobs.get("bad").await.ok()?.status?;
            (s.error.is_none() && s.lifecycle_state == Some(LifecycleState::Deployed)).then_some(())
        }
    })
    .await;
    assert!(deployments
        .get_opt("bad-jobmanager")
        .await
        .expect("get")
        .is_some());
    op.stop().await;
    sim.sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_lease_holder_reconciles() {
    let sim = Sim::start(Default::default()).await;
    sim.install_crds().await;
    let client = sim.client();
    let (url, _fake) = start_fake_jm(vec![("j1".into(), "RUNNING".into(), 100)]).await;
    let first = Running::start(options(&sim, "op-a")).await;
    // Let the first one win the lease before the second starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = Running::start(options(&sim, "op-b")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let jobs: Api<FlinkJob> = Api::namespaced(client.clone(), "default");
    jobs.create(&PostParams::default(), &job("solo", &url, app_spec(1)))
        .await
        .expect("create");
    wait_for("the job to be reconciled", || {
        let jobs = jobs.clone();
        async move {
            jobs.get("solo")
                .await
                .ok()?
                .status
                .filter(|s| s.lifecycle_state == Some(LifecycleState::Stable))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(first.metrics.reconcile_count() > 0);
    assert_eq!(
        second.metrics.reconcile_count(),
        0,
        "the standby never reconciles"
    );

    // The leader goes away; the standby takes over and acts.
    first.stop().await;
    jobs.patch(
        "solo",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"job": {"upgradeMode": "stateless", "parallelism": 2}}})),
    )
    .await
    .expect("patch");
    wait_for("the standby to reconcile the change", || {
        let jobs = jobs.clone();
        async move {
            let s = jobs.get("solo").await.ok()?.status?;
            (s.observed_generation == Some(2)).then_some(())
        }
    })
    .await;
    assert!(second.metrics.reconcile_count() > 0);
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let holder = lease
        .get("rill-operator-leader")
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("op-b"));
    second.stop().await;
    sim.sim.stop().await;
}
