//! JobManager high availability on Kubernetes: ConfigMap leader election
//! and job pointers ([`KubernetesHa`]).
//!
//! Like Flink since 1.15, one ConfigMap per cluster,
//! `<cluster-id>-cluster-config-map` (labels `app=<cluster-id>`,
//! `configmap-type=high-availability`, `type=rill-native-kubernetes`),
//! holds everything:
//!
//! - annotation `control-plane.alpha.kubernetes.io/leader`: the
//!   [`LeaderRecord`] JSON (holder, lease duration, acquire/renew time,
//!   transitions);
//! - `address`: the leader's [`LeaderAddress`] JSON;
//! - `job-<job-id>`: a [`StoredJob`] JSON;
//! - `checkpoint-<job-id>`: the latest [`CheckpointPointer`] JSON;
//! - `checkpoint-counter-<job-id>`: the next checkpoint id.
//!
//! Keeping pointers beside the leader record is what makes fencing real:
//! every write is a replace carrying the resourceVersion it read, and it is
//! only attempted when that version still names this JobManager as holder.
//! A candidate taking over changes the record (and the version), so a
//! deposed leader's write fails with 409, re-reads, sees another holder,
//! revokes its [`Leadership`] and refuses. The ConfigMap is not owned by the
//! JobManager Deployment: deleting the Deployment keeps the HA data, and a
//! new cluster with the same id recovers the jobs. The operator's finalizer
//! removes it when the custom resource is deleted.
//!
//! The runtime's traits are blocking; [`KubernetesHa`] owns a small tokio
//! runtime (one worker thread, named `rill-k8s-ha`) where all API calls and
//! the background renewal run, so any thread may call it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use rill_runtime::cluster::services::{
    CheckpointPointer, HighAvailability, LeaderAddress, Leadership, StoredJob,
};
use rill_runtime::RuntimeError;

use crate::bridge::Bridge;
use crate::config::{
    duration_key, namespace_of, required_key, KEY_CLUSTER_ID, KEY_LEASE_DURATION,
    KEY_RENEW_DEADLINE, KEY_RETRY_PERIOD,
};
use crate::election::{
    decide, decide_as_contender, must_step_down, Decision, ElectionTiming, LeaderRecord,
};
use crate::{Error, Result};

/// The leader annotation (client-go and Flink use the same key).
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// Label marking HA ConfigMaps (`configmap-type=high-availability`).
pub const HA_LABEL: &str = "configmap-type";
pub const HA_LABEL_VALUE: &str = "high-availability";
/// Data key of the leader's address.
pub const ADDRESS_KEY: &str = "address";

/// `<cluster-id>-cluster-config-map`.
pub fn cluster_config_map_name(cluster_id: &str) -> String {
    format!("{cluster_id}-cluster-config-map")
}

/// The label selector of a cluster's HA ConfigMaps.
pub fn ha_selector(cluster_id: &str) -> String {
    format!("app={cluster_id},{HA_LABEL}={HA_LABEL_VALUE}")
}

fn job_key(job_id: &str) -> String {
    format!("job-{job_id}")
}
fn checkpoint_key(job_id: &str) -> String {
    format!("checkpoint-{job_id}")
}
fn counter_key(job_id: &str) -> String {
    format!("checkpoint-counter-{job_id}")
}

fn check_job_id(job_id: &str) -> Result<()> {
    let ok = !job_id.is_empty()
        && job_id.len() <= 200
        && job_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "job id '{job_id}' cannot be a ConfigMap key"
        )))
    }
}

/// Where the HA ConfigMap lives and how the election is timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaSettings {
    pub namespace: String,
    pub cluster_id: String,
    pub timing: ElectionTiming,
}

impl HaSettings {
    /// From Flink-style configuration: `kubernetes.cluster-id` (required),
    /// `kubernetes.namespace` (else `POD_NAMESPACE`, else the service
    /// account's namespace, else `default`) and
    /// `high-availability.kubernetes.leader-election.{lease-duration,
    /// renew-deadline,retry-period}` (15 s, 15 s, 5 s).
    pub fn from_flink_config(conf: &BTreeMap<String, String>) -> Result<Self> {
        let defaults = ElectionTiming::default();
        let timing = ElectionTiming {
            lease_duration: duration_key(conf, KEY_LEASE_DURATION, defaults.lease_duration)?,
            renew_deadline: duration_key(conf, KEY_RENEW_DEADLINE, defaults.renew_deadline)?,
            retry_period: duration_key(conf, KEY_RETRY_PERIOD, defaults.retry_period)?,
        };
        if timing.retry_period.is_zero() || timing.renew_deadline > timing.lease_duration {
            return Err(Error::Config(format!(
                "leader election needs 0 < retry-period and renew-deadline <= lease-duration, got {timing:?}"
            )));
        }
        Ok(HaSettings {
            namespace: namespace_of(conf),
            cluster_id: required_key(conf, KEY_CLUSTER_ID)?.to_string(),
            timing,
        })
    }
}

