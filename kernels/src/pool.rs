//! A persistent pool for products that take tens of microseconds, where spawning threads per
//! call costs as much as the product. Unlike a barrier pool, the caller never waits for a worker
//! that has not started: it works through the tasks itself, then closes the job, and waits only
//! for workers already inside it. A worker that was descheduled (a busy machine, more runnable
//! threads than cores) simply misses the job instead of stalling the caller for a time slice.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::parallel::Parallel;

/// How long an idle worker polls for the next job before it sleeps: longer than the gaps
/// between the products of one decode step, short enough not to hold a core between steps.
const SPIN: Duration = Duration::from_micros(200);

/// `state` packs the job generation (high 32 bits), whether the job is open to new workers
/// (bit 31) and how many workers are inside it (low 31 bits).
const OPEN: u64 = 1 << 31;
const ACTIVE: u64 = OPEN - 1;

/// One call's tasks, on the caller's stack while the call lasts.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
}

impl Job<'_> {
    fn run(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                break;
            }
            (self.task)(i);
        }
    }
}

struct Shared {
    state: AtomicU64,
    /// The open job, type-erased; only dereferenced by a worker counted in `state`.
    job: AtomicPtr<Job<'static>>,
    shutdown: AtomicBool,
    /// A panic from a task run by a worker, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Per worker: whether it sleeps (parked) and needs an unpark.
    sleeping: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
}

/// Worker threads that join a caller's tasks when they can; see the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time: a second caller waits for the first to finish.
    call: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("workers", &self.workers.len()).finish()
    }
}

impl ThreadPool {
    /// A pool of `threads - 1` workers (the caller is the last thread).
    pub fn new(threads: usize) -> ThreadPool {
        let count = threads.saturating_sub(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
            sleeping: (0..count).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
        });
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let worker = Arc::clone(&shared);
            let builder = std::thread::Builder::new().name(format!("tritium-kernels-{index}"));
            let spawned = builder.spawn(move || work(&worker, index));
            match spawned {
                Ok(handle) => workers.push(handle),
                // Fewer workers only leave more tasks to the caller.
                Err(_) => break,
            }
        }
        let _ = shared.threads.set(workers.iter().map(|w| w.thread().clone()).collect());
        ThreadPool { shared, workers, call: Mutex::new(()) }
    }

    /// The process-wide pool, one thread per available core, started on first use.
    pub fn global() -> &'static ThreadPool {
        static GLOBAL: OnceLock<ThreadPool> = OnceLock::new();
        GLOBAL.get_or_init(|| ThreadPool::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
    }
}

impl Parallel for ThreadPool {
    fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Measured on a 2-core Zen 3: handing a job to a polling worker costs ~0.2 us, and
    /// splitting in two pays from ~5k block products: a 2-row 192 x 576 product (7k) takes
    /// 3.6 us split against 5.5 us whole, a 1-row 576 x 576 (10k) 7.7 against 9.7, while a
    /// 1-row 192 x 576 (3.5k) gains nothing.
    fn min_work_per_thread(&self) -> usize {
        2_500
    }

    fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || tasks <= 1 {
            return (0..tasks).for_each(task);
        }
        let _one_at_a_time = self.call.lock();
        let job = Job { task, tasks, next: AtomicUsize::new(0) };
        let shared = &*self.shared;
        // SAFETY (lifetime erasure): workers dereference this pointer only after joining the
        // open job below, and this function returns only after closing the job and seeing every
        // joined worker leave, so `job` (and what `task` borrows) outlives every use.
        let erased = (&job as *const Job<'_>).cast_mut().cast::<Job<'static>>();
        shared.job.store(erased, Ordering::Relaxed);
        let generation = (shared.state.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xFFFF_FFFF;
        shared.state.store(generation << 32 | OPEN, Ordering::SeqCst);
        if let Some(threads) = shared.threads.get() {
            for (sleeping, thread) in shared.sleeping.iter().zip(threads) {
                if sleeping.swap(false, Ordering::SeqCst) {
                    thread.unpark();
                }
            }
        }
        // Even if a task panics here, the job must be closed and left by every worker before
        // this frame (which holds `job`) unwinds.
        let own = catch_unwind(AssertUnwindSafe(|| job.run()));
        // Close the job to latecomers, then wait for those inside (they are running tasks).
        shared.state.fetch_and(!OPEN, Ordering::AcqRel);
        let mut spins = 0u32;
        while shared.state.load(Ordering::Acquire) & ACTIVE != 0 {
            spins += 1;
            if spins < 1 << 12 { std::hint::spin_loop() } else { std::thread::yield_now() }
        }
        shared.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        let theirs = shared.panic.lock().take();
        if let Some(payload) = own.err().or(theirs) {
            resume_unwind(payload);
        }
    }
}

/// A worker: joins each open job it sees, polls for `SPIN` after one, then sleeps.
fn work(shared: &Shared, index: usize) {
    let mut seen = 0u64; // the last generation joined (or missed)
    let mut idle_since = Instant::now();
    let mut polls = 0u32;
    while !shared.shutdown.load(Ordering::Relaxed) {
        let state = shared.state.load(Ordering::SeqCst);
        let generation = state >> 32;
        if generation != seen && state & OPEN != 0 {
            if shared.state.compare_exchange(state, state + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue; // another worker joined or the job closed: look again
            }
            seen = generation;
            let job = shared.job.load(Ordering::Relaxed);
            // SAFETY: joining succeeded while the job was open, so the caller has not returned
            // and will not before this worker leaves (the `fetch_sub` below); the pointer was
            // stored before the state that made the job open (SeqCst store, AcqRel exchange).
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { &*job }.run()));
            if let Err(payload) = outcome {
                *shared.panic.lock() = Some(payload);
            }
            shared.state.fetch_sub(1, Ordering::Release);
            idle_since = Instant::now();
            continue;
        }
        seen = generation;
        polls += 1;
        if !polls.is_multiple_of(64) || idle_since.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        // Sleep; the caller unparks sleepers after opening a job. Checking the state again after
        // announcing the sleep closes the race with a job opened just before.
        shared.sleeping[index].store(true, Ordering::SeqCst);
        if shared.state.load(Ordering::SeqCst) >> 32 == seen && !shared.shutdown.load(Ordering::SeqCst) {
            std::thread::park();
        }
        shared.sleeping[index].store(false, Ordering::SeqCst);
        idle_since = Instant::now();
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        for worker in self.workers.drain(..) {
            worker.thread().unpark();
            let _ = worker.join();
        }
    }
}
