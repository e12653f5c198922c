//! What a Kanister Profile means for a store, shared by every process that reads one: the agent
//! (`kando --profile`, the task pods), and the coordinator (the repository references it sends
//! to agents, and `kanctl validate profile`'s probe). One mapping, so that a Profile that
//! validates is the Profile a backup then uses.
//!
//! No IO: [`GoProfile::store_settings`] gives the store URL and settings, [`store::build`] the
//! `object_store` client they name (contacting nothing).

pub mod store;
pub mod sts;

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;

/// The environment variable holding a Profile's `Credential` (upstream's JSON, with the secret
/// values) for a `--profile` that references it (`"Credential": {"FromEnv": ...}`).
pub const CREDENTIAL_ENV: &str = "KANISTER_PROFILE_CREDENTIAL";

/// Tag that addresses a kando push.
pub const KANDO_PATH_TAG: &str = "kando.path";

/// Tag of the snapshots the coordinator's data functions make: the operation id of the phase
/// that made them (`namespace/name/uid/action/phase[/pod]`). `DeleteData --backupTag` finds
/// snapshots by it, in the agent's task pod.
pub const BACKUP_TAG: &str = "kanister.io/backup-tag";

/// Why a Profile names no usable store. The message never holds a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(pub String);

/// `{{ toJson .Profile }}` as upstream renders it.
#[derive(Debug, Deserialize)]
pub struct GoProfile {
    /// Where.
    #[serde(rename = "Location")]
    pub location: GoLocation,
    /// With which credentials.
    #[serde(rename = "Credential", default)]
    pub credential: Option<GoCredential>,
    /// Accept any TLS certificate.
    #[serde(rename = "SkipSSLVerify", default)]
    pub skip_ssl_verify: bool,
    /// Our addition: the Profile's `storeOptions` (how the store client waits and retries;
    /// only [`NETWORK_OPTION_KEYS`]).
    #[serde(rename = "StoreOptions", default)]
    pub store_options: std::collections::BTreeMap<String, String>,
}

/// `Location`: Go JSON tags, lower case.
#[derive(Debug, Deserialize)]
pub struct GoLocation {
    /// `s3Compliant`, `gcs`, `azure` or `local`.
    #[serde(rename = "type")]
    pub location_type: String,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default)]
    pub bucket: String,
    /// Endpoint URL.
    #[serde(default)]
    pub endpoint: String,
    /// Prefix inside the bucket.
    #[serde(default)]
    pub prefix: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Directory (local).
    #[serde(default)]
    pub path: Option<String>,
}

/// `Credential`: Go field names.
#[derive(Debug, Deserialize)]
pub struct GoCredential {
    /// `keyPair` or `secret`.
    #[serde(rename = "Type", default)]
    pub credential_type: String,
    /// Id and secret.
    #[serde(rename = "KeyPair", default)]
    pub key_pair: Option<GoKeyPair>,
    /// A Kubernetes Secret.
    #[serde(rename = "Secret", default)]
    pub secret: Option<GoSecret>,
    /// Ours: the environment variable holding the whole credential (with its secret values),
    /// which then replaces this one ([`GoProfile::parse_with`]).
    #[serde(rename = "FromEnv", default)]
    pub from_env: Option<String>,
}

/// `KeyPair`.
#[derive(Deserialize)]
pub struct GoKeyPair {
    /// Access key id / account name / project.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The secret.
    #[serde(rename = "Secret", default)]
    pub secret: String,
}

impl std::fmt::Debug for GoKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoKeyPair").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// A Kubernetes Secret as JSON (`data` values base64).
#[derive(Deserialize)]
pub struct GoSecret {
    /// Its data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for GoSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoSecret").field("keys", &self.data.keys().collect::<Vec<_>>()).finish()
    }
}

fn bad_profile(reason: impl Into<String>) -> ProfileError {
    ProfileError(reason.into())
}

