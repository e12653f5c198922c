//! Test and benchmark support shared by the project's integration tests and `tests/bench/`.
//!
//! - [`data`]: deterministic generators: mixed text/random streams and SQL dumps with a second
//!   version in which a given share of rows changed.
//! - [`agent`]: running the `kanister-agent` binary with a repository's environment.
//! - [`helm`]: the Helm chart rendered offline by Helm's Go SDK.
//! - [`infra`]: where the test servers started by `tests/infra.sh` listen.
//! - [`cluster`]: the real Kubernetes cluster `tests/cluster.sh` runs, a namespace per test.
//! - [`tls`]: a CA with server and client certificates, for TLS tests.

pub mod agent;
pub mod cluster;
pub mod data;
pub mod helm;
pub mod infra;
pub mod tls;

use sha2::{Digest, Sha256};
use std::io::Read;

/// Every file under `dir` (recursively), sorted.
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Bytes of each file resident in the page cache, and its size, in the order given, as
/// `fincore` (util-linux) counts them.
pub fn page_cache(files: &[impl AsRef<std::path::Path>]) -> Vec<(u64, u64)> {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES,SIZE"])
        .args(files.iter().map(AsRef::as_ref))
        .output()
        .expect("fincore runs (util-linux)");
    assert!(out.status.success(), "fincore: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let counts: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let mut w = l.split_whitespace().map(|w| w.parse::<u64>().unwrap());
            (w.next().unwrap(), w.next().unwrap())
        })
        .collect();
    assert_eq!(counts.len(), files.len(), "fincore: {text}");
    counts
}

/// SHA-256 of everything `r` yields, and its length.
pub fn sha256_of(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
