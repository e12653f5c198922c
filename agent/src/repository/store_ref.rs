//! The store a gRPC request's `RepositoryRef` names.

use std::collections::HashMap;

use crate::store::{Store, StoreError};

/// Why a `kanister.agent.v1.RepositoryRef` names no usable store.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// The URL is malformed or carries what belongs in the options. Names no value.
    #[error("{0}")]
    Invalid(String),
    /// The store could not be built from the URL and options.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The store a repository reference names: `url` (`s3://`, `az://`, `gs://`, `file://`; no
/// credentials, no query) and its settings (object_store's keys, case-insensitive). The one
/// mapping used by the agent's service and by the coordinator's own repository reads.
pub fn store_of_ref(url: &str, options: HashMap<String, String>) -> Result<Store, RefError> {
    let u = url::Url::parse(url).map_err(|e| RefError::Invalid(format!("repository.store_url is not a URL: {e}")))?;
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(RefError::Invalid(
            "repository.store_url must carry no credentials and no query: put settings in repository.store_options"
                .into(),
        ));
    }
    let mut options: Vec<(String, String)> = options.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect();
    options.sort();
    Ok(Store::open(url, &crate::store::StoreOptions { options, credentials_file: None })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// A reference from a request gives a store or an error on any input, never a panic.
        #[test]
        fn any_reference_gives_a_store_or_an_error(text in "\\PC{0,80}") {
            let _ = store_of_ref(&text, HashMap::from([(text.clone(), text.clone())]));
        }
    }

    #[test]
    fn credentials_and_queries_in_the_url_are_refused_without_echoing_them() {
        for url in ["s3://AKIA:s3cr3t@bucket/p", "s3://bucket/p?access_key_id=AKIA"] {
            let err = store_of_ref(url, HashMap::new()).unwrap_err().to_string();
            assert!(err.contains("store_options"), "{err}");
            assert!(!err.contains("s3cr3t") && !err.contains("AKIA"), "{err}");
        }
    }
}