impl GoProfile {
    /// Parses `--profile`, resolving a credential reference from the process's environment.
    pub fn parse(json: &str) -> Result<Self, ProfileError> {
        Self::parse_with(json, |name| std::env::var(name).ok())
    }

    /// Parses `--profile`; a credential given by reference (`"FromEnv": VAR`) is replaced by
    /// the credential JSON `env(VAR)` returns.
    pub fn parse_with(json: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, ProfileError> {
        let mut profile: GoProfile = serde_json::from_str(json)
            .map_err(|e| bad_profile(format!("not a Profile as `{{{{ toJson .Profile }}}}` renders it: {e}")))?;
        let reference = profile.credential.as_ref().and_then(|c| c.from_env.clone()).filter(|v| !v.is_empty());
        if let Some(var) = reference {
            let text = env(&var).filter(|t| !t.is_empty()).ok_or_else(|| {
                bad_profile(format!(
                    "its credential is a reference to the environment variable {var}, which is not set: the \
                     coordinator sets it in the task pods it creates (KubeTask, PrepareData, MultiContainerRun) \
                     from a Secret; elsewhere render the Profile with its values"
                ))
            })?;
            let credential: GoCredential = serde_json::from_str(&text).map_err(|e| {
                bad_profile(format!("the environment variable {var} does not hold a Profile credential as JSON: {e}"))
            })?;
            profile.credential = Some(GoCredential { from_env: None, ..credential });
        }
        Ok(profile)
    }

    /// The first of `keys` the credential's Secret holds, decoded.
    pub fn secret_value(&self, keys: &[&str]) -> Option<String> {
        let s = self.credential.as_ref()?.secret.as_ref()?;
        keys.iter().find_map(|k| {
            let v = s.data.get(*k)?;
            let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
            String::from_utf8(bytes).ok()
        })
    }

    /// The credential's key pair.
    pub fn key_pair(&self) -> Option<&GoKeyPair> {
        self.credential.as_ref()?.key_pair.as_ref()
    }

    /// The store URL and settings this Profile names: the one mapping from a Profile to a store,
    /// which the coordinator also uses for the repository references it sends the agents
    /// and the Profile probe of `kanctl validate profile`.
    /// Settings hold the credentials: secret.
    pub fn store_settings(&self) -> Result<(String, Vec<(String, String)>), ProfileError> {
        let l = &self.location;
        let prefix = l.prefix.trim_matches('/');
        let mut opts: Vec<(String, String)> = Vec::new();
        let endpoint = if l.endpoint.is_empty() || l.endpoint.contains("://") {
            l.endpoint.clone()
        } else {
            format!("https://{}", l.endpoint)
        };
        let url = match l.location_type.as_str() {
            "s3Compliant" | "s3" => {
                if !endpoint.is_empty() {
                    opts.push(("endpoint".into(), endpoint));
                }
                opts.push(("region".into(), if l.region.is_empty() { "us-east-1".into() } else { l.region.clone() }));
                let (id, secret) = match self.key_pair() {
                    Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                    None => (
                        self.secret_value(&["aws_access_key_id", "access_key_id"]),
                        self.secret_value(&["aws_secret_access_key", "secret_access_key"]),
                    ),
                };
                if let (Some(id), Some(secret)) = (id, secret) {
                    opts.push(("aws_access_key_id".into(), id));
                    opts.push(("aws_secret_access_key".into(), secret));
                }
                // Temporary credentials (upstream's Secret key): the session token goes with them.
                if let Some(token) = self.secret_value(&["aws_session_token"]).filter(|t| !t.is_empty()) {
                    opts.push(("aws_session_token".into(), token));
                }
                // Upstream's `role`: the key pair only signs the STS call that assumes it (sts.rs).
                if let Some(role) = self.secret_value(&["role"]).filter(|r| !r.is_empty()) {
                    opts.push(("aws_role_arn".into(), role));
                }
                format!("s3://{}/{prefix}", l.bucket)
            }
            "gcs" => {
                if !endpoint.is_empty() {
                    opts.push(("base_url".into(), endpoint));
                }
                let key = self
                    .key_pair()
                    .map(|kp| kp.secret.clone())
                    .or_else(|| self.secret_value(&["service-account.json"]));
                if let Some(k) = key.filter(|k| !k.is_empty()) {
                    opts.push(("google_service_account_key".into(), k));
                }
                format!("gs://{}/{prefix}", l.bucket)
            }
            "azure" => {
                let (account, key) = match self.key_pair() {
                    Some(kp) => (Some(kp.id.clone()), Some(kp.secret.clone())),
                    None => (
                        self.secret_value(&["azure_storage_account_id", "azure_storage_account_name"]),
                        self.secret_value(&["azure_storage_key", "azure_storage_account_key"]),
                    ),
                };
                if let Some(a) = account {
                    opts.push(("azure_storage_account_name".into(), a));
                }
                if let Some(k) = key {
                    opts.push(("azure_storage_account_key".into(), k));
                }
                if !endpoint.is_empty() {
                    opts.push(("azure_storage_endpoint".into(), endpoint));
                }
                format!("az://{}/{prefix}", l.bucket)
            }
            "local" => {
                let dir = l
                    .path
                    .clone()
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad_profile("a local location needs a path"))?;
                format!("file://{}/{prefix}", dir.trim_end_matches('/'))
            }
            other => {
                return Err(bad_profile(format!(
                    "location type {other:?} is not supported: use s3Compliant, gcs, azure or local"
                )));
            }
        };
        if self.skip_ssl_verify {
            opts.push(("allow_invalid_certificates".into(), "true".into()));
        }
        for (k, v) in &self.store_options {
            check_network_option(k, v).map_err(|e| bad_profile(format!("StoreOptions {e}")))?;
            opts.push((k.clone(), v.clone()));
        }
        Ok((url, opts))
    }
}

