//! The repository key of a Profile: one random key per Profile, created by the coordinator on
//! first use and kept in a Secret it owns.
//!
//! Everything the agent writes under a Profile's location (kando pushes, stream and tree
//! backups) is encrypted under a master key wrapped by this key. The key reaches task pods only
//! through an environment variable read from the Secret (`KANISTER_REPO_KEY`, a
//! `valueFrom.secretKeyRef`), never through a command line, a status field, an event or a log.
//!
//! # The key Secret
//! - Name `kanister-repo-key-<profile>` in the Profile's namespace, key `key` (64 hex
//!   characters: 32 random bytes), labels `app.kubernetes.io/managed-by: kanister` and
//!   `kanister.io/profile: <profile>`.
//! - A task pod in another namespace gets a copy named
//!   `kanister-repo-key-<profile namespace>-<profile>` in its own namespace (a Secret can only
//!   be referenced from its namespace), with the same labels.
//!
//! # Back it up
//! **Losing this Secret loses every backup made through the Profile**: the repository cannot be
//! opened without it, and nothing else holds it. Export it once after the first backup and keep
//! it outside the cluster (a password manager, a sealed secret, an offline vault):
//!
//! ```text
//! kubectl get secret -n <profile-namespace> kanister-repo-key-<profile> -o yaml > repo-key.yaml
//! ```
//!
//! and apply it again before restoring into a new cluster. The coordinator never replaces an
//! existing key Secret.
//!
//! # Guarantees
//! - [`ensure`] is idempotent and safe under concurrency: two coordinators racing on first use
//!   both end up with the key that was stored first (the loser's create is rejected and it
//!   re-reads the Secret).
//! - The key value never leaves this module except into the Secrets above.

use std::collections::BTreeMap;

use serde_json::json;

use crate::cluster::{self, Cluster, EnvSource, EnvVar};
use crate::crd::ObjectReference;

/// The environment variable that carries the key into task pods (read by `kando` and the agent).
pub const ENV: &str = "KANISTER_REPO_KEY";
/// The key of the Secret's data holding the key.
pub const SECRET_KEY: &str = "key";
/// Prefix of the key Secret's name.
pub const SECRET_PREFIX: &str = "kanister-repo-key-";

/// Errors of the key handling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key Secret could not be read or created.
    #[error("failed to provide the repository key of profile {profile}")]
    Cluster {
        /// The Profile (`namespace/name`).
        profile: String,
        /// The cause.
        #[source]
        source: cluster::Error,
    },
    /// The key Secret exists but holds no key.
    #[error("secret {namespace}/{name} has no repository key (key {SECRET_KEY:?})")]
    Malformed {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The name of a Profile's key Secret in the namespace `namespace`.
pub fn secret_name(profile: &ObjectReference, namespace: &str) -> String {
    if namespace == profile.namespace {
        format!("{SECRET_PREFIX}{}", profile.name)
    } else {
        format!("{SECRET_PREFIX}{}-{}", profile.namespace, profile.name)
    }
}

/// Makes sure the Profile's key exists and that a Secret holding it lives in `namespace`, and
/// returns the environment variable a container of that namespace uses to read it.
pub async fn ensure<C: Cluster>(cluster: &C, profile: &ObjectReference, namespace: &str) -> Result<EnvVar> {
    let home = secret_name(profile, &profile.namespace);
    let key = match read(cluster, profile, &profile.namespace, &home).await? {
        Some(key) => key,
        None => {
            let fresh = hex::encode(rand::random::<[u8; 32]>());
            create(cluster, profile, &profile.namespace, &home, &fresh).await?
        }
    };
    let name = secret_name(profile, namespace);
    if namespace != profile.namespace && read(cluster, profile, namespace, &name).await?.is_none() {
        create(cluster, profile, namespace, &name, &key).await?;
    }
    Ok(EnvVar { name: ENV.into(), source: EnvSource::SecretKey { secret: name, key: SECRET_KEY.into() } })
}

/// Makes sure the Profile's key exists and returns its value, for the gRPC requests to agents
/// (the only place the key leaves its Secret besides task pods' environment).
pub async fn value<C: Cluster>(cluster: &C, profile: &ObjectReference) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    ensure(cluster, profile, &profile.namespace).await?;
    let name = secret_name(profile, &profile.namespace);
    match read(cluster, profile, &profile.namespace, &name).await? {
        Some(key) => Ok(zeroize::Zeroizing::new(key.into_bytes())),
        None => Err(Error::Malformed { namespace: profile.namespace.clone(), name }),
    }
}

