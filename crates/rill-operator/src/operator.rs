//! The operator process: leader election, controllers, metrics.
//!
//! Every replica serves metrics and health, campaigns for the Lease, and
//! runs the FlinkJob and FlinkSession controllers only while it leads; when
//! leadership is lost the controllers are cancelled at once, in-flight
//! reconciles included, so nothing else is written, and they start again
//! if it comes back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{watcher, Controller};
use kube::Client;
use tokio::sync::watch;

use crate::controller::{self, Context, ControllerOptions};
use crate::crd::{FlinkJob, FlinkSession};
use crate::election::ElectionTiming;
use crate::lease::LeaseElector;
use crate::metrics::{self, Metrics};
use crate::{Error, Result};

/// How to run the operator (`rill operator` maps its flags onto this).
#[derive(Clone)]
pub struct OperatorOptions {
    /// Namespaces to watch; empty watches all (needs cluster-wide RBAC).
    pub namespaces: Vec<String>,
    /// This replica's identity in the Lease (default: `POD_NAME`, else
    /// host name and process id).
    pub identity: String,
    /// The Lease (`rill-operator-leader`) and its namespace (default:
    /// `POD_NAMESPACE`, else `default`).
    pub lease_name: String,
    pub lease_namespace: String,
    pub timing: ElectionTiming,
    /// Where `/metrics` and `/healthz` are served; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    pub controller: ControllerOptions,
    /// Connection settings; `None` infers them (in-cluster or
    /// `KUBECONFIG`).
    pub kube_config: Option<kube::Config>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/etc/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "rill-operator".into());
                format!("{host}-{}", std::process::id())
            });
        OperatorOptions {
            namespaces: Vec::new(),
            identity,
            lease_name: "rill-operator-leader".into(),
            lease_namespace: std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            timing: ElectionTiming::default(),
            metrics_addr: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            controller: ControllerOptions::default(),
            kube_config: None,
        }
    }
}

impl OperatorOptions {
    /// Parses `rill operator` flags: `--namespace NS` (repeatable, or
    /// comma-separated; also `WATCH_NAMESPACES`), `--metrics-addr ADDR`
    /// (`none` to disable), `--identity ID`, `--lease-name NAME`,
    /// `--lease-namespace NS`, `--rest-url NS/NAME=URL` (repeatable), and
    /// durations: `--lease-duration`, `--renew-deadline`, `--retry-period`
    /// (the Lease), `--status-refresh` (a stable resource's status),
    /// `--poll-interval` (savepoints, starting clusters), `--rest-timeout`.
    pub fn from_args<I, S>(args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut o = OperatorOptions::default();
        if let Ok(ns) = std::env::var("WATCH_NAMESPACES") {
            o.namespaces.extend(
                ns.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            );
        }
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
                _ => (flag.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next())
                    .ok_or_else(|| Error::Config(format!("{name} needs a value")))
            };
            match name.as_str() {
                "--namespace" | "-n" => {
                    let v = value()?;
                    o.namespaces.extend(
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from),
                    );
                }
                "--metrics-addr" => {
                    let v = value()?;
                    o.metrics_addr = if v == "none" {
                        None
                    } else {
                        Some(v.parse().map_err(|_| {
                            Error::Config(format!("--metrics-addr: '{v}' is not host:port"))
                        })?)
                    };
                }
                "--identity" => o.identity = value()?,
                "--lease-name" => o.lease_name = value()?,
                "--lease-namespace" => o.lease_namespace = value()?,
                "--rest-url" => {
                    let v = value()?;
                    let (key, url) = v.split_once('=').ok_or_else(|| {
                        Error::Config(format!("--rest-url wants NS/NAME=URL, got '{v}'"))
                    })?;
                    o.controller
                        .rest_overrides
                        .insert(key.to_string(), url.to_string());
                }
                "--lease-duration" => o.timing.lease_duration = duration_flag(&name, &value()?)?,
                "--renew-deadline" => o.timing.renew_deadline = duration_flag(&name, &value()?)?,
                "--retry-period" => o.timing.retry_period = duration_flag(&name, &value()?)?,
                "--status-refresh" => o.controller.refresh = duration_flag(&name, &value()?)?,
                "--poll-interval" => o.controller.poll = duration_flag(&name, &value()?)?,
                "--rest-timeout" => o.controller.rest_timeout = duration_flag(&name, &value()?)?,
                other => return Err(Error::Config(format!("unknown operator flag '{other}'"))),
            }
        }
        if o.timing.renew_deadline > o.timing.lease_duration {
            return Err(Error::Config(format!(
                "--renew-deadline ({:?}) must not exceed --lease-duration ({:?})",
                o.timing.renew_deadline, o.timing.lease_duration
            )));
        }
        Ok(o)
    }
}

