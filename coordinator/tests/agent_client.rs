//! The coordinator's agent-client flags (`--agent-token-file`, `--agent-ca-file`,
//! `--agent-tls-domain`, `--agent-client-cert`/`--agent-client-key`): parsed as the binary
//! parses them, loaded from files, and used by the engine to run `BackupData` through an
//! in-process agent that requires TLS, a client certificate and a bearer token. A missing
//! client certificate or a wrong token fails the phase (and says why without the token).
//!
//! Certificates come from [`kanister_testkit::tls`]; the repository is a local directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kanister_agent::service::{self, ServeConfig, TlsSettings};
use kanister_coordinator::cluster::Cluster;
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::crd::State;
use kanister_coordinator::engine::agent::{AgentClientArgs, AgentClientConfig};
use kanister_coordinator::engine::{Engine, EngineConfig};
use kanister_testkit::tls::ServerNames;
use serde_json::json;
use zeroize::Zeroizing;

mod support;
use support::{engine_config, run_to_end};

const TOKEN: &str = "agent-token-51f0c9d2";
/// The name the agent's certificate carries (not the address the coordinator dials).
const AGENT_NAME: &str = "agent.kanister.test";

/// The coordinator's flags for the agent client, as `kanister-coordinator serve` flattens them.
#[derive(Parser, Debug)]
struct Flags {
    #[command(flatten)]
    agent: AgentClientArgs,
}

fn flags(args: &[&str]) -> Result<AgentClientArgs, clap::Error> {
    Flags::try_parse_from(std::iter::once("coordinator").chain(args.iter().copied())).map(|f| f.agent)
}

/// A CA, a server certificate for [`AGENT_NAME`] and a client certificate, in `dir`.
fn make_certs(dir: &Path) {
    kanister_testkit::tls::make_certs(
        dir,
        ServerNames { cn: AGENT_NAME, san: &format!("DNS:{AGENT_NAME}") },
        "kanister-coordinator",
    );
}

#[test]
fn secrets_come_from_files_never_from_flag_values() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(d("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(d("empty"), "  \n").unwrap();
    std::fs::write(d("ca.pem"), "not a certificate").unwrap();

    // There is no flag that takes the token itself.
    let err = flags(&["--agent-token", TOKEN]).unwrap_err().to_string();
    assert!(err.contains("unexpected argument '--agent-token'"), "{err}");
    // TLS settings that make no sense alone are refused.
    assert!(flags(&["--agent-tls-domain", "x"]).is_err(), "a TLS name without a CA");
    assert!(flags(&["--agent-ca-file", "/x", "--agent-client-cert", "/c"]).is_err(), "a certificate without its key");
    assert!(flags(&["--agent-client-cert", "/c", "--agent-client-key", "/k"]).is_err(), "a client cert without a CA");

    // The token file is read and trimmed; Debug shows nothing of it.
    let config = flags(&["--agent-token-file", &d("token"), "--agent-connect-timeout", "3s"]).unwrap().load().unwrap();
    assert_eq!(config.token.as_deref().map(String::as_str), Some(TOKEN));
    assert_eq!(config.connect_timeout, Duration::from_secs(3));
    assert!(config.tls.is_none());
    assert!(!format!("{config:?}").contains(TOKEN));
    // Defaults: no token, no TLS, 10 seconds.
    let config = flags(&[]).unwrap().load().unwrap();
    assert!(config.token.is_none() && config.tls.is_none());
    assert_eq!(config.connect_timeout, Duration::from_secs(10));

    // Unusable files fail the load, naming the file and never its contents.
    for (args, want) in [
        (vec!["--agent-token-file", &d("missing")], "missing"),
        (vec!["--agent-token-file", &d("empty")], "empty"),
        (vec!["--agent-ca-file", &d("ca.pem")], "no PEM certificate"),
    ] {
        let err = flags(&args).unwrap().load().unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
        assert!(chain.contains(want), "{args:?}: {chain}");
    }
}

struct World {
    cluster: Arc<LocalCluster>,
    _source: tempfile::TempDir,
    _repo: tempfile::TempDir,
}

fn world(endpoint: &str) -> World {
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("a")).unwrap();
    std::fs::write(source.path().join("a/file.txt"), "over mutual TLS\n").unwrap();
    let repo = tempfile::tempdir().unwrap();
    let c = LocalCluster::new().with_agent("app", "app-0", endpoint);
    let objects = format!(
        r#"
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: local, namespace: kanister}}
location: {{type: local, path: "{repo}"}}
credential: {{type: secret, secret: {{kind: Secret, name: local-unused, namespace: kanister}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: local-unused, namespace: kanister}}
stringData: {{unused: "a local directory needs no credential"}}
---
apiVersion: cr.kanister.io/v1alpha1
kind: Blueprint
metadata: {{name: files, namespace: kanister}}
actions:
  backup:
    phases:
    - func: BackupData
      name: backup
      args:
        namespace: app
        pod: app-0
        container: app
        includePath: "{source}"
        backupArtifactPrefix: unused
"#,
        repo = repo.path().display(),
        source = source.path().display(),
    );
    c.load_yaml(&objects, "world").unwrap();
    World { cluster: Arc::new(c), _source: source, _repo: repo }
}

