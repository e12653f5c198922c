//! The coordinator's Prometheus metrics, served as text on `/metrics`.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `kanister_actionsets` | state | ActionSets running now; complete and failed since start |
//! | `kanister_action_set_resolutions_total` | resolution | ActionSets finished, `success` or `failure` (upstream's name) |
//! | `kanister_phase_duration_seconds` | function | histogram of phase wall times |
//! | `kanister_phase_failures_total` | reason | phase failures: timeout, cancelled, invalid, function, internal |
//! | `kanister_maintenance_runs_total` | result | repository maintenance runs: succeeded, skipped, failed |
//! | `kanister_maintenance_freed_bytes_total` | | bytes maintenance freed |
//! | `kanister_maintenance_last_run_timestamp_seconds` | profile | when each Profile's repository was last maintained |
//! | `kanister_maintenance_last_duration_seconds` | profile | how long that took |

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Resolution {
    resolution: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProfileLabel {
    profile: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// How an ActionSet ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Finished {
    Complete,
    Failed,
}

/// Why a phase failed, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PhaseFailure {
    Timeout,
    Cancelled,
    Invalid,
    Function,
    Internal,
}

impl PhaseFailure {
    fn label(self) -> &'static str {
        match self {
            PhaseFailure::Timeout => "timeout",
            PhaseFailure::Cancelled => "cancelled",
            PhaseFailure::Invalid => "invalid",
            PhaseFailure::Function => "function",
            PhaseFailure::Internal => "internal",
        }
    }
}

/// How a maintenance run ended, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MaintenanceOutcome {
    Succeeded,
    Skipped,
    Failed,
}

