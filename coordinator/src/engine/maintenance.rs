//! Scheduled repository maintenance: deleted backups free their space without anyone
//! remembering to prune.
//!
//! Every [`MaintenanceConfig::interval`], the coordinator maintains each repository its
//! Profiles point at (Profiles naming the same location share one run): a task pod of the tools
//! image runs `kanister-agent maintain` (prune with the configured grace period, then a
//! structural check) against the Profile's store, with its credentials and the repository key
//! from Secrets, as `CopyVolumeData`'s pods get them. The repository work (reading the index,
//! deciding what to delete) happens in that pod, under its own memory limit, never in the
//! coordinator.
//!
//! At most one maintenance runs per repository at a time, also across coordinators: the agent
//! takes the repository's maintenance lock (`kanister_agent::exclusive`, written in the
//! repository itself), and a run that finds it held ends `skipped`. The result of every run is
//! an event on the Profile (`MaintenanceSucceeded`, `MaintenanceSkipped`,
//! `MaintenanceFailed`), a log line and metrics (`kanister_maintenance_*`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::Engine;
use super::metrics::MaintenanceOutcome;
use crate::cluster::{Cluster, Event, EventType, ObjectRef, get_typed};
use crate::crd::JsonMap;
use crate::crd::ObjectReference;
use crate::crd::profile::Profile;

/// When and how the coordinator maintains repositories.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    /// Time between two maintenance rounds (the first starts after one interval).
    pub interval: Duration,
    /// Grace period of the prune: how long unused packs wait between being set aside and
    /// deleted (a backup that started before they were set aside may still need them).
    pub grace: Duration,
    /// Namespaces whose Profiles are maintained (all when empty).
    pub namespaces: Vec<String>,
}

/// How one maintenance ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaintenanceResult {
    /// Pruned and checked.
    Succeeded {
        /// Bytes freed (packs and leftovers of interrupted uploads).
        bytes_freed: u64,
        /// Snapshots in the repository.
        snapshots: u64,
        /// Problems the check found (0 when healthy).
        check_errors: u64,
    },
    /// Nothing done: another maintenance held the repository, or it has no repository yet.
    Skipped(String),
    /// The maintenance failed.
    Failed(String),
}

/// The last maintenance of a Profile's repository.
#[derive(Debug, Clone)]
pub struct MaintenanceRun {
    /// The Profile.
    pub profile: String,
    /// How it ended.
    pub result: MaintenanceResult,
    /// How long it took.
    pub duration: Duration,
    /// When it ended (seconds since the epoch).
    pub finished_unix: u64,
    /// When it held the repository's maintenance lock, from and to (store time, RFC 3339),
    /// when it did work.
    pub locked: Option<(String, String)>,
    /// The same by the maintenance pod's clock, in milliseconds since the epoch.
    pub held_ms: Option<(u64, u64)>,
}

