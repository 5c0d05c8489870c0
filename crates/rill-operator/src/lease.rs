//! The operator's own leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Two operator replicas must never both act on the same resources. The
//! rules are the same pure [`crate::election::decide`] the JobManagers use;
//! this module only maps a Lease to a [`LeaderRecord`] and back and writes
//! it with the resourceVersion it read. Leadership is published on a
//! `watch` channel; the operator runs its controllers only while it reads
//! `true`, and steps down when it cannot renew within the renew deadline.
//! On shutdown the leader releases the Lease (empty holder) so a standby
//! takes over at once instead of waiting for expiry.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use crate::election::{decide, must_step_down, Decision, ElectionTiming, LeaderRecord};
use crate::{Error, Result};

/// Lease ⇄ record.
pub fn record_from_lease(spec: &LeaseSpec) -> Option<LeaderRecord> {
    let holder = spec.holder_identity.clone()?;
    let time = |t: &Option<MicroTime>| t.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
    Some(LeaderRecord {
        holder_identity: holder,
        lease_duration_seconds: spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0),
        acquire_time: time(&spec.acquire_time),
        renew_time: time(&spec.renew_time),
        leader_transitions: spec
            .lease_transitions
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(0),
    })
}

/// Record → Lease spec (times that do not parse are left out).
pub fn lease_spec_from_record(r: &LeaderRecord) -> LeaseSpec {
    let time = |s: &str| s.parse::<Timestamp>().ok().map(MicroTime);
    LeaseSpec {
        holder_identity: Some(r.holder_identity.clone()),
        lease_duration_seconds: i32::try_from(r.lease_duration_seconds).ok(),
        acquire_time: time(&r.acquire_time),
        renew_time: time(&r.renew_time),
        lease_transitions: i32::try_from(r.leader_transitions).ok(),
        ..Default::default()
    }
}

/// One operator replica's elector.
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: ElectionTiming,
}

enum Step {
    Leading,
    Following,
    Conflict,
}

impl LeaseElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: ElectionTiming) -> Self {
        LeaseElector {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    async fn step(&self) -> Result<Step> {
        let current = self.api.get_opt(&self.name).await?;
        let record = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(record_from_lease);
        let decision = decide(
            record.as_ref(),
            &self.identity,
            Timestamp::now(),
            self.timing.lease_duration,
        );
        let new = match decision {
            Decision::Follow { .. } => return Ok(Step::Following),
            Decision::Acquire(r) | Decision::Renew(r) => r,
        };
        let result = match current {
            None => {
                let mut lease = Lease::default();
                lease.metadata.name = Some(self.name.clone());
                lease.spec = Some(lease_spec_from_record(&new));
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(lease_spec_from_record(&new));
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result.map_err(Error::from) {
            Ok(_) => Ok(Step::Leading),
            Err(e) if e.is_conflict() => Ok(Step::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica holds it.
    pub async fn release(&self) -> Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(self.identity.as_str()) {
            return Ok(());
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some(String::new());
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Campaigns and renews until `stop` turns true, publishing leadership
    /// on `leading`; releases the Lease on the way out.
    pub async fn run(self, leading: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
        let deadline = self.timing.renew_deadline;
        let mut last_ok: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            // A leader's renewal, and its pause before the next, never run
            // past the moment it must step down: by then another replica
            // may take the Lease, and two must never act at once.
            let budget = renewal_budget(last_ok, Instant::now(), deadline);
            let started = Instant::now();
            let outcome = tokio::time::timeout(budget, self.step()).await;
            match outcome {
                Ok(Ok(Step::Leading)) => {
                    if last_ok.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.name, "became the operator leader");
                    }
                    last_ok = Some(started);
                    publish(&leading, true);
                }
                Ok(Ok(Step::Following)) => {
                    if last_ok.take().is_some() {
                        tracing::warn!(identity = %self.identity, "operator leadership taken over");
                    }
                    publish(&leading, false);
                }
                Ok(Ok(Step::Conflict)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(identity = %self.identity, error = %e, "lease election step failed")
                }
                Err(_) => {
                    tracing::warn!(identity = %self.identity, "lease election step timed out")
                }
            }
            if let Some(t) = last_ok {
                if must_step_down(t, Instant::now(), deadline) {
                    tracing::warn!(identity = %self.identity, "could not renew the lease in time; stepping down");
                    last_ok = None;
                    publish(&leading, false);
                }
            }
            let pause = match last_ok {
                Some(_) => {
                    self.timing
                        .retry_period
                        .min(renewal_budget(last_ok, Instant::now(), deadline))
                }
                None => self.timing.retry_period.min(Duration::from_secs(2)),
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        publish(&leading, false);
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "releasing the operator lease failed");
        }
    }
}

/// How long the next renewal may take: a leader has until `renew_deadline`
/// after the start of its last successful renewal, a candidate a whole
/// `renew_deadline`.
fn renewal_budget(last_ok: Option<Instant>, now: Instant, renew_deadline: Duration) -> Duration {
    match last_ok {
        Some(t) => (t + renew_deadline).saturating_duration_since(now),
        None => renew_deadline,
    }
}

/// Publishes leadership only when it changes, so every change a follower
/// sees is a real transition (a renewal is not news).
fn publish(leading: &watch::Sender<bool>, now: bool) {
    leading.send_if_modified(|l| std::mem::replace(l, now) != now);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_and_record_convert_both_ways() {
        let r = decide(
            None,
            "op-1",
            Timestamp::from_second(1_700_000_000).expect("ts"),
            Duration::from_secs(15),
        )
        .record()
        .cloned()
        .expect("record");
        let spec = lease_spec_from_record(&r);
        assert_eq!(spec.holder_identity.as_deref(), Some("op-1"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        let back = record_from_lease(&spec).expect("record");
        assert_eq!(back.holder_identity, "op-1");
        assert_eq!(back.leader_transitions, 0);
        assert!(back.is_valid_at(Timestamp::from_second(1_700_000_010).expect("ts")));
        assert!(!back.is_valid_at(Timestamp::from_second(1_700_000_015).expect("ts")));
        assert!(record_from_lease(&LeaseSpec::default()).is_none());
    }

    #[test]
    fn a_leader_never_renews_or_waits_past_its_deadline() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        assert_eq!(
            renewal_budget(None, t0, d),
            d,
            "a candidate has the whole deadline"
        );
        assert_eq!(
            renewal_budget(Some(t0), t0 + Duration::from_secs(5), d),
            Duration::from_secs(10)
        );
        assert_eq!(
            renewal_budget(Some(t0), t0 + Duration::from_secs(20), d),
            Duration::ZERO
        );
        assert!(must_step_down(t0, t0 + d, d));
    }

    #[test]
    fn only_changes_of_leadership_are_published() {
        let (tx, mut rx) = watch::channel(false);
        rx.borrow_and_update();
        publish(&tx, true);
        assert!(rx.has_changed().expect("open"));
        assert!(*rx.borrow_and_update());
        publish(&tx, true);
        assert!(
            !rx.has_changed().expect("open"),
            "a renewal is not a change"
        );
        publish(&tx, false);
        assert!(rx.has_changed().expect("open"));
    }
}
