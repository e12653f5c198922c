//! The agent as a service: `kanister-agent serve`, the gRPC API `kanister.agent.v1` that the
//! coordinator drives (a sidecar in the workload's pod, or a task pod).
//!
//! - [`api`]: the `AgentService` implementation: stream backups and restores through commands,
//!   snapshots, forget, prune, check, attach and cancel.
//! - [`ops`]: operations by caller-chosen id: idempotent start, detached runs, re-attach,
//!   cancellation, the concurrency limit and queue.
//! - [`command`]: the commands operations run (`mysqldump`, `mysql`, ...), their stderr tail,
//!   kill on cancellation, an environment without the agent's secrets.
//! - [`transport`]: one port for TLS and plain connections, the TLS/client-certificate/token
//!   checks.
//! - [`metrics`]: Prometheus `/metrics` on its own listener.
//! - [`error`]: the service's errors and their one mapping to `tonic::Status`.
//!
//! Also served: `grpc.health.v1` (no authentication, so that the kubelet's gRPC probe works; it
//! reports `kanister.agent.v1.AgentService` as serving until shutdown begins).
//!
//! Shutdown ([`serve`]'s `shutdown` future): health turns `NOT_SERVING`, new operations are
//! refused, running ones are cancelled cleanly and awaited (at most `shutdown_grace`), then the
//! listeners close.

pub mod api;
pub mod command;
pub mod error;
pub mod metrics;
pub mod ops;
pub mod transport;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kanister_proto::agent::v1::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

pub use api::RepoDefaults;
pub use error::{Error, Result};
pub use ops::Limits;
pub use transport::{TlsError, TlsSettings};

/// `kanister-agent serve`: run the gRPC service.
///
/// Store and key come in each request, or from the global --store/--store-option/
/// --store-credentials/--password-file/--key-file settings (mounted Secrets), read at start.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address of the gRPC API
    #[arg(long, env = "KANISTER_LISTEN", default_value = "0.0.0.0:7433", value_name = "ADDR")]
    pub listen: String,
    /// Address of the Prometheus /metrics endpoint; "off" to serve none
    #[arg(long, env = "KANISTER_METRICS_LISTEN", default_value = "0.0.0.0:9433", value_name = "ADDR")]
    pub metrics_listen: String,
    /// Server certificate chain (PEM). With --tls-key, API requests are accepted only over TLS
    #[arg(long, env = "KANISTER_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM)
    #[arg(long, env = "KANISTER_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) of client certificates: callers must then present one it signed
    #[arg(long, env = "KANISTER_TLS_CLIENT_CA", requires = "tls_cert", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// File holding the bearer token callers must send (authorization: Bearer TOKEN). The
    /// service refuses to start without it, unless TLS with --tls-client-ca authenticates callers
    #[arg(long, env = "KANISTER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve without authentication: callers could then run commands in this container. Only
    /// on a loopback --listen (a test, a local try); warns at every start
    #[arg(long, env = "KANISTER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Operations running at once
    #[arg(long, env = "KANISTER_MAX_OPERATIONS", default_value_t = 2)]
    pub max_operations: usize,
    /// Operations waiting for a slot; beyond, requests are refused with RESOURCE_EXHAUSTED
    #[arg(long, env = "KANISTER_MAX_QUEUED", default_value_t = 16)]
    pub max_queued: usize,
    /// How long a finished operation's result stays available to callers re-attaching
    #[arg(long, env = "KANISTER_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Time between progress events
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
    /// How long shutdown waits for cancelled operations to clean up
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Everything [`serve`] needs besides its listener.
#[derive(Debug)]
pub struct ServeConfig {
    /// Store and key for requests that carry none.
    pub defaults: RepoDefaults,
    /// TLS; when set, API requests over plain TCP are refused.
    pub tls: Option<TlsSettings>,
    /// Bearer token callers must send. Secret.
    pub token: Option<Zeroizing<String>>,
    /// Concurrency, queue and retention.
    pub limits: Limits,
    /// Time between progress events.
    pub progress_interval: Duration,
    /// How long shutdown waits for cancelled operations.
    pub shutdown_grace: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listener: Option<TcpListener>,
    /// Serve without a token or client certificates; only on a loopback listener.
    pub insecure_no_auth: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            defaults: RepoDefaults::default(),
            tls: None,
            token: None,
            limits: Limits::default(),
            progress_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(20),
            metrics_listener: None,
            insecure_no_auth: false,
        }
    }
}

/// The service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The metrics server failed.
    #[error("the metrics server failed: {0}")]
    Metrics(#[source] std::io::Error),
    /// Nothing would authenticate callers.
    #[error("{0}")]
    Unauthenticated(String),
}

