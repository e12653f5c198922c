//! `kanctl snapshots` and `ListSnapshots` against a Profile's repository in SeaweedFS, through
//! the coordinator's gRPC API (with a token) on a `LocalCluster`: one clear answer for each
//! state of the Profile and its location (missing Profile, unreadable credential, no key
//! Secret yet, no repository at the location, a key that does not open it, a repository holding
//! a snapshot pushed by hand), and for a wrong token and an unreachable coordinator.
//! (A snapshot made by a real ActionSet and tied to it: `kanctl_mariadb.rs`.)
//!
//! Needs `KANISTER_TEST_S3_*` (`eval "$(bash tests/infra.sh env)"`); fails without them.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use clap::Parser as _;
use kanister_coordinator::api::{CoordinatorApi, ServeConfig, serve};
use kanister_coordinator::cluster::local::LocalCluster;
use kanister_coordinator::engine::repokey;
use kanister_coordinator::kanctl::{self, Cli, Error, Io, Outcome};
use kanister_proto::coordinator::v1 as pb;
use serde_json::{Value, json};
use zeroize::Zeroizing;

mod support;
use support::{infra_var, s3_profile_yaml, unique_name};

const TOKEN: &str = "snapshots-token-value";

/// kanctl in-process with `token_file` (none: no token); the result and stdout.
async fn kanctl(addr: SocketAddr, token_file: Option<&Path>, args: &[&str]) -> (Result<Outcome, Error>, String) {
    let address = format!("http://{addr}");
    let mut argv = vec!["kanctl".to_string(), "--coordinator".into(), address, "--config".into(), "/dev/null".into()];
    if let Some(p) = token_file {
        argv.extend(["--token-file".into(), p.display().to_string()]);
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?} does not parse: {e}"));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let r = kanctl::run(cli, None, &mut Io { out: &mut out, err: &mut err, live: false }).await;
    (r, String::from_utf8(out).unwrap())
}

fn key_secret(key: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": format!("{}s3-profile", repokey::SECRET_PREFIX), "namespace": "kanister"},
        "stringData": {repokey::SECRET_KEY: key},
    })
}

