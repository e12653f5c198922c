//! `kanister-coordinator`: runs the ActionSet controller against a cluster, or runs the
//! ActionSets of a directory of YAML files on this machine (`run-local`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kanister_coordinator::api::{CoordinatorApi, ServeConfig};
use kanister_coordinator::cluster::Cluster;
use kanister_coordinator::cluster::kube::KubeCluster;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::controller::{self, Namespaces};
use kanister_coordinator::engine::agent::AgentClientArgs;
use kanister_coordinator::engine::{Engine, EngineConfig};
use zeroize::Zeroizing;

/// The Kanister coordinator: runs Blueprint actions requested by ActionSets.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Log format.
    #[arg(long, env = "KANISTER_LOG_FORMAT", default_value = "compact", value_parser = ["compact", "json"])]
    log_format: String,
    /// Timeout of an ActionSet without `spec.timeout` (e.g. `24h`).
    #[arg(long, env = "KANISTER_ACTIONSET_TIMEOUT", default_value = "24h", value_parser = humantime::parse_duration)]
    actionset_timeout: Duration,
    /// Timeout of a phase without `timeout` (e.g. `6h`).
    #[arg(long, env = "KANISTER_PHASE_TIMEOUT", default_value = "6h", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// Memory limit of the task pods that run the agent (CopyVolumeData, RestoreData into
    /// volumes, DeleteData, LocationDelete, BackupDataStats, CheckRepository, maintenance,
    /// `kanctl snapshots`): pruning takes about 100 bytes per blob of the repository. "" for none
    #[arg(long, env = "KANISTER_TASK_MEMORY_LIMIT", default_value = "1Gi", value_parser = parse_quantity)]
    task_memory_limit: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Watch ActionSets in a cluster and run them; with --local DIR, without a cluster.
    Serve {
        /// Run without a cluster: the same controller and API over a local cluster whose
        /// objects come from the YAML files in DIR (read again when they change) and from the
        /// API (kanctl); commands run as local processes. State (objects, statuses, events, the
        /// repository-key Secret) is kept in DIR/.kanister, so a restart goes on where it
        /// stopped. Listens on loopback; kanctl finds the token in DIR/.kanister/token.
        #[arg(long, value_name = "DIR", env = "KANISTER_LOCAL")]
        local: Option<PathBuf>,
        /// Namespace to watch (the coordinator's own by default).
        #[arg(long, env = "KANISTER_NAMESPACE", default_value = "kanister")]
        namespace: String,
        /// More namespaces to watch, comma-separated.
        #[arg(long, env = "KANISTER_WATCH_NAMESPACES", value_delimiter = ',')]
        watch_namespaces: Vec<String>,
        /// Watch every namespace.
        #[arg(long, env = "KANISTER_ALL_NAMESPACES")]
        all_namespaces: bool,
        /// Address of `/healthz`, `/readyz` and `/metrics` (default 0.0.0.0:8000; with
        /// --local 127.0.0.1:8000).
        #[arg(long, env = "KANISTER_LISTEN")]
        listen: Option<SocketAddr>,
        /// How many ActionSets are reconciled at once.
        #[arg(long, env = "KANISTER_CONCURRENCY", default_value_t = 16)]
        concurrency: u16,
        /// Address of the gRPC API that kanctl speaks (`kanister.coordinator.v1`; default
        /// 0.0.0.0:7434; with --local 127.0.0.1:7434), or "off". Callers must send the token
        /// of --token-file: without one the API refuses to start.
        #[arg(long, env = "KANISTER_API_LISTEN", value_parser = parse_api_listen)]
        api_listen: Option<ApiListen>,
        /// Serve the API without a token. Only for a loopback --api-listen (a test, a port
        /// forward); warns at every start.
        #[arg(long, env = "KANISTER_INSECURE_NO_AUTH")]
        insecure_no_auth: bool,
        /// TLS certificate (PEM) of the API; without it the API is plain HTTP/2.
        #[arg(long, env = "KANISTER_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM) of the API.
        #[arg(long, env = "KANISTER_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// File holding the token API clients must send (`authorization: Bearer ...`).
        #[arg(long, env = "KANISTER_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// How the coordinator reaches agent sidecars (token, TLS).
        #[command(flatten)]
        agent: AgentClientArgs,
        /// How often the repositories of the watched namespaces' Profiles are maintained
        /// (prune, then a structural check, in a task pod of the tools image); 0s turns it off.
        #[arg(long, env = "KANISTER_MAINTENANCE_INTERVAL", default_value = "24h", value_parser = humantime::parse_duration)]
        maintenance_interval: Duration,
        /// How long data no backup uses waits between being set aside and deleted by
        /// maintenance (a backup that started before may still need it).
        #[arg(long, env = "KANISTER_MAINTENANCE_GRACE_PERIOD", default_value = "1h", value_parser = humantime::parse_duration)]
        maintenance_grace_period: Duration,
        /// Namespaces whose Profiles are maintained, comma-separated (default: the watched
        /// namespaces; all with --all-namespaces).
        #[arg(long, env = "KANISTER_MAINTENANCE_NAMESPACES", value_delimiter = ',')]
        maintenance_namespaces: Vec<String>,
        /// Run ActionSets only while holding the leader Lease, so that replicas never run the
        /// same ActionSet twice (the others serve the API and wait). Off only for a single
        /// coordinator that cannot write Leases.
        #[arg(long, env = "KANISTER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        /// Namespace of the leader Lease (default: --namespace).
        #[arg(long, env = "KANISTER_LEADER_ELECT_NAMESPACE")]
        leader_elect_namespace: Option<String>,
        /// Name of the leader Lease: coordinators sharing it elect one leader.
        #[arg(long, env = "KANISTER_LEADER_ELECT_LEASE", default_value = "kanister-coordinator")]
        leader_elect_lease: String,
        /// How long a leader that stopped renewing keeps the Lease (others wait that long).
        #[arg(long, env = "KANISTER_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
        leader_elect_lease_duration: Duration,
        /// How long the leader may fail to renew (an API server outage) before it stops running
        /// ActionSets and exits; shorter than the lease duration.
        #[arg(long, env = "KANISTER_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
        leader_elect_renew_deadline: Duration,
    },
    /// Run the ActionSets found in a directory of YAML files on this machine (commands run as
    /// local processes) and print their final status.
    RunLocal {
        /// Directory of YAML files: workloads, pods, Secrets, Blueprints, Profiles, ActionSets.
        #[arg(long, env = "KANISTER_LOCAL_DIR")]
        dir: PathBuf,
        /// Keep state (statuses, events) in this file, so a re-run resumes.
        #[arg(long, env = "KANISTER_LOCAL_STATE")]
        state: Option<PathBuf>,
        /// How the coordinator reaches agent sidecars (token, TLS), found from the Pods' YAML.
        #[command(flatten)]
        agent: AgentClientArgs,
    },
}

