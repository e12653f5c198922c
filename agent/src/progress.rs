//! Live counters of a running operation, read by whoever reports progress (the CLI's status
//! line, later the gRPC progress stream).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters shared between a pipeline and its observers. Cheap to update from any thread.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    /// Plaintext bytes read from the input (push) or written to the output (pull).
    pub bytes_read: AtomicU64,
    /// Plaintext bytes that were new to the repository.
    pub bytes_new: AtomicU64,
    /// Bytes written to (push) or read from (pull) the store.
    pub bytes_stored: AtomicU64,
    /// Chunks processed.
    pub chunks: AtomicU64,
    /// Total bytes expected, when known (pull knows it; push of a stream does not).
    pub total: AtomicU64,
}

/// A consistent-enough copy of the counters.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProgressSnapshot {
    /// See [`Progress::bytes_read`].
    pub bytes_read: u64,
    /// See [`Progress::bytes_new`].
    pub bytes_new: u64,
    /// See [`Progress::bytes_stored`].
    pub bytes_stored: u64,
    /// See [`Progress::chunks`].
    pub chunks: u64,
    /// See [`Progress::total`]; 0 when unknown.
    pub total: u64,
    /// Seconds since the start.
    pub elapsed_secs: f64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            started: Instant::now(),
            bytes_read: AtomicU64::new(0),
            bytes_new: AtomicU64::new(0),
            bytes_stored: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }
}

impl Progress {
    /// New counters, started now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_new: self.bytes_new.load(Ordering::Relaxed),
            bytes_stored: self.bytes_stored.load(Ordering::Relaxed),
            chunks: self.chunks.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            elapsed_secs: self.started.elapsed().as_secs_f64(),
        }
    }
}

impl ProgressSnapshot {
    /// Throughput of `bytes_read` in bytes per second.
    pub fn rate(&self) -> f64 {
        if self.elapsed_secs > 0.0 { self.bytes_read as f64 / self.elapsed_secs } else { 0.0 }
    }

    /// Seconds left, when the total is known and something moved.
    pub fn eta_secs(&self) -> Option<f64> {
        let r = self.rate();
        (self.total > 0 && r > 0.0).then(|| self.total.saturating_sub(self.bytes_read) as f64 / r)
    }
}

/// Formats a byte count with binary units: `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_rates() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        let s = ProgressSnapshot {
            bytes_read: 50,
            bytes_new: 0,
            bytes_stored: 0,
            chunks: 0,
            total: 100,
            elapsed_secs: 1.0,
        };
        assert_eq!(s.rate(), 50.0);
        assert_eq!(s.eta_secs(), Some(1.0));
    }
}
