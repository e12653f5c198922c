//! Prometheus metrics of the service, served as text on `/metrics` by a small HTTP server on its
//! own listener (kept off the gRPC port so that a scraper needs neither TLS nor the token).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `kanister_agent_operations_total` | kind, result | operations finished (succeeded, failed, cancelled) |
//! | `kanister_agent_operation_duration_seconds` | kind | histogram of operation wall times |
//! | `kanister_agent_bytes_read_total` | kind | plaintext bytes read (backup) or written (restore) |
//! | `kanister_agent_bytes_uploaded_total` | kind | bytes written to the store |
//! | `kanister_agent_bytes_downloaded_total` | kind | bytes read from the store |
//! | `kanister_agent_operations_running` | | operations holding a slot |
//! | `kanister_agent_operations_queued` | | operations waiting for a slot |
//! | `kanister_agent_requests_rejected_total` | reason | requests refused (unauthenticated, exhausted) |

use std::future::Future;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResult {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

type HistogramFamily = Family<Kind, Histogram, fn() -> Histogram>;

/// The service's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    operations: Family<KindResult, Counter>,
    duration: HistogramFamily,
    bytes_read: Family<Kind, Counter>,
    bytes_uploaded: Family<Kind, Counter>,
    bytes_downloaded: Family<Kind, Counter>,
    /// Operations holding a slot.
    pub running: Gauge,
    /// Operations waiting for a slot.
    pub queued: Gauge,
    rejected: Family<Reason, Counter>,
}

/// What a finished operation contributes.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Its kind, as a label (`backup_stream`, ...).
    pub kind: &'static str,
    /// `succeeded`, `failed` or `cancelled`.
    pub result: &'static str,
    /// Wall time.
    pub seconds: f64,
    /// Plaintext bytes read or written.
    pub bytes_read: u64,
    /// Bytes written to the store.
    pub bytes_uploaded: u64,
    /// Bytes read from the store.
    pub bytes_downloaded: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kanister_agent");
        let operations = Family::<KindResult, Counter>::default();
        let duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.05, 2.0, 18)));
        let (bytes_read, bytes_uploaded, bytes_downloaded) = (
            Family::<Kind, Counter>::default(),
            Family::<Kind, Counter>::default(),
            Family::<Kind, Counter>::default(),
        );
        let (running, queued) = (Gauge::default(), Gauge::default());
        let rejected = Family::<Reason, Counter>::default();
        registry.register("operations", "Operations finished, by kind and result", operations.clone());
        registry.register("operation_duration_seconds", "Wall time of operations", duration.clone());
        registry.register("bytes_read", "Plaintext bytes read (backups) or written (restores)", bytes_read.clone());
        registry.register("bytes_uploaded", "Bytes written to the store", bytes_uploaded.clone());
        registry.register("bytes_downloaded", "Bytes read from the store", bytes_downloaded.clone());
        registry.register("operations_running", "Operations holding a slot", running.clone());
        registry.register("operations_queued", "Operations waiting for a slot", queued.clone());
        registry.register("requests_rejected", "Requests refused, by reason", rejected.clone());
        Metrics {
            registry,
            operations,
            duration,
            bytes_read,
            bytes_uploaded,
            bytes_downloaded,
            running,
            queued,
            rejected,
        }
    }
}

impl Metrics {
    /// Records a finished operation.
    pub fn finished(&self, f: Finished) {
        let kind = Kind { kind: f.kind };
        self.operations.get_or_create(&KindResult { kind: f.kind, result: f.result }).inc();
        self.duration.get_or_create(&kind).observe(f.seconds);
        self.bytes_read.get_or_create(&kind).inc_by(f.bytes_read);
        self.bytes_uploaded.get_or_create(&kind).inc_by(f.bytes_uploaded);
        self.bytes_downloaded.get_or_create(&kind).inc_by(f.bytes_downloaded);
    }

    /// Counts a refused request.
    pub fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&Reason { reason }).inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Serves `GET /metrics` (and `GET /healthz`) on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_operations() {
        let m = Metrics::default();
        m.finished(Finished {
            kind: "backup_stream",
            result: "succeeded",
            seconds: 1.5,
            bytes_read: 100,
            bytes_uploaded: 40,
            bytes_downloaded: 0,
        });
        m.rejected("unauthenticated");
        let s = m.encode();
        assert!(s.contains("kanister_agent_operations_total{kind=\"backup_stream\",result=\"succeeded\"} 1"), "{s}");
        assert!(s.contains("kanister_agent_bytes_read_total{kind=\"backup_stream\"} 100"), "{s}");
        assert!(s.contains("kanister_agent_requests_rejected_total{reason=\"unauthenticated\"} 1"), "{s}");
    }
}
