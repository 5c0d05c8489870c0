//! kube-sim checked with the kube-rs client and controller runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Config, CustomResource, CustomResourceExt, ResourceExt};
use kube_sim::{KubeSim, Options};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

async fn start(opts: Options) -> (KubeSim, Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = KubeSim::start(Options {
        kubeconfig: Some(dir.path().join("kubeconfig")),
        ..opts
    })
    .await
    .expect("start kube-sim");
    let kc = Kubeconfig::read_from(sim.kubeconfig()).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    (sim, client, dir)
}

fn cm(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "test"}},
        "data": {"v": value}
    }))
    .expect("configmap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_sees_added_modified_deleted() {
    let (sim, client, _dir) = start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    // The runtime watcher: Apply for create and change, Delete for removal.
    let stream = watcher(api.clone(), watcher::Config::default().labels("app=test"));
    let mut stream = Box::pin(stream);
    let writer = {
        let api = api.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            api.create(&PostParams::default(), &cm("w", "1")).await?;
            let patch = json!({"data": {"v": "2"}});
            api.patch("w", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            api.delete("w", &DeleteParams::default()).await?;
            Ok::<_, kube::Error>(())
        }
    };
    let reader = async {
        let mut seen = Vec::new();
        while let Some(ev) = stream.try_next().await.expect("watch stream") {
            match ev {
                watcher::Event::Apply(o) => {
                    seen.push(format!("apply:{}", o.data.unwrap_or_default()["v"]))
                }
                watcher::Event::Delete(o) => {
                    seen.push(format!("delete:{}", o.name_any()));
                    break;
                }
                _ => {}
            }
        }
        seen
    };
    let (w, seen) = tokio::time::timeout(LIMIT, async { tokio::join!(writer, reader) })
        .await
        .expect("bounded");
    w.expect("writes");
    assert_eq!(seen, vec!["apply:1", "apply:2", "delete:w"]);

    // The raw watch API shows the event types themselves, from a version.
    let start_rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    api.create(&PostParams::default(), &cm("raw", "1"))
        .await
        .expect("create");
    api.patch(
        "raw",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .expect("patch");
    api.delete("raw", &DeleteParams::default())
        .await
        .expect("delete");
    let events: Vec<_> = tokio::time::timeout(
        LIMIT,
        api.watch(&WatchParams::default().timeout(2), &start_rv)
            .await
            .expect("watch")
            .take(3)
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("bounded")
    .expect("events");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(kinds, vec!["ADDED", "MODIFIED", "DELETED"]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_bookmarks_and_gone() {
    let (sim, client, _dir) = start(Options {
        watch_history: 5,
        bookmark_interval: Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let events: Vec<_> = tokio::time::timeout(
        LIMIT,
        api.watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(5),
            &rv,
        )
        .await
        .expect("watch")
        .take(1)
        .try_collect::<Vec<_>>(),
    )
    .await
    .expect("bounded")
    .expect("events");
    assert!(matches!(events[0], WatchEvent::Bookmark(_)), "{events:?}");

    for i in 0..10 {
        api.create(&PostParams::default(), &cm(&format!("c{i}"), "x"))
            .await
            .expect("create");
    }
    let events: Vec<_> = tokio::time::timeout(
        LIMIT,
        api.watch(&WatchParams::default().timeout(5), &rv)
            .await
            .expect("watch")
            .take(1)
            .try_collect::<Vec<_>>(),
    )
    .await
    .expect("bounded")
    .expect("events");
    match &events[0] {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writers_exactly_one_wins() {
    let (sim, client, _dir) = start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("race", "0"))
        .await
        .expect("create");
    for round in 0..5 {
        let base = api.get("race").await.expect("get");
        let mut a = base.clone();
        a.data = Some([("v".to_string(), format!("a{round}"))].into());
        let mut b = base.clone();
        b.data = Some([("v".to_string(), format!("b{round}"))].into());
        let pp = PostParams::default();
        let (ra, rb) = tokio::join!(api.replace("race", &pp, &a), api.replace("race", &pp, &b));
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (ra, rb) => panic!("expected exactly one winner, got {ra:?} / {rb:?}"),
        };
        match loser {
            kube::Error::Api(s) => {
                assert_eq!(s.code, 409);
                assert_eq!(s.reason, "Conflict");
            }
            other => panic!("expected 409, got {other:?}"),
        }
        let now = api.get("race").await.expect("get");
        assert_eq!(now.data, winner.data);
        assert_eq!(now.resource_version(), winner.resource_version());
    }
    sim.stop().await;
}

/// A custom resource for the controller test.
#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "test.rill.dev",
    version = "v1",
    kind = "Counter",
    namespaced,
    status = "CounterStatus"
)]
pub struct CounterSpec {
    /// Desired count.
    pub target: i64,
}

/// Observed state written by the reconciler.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct CounterStatus {
    /// The count the reconciler saw.
    pub observed: i64,
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

struct Ctx {
    api: Api<Counter>,
    calls: AtomicUsize,
}

async fn reconcile(obj: Arc<Counter>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    ctx.calls.fetch_add(1, Ordering::Relaxed);
    let status = json!({
        "apiVersion": "test.rill.dev/v1",
        "kind": "Counter",
        "status": {"observed": obj.spec.target}
    });
    ctx.api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply("counter-controller").force(),
            &Patch::Apply(&status),
        )
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_obj: Arc<Counter>, _e: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_reconciles_a_crd_registered_at_run_time() {
    let (sim, client, _dir) = start(Options::default()).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &Counter::crd())
        .await
        .expect("create crd");
    tokio::time::timeout(
        LIMIT,
        kube::runtime::wait::await_condition(
            crds,
            "counters.test.rill.dev",
            kube::runtime::wait::conditions::is_crd_established(),
        ),
    )
    .await
    .expect("bounded")
    .expect("established");

    let counters: Api<Counter> = Api::namespaced(client.clone(), "default");
    counters
        .create(
            &PostParams::default(),
            &Counter::new("c1", CounterSpec { target: 3 }),
        )
        .await
        .expect("create counter");
    let ctx = Arc::new(Ctx {
        api: counters.clone(),
        calls: AtomicUsize::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let controller = Controller::new(counters.clone(), watcher::Config::default())
        .graceful_shutdown_on(async move {
            let _ = stop_rx.await;
        })
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let handle = tokio::spawn(controller);

    let observed = |want: i64| {
        let counters = counters.clone();
        async move {
            loop {
                let c = counters.get("c1").await.expect("get");
                if c.status.as_ref().map(|s| s.observed) == Some(want) {
                    return c;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let c = tokio::time::timeout(LIMIT, observed(3))
        .await
        .expect("reconciled to 3");
    assert_eq!(
        c.metadata.generation,
        Some(1),
        "status writes do not bump generation"
    );

    counters
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"target": 7}})),
        )
        .await
        .expect("patch spec");
    let c = tokio::time::timeout(LIMIT, observed(7))
        .await
        .expect("reconciled to 7");
    assert_eq!(c.metadata.generation, Some(2));
    assert!(ctx.calls.load(Ordering::Relaxed) >= 2);

    // Status writes through the main resource are ignored.
    counters
        .patch(
            "c1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observed": 100}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        counters
            .get("c1")
            .await
            .expect("get")
            .status
            .map(|s| s.observed),
        Some(7)
    );

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(LIMIT, handle).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_list_watcher_gets_initial_events_then_changes() {
    let (sim, client, _dir) = start(Options::default()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(&PostParams::default(), &cm("before", "1"))
        .await
        .expect("create");
    let mut stream = Box::pin(watcher(
        api.clone(),
        watcher::Config::default().streaming_lists(),
    ));
    let mut initial = Vec::new();
    let collect = async {
        while let Some(ev) = stream.try_next().await.expect("stream") {
            match ev {
                watcher::Event::InitApply(o) => initial.push(o.name_any()),
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(LIMIT, collect)
        .await
        .expect("initial events end with a bookmark");
    assert!(initial.contains(&"before".to_string()), "{initial:?}");
    api.create(&PostParams::default(), &cm("after", "1"))
        .await
        .expect("create");
    let next = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(watcher::Event::Apply(o)) = stream.try_next().await.expect("stream") {
                return o.name_any();
            }
        }
    })
    .await
    .expect("bounded");
    assert_eq!(next, "after");
    sim.stop().await;
}