impl<C: Cluster> Engine<C> {
    /// Maintains the repositories of every Profile in `config.namespaces` every
    /// `config.interval`, until `shutdown` completes.
    pub async fn run_maintenance(&self, config: MaintenanceConfig, shutdown: impl std::future::Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = tokio::time::sleep(config.interval) => {}
                () = &mut shutdown => return,
            }
            let runs = tokio::select! {
                r = self.maintain_all(&config) => r,
                () = &mut shutdown => return,
            };
            tracing::info!(repositories = runs.len(), "maintenance round finished");
        }
    }

    /// One maintenance round: each repository the Profiles point at, once, one after another.
    pub async fn maintain_all(&self, config: &MaintenanceConfig) -> Vec<MaintenanceRun> {
        let namespaces = if config.namespaces.is_empty() { vec![String::new()] } else { config.namespaces.clone() };
        let api_version = format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION);
        let mut seen = BTreeSet::new();
        let mut runs = Vec::new();
        for ns in namespaces {
            let profiles = match self.inner.cluster.list(&api_version, "Profile", &ns, &BTreeMap::new()).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "cannot list Profiles for maintenance");
                    continue;
                }
            };
            for p in profiles {
                let Ok(profile) = serde_json::from_value::<Profile>(p) else { continue };
                // Profiles naming the same location share a repository: maintain it once.
                let location = serde_json::to_string(&profile.spec.location).unwrap_or_default();
                if !seen.insert(location) {
                    continue;
                }
                let r = ObjectReference {
                    namespace: profile.metadata.namespace.clone().unwrap_or_default(),
                    name: profile.metadata.name.clone().unwrap_or_default(),
                    ..Default::default()
                };
                runs.push(self.maintain(&r, config.grace).await);
            }
        }
        runs
    }

    /// Maintains the repository of one Profile in a task pod (see the module docs), and
    /// records the result in an event, the log and the metrics.
    pub async fn maintain(&self, profile: &ObjectReference, grace: Duration) -> MaintenanceRun {
        let started = Instant::now();
        let name = format!("{}/{}", profile.namespace, profile.name);
        let (result, locked, held_ms) = match self.maintain_in_pod(profile, grace).await {
            Ok(out) => {
                let text = |k: &str| out.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let ms = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
                (parse(&out), text("lockedFrom").zip(text("lockedTo")), ms("heldFromMs").zip(ms("heldToMs")))
            }
            Err(e) => (MaintenanceResult::Failed(e), None, None),
        };
        let run = MaintenanceRun {
            profile: name.clone(),
            result: result.clone(),
            duration: started.elapsed(),
            finished_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            locked,
            held_ms,
        };
        let secs = run.duration.as_secs_f64();
        let (type_, reason, note, key) = match &result {
            MaintenanceResult::Succeeded { bytes_freed, snapshots, check_errors: 0 } => {
                tracing::info!(profile = %name, bytes_freed, snapshots, secs, "repository maintained");
                let note =
                    format!("freed {bytes_freed} bytes; {snapshots} snapshot(s), check found no damage ({secs:.1}s)");
                (EventType::Normal, "MaintenanceSucceeded", note, MaintenanceOutcome::Succeeded)
            }
            MaintenanceResult::Succeeded { bytes_freed, snapshots, check_errors } => {
                tracing::warn!(profile = %name, bytes_freed, check_errors, "repository maintained; its check found damage");
                let note = format!(
                    "freed {bytes_freed} bytes; the check found {check_errors} problem(s) in {snapshots} snapshot(s): \
                     run `kanister-agent check --read-data` against the repository"
                );
                (EventType::Warning, "MaintenanceFoundDamage", note, MaintenanceOutcome::Failed)
            }
            MaintenanceResult::Skipped(why) => {
                tracing::info!(profile = %name, reason = %why, "maintenance skipped");
                (EventType::Normal, "MaintenanceSkipped", why.clone(), MaintenanceOutcome::Skipped)
            }
            MaintenanceResult::Failed(why) => {
                tracing::warn!(profile = %name, error = %why, "maintenance failed");
                (EventType::Warning, "MaintenanceFailed", why.clone(), MaintenanceOutcome::Failed)
            }
        };
        let bytes_freed = match result {
            MaintenanceResult::Succeeded { bytes_freed, .. } => bytes_freed,
            _ => 0,
        };
        let finished = i64::try_from(run.finished_unix).unwrap_or(i64::MAX);
        self.inner.metrics.maintenance(&name, key, bytes_freed, finished, secs);
        let object = ObjectRef {
            api_version: format!("{}/{}", crate::crd::GROUP, crate::crd::VERSION),
            ..ObjectRef::new("Profile", &profile.namespace, &profile.name)
        };
        match get_typed::<Profile, C>(&*self.inner.cluster, &object).await {
            Ok(p) => {
                let event = Event { type_, reason: reason.into(), note, action: "Maintain".into() };
                self.inner.cluster.record_event(&p, event).await;
            }
            Err(e) => tracing::warn!(profile = %name, error = %e, "cannot record the maintenance event"),
        }
        run
    }

    async fn maintain_in_pod(&self, profile: &ObjectReference, grace: Duration) -> Result<JsonMap, String> {
        let cfg = &self.inner.config;
        let label = ("kanister.io/maintenance", "maintenance");
        let params = super::params::profile(&*self.inner.cluster, profile).await.map_err(|e| e.to_string())?;
        let ctx = super::task::profile_context(self.inner.cluster.clone(), cfg, profile, params, label);
        let grace = format!("{}s", grace.as_secs());
        // Contenders that start at the same moment both back off once; waiting a little lets one
        // of them win instead of both skipping.
        let command: Vec<String> =
            ["kanister-agent", "maintain", "--grace-period", &grace, "--wait-lock", "30s", "--phase-output"]
                .map(String::from)
                .into();
        let result = async {
            let pod = super::task::agent_pod(&ctx, "kanister-maintenance-", cfg.tools_image.clone(), command).await?;
            super::context::run_pod(&ctx, pod, super::task::AGENT_CONTAINER, true).await
        }
        .await;
        super::task::delete_pods(&ctx).await;
        result.map_err(|e| e.to_string())
    }
}

fn parse(out: &JsonMap) -> MaintenanceResult {
    let text = |k: &str| out.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let num = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    if let Some(why) = text("skipped") {
        return MaintenanceResult::Skipped(why);
    }
    match (num("bytesFreed"), num("snapshots"), num("checkErrors")) {
        (Some(bytes_freed), Some(snapshots), Some(check_errors)) => {
            MaintenanceResult::Succeeded { bytes_freed, snapshots, check_errors }
        }
        _ => MaintenanceResult::Failed(
            "the maintenance pod reported no result: is its image the tools image of this release?".into(),
        ),
    }
}