/// A positive Flink-style duration given to `flag`.
fn duration_flag(flag: &str, text: &str) -> Result<Duration> {
    match crate::config::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(Error::Config(format!("{flag}: must be more than zero"))),
        Err(e) => Err(Error::Config(format!("{flag}: {e}"))),
    }
}

/// One operator replica.
pub struct Operator {
    client: Client,
    options: OperatorOptions,
    metrics: Arc<Metrics>,
    leading: watch::Receiver<bool>,
    leading_tx: watch::Sender<bool>,
}

impl Operator {
    /// Connects to the API server.
    pub async fn new(options: OperatorOptions) -> Result<Self> {
        let config = match options.kube_config.clone() {
            Some(c) => c,
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::Config(format!("no Kubernetes configuration: {e}")))?,
        };
        let client = Client::try_from(config)?;
        let (leading_tx, leading) = watch::channel(false);
        Ok(Operator {
            client,
            options,
            metrics: Arc::new(Metrics::new()),
            leading,
            leading_tx,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Follows this replica's leadership.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Runs until `stop` resolves.
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stop_tx.send(true);
        });
        if let Some(addr) = self.options.metrics_addr {
            let mut rx = stop_rx.clone();
            let bound = metrics::serve(addr, self.metrics.clone(), async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await?;
            tracing::info!(%bound, "serving operator metrics");
        }
        let elector = LeaseElector::new(
            Api::<Lease>::namespaced(self.client.clone(), &self.options.lease_namespace),
            &self.options.lease_name,
            &self.options.identity,
            self.options.timing,
        );
        let election = tokio::spawn(elector.run(self.leading_tx.clone(), stop_rx.clone()));
        let recorder = Recorder::new(
            self.client.clone(),
            Reporter {
                controller: "rill-operator".into(),
                instance: Some(self.options.identity.clone()),
            },
        );
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            recorder,
            self.metrics.clone(),
            self.options.controller.clone(),
        ));
        let mut leading = self.leading.clone();
        let mut stopped = stop_rx.clone();
        loop {
            tokio::select! {
                r = leading.wait_for(|l| *l) => { if r.is_err() { break; } }
                _ = stopped.wait_for(|s| *s) => break,
            }
            if *stopped.borrow() {
                break;
            }
            // Any change from here on is a loss (perhaps already undone):
            // the elector publishes transitions only.
            let mut lost = self.leading.clone();
            if !*lost.borrow_and_update() {
                continue;
            }
            self.metrics.set_leader(true);
            tracing::info!(identity = %self.options.identity, "leading: starting controllers");
            let namespaces: Vec<Option<String>> = if self.options.namespaces.is_empty() {
                vec![None]
            } else {
                self.options.namespaces.iter().cloned().map(Some).collect()
            };
            // One shutdown trigger per controller; all fire when leadership
            // is lost or the operator stops.
            let mut triggers = Vec::new();
            let mut runs = Vec::new();
            for ns in namespaces {
                let (jobs_tx, jobs_rx) = tokio::sync::oneshot::channel::<()>();
                let (sessions_tx, sessions_rx) = tokio::sync::oneshot::channel::<()>();
                triggers.push(jobs_tx);
                triggers.push(sessions_tx);
                runs.push(tokio::spawn(run_controllers(
                    self.client.clone(),
                    ns,
                    ctx.clone(),
                    jobs_rx,
                    sessions_rx,
                )));
            }
            // Losing the Lease cancels reconciles where they stand, so a
            // deposed replica writes nothing more (a cancelled reconcile is
            // no worse than a crash, which the next leader must handle
            // anyway); stopping the operator lets them finish.
            let mut halt = stop_rx.clone();
            let aborts: Vec<_> = runs.iter().map(|r| r.abort_handle()).collect();
            let watcher_task = tokio::spawn(async move {
                tokio::select! {
                    _ = lost.changed() => aborts.iter().for_each(|a| a.abort()),
                    _ = halt.wait_for(|s| *s) => {
                        for t in triggers {
                            let _ = t.send(());
                        }
                    }
                }
            });
            for r in runs {
                let _ = r.await;
            }
            watcher_task.abort();
            self.metrics.set_leader(false);
            tracing::info!(identity = %self.options.identity, "controllers stopped");
        }
        let _ = election.await;
        Ok(())
    }
}

