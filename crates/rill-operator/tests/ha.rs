//! ConfigMap leader election and job pointers against kube-sim.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, BlockingSim};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use rill_operator::election::ElectionTiming;
use rill_operator::ha::{HaSettings, KubernetesHa, LEADER_ANNOTATION};
use rill_runtime::cluster::services::{
    CheckpointPointer, HighAvailability, LeaderAddress, Leadership, StoredJob,
};
use rill_runtime::RuntimeError;

fn settings() -> HaSettings {
    HaSettings {
        namespace: "default".into(),
        cluster_id: "wsum".into(),
        timing: ElectionTiming {
            lease_duration: Duration::from_secs(2),
            renew_deadline: Duration::from_millis(1500),
            retry_period: Duration::from_millis(200),
        },
    }
}

fn address(n: u8) -> LeaderAddress {
    LeaderAddress {
        rpc: format!("10.0.0.{n}:6123"),
        rest: format!("http://10.0.0.{n}:8081"),
    }
}

fn pointer(id: u64) -> CheckpointPointer {
    CheckpointPointer {
        id,
        location: format!("file:///ckpt/j1/chk-{id}"),
        completed_ms: 1_700_000_000_000 + id,
    }
}

fn stored_job() -> StoredJob {
    StoredJob {
        job_id: "0123456789abcdef0123456789abcdef".into(),
        entry: "windowed-sum".into(),
        args: vec!["--rate".into(), "10".into()],
        parallelism: Some(2),
        initial_savepoint: None,
        allow_non_restored_state: false,
        submitted_ms: 1,
    }
}

#[test]
fn racing_electors_one_leader_takeover_and_fencing() {
    let sim = BlockingSim::start(Default::default());
    let a = Arc::new(KubernetesHa::new(sim.config(), settings()).expect("ha a"));
    let b = Arc::new(KubernetesHa::new(sim.config(), settings()).expect("ha b"));

    // Both campaign at once from plain threads; exactly one returns.
    let (tx, rx) = std::sync::mpsc::channel::<(String, Leadership)>();
    for (ha, id, n) in [(a.clone(), "jm-a", 1u8), (b.clone(), "jm-b", 2u8)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            if let Ok(l) = ha.acquire_leadership(id, &address(n)) {
                let _ = tx.send((id.to_string(), l));
            }
        });
    }
    let (first, first_lease) = rx.recv_timeout(Duration::from_secs(10)).expect("a leader");
    assert!(
        rx.recv_timeout(Duration::from_millis(2500)).is_err(),
        "a second leader appeared while the first keeps renewing"
    );
    let (leader_ha, follower_ha, follower_id) = if first == "jm-a" {
        (a.clone(), b.clone(), "jm-b")
    } else {
        (b.clone(), a.clone(), "jm-a")
    };
    let leader_addr = if first == "jm-a" {
        address(1)
    } else {
        address(2)
    };
    assert!(first_lease.is_leader());
    assert_eq!(follower_ha.leader().expect("leader"), Some(leader_addr));
    let record = follower_ha.leader_record().expect("record").expect("some");
    assert_eq!(record.holder_identity, first);
    assert_eq!(record.lease_duration_seconds, 2);

    // The leader commits pointers; anyone reads them.
    leader_ha
        .put_job(&first_lease, &stored_job())
        .expect("put job");
    leader_ha
        .put_checkpoint(&first_lease, &stored_job().job_id, &pointer(3))
        .expect("put checkpoint");
    assert_eq!(follower_ha.jobs().expect("jobs"), vec![stored_job()]);
    assert_eq!(
        follower_ha
            .latest_checkpoint(&stored_job().job_id)
            .expect("latest"),
        Some(pointer(3))
    );
    // An older pointer never replaces a newer one.
    leader_ha
        .put_checkpoint(&first_lease, &stored_job().job_id, &pointer(2))
        .expect("stale put is accepted but ignored");
    assert_eq!(
        follower_ha
            .latest_checkpoint(&stored_job().job_id)
            .expect("latest"),
        Some(pointer(3))
    );

    // A write with someone else's leadership token is refused by the store.
    let impostor = Leadership::new(follower_id);
    assert!(matches!(
        follower_ha.put_checkpoint(&impostor, &stored_job().job_id, &pointer(9)),
        Err(RuntimeError::NotLeader(_))
    ));
    assert!(!impostor.is_leader(), "a refused write revokes the token");

    // The leader stops renewing (its process dies): the follower takes over
    // once the lease ran out, not before.
    let stopped = Instant::now();
    drop(leader_ha);
    if first == "jm-a" {
        drop(a);
    } else {
        drop(b);
    }
    let (second, second_lease) = rx.recv_timeout(Duration::from_secs(10)).expect("takeover");
    let took = stopped.elapsed();
    assert_eq!(second, follower_id);
    assert!(
        took <= Duration::from_millis(2000 + 1500),
        "takeover took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1000),
        "took over after {took:?}, before the lease could have expired"
    );
    let record = follower_ha.leader_record().expect("record").expect("some");
    assert_eq!(record.holder_identity, follower_id);
    assert_eq!(record.leader_transitions, 1);
    // The new leader recovers the pointers.
    assert_eq!(
        follower_ha
            .latest_checkpoint(&stored_job().job_id)
            .expect("latest"),
        Some(pointer(3))
    );

    // The deposed leader still holds an unrevoked token (it never noticed);
    // its write is refused because the ConfigMap names the new holder.
    assert!(first_lease.is_leader());
    let deposed_view = KubernetesHa::new(sim.config(), settings()).expect("ha c");
    let err = deposed_view.put_checkpoint(&first_lease, &stored_job().job_id, &pointer(10));
    assert!(matches!(err, Err(RuntimeError::NotLeader(_))), "{err:?}");
    assert!(!first_lease.is_leader());
    assert_eq!(
        deposed_view
            .latest_checkpoint(&stored_job().job_id)
            .expect("latest"),
        Some(pointer(3))
    );
    assert!(second_lease.is_leader());
    follower_ha
        .put_checkpoint(&second_lease, &stored_job().job_id, &pointer(4))
        .expect("new leader writes");
    follower_ha
        .remove_job(&second_lease, &stored_job().job_id)
        .expect("remove job");
    assert!(follower_ha.jobs().expect("jobs").is_empty());
    assert_eq!(
        follower_ha
            .latest_checkpoint(&stored_job().job_id)
            .expect("latest"),
        None
    );
}