/// The key of `profile` if it has one: reads never create a key (nothing was backed up through
/// a Profile without one).
pub async fn existing<C: Cluster>(
    cluster: &C,
    profile: &ObjectReference,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
    let name = secret_name(profile, &profile.namespace);
    Ok(read(cluster, profile, &profile.namespace, &name).await?.map(|k| zeroize::Zeroizing::new(k.into_bytes())))
}

fn profile_name(profile: &ObjectReference) -> String {
    format!("{}/{}", profile.namespace, profile.name)
}

async fn read<C: Cluster>(
    cluster: &C,
    profile: &ObjectReference,
    namespace: &str,
    name: &str,
) -> Result<Option<String>> {
    match cluster.secret(namespace, name).await {
        Ok(data) => match data.data.get(SECRET_KEY) {
            Some(k) if !k.is_empty() => Ok(Some(String::from_utf8_lossy(k).into_owned())),
            _ => Err(Error::Malformed { namespace: namespace.into(), name: name.into() }),
        },
        Err(cluster::Error::NotFound(_)) => Ok(None),
        Err(source) => Err(Error::Cluster { profile: profile_name(profile), source }),
    }
}

/// The manifest of a Secret the coordinator owns for Profile `profile`: labelled as managed by
/// Kanister and with the Profile's name; `data` is already base64-encoded.
pub(super) fn owned_secret(
    namespace: &str,
    name: &str,
    profile: &ObjectReference,
    data: &BTreeMap<&str, String>,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "kanister", "kanister.io/profile": profile.name},
        },
        "data": data,
    })
}

/// Creates the Secret; when another writer created it first, returns the key it stored.
async fn create<C: Cluster>(
    cluster: &C,
    profile: &ObjectReference,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String> {
    use base64::Engine as _;
    let data = BTreeMap::from([(SECRET_KEY, base64::engine::general_purpose::STANDARD.encode(key))]);
    let secret = owned_secret(namespace, name, profile, &data);
    match cluster.apply(secret, namespace).await {
        Ok(_) => {
            tracing::info!(namespace, secret = name, profile = %profile_name(profile), "repository key created");
            Ok(key.to_string())
        }
        Err(e) => match read(cluster, profile, namespace, name).await? {
            Some(existing) => Ok(existing),
            None => Err(Error::Cluster { profile: profile_name(profile), source: e }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::local::LocalCluster;

    fn profile() -> ObjectReference {
        ObjectReference { namespace: "kanister".into(), name: "s3".into(), ..Default::default() }
    }

    #[tokio::test]
    async fn one_random_key_per_profile_copied_into_other_namespaces() {
        let c = LocalCluster::new();
        let env = ensure(&c, &profile(), "kanister").await.unwrap();
        assert_eq!(env.name, ENV);
        let EnvSource::SecretKey { secret, key } = &env.source else { panic!("not from a secret: {env:?}") };
        let first = c.secret("kanister", secret).await.unwrap().data[key].clone();
        assert_eq!(first.len(), 64);
        assert!(first.iter().all(u8::is_ascii_hexdigit));
        // Same key again, and the copy in another namespace holds the same value.
        ensure(&c, &profile(), "kanister").await.unwrap();
        assert_eq!(c.secret("kanister", secret).await.unwrap().data[key], first);
        let other = ensure(&c, &profile(), "db").await.unwrap();
        let EnvSource::SecretKey { secret: copy, .. } = &other.source else { panic!() };
        assert_eq!(copy, "kanister-repo-key-kanister-s3");
        assert_eq!(c.secret("db", copy).await.unwrap().data[SECRET_KEY], first);
        // Another profile gets another key.
        let p2 = ObjectReference { name: "gcs".into(), ..profile() };
        ensure(&c, &p2, "kanister").await.unwrap();
        assert_ne!(c.secret("kanister", "kanister-repo-key-gcs").await.unwrap().data[SECRET_KEY], first);
    }
}
