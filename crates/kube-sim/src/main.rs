//! The `kube-sim` command: run a local Kubernetes API server in the
//! foreground until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kube-sim",
    about = "A local Kubernetes API server for tests and development"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the API server and write a kubeconfig pointing at it.
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
        /// Report pods Running and Ready as soon as they exist (no kubelet yet).
        #[arg(long)]
        mark_pods_ready: bool,
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
            mark_pods_ready,
        } => {
            let sim = kube_sim::KubeSim::start(kube_sim::Options {
                port,
                kubeconfig: Some(kubeconfig),
                state_dir,
                mark_pods_ready,
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
    }
    Ok(())
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