/// Where the API listens, if anywhere.
#[derive(Debug, Clone, Copy)]
enum ApiListen {
    Off,
    At(SocketAddr),
}

fn parse_api_listen(s: &str) -> Result<ApiListen, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ApiListen::Off);
    }
    s.parse().map(ApiListen::At).map_err(|e| format!("{e}: give ADDRESS:PORT or \"off\""))
}

/// The API's address, refusing to serve it without authentication: a token file is required,
/// except with --insecure-no-auth on a loopback address.
fn api_address(
    listen: Option<ApiListen>,
    default: SocketAddr,
    token_file: &Option<PathBuf>,
    insecure: bool,
) -> anyhow::Result<Option<SocketAddr>> {
    let addr = match listen.unwrap_or(ApiListen::At(default)) {
        ApiListen::Off => return Ok(None),
        ApiListen::At(a) => a,
    };
    if token_file.is_some() {
        return Ok(Some(addr));
    }
    if !insecure {
        anyhow::bail!(
            "the API on {addr} would accept anyone's ActionSets: give --token-file FILE (KANISTER_TOKEN_FILE) \
             with the token kanctl must send (the Helm chart mounts it from the Secret \
             service.grpc.token.secretName), or --api-listen off to serve no API"
        );
    }
    if !addr.ip().is_loopback() {
        anyhow::bail!("--insecure-no-auth is only for a loopback --api-listen (127.0.0.1 or ::1), not {addr}");
    }
    tracing::warn!(%addr, "the API accepts calls without a token (--insecure-no-auth): anyone on this host can create ActionSets");
    Ok(Some(addr))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Logs go to stderr: stdout carries `run-local`'s results.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown` resolves.
async fn serve_health(
    listener: tokio::net::TcpListener,
    ready: Arc<AtomicBool>,
    metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .route("/metrics", get(move || std::future::ready(metrics())));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// The API's TLS and token settings, read from (mounted) files.
fn api_config(
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    token_file: Option<PathBuf>,
) -> anyhow::Result<ServeConfig> {
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("failed to read {}", p.display()));
    let tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some((read(&c)?, Zeroizing::new(read(&k)?))),
        _ => None,
    };
    let token = match token_file {
        Some(p) => {
            let bytes = Zeroizing::new(read(&p)?);
            let text = std::str::from_utf8(&bytes).with_context(|| format!("{} is not UTF-8", p.display()))?;
            Some(Zeroizing::new(text.trim().to_string()))
        }
        None => None,
    };
    Ok(ServeConfig { tls, token })
}

