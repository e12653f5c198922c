//! What the commands the agent starts (a dump with `push --exec`, a sidecar's `BackupStream` /
//! `RestoreStream` command) inherit: nothing of the agent's own secrets. The repository key
//! and passphrase (`KANISTER_*`) and every store credential object_store reads from the
//! environment (`AWS_*`, `AZURE_*`, `GOOGLE_*`) are removed; what the caller gives the command
//! explicitly (a database password through `env`) is set afterwards.

/// Prefixes of the variables that belong to the agent alone.
pub const PRIVATE_PREFIXES: [&str; 4] = ["KANISTER_", "AWS_", "AZURE_", "GOOGLE_"];

/// Whether an environment variable belongs to the agent alone.
pub fn is_private(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    PRIVATE_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// Removes the agent's private variables from what `cmd` inherits.
pub fn scrub(cmd: &mut std::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_none_or(is_private) {
            cmd.env_remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_names() {
        for n in [
            "KANISTER_REPO_KEY",
            "kanister_repo_password",
            "AWS_SECRET_ACCESS_KEY",
            "AZURE_STORAGE_ACCOUNT_KEY",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
        ] {
            assert!(super::is_private(n), "{n}");
        }
        for n in ["PATH", "HOME", "MYSQL_PWD", "PGPASSWORD", "LANG"] {
            assert!(!super::is_private(n), "{n}");
        }
    }
}
