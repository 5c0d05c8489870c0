//! The `kube-sim` command: run a local Kubernetes cluster (API server,
//! process kubelet, Services) in the foreground until SIGINT or SIGTERM,
//! or inject a container crash into a running one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(
    name = "kube-sim",
    about = "A local Kubernetes API server and process kubelet for tests and development"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster and write a kubeconfig pointing at it.
    Up {
        /// Where to write the kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Directory for kube-sim's own files (objects persist there across runs).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Map images to local programs, `PATTERN=BINARY` (glob; first match wins).
        #[arg(long = "image", value_name = "PATTERN=BINARY")]
        images: Vec<String>,
        /// Pod network: `loopback` (a 127.x address per pod) or `namespace`
        /// (a network namespace per pod on a bridge; root only).
        #[arg(long, default_value = "loopback")]
        network: String,
        /// Do not run pods; report them Running and Ready as soon as they exist.
        #[arg(long)]
        mark_pods_ready: bool,
    },
    /// SIGKILL a pod's container as if it crashed (the kubelet restarts it).
    Crash {
        /// The pod.
        pod: String,
        /// Namespace of the pod.
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Container (default: the first).
        #[arg(short, long)]
        container: Option<String>,
        /// Kubeconfig of the running kube-sim (default: $KUBECONFIG, ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kube_sim=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            kubeconfig,
            port,
            state_dir,
            images,
            network,
            mark_pods_ready,
        } => {
            let mut map = kube_sim::ImageMap::new();
            for spec in &images {
                let (pattern, binary) = kube_sim::ImageMap::parse_rule(spec)?;
                map.push(pattern, binary);
            }
            let kubelet = (!mark_pods_ready).then(|| -> anyhow::Result<_> {
                Ok(kube_sim::KubeletOptions {
                    images: map,
                    network: network.parse()?,
                    ..Default::default()
                })
            });
            let kubelet = kubelet.transpose()?;
            let sim = kube_sim::KubeSim::start(kube_sim::Options {
                port,
                kubeconfig: Some(kubeconfig),
                state_dir,
                mark_pods_ready,
                kubelet,
                ..Default::default()
            })
            .await
            .context("starting kube-sim")?;
            println!(
                "kube-sim listening on {} (kubeconfig {})",
                sim.url(),
                sim.kubeconfig().display()
            );
            wait_for_signal().await?;
            eprintln!("kube-sim: shutting down");
            sim.stop().await;
        }
        Command::Crash {
            pod,
            namespace,
            container,
            kubeconfig,
        } => {
            let path = kubeconfig
                .or_else(|| std::env::var_os("KUBECONFIG").map(PathBuf::from))
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube/config")))
                .context("no kubeconfig given")?;
            let server = server_of(&path)?;
            let mut target = format!("/kube-sim/v1/namespaces/{namespace}/pods/{pod}/crash");
            if let Some(c) = container {
                target.push_str(&format!("?container={c}"));
            }
            let (code, body) = post(&server, &target).await?;
            if code != 200 {
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
                    .unwrap_or(body);
                bail!("crash failed ({code}): {msg}");
            }
            println!("pod/{pod} crashed");
        }
    }
    Ok(())
}

/// The `host:port` of the current context's cluster (plain HTTP only).
fn server_of(kubeconfig: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let v: serde_json::Value = serde_yaml_ng::from_str(&text).context("parsing kubeconfig")?;
    let ctx_name = v["current-context"].as_str().unwrap_or("");
    let cluster = v["contexts"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == ctx_name))
        .and_then(|c| c["context"]["cluster"].as_str())
        .context("kubeconfig has no current context")?;
    let server = v["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == cluster))
        .and_then(|c| c["cluster"]["server"].as_str())
        .context("kubeconfig has no server for the current context")?;
    match server.strip_prefix("http://") {
        Some(rest) => Ok(rest.trim_end_matches('/').to_string()),
        None => bail!("{server} is not a kube-sim server (expected http://)"),
    }
}

async fn post(server: &str, target: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let req = format!(
        "POST {target} HTTP/1.1\r\nHost: {server}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP response")?;
    Ok((code, body.to_string()))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
