//! The default `rill` binary: the command line with the example catalogue,
//! plus what needs Kubernetes — `rill operator`, `rill crdgen`, and the
//! Kubernetes HA and TaskManager-pod services of JobManagers and
//! TaskManagers running in pods.

use std::collections::BTreeMap;
use std::sync::Arc;

use rill::api::Configuration;
use rill::cluster::{ClusterServices, Role};
use rill::runtime::cluster::services::{HighAvailability, StandaloneHa, WorkerProvider};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("operator") => {
            rill::cli::init_logging(false);
            exit_with(
                rill_operator::OperatorOptions::from_args(args[2..].iter().cloned())
                    .and_then(rill_operator::run_operator),
            )
        }
        Some("crdgen") => {
            let dir = args.get(2).map_or("crds", String::as_str);
            exit_with(
                rill_operator::run_crdgen(std::path::Path::new(dir)).map(|files| {
                    for f in files {
                        println!("{}", f.display());
                    }
                }),
            )
        }
        _ => rill::main_with_services(rill_examples::catalog(), kubernetes_services),
    }
}

fn exit_with(result: rill_operator::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Kubernetes services when the configuration asks for them:
/// `high-availability.type: kubernetes` (ConfigMap leader election and HA
/// pointers) and `execution.target: kubernetes-application|kubernetes-session`
/// (the JobManager creates its TaskManager pods).
fn kubernetes_services(
    config: &Configuration,
    role: Role,
) -> Result<Option<ClusterServices>, String> {
    let conf: BTreeMap<String, String> = config
        .entries()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let kubernetes_ha = config
        .get("high-availability.type")
        .is_some_and(|t| t.eq_ignore_ascii_case("kubernetes"));
    let native = role == Role::JobManager
        && config
            .get("execution.target")
            .is_some_and(|t| t.starts_with("kubernetes"));
    if !kubernetes_ha && !native {
        return Ok(None);
    }
    let ha: Arc<dyn HighAvailability> = if kubernetes_ha {
        Arc::new(rill_operator::KubernetesHa::from_flink_config(&conf).map_err(|e| e.to_string())?)
    } else {
        Arc::new(StandaloneHa::default())
    };
    let workers: Arc<dyn WorkerProvider> = if native {
        // Without HA, TaskManagers find the JobManager at this pod's address.
        let mut extra = Vec::new();
        if !kubernetes_ha {
            let ip = std::env::var("POD_IP")
                .map_err(|_| "execution.target=kubernetes-* needs POD_IP (downward API)")?;
            extra.extend(["-D".to_string(), format!("jobmanager.rpc.address={ip}")]);
        }
        Arc::new(
            rill_operator::KubernetesWorkers::from_flink_config(&conf, extra)
                .map_err(|e| e.to_string())?,
        )
    } else {
        Arc::new(rill::runtime::cluster::services::StaticWorkers::default())
    };
    if role == Role::TaskManager && !kubernetes_ha {
        return Ok(None);
    }
    Ok(Some(ClusterServices { ha, workers }))
}