/// Pushes `data` at `path` into the Profile's location with `kando`, as a task pod would.
fn kando_push(prefix: &str, key: &str, path: &str, data: &[u8]) {
    let profile = json!({
        "Location": {
            "type": "s3Compliant",
            "bucket": infra_var("KANISTER_TEST_S3_BUCKET"),
            "endpoint": infra_var("KANISTER_TEST_S3_ENDPOINT"),
            "prefix": prefix,
            "region": "us-east-1",
        },
        "Credential": {"Type": "keyPair", "KeyPair": {
            "ID": infra_var("KANISTER_TEST_S3_ACCESS_KEY"),
            "Secret": infra_var("KANISTER_TEST_S3_SECRET_KEY"),
        }},
        "SkipSSLVerify": false,
    });
    let mut child = std::process::Command::new(support::agent_binary())
        .args(["kando", "location", "push", "--profile", &profile.to_string(), "--path", path, "-"])
        .env("KANISTER_REPO_KEY", key)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kando runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "kando push failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_of_a_profiles_location_has_one_clear_answer() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let prefix = unique_name("kanctl-snapshots", "repo");
    let (bucket, s3_secret) = (infra_var("KANISTER_TEST_S3_BUCKET"), infra_var("KANISTER_TEST_S3_SECRET_KEY"));
    let cluster = Arc::new(LocalCluster::new().with_env("PATH", support::tools_env_path()));
    // The Profile and its credentials, and a Profile whose credential Secret does not exist.
    let world = format!(
        r#"{profile}---
apiVersion: cr.kanister.io/v1alpha1
kind: Profile
metadata: {{name: orphan-profile, namespace: kanister}}
location: {{type: s3Compliant, bucket: "{bucket}", endpoint: "{endpoint}", prefix: "{prefix}", region: us-east-1}}
credential:
  type: keyPair
  keyPair:
    idField: aws_access_key_id
    secretField: aws_secret_access_key
    secret: {{apiVersion: v1, kind: secret, name: gone, namespace: kanister}}
"#,
        profile = s3_profile_yaml("kanister", "s3-profile", "s3-credentials", &prefix),
        endpoint = infra_var("KANISTER_TEST_S3_ENDPOINT"),
    );
    cluster.load_yaml(&world, "world").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = ServeConfig { tls: None, token: Some(Zeroizing::new(TOKEN.into())) };
    let server = tokio::spawn(serve(listener, CoordinatorApi::new(cluster.clone()), config, async move {
        let _ = stopped.await;
    }));
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    std::fs::write(&good, TOKEN).unwrap();
    std::fs::write(&bad, "not-the-token").unwrap();
    let token = Some(good.as_path());
    let location = format!("s3://{bucket}/{prefix}");
    let json = |out: &str| -> Value { serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}")) };

    // No such Profile.
    let (r, _) = kanctl(addr, token, &["snapshots", "--profile", "nope"]).await;
    let msg = r.unwrap_err().to_string();
    assert_eq!(msg, "profile kanister/nope not found: fix --profile (kanctl create profile makes one)");

    // A Profile whose credential Secret is gone.
    let (r, _) = kanctl(addr, token, &["snapshots", "--profile", "kanister/orphan-profile"]).await;
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("secret kanister/gone") && msg.contains("fix the Profile's credential"), "{msg}");

    // No key Secret yet: nothing was backed up through the Profile. Listing creates none.
    let (r, out) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile"]).await;
    assert_eq!(r.unwrap(), Outcome::Success);
    assert_eq!(
        out.trim(),
        "no snapshots: profile kanister/s3-profile has no repository key yet (Secret \
         kanister/kanister-repo-key-s3-profile): nothing was backed up through it"
    );
    let (r, out) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile", "-o", "yaml"]).await;
    r.unwrap();
    let v: Value = serde_norway::from_str(&out).unwrap();
    assert_eq!((v["state"].as_str(), v["location"].as_str()), (Some("noKey"), Some(location.as_str())), "{out}");
    use kanister_coordinator::cluster::Cluster as _;
    let key_name = format!("{}s3-profile", repokey::SECRET_PREFIX);
    assert!(cluster.secret("kanister", &key_name).await.is_err(), "listing created a key Secret");

    // A key, but no repository at the location.
    let (key1, key2) = ("1".repeat(64), "2".repeat(64));
    cluster.put(key_secret(&key1));
    let (r, out) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile"]).await;
    assert_eq!(r.unwrap(), Outcome::Success);
    assert_eq!(
        out.trim(),
        format!(
            "no snapshots: the location of profile kanister/s3-profile ({location}) holds no repository: nothing \
             was backed up there yet, or the Profile's bucket or prefix changed since the backups"
        )
    );
    let (r, out) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile", "-o", "json"]).await;
    r.unwrap();
    assert_eq!(json(&out)["state"], "noRepository", "{out}");

    // A snapshot pushed by hand with that key: listed with its tags, tied to no ActionSet.
    let data = b"CREATE TABLE t (id INT);\n".repeat(500);
    kando_push(&prefix, &key1, "manual/dump.sql", &data);
    let (r, out) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile", "-o", "json"]).await;
    r.unwrap();
    let v = json(&out);
    assert_eq!((v["state"].as_str(), v["location"].as_str()), (Some("open"), Some(location.as_str())), "{out}");
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{out}");
    let s = &snaps[0];
    assert_eq!((s["kind"].as_str(), s["path"].as_str()), (Some("kando"), Some("manual/dump.sql")), "{out}");
    assert_eq!(s["tags"], json!({"kando.path": "manual/dump.sql", "input": "unverified"}), "{out}");
    assert_eq!(s["logicalBytes"].as_u64(), Some(data.len() as u64), "{out}");
    assert!(s["storedBytes"].as_u64().unwrap() < data.len() as u64, "repetitive data compresses: {out}");
    assert!(s.get("actionSet").is_none() && s.get("artifact").is_none(), "{out}");
    assert_eq!(s["id"].as_str().unwrap().len(), 64);
    let (r, table) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile"]).await;
    r.unwrap();
    let row = table.lines().nth(1).unwrap_or_else(|| panic!("{table}"));
    assert!(row.starts_with(s["shortId"].as_str().unwrap()) && row.contains("kando.path=manual/dump.sql"), "{table}");

    // The key Secret replaced: the repository does not open with it.
    cluster.put(key_secret(&key2));
    let (r, _) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile"]).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!(
            "the repository at {location} does not open with the key of profile kanister/s3-profile (Secret \
             kanister/kanister-repo-key-s3-profile)"
        )) && msg.contains("restore the Secret the backups were made with"),
        "{msg}"
    );

    // The same answers at the gRPC level carry the right codes.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> = format!("Bearer {TOKEN}").parse().unwrap();
    let mut client = pb::coordinator_service_client::CoordinatorServiceClient::with_interceptor(
        channel.clone(),
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        },
    );
    let list = |name: &str| pb::ListSnapshotsRequest { namespace: "kanister".into(), name: name.into() };
    let status = client.list_snapshots(list("s3-profile")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = client.list_snapshots(list("nope")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let mut anonymous = pb::coordinator_service_client::CoordinatorServiceClient::new(channel);
    let status = anonymous.list_snapshots(list("s3-profile")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A wrong token, no token.
    let (r, _) = kanctl(addr, Some(&bad), &["snapshots", "--profile", "s3-profile"]).await;
    assert_eq!(
        r.unwrap_err().to_string(),
        "the coordinator refused the token: set KANCTL_TOKEN or --token-file to the coordinator's token"
    );
    let (r, _) = kanctl(addr, None, &["snapshots", "--profile", "s3-profile"]).await;
    assert!(matches!(r, Err(Error::Unauthenticated)), "{r:?}");

    // No message or answer ever held a key or the S3 secret.
    for text in [&msg, &table, &out] {
        for secret in [&key1, &key2, &s3_secret] {
            assert!(!text.contains(secret.as_str()), "a secret in {text}");
        }
    }

    // Unreachable: the server is gone.
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let (r, _) = kanctl(addr, token, &["snapshots", "--profile", "s3-profile"]).await;
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("cannot reach the coordinator at http://{addr}"))
            && msg.contains("check --coordinator (KANCTL_COORDINATOR)"),
        "{msg}"
    );
}
