//! Recent request latencies of a model version, for the quantiles of Triton's latency summaries
//! (`--metrics-config summary_latencies=true`): each successful request's end-to-end, queue and
//! compute phases, kept for [`MAX_AGE`] and at most [`MAX_SAMPLES`] requests. Off by default:
//! until [`enable`] is called a request costs one relaxed atomic load here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::PhaseTimes;

/// How long a request's latencies count toward the quantiles (Triton's summaries age out too).
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Requests kept per model version at most (about 56 bytes each).
pub const MAX_SAMPLES: usize = 16_384;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns latency recording on for every model (the server does so at start when asked).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The phases, in the order [`LatencyWindow::quantiles`] reports them.
pub const PHASES: [&str; 5] = ["request", "queue", "compute_input", "compute_infer", "compute_output"];

#[derive(Debug, Default)]
pub struct LatencyWindow {
    samples: Mutex<VecDeque<(Instant, [u64; 5])>>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl LatencyWindow {
    /// Records one successful request's phases (when recording is on).
    pub fn record(&self, phases: &PhaseTimes) {
        if !enabled() {
            return;
        }
        let total = phases.queue + phases.compute_input + phases.compute_infer + phases.compute_output;
        let sample = [total, phases.queue, phases.compute_input, phases.compute_infer, phases.compute_output].map(micros);
        let now = Instant::now();
        let mut samples = self.samples.lock();
        while samples.len() >= MAX_SAMPLES || samples.front().is_some_and(|(at, _)| now.duration_since(*at) > MAX_AGE) {
            samples.pop_front();
        }
        samples.push_back((now, sample));
    }

    /// Per phase (in [`PHASES`] order), the microseconds at each of `quantiles` over the recent
    /// requests (nearest rank); `None` when there are none.
    pub fn quantiles(&self, quantiles: &[f64]) -> Option<[Vec<f64>; 5]> {
        let now = Instant::now();
        let recent: Vec<[u64; 5]> = {
            let samples = self.samples.lock();
            samples.iter().filter(|(at, _)| now.duration_since(*at) <= MAX_AGE).map(|(_, s)| *s).collect()
        };
        if recent.is_empty() {
            return None;
        }
        Some(std::array::from_fn(|phase| {
            let mut values: Vec<u64> = recent.iter().map(|s| s[phase]).collect();
            values.sort_unstable();
            quantiles
                .iter()
                .map(|q| {
                    let rank = (q.clamp(0.0, 1.0) * values.len() as f64).ceil() as usize;
                    values[rank.clamp(1, values.len()) - 1] as f64
                })
                .collect()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        enable();
        let window = LatencyWindow::default();
        assert!(window.quantiles(&[0.5]).is_none());
        for ms in 1..=100u64 {
            let phases = PhaseTimes { queue: Duration::from_millis(ms), ..PhaseTimes::default() };
            window.record(&phases);
        }
        let q = window.quantiles(&[0.5, 0.9, 0.99, 1.0]).expect("recorded");
        assert_eq!(q[0], vec![50_000.0, 90_000.0, 99_000.0, 100_000.0]);
        assert_eq!(q[1], q[0], "queue is the whole request here");
        assert_eq!(q[2], vec![0.0; 4]);
    }

    #[test]
    fn the_window_is_bounded() {
        enable();
        let window = LatencyWindow::default();
        for _ in 0..MAX_SAMPLES + 10 {
            window.record(&PhaseTimes::default());
        }
        assert_eq!(window.samples.lock().len(), MAX_SAMPLES);
    }
}
