//! JobManager high availability on Kubernetes, end to end: the operator
//! installed from `manifests/` runs a FlinkJob with two JobManager replicas
//! on kube-sim (the process kubelet runs the real `rill` binary), and the
//! real `kubectl` drives everything.
//!
//! The two JobManagers elect a leader through the cluster's HA ConfigMap.
//! Mid-stream the leader's container is crashed (SIGKILL; the kubelet
//! restarts it in place under the same pod name): once the lease has run
//! out, a JobManager takes it over (the standby or the restarted process,
//! whichever asks first) and restores the job from the latest completed
//! checkpoint. Later the new leader's pod is deleted: another JobManager
//! (the remaining one or the Deployment's replacement pod) takes over again.
//! Throughout, a sampler checks that never two JobManagers act as leader at
//! once. The job finishes with exactly the output of an uninterrupted run,
//! and deleting the FlinkJob removes every pod, Service and HA ConfigMap.

mod kube;
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::*;
use kube_sim::Store;
use rill_operator::ha::{cluster_config_map_name, ADDRESS_KEY, LEADER_ANNOTATION};
use serde_json::{json, Value};
use support::assert_same;

const NAME: &str = "ha";
/// The HA ConfigMap key of the job's latest completed checkpoint.
const POINTER_KEY: &str = "checkpoint-windowed-sum";

/// One leadership: the holder (a JobManager pod name) and the number of
/// hand-overs before it. A container restarted in place keeps its pod name,
/// so only the count tells its new leadership from its old one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Term {
    holder: String,
    transitions: u64,
}

/// What the HA ConfigMap says at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
struct HaView {
    /// From the leader annotation (empty holder when none).
    term: Term,
    /// Id of the latest completed checkpoint the leaders published.
    pointer: Option<u64>,
}

