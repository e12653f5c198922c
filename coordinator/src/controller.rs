//! The ActionSet controller (`kube::runtime::Controller`).
//!
//! It watches ActionSets (one namespace, a list, or all) and the task pods they own, and hands
//! each change to [`Engine::reconcile`]. Reconcile is thin: it never blocks on a run (runs are
//! tasks of the engine), never panics, and requeues running ActionSets so that a missed watch
//! event cannot leave one unattended. Concurrency and debounce are explicit; shutdown is a
//! future passed in.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};

use crate::cluster::kube::KubeCluster;
use crate::crd::ActionSet;
use crate::engine::{self, Engine, Outcome};

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The engine failed to read or initialise the ActionSet.
    #[error(transparent)]
    Engine(#[from] engine::Error),
}

/// Which namespaces the controller watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Namespaces {
    /// Every namespace.
    All,
    /// These namespaces.
    Only(Vec<String>),
}

/// Shared state of reconciles.
#[derive(Debug)]
pub struct Context {
    /// The engine that runs ActionSets.
    pub engine: Engine<KubeCluster>,
}

/// How often a running ActionSet is looked at again without a watch event.
const RUNNING_REQUEUE: Duration = Duration::from_secs(60);

/// Brings one ActionSet forward (see [`Engine::reconcile`]).
pub async fn reconcile(actionset: Arc<ActionSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = actionset.namespace().unwrap_or_default();
    let name = actionset.name_any();
    let outcome = ctx.engine.reconcile(&namespace, &name).await?;
    tracing::debug!(actionset = %name, namespace = %namespace, ?outcome, "reconciled");
    Ok(match outcome {
        Outcome::Started | Outcome::Running | Outcome::Cancelling => Action::requeue(RUNNING_REQUEUE),
        Outcome::Missing | Outcome::Rejected | Outcome::Finished => Action::await_change(),
    })
}

/// Retries soon when a retry can help, later otherwise.
pub fn error_policy(actionset: Arc<ActionSet>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(actionset = %actionset.name_any(), error = %error, "reconcile failed");
    let Error::Engine(e) = error;
    Action::requeue(if e.is_retryable() { Duration::from_secs(5) } else { Duration::from_secs(60) })
}

/// Runs the controller until `shutdown` resolves. Before watching, ActionSets left `running` by
/// a previous coordinator are recovered.
pub async fn run(
    client: Client,
    namespaces: Namespaces,
    engine: Engine<KubeCluster>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = match &namespaces {
        Namespaces::All => vec![None],
        Namespaces::Only(list) => list.iter().cloned().map(Some).collect(),
    };
    for scope in &scopes {
        match engine.recover(scope.as_deref().unwrap_or_default()).await {
            Ok(n) => tracing::info!(namespace = ?scope, recovered = n, "start-up recovery done"),
            Err(e) => tracing::warn!(namespace = ?scope, error = %e, "start-up recovery failed"),
        }
    }
    let ctx = Arc::new(Context { engine });
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let controllers = scopes.into_iter().map(|scope| {
        let (actionsets, pods): (Api<ActionSet>, Api<Pod>) = match &scope {
            None => (Api::all(client.clone()), Api::all(client.clone())),
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        };
        let config = ControllerConfig::default().concurrency(concurrency).debounce(Duration::from_millis(500));
        Controller::new(actionsets, watcher::Config::default())
            .owns(pods, watcher::Config::default().labels(engine::ACTIONSET_LABEL))
            .with_config(config)
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each({
                let ctx = ctx.clone();
                move |result| {
                    match result {
                        // A deleted ActionSet: the controller cannot reconcile what is gone, so
                        // its run (if any) is stopped here, at once, rather than when it next
                        // writes its status or loses its task pods to the garbage collector.
                        Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                            let ns = object.namespace.clone().unwrap_or_default();
                            if ctx.engine.cancel(&ns, &object.name, engine::DELETED) {
                                tracing::info!(actionset = %object.name, namespace = %ns, "ActionSet deleted: stopping its run");
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "controller event"),
                        Ok(_) => {}
                    }
                    futures::future::ready(())
                }
            })
    });
    futures::future::join_all(controllers).await;
}
