//! The process supervisor of a [`LocalCluster`](super::LocalCluster): execs and task-pod
//! containers run as host processes, each in its own process group, killed as a whole when the
//! exec is dropped, the pod deleted or the cluster dropped; a container's output is kept as its
//! log, line by line as a kubelet keeps it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

use super::lock;
use crate::cluster::{Chunk, Error, ExitStatus, ObjectRef, Result, Stream};

#[derive(Clone, Debug, Default)]
pub(super) struct Progress {
    len: usize,
    exit: Option<ExitStatus>,
}

/// One running (or ended) container of a local pod.
pub(super) struct LocalContainer {
    log: Mutex<Vec<u8>>,
    progress: watch::Sender<Progress>,
    pgid: Mutex<Option<u32>>,
}

impl LocalContainer {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(LocalContainer {
            log: Mutex::new(Vec::new()),
            progress: watch::channel(Progress::default()).0,
            pgid: Mutex::new(None),
        })
    }

    pub(super) fn append(&self, line: &[u8]) {
        let len = {
            let mut log = lock(&self.log);
            log.extend_from_slice(line);
            log.len()
        };
        self.progress.send_modify(|p| p.len = len);
    }

    pub(super) fn exit(&self, status: ExitStatus) {
        self.progress.send_modify(|p| {
            if p.exit.is_none() {
                p.exit = Some(status);
            }
        });
    }

    pub(super) fn kill(&self) {
        if let Some(pgid) = lock(&self.pgid).take() {
            kill_group(pgid);
        }
    }
}

pub(super) struct LocalPod {
    pub(super) containers: HashMap<String, Arc<LocalContainer>>,
    pub(super) runner: tokio::task::JoinHandle<()>,
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        self.runner.abort();
        for c in self.containers.values() {
            c.kill();
            c.exit(ExitStatus::exited(None));
        }
    }
}

/// Kills a process group (best effort; the group may be gone already).
pub(super) fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Kills the process group of an exec when dropped (cancellation).
pub(super) struct GroupGuard(pub(super) Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid);
        }
    }
}

impl LocalContainer {
    /// Sends the container's log to `output` as it grows, until the container ended and all of
    /// it was sent, or the receiver left.
    pub(super) async fn stream_log(&self, output: mpsc::Sender<Vec<u8>>) {
        let mut rx = self.progress.subscribe();
        let mut offset = 0;
        loop {
            let progress = rx.borrow_and_update().clone();
            if progress.len > offset {
                let data = lock(&self.log)[offset..progress.len].to_vec();
                offset = progress.len;
                if output.send(data).await.is_err() {
                    return;
                }
                continue;
            }
            if progress.exit.is_some() || rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits for the container's end; `None` when it can no longer end (its pod is gone).
    pub(super) async fn wait_exit(&self) -> Option<ExitStatus> {
        let mut rx = self.progress.subscribe();
        let progress = rx.wait_for(|p| p.exit.is_some()).await.ok()?;
        progress.exit.clone()
    }
}

/// The command of an exec or a container: its own process group (killed as a whole), no stdin,
/// stdout and stderr piped, in `work_dir` with `host_env` set.
pub(super) fn command(
    command: &[String],
    what: &str,
    work_dir: Option<&Path>,
    host_env: &[(String, String)],
) -> Result<Command> {
    let Some((program, args)) = command.split_first() else {
        return Err(Error::Rejected { object: ObjectRef::default(), message: format!("{what}: empty command") });
    };
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    cmd.kill_on_drop(true);
    if let Some(dir) = work_dir {
        cmd.current_dir(dir);
    }
    cmd.envs(host_env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

/// Reads a stream in chunks and forwards them; stops quietly when the receiver left.
pub(super) async fn pump(mut r: impl AsyncRead + Unpin, stream: Stream, tx: mpsc::Sender<Chunk>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(Chunk { stream, data: buf[..n].to_vec() }).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads a stream line by line into a container's log (lines of stdout and stderr interleave
/// whole, as in a kubelet log).
async fn log_lines(r: impl AsyncRead + Unpin, container: Arc<LocalContainer>) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                container.append(&line);
            }
        }
    }
}

pub(super) async fn run_container(cmd: Result<Command>, state: Arc<LocalContainer>) -> ExitStatus {
    let spawned = cmd.and_then(|mut c| {
        let program = c.as_std().get_program().to_string_lossy().into_owned();
        c.spawn().map_err(|e| Error::Transient { what: format!("start {program}"), message: e.to_string() })
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            state.append(format!("failed to start: {e}\n").as_bytes());
            let status = ExitStatus::exited(Some(127));
            state.exit(status.clone());
            return status;
        }
    };
    *lock(&state.pgid) = child.id();
    let out = child.stdout.take().map(|o| tokio::spawn(log_lines(o, state.clone())));
    let err = child.stderr.take().map(|e| tokio::spawn(log_lines(e, state.clone())));
    let status = child.wait().await.map(ExitStatus::of_process).unwrap_or_default();
    // Background children of the container die with it, as in a pod.
    state.kill();
    for t in [out, err].into_iter().flatten() {
        let _ = t.await;
    }
    state.exit(status.clone());
    status
}
