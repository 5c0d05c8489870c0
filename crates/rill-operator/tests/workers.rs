//! TaskManager pods driven through the `WorkerProvider` against kube-sim.
//!
//! kube-sim's Deployment controller is switched off here: it counts every
//! pod owned by a Deployment as that Deployment's replica, which a real
//! cluster (pods owned through ReplicaSets) does not.

mod common;

use std::time::Duration;

use common::{wait_until, BlockingSim};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use kube_sim::Options;
use rill_operator::workers::{tm_selector, KubernetesWorkers, OwnerSource, WorkerSettings};
use rill_runtime::cluster::services::WorkerProvider;

fn settings() -> WorkerSettings {
    let template: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"labels": {"team": "data"}},
        "spec": {"containers": [{"name": "taskmanager", "image": "rill:1",
                                 "args": ["taskmanager", "--config-dir", "/opt/rill/conf"]}]}
    }))
    .expect("template");
    WorkerSettings {
        namespace: "default".into(),
        cluster_id: "wsum".into(),
        template,
        owner: OwnerSource::Deployment("wsum-jobmanager".into()),
        extra_args: vec!["-D".into(), "jobmanager.rpc.address=10.1.2.3".into()],
        resync: Duration::from_millis(200),
    }
}

fn pods(sim: &BlockingSim) -> Vec<Pod> {
    sim.with_client(|c| async move {
        let api: Api<Pod> = Api::namespaced(c, "default");
        let mut pods = api
            .list(&ListParams::default().labels(&tm_selector("wsum")))
            .await
            .expect("list")
            .items;
        pods.retain(|p| p.metadata.deletion_timestamp.is_none());
        pods.sort_by_key(|p| p.name_any());
        pods
    })
}

fn names(sim: &BlockingSim) -> Vec<String> {
    pods(sim).iter().map(|p| p.name_any()).collect()
}

#[test]
fn taskmanager_pods_are_created_replaced_released_and_adopted() {
    let sim = BlockingSim::start(Options {
        controllers: false,
        ..Default::default()
    });
    let uid = sim.with_client(|c| async move {
        let api: Api<Deployment> = Api::namespaced(c, "default");
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "wsum-jobmanager"},
            "spec": {"selector": {"matchLabels": {"app": "wsum", "component": "jobmanager"}},
                     "template": {"metadata": {"labels": {"app": "wsum", "component": "jobmanager"}},
                                  "spec": {"containers": [{"name": "jobmanager", "image": "rill:1"}]}}}
        }))
        .expect("deployment");
        api.create(&PostParams::default(), &d).await.expect("create").uid().expect("uid")
    });

    let workers = KubernetesWorkers::new(sim.config(), settings()).expect("workers");
    assert_eq!(workers.owner().map(|o| o.uid.as_str()), Some(uid.as_str()));
    assert_eq!(workers.desired(), None);
    workers.set_desired(2).expect("set desired");
    assert_eq!(
        names(&sim),
        vec!["wsum-taskmanager-0", "wsum-taskmanager-1"]
    );
    let pod = &pods(&sim)[0];
    let labels = pod.labels();
    assert_eq!(labels.get("app").map(String::as_str), Some("wsum"));
    assert_eq!(
        labels.get("component").map(String::as_str),
        Some("taskmanager")
    );
    assert_eq!(
        labels.get("type").map(String::as_str),
        Some("rill-native-kubernetes")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("data"));
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Deployment", "wsum-jobmanager", uid.as_str())
    );
    let args = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers[0].args.clone())
        .expect("args");
    assert_eq!(
        args[args.len() - 2..],
        [
            "-D".to_string(),
            "jobmanager.rpc.address=10.1.2.3".to_string()
        ]
    );

    // Setting the same count again changes nothing.
    workers.set_desired(2).expect("set desired");
    assert_eq!(names(&sim).len(), 2);

    // A TaskManager pod fails: it is deleted and replaced under a new name.
    sim.with_client(|c| async move {
        let api: Api<Pod> = Api::namespaced(c, "default");
        api.patch_status(
            "wsum-taskmanager-0",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Failed"}})),
        )
        .await
        .expect("fail pod");
    });
    wait_until(
        Duration::from_secs(10),
        "replacement of the failed pod",
        || {
            let n = names(&sim);
            (n == ["wsum-taskmanager-1", "wsum-taskmanager-2"]).then_some(())
        },
    );

    // Releasing an idle TaskManager deletes it and lowers the count.
    workers.release("wsum-taskmanager-1").expect("release");
    assert_eq!(workers.desired(), Some(1));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        names(&sim),
        vec!["wsum-taskmanager-2"],
        "no replacement after release"
    );
    assert!(workers.release("someone-else").is_err());

    // A new JobManager (failover) adopts the pod that exists.
    drop(workers);
    let successor = KubernetesWorkers::new(sim.config(), settings()).expect("successor");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        names(&sim),
        vec!["wsum-taskmanager-2"],
        "nothing started before a desired count"
    );
    successor.set_desired(2).expect("desired 2");
    assert_eq!(
        names(&sim),
        vec!["wsum-taskmanager-2", "wsum-taskmanager-3"]
    );
    successor.set_desired(1).expect("desired 1");
    assert_eq!(names(&sim).len(), 1);
    successor.set_desired(0).expect("desired 0");
    assert!(names(&sim).is_empty());
}