/// The engine's metrics. Every method takes `&self`: the metric types are atomics.
#[derive(Debug)]
pub(super) struct Metrics {
    registry: Registry,
    actionsets: Family<StateLabel, Gauge>,
    resolutions: Family<Resolution, Counter>,
    phase_seconds: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    phase_failures: Family<Reason, Counter>,
    maintenance_runs: Family<ResultLabel, Counter>,
    maintenance_freed: Counter,
    maintenance_last_run: Family<ProfileLabel, Gauge>,
    maintenance_last_duration: Family<ProfileLabel, FloatGauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kanister");
        let m = Metrics {
            actionsets: Family::default(),
            resolutions: Family::default(),
            // 0.1 s to ~55 min.
            phase_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 16))),
            phase_failures: Family::default(),
            maintenance_runs: Family::default(),
            maintenance_freed: Counter::default(),
            maintenance_last_run: Family::default(),
            maintenance_last_duration: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "actionsets",
            "ActionSets by state (running now; finished since start)",
            m.actionsets.clone(),
        );
        registry.register("action_set_resolutions", "Total number of action set resolutions", m.resolutions.clone());
        registry.register("phase_duration_seconds", "Phase durations by function", m.phase_seconds.clone());
        registry.register("phase_failures", "Phase failures by reason", m.phase_failures.clone());
        registry.register("maintenance_runs", "Repository maintenance runs by result", m.maintenance_runs.clone());
        registry.register("maintenance_freed_bytes", "Bytes repository maintenance freed", m.maintenance_freed.clone());
        registry.register(
            "maintenance_last_run_timestamp_seconds",
            "When each Profile's repository was last maintained",
            m.maintenance_last_run.clone(),
        );
        registry.register(
            "maintenance_last_duration_seconds",
            "How long each Profile's last maintenance took",
            m.maintenance_last_duration.clone(),
        );
        // Series that exist from the start, as upstream's bounded labels: a dashboard sees 0, not
        // "no data", before the first ActionSet finishes.
        for state in ["running", "complete", "failed"] {
            m.actionsets.get_or_create(&StateLabel { state }).set(0);
        }
        for resolution in ["success", "failure"] {
            m.resolutions.get_or_create(&Resolution { resolution }).inc_by(0);
        }
        for result in ["succeeded", "skipped", "failed"] {
            m.maintenance_runs.get_or_create(&ResultLabel { result }).inc_by(0);
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a finished ActionSet.
    pub(super) fn finished(&self, how: Finished) {
        let (state, resolution) = match how {
            Finished::Complete => ("complete", "success"),
            Finished::Failed => ("failed", "failure"),
        };
        self.actionsets.get_or_create(&StateLabel { state }).inc();
        self.resolutions.get_or_create(&Resolution { resolution }).inc();
    }

    /// Records a phase's wall time, and its failure if it failed.
    pub(super) fn phase(&self, function: &str, seconds: f64, failure: Option<PhaseFailure>) {
        self.phase_seconds.get_or_create(&FunctionLabel { function: function.to_string() }).observe(seconds);
        if let Some(f) = failure {
            self.phase_failures.get_or_create(&Reason { reason: f.label() }).inc();
        }
    }

    /// Records a maintenance run of `profile` (namespace/name).
    pub(super) fn maintenance(
        &self,
        profile: &str,
        outcome: MaintenanceOutcome,
        bytes_freed: u64,
        finished_unix: i64,
        seconds: f64,
    ) {
        let result = match outcome {
            MaintenanceOutcome::Succeeded => "succeeded",
            MaintenanceOutcome::Skipped => "skipped",
            MaintenanceOutcome::Failed => "failed",
        };
        self.maintenance_runs.get_or_create(&ResultLabel { result }).inc();
        self.maintenance_freed.inc_by(bytes_freed);
        let label = ProfileLabel { profile: profile.to_string() };
        self.maintenance_last_run.get_or_create(&label).set(finished_unix);
        self.maintenance_last_duration.get_or_create(&label).set(seconds);
    }

    /// The metrics in the Prometheus text format, with `running` ActionSets now.
    pub(super) fn encode(&self, running: usize) -> String {
        self.actionsets.get_or_create(&StateLabel { state: "running" }).set(i64::try_from(running).unwrap_or(i64::MAX));
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_series_counts_what_it_names() {
        let m = Metrics::default();
        let empty = m.encode(0);
        for series in [
            "kanister_actionsets{state=\"running\"}",
            "kanister_actionsets{state=\"complete\"}",
            "kanister_actionsets{state=\"failed\"}",
            "kanister_action_set_resolutions_total{resolution=\"success\"}",
            "kanister_action_set_resolutions_total{resolution=\"failure\"}",
            "kanister_maintenance_runs_total{result=\"succeeded\"}",
            "kanister_maintenance_freed_bytes_total",
        ] {
            assert_eq!(value(&empty, series), Some(0.0), "{series} missing or not 0 in:\n{empty}");
        }

        m.finished(Finished::Complete);
        m.finished(Finished::Failed);
        m.finished(Finished::Failed);
        m.phase("KubeTask", 1.5, None);
        m.phase("KubeTask", 2.5, Some(PhaseFailure::Timeout));
        m.maintenance("kanister/s3", MaintenanceOutcome::Succeeded, 4096, 1_700_000_000, 0.25);
        let text = m.encode(3);
        let expect = [
            ("kanister_actionsets{state=\"running\"}", 3.0),
            ("kanister_actionsets{state=\"complete\"}", 1.0),
            ("kanister_actionsets{state=\"failed\"}", 2.0),
            ("kanister_action_set_resolutions_total{resolution=\"success\"}", 1.0),
            ("kanister_action_set_resolutions_total{resolution=\"failure\"}", 2.0),
            ("kanister_phase_duration_seconds_count{function=\"KubeTask\"}", 2.0),
            ("kanister_phase_duration_seconds_sum{function=\"KubeTask\"}", 4.0),
            ("kanister_phase_failures_total{reason=\"timeout\"}", 1.0),
            ("kanister_maintenance_runs_total{result=\"succeeded\"}", 1.0),
            ("kanister_maintenance_freed_bytes_total", 4096.0),
            ("kanister_maintenance_last_run_timestamp_seconds{profile=\"kanister/s3\"}", 1_700_000_000.0),
            ("kanister_maintenance_last_duration_seconds{profile=\"kanister/s3\"}", 0.25),
        ];
        for (series, want) in expect {
            assert_eq!(value(&text, series), Some(want), "{series} in:\n{text}");
        }
        assert!(text.contains("# TYPE kanister_phase_duration_seconds histogram"), "{text}");
    }
}