/// Runs the backup with the engine configured by `agent`; returns its final state and error.
async fn backup(w: &World, name: &str, agent: AgentClientConfig) -> (State, String) {
    let engine = Engine::new(w.cluster.clone(), EngineConfig { agent, ..engine_config(None) });
    w.cluster.put(json!({
        "apiVersion": "cr.kanister.io/v1alpha1",
        "kind": "ActionSet",
        "metadata": {"name": name, "namespace": "kanister"},
        "spec": {"actions": [{
            "name": "backup",
            "blueprint": "files",
            "object": {"kind": "Namespace", "name": "app"},
            "profile": {"name": "local", "namespace": "kanister"},
        }]}
    }));
    let status = run_to_end(&engine, name, Duration::from_secs(60)).await.status.unwrap();
    (status.state, status.error.map(|e| e.message).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reaches_an_agent_over_mutual_tls_with_the_token_from_its_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let d = |n: &str| certs.path().join(n).display().to_string();
    std::fs::write(d("token"), TOKEN).unwrap();
    std::fs::write(d("wrong-token"), "not-the-token").unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let tls = TlsSettings::from_files(
        &certs.path().join("server.pem"),
        &certs.path().join("server.key"),
        Some(&certs.path().join("ca.pem")),
    )
    .unwrap();
    let config = ServeConfig {
        tls: Some(tls),
        token: Some(Zeroizing::new(TOKEN.to_string())),
        progress_interval: Duration::from_millis(20),
        ..ServeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(service::serve(listener, config, async {
        let _ = stopped.await;
    }));
    let w = world(&endpoint);
    let (token, wrong_token) = (d("token"), d("wrong-token"));
    let tls_flags = ["--agent-ca-file", &d("ca.pem"), "--agent-tls-domain", AGENT_NAME];
    let client_cert = ["--agent-client-cert", &d("client.pem"), "--agent-client-key", &d("client.key")];

    // Everything right: the backup completes over TLS.
    let all: Vec<&str> = [&tls_flags[..], &client_cert[..], &["--agent-token-file", &token]].concat();
    let (state, error) = backup(&w, "tls-ok", flags(&all).unwrap().load().unwrap()).await;
    assert_eq!(state, State::Complete, "{error}");
    let a = w.cluster.get_actionset("kanister", "tls-ok").await.unwrap();
    let output = &a.status.unwrap().actions[0].phases[0].output;
    assert_eq!(output["fileCount"].as_u64(), Some(1), "{output:?}");

    // No client certificate: the agent refuses the connection.
    let no_cert: Vec<&str> = [&tls_flags[..], &["--agent-token-file", &token]].concat();
    let (state, error) = backup(&w, "tls-no-cert", flags(&no_cert).unwrap().load().unwrap()).await;
    assert_eq!(state, State::Failed);
    assert!(error.contains("BackupData") && error.contains("app/app-0"), "{error}");
    assert!(error.contains("client certificate"), "{error}");

    // The wrong token: unauthenticated, and the message shows neither token.
    let wrong: Vec<&str> = [&tls_flags[..], &client_cert[..], &["--agent-token-file", &wrong_token]].concat();
    let (state, error) = backup(&w, "tls-wrong-token", flags(&wrong).unwrap().load().unwrap()).await;
    assert_eq!(state, State::Failed);
    assert!(error.contains("Unauthenticated"), "{error}");
    assert!(!error.contains(TOKEN) && !error.contains("not-the-token"), "{error}");

    // Plain HTTP/2 to a TLS agent: refused too.
    let plain = ["--agent-token-file", &token];
    let (state, error) = backup(&w, "plain", flags(&plain).unwrap().load().unwrap()).await;
    assert_eq!(state, State::Failed);
    assert!(error.contains("only over TLS"), "{error}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), agent).await.unwrap().unwrap().unwrap();
}