fn api_for<K>(client: &Client, ns: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_controllers(
    client: Client,
    ns: Option<String>,
    ctx: Arc<Context>,
    jobs_stop: tokio::sync::oneshot::Receiver<()>,
    sessions_stop: tokio::sync::oneshot::Receiver<()>,
) {
    let owned = watcher::Config::default().labels("type=rill-native-kubernetes");
    let jobs = Controller::new(
        api_for::<FlinkJob>(&client, &ns),
        watcher::Config::default(),
    )
    .owns(api_for::<Deployment>(&client, &ns), owned.clone())
    .owns(api_for::<ConfigMap>(&client, &ns), owned.clone())
    .graceful_shutdown_on(async move {
        let _ = jobs_stop.await;
    })
    .run(
        controller::reconcile_job,
        controller::job_error_policy,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "FlinkJob controller event");
        }
    });
    let sessions = Controller::new(
        api_for::<FlinkSession>(&client, &ns),
        watcher::Config::default(),
    )
    .owns(api_for::<Deployment>(&client, &ns), owned)
    .graceful_shutdown_on(async move {
        let _ = sessions_stop.await;
    })
    .run(
        controller::reconcile_session,
        controller::session_error_policy,
        ctx,
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "FlinkSession controller event");
        }
    });
    futures_util::future::join(jobs, sessions).await;
}

/// Runs the operator until SIGINT or SIGTERM (`rill operator`). Blocking:
/// owns its tokio runtime.
pub fn run_operator(options: OperatorOptions) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rill-operator")
        .build()
        .map_err(|e| Error::io("starting the operator runtime", e))?;
    runtime.block_on(async move {
        let operator = Operator::new(options).await?;
        operator.run(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Default per-call timeout used by tests and the CLI.
pub const DEFAULT_REST_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn flags_parse() {
        let o = OperatorOptions::from_args([
            "--namespace",
            "a,b",
            "-n",
            "c",
            "--metrics-addr=127.0.0.1:9999",
            "--identity",
            "op-1",
            "--rest-url",
            "jobs/wsum=http://127.0.0.1:8081",
        ])
        .expect("parse");
        assert!(o
            .namespaces
            .ends_with(&["a".to_string(), "b".into(), "c".into()]));
        assert_eq!(
            o.metrics_addr,
            Some("127.0.0.1:9999".parse().expect("addr"))
        );
        assert_eq!(o.identity, "op-1");
        assert_eq!(
            o.controller.rest_overrides,
            BTreeMap::from([("jobs/wsum".to_string(), "http://127.0.0.1:8081".to_string())])
        );
        assert!(OperatorOptions::from_args(["--bogus"]).is_err());
        assert!(OperatorOptions::from_args(["--metrics-addr"]).is_err());
        assert_eq!(
            OperatorOptions::from_args(["--metrics-addr", "none"])
                .expect("none")
                .metrics_addr,
            None
        );
    }

    #[test]
    fn duration_flags_parse_and_are_checked() {
        let o = OperatorOptions::from_args([
            "--lease-duration=4s",
            "--renew-deadline",
            "3s",
            "--retry-period",
            "500ms",
            "--status-refresh",
            "1s",
            "--poll-interval",
            "250ms",
            "--rest-timeout",
            "2s",
        ])
        .expect("parse");
        assert_eq!(o.timing.lease_duration, Duration::from_secs(4));
        assert_eq!(o.timing.renew_deadline, Duration::from_secs(3));
        assert_eq!(o.timing.retry_period, Duration::from_millis(500));
        assert_eq!(o.controller.refresh, Duration::from_secs(1));
        assert_eq!(o.controller.poll, Duration::from_millis(250));
        assert_eq!(o.controller.rest_timeout, Duration::from_secs(2));
        for bad in [
            vec!["--lease-duration", "soon"],
            vec!["--status-refresh", "0s"],
            vec!["--lease-duration", "2s", "--renew-deadline", "3s"],
        ] {
            let e = OperatorOptions::from_args(bad.clone()).err();
            assert!(e.is_some(), "{bad:?} is refused");
        }
    }
}
