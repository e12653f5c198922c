//! The object store of a [`LocalCluster`]: objects as JSON under `kind/namespace/name`, a
//! resource version bumped on every write (so status writes meet conflicts as on an API
//! server), the recorded events, and the state file that carries both across restarts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LocalCluster, lock};
use crate::cluster::{Error, ObjectRef, Result, kind_key};

/// Errors loading objects into a [`LocalCluster`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file could not be read or written.
    #[error("failed to access {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document does not parse.
    #[error("failed to parse YAML in {origin}")]
    Yaml {
        /// Where the text came from.
        origin: String,
        /// The cause.
        #[source]
        source: serde_norway::Error,
    },
    /// A document lacks `kind` or `metadata.name`.
    #[error("object in {origin} has no kind or no metadata.name")]
    Incomplete {
        /// Where the text came from.
        origin: String,
    },
    /// The state file does not parse.
    #[error("failed to parse state file {path}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Kind of the object it is about (`ActionSet` when empty, as in older state files).
    #[serde(default)]
    pub kind: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// Reason.
    pub reason: String,
    /// Message.
    pub note: String,
    /// UID of the ActionSet (empty when it had none).
    #[serde(default)]
    pub uid: String,
    /// RFC 3339: when it was recorded.
    #[serde(default)]
    pub time: String,
}

#[derive(Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) objects: BTreeMap<String, Value>,
    pub(super) events: Vec<RecordedEvent>,
    pub(super) next_version: u64,
}

pub(super) fn key_of(kind: &str, namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}", kind_key(kind))
}

pub(super) fn object_key(v: &Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let meta = v.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
    Some(key_of(kind, ns, name))
}

pub(super) fn object_ref(v: &Value) -> ObjectRef {
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    ObjectRef {
        api_version: s("/apiVersion"),
        kind: s("/kind"),
        namespace: s("/metadata/namespace"),
        name: s("/metadata/name"),
    }
}

impl LocalCluster {
    /// Adds (or replaces) the objects of a multi-document YAML text. An ActionSet that exists
    /// already is kept as it is (as `kubectl create` would refuse it): loading the same files
    /// again, after a restart or an edit of another file, never resets a run's status.
    pub fn load_yaml(&self, text: &str, origin: &str) -> Result<usize, LoadError> {
        let mut n = 0;
        for doc in serde_norway::Deserializer::from_str(text) {
            let value = Value::deserialize(doc).map_err(|source| LoadError::Yaml { origin: origin.into(), source })?;
            if value.is_null() {
                continue;
            }
            let Some(key) = object_key(&value) else {
                return Err(LoadError::Incomplete { origin: origin.into() });
            };
            if value.get("kind").and_then(Value::as_str) == Some("ActionSet")
                && lock(&self.state).objects.contains_key(&key)
            {
                continue;
            }
            self.put(value);
            n += 1;
        }
        Ok(n)
    }

    /// The newest modification time of the `.yaml`/`.yml` files in `dir` and their count, to
    /// notice edits ([`Self::load_dir`] again when it changes).
    pub fn dir_version(dir: &Path) -> std::io::Result<(std::time::SystemTime, usize)> {
        let mut newest = std::time::SystemTime::UNIX_EPOCH;
        let mut n = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                newest = newest.max(e.metadata()?.modified()?);
                n += 1;
            }
        }
        Ok((newest, n))
    }

    /// Adds the objects of every `.yaml`/`.yml` file in a directory (sorted by name).
    pub fn load_dir(&self, dir: &Path) -> Result<usize, LoadError> {
        let io = |source| LoadError::Io { path: dir.to_path_buf(), source };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut n = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|source| LoadError::Io { path: f.clone(), source })?;
            n += self.load_yaml(&text, &f.display().to_string())?;
        }
        Ok(n)
    }

    /// Adds or replaces an object (given as JSON with `kind` and `metadata.name`), assigning a
    /// new resource version and, if missing, a UID.
    pub fn put(&self, mut value: Value) {
        let Some(key) = object_key(&value) else { return };
        let mut state = lock(&self.state);
        let version = state.next_version;
        state.next_version += 1;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(version.to_string()));
            meta.entry("uid")
                .or_insert_with(|| Value::String(format!("local-{version}-{}", crate::cluster::generated_suffix())));
        }
        state.objects.insert(key, value);
        self.save(&state);
    }

    pub(super) fn save(&self, state: &State) {
        let Some(path) = &self.state_file else { return };
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec(state)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "failed to save local cluster state");
        }
    }

    pub(super) fn find(&self, object: &ObjectRef) -> Result<Value> {
        let state = lock(&self.state);
        state
            .objects
            .get(&key_of(&object.kind, &object.namespace, &object.name))
            .cloned()
            .ok_or_else(|| Error::NotFound(object.clone()))
    }

    pub(super) fn update(&self, object: &ObjectRef, f: impl FnOnce(&mut Value) -> Result<()>) -> Result<String> {
        let mut state = lock(&self.state);
        let version = state.next_version;
        let key = key_of(&object.kind, &object.namespace, &object.name);
        let value = state.objects.get_mut(&key).ok_or_else(|| Error::NotFound(object.clone()))?;
        f(value)?;
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(version.to_string()));
        }
        state.next_version += 1;
        self.save(&state);
        Ok(version.to_string())
    }
}
