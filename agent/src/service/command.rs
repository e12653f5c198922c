//! Commands run by operations (`mysqldump`, `mysql`, `pg_restore`, ...) in the agent's container.
//!
//! - The command gets the agent's environment minus the agent's own settings and store
//!   credentials (`KANISTER_*`, `AWS_*`, `AZURE_*`, `GOOGLE_*`), plus the request's `env`: the
//!   repository key and the store credentials never reach it, and secrets the command needs come
//!   through its environment rather than its arguments.
//! - Its stderr is drained by a thread that keeps the last [`STDERR_LINES`] lines for the error.
//! - [`Running`] owns the process: dropping it (a cancelled or failed operation) kills the
//!   command if it still runs, so a thread blocked on its pipes is released. Only the command
//!   itself is killed; children it started keep running until they touch a closed pipe.

use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kanister_proto::agent::v1 as pb;

use super::error::{CommandFailure, Error, Result};

/// Lines of stderr kept for the error of a failed command.
pub const STDERR_LINES: usize = 20;
/// Longest stderr line kept (longer ones are cut).
const MAX_LINE: usize = 500;

#[derive(Debug, Default)]
struct Shared {
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
    tail: Mutex<VecDeque<String>>,
    stderr_done: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Waits for the command to exit, polling so that a kill is never blocked by the waiter;
    /// then gives the stderr thread a moment to read the last lines.
    fn wait(&self) -> std::io::Result<ExitStatus> {
        let status = loop {
            if let Some(s) = *lock(&self.status) {
                break s;
            }
            {
                let mut g = lock(&self.child);
                match g.as_mut() {
                    Some(c) => {
                        if let Some(s) = c.try_wait()? {
                            *lock(&self.status) = Some(s);
                            g.take();
                            break s;
                        }
                    }
                    None => return Err(std::io::Error::other("the command was not started")),
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !self.stderr_done.load(Ordering::Acquire) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(status)
    }

    fn kill(&self) {
        if let Some(c) = lock(&self.child).as_mut() {
            let _ = c.kill();
        }
    }
}

/// A running command. Dropping it kills the command if it has not exited.
#[derive(Debug)]
pub struct Running {
    program: String,
    shared: Arc<Shared>,
}

/// What the command reads and writes besides stderr.
#[derive(Debug, Clone, Copy)]
pub enum Pipes {
    /// Its stdout is the backup's input; stdin is empty.
    Stdout,
    /// Its stdin is the restore's output; stdout is discarded.
    Stdin,
}

/// Starts `spec`. Returns the command and its piped stdout or stdin.
pub fn spawn(spec: &pb::CommandSpec, pipes: Pipes) -> Result<(Running, Option<ChildStdout>, Option<ChildStdin>)> {
    let program = spec.argv.first().filter(|p| !p.is_empty()).cloned().ok_or_else(|| {
        Error::InvalidArgument("the command is empty: give at least a program in command.argv".into())
    })?;
    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..]);
    crate::childenv::scrub(&mut cmd);
    cmd.envs(&spec.env).stderr(Stdio::piped());
    match pipes {
        Pipes::Stdout => cmd.stdin(Stdio::null()).stdout(Stdio::piped()),
        Pipes::Stdin => cmd.stdin(Stdio::piped()).stdout(Stdio::null()),
    };
    let mut child = cmd.spawn().map_err(|e| {
        Error::Command(CommandFailure {
            program: program.clone(),
            exit_code: None,
            signal: None,
            stderr_tail: vec![format!("could not start: {e}")],
        })
    })?;
    let (stdout, stdin, stderr) = (child.stdout.take(), child.stdin.take(), child.stderr.take());
    let shared = Arc::new(Shared { child: Mutex::new(Some(child)), ..Default::default() });
    if let Some(stderr) = stderr {
        let s = shared.clone();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(stderr);
            let mut line = Vec::new();
            while let Ok(n) = r.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line);
                let mut text = text.trim_end().to_string();
                if text.len() > MAX_LINE {
                    let mut cut = MAX_LINE;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                    text.push('…');
                }
                let mut t = lock(&s.tail);
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(text);
                line.clear();
            }
            s.stderr_done.store(true, Ordering::Release);
        });
    } else {
        shared.stderr_done.store(true, Ordering::Release);
    }
    Ok((Running { program, shared }, stdout, stdin))
}

