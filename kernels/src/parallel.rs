//! How a matmul spreads its column chunks over threads. The kernels do not own a thread pool:
//! [`ThreadPool`](crate::ThreadPool) is the one for decode steps (the LLM engine uses the global one), and
//! [`ScopedThreads`] spawns scoped threads per call for everyone else.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs independent tasks, possibly at the same time on several threads.
pub trait Parallel: Sync {
    /// Threads the tasks may run on, the caller's included.
    fn threads(&self) -> usize;

    /// The least work per thread, in block products (activation rows x output columns x blocks
    /// per row): a product is split over `work / min_work_per_thread` threads at most, so below
    /// twice this it runs on the calling thread alone.
    fn min_work_per_thread(&self) -> usize;

    /// Calls `task(i)` once for every `i` in `0..tasks` and returns when all have returned.
    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync));
}

/// Everything on the calling thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Parallel for Serial {
    fn threads(&self) -> usize {
        1
    }

    fn min_work_per_thread(&self) -> usize {
        usize::MAX
    }

    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..tasks).for_each(task);
    }
}

/// Threads spawned with `std::thread::scope` for each call, taking tasks from a shared counter.
/// Spawning costs tens of microseconds, so only large products are split (see
/// [`ScopedThreads::MIN_WORK_PER_THREAD`]).
#[derive(Debug, Clone, Copy)]
pub struct ScopedThreads {
    threads: usize,
}

impl ScopedThreads {
    /// Measured with the `q8_0_vs_candle` example on a 2-core Zen 3: spawning and joining
    /// costs ~75 us and the kernel ~0.6 ns per block product, so splitting in two gains from
    /// ~2 * 75 us / 0.6 ns = 250k block products (an 8-row 1536 x 576 product, 221k, breaks
    /// even), 125k per thread.
    pub const MIN_WORK_PER_THREAD: usize = 125_000;

    /// As many threads as the machine offers (asked once: the answer reads cgroup files).
    pub fn available() -> ScopedThreads {
        static AVAILABLE: OnceLock<usize> = OnceLock::new();
        ScopedThreads::new(*AVAILABLE.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())))
    }

    pub fn new(threads: usize) -> ScopedThreads {
        ScopedThreads { threads: threads.max(1) }
    }
}

impl Parallel for ScopedThreads {
    fn threads(&self) -> usize {
        self.threads
    }

    fn min_work_per_thread(&self) -> usize {
        ScopedThreads::MIN_WORK_PER_THREAD
    }

    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        let threads = self.threads.min(tasks);
        if threads <= 1 {
            return (0..tasks).for_each(task);
        }
        let next = AtomicUsize::new(0);
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                task(i);
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
    }
}
