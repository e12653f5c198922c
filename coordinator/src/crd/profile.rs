//! `Profile`: where backups go (an object store location) and the credentials to reach it.
//!
//! Upstream keeps `location`, `credential` and `skipSSLVerify` at the top level of the object;
//! so do we. Our addition: the `local` location type (a directory, for the embedded default and
//! for trying blueprints without an object store).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ObjectReference;

/// The fields of a Profile (top level of the object, no `spec` on the wire).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cr.kanister.io",
    version = "v1alpha1",
    kind = "Profile",
    plural = "profiles",
    namespaced,
    doc = "Where backups go (an object store location) and the credentials to reach it",
    no_spec
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    /// The object store location backups are written to.
    pub location: Location,
    /// How to authenticate to the location.
    pub credential: Credential,
    /// Skip TLS certificate verification when talking to the location (upstream `skipSSLVerify`;
    /// absent means `false`).
    #[serde(rename = "skipSSLVerify", default, skip_serializing_if = "Option::is_none")]
    pub skip_ssl_verify: Option<bool>,
    /// Addition: how the agents' store client waits and retries on this location:
    /// `connect_timeout`, `read_timeout`, `timeout` (one request), `max_retries`,
    /// `retry_timeout` (all retries of a request), durations like `30s` or `2m`. Defaults: 5s,
    /// 15s, 5m, 4, 30s. No other key is accepted (credentials belong in the Secret).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub store_options: std::collections::BTreeMap<String, String>,
}

/// Kind of storage behind a [`Location`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum LocationType {
    /// Any S3-compatible object store.
    #[default]
    #[serde(rename = "s3Compliant")]
    S3Compliant,
    /// Google Cloud Storage.
    #[serde(rename = "gcs")]
    Gcs,
    /// Azure Blob Storage.
    #[serde(rename = "azure")]
    Azure,
    /// A Kopia repository server (upstream; accepted, not served by our agents).
    #[serde(rename = "kopia")]
    Kopia,
    /// Addition: a local directory (`path`), for the embedded default and local runs.
    #[serde(rename = "local")]
    Local,
}

impl LocationType {
    /// The wire name (`s3Compliant`, `gcs`, `azure`, `kopia`, `local`).
    pub fn as_str(self) -> &'static str {
        match self {
            LocationType::S3Compliant => "s3Compliant",
            LocationType::Gcs => "gcs",
            LocationType::Azure => "azure",
            LocationType::Kopia => "kopia",
            LocationType::Local => "local",
        }
    }
}

/// Where backup objects are stored.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Kind of storage.
    #[serde(rename = "type")]
    pub location_type: LocationType,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bucket: String,
    /// Endpoint URL of the object store (S3-compatible stores, Azure emulators).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub endpoint: String,
    /// Prefix prepended to every object path in the bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Addition: the directory of a `local` location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// How credentials are provided.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CredentialType {
    /// An id/secret pair read from two fields of a Secret.
    #[default]
    #[serde(rename = "keyPair")]
    KeyPair,
    /// A whole Secret whose keys depend on the location type.
    #[serde(rename = "secret")]
    Secret,
    /// Kopia repository server credentials (upstream; accepted, not used by our agents).
    #[serde(rename = "kopia")]
    Kopia,
}

impl CredentialType {
    /// The wire name (`keyPair`, `secret`, `kopia`).
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::KeyPair => "keyPair",
            CredentialType::Secret => "secret",
            CredentialType::Kopia => "kopia",
        }
    }
}

/// The credentials of a Profile.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    /// Which of the fields below is used.
    #[serde(rename = "type")]
    pub credential_type: CredentialType,
    /// For `keyPair`: where the id and the secret are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPair>,
    /// For `secret`: the Secret holding the credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectReference>,
    /// For `kopia`: the Kopia server credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kopia_server_secret: Option<KopiaServerSecret>,
}

/// An id/secret pair stored in two fields of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPair {
    /// Key in the Secret holding the access key id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id_field: String,
    /// Key in the Secret holding the secret access key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_field: String,
    /// The Secret.
    pub secret: ObjectReference,
}

/// Credentials of a Kopia repository server (upstream shape, kept for compatibility).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KopiaServerSecret {
    /// User name on the server.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Host name used to connect.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// Where the user passphrase is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_passphrase: Option<KopiaServerSecretRef>,
    /// Where the TLS certificate is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<KopiaServerSecretRef>,
    /// Connection options.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub connect_options: std::collections::BTreeMap<String, i64>,
}

/// A key in a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KopiaServerSecretRef {
    /// The key in the Secret.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// The Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectReference>,
}