/// The store settings that only say how to wait and retry (a Profile's `storeOptions`): no
/// location, no credential.
pub const NETWORK_OPTION_KEYS: [&str; 5] =
    ["connect_timeout", "read_timeout", "timeout", "max_retries", "retry_timeout"];

/// Checks one network setting as a Profile gives it: a key of [`NETWORK_OPTION_KEYS`] with a
/// value the store client will take. The message names the key; an unknown key's value (it may
/// be a credential put in the wrong place) is never shown.
pub fn check_network_option(key: &str, value: &str) -> std::result::Result<(), String> {
    if !NETWORK_OPTION_KEYS.contains(&key) {
        return Err(format!("has {key:?}; it takes only {}", NETWORK_OPTION_KEYS.join(", ")));
    }
    let (ok, want) = if key == "max_retries" {
        (value.parse::<usize>().is_ok(), "a count like 4")
    } else {
        (humantime::parse_duration(value).is_ok(), "a duration like 30s or 2m")
    };
    if ok { Ok(()) } else { Err(format!("{key} is {value:?}; it must be {want}")) }
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the line
/// already holds (many errors repeat their source in their own message).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        source = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<(String, BTreeMap<String, String>), String> {
        GoProfile::parse_with(json, |_| None)
            .and_then(|p| p.store_settings())
            .map(|(url, opts)| (url, opts.into_iter().collect()))
            .map_err(|e| e.to_string())
    }

    /// Every Profile shape, as `{{ toJson .Profile }}` renders it, and the store it names.
    #[test]
    fn every_profile_shape_maps_to_one_store() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let secret = |pairs: &[(&str, &str)]| {
            let data: Vec<String> = pairs.iter().map(|(k, v)| format!(r#""{k}":"{}""#, b64(v))).collect();
            format!(r#"{{"Type":"secret","Secret":{{"metadata":{{"name":"s"}},"data":{{{}}}}}}}"#, data.join(","))
        };
        let kp = |id: &str, s: &str| format!(r#"{{"Type":"keyPair","KeyPair":{{"ID":"{id}","Secret":"{s}"}}}}"#);
        let profile = |loc: &str, cred: &str, extra: &str| {
            format!(r#"{{"Location":{loc},"Credential":{cred},"SkipSSLVerify":false{extra}}}"#)
        };
        type Row<'a> = (&'a str, String, Result<(&'a str, Vec<(&'a str, &'a str)>), &'a str>);
        let s3 = r#"{"type":"s3Compliant","bucket":"b","endpoint":"minio:9000","prefix":"/x/y/","region":""}"#;
        let rows: Vec<Row> = vec![
            ("s3 key pair, bare endpoint", profile(s3, &kp("AK", "SK"), ""), Ok(("s3://b/x/y", vec![
                ("endpoint", "https://minio:9000"), ("region", "us-east-1"),
                ("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK")]))),
            ("s3 secret, region, skip TLS", profile(
                r#"{"type":"s3Compliant","bucket":"b","endpoint":"http://s3:8333","prefix":"p","region":"eu-west-1"}"#,
                &secret(&[("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK")]),
                "").replace(r#""SkipSSLVerify":false"#, r#""SkipSSLVerify":true"#), Ok(("s3://b/p", vec![
                ("endpoint", "http://s3:8333"), ("region", "eu-west-1"), ("aws_access_key_id", "AK"),
                ("aws_secret_access_key", "SK"), ("allow_invalid_certificates", "true")]))),
            ("s3 secret with a session token", profile(s3,
                &secret(&[("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("aws_session_token", "TOK")]),
                ""), Ok(("s3://b/x/y", vec![("endpoint", "https://minio:9000"), ("region", "us-east-1"),
                ("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("aws_session_token", "TOK")]))),
            ("s3 secret naming a role to assume", profile(s3,
                &secret(&[("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"), ("role", "arn:aws:iam::1:role/r")]),
                ""), Ok(("s3://b/x/y", vec![("endpoint", "https://minio:9000"), ("region", "us-east-1"),
                ("aws_access_key_id", "AK"), ("aws_secret_access_key", "SK"),
                ("aws_role_arn", "arn:aws:iam::1:role/r")]))),
            ("s3 without credential (instance role)", profile(s3, "null", ""), Ok(("s3://b/x/y", vec![
                ("endpoint", "https://minio:9000"), ("region", "us-east-1")]))),
            ("s3 with network settings", profile(s3, "null", r#","StoreOptions":{"retry_timeout":"2m"}"#),
                Ok(("s3://b/x/y", vec![("endpoint", "https://minio:9000"), ("region", "us-east-1"),
                ("retry_timeout", "2m")]))),
            ("gcs key pair", profile(r#"{"type":"gcs","bucket":"g","prefix":"p"}"#, &kp("proj", "{sa}"), ""),
                Ok(("gs://g/p", vec![("google_service_account_key", "{sa}")]))),
            ("gcs secret, emulator", profile(r#"{"type":"gcs","bucket":"g","endpoint":"http://127.0.0.1:4443"}"#,
                &secret(&[("service-account.json", "{sa}")]), ""),
                Ok(("gs://g/", vec![("base_url", "http://127.0.0.1:4443"), ("google_service_account_key", "{sa}")]))),
            ("azure key pair", profile(r#"{"type":"azure","bucket":"c","prefix":"p","endpoint":"http://127.0.0.1:10000"}"#,
                &kp("acct", "key"), ""), Ok(("az://c/p", vec![("azure_storage_account_name", "acct"),
                ("azure_storage_account_key", "key"), ("azure_storage_endpoint", "http://127.0.0.1:10000")]))),
            ("azure secret", profile(r#"{"type":"azure","bucket":"c"}"#,
                &secret(&[("azure_storage_account_id", "acct"), ("azure_storage_key", "key")]), ""),
                Ok(("az://c/", vec![("azure_storage_account_name", "acct"), ("azure_storage_account_key", "key")]))),
            ("local", profile(r#"{"type":"local","path":"/backups/","prefix":"x"}"#, "null", ""),
                Ok(("file:///backups/x", vec![]))),
            ("local without a path", profile(r#"{"type":"local","prefix":"x"}"#, "null", ""),
                Err("a local location needs a path")),
            ("kopia", profile(r#"{"type":"kopia"}"#, "null", ""), Err("not supported")),
            ("credential put in StoreOptions", profile(s3, "null", r#","StoreOptions":{"aws_secret_access_key":"hunter2"}"#),
                Err("takes only connect_timeout")),
            ("bad network setting", profile(s3, "null", r#","StoreOptions":{"max_retries":"many"}"#),
                Err("max_retries is \"many\"")),
            ("not a profile", "{}".into(), Err("not a Profile")),
            ("credential by an unset reference", profile(s3, r#"{"Type":"keyPair","FromEnv":"NOPE"}"#, ""),
                Err("NOPE, which is not set")),
        ];
        for (what, json, want) in rows {
            match (settings(&json), want) {
                (Ok((url, opts)), Ok((want_url, want_opts))) => {
                    assert_eq!(url, want_url, "{what}");
                    let want_opts: BTreeMap<String, String> =
                        want_opts.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
                    assert_eq!(opts, want_opts, "{what}");
                }
                (Err(e), Err(want)) => {
                    assert!(e.contains(want), "{what}: {e}");
                    assert!(!e.contains("hunter2") && !e.contains("SK"), "{what} echoes a secret: {e}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn credentials_by_reference_come_from_the_environment() {
        let referenced = r#"{"Location":{"type":"s3Compliant","bucket":"b","endpoint":"http://minio:9000","prefix":"p","region":""},
            "Credential":{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":""},"Secret":null,"KopiaServerSecret":null,
            "FromEnv":"KANISTER_PROFILE_CREDENTIAL"},"SkipSSLVerify":false}"#;
        let value =
            r#"{"Type":"keyPair","KeyPair":{"ID":"AK","Secret":"SK-from-env"},"Secret":null,"KopiaServerSecret":null}"#;
        let env = |name: &str| (name == CREDENTIAL_ENV).then(|| value.to_string());
        let p = GoProfile::parse_with(referenced, env).unwrap();
        assert_eq!(p.key_pair().map(|kp| kp.secret.as_str()), Some("SK-from-env"));
        assert!(p.credential.as_ref().unwrap().from_env.is_none());
        assert!(!format!("{p:?}").contains("SK-from-env"), "secrets must not print");
        // Unset, or set to something else: clear errors naming the variable.
        let err = GoProfile::parse_with(referenced, |_| None).unwrap_err().to_string();
        assert!(err.contains(CREDENTIAL_ENV) && err.contains("not set"), "{err}");
        let err = GoProfile::parse_with(referenced, |_| Some("nope".into())).unwrap_err().to_string();
        assert!(err.contains(CREDENTIAL_ENV), "{err}");
        // Secret credentials by reference too: the data comes from the variable.
        let secret = r#"{"Location":{"type":"s3Compliant","bucket":"b","prefix":"p"},
            "Credential":{"Type":"secret","KeyPair":null,"Secret":{"metadata":{"name":"s"}},"FromEnv":"V"}}"#;
        let full = r#"{"Type":"secret","Secret":{"metadata":{"name":"s"},"data":{"aws_access_key_id":"QUs=","aws_secret_access_key":"U0s="}}}"#;
        let p = GoProfile::parse_with(secret, |n| (n == "V").then(|| full.to_string())).unwrap();
        assert_eq!(p.secret_value(&["aws_secret_access_key"]).as_deref(), Some("SK"));
    }
}