fn ha_view_of(cm: &Value) -> HaView {
    let record = cm["metadata"]["annotations"][LEADER_ANNOTATION]
        .as_str()
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .unwrap_or_default();
    let term = Term {
        holder: record["holderIdentity"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        transitions: record["leaderTransitions"].as_u64().unwrap_or(0),
    };
    let pointer = cm["data"][POINTER_KEY]
        .as_str()
        .and_then(|p| serde_json::from_str::<Value>(p).ok())
        .and_then(|p| p["id"].as_u64());
    HaView { term, pointer }
}

/// The HA ConfigMap through kubectl, as a user sees it.
fn ha_config_map(kube: &Kube) -> Value {
    kube.get("configmap", &cluster_config_map_name(NAME))
}

/// The leader's REST address (`ip:port`) as it published it.
fn leader_rest(cm: &Value) -> Option<String> {
    let address: Value = serde_json::from_str(cm["data"][ADDRESS_KEY].as_str()?).ok()?;
    Some(
        address["rest"]
            .as_str()?
            .trim_start_matches("http://")
            .to_string(),
    )
}

/// A GET with short timeouts: a pod that is gone or not listening must not
/// stall the sampler. `None` when nothing answers.
fn probe(addr: &str, path: &str) -> Option<Value> {
    let target: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&target, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

/// A job state in which a JobManager runs the job master: it deploys tasks,
/// triggers checkpoints and publishes them. A standby JobManager serves no
/// REST API at all (it blocks in the election before starting it), and a
/// deposed one reports SUSPENDED.
fn acting(state: &str) -> bool {
    matches!(
        state,
        "INITIALIZING" | "CREATED" | "RUNNING" | "RESTARTING" | "FAILING" | "CANCELLING"
    )
}

/// One pass of the sampler.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    /// The HA ConfigMap read right after the JobManagers were asked.
    ha: HaView,
    /// JobManager pods whose job master was active, by pod name.
    acting: Vec<String>,
}

#[derive(Default)]
struct Samples {
    list: Vec<Sample>,
    violations: Vec<String>,
}

/// Watches for two leaders while the job runs.
///
/// Every pass reads the HA ConfigMap straight from kube-sim's store, asks
/// the REST API of every JobManager pod (by pod IP, not through the
/// Service) for the job, and reads the ConfigMap again. It fails the test
/// when two JobManagers report an active job master in the same pass, or
/// when one does while neither ConfigMap read names it as holder. A leader
/// that kept running its job after losing the lease, or a standby that
/// started one while the lease was held, shows up here.
fn sampler(store: Arc<Store>, stop: Arc<AtomicBool>, out: Arc<Mutex<Samples>>) {
    let cms = store
        .find_type("", "v1", "configmaps")
        .expect("configmaps are served");
    let pods = store.find_type("", "v1", "pods").expect("pods are served");
    let cm_name = cluster_config_map_name(NAME);
    let read_ha = || {
        store
            .get(&cms, "default", &cm_name)
            .map(|cm| ha_view_of(&cm))
            .unwrap_or_default()
    };
    let mut before = read_ha();
    while !stop.load(Ordering::SeqCst) {
        let jobmanagers: Vec<(String, String)> = store
            .list(&pods, Some("default"))
            .0
            .iter()
            .filter(|p| {
                p["metadata"]["labels"]["app"] == NAME
                    && p["metadata"]["labels"]["component"] == "jobmanager"
            })
            .filter_map(|p| {
                let ip = p["status"]["podIP"].as_str().filter(|ip| !ip.is_empty())?;
                Some((name_of(p), format!("{ip}:8081")))
            })
            .collect();
        let mut active = Vec::new();
        for (pod, addr) in &jobmanagers {
            let state = probe(addr, &format!("/jobs/{JOB}"))
                .and_then(|j| j["state"].as_str().map(String::from));
            if state.as_deref().is_some_and(acting) {
                active.push(pod.clone());
            }
        }
        let after = read_ha();
        let mut out = out.lock().expect("samples");
        if active.len() > 1 {
            out.violations.push(format!(
                "two JobManagers act as leader at once: {active:?} (holder {:?} then {:?})",
                before.term, after.term
            ));
        }
        for pod in &active {
            if *pod != before.term.holder && *pod != after.term.holder {
                out.violations.push(format!(
                    "{pod} acts as leader while the HA ConfigMap names {:?} then {:?}",
                    before.term, after.term
                ));
            }
        }
        out.list.push(Sample {
            at: Instant::now(),
            ha: after.clone(),
            acting: active,
        });
        drop(out);
        before = after;
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the leadership after `old`: returns it and the new leader's
/// REST address.
fn wait_new_leader(kube: &Kube, old: &Term) -> (Term, String) {
    let (term, rest) = kube.wait(
        &format!("a new leadership after {old:?}"),
        Duration::from_secs(40),
        || {
            let cm = ha_config_map(kube);
            let term = ha_view_of(&cm).term;
            (!term.holder.is_empty() && term.transitions > old.transitions)
                .then(|| leader_rest(&cm).map(|r| (term, r)))
                .flatten()
        },
    );
    (term, rest)
}

/// Waits until the leader at `rest` runs the job, prints the figure, and
/// checks it restored from the checkpoint the HA ConfigMap pointed to when
/// it took over.
fn wait_running_restored(
    kube: &Kube,
    samples: &Mutex<Samples>,
    old: &Term,
    new: &Term,
    rest: &str,
    since: Instant,
    what: &str,
) {
    let leader = &new.holder;
    kube.wait(
        &format!("the job RUNNING on the new leader {leader}"),
        Duration::from_secs(60),
        || (probe(rest, &format!("/jobs/{JOB}"))?["state"] == "RUNNING").then_some(()),
    );
    eprintln!(
        "figure: JobManager leader {what} -> job RUNNING again: {:.1} s",
        since.elapsed().as_secs_f64()
    );
    let checkpoints = kube.wait(
        "the new leader's checkpoint statistics",
        Duration::from_secs(15),
        || probe(rest, &format!("/jobs/{JOB}/checkpoints")),
    );
    let restored = checkpoints["latest"]["restored"]["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("{leader} restored the job from a checkpoint: {checkpoints}"));
    let own: Vec<u64> = checkpoints["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|c| c["id"].as_u64()).collect())
        .unwrap_or_default();
    // The pointer in the last sample naming the old leader, and in the
    // first naming the new one. A sampler pass takes some 50 ms, far less
    // than the new leader needs to complete a checkpoint of its own, so the
    // latter is the pointer the new leader read when it took over; should
    // the sampler have been starved that long, the new leader's own
    // checkpoint shows up there and only the lower bound is checked.
    let samples = samples.lock().expect("samples");
    let last = samples
        .list
        .iter()
        .rposition(|s| s.ha.term == *old)
        .expect("the sampler saw the old leader holding the ConfigMap");
    let last_old = samples.list[last]
        .ha
        .pointer
        .expect("the old leader published checkpoints");
    let first_new = samples.list[last..]
        .iter()
        .find(|s| s.ha.term == *new)
        .and_then(|s| s.ha.pointer)
        .expect("the sampler saw the new leader holding the ConfigMap");
    drop(samples);
    eprintln!(
        "{leader} restored checkpoint {restored}; pointer {last_old} under {old:?}, {first_new} at the takeover"
    );
    assert!(
        restored >= last_old,
        "{leader} restored checkpoint {restored}, older than {last_old} completed under {old:?}"
    );
    if !own.contains(&first_new) {
        assert_eq!(
            restored, first_new,
            "{leader} restores the latest completed checkpoint"
        );
    }
    kube.wait(
        &format!("the FlinkJob status naming {leader} with the job RUNNING"),
        Duration::from_secs(30),
        || {
            let s = kube.get("fj", NAME)["status"].clone();
            (s["jobManagerLeader"] == leader.as_str() && s["jobState"] == "RUNNING").then_some(())
        },
    );
}

fn jobmanager_pods(kube: &Kube) -> Vec<Value> {
    kube.pods(&format!("app={NAME},component=jobmanager"))
}

#[test]
fn a_standby_jobmanager_takes_over_twice_with_exactly_once_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let job = WindowedSum::prepare(dir, 60_000, 11);
    let out_dir = dir.join("out");
    let checkpoints = dir.join("checkpoints");
    let kube = Kube::start(dir, Duration::from_secs(180));
    kube.install_operator(&[
        ("--lease-duration", "3s"),
        ("--renew-deadline", "2s"),
        ("--retry-period", "500ms"),
        ("--status-refresh", "1s"),
        ("--poll-interval", "300ms"),
    ]);

    // 1. Two JobManagers, one leading; the job runs and checkpoints.
    let applied = Instant::now();
    kube.apply(&flinkjob(
        NAME,
        &job.args(&out_dir, 2000),
        2,
        &checkpoints,
        json!({
            "highAvailability": {"enabled": true, "jobManagerReplicas": 2},
            "flinkConfiguration": {
                "high-availability.kubernetes.leader-election.lease-duration": "3s",
                "high-availability.kubernetes.leader-election.renew-deadline": "2s",
                "high-availability.kubernetes.leader-election.retry-period": "500ms",
            },
        }),
    ));
    kube.wait("2 Ready JobManager pods", Duration::from_secs(60), || {
        (kube.ready(NAME, "jobmanager").len() == 2).then_some(())
    });
    let first_pods: Vec<String> = jobmanager_pods(&kube).iter().map(name_of).collect();
    kube.wait(
        "job RUNNING in the FlinkJob status, naming the leader",
        Duration::from_secs(60),
        || {
            let s = kube.get("fj", NAME)["status"].clone();
            let holder = ha_view_of(&ha_config_map(&kube)).term.holder;
            (s["jobState"] == "RUNNING"
                && first_pods.contains(&holder)
                && s["jobManagerLeader"] == holder.as_str())
            .then_some(())
        },
    );
    eprintln!(
        "figure: kubectl apply -> job RUNNING with 2 JobManagers: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    kube.wait("2 completed checkpoints", Duration::from_secs(30), || {
        (complete_checkpoints(&checkpoints, JOB) >= 2).then_some(())
    });
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let watcher = {
        let (store, stop, samples) = (kube.sim().store().clone(), stop.clone(), samples.clone());
        std::thread::spawn(move || sampler(store, stop, samples))
    };
    let first = kube.wait(
        "the sampler seeing the leader at work",
        Duration::from_secs(15),
        || {
            let s = samples.lock().expect("samples");
            s.list
                .last()
                .filter(|s| s.acting == [s.ha.term.holder.clone()] && s.ha.pointer.is_some())
                .map(|s| s.ha.term.clone())
        },
    );
    eprintln!("{} leads ({first:?})", first.holder);
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "the leader is crashed mid-stream ({} of {} windows already committed)",
        partial.0.len(),
        job.expected.0.len()
    );

    // 2. Crash the leader: it restarts in place, but its new process must
    // not simply renew its predecessor's lease; after the lease runs out a
    // JobManager takes over and restores the job.
    let crashed = Instant::now();
    kube.crash("default", &first.holder);
    let (second, second_rest) = wait_new_leader(&kube, &first);
    let second_elapsed = crashed.elapsed();
    // The lease lasts 3 s from the last renewal (every 500 ms).
    assert!(
        second_elapsed >= Duration::from_secs(2),
        "the lease of the crashed leader ran out before anyone took over ({second_elapsed:?})"
    );
    eprintln!(
        "figure: JobManager leader crashed -> {} {} leading: {:.1} s",
        if second.holder == first.holder {
            "restarted JobManager"
        } else {
            "standby"
        },
        second.holder,
        second_elapsed.as_secs_f64()
    );
    wait_running_restored(
        &kube,
        &samples,
        &first,
        &second,
        &second_rest,
        crashed,
        "crashed",
    );
    let restarted = kube.wait(
        "the crashed JobManager restarted in place",
        Duration::from_secs(30),
        || {
            jobmanager_pods(&kube)
                .into_iter()
                .find(|p| name_of(p) == first.holder && restart_count(p) >= 1 && is_ready(p))
        },
    );
    eprintln!(
        "{} restarted {} time(s); {} leads",
        first.holder,
        restart_count(&restarted),
        second.holder
    );

    // 3. Later, delete the new leader's pod: another JobManager takes over
    // and the Deployment replaces the pod.
    kube.wait(
        "2 checkpoints completed by the new leader",
        Duration::from_secs(30),
        || {
            let c = probe(&second_rest, &format!("/jobs/{JOB}/checkpoints"))?;
            (c["counts"]["completed"].as_u64()? >= 2).then_some(())
        },
    );
    let partial = output(&out_dir);
    assert!(
        partial.0.len() < job.expected.0.len(),
        "the second leader is deleted mid-stream ({} of {} windows already committed)",
        partial.0.len(),
        job.expected.0.len()
    );
    let before: Vec<String> = jobmanager_pods(&kube).iter().map(name_of).collect();
    let deleted = Instant::now();
    kube.ok(&["delete", "pod", &second.holder, "--wait=false"]);
    let (third, third_rest) = wait_new_leader(&kube, &second);
    assert_ne!(third.holder, second.holder, "a deleted pod does not lead");
    eprintln!(
        "figure: JobManager leader pod deleted -> {} {} leading: {:.1} s",
        if before.contains(&third.holder) {
            "standby"
        } else {
            "replacement pod"
        },
        third.holder,
        deleted.elapsed().as_secs_f64()
    );
    wait_running_restored(
        &kube,
        &samples,
        &second,
        &third,
        &third_rest,
        deleted,
        "pod deleted",
    );
    let replacement = kube.wait(
        "a replacement JobManager pod Ready",
        Duration::from_secs(60),
        || {
            kube.ready(NAME, "jobmanager")
                .into_iter()
                .map(|p| name_of(&p))
                .find(|n| !before.contains(n))
        },
    );
    eprintln!(
        "figure: JobManager pod deleted -> replacement {replacement} Ready: {:.1} s",
        deleted.elapsed().as_secs_f64()
    );
    kube.wait("2 JobManager pods again", Duration::from_secs(30), || {
        let pods = jobmanager_pods(&kube);
        (pods.len() == 2 && pods.iter().all(is_ready)).then_some(())
    });

    // 4. The job finishes with exactly the uninterrupted output.
    kube.wait(
        "job FINISHED in the FlinkJob status",
        Duration::from_secs(90),
        || (kube.get("fj", NAME)["status"]["jobState"] == "FINISHED").then_some(()),
    );
    eprintln!("{}", kube.ok(&["get", "fj", NAME]));
    eprintln!(
        "figure: kubectl apply -> job FINISHED: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("sampler");
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    assert!(
        samples.violations.is_empty(),
        "never two leaders: {:#?}",
        samples.violations
    );
    // The leaderships the sampler saw at work, in turn.
    let mut terms: Vec<Term> = Vec::new();
    for s in &samples.list {
        if s.acting == [s.ha.term.holder.clone()] && terms.last() != Some(&s.ha.term) {
            terms.push(s.ha.term.clone());
        }
    }
    let from_crash = terms
        .iter()
        .position(|t| *t == first)
        .map_or(&[][..], |i| &terms[i..]);
    let span = samples
        .list
        .last()
        .zip(samples.list.first())
        .map_or(0.0, |(l, f)| l.at.duration_since(f.at).as_secs_f64());
    eprintln!(
        "{} samples over {span:.1} s; leaderships at work in turn: {terms:?}",
        samples.list.len()
    );
    assert_eq!(
        from_crash,
        [first, second, third],
        "the sampler saw each leader at work, one after the other"
    );
    assert_same(
        &output(&out_dir),
        &job.expected,
        "after a crashed and a deleted JobManager leader",
    );

    // 5. Deleting the FlinkJob removes pods, Services and HA ConfigMaps.
    delete_and_check_cleanup(&kube, "fj", NAME);
    kube.stop();
}
