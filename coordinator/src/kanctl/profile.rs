//! `kanctl create profile s3compliant|gcp|azure|local`: flags → `CreateProfileRequest`, with
//! upstream's flag names. Secret values come from flags' environment variables or files, so that
//! they need not appear on a command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use kanister_proto::coordinator::v1::CreateProfileRequest;

use super::{Error, Result};

/// Flags common to every profile kind.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct CommonProfileArgs {
    /// Namespace of the Profile and its Secret.
    #[arg(short = 'n', long, env = "KANCTL_NAMESPACE", default_value_t = super::default_namespace())]
    pub namespace: String,
    /// Name of the Profile (default: `<kind>-profile-xxxxx`).
    #[arg(long)]
    pub name: Option<String>,
    /// Skip verifying the TLS certificate of the location.
    #[arg(long = "skip-SSL-verification")]
    pub skip_ssl_verification: bool,
    /// Create without the probe write.
    #[arg(long)]
    pub skip_validation: bool,
    /// Check and print, but create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The kind of location.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum ProfileCommand {
    /// An S3-compatible bucket (AWS S3, MinIO, SeaweedFS, Ceph...).
    S3compliant {
        /// Access key id.
        #[arg(short = 'a', long, env = "AWS_ACCESS_KEY_ID")]
        access_key: String,
        /// Secret access key (prefer the environment variable).
        #[arg(short = 's', long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
        secret_key: String,
        /// Bucket.
        #[arg(short = 'b', long)]
        bucket: String,
        /// Endpoint URL (empty: AWS).
        #[arg(short = 'e', long, default_value = "")]
        endpoint: String,
        /// Prefix inside the bucket.
        #[arg(short = 'p', long, default_value = "")]
        prefix: String,
        /// Region.
        #[arg(short = 'r', long, default_value = "")]
        region: String,
        /// AWS IAM role to assume (ARN): the key pair then only signs the STS call, and backups
        /// run with the role's temporary credentials, renewed before they expire.
        #[arg(short = 'R', long)]
        role: Option<String>,
        #[command(flatten)]
        common: CommonProfileArgs,
    },
    /// A Google Cloud Storage bucket.
    Gcp {
        /// Project id.
        #[arg(short = 'a', long)]
        project_id: String,
        /// File of the service account key (JSON).
        #[arg(short = 's', long)]
        service_key: PathBuf,
        /// Bucket.
        #[arg(short = 'b', long)]
        bucket: String,
        /// Prefix inside the bucket.
        #[arg(short = 'p', long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        common: CommonProfileArgs,
    },
    /// An Azure Blob Storage container.
    Azure {
        /// Storage account.
        #[arg(short = 'a', long)]
        storage_account: String,
        /// Storage key (prefer the environment variable).
        #[arg(short = 's', long, env = "AZURE_STORAGE_KEY", hide_env_values = true)]
        storage_key: String,
        /// Cloud environment (`AzurePublicCloud`, ...).
        #[arg(long, default_value = "AzurePublicCloud")]
        storage_env: String,
        /// Container.
        #[arg(short = 'b', long)]
        bucket: String,
        /// Endpoint URL (empty: Azure's).
        #[arg(short = 'e', long, default_value = "")]
        endpoint: String,
        /// Prefix inside the container.
        #[arg(short = 'p', long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        common: CommonProfileArgs,
    },
    /// A directory on the coordinator's machine (local cluster, tests).
    Local {
        /// The directory.
        #[arg(long)]
        path: PathBuf,
        #[command(flatten)]
        common: CommonProfileArgs,
    },
}

impl ProfileCommand {
    /// The flags every kind has.
    pub fn common_mut(&mut self) -> &mut CommonProfileArgs {
        match self {
            ProfileCommand::S3compliant { common, .. }
            | ProfileCommand::Gcp { common, .. }
            | ProfileCommand::Azure { common, .. }
            | ProfileCommand::Local { common, .. } => common,
        }
    }
}

/// The request the flags describe.
pub fn request(cmd: &ProfileCommand) -> Result<CreateProfileRequest> {
    let (kind, common, mut req) = match cmd {
        ProfileCommand::S3compliant { access_key, secret_key, bucket, endpoint, prefix, region, role, common } => {
            let mut credentials: std::collections::HashMap<String, Vec<u8>> = [
                ("aws_access_key_id".to_string(), access_key.as_bytes().to_vec()),
                ("aws_secret_access_key".to_string(), secret_key.as_bytes().to_vec()),
            ]
            .into();
            // As upstream: a role makes the Profile's credential the whole Secret (type secret),
            // whose key pair then only signs the STS call that assumes the role.
            let role = role.as_deref().filter(|r| !r.is_empty());
            if let Some(r) = role {
                credentials.insert("role".into(), r.as_bytes().to_vec());
            }
            let (id_field, secret_field) =
                if role.is_some() { ("", "") } else { ("aws_access_key_id", "aws_secret_access_key") };
            (
                "s3compliant",
                common,
                CreateProfileRequest {
                    location_type: "s3Compliant".into(),
                    bucket: bucket.clone(),
                    endpoint: endpoint.clone(),
                    prefix: prefix.clone(),
                    region: region.clone(),
                    credentials,
                    id_field: id_field.into(),
                    secret_field: secret_field.into(),
                    ..Default::default()
                },
            )
        }
        ProfileCommand::Gcp { project_id, service_key, bucket, prefix, common } => {
            let key = std::fs::read(service_key)
                .map_err(|e| Error::Usage(format!("--service-key: cannot read {}: {e}", service_key.display())))?;
            (
                "gcp",
                common,
                CreateProfileRequest {
                    location_type: "gcs".into(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    credentials: [
                        ("project-id".to_string(), project_id.as_bytes().to_vec()),
                        ("service-account.json".to_string(), key),
                    ]
                    .into(),
                    id_field: "project-id".into(),
                    secret_field: "service-account.json".into(),
                    ..Default::default()
                },
            )
        }
        ProfileCommand::Azure { storage_account, storage_key, storage_env, bucket, endpoint, prefix, common } => (
            "azure",
            common,
            CreateProfileRequest {
                location_type: "azure".into(),
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                prefix: prefix.clone(),
                credentials: [
                    ("azure_storage_account_id".to_string(), storage_account.as_bytes().to_vec()),
                    ("azure_storage_key".to_string(), storage_key.as_bytes().to_vec()),
                    ("azure_storage_environment".to_string(), storage_env.as_bytes().to_vec()),
                ]
                .into(),
                id_field: "azure_storage_account_id".into(),
                secret_field: "azure_storage_key".into(),
                ..Default::default()
            },
        ),
        ProfileCommand::Local { path, common } => (
            "local",
            common,
            CreateProfileRequest {
                location_type: "local".into(),
                path: path.display().to_string(),
                ..Default::default()
            },
        ),
    };
    req.namespace = common.namespace.clone();
    req.name = common.name.clone().unwrap_or_else(|| format!("{kind}-profile-{}", super::actionset::random_suffix()));
    req.skip_ssl_verify = common.skip_ssl_verification;
    req.skip_validation = common.skip_validation;
    req.dry_run = common.dry_run;
    Ok(req)
}
