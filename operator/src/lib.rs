//! The Alces Kubernetes operator: the `AlcesCluster` custom resource and its
//! controller. See `operator/ARCHITECTURE.md`.
#![warn(missing_docs)]

pub mod builders;
pub mod config;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod dataplane;
pub mod failover;
pub mod leader;
pub mod metrics;
pub mod tls;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

/// Runs the operator: HTTP endpoint, leader election, controller.
pub async fn run(args: config::Args) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot reach the Kubernetes API ({e}); run in a pod with a service account, or set KUBECONFIG")
    })?;
    let mut registry = prometheus_client::registry::Registry::default();
    let m = metrics::Metrics::new(&mut registry);
    let health = alces_telemetry::Health::new(registry);
    alces_telemetry::serve_http(args.http_listen, health.clone()).await?;
    client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("the Kubernetes API does not answer: {e}"))?;
    health.set_ready(true);
    let mut ctx = controller::Context::new(
        client.clone(),
        m.clone(),
        Arc::new(controller::target::PodDns),
    );
    ctx.poll = Duration::from_millis(args.poll_ms);
    ctx.tls = args.tls.load(alces_proto::tls::Role::Client)?;
    ctx.tls_dir = args.tls_dir.clone();
    let ctx = Arc::new(ctx);
    if args.no_leader_election {
        m.leader.set(1);
        controller::run(ctx, args.watch_namespace).await;
        return Ok(());
    }
    let lease = leader::LeaseConfig {
        namespace: args
            .lease_namespace
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into()),
        name: args.lease_name,
        identity: args
            .identity
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "alces-operator".into())
            }),
        duration: Duration::from_secs(args.lease_seconds),
        renew: Duration::from_secs((args.lease_seconds / 3).max(1)),
    };
    leader::acquire(&client, &lease).await;
    m.leader.set(1);
    tokio::select! {
        _ = controller::run(ctx, args.watch_namespace) => Ok(()),
        _ = leader::hold(&client, &lease) => {
            m.leader.set(0);
            anyhow::bail!("leadership lost: exiting so that a fresh process stands by")
        }
    }
}