#[test]
fn a_leader_whose_record_is_taken_revokes_itself() {
    let sim = BlockingSim::start(Default::default());
    let ha = KubernetesHa::new(sim.config(), settings()).expect("ha");
    let lease = ha.acquire_leadership("jm-a", &address(1)).expect("lead");
    assert!(lease.is_leader());
    // Someone overwrites the record (as a takeover would).
    sim.with_client(|client| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        let record = serde_json::json!({
            "holderIdentity": "intruder",
            "leaseDurationSeconds": 60,
            "acquireTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            "renewTime": k8s_openapi::jiff::Timestamp::now().to_string(),
            "leaderTransitions": 1
        });
        let patch = serde_json::json!({"metadata": {"annotations": {LEADER_ANNOTATION: record.to_string()}}});
        api.patch(
            "wsum-cluster-config-map",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("patch");
    });
    wait_until(Duration::from_secs(5), "revocation", || {
        (!lease.is_leader()).then_some(())
    });
    assert!(matches!(
        ha.put_job(&lease, &stored_job()),
        Err(RuntimeError::NotLeader(_))
    ));
    // The HA ConfigMap carries the labels the operator cleans up by.
    let labels = sim.with_client(|client| async move {
        let api: Api<ConfigMap> = Api::namespaced(client, "default");
        api.get("wsum-cluster-config-map")
            .await
            .expect("get")
            .metadata
            .labels
    });
    let labels = labels.expect("labels");
    assert_eq!(labels.get("app").map(String::as_str), Some("wsum"));
    assert_eq!(
        labels.get("configmap-type").map(String::as_str),
        Some("high-availability")
    );
}

#[test]
fn settings_come_from_flink_keys() {
    let conf = [
        ("kubernetes.cluster-id", "wsum"),
        ("kubernetes.namespace", "jobs"),
        (
            "high-availability.kubernetes.leader-election.lease-duration",
            "4 s",
        ),
        (
            "high-availability.kubernetes.leader-election.renew-deadline",
            "3s",
        ),
        (
            "high-availability.kubernetes.leader-election.retry-period",
            "500ms",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let s = HaSettings::from_flink_config(&conf).expect("settings");
    assert_eq!(s.cluster_id, "wsum");
    assert_eq!(s.namespace, "jobs");
    assert_eq!(s.timing.lease_duration, Duration::from_secs(4));
    assert_eq!(s.timing.renew_deadline, Duration::from_secs(3));
    assert_eq!(s.timing.retry_period, Duration::from_millis(500));
    let mut bad = conf.clone();
    bad.insert(
        "high-availability.kubernetes.leader-election.renew-deadline".into(),
        "10s".into(),
    );
    assert!(
        HaSettings::from_flink_config(&bad).is_err(),
        "deadline beyond lease"
    );
    let mut missing = conf;
    missing.remove("kubernetes.cluster-id");
    assert!(HaSettings::from_flink_config(&missing).is_err());
}
