//! The gRPC contracts between Kanister processes, generated from `kanister/**/*.proto` by
//! `tonic-prost-build` with a vendored `protoc`.
//!
//! - [`agent::v1`] (`kanister.agent.v1`): coordinator → agent. Streams of backups and restores,
//!   tree backups, snapshots, forget, prune, check; every operation carries a caller-chosen id
//!   so that a retry attaches instead of running twice (see the `.proto` for the contract).
//! - [`coordinator::v1`] (`kanister.coordinator.v1`): kanctl → coordinator. ActionSets (create,
//!   get, list, watch resumably, cancel, delete), Profiles (create, validate), Blueprint
//!   validation and the snapshots a Profile holds.
//!
//! Messages that carry secrets ([`agent::v1::RepositoryRef`], [`agent::v1::CommandSpec`],
//! [`coordinator::v1::CreateProfileRequest`]) print no secret in `Debug`, so that logging a
//! request can never leak a credential.

/// `kanister.agent.*`
pub mod agent {
    /// `kanister.agent.v1`: version 1 of the agent's API.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("kanister.agent.v1");

        impl std::fmt::Debug for RepositoryRef {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut keys: Vec<&str> = self.store_options.keys().map(String::as_str).collect();
                keys.sort_unstable();
                f.debug_struct("RepositoryRef")
                    .field("store_url", &self.store_url)
                    .field("store_options", &keys)
                    .field(
                        "key",
                        &match self.key {
                            None => "none",
                            Some(repository_ref::Key::Passphrase(_)) => "passphrase(..)",
                            Some(repository_ref::Key::RawKey(_)) => "raw_key(..)",
                        },
                    )
                    .finish()
            }
        }

        impl std::fmt::Debug for CommandSpec {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // Only the program and the names of the variables: arguments may hold secrets.
                let mut env: Vec<&str> = self.env.keys().map(String::as_str).collect();
                env.sort_unstable();
                f.debug_struct("CommandSpec")
                    .field("program", &self.argv.first().map_or("", String::as_str))
                    .field("args", &self.argv.len().saturating_sub(1))
                    .field("env", &env)
                    .finish()
            }
        }
    }
}

/// `kanister.coordinator.*`
pub mod coordinator {
    /// `kanister.coordinator.v1`: version 1 of the coordinator's API.
    #[allow(missing_docs, missing_debug_implementations, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("kanister.coordinator.v1");

        impl std::fmt::Debug for CreateProfileRequest {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The names of the credentials only, never their values.
                let keys: Vec<&str> = self.credentials.keys().map(String::as_str).collect();
                f.debug_struct("CreateProfileRequest")
                    .field("namespace", &self.namespace)
                    .field("name", &self.name)
                    .field("location_type", &self.location_type)
                    .field("bucket", &self.bucket)
                    .field("endpoint", &self.endpoint)
                    .field("credentials", &keys)
                    .finish_non_exhaustive()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::agent::v1::*;

    #[test]
    fn debug_prints_no_secret() {
        let r = BackupStreamRequest {
            op_id: "op-1".into(),
            repository: Some(RepositoryRef {
                store_url: "s3://b/p".into(),
                store_options: [("aws_secret_access_key".to_string(), "S3CRET-VALUE".to_string())].into(),
                key: Some(repository_ref::Key::Passphrase(b"PASS-VALUE".to_vec())),
            }),
            command: Some(CommandSpec {
                argv: vec!["mysqldump".into(), "-pARG-VALUE".into()],
                env: [("MYSQL_PWD".to_string(), "ENV-VALUE".to_string())].into(),
            }),
            ..Default::default()
        };
        let s = format!("{r:?}");
        for secret in ["S3CRET-VALUE", "PASS-VALUE", "ARG-VALUE", "ENV-VALUE"] {
            assert!(!s.contains(secret), "{secret} leaked: {s}");
        }
        assert!(s.contains("mysqldump") && s.contains("aws_secret_access_key") && s.contains("MYSQL_PWD"), "{s}");
    }

    #[test]
    fn create_profile_debug_prints_no_secret() {
        let r = crate::coordinator::v1::CreateProfileRequest {
            name: "s3-profile".into(),
            credentials: [("aws_secret_access_key".to_string(), b"S3CRET-VALUE".to_vec())].into(),
            ..Default::default()
        };
        let s = format!("{r:?}");
        assert!(!s.contains("S3CRET-VALUE") && s.contains("aws_secret_access_key") && s.contains("s3-profile"), "{s}");
    }
}