/// Refuses a service that anyone could call: a bearer token, or TLS with client certificates,
/// is required; `insecure_no_auth` is honoured only on a loopback address.
fn require_authentication(config: &ServeConfig, listener: &TcpListener) -> Result<(), ServeError> {
    let client_certs = config.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some());
    if config.token.is_some() || client_certs {
        return Ok(());
    }
    let addr = listener.local_addr().map_err(ServeError::Metrics)?;
    if !config.insecure_no_auth {
        return Err(ServeError::Unauthenticated(format!(
            "refusing to serve on {addr} without authentication: any caller could run commands in this \
             container. Give --token-file FILE (KANISTER_TOKEN_FILE; the Helm chart mounts the Secret \
             kanister-agent-token), or --tls-cert/--tls-key with --tls-client-ca FILE"
        )));
    }
    if !addr.ip().is_loopback() {
        return Err(ServeError::Unauthenticated(format!(
            "--insecure-no-auth is only for a loopback --listen (127.0.0.1 or ::1), not {addr}"
        )));
    }
    tracing::warn!(%addr, "serving WITHOUT authentication (--insecure-no-auth): anyone on this host can run commands here");
    Ok(())
}

/// Serves the API on `listener` (and `/metrics` on `config.metrics_listener`) until `shutdown`
/// completes; then stops as the module documentation says.
pub async fn serve(
    listener: TcpListener,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    require_authentication(&config, &listener)?;
    let tls = config.tls.as_ref().map(TlsSettings::acceptor).transpose()?;
    let metrics = Arc::new(metrics::Metrics::default());
    let registry = Arc::new(ops::Registry::new(config.limits, metrics.clone()));
    let auth = transport::Auth {
        token: config.token.map(Arc::new),
        require_tls: tls.is_some(),
        require_client_cert: config.tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()),
        metrics: metrics.clone(),
    };
    let api = api::Api {
        registry: registry.clone(),
        defaults: Arc::new(config.defaults),
        interval: config.progress_interval.max(Duration::from_millis(10)),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<api::Api>>().await;

    // One shutdown signal, fanned out: operations first, then the listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grace = config.shutdown_grace;
    let stopper = tokio::spawn({
        let registry = registry.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: cancelling running operations");
            health.set_not_serving::<AgentServiceServer<api::Api>>().await;
            registry.shutdown(grace).await;
            let _ = stop_tx.send(true);
        }
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    let metrics_task = config.metrics_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(addr = %a, "serving /metrics");
        }
        tokio::spawn(metrics::serve(l, metrics.clone(), stopped()))
    });
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, tls = auth.require_tls, token = auth.token.is_some(), "serving kanister.agent.v1");
    }
    let result = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(AgentServiceServer::with_interceptor(api, auth))
        .serve_with_incoming_shutdown(transport::incoming(listener, tls), stopped())
        .await;
    stopper.abort();
    if let Some(t) = metrics_task
        && let Ok(Err(e)) = t.await
    {
        return Err(ServeError::Metrics(e));
    }
    result?;
    Ok(())
}

/// `kanister-agent serve`: binds, reads the mounted files, serves until SIGTERM or Ctrl-C.
pub async fn run(args: &ServeArgs, defaults: RepoDefaults) -> crate::Result<()> {
    let io = |what: String| move |e| crate::Error::io(what, e);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(
            TlsSettings::from_files(c, k, args.tls_client_ca.as_deref())
                .map_err(|e| crate::Error::io("cannot set up TLS", std::io::Error::other(e.to_string())))?,
        ),
        _ => None,
    };
    let token = match &args.token_file {
        Some(p) => {
            let t = Zeroizing::new(std::fs::read_to_string(p).map_err(io(format!("cannot read {}", p.display())))?);
            let t = Zeroizing::new(t.trim().to_string());
            if t.is_empty() {
                return Err(crate::Error::io(
                    format!("the token file {} is empty", p.display()),
                    std::io::ErrorKind::InvalidData.into(),
                ));
            }
            Some(t)
        }
        None => None,
    };
    if tls.is_none() && token.is_some() {
        tracing::warn!("a bearer token without TLS travels in clear text: give --tls-cert and --tls-key");
    }
    let listener = TcpListener::bind(&args.listen).await.map_err(io(format!("cannot listen on {}", args.listen)))?;
    let metrics_listener = if args.metrics_listen == "off" || args.metrics_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&args.metrics_listen)
                .await
                .map_err(io(format!("cannot listen on {}", args.metrics_listen)))?,
        )
    };
    let config = ServeConfig {
        defaults,
        tls,
        token,
        limits: Limits {
            max_running: args.max_operations,
            max_queued: args.max_queued,
            retention: args.retention,
            ..Limits::default()
        },
        progress_interval: args.progress_interval,
        shutdown_grace: args.shutdown_grace,
        metrics_listener,
        insecure_no_auth: args.insecure_no_auth,
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    serve(listener, config, shutdown).await.map_err(|e| match e {
        ServeError::Unauthenticated(why) => {
            crate::Error::io(why, std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        }
        e => crate::Error::io("the service failed", std::io::Error::other(e.to_string())),
    })
}
