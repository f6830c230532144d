//! Per-model-version statistics with Triton's meaning: cumulative counts and nanoseconds for
//! success, fail, queue, compute_input, compute_infer and compute_output per request, and per
//! executed batch size (`batch_stats`) for the backend's executions.

pub mod latency;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use latency::LatencyWindow;
use tritium_backend_api::first_response::FirstResponseHistogram;

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

/// Why a request failed, as Triton's `nv_inference_request_failure{reason}` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Refused by the scheduler: its queue was full, or the request timed out in it.
    Rejected,
    Canceled,
    /// The backend (or an ensemble step) failed.
    Backend,
    Other,
}

impl FailureReason {
    pub const ALL: [FailureReason; 4] =
        [FailureReason::Rejected, FailureReason::Canceled, FailureReason::Backend, FailureReason::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

/// Counts a request as pending (queued or running) while it lives.
#[derive(Debug)]
pub struct Pending<'a>(&'a AtomicU64);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
#[derive(Debug)]
pub struct ModelStats {
    succeeded: AtomicU64,
    success_ns: AtomicU64,
    queue_ns: AtomicU64,
    compute_input_ns: AtomicU64,
    compute_infer_ns: AtomicU64,
    compute_output_ns: AtomicU64,
    fail: DurationStat,
    /// Failures by [`FailureReason`], in its `ALL` order.
    fail_reasons: [AtomicU64; 4],
    /// Requests queued or running now.
    pending: AtomicU64,
    /// Recent successful requests' phases, for latency summaries (when turned on).
    pub latencies: LatencyWindow,
    /// Time to the first response of a decoupled model's requests (when turned on).
    pub first_response: FirstResponseHistogram,
    /// Inferences performed, counting each batch element.
    inference_count: AtomicU64,
    /// Backend executions.
    execution_count: AtomicU64,
    /// Milliseconds since the epoch of the last inference; 0 before the first.
    last_inference_ms: AtomicU64,
    /// Executions by batch size (index 0 holds sizes beyond the model's `max_batch_size`, which
    /// a backend never sees).
    batches: Box<[BatchSlot]>,
    /// Response-cache lookups that hit (the lookup's time) and misses (lookup and insertion).
    cache_hit: DurationStat,
    cache_miss: DurationStat,
}

/// The executions of one batch size: their count and compute phases.
#[derive(Debug, Default)]
struct BatchSlot {
    count: AtomicU64,
    compute_input_ns: AtomicU64,
    compute_infer_ns: AtomicU64,
    compute_output_ns: AtomicU64,
}

/// One line of `batch_stats`: a batch size, how often the backend executed it, and the compute
/// phases of those executions as (count, ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStat {
    pub batch_size: u64,
    pub compute_input: (u64, u64),
    pub compute_infer: (u64, u64),
    pub compute_output: (u64, u64),
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The batch sizes executed at least once, smallest first.
    pub batch_stats: Vec<BatchStat>,
    pub cache_hit: (u64, u64),
    pub cache_miss: (u64, u64),
}

impl Default for ModelStats {
    fn default() -> Self {
        ModelStats::new(1)
    }
}

impl ModelStats {
    /// Statistics of a model whose backend executes batches of up to `max_batch_size` (at least 1).
    pub fn new(max_batch_size: u64) -> ModelStats {
        let sizes = usize::try_from(max_batch_size.clamp(1, 1 << 16)).unwrap_or(1);
        ModelStats {
            succeeded: AtomicU64::default(),
            success_ns: AtomicU64::default(),
            queue_ns: AtomicU64::default(),
            compute_input_ns: AtomicU64::default(),
            compute_infer_ns: AtomicU64::default(),
            compute_output_ns: AtomicU64::default(),
            fail: DurationStat::default(),
            fail_reasons: Default::default(),
            pending: AtomicU64::default(),
            latencies: LatencyWindow::default(),
            first_response: FirstResponseHistogram::default(),
            inference_count: AtomicU64::default(),
            execution_count: AtomicU64::default(),
            last_inference_ms: AtomicU64::default(),
            batches: (0..=sizes).map(|_| BatchSlot::default()).collect(),
            cache_hit: DurationStat::default(),
            cache_miss: DurationStat::default(),
        }
    }

    /// One request that ran as an execution of its own outside this process's schedulers (on a
    /// remote worker, or a language model's generation): `queue` from `arrived` to `started`,
    /// `compute_infer` from there to now, or its failure.
    pub fn record_request(&self, arrived: Instant, started: Instant, outcome: Result<(), FailureReason>) {
        match outcome {
            Ok(()) => {
                let phases = PhaseTimes {
                    queue: started.saturating_duration_since(arrived),
                    compute_infer: started.elapsed(),
                    ..PhaseTimes::default()
                };
                self.record_success(phases, 1);
                self.record_execution(1, phases);
            }
            Err(reason) => self.record_failure(arrived.elapsed(), reason),
        }
    }

