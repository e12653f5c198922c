//! Leader election over a `coordination.k8s.io` Lease, so that two coordinator replicas never run
//! the same ActionSet: only the holder of the Lease runs the controller and maintenance.
//!
//! The protocol is client-go's. A candidate reads the Lease every [`LeaseConfig::retry`]; it takes
//! a Lease that nobody holds, or whose holder has not renewed it for
//! [`LeaseConfig::duration`] as measured on the candidate's own clock since it last saw the
//! Lease change (so clock skew between nodes does not matter). Every write carries the
//! resourceVersion it read: of two candidates, the API server lets one win. The leader renews
//! every `retry`; when it has not renewed for [`LeaseConfig::renew_deadline`] (shorter than
//! `duration`, so it stops before anyone may take over) or finds another holder, it has lost
//! and must stop running ActionSets at once: [`Leadership::lost`] resolves, and the process
//! exits. The next leader's start-up recovery fails the phases that were interrupted and deletes
//! their task pods. On a graceful stop the leader releases the Lease so that a successor takes
//! over without waiting.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the Lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the coordinator's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// Who this replica is (its pod name and a random suffix).
    pub identity: String,
    /// How long a holder that does not renew keeps the Lease.
    pub duration: Duration,
    /// How long the leader may fail to renew before it stops.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// The Lease held by this replica.
#[derive(Debug)]
pub struct Leadership {
    lost: CancellationToken,
    stop: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Cancelled when the leadership is lost (the caller must stop leading at once).
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and releases the Lease, so that another replica takes over at once.
    pub async fn release(self) {
        self.stop.cancel();
        let _ = self.renewer.await;
    }
}

/// What one look at the Lease found.
enum Try {
    Leading,
    Following { holder: String },
}

struct Candidate {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The other holder's (identity, renewTime) last seen, and when it was first seen.
    observed: Option<(String, Option<Timestamp>, Instant)>,
}

impl Candidate {
    fn spec(&self, lease: Option<&LeaseSpec>, acquire: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let old = lease.cloned().unwrap_or_default();
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration.as_secs().try_into().unwrap_or(i32::MAX)),
            acquire_time: if acquire { Some(now.clone()) } else { old.acquire_time },
            renew_time: Some(now),
            lease_transitions: Some(
                old.lease_transitions.unwrap_or(0) + i32::from(acquire && old.holder_identity.is_some()),
            ),
            ..old
        }
    }

    /// Reads the Lease once and takes or renews it when that is allowed.
    async fn try_once(&mut self) -> Result<Try, kube::Error> {
        let current = match self.api.get_opt(&self.config.name).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(None, true)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(Try::Leading),
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(Try::Following { holder: String::new() }),
                    Err(e) => Err(e),
                };
            }
            Some(lease) => lease,
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renewed = spec.renew_time.as_ref().map(|t| t.0);
        let mine = holder == self.config.identity;
        if !mine && !holder.is_empty() {
            let changed = self.observed.as_ref().is_none_or(|(h, r, _)| *h != holder || *r != renewed);
            if changed {
                self.observed = Some((holder.clone(), renewed, Instant::now()));
            }
            let since = self.observed.as_ref().map_or(Duration::ZERO, |(_, _, at)| at.elapsed());
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.config.duration, Duration::from_secs);
            if since < duration {
                return Ok(Try::Following { holder });
            }
        }
        let mut lease = current;
        lease.spec = Some(self.spec(Some(&spec), !mine));
        // The resourceVersion read above makes this a compare-and-swap.
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Try::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Try::Following { holder }),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up if this replica still holds it.
    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else { return };
        let Some(spec) = lease.spec.as_mut() else { return };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!(lease = %self.config.name, "released the leader lease"),
            Err(e) => tracing::warn!(lease = %self.config.name, error = %e, "failed to release the leader lease"),
        }
    }
}

/// Waits until this replica holds the Lease (or `shutdown` is cancelled: `None`), then keeps
/// renewing it in the background.
pub async fn acquire(client: kube::Client, config: LeaseConfig, shutdown: CancellationToken) -> Option<Leadership> {
    let mut candidate =
        Candidate { api: Api::namespaced(client, &config.namespace), config: config.clone(), observed: None };
    let mut said = String::new();
    loop {
        match candidate.try_once().await {
            Ok(Try::Leading) => break,
            Ok(Try::Following { holder }) => {
                if holder != said {
                    tracing::info!(lease = %config.name, %holder, identity = %config.identity, "another coordinator leads: waiting");
                    said = holder;
                }
            }
            Err(e) => tracing::warn!(lease = %config.name, error = %e, "cannot read the leader lease; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(config.retry) => {}
        }
    }
    tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "became the leader");
    let (lost, stop) = (CancellationToken::new(), CancellationToken::new());
    let renewer = {
        let (lost, stop) = (lost.clone(), stop.clone());
        tokio::spawn(async move {
            let mut renewed = Instant::now();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => {
                        candidate.release().await;
                        return;
                    }
                    _ = tokio::time::sleep(candidate.config.retry) => {}
                }
                // A request that hangs must not outlast the deadline either.
                let left = candidate.config.renew_deadline.saturating_sub(renewed.elapsed());
                let attempt = match tokio::time::timeout(left, candidate.try_once()).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::error!(lease = %candidate.config.name, "could not renew the leader lease in time");
                        lost.cancel();
                        return;
                    }
                };
                match attempt {
                    Ok(Try::Leading) => renewed = Instant::now(),
                    Ok(Try::Following { holder }) => {
                        tracing::error!(lease = %candidate.config.name, %holder, "lost the leader lease to another coordinator");
                        lost.cancel();
                        return;
                    }
                    Err(e) if renewed.elapsed() >= candidate.config.renew_deadline => {
                        tracing::error!(lease = %candidate.config.name, error = %e, "could not renew the leader lease in time");
                        lost.cancel();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(lease = %candidate.config.name, error = %e, "renewing the leader lease failed; retrying")
                    }
                }
            }
        })
    };
    Some(Leadership { lost, stop, renewer })
}