/// `serve --local DIR`: the controller and the API over a [`LocalCluster`] kept in DIR.
async fn serve_local(
    dir: &std::path::Path,
    listen: SocketAddr,
    api_listen: SocketAddr,
    mut api_config: ServeConfig,
    config: EngineConfig,
) -> anyhow::Result<()> {
    let state = dir.join(".kanister");
    std::fs::create_dir_all(&state).with_context(|| format!("failed to create {}", state.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // It holds the repository keys of the Profiles and the API token.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("failed to restrict {}", state.display()))?;
    }
    let token_path = state.join("token");
    if api_config.token.is_none() {
        api_config.token = Some(local_token(&token_path)?);
    }
    let cluster = LocalCluster::with_state_file(state.join("state.json"))
        .with_context(|| format!("failed to read the state in {}", state.display()))?;
    // Task pods run the tools image's programs from PATH: `kanister-agent` and `kando` are
    // installed beside this binary, so its directory comes first.
    let cluster = match std::env::current_exe().ok().as_deref().and_then(std::path::Path::parent) {
        Some(dir) => {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let joined = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)))
                .context("the directory of kanister-coordinator cannot go on PATH")?;
            cluster.with_env("PATH", joined.to_string_lossy().into_owned())
        }
        None => cluster,
    };
    let loaded =
        cluster.load_dir(dir).with_context(|| format!("failed to load the YAML files of {}", dir.display()))?;
    let cluster = Arc::new(cluster);
    let engine = Engine::new(cluster.clone(), config);
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("failed to bind {listen}"))?;
    let api_listener =
        tokio::net::TcpListener::bind(api_listen).await.with_context(|| format!("failed to bind {api_listen}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let metrics_engine = engine.clone();
    let health = tokio::spawn(serve_health(listener, ready.clone(), move || metrics_engine.metrics_text(), stopped()));
    let api = tokio::spawn(kanister_coordinator::api::serve(
        api_listener,
        CoordinatorApi::new(cluster.clone()).with_task_config(engine.config().clone()),
        api_config,
        stopped(),
    ));
    tracing::info!(dir = %dir.display(), objects = loaded, %api_listen, "local coordinator starting");
    eprintln!(
        "local coordinator on {api_listen}; for kanctl:\n  export KANCTL_COORDINATOR=http://{api_listen} KANCTL_TOKEN_FILE={}",
        token_path.display()
    );
    ready.store(true, Ordering::Relaxed);
    let mut version = LocalCluster::dir_version(dir).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut signal => break,
        }
        // YAML files added or edited: load them again (ActionSets that exist are kept).
        let now = LocalCluster::dir_version(dir).ok();
        if now != version {
            version = now;
            match cluster.load_dir(dir) {
                Ok(n) => tracing::info!(objects = n, "reloaded the YAML files"),
                Err(e) => tracing::warn!(error = %e, "cannot load the YAML files; keeping what was loaded"),
            }
        }
        match cluster.list_actionsets("").await {
            Ok(all) => {
                for a in all {
                    let ns = a.metadata.namespace.clone().unwrap_or_default();
                    let name = a.metadata.name.clone().unwrap_or_default();
                    if let Err(e) = engine.reconcile(&ns, &name).await {
                        tracing::warn!(actionset = %name, namespace = %ns, error = %e, "reconcile failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list ActionSets"),
        }
    }
    let _ = stop_tx.send(true);
    // Runs still in progress are finished (or failed) by the next start's recovery.
    engine.shutdown();
    health.await.context("health server task failed")?.context("health server failed")?;
    api.await.context("API server task failed")??;
    tracing::info!("local coordinator stopped");
    Ok(())
}

/// The API token of a local coordinator: read from `path`, or made (random, mode 0600) there.
fn local_token(path: &std::path::Path) -> anyhow::Result<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(Zeroizing::new(t.trim().to_string())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
    let token = Zeroizing::new(hex::encode(rand::random::<[u8; 32]>()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path).with_context(|| format!("failed to create {}", path.display()))?;
    std::io::Write::write_all(&mut f, token.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(token)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = EngineConfig {
        actionset_timeout: args.actionset_timeout,
        phase_timeout: args.phase_timeout,
        task_memory_limit: args.task_memory_limit.clone(),
        ..EngineConfig::default()
    };
    match args.command {
        Command::Serve { local: Some(dir), listen, api_listen, tls_cert, tls_key, token_file, agent, .. } => {
            let config = EngineConfig { agent: agent.load()?, ..config };
            let listen = listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
            // The local coordinator makes its own token (DIR/.kanister/token) when given none.
            let api_listen = match api_listen.unwrap_or(ApiListen::At(SocketAddr::from(([127, 0, 0, 1], 7434)))) {
                ApiListen::At(a) => a,
                ApiListen::Off => anyhow::bail!("serve --local needs its API: kanctl is how it is used"),
            };
            serve_local(&dir, listen, api_listen, api_config(tls_cert, tls_key, token_file)?, config).await?;
        }
        Command::Serve {
            local: None,
            namespace,
            watch_namespaces,
            all_namespaces,
            listen,
            concurrency,
            api_listen,
            tls_cert,
            tls_key,
            token_file,
            insecure_no_auth,
            agent,
            maintenance_interval,
            maintenance_grace_period,
            maintenance_namespaces,
            leader_elect,
            leader_elect_namespace,
            leader_elect_lease,
            leader_elect_lease_duration,
            leader_elect_renew_deadline,
        } => {
            if leader_elect && leader_elect_renew_deadline >= leader_elect_lease_duration {
                anyhow::bail!(
                    "--leader-elect-renew-deadline ({}) must be shorter than --leader-elect-lease-duration ({}): \
                     a leader must stop before another may take over",
                    humantime::format_duration(leader_elect_renew_deadline),
                    humantime::format_duration(leader_elect_lease_duration)
                );
            }
            let lease = leader_elect.then(|| {
                // The pod's name (POD_NAME, from the chart) and a random suffix: a restarted pod
                // is a new candidate.
                let who = std::env::var("POD_NAME")
                    .or_else(|_| std::env::var("HOSTNAME"))
                    .unwrap_or_else(|_| "coordinator".into());
                let identity = format!("{who}_{}", hex::encode(rand::random::<[u8; 4]>()));
                let ns = leader_elect_namespace.clone().unwrap_or_else(|| namespace.clone());
                kanister_coordinator::leader::LeaseConfig {
                    duration: leader_elect_lease_duration,
                    renew_deadline: leader_elect_renew_deadline,
                    ..kanister_coordinator::leader::LeaseConfig::new(&ns, &leader_elect_lease, &identity)
                }
            });
            // Read the agent client's files first: a missing token fails the start, not a backup.
            let config = EngineConfig { agent: agent.load()?, ..config };
            let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8000)));
            let api_listen =
                api_address(api_listen, SocketAddr::from(([0, 0, 0, 0], 7434)), &token_file, insecure_no_auth)?;
            let client = kube::Client::try_default().await.context("failed to create a Kubernetes client")?;
            let cluster = Arc::new(KubeCluster::new(client.clone(), "kanister-coordinator"));
            let engine = Engine::new(cluster, config);
            let namespaces = if all_namespaces {
                Namespaces::All
            } else {
                let mut list = vec![namespace];
                list.extend(watch_namespaces.into_iter().filter(|n| !n.is_empty()));
                list.dedup();
                Namespaces::Only(list)
            };
            let ready = Arc::new(AtomicBool::new(false));
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("failed to bind {listen}"))?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let stopped = move || {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            let metrics_engine = engine.clone();
            let health =
                tokio::spawn(serve_health(listener, ready.clone(), move || metrics_engine.metrics_text(), stopped()));
            let api_config = api_config(tls_cert, tls_key, token_file)?;
            let api = match api_listen {
                None => None,
                Some(addr) => {
                    let api_listener =
                        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("failed to bind {addr}"))?;
                    // The controller runs what the API creates: the API only writes the custom resources.
                    Some(tokio::spawn(kanister_coordinator::api::serve(
                        api_listener,
                        CoordinatorApi::new(engine.cluster().clone()).with_task_config(engine.config().clone()),
                        api_config,
                        stopped(),
                    )))
                }
            };
            tracing::info!(%listen, ?api_listen, ?namespaces, ?maintenance_interval, "coordinator starting");
            ready.store(true, Ordering::Relaxed);
            let shutdown = tokio_util::sync::CancellationToken::new();
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    shutdown_signal().await;
                    shutdown.cancel();
                }
            });
            // None: stopped before it led, so nothing ran here.
            let leading = match lease {
                None => Some(None),
                Some(config) => {
                    tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "waiting for the leader lease");
                    kanister_coordinator::leader::acquire(client.clone(), config, shutdown.clone()).await.map(Some)
                }
            };
            match leading {
                None => {
                    let _ = stop_tx.send(true);
                }
                Some(leadership) => {
                    let maintenance = (!maintenance_interval.is_zero()).then(|| {
                        let config = kanister_coordinator::engine::maintenance::MaintenanceConfig {
                            interval: maintenance_interval,
                            grace: maintenance_grace_period,
                            namespaces: match &namespaces {
                                Namespaces::All => Vec::new(),
                                Namespaces::Only(_) if maintenance_namespaces.iter().any(|n| !n.is_empty()) => {
                                    maintenance_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect()
                                }
                                Namespaces::Only(list) => list.clone(),
                            },
                        };
                        let engine = engine.clone();
                        let stop = stopped();
                        tokio::spawn(async move { engine.run_maintenance(config, stop).await })
                    });
                    let lost = leadership.as_ref().map(|l| l.lost());
                    let signal = {
                        let (shutdown, lost) = (shutdown.clone(), lost.clone());
                        async move {
                            match lost {
                                None => shutdown.cancelled().await,
                                Some(lost) => tokio::select! {
                                    _ = shutdown.cancelled() => {}
                                    _ = lost.cancelled() => {}
                                },
                            }
                            let _ = stop_tx.send(true);
                        }
                    };
                    controller::run(client, namespaces, engine.clone(), concurrency, signal).await;
                    // Runs still in progress are finished by the next coordinator's recovery.
                    engine.shutdown();
                    if lost.is_some_and(|l| l.is_cancelled()) {
                        anyhow::bail!(
                            "lost the leader lease: stopped running ActionSets so that none runs twice; the next leader \
                         fails the phases that were interrupted"
                        );
                    }
                    if let Some(l) = leadership {
                        l.release().await;
                    }
                    if let Some(m) = maintenance {
                        m.await.context("maintenance task failed")?;
                    }
                }
            }
            health.await.context("health server task failed")?.context("health server failed")?;
            if let Some(api) = api {
                api.await.context("API server task failed")??;
            }
            tracing::info!("coordinator stopped");
        }
        Command::RunLocal { dir, state, agent } => {
            let config = EngineConfig { agent: agent.load()?, ..config };
            let cluster = match state {
                Some(path) => LocalCluster::with_state_file(path)?,
                None => LocalCluster::new(),
            };
            cluster.load_dir(&dir).with_context(|| format!("failed to load {}", dir.display()))?;
            let cluster = Arc::new(cluster);
            let engine = Engine::new(cluster.clone(), config);
            let all = cluster.list_actionsets("").await?;
            for a in &all {
                let ns = a.metadata.namespace.clone().unwrap_or_default();
                let name = a.metadata.name.clone().unwrap_or_default();
                engine.reconcile(&ns, &name).await?;
            }
            let mut failed = false;
            for a in &all {
                let ns = a.metadata.namespace.clone().unwrap_or_default();
                let name = a.metadata.name.clone().unwrap_or_default();
                engine.wait(&ns, &name).await;
                let done = cluster.get_actionset(&ns, &name).await?;
                failed |= done.status.as_ref().is_some_and(|s| s.state != kanister_coordinator::crd::State::Complete);
                print!("---\n{}", serde_norway::to_string(&done)?);
            }
            if failed {
                anyhow::bail!("at least one ActionSet did not complete");
            }
        }
    }
    Ok(())
}

/// A memory quantity as Kubernetes takes it (`512Mi`, `2Gi`, `1G`, `1073741824`), or "".
fn parse_quantity(s: &str) -> Result<String, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let unit = &t[digits..];
    let units = ["", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"];
    if t.is_empty() || (digits > 0 && units.contains(&unit)) {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{s:?} is not a memory quantity: write it as Kubernetes does, e.g. 512Mi or 2Gi (\"\" for no limit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_limits_are_kubernetes_quantities() {
        for ok in ["", "1Gi", "512Mi", "2G", "1073741824"] {
            assert_eq!(super::parse_quantity(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["Gi", "1 GB", "1gib", "-1Gi", "1.5Gi"] {
            let e = super::parse_quantity(bad).unwrap_err();
            assert!(e.contains("512Mi"), "{bad}: {e}");
        }
    }
}
