//! Runs the `kanister-agent` binary against one repository.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Passphrase of test repositories.
pub const PASSWORD: &str = "correct horse battery staple";

/// The agent binary, bound to a store and its settings.
#[derive(Debug, Clone)]
pub struct Agent {
    bin: PathBuf,
    /// Store URL.
    pub store: String,
    /// `--store-option` settings.
    pub options: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Agent {
    /// The binary at `bin` on store `store`, with the test passphrase.
    pub fn new(bin: impl Into<PathBuf>, store: impl Into<String>) -> Self {
        Agent { bin: bin.into(), store: store.into(), options: Vec::new(), env: Vec::new() }
    }

    /// Adds store settings.
    pub fn with_options(mut self, opts: &[String]) -> Self {
        self.options.extend(opts.iter().cloned());
        self
    }

    /// Adds an environment variable.
    pub fn with_env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// A command for `args`, with the repository's environment (and nothing of the caller's
    /// KANISTER_* settings).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        for (k, _) in std::env::vars() {
            if k.starts_with("KANISTER_") && !k.starts_with("KANISTER_TEST_") {
                c.env_remove(k);
            }
        }
        c.env("KANISTER_STORE", &self.store).env("KANISTER_REPO_PASSWORD", PASSWORD).args(args);
        if !self.options.is_empty() {
            c.env("KANISTER_STORE_OPTIONS", self.options.join(","));
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `args`; returns the output whatever the exit status.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().expect("the agent binary runs")
    }

    /// Runs `args` and requires success.
    pub fn run(&self, args: &[&str]) -> Output {
        let o = self.output(args);
        assert!(
            o.status.success(),
            "kanister-agent {args:?} failed: {}\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Runs `args --json`, requires success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        // Global flags go before anything an `--exec` would swallow.
        let mut a = args.to_vec();
        a.insert(a.len().min(1), "--json");
        let o = self.run(&a);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON object ({e}): {}", String::from_utf8_lossy(&o.stdout)))
    }

    /// `repo init`.
    pub fn init(&self) {
        self.run(&["repo", "init"]);
    }

    /// Pushes what `input` yields through stdin; returns the push's JSON.
    pub fn push(&self, args: &[&str], input: impl Read + Send + 'static) -> serde_json::Value {
        let o = self.push_output(args, input);
        assert!(o.status.success(), "push failed: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("push --json prints JSON")
    }

    /// Pushes through stdin; returns the raw output.
    pub fn push_output(&self, args: &[&str], mut input: impl Read + Send + 'static) -> Output {
        let mut a = vec!["push", "--json"];
        a.extend_from_slice(args);
        let mut child = self
            .cmd(&a)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent runs");
        let mut stdin = child.stdin.take().expect("piped");
        let feeder = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = input.read(&mut buf).expect("test input reads");
                if n == 0 || stdin.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let o = child.wait_with_output().expect("agent finishes");
        feeder.join().expect("feeder thread");
        o
    }

    /// Pulls a snapshot to stdout and hashes it: (sha256, length, exit success, stderr).
    pub fn pull_hash(&self, snapshot: &str) -> (String, u64, bool, String) {
        let mut child = self
            .cmd(&["pull", snapshot, "-"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("agent runs");
        let stdout = child.stdout.take().expect("piped");
        let (h, n) = crate::sha256_of(stdout).expect("pull output reads");
        let mut err = String::new();
        child.stderr.take().expect("piped").read_to_string(&mut err).expect("stderr reads");
        let status = child.wait().expect("agent finishes");
        (h, n, status.success(), err)
    }
}
