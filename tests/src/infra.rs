//! The test servers `tests/infra.sh start` runs on loopback, found through the environment
//! that `tests/infra.sh env` prints (tests/run.sh sets it).

use std::sync::atomic::{AtomicU32, Ordering};

/// Reads a required variable; a missing one fails the test with the fix.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `bash tests/run.sh`, which starts the test servers (tests/infra.sh) and sets it")
    })
}

/// A test tool from an environment variable set by `tests/infra.sh env`; missing is a failure.
pub fn tool(var: &str, what: &str) -> std::path::PathBuf {
    let path = match std::env::var_os(var) {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => panic!(
            "{var} is not set: it names {what}. Run `bash tests/infra.sh install` and \
             `eval \"$(bash tests/infra.sh env)\"` (the tools live in the Python venv under $INFRA_DIR)"
        ),
    };
    assert!(path.is_file(), "{var}={} does not exist: run `bash tests/infra.sh install`", path.display());
    path
}

/// A name unique to this process and call, for repository prefixes and databases.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{tag}-{}-{}-{nanos:x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// An S3 repository URL in the SeaweedFS bucket, and its settings (credentials included).
pub fn s3(prefix: &str) -> (String, Vec<String>) {
    (
        format!("s3://{}/{prefix}", var("KANISTER_TEST_S3_BUCKET")),
        vec![
            format!("endpoint={}", var("KANISTER_TEST_S3_ENDPOINT")),
            "region=us-east-1".into(),
            format!("aws_access_key_id={}", var("KANISTER_TEST_S3_ACCESS_KEY")),
            format!("aws_secret_access_key={}", var("KANISTER_TEST_S3_SECRET_KEY")),
        ],
    )
}

/// An Azure repository URL in the Azurite container, and its settings.
pub fn azure(prefix: &str) -> (String, Vec<String>) {
    (format!("az://{}/{prefix}", var("KANISTER_TEST_AZURE_CONTAINER")), vec!["use_emulator=true".into()])
}

/// A GCS repository URL in the fake-gcs-server bucket, and its settings.
pub fn gcs(prefix: &str) -> (String, Vec<String>) {
    (
        format!("gs://{}/{prefix}", var("KANISTER_TEST_GCS_BUCKET")),
        vec![format!("base_url={}", var("KANISTER_TEST_GCS_ENDPOINT")), "skip_signature=true".into()],
    )
}

/// Uploads a local file into the fake-gcs-server bucket (its JSON upload API; `object_store`
/// writes GCS through the XML API, which no emulator here implements).
pub fn gcs_upload(object: &str, file: &std::path::Path) {
    let url = format!(
        "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
        var("KANISTER_TEST_GCS_ENDPOINT"),
        var("KANISTER_TEST_GCS_BUCKET"),
        object.replace('/', "%2F")
    );
    let st = std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .args(["-H", "Content-Type: application/octet-stream", &url])
        .status()
        .expect("curl runs");
    assert!(st.success(), "uploading {object} to fake-gcs-server failed");
}
