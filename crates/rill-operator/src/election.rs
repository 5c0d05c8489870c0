//! Leader-election rules, pure.
//!
//! JobManager HA (a ConfigMap annotation) and the operator (a
//! `coordination.k8s.io/v1` Lease) elect leaders the same way client-go and
//! Flink do: a record names the holder, when it acquired and last renewed,
//! for how long the lease is valid and how often leadership changed hands.
//! Whoever reads the record decides with [`decide`] what to write back; the
//! write itself is guarded by the object's resourceVersion, so of two
//! candidates acting on the same record only one succeeds. Keeping the rules
//! free of I/O lets them be tested exhaustively; the Kubernetes edges live
//! in [`crate::ha`] and [`crate::lease`].
//!
//! Timing: a leader renews every `retry_period`; it gives up (revokes its
//! leadership) when `renew_deadline` has passed since the start of its last
//! successful renewal ([`must_step_down`]). A candidate takes over only when
//! `renew_time + lease_duration` has passed by its own clock. With
//! `renew_deadline <= lease_duration` the old leader stops acting before
//! anyone may take over; the resourceVersion guard on every write keeps
//! commits exclusive even when clocks disagree.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The leader annotation's value (client-go's `LeaderElectionRecord`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    pub holder_identity: String,
    pub lease_duration_seconds: u64,
    /// RFC 3339.
    pub acquire_time: String,
    /// RFC 3339.
    pub renew_time: String,
    #[serde(default)]
    pub leader_transitions: u32,
}

impl LeaderRecord {
    /// When the lease runs out, or `None` when the times are unreadable
    /// (such a record counts as expired).
    pub fn expires_at(&self) -> Option<Timestamp> {
        let renew: Timestamp = self.renew_time.parse().ok()?;
        let lease = k8s_openapi::jiff::SignedDuration::from_secs(
            i64::try_from(self.lease_duration_seconds).ok()?,
        );
        renew.checked_add(lease).ok()
    }

    /// Whether the lease is still valid at `now`.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        !self.holder_identity.is_empty() && self.expires_at().is_some_and(|end| now < end)
    }
}

/// What a candidate should do after reading the current record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Become the leader: write this record (a new holder).
    Acquire(LeaderRecord),
    /// Already the leader: write this record to extend the lease.
    Renew(LeaderRecord),
    /// Someone else holds a valid lease; try again later.
    Follow {
        holder: String,
        expires_at: Option<Timestamp>,
    },
}

impl Decision {
    /// The record to write, if any.
    pub fn record(&self) -> Option<&LeaderRecord> {
        match self {
            Decision::Acquire(r) | Decision::Renew(r) => Some(r),
            Decision::Follow { .. } => None,
        }
    }
}

