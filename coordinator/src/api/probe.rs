//! Checks that a Profile's location is usable: its fields, its Secret's keys, and a probe object
//! written, read back and deleted with the Profile's credentials.

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt as _};

use crate::cluster::SecretData;
use crate::crd::profile::{LocationType, ProfileSpec};

/// A problem of a Profile: where, and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileProblem {
    /// The field (`location.bucket`, `credential.keyPair.secretField`, `location`).
    pub field: String,
    /// What is wrong and the fix.
    pub message: String,
}

fn problem(field: &str, message: impl Into<String>) -> ProfileProblem {
    ProfileProblem { field: field.into(), message: message.into() }
}

/// The values the credential's key pair names (id, secret), or the problems finding them.
fn key_pair(spec: &ProfileSpec, secret: &SecretData) -> Result<(String, String), Vec<ProfileProblem>> {
    let Some(kp) = &spec.credential.key_pair else {
        return Err(vec![problem("credential.keyPair", "missing: set idField, secretField and secret")]);
    };
    let get = |field: &str, key: &str| -> Result<String, ProfileProblem> {
        let value = secret.data.get(key).ok_or_else(|| {
            problem(
                &format!("credential.keyPair.{field}"),
                format!("the Secret has no key {key:?}: add it to the Secret or fix {field}"),
            )
        })?;
        String::from_utf8(value.clone())
            .map_err(|_| problem(&format!("credential.keyPair.{field}"), format!("the value of {key:?} is not UTF-8")))
    };
    let id = get("idField", &kp.id_field);
    let sec = get("secretField", &kp.secret_field);
    match (id, sec) {
        (Ok(i), Ok(s)) => Ok((i, s)),
        (i, s) => Err([i.err(), s.err()].into_iter().flatten().collect()),
    }
}

/// The object store of a Profile, with its prefix.
fn store(spec: &ProfileSpec, secret: &SecretData) -> Result<(Arc<dyn ObjectStore>, String), Vec<ProfileProblem>> {
    let loc = &spec.location;
    let store_err = |e: object_store::Error| vec![problem("location", format!("cannot use the location: {e}"))];
    let allow_http = loc.endpoint.starts_with("http://");
    let store: Arc<dyn ObjectStore> = match loc.location_type {
        LocationType::Local => {
            let Some(path) = loc.path.as_deref().filter(|p| !p.is_empty()) else {
                return Err(vec![problem("location.path", "missing: set the directory of a local profile")]);
            };
            std::fs::create_dir_all(path)
                .map_err(|e| vec![problem("location.path", format!("cannot create {path}: {e}"))])?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(path).map_err(store_err)?)
        }
        LocationType::S3Compliant => {
            if loc.bucket.is_empty() {
                return Err(vec![problem("location.bucket", "missing: set the bucket (--bucket)")]);
            }
            let (id, key) = key_pair(spec, secret)?;
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&loc.bucket)
                .with_access_key_id(id)
                .with_secret_access_key(key)
                .with_region(if loc.region.is_empty() { "us-east-1" } else { &loc.region })
                .with_allow_http(allow_http);
            if !loc.endpoint.is_empty() {
                b = b.with_endpoint(&loc.endpoint).with_virtual_hosted_style_request(false);
            }
            if spec.skip_ssl_verify == Some(true) {
                b = b.with_client_options(object_store::ClientOptions::new().with_allow_invalid_certificates(true));
            }
            Arc::new(b.build().map_err(store_err)?)
        }
        LocationType::Azure => {
            if loc.bucket.is_empty() {
                return Err(vec![problem("location.bucket", "missing: set the container (--bucket)")]);
            }
            let (account, key) = key_pair(spec, secret)?;
            let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                .with_container_name(&loc.bucket)
                .with_account(account)
                .with_access_key(key)
                .with_allow_http(allow_http);
            if !loc.endpoint.is_empty() {
                b = b.with_endpoint(loc.endpoint.clone());
            }
            Arc::new(b.build().map_err(store_err)?)
        }
        LocationType::Gcs => {
            if loc.bucket.is_empty() {
                return Err(vec![problem("location.bucket", "missing: set the bucket (--bucket)")]);
            }
            let (_project, key) = key_pair(spec, secret)?;
            let b = object_store::gcp::GoogleCloudStorageBuilder::new()
                .with_bucket_name(&loc.bucket)
                .with_service_account_key(key);
            Arc::new(b.build().map_err(store_err)?)
        }
        LocationType::Kopia => {
            return Err(vec![problem(
                "location.type",
                "kopia profiles cannot be probed: use s3Compliant, gcs, azure or local",
            )]);
        }
    };
    Ok((store, loc.prefix.trim_matches('/').to_string()))
}

/// Every problem of a Profile: fields and Secret first, then the probe (write, read, delete).
pub async fn check(spec: &ProfileSpec, secret: &SecretData) -> Vec<ProfileProblem> {
    // object_store's HTTP client needs a process-wide rustls provider: ring, the project's one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (store, prefix) = match store(spec, secret) {
        Ok(s) => s,
        Err(problems) => return problems,
    };
    let name = format!("kanister-probe-{:016x}", rand::random::<u64>());
    let path = StorePath::from(if prefix.is_empty() { name } else { format!("{prefix}/{name}") });
    let body = b"kanister profile probe".to_vec();
    let what = |op: &str, e: object_store::Error| {
        problem("location", format!("cannot {op} the probe object {path}: {e}; check the location and the credentials"))
    };
    if let Err(e) = store.put(&path, body.clone().into()).await {
        return vec![what("write", e)];
    }
    let mut problems = Vec::new();
    match store.get(&path).await {
        Ok(r) => match r.bytes().await {
            Ok(b) if b.as_ref() == body.as_slice() => {}
            Ok(_) => problems.push(problem("location", format!("the probe object {path} read back differs"))),
            Err(e) => problems.push(what("read", e)),
        },
        Err(e) => problems.push(what("read", e)),
    }
    if let Err(e) = store.delete(&path).await {
        problems.push(what("delete", e));
    }
    problems
}
