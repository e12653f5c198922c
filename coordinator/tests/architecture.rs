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

/// The engine's modules (`coordinator/src/engine/*.rs`) use each other without cycles: each
/// sibling a module names in code (`super::x`, not in comments) must not lead back to it. A
/// cycle is what made two files one concern in all but name (data.rs and functions.rs once).
#[test]
fn engine_modules_form_a_graph_without_cycles() {
    use std::collections::{BTreeMap, BTreeSet};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("src/engine") {
        let path = e.expect("entry").path();
        let name = path.file_stem().and_then(|s| s.to_str()).expect("file name").to_string();
        if path.extension().is_none_or(|x| x != "rs") || name == "mod" {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source");
        let code: String =
            text.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
        let uses: BTreeSet<String> = code
            .match_indices("super::")
            .map(|(i, _)| {
                let rest = &code[i + "super::".len()..];
                // `super::{a, b}` lists siblings too.
                match rest.strip_prefix('{') {
                    Some(list) => list[..list.find('}').unwrap_or(list.len())].to_string(),
                    None => rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect(),
                }
            })
            .flat_map(|w| {
                w.split(',').map(|s| s.trim().split("::").next().unwrap_or_default().to_string()).collect::<Vec<_>>()
            })
            .filter(|w| dir.join(format!("{w}.rs")).exists() && *w != name)
            .collect();
        graph.insert(name, uses);
    }
    assert!(graph.len() > 10, "found only {graph:?}");
    // Depth-first search for a back edge.
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(cycle) = visit(n, &graph, &mut Vec::new(), &mut done) {
            panic!("engine modules use each other in a cycle: {}\ngraph: {graph:#?}", cycle.join(" -> "));
        }
    }
}