#[derive(Clone)]
struct Store {
    api: Api<ConfigMap>,
    name: String,
    cluster_id: String,
    timing: ElectionTiming,
}

enum Attempt {
    /// The record now names me (acquired or renewed).
    Leading,
    /// Someone else holds a valid lease.
    Following(String),
    /// Lost a write race; read again.
    Conflict,
}

impl Store {
    async fn get(&self) -> Result<Option<ConfigMap>> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        [
            ("app".to_string(), self.cluster_id.clone()),
            (HA_LABEL.to_string(), HA_LABEL_VALUE.to_string()),
            ("type".to_string(), "rill-native-kubernetes".to_string()),
        ]
        .into()
    }

    fn record_of(cm: &ConfigMap) -> Option<LeaderRecord> {
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(LEADER_ANNOTATION))
            .and_then(|v| serde_json::from_str(v).ok())
    }

    /// One election step: read, decide, write with the read version.
    /// `address` is `Some` while contending and `None` when renewing. A
    /// contender never renews a record naming its identity (see
    /// [`decide_as_contender`]); a renewal never re-creates a deleted
    /// ConfigMap: its deletion means the cluster's HA data was removed on
    /// purpose.
    async fn attempt(&self, me: &str, address: Option<&LeaderAddress>) -> Result<Attempt> {
        let current = self.get().await?;
        if current.is_none() && address.is_none() {
            return Ok(Attempt::Following(String::new()));
        }
        let record = current.as_ref().and_then(Self::record_of);
        let rule = if address.is_some() {
            decide_as_contender
        } else {
            decide
        };
        let decision = rule(
            record.as_ref(),
            me,
            Timestamp::now(),
            self.timing.lease_duration,
        );
        let new_record = match decision {
            Decision::Follow { holder, .. } => return Ok(Attempt::Following(holder)),
            Decision::Acquire(r) | Decision::Renew(r) => r,
        };
        let record_json = serde_json::to_string(&new_record)?;
        let address_json = address.map(serde_json::to_string).transpose()?;
        let result = match current {
            None => {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(self.name.clone());
                cm.metadata.labels = Some(self.labels());
                cm.metadata.annotations =
                    Some([(LEADER_ANNOTATION.to_string(), record_json)].into());
                if let Some(a) = address_json {
                    cm.data = Some([(ADDRESS_KEY.to_string(), a)].into());
                }
                self.api
                    .create(&PostParams::default(), &cm)
                    .await
                    .map(|_| ())
            }
            Some(mut cm) => {
                cm.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(LEADER_ANNOTATION.to_string(), record_json);
                if let Some(a) = address_json {
                    cm.data
                        .get_or_insert_with(BTreeMap::new)
                        .insert(ADDRESS_KEY.to_string(), a);
                }
                self.api
                    .replace(&self.name, &PostParams::default(), &cm)
                    .await
                    .map(|_| ())
            }
        };
        match result.map_err(Error::from) {
            Ok(()) => Ok(Attempt::Leading),
            Err(e) if e.is_conflict() => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Applies `change` to the data, only while the record names the
    /// leadership's holder, with resourceVersion-guarded retries.
    async fn guarded_update<F>(&self, leadership: &Leadership, change: F) -> Result<()>
    where
        F: Fn(&mut BTreeMap<String, String>) -> Result<()>,
    {
        for _ in 0..16 {
            if !leadership.is_leader() {
                return Err(Error::NotLeader(leadership.identity().to_string()));
            }
            let Some(mut cm) = self.get().await? else {
                leadership.revoke();
                return Err(Error::NotLeader(leadership.identity().to_string()));
            };
            let holder = Self::record_of(&cm).map(|r| r.holder_identity);
            if holder.as_deref() != Some(leadership.identity()) {
                tracing::warn!(
                    me = leadership.identity(),
                    holder = ?holder,
                    "HA write refused: another JobManager holds the leadership"
                );
                leadership.revoke();
                return Err(Error::NotLeader(leadership.identity().to_string()));
            }
            change(cm.data.get_or_insert_with(BTreeMap::new))?;
            match self
                .api
                .replace(&self.name, &PostParams::default(), &cm)
                .await
                .map_err(Error::from)
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Internal(format!(
            "HA ConfigMap {} kept changing under 16 write attempts",
            self.name
        )))
    }

    /// Keeps renewing until renewal fails for `renew_deadline`, another
    /// holder shows up, or the leadership is revoked elsewhere.
    async fn renew_loop(self, leadership: Leadership, mut last_ok: Instant) {
        let me = leadership.identity().to_string();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            if !leadership.is_leader() {
                return;
            }
            let started = Instant::now();
            let budget = self
                .timing
                .renew_deadline
                .saturating_sub(started.saturating_duration_since(last_ok));
            let outcome = tokio::time::timeout(budget, async {
                loop {
                    match self.attempt(&me, None).await {
                        Ok(Attempt::Conflict) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        other => return other,
                    }
                }
            })
            .await;
            match outcome {
                Ok(Ok(Attempt::Leading)) => last_ok = started,
                Ok(Ok(Attempt::Following(holder))) => {
                    tracing::warn!(%me, %holder, "leadership taken over; revoking");
                    leadership.revoke();
                    return;
                }
                Ok(Ok(Attempt::Conflict)) => {}
                Ok(Err(e)) => tracing::warn!(%me, error = %e, "renewing leadership failed"),
                Err(_) => tracing::warn!(%me, "renewing leadership timed out"),
            }
            if must_step_down(last_ok, Instant::now(), self.timing.renew_deadline) {
                tracing::warn!(%me, "could not renew leadership before the deadline; revoking");
                leadership.revoke();
                return;
            }
        }
    }
}

