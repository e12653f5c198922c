//! `kando`, as upstream blueprints call it: the agent binary under the name `kando`.

use std::io::Write;
use std::process::{Command, Stdio};

use kanister_testkit::data::MixedStream;
use kanister_testkit::infra;

const BIN: &str = env!("CARGO_BIN_EXE_kanister-agent");
const KEY: &str = "a-raw-repository-key-from-a-kubernetes-secret";

struct Kando {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn kando() -> Kando {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kando");
    std::os::unix::fs::symlink(BIN, &path).unwrap();
    Kando { _dir: dir, path }
}

impl Kando {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.path);
        for (k, _) in std::env::vars() {
            if k.starts_with("KANISTER_") && !k.starts_with("KANISTER_TEST_") {
                c.env_remove(k);
            }
        }
        c.env("KANISTER_REPO_KEY", KEY).args(args);
        c
    }

    fn push(&self, profile: &str, path: &str, data: &[u8]) -> std::process::Output {
        let mut child = self
            .cmd(&["location", "push", "--profile", profile, "--path", path, "--output-name", "backupID", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        child.wait_with_output().unwrap()
    }
}

fn s3_profile(bucket: &str, prefix: &str) -> String {
    serde_json::json!({
        "Location": {"type": "s3Compliant", "bucket": bucket, "endpoint": infra::var("KANISTER_TEST_S3_ENDPOINT"),
                     "prefix": prefix, "region": ""},
        "Credential": {"Type": "keyPair",
                       "KeyPair": {"ID": infra::var("KANISTER_TEST_S3_ACCESS_KEY"), "Secret": infra::var("KANISTER_TEST_S3_SECRET_KEY")},
                       "Secret": null, "KopiaServerSecret": null},
        "SkipSSLVerify": false
    })
    .to_string()
}

fn round_trip(k: &Kando, profile: &str) {
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut MixedStream::new(80, 6 << 20), &mut data).unwrap();
    let o = k.push(profile, "/mysql/backup-1.sql", &data);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("###Phase-output###: {\"key\":\"backupID\",\"value\":\""), "{out}");
    let secret = infra::var("KANISTER_TEST_S3_SECRET_KEY");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(&secret) && !String::from_utf8_lossy(&o.stderr).contains(KEY));

    // A second push at the same path deduplicates; pull returns the newest.
    let mut newer = data.clone();
    newer.extend_from_slice(b"-- one more row\n");
    assert!(k.push(profile, "/mysql/backup-1.sql", &newer).status.success());
    let pulled =
        k.cmd(&["location", "pull", "--profile", profile, "--path", "/mysql/backup-1.sql", "-"]).output().unwrap();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(pulled.stdout == newer, "pulled bytes differ");
    // `/dev/stdout` is standard output too, redirected to a file here (`> restore.sql`).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("restore.sql");
    let o = k
        .cmd(&["location", "pull", "--profile", profile, "--path", "/mysql/backup-1.sql", "/dev/stdout"])
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&file).unwrap() == newer, "bytes pulled to /dev/stdout differ");

    let del = k.cmd(&["location", "delete", "--profile", profile, "--path", "/mysql/backup-1.sql"]).output().unwrap();
    assert!(del.status.success(), "{}", String::from_utf8_lossy(&del.stderr));
    let gone =
        k.cmd(&["location", "pull", "--profile", profile, "--path", "/mysql/backup-1.sql", "-"]).output().unwrap();
    assert!(!gone.status.success() && gone.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("nothing was pushed"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[test]
fn location_push_pull_delete_on_s3_with_an_upstream_profile() {
    round_trip(&kando(), &s3_profile(&infra::var("KANISTER_TEST_S3_BUCKET"), &infra::unique("kando")));
}

#[test]
fn location_push_pull_delete_on_azurite_and_local() {
    let azure = serde_json::json!({
        "Location": {"type": "azure", "bucket": infra::var("KANISTER_TEST_AZURE_CONTAINER"),
                     "endpoint": "http://127.0.0.1:10000/devstoreaccount1", "prefix": infra::unique("kando"), "region": ""},
        "Credential": {"Type": "keyPair", "KeyPair": {"ID": "devstoreaccount1",
            "Secret": "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="},
            "Secret": null, "KopiaServerSecret": null},
        "SkipSSLVerify": false
    });
    let k = kando();
    round_trip(&k, &azure.to_string());
    let dir = tempfile::tempdir().unwrap();
    let local = serde_json::json!({
        "Location": {"type": "local", "bucket": "", "endpoint": "", "prefix": "mysql", "region": "", "path": dir.path()},
        "Credential": null, "SkipSSLVerify": false
    });
    round_trip(&k, &local.to_string());
    // The repository under the local profile is an ordinary, encrypted one.
    assert!(dir.path().join("mysql/config").exists());
}

#[test]
fn secret_credentials_and_output_and_errors() {
    use base64::Engine;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let profile = serde_json::json!({
        "Location": {"type": "s3Compliant", "bucket": infra::var("KANISTER_TEST_S3_BUCKET"),
                     "endpoint": infra::var("KANISTER_TEST_S3_ENDPOINT"), "prefix": infra::unique("kando-secret"), "region": "us-east-1"},
        "Credential": {"Type": "secret", "KeyPair": null, "KopiaServerSecret": null,
            "Secret": {"metadata": {"name": "s3", "namespace": "kanister"}, "type": "secrets.kanister.io/aws",
                       "data": {"aws_access_key_id": b64(infra::var("KANISTER_TEST_S3_ACCESS_KEY")),
                                "aws_secret_access_key": b64(infra::var("KANISTER_TEST_S3_SECRET_KEY"))}}},
        "SkipSSLVerify": false
    });
    let k = kando();
    let o = k.push(&profile.to_string(), "db.dump", b"dump bytes");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let out = k.cmd(&["output", "version", "8.0.36"]).output().unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "###Phase-output###: {\"key\":\"version\",\"value\":\"8.0.36\"}\n"
    );
    let bad = k.cmd(&["output", "bad-key", "v"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("invalid output key"));

    // Without a key there is no default: a clear error naming the variables.
    let mut c = k.cmd(&["location", "pull", "--profile", &profile.to_string(), "--path", "db.dump", "-"]);
    c.env_remove("KANISTER_REPO_KEY");
    let o = c.output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("KANISTER_REPO_KEY"));
    // A wrong key fails to open, naming the problem.
    let mut c = k.cmd(&["location", "pull", "--profile", &profile.to_string(), "--path", "db.dump", "-"]);
    c.env("KANISTER_REPO_KEY", "another-key-of-enough-length");
    let o = c.output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("wrong passphrase or key file"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Also reachable as a subcommand of the agent.
    let sub = Command::new(BIN).args(["kando", "output", "k", "v"]).output().unwrap();
    assert!(String::from_utf8_lossy(&sub.stdout).contains("\"key\":\"k\""));
}

/// Upstream's Secret key `role`: the key pair only signs the STS call, and the store is used with
/// the role's credentials. SeaweedFS's "backup" user has no rights of its own, so a push that
/// succeeds proves the role was assumed; one that names no role is refused.
#[test]
fn a_secret_naming_a_role_works_with_the_roles_credentials_and_nothing_else() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let pair = |var: &str| {
        let v = infra::var(var);
        let (id, secret) = v.split_once(':').expect("KEY:SECRET");
        (id.to_string(), secret.to_string())
    };
    let prefix = infra::unique("kando-role");
    let profile = |(id, secret): &(String, String), role: Option<&str>| {
        let mut data = serde_json::json!({"aws_access_key_id": b64(id), "aws_secret_access_key": b64(secret)});
        if let Some(r) = role {
            data["role"] = b64(r).into();
        }
        serde_json::json!({
            "Location": {"type": "s3Compliant", "bucket": infra::var("KANISTER_TEST_S3_BUCKET"),
                         "endpoint": infra::var("KANISTER_TEST_S3_ENDPOINT"), "prefix": prefix, "region": "us-east-1"},
            "Credential": {"Type": "secret", "KeyPair": null, "KopiaServerSecret": null,
                "Secret": {"metadata": {"name": "s3", "namespace": "kanister"}, "type": "secrets.kanister.io/aws",
                           "data": data}},
            "SkipSSLVerify": false
        })
        .to_string()
    };
    let role = infra::var("KANISTER_TEST_S3_ROLE_ARN");
    let user = pair("KANISTER_TEST_S3_ROLE_USER");
    let stranger = pair("KANISTER_TEST_S3_STRANGER");
    let k = kando();
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut MixedStream::new(7, 3 << 20), &mut data).unwrap();

    let with_role = profile(&user, Some(&role));
    let o = k.push(&with_role, "db.dump", &data);
    assert!(o.status.success(), "push with the role: {}", String::from_utf8_lossy(&o.stderr));
    let pulled = k.cmd(&["location", "pull", "--profile", &with_role, "--path", "db.dump", "-"]).output().unwrap();
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));
    assert!(pulled.stdout == data, "the pulled bytes differ from the pushed ones");

    // The same key pair without the role has no rights: the role is what the push used.
    let without = k.push(&profile(&user, None), "other.dump", b"x");
    assert!(!without.status.success(), "the key pair alone must not be able to write");

    // A key pair the role's trust policy does not name: refused, saying why, with no secret shown.
    let refused = k.push(&profile(&stranger, Some(&role)), "db2.dump", b"x");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(err.contains("assuming the role") && err.contains("AccessDenied"), "{err}");
    assert!(!err.contains(&stranger.1) && !err.contains(&user.1), "a secret leaked: {err}");

    // A role that is not a role ARN: the server's reason, not a generic failure.
    let bad = k.push(&profile(&user, Some("backup-writer")), "db3.dump", b"x");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("assuming the role backup-writer"), "{err}");
}
