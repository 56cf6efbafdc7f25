//! Leader election on a `coordination.k8s.io/v1` Lease: of several operator
//! replicas, the one holding the Lease reconciles; the others wait. The
//! holder renews it every `renew`; a Lease not renewed for `duration` may be
//! taken over. Every write carries the Lease's resourceVersion, so two
//! replicas can never both take it. A leader that cannot renew in time exits
//! (its replacement takes over) rather than risk acting beside a new leader.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity.
    pub identity: String,
    /// How long a Lease holds without renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew: Duration,
}

/// Tries once to take or renew the Lease; true when this replica holds it.
pub async fn try_acquire(client: &Client, cfg: &LeaseConfig) -> kube::Result<bool> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(&cfg.name).await? {
        None => {
            let l = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec(0, None)),
            };
            match api.create(&PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
        Some(mut l) => {
            let s = l.spec.clone().unwrap_or_default();
            let mine = s.holder_identity.as_deref() == Some(cfg.identity.as_str());
            let dur = i64::from(s.lease_duration_seconds.unwrap_or(15));
            let expired = s
                .renew_time
                .as_ref()
                .is_none_or(|t| now.as_second() - t.0.as_second() > dur);
            if !mine && !expired {
                return Ok(false);
            }
            let transitions = s.lease_transitions.unwrap_or(0) + i32::from(!mine);
            let acquired = if mine { s.acquire_time.clone() } else { None };
            l.spec = Some(spec(transitions, acquired));
            // The resourceVersion read above is the precondition.
            match api.replace(&cfg.name, &PostParams::default(), &l).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    let mut logged = false;
    loop {
        match try_acquire(client, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "leader Lease acquired");
                return;
            }
            Ok(false) if !logged => {
                tracing::info!(lease = %cfg.name, "another replica leads; standing by");
                logged = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read or take the leader Lease"),
        }
        tokio::time::sleep(cfg.renew).await;
    }
}

/// Renews the Lease until it is lost or cannot be renewed within its
/// duration; then returns (the caller stops acting).
pub async fn hold(client: &Client, cfg: &LeaseConfig) {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew).await;
        match try_acquire(client, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.name, "leader Lease lost to another replica");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader Lease");
                if last_ok.elapsed() >= cfg.duration.saturating_sub(cfg.renew) {
                    tracing::error!("leader Lease not renewed in time; stopping");
                    return;
                }
            }
        }
    }
}
