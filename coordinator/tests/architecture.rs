//! The coordinator is thin: it talks to Kubernetes and to agents, never to a repository. It
//! links neither the agent nor the repository format, so that no tenant's repository is ever
//! parsed, and no index ever loaded, in the process that can read every Secret.

use std::process::Command;

#[test]
fn coordinator_links_no_repository_code() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "kanister-coordinator", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    let crates: std::collections::BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(crates.contains("kanister-proto") && crates.contains("kanister-profile"), "{crates:?}");
    for forbidden in ["kanister-agent", "kanister-repo", "zstd", "chacha20poly1305", "fastcdc"] {
        assert!(!crates.contains(forbidden), "the coordinator links {forbidden}:\n{tree}");
    }
}