impl Running {
    /// A reader of the command's stdout that, at the end of the stream, waits for the command and
    /// fails when it failed: so the backup never takes a failed command's output as complete.
    /// `at_end` runs when the stream ended, before the wait.
    pub fn stdout_until_exit(&self, stdout: ChildStdout, at_end: impl Fn() + Send + 'static) -> UntilExit {
        UntilExit { stdout, shared: self.shared.clone(), program: self.program.clone(), at_end: Box::new(at_end) }
    }

    /// Waits for the command to exit (blocking: call it on the blocking pool).
    pub fn wait_blocking(&self) -> std::io::Result<ExitStatus> {
        self.shared.wait()
    }

    /// Waits for the command to exit without blocking the runtime.
    pub async fn wait(&self) -> Result<ExitStatus> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.wait())
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("waiting for the command failed: {e}")))
    }

    /// How the command failed, if it has exited unsuccessfully.
    pub fn failure(&self) -> Option<CommandFailure> {
        use std::os::unix::process::ExitStatusExt;
        let status = (*lock(&self.shared.status))?;
        (!status.success()).then(|| CommandFailure {
            program: self.program.clone(),
            exit_code: status.code(),
            signal: status.signal(),
            stderr_tail: lock(&self.shared.tail).iter().cloned().collect(),
        })
    }

    /// Whether the command has exited (and been reaped).
    pub fn exited(&self) -> bool {
        lock(&self.shared.status).is_some()
    }

    /// The program's name.
    pub fn program(&self) -> &str {
        &self.program
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if lock(&self.shared.child).is_some() {
            self.shared.kill();
            // Reap it off the runtime, so that no zombie is left behind.
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                let _ = shared.wait();
            });
        }
    }
}

/// The stdout of a command, failing at its end when the command failed.
pub struct UntilExit {
    stdout: ChildStdout,
    shared: Arc<Shared>,
    program: String,
    at_end: Box<dyn Fn() + Send>,
}

impl std::fmt::Debug for UntilExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UntilExit").field("program", &self.program).finish_non_exhaustive()
    }
}

impl Read for UntilExit {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            (self.at_end)();
            let status = self.shared.wait()?;
            if !status.success() {
                return Err(std::io::Error::other(format!("the command {:?} failed ({status})", self.program)));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str]) -> pb::CommandSpec {
        pb::CommandSpec { argv: argv.iter().map(|s| s.to_string()).collect(), env: Default::default() }
    }

    #[test]
    fn failing_command_reports_exit_code_and_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line-$i >&2; done; echo out; exit 7";
        let (run, stdout, _) = spawn(&spec(&["sh", "-c", script]), Pipes::Stdout).unwrap();
        let mut r = run.stdout_until_exit(stdout.unwrap(), || {});
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert!(err.to_string().contains("\"sh\""), "{err}");
        let f = run.failure().expect("failed");
        assert_eq!(f.exit_code, Some(7));
        assert_eq!(f.stderr_tail.len(), STDERR_LINES);
        assert_eq!(f.stderr_tail.last().map(String::as_str), Some("line-30"));
        assert_eq!(out, b"out\n");
    }

    #[test]
    fn agent_secrets_stay_out_of_the_command() {
        for k in
            ["KANISTER_REPO_PASSWORD", "AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY", "GOOGLE_SERVICE_ACCOUNT"]
        {
            assert!(crate::childenv::is_private(k), "{k}");
        }
        for k in ["PATH", "HOME", "MYSQL_PWD", "PGPASSWORD"] {
            assert!(!crate::childenv::is_private(k), "{k}");
        }
        let mut s = spec(&["sh", "-c", "echo \"$GIVEN\""]);
        s.env.insert("GIVEN".into(), "given".into());
        let (run, stdout, _) = spawn(&s, Pipes::Stdout).unwrap();
        let mut out = String::new();
        run.stdout_until_exit(stdout.unwrap(), || {}).read_to_string(&mut out).unwrap();
        assert_eq!(out, "given\n");
    }

    #[test]
    fn dropping_kills_a_silent_command() {
        let (run, stdout, _) = spawn(&spec(&["sleep", "30"]), Pipes::Stdout).unwrap();
        let mut stdout = stdout.unwrap();
        let reader = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stdout.read_to_end(&mut b);
        });
        let t = Instant::now();
        drop(run);
        reader.join().unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "the reader stayed blocked");
    }
}
