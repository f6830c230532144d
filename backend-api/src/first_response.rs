//! How long a decoupled model's requests wait for their first response, for the first-response
//! histogram (`--metrics-config histogram_latencies=true`; Triton 2.52 and later call it
//! `nv_inference_first_response_histogram_ms`). Off by default: until [`enable`] is called a
//! request costs one relaxed atomic load here.
//!
//! Times are whole milliseconds, truncated, from the request's arrival (queue time included);
//! a bucket counts the times at or below its bound. A first response that is an error counts; a
//! request that ends with no response does not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The buckets' upper bounds in milliseconds (Triton's defaults).
pub const BUCKETS_MS: [u64; 4] = [100, 500, 2000, 5000];

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns the histogram on for every model (the server does so at start when asked).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

#[derive(Debug, Default)]
pub struct FirstResponseHistogram {
    /// Times at or below each bound and above the one before (not cumulative).
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

/// A histogram's state at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_ms: u64,
    /// Cumulative counts, one per bound of [`BUCKETS_MS`].
    pub cumulative: [u64; BUCKETS_MS.len()],
}

impl FirstResponseHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        if let Some(bucket) = BUCKETS_MS.iter().position(|&bound| ms <= bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0; BUCKETS_MS.len()];
        let mut running = 0;
        for (slot, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running += bucket.load(Ordering::Relaxed);
            *slot = running;
        }
        HistogramSnapshot { count: self.count.load(Ordering::Relaxed), sum_ms: self.sum_ms.load(Ordering::Relaxed), cumulative }
    }
}

/// Started when a decoupled request arrives; read once, at its first response.
pub struct FirstResponseClock {
    histogram: Arc<dyn AsRef<FirstResponseHistogram> + Send + Sync>,
    arrived: Instant,
}

impl FirstResponseClock {
    /// A clock when the histogram is on.
    pub fn start<H>(owner: &Arc<H>, arrived: Instant) -> Option<Self>
    where
        H: AsRef<FirstResponseHistogram> + Send + Sync + 'static,
    {
        enabled().then(|| FirstResponseClock { histogram: Arc::clone(owner) as _, arrived })
    }

    pub fn stop(self) {
        self.histogram.as_ref().as_ref().observe(self.arrived.elapsed());
    }
}

impl std::fmt::Debug for FirstResponseClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstResponseClock").field("arrived", &self.arrived).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_truncated_milliseconds_and_bounds_are_inclusive() {
        let histogram = FirstResponseHistogram::default();
        for micros in [0, 99_999, 100_999, 101_000, 500_000, 2_000_700, 7_000_000] {
            histogram.observe(Duration::from_micros(micros));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 7);
        assert_eq!(snapshot.sum_ms, 99 + 100 + 101 + 500 + 2000 + 7000);
        assert_eq!(snapshot.cumulative, [3, 5, 6, 6]);
    }
}