/// ConfigMap-based [`HighAvailability`] for JobManagers on Kubernetes.
pub struct KubernetesHa {
    settings: HaSettings,
    store: Store,
    bridge: Arc<Bridge>,
}

impl KubernetesHa {
    /// Connects with `config` (see [`kube::Config::infer`] or a kubeconfig)
    /// and elects in `settings.namespace` for `settings.cluster_id`.
    pub fn new(config: kube::Config, settings: HaSettings) -> Result<Self> {
        let bridge = Arc::new(Bridge::new("rill-k8s-ha", 1)?);
        let client = bridge.run(async move { Client::try_from(config) })??;
        Ok(Self::with_bridge(bridge, client, settings))
    }

    /// From Flink-style configuration (see [`HaSettings::from_flink_config`]),
    /// connecting in-cluster or through `KUBECONFIG`.
    pub fn from_flink_config(conf: &BTreeMap<String, String>) -> Result<Self> {
        let settings = HaSettings::from_flink_config(conf)?;
        let bridge = Arc::new(Bridge::new("rill-k8s-ha", 1)?);
        let client = bridge.run(async move {
            let config = kube::Config::infer()
                .await
                .map_err(|e| Error::Config(format!("no Kubernetes configuration: {e}")))?;
            Client::try_from(config).map_err(Error::from)
        })??;
        Ok(Self::with_bridge(bridge, client, settings))
    }

    fn with_bridge(bridge: Arc<Bridge>, client: Client, settings: HaSettings) -> Self {
        let store = Store {
            api: Api::namespaced(client, &settings.namespace),
            name: cluster_config_map_name(&settings.cluster_id),
            cluster_id: settings.cluster_id.clone(),
            timing: settings.timing,
        };
        KubernetesHa {
            settings,
            store,
            bridge,
        }
    }

    pub fn settings(&self) -> &HaSettings {
        &self.settings
    }

    /// Name of the cluster ConfigMap.
    pub fn config_map_name(&self) -> &str {
        &self.store.name
    }

    /// The leader record as stored now.
    pub fn leader_record(&self) -> Result<Option<LeaderRecord>> {
        let store = self.store.clone();
        self.bridge
            .run(async move { Ok(store.get().await?.as_ref().and_then(Store::record_of)) })?
    }

