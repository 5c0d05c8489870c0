//! Shared test plumbing: an in-process kube-sim and clients for it.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use kube_sim::{KubeSim, Options};
use rill_operator::crd::{FlinkJob, FlinkSession};

pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Sim {
    pub sim: KubeSim,
    pub config: Config,
    pub dir: tempfile::TempDir,
}

impl Sim {
    pub async fn start(opts: Options) -> Sim {
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
        Sim { sim, config, dir }
    }

    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("client")
    }

    pub fn kubeconfig(&self) -> std::path::PathBuf {
        self.sim.kubeconfig().to_path_buf()
    }

    /// Registers the CRDs and waits until they are established.
    pub async fn install_crds(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        for crd in [FlinkJob::crd(), FlinkSession::crd()] {
            let name = crd.metadata.name.clone().expect("name");
            crds.create(&PostParams::default(), &crd)
                .await
                .expect("create crd");
            tokio::time::timeout(
                LIMIT,
                kube::runtime::wait::await_condition(
                    crds.clone(),
                    &name,
                    kube::runtime::wait::conditions::is_crd_established(),
                ),
            )
            .await
            .expect("bounded")
            .expect("established");
        }
    }
}

/// A kube-sim on its own runtime, for tests that call the blocking
/// HA/worker APIs from plain threads.
pub struct BlockingSim {
    pub rt: tokio::runtime::Runtime,
    pub sim: Option<Sim>,
}

impl BlockingSim {
    pub fn start(opts: Options) -> BlockingSim {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let sim = rt.block_on(Sim::start(opts));
        BlockingSim { rt, sim: Some(sim) }
    }

    pub fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("sim")
    }

    pub fn config(&self) -> Config {
        self.sim().config.clone()
    }

    /// Runs `f` with a client on the sim's runtime.
    pub fn with_client<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let client = {
            let _g = self.rt.enter();
            self.sim().client()
        };
        self.rt.block_on(f(client))
    }
}

impl Drop for BlockingSim {
    fn drop(&mut self) {
        if let Some(sim) = self.sim.take() {
            self.rt.block_on(sim.sim.stop());
        }
    }
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub fn wait_until<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
