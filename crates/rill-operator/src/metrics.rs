//! Operator metrics (Prometheus text on `/metrics`, with `/healthz`).
//!
//! What an on-call engineer asks of an operator: is it reconciling, what
//! fails and why (errors by label), how many resources are in which
//! lifecycle state, how long transitions take, and which replica leads.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::crd::LifecycleState;
use crate::{Error, Result};

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn transition_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 14))
}

/// Metrics of one operator instance.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    resources: Family<Labels, Gauge>,
    transitions: HistogramFamily,
    leader: Gauge,
    /// (kind, namespace/name) → (state, since).
    states: Mutex<HashMap<(String, String), (LifecycleState, Instant)>>,
    reconcile_count: AtomicU64,
    error_count: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rill_operator");
        let reconciles = Family::<Labels, Counter>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by error",
            errors.clone(),
        );
        let resources = Family::<Labels, Gauge>::default();
        registry.register(
            "resources",
            "Resources by lifecycle state",
            resources.clone(),
        );
        let transitions: HistogramFamily = Family::new_with_constructor(transition_histogram);
        registry.register(
            "lifecycle_transition_seconds",
            "Time spent in a lifecycle state before leaving it",
            transitions.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        Metrics {
            registry,
            reconciles,
            errors,
            resources,
            transitions,
            leader,
            states: Mutex::new(HashMap::new()),
            reconcile_count: AtomicU64::new(0),
            error_count: AtomicU64::new(0),
        }
    }

    pub fn reconciled(&self, kind: &str) {
        self.reconciles
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
        self.reconcile_count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, kind: &str, error: &Error) {
        self.errors
            .get_or_create(&vec![
                ("kind".into(), kind.into()),
                ("error".into(), error.label().into()),
            ])
            .inc();
        self.error_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Total reconciliations by this instance.
    pub fn reconcile_count(&self) -> u64 {
        self.reconcile_count.load(Ordering::Relaxed)
    }

    /// Total failed reconciliations by this instance.
    pub fn error_count(&self) -> u64 {
        self.error_count.load(Ordering::Relaxed)
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records the resource's state (`None`: gone), observing the time
    /// spent in the previous one.
    pub fn lifecycle(&self, kind: &str, key: &str, state: Option<LifecycleState>) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        let id = (kind.to_string(), key.to_string());
        let previous = states.get(&id).copied();
        match (previous, state) {
            (Some((old, _)), Some(new)) if old == new => return,
            (Some((old, since)), new) => {
                let to = new.map_or("GONE", LifecycleState::as_str);
                self.transitions
                    .get_or_create(&vec![
                        ("kind".into(), kind.into()),
                        ("from".into(), old.as_str().into()),
                        ("to".into(), to.into()),
                    ])
                    .observe(since.elapsed().as_secs_f64());
            }
            (None, _) => {}
        }
        match state {
            Some(s) => {
                states.insert(id, (s, Instant::now()));
            }
            None => {
                states.remove(&id);
            }
        }
        for s in LifecycleState::ALL {
            let n = states
                .iter()
                .filter(|((k, _), (st, _))| k == kind && *st == s)
                .count();
            self.resources
                .get_or_create(&vec![
                    ("kind".into(), kind.into()),
                    ("state".into(), s.as_str().into()),
                ])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `stop` resolves.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding the metrics port {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics listener address", e))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "metrics server failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_states_and_errors_are_counted() {
        let m = Metrics::new();
        m.reconciled("FlinkJob");
        m.failed("FlinkJob", &Error::InvalidSpec("x".into()));
        m.lifecycle("FlinkJob", "ns/a", Some(LifecycleState::Deployed));
        m.lifecycle("FlinkJob", "ns/a", Some(LifecycleState::Stable));
        m.lifecycle("FlinkJob", "ns/b", Some(LifecycleState::Stable));
        let text = m.render();
        assert!(
            text.contains("rill_operator_reconciles_total{kind=\"FlinkJob\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "rill_operator_reconcile_errors_total{kind=\"FlinkJob\",error=\"invalid_spec\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("rill_operator_resources{kind=\"FlinkJob\",state=\"STABLE\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rill_operator_lifecycle_transition_seconds_count{kind=\"FlinkJob\",from=\"DEPLOYED\",to=\"STABLE\"} 1"),
            "{text}"
        );
        m.lifecycle("FlinkJob", "ns/b", None);
        assert!(m
            .render()
            .contains("rill_operator_resources{kind=\"FlinkJob\",state=\"STABLE\"} 1"));
    }
}