/// Whole seconds covering `d` (at least one), as records store them.
pub fn lease_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// The election rule: given the current record (if any), the time and my
/// identity, what to write.
///
/// - no record, or an empty holder: acquire;
/// - my own record: renew (acquire time and transitions kept);
/// - someone else's unexpired record: follow;
/// - someone else's expired (or unreadable) record: take over, counting one
///   more leader transition.
pub fn decide(
    current: Option<&LeaderRecord>,
    me: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Decision {
    let stamp = now.to_string();
    let fresh = |transitions: u32| LeaderRecord {
        holder_identity: me.to_string(),
        lease_duration_seconds: lease_seconds(lease_duration),
        acquire_time: stamp.clone(),
        renew_time: stamp.clone(),
        leader_transitions: transitions,
    };
    match current {
        None => Decision::Acquire(fresh(0)),
        Some(r) if r.holder_identity.is_empty() => {
            Decision::Acquire(fresh(r.leader_transitions.saturating_add(1)))
        }
        Some(r) if r.holder_identity == me => Decision::Renew(LeaderRecord {
            lease_duration_seconds: lease_seconds(lease_duration),
            renew_time: stamp.clone(),
            ..r.clone()
        }),
        Some(r) if r.is_valid_at(now) => Decision::Follow {
            holder: r.holder_identity.clone(),
            expires_at: r.expires_at(),
        },
        Some(r) => Decision::Acquire(fresh(r.leader_transitions.saturating_add(1))),
    }
}

/// The election rule for a contender that does not lead yet (a process
/// that has just started): like [`decide`], except that a record naming
/// `me` is not renewed. It was written by an earlier process with the same
/// identity (a container restarted in place keeps its pod name), so it is
/// treated like anyone else's: followed until it expires, then taken over
/// as a new leadership. Otherwise a leader that crashes and restarts within
/// its lease would skip the election and keep the leadership from the
/// standbys, however often it crashed.
pub fn decide_as_contender(
    current: Option<&LeaderRecord>,
    me: &str,
    now: Timestamp,
    lease_duration: Duration,
) -> Decision {
    match current {
        Some(r) if r.holder_identity == me => {
            let mut predecessor = r.clone();
            predecessor.holder_identity.clear();
            if r.is_valid_at(now) {
                Decision::Follow {
                    holder: r.holder_identity.clone(),
                    expires_at: r.expires_at(),
                }
            } else {
                decide(Some(&predecessor), me, now, lease_duration)
            }
        }
        other => decide(other, me, now, lease_duration),
    }
}

/// Whether a leader whose last successful renewal *started* at
/// `last_renew_started` must give up at `now` (it could not renew within
/// `renew_deadline`).
pub fn must_step_down(last_renew_started: Instant, now: Instant, renew_deadline: Duration) -> bool {
    now.saturating_duration_since(last_renew_started) >= renew_deadline
}

/// Timing of an elector, Flink's keys and defaults:
/// `high-availability.kubernetes.leader-election.lease-duration` (15 s),
/// `.renew-deadline` (15 s) and `.retry-period` (5 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Default for ElectionTiming {
    fn default() -> Self {
        ElectionTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(15),
            retry_period: Duration::from_secs(5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("timestamp")
    }

    const LEASE: Duration = Duration::from_secs(15);

    #[test]
    fn acquires_when_there_is_no_record() {
        let d = decide(None, "a", at(0), LEASE);
        let Decision::Acquire(r) = d else {
            panic!("expected acquire, got {d:?}")
        };
        assert_eq!(r.holder_identity, "a");
        assert_eq!(r.leader_transitions, 0);
        assert_eq!(r.lease_duration_seconds, 15);
        assert_eq!(r.acquire_time, r.renew_time);
        assert!(r.is_valid_at(at(14)));
        assert!(!r.is_valid_at(at(15)));
    }

    #[test]
    fn acquires_a_released_record_counting_a_transition() {
        let mut r = decide(None, "a", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        r.holder_identity.clear();
        let Decision::Acquire(n) = decide(Some(&r), "b", at(1), LEASE) else {
            panic!("expected acquire")
        };
        assert_eq!(n.holder_identity, "b");
        assert_eq!(n.leader_transitions, 1);
    }

    #[test]
    fn renews_its_own_record_keeping_acquire_time_and_transitions() {
        let mut r = decide(None, "a", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        r.leader_transitions = 4;
        let Decision::Renew(n) = decide(Some(&r), "a", at(10), LEASE) else {
            panic!("expected renew")
        };
        assert_eq!(n.acquire_time, r.acquire_time);
        assert_eq!(n.renew_time, at(10).to_string());
        assert_eq!(n.leader_transitions, 4);
        // Renewing even after expiry is still a renewal of my own lease.
        assert!(matches!(
            decide(Some(&r), "a", at(100), LEASE),
            Decision::Renew(_)
        ));
    }

    #[test]
    fn follows_an_unexpired_leader() {
        let r = decide(None, "a", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        for t in [0, 1, 14] {
            match decide(Some(&r), "b", at(t), LEASE) {
                Decision::Follow { holder, expires_at } => {
                    assert_eq!(holder, "a");
                    assert_eq!(expires_at, Some(at(15)));
                }
                other => panic!("t={t}: expected follow, got {other:?}"),
            }
        }
    }

    #[test]
    fn takes_over_an_expired_lease_and_counts_transitions() {
        let r0 = decide(None, "a", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        let Decision::Acquire(r1) = decide(Some(&r0), "b", at(15), LEASE) else {
            panic!("expected takeover at expiry")
        };
        assert_eq!(r1.holder_identity, "b");
        assert_eq!(r1.leader_transitions, 1);
        assert_eq!(r1.acquire_time, at(15).to_string());
        let Decision::Acquire(r2) = decide(Some(&r1), "a", at(40), LEASE) else {
            panic!("expected takeover back")
        };
        assert_eq!(r2.leader_transitions, 2);
    }

    #[test]
    fn the_holders_lease_duration_decides_expiry() {
        // The record says 30 s even though this candidate is configured
        // with 15 s: the holder's promise counts.
        let mut r = decide(None, "a", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        r.lease_duration_seconds = 30;
        assert!(matches!(
            decide(Some(&r), "b", at(20), LEASE),
            Decision::Follow { .. }
        ));
        assert!(matches!(
            decide(Some(&r), "b", at(30), LEASE),
            Decision::Acquire(_)
        ));
    }

    #[test]
    fn an_unreadable_record_counts_as_expired() {
        let r = LeaderRecord {
            holder_identity: "a".into(),
            lease_duration_seconds: 15,
            acquire_time: "yesterday".into(),
            renew_time: "yesterday".into(),
            leader_transitions: 2,
        };
        let Decision::Acquire(n) = decide(Some(&r), "b", at(0), LEASE) else {
            panic!("expected acquire")
        };
        assert_eq!(n.leader_transitions, 3);
    }

    #[test]
    fn a_restarted_contender_waits_out_its_predecessors_lease() {
        let r = decide(None, "jm-0", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        for t in [0, 1, 14] {
            match decide_as_contender(Some(&r), "jm-0", at(t), LEASE) {
                Decision::Follow { holder, expires_at } => {
                    assert_eq!(holder, "jm-0");
                    assert_eq!(expires_at, Some(at(15)));
                }
                other => panic!("t={t}: expected follow, got {other:?}"),
            }
        }
        let Decision::Acquire(n) = decide_as_contender(Some(&r), "jm-0", at(15), LEASE) else {
            panic!("expected a new leadership at expiry")
        };
        assert_eq!(n.holder_identity, "jm-0");
        assert_eq!(n.leader_transitions, 1);
        assert_eq!(n.acquire_time, at(15).to_string());
        // Anyone else's record, or none, is decided as usual.
        assert_eq!(
            decide_as_contender(Some(&r), "jm-1", at(3), LEASE),
            decide(Some(&r), "jm-1", at(3), LEASE)
        );
        assert_eq!(
            decide_as_contender(None, "jm-1", at(3), LEASE),
            decide(None, "jm-1", at(3), LEASE)
        );
    }

    #[test]
    fn sub_second_leases_round_up() {
        assert_eq!(lease_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(lease_seconds(Duration::from_secs(3)), 3);
        assert_eq!(lease_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn step_down_after_the_renew_deadline() {
        let start = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!must_step_down(
            start,
            start + Duration::from_secs(9),
            deadline
        ));
        assert!(must_step_down(start, start + deadline, deadline));
    }

    #[test]
    fn the_record_round_trips_as_client_go_json() {
        let r = decide(None, "jm-0", at(0), LEASE)
            .record()
            .cloned()
            .expect("record");
        let json = serde_json::to_value(&r).expect("json");
        for key in [
            "holderIdentity",
            "leaseDurationSeconds",
            "acquireTime",
            "renewTime",
            "leaderTransitions",
        ] {
            assert!(json.get(key).is_some(), "{key} missing in {json}");
        }
        let back: LeaderRecord = serde_json::from_value(json).expect("parse");
        assert_eq!(back, r);
    }
}