    /// One request that failed after `elapsed`.
    pub fn record_failure(&self, elapsed: Duration, reason: FailureReason) {
        self.fail.record(elapsed);
        let index = FailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(3);
        self.fail_reasons[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Failures by reason, in [`FailureReason::ALL`]'s order.
    pub fn failures_by_reason(&self) -> [(FailureReason, u64); 4] {
        FailureReason::ALL.map(|reason| {
            let index = FailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(3);
            (reason, self.fail_reasons[index].load(Ordering::Relaxed))
        })
    }

    /// Counts a request as pending until the guard drops.
    pub fn pending(&self) -> Pending<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        Pending(&self.pending)
    }

    /// Requests queued or running now.
    pub fn pending_count(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// One backend execution of a batch of `batch_size` inferences, with its compute phases
    /// (`queue` is not an execution's).
    pub fn record_execution(&self, batch_size: u64, phases: PhaseTimes) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(batch_size).ok().and_then(|size| self.batches.get(size)).unwrap_or(&self.batches[0]);
        slot.count.fetch_add(1, Ordering::Relaxed);
        add_nanos(&slot.compute_input_ns, phases.compute_input);
        add_nanos(&slot.compute_infer_ns, phases.compute_infer);
        add_nanos(&slot.compute_output_ns, phases.compute_output);
    }

    /// One request that succeeded with `batch` rows (its backend execution, shared with the
    /// requests batched with it, is [`ModelStats::record_execution`]'s).
    pub fn record_success(&self, phases: PhaseTimes, batch: u64) {
        self.latencies.record(&phases);
        let PhaseTimes { queue, compute_input, compute_infer, compute_output } = phases;
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        add_nanos(&self.success_ns, queue + compute_input + compute_infer + compute_output);
        add_nanos(&self.queue_ns, queue);
        add_nanos(&self.compute_input_ns, compute_input);
        add_nanos(&self.compute_infer_ns, compute_infer);
        add_nanos(&self.compute_output_ns, compute_output);
        self.inference_count.fetch_add(batch, Ordering::Relaxed);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        self.last_inference_ms.store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A request answered from the response cache: a success that took `request` in all, of
    /// which `queue` before its lookup and `lookup` in it, with no compute and no execution (as
    /// Triton counts a hit: not in the compute phases, the inference count or the last
    /// inference).
    pub fn record_cache_hit(&self, request: Duration, queue: Duration, lookup: Duration) {
        self.cache_hit.record(lookup);
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        add_nanos(&self.success_ns, request);
        add_nanos(&self.queue_ns, queue);
    }

    /// A request the response cache did not have, whose response was then stored: `elapsed` is
    /// the lookup and the insertion together.
    pub fn record_cache_miss(&self, elapsed: Duration) {
        self.cache_miss.record(elapsed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let cache_hit = self.cache_hit.snapshot();
        let succeeded = self.succeeded.load(Ordering::Relaxed);
        let with_count = |ns: &AtomicU64| (succeeded, ns.load(Ordering::Relaxed));
        // Triton counts the compute phases of the requests that ran: hits have none.
        let computed = |ns: &AtomicU64| (succeeded.saturating_sub(cache_hit.0), ns.load(Ordering::Relaxed));
        StatsSnapshot {
            success: with_count(&self.success_ns),
            fail: self.fail.snapshot(),
            queue: with_count(&self.queue_ns),
            compute_input: computed(&self.compute_input_ns),
            compute_infer: computed(&self.compute_infer_ns),
            compute_output: computed(&self.compute_output_ns),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            batch_stats: self.batch_stats(),
            cache_hit,
            cache_miss: self.cache_miss.snapshot(),
        }
    }

    fn batch_stats(&self) -> Vec<BatchStat> {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.batches
            .iter()
            .enumerate()
            .skip(1)
            .filter_map(|(size, slot)| {
                let count = load(&slot.count);
                (count > 0).then(|| BatchStat {
                    batch_size: size as u64,
                    compute_input: (count, load(&slot.compute_input_ns)),
                    compute_infer: (count, load(&slot.compute_infer_ns)),
                    compute_output: (count, load(&slot.compute_output_ns)),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_counts_once_in_every_phase_and_fails_apart() {
        let stats = ModelStats::new(4);
        let ms = Duration::from_millis;
        let first = PhaseTimes { queue: ms(1), compute_input: ms(2), compute_infer: ms(3), compute_output: ms(4) };
        stats.record_success(first, 4);
        stats.record_execution(4, first);
        let second = PhaseTimes { compute_infer: ms(5), ..Default::default() };
        stats.record_success(second, 1);
        stats.record_success(second, 1);
        stats.record_execution(2, second);
        stats.record_failure(ms(7), FailureReason::Backend);
        let s = stats.snapshot();
        let ns = |ms: u64| ms * 1_000_000;
        assert_eq!(s.success, (3, ns(20)));
        assert_eq!(
            (s.queue, s.compute_input, s.compute_infer, s.compute_output),
            ((3, ns(1)), (3, ns(2)), (3, ns(13)), (3, ns(4)))
        );
        assert_eq!(s.fail, (1, ns(7)));
        assert_eq!((s.inference_count, s.execution_count), (6, 2));
        let batch = |batch_size, count, [input, infer, output]: [u64; 3]| BatchStat {
            batch_size,
            compute_input: (count, ns(input)),
            compute_infer: (count, ns(infer)),
            compute_output: (count, ns(output)),
        };
        assert_eq!(s.batch_stats, [batch(2, 1, [0, 5, 0]), batch(4, 1, [2, 3, 4])]);
        assert!(s.last_inference_ms > 0);
    }

    #[test]
    fn a_cache_hit_is_a_success_without_compute_or_execution() {
        let stats = ModelStats::new(1);
        let ms = Duration::from_millis;
        stats.record_success(PhaseTimes { queue: ms(1), compute_infer: ms(4), ..Default::default() }, 1);
        stats.record_execution(1, PhaseTimes { compute_infer: ms(4), ..Default::default() });
        stats.record_cache_miss(ms(1));
        stats.record_cache_hit(ms(3), ms(2), ms(1));
        let s = stats.snapshot();
        let ns = |ms: u64| ms * 1_000_000;
        assert_eq!((s.success, s.queue), ((2, ns(8)), (2, ns(3))));
        assert_eq!((s.compute_infer, s.compute_input), ((1, ns(4)), (1, 0)));
        assert_eq!((s.cache_hit, s.cache_miss), ((1, ns(1)), (1, ns(1))));
        assert_eq!((s.inference_count, s.execution_count), (1, 1));
    }
}