    /// Deletes the cluster's HA ConfigMaps (everything labelled for the
    /// cluster): its jobs will not be recovered.
    pub fn clear(&self) -> Result<()> {
        let store = self.store.clone();
        self.bridge.run(async move {
            let lp = ListParams::default().labels(&ha_selector(&store.cluster_id));
            for cm in store.api.list(&lp).await?.items {
                if let Some(name) = cm.metadata.name {
                    match store.api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Ok(())
        })?
    }

    fn read_data(&self) -> Result<BTreeMap<String, String>> {
        let store = self.store.clone();
        self.bridge.run(async move {
            Ok(store
                .get()
                .await?
                .and_then(|cm| cm.data)
                .unwrap_or_default())
        })?
    }

    fn update<F>(&self, leadership: &Leadership, change: F) -> Result<()>
    where
        F: Fn(&mut BTreeMap<String, String>) -> Result<()> + Send + 'static,
    {
        leadership
            .check()
            .map_err(|_| Error::NotLeader(leadership.identity().into()))?;
        let store = self.store.clone();
        let leadership = leadership.clone();
        self.bridge
            .run(async move { store.guarded_update(&leadership, change).await })?
    }
}

impl HighAvailability for KubernetesHa {
    fn acquire_leadership(
        &self,
        identity: &str,
        address: &LeaderAddress,
    ) -> Result<Leadership, RuntimeError> {
        let store = self.store.clone();
        let me = identity.to_string();
        let addr = address.clone();
        let started = self.bridge.run(async move {
            let mut logged_holder = String::new();
            loop {
                let started = Instant::now();
                match store.attempt(&me, Some(&addr)).await {
                    Ok(Attempt::Leading) => return started,
                    Ok(Attempt::Conflict) => continue,
                    Ok(Attempt::Following(holder)) => {
                        if holder != logged_holder {
                            tracing::info!(%me, %holder, "standing by; another JobManager leads");
                            logged_holder = holder;
                        }
                    }
                    Err(e) => tracing::warn!(%me, error = %e, "leader election attempt failed"),
                }
                tokio::time::sleep(store.timing.retry_period).await;
            }
        })?;
        tracing::info!(identity, cluster = %self.settings.cluster_id, "acquired JobManager leadership");
        let leadership = Leadership::new(identity);
        self.bridge
            .handle()
            .spawn(self.store.clone().renew_loop(leadership.clone(), started));
        Ok(leadership)
    }

    fn leader(&self) -> Result<Option<LeaderAddress>, RuntimeError> {
        let store = self.store.clone();
        let found = self.bridge.run(async move {
            let Some(cm) = store.get().await? else {
                return Ok::<_, Error>(None);
            };
            let valid = Store::record_of(&cm).is_some_and(|r| r.is_valid_at(Timestamp::now()));
            let address = cm
                .data
                .as_ref()
                .and_then(|d| d.get(ADDRESS_KEY))
                .map(|a| serde_json::from_str::<LeaderAddress>(a))
                .transpose()?;
            Ok(address.filter(|_| valid))
        })??;
        Ok(found)
    }

    fn jobs(&self) -> Result<Vec<StoredJob>, RuntimeError> {
        let data = self.read_data()?;
        let mut jobs = Vec::new();
        for (k, v) in &data {
            if k.starts_with("job-") {
                jobs.push(serde_json::from_str(v).map_err(Error::from)?);
            }
        }
        Ok(jobs)
    }

    fn put_job(&self, leadership: &Leadership, job: &StoredJob) -> Result<(), RuntimeError> {
        check_job_id(&job.job_id)?;
        let key = job_key(&job.job_id);
        let value = serde_json::to_string(job).map_err(Error::from)?;
        Ok(self.update(leadership, move |data| {
            data.insert(key.clone(), value.clone());
            Ok(())
        })?)
    }

    fn remove_job(&self, leadership: &Leadership, job_id: &str) -> Result<(), RuntimeError> {
        check_job_id(job_id)?;
        let keys = [job_key(job_id), checkpoint_key(job_id), counter_key(job_id)];
        Ok(self.update(leadership, move |data| {
            for k in &keys {
                data.remove(k);
            }
            Ok(())
        })?)
    }

    fn put_checkpoint(
        &self,
        leadership: &Leadership,
        job_id: &str,
        pointer: &CheckpointPointer,
    ) -> Result<(), RuntimeError> {
        check_job_id(job_id)?;
        let (ckey, nkey) = (checkpoint_key(job_id), counter_key(job_id));
        let pointer = pointer.clone();
        let value = serde_json::to_string(&pointer).map_err(Error::from)?;
        Ok(self.update(leadership, move |data| {
            let newer = match data.get(&ckey) {
                Some(old) => serde_json::from_str::<CheckpointPointer>(old)
                    .map_or(true, |old| pointer.id >= old.id),
                None => true,
            };
            if newer {
                data.insert(ckey.clone(), value.clone());
                data.insert(nkey.clone(), (pointer.id + 1).to_string());
            }
            Ok(())
        })?)
    }

    fn latest_checkpoint(&self, job_id: &str) -> Result<Option<CheckpointPointer>, RuntimeError> {
        check_job_id(job_id)?;
        let data = self.read_data()?;
        Ok(data
            .get(&checkpoint_key(job_id))
            .map(|v| serde_json::from_str(v))
            .transpose()
            .map_err(Error::from)?)
    }
}
