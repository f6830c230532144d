//! Per-model-version statistics with Triton's meaning: cumulative counts and nanoseconds for
//! success, fail, queue, compute_input, compute_infer and compute_output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A count and a total duration.
#[derive(Debug, Default)]
pub struct DurationStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationStat {
    pub fn record(&self, elapsed: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64) {
        (self.count.load(Ordering::Relaxed), self.ns.load(Ordering::Relaxed))
    }
}

/// How long each phase of one successful request took.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
}

/// Triton's statistics of one model version. A successful request adds one to `success` and to
/// every phase alike, so they share one count: fewer atomic updates on the request path, and a
/// snapshot never shows the phases' counts apart.
#[derive(Debug, Default)]
pub struct ModelStats {
    succeeded: AtomicU64,
    success_ns: AtomicU64,
    queue_ns: AtomicU64,
    compute_input_ns: AtomicU64,
    compute_infer_ns: AtomicU64,
    compute_output_ns: AtomicU64,
    pub fail: DurationStat,
    /// Inferences performed, counting each batch element.
    inference_count: AtomicU64,
    /// Backend executions.
    execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference; 0 before the first.
    last_inference_ms: AtomicU64,
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn add_nanos(total: &AtomicU64, elapsed: Duration) {
    // Phases a path does not have (a remote model's input, say) are zero: no update at all.
    if !elapsed.is_zero() {
        total.fetch_add(nanos(elapsed), Ordering::Relaxed);
    }
}

/// A consistent-enough copy of [`ModelStats`] for reporting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub success: (u64, u64),
    pub fail: (u64, u64),
    pub queue: (u64, u64),
    pub compute_input: (u64, u64),
    pub compute_infer: (u64, u64),
    pub compute_output: (u64, u64),
    pub inference_count: u64,
    pub execution_count: u64,
    pub last_inference_ms: u64,
}

impl ModelStats {
    /// One successful request: its phases, their sum as `success`, and one backend execution of
    /// `batch` inferences.
    /// One request that succeeded with `batch` rows; `executions` is 1 for the request that
    /// carries its batch's backend call and 0 for the others batched with it.
    pub fn record_success(&self, phases: PhaseTimes, batch: u64, executions: u64) {
        let PhaseTimes { queue, compute_input, compute_infer, compute_output } = phases;
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        add_nanos(&self.success_ns, queue + compute_input + compute_infer + compute_output);
        add_nanos(&self.queue_ns, queue);
        add_nanos(&self.compute_input_ns, compute_input);
        add_nanos(&self.compute_infer_ns, compute_infer);
        add_nanos(&self.compute_output_ns, compute_output);
        self.inference_count.fetch_add(batch, Ordering::Relaxed);
        self.execution_count.fetch_add(executions, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        self.last_inference_ms.store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let with_count = |ns: &AtomicU64| (succeeded, ns.load(Ordering::Relaxed));
        StatsSnapshot {
            success: with_count(&self.success_ns),
            fail: self.fail.snapshot(),
            queue: with_count(&self.queue_ns),
            compute_input: with_count(&self.compute_input_ns),
            compute_infer: with_count(&self.compute_infer_ns),
            compute_output: with_count(&self.compute_output_ns),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_counts_once_in_every_phase_and_fails_apart() {
        let stats = ModelStats::default();
        let ms = Duration::from_millis;
        stats.record_success(
            PhaseTimes { queue: ms(1), compute_input: ms(2), compute_infer: ms(3), compute_output: ms(4) },
            4,
            1,
        );
        stats.record_success(PhaseTimes { compute_infer: ms(5), ..Default::default() }, 1, 1);
        stats.fail.record(ms(7));
        let s = stats.snapshot();
        let ns = |ms: u64| ms * 1_000_000;
        assert_eq!(s.success, (2, ns(15)));
        assert_eq!(
            (s.queue, s.compute_input, s.compute_infer, s.compute_output),
            ((2, ns(1)), (2, ns(2)), (2, ns(8)), (2, ns(4)))
        );
        assert_eq!(s.fail, (1, ns(7)));
        assert_eq!((s.inference_count, s.execution_count), (5, 2));
        assert!(s.last_inference_ms > 0);
    }
}
