//! Where preprocessing runs, and what it tells about itself: Dynamo's `--dyn-preprocess-workers N`
//! moves every chat-template rendering and tokenization onto N threads of their own, off the
//! runtime that serves connections (0, the default, keeps short texts on the runtime thread and
//! long ones on tokio's blocking pool); `--dyn-debug-perf` logs each step's queueing and running
//! time, its size, the thread it ran on and how many steps were in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::BridgeError;

type Job = Box<dyn FnOnce() + Send>;

/// How preprocessing runs (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreprocessExecution {
    /// Threads of the preprocessing pool; 0: none, the runtime and tokio's blocking pool.
    pub workers: usize,
    /// Log each step's timing (`--dyn-debug-perf`).
    pub debug_perf: bool,
    /// What encodes prompts (`--tokenizer`).
    pub encoder: PromptEncoder,
    /// With `fastokens`: a tokenizer it cannot load falls back to `tokenizers` (else the model's
    /// requests fail).
    pub tokenizer_fallback: bool,
    /// Every model's tokenizer prefix cache's bounds.
    pub prefix_cache: super::PrefixCacheLimits,
    /// Words each model's byte-level BPE encoder keeps (`--tokenizer-word-cache-entries`).
    pub word_cache_entries: usize,
}

impl Default for PreprocessExecution {
    fn default() -> Self {
        PreprocessExecution {
            workers: 0,
            debug_perf: false,
            encoder: PromptEncoder::Default,
            tokenizer_fallback: false,
            prefix_cache: super::PrefixCacheLimits::default(),
            word_cache_entries: super::DEFAULT_WORD_CACHE_ENTRIES,
        }
    }
}

/// What encodes prompts (`--tokenizer`); `tokenizers` decodes in every case.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromptEncoder {
    /// Tritium's byte-level BPE encoder where the tokenizer has GPT-2's shape (see
    /// [`super::ByteLevelBpe`]), else Hugging Face's `tokenizers`.
    #[default]
    Default,
    /// `fastokens`, Dynamo's `--tokenizer fastokens`.
    Fastokens,
    /// `tokenizers` alone (`--tokenizer tokenizers`).
    Tokenizers,
}

/// The most threads `--dyn-preprocess-workers` may ask for.
pub const MAX_PREPROCESS_WORKERS: usize = 256;

/// The pool and the perf log, shared by every model's preprocessor.
pub struct PreprocessWorkers {
    execution: PreprocessExecution,
    queue: Option<Mutex<mpsc::Sender<Job>>>,
    debug_perf: bool,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PreprocessWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreprocessWorkers").field("pool", &self.queue.is_some()).field("debug_perf", &self.debug_perf).finish()
    }
}

impl PreprocessWorkers {
    /// Starts `execution.workers` threads (named `tritium-preprocess-N`); they end when the last
    /// handle is dropped.
    pub fn start(execution: PreprocessExecution) -> Result<Arc<PreprocessWorkers>, String> {
        if execution.workers > MAX_PREPROCESS_WORKERS {
            return Err(format!("--dyn-preprocess-workers must be at most {MAX_PREPROCESS_WORKERS}, got {}", execution.workers));
        }
        let queue = match execution.workers {
            0 => None,
            n => {
                let (sender, receiver) = mpsc::channel::<Job>();
                let receiver = Arc::new(Mutex::new(receiver));
                for index in 0..n {
                    let receiver = Arc::clone(&receiver);
                    std::thread::Builder::new()
                        .name(format!("tritium-preprocess-{index}"))
                        .spawn(move || {
                            loop {
                                // Its own statement: the guard drops before the job runs.
                                let job = receiver.lock().recv();
                                match job {
                                    Ok(job) => job(),
                                    Err(_) => return,
                                }
                            }
                        })
                        .map_err(|e| format!("cannot start the preprocessing threads: {e}"))?;
                }
                Some(Mutex::new(sender))
            }
        };
        Ok(Arc::new(PreprocessWorkers { execution, queue, debug_perf: execution.debug_perf, in_flight: Arc::default() }))
    }

    /// How they were started.
    pub fn execution(&self) -> &PreprocessExecution {
        &self.execution
    }

    /// Whether steps run on the pool.
    pub fn pooled(&self) -> bool {
        self.queue.is_some()
    }

    /// Runs `step` on the pool and waits for it; `None` when there is no pool (the caller runs it).
    pub async fn run<T: Send + 'static>(
        &self,
        stage: &'static str,
        bytes: usize,
        step: impl FnOnce() -> T + Send + 'static,
    ) -> Option<Result<T, BridgeError>> {
        let queue = self.queue.as_ref()?;
        let (done, result) = tokio::sync::oneshot::channel();
        let queued = Instant::now();
        let (debug_perf, in_flight) = (self.debug_perf, Arc::clone(&self.in_flight));
        let job: Job = Box::new(move || {
            let waited = queued.elapsed();
            let started = Instant::now();
            let value = step();
            if debug_perf {
                log(stage, bytes, waited, started.elapsed(), in_flight.load(Ordering::Relaxed), true);
            }
            let _ = done.send(value);
        });
        if queue.lock().send(job).is_err() {
            return Some(Err(BridgeError::Internal("the preprocessing threads are gone".into())));
        }
        Some(result.await.map_err(|_| BridgeError::Internal(format!("the preprocessing thread running {stage} failed"))))
    }

    /// Times `step` where it is called (no pool, or a step the pool is not used for).
    pub fn timed<T>(&self, stage: &'static str, bytes: usize, step: impl FnOnce() -> T) -> T {
        if !self.debug_perf {
            return step();
        }
        let started = Instant::now();
        let value = step();
        log(stage, bytes, std::time::Duration::ZERO, started.elapsed(), self.in_flight.load(Ordering::Relaxed), false);
        value
    }

    /// Counts a step in flight until the guard is dropped (reported by the perf log).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// One line of the perf log, written on the thread that ran the step.
fn log(stage: &'static str, bytes: usize, queued: std::time::Duration, ran: std::time::Duration, in_flight: usize, pooled: bool) {
    let thread = std::thread::current();
    tracing::info!(
        target: "tritium::preprocess::perf",
        stage,
        bytes,
        queued_us = queued.as_micros() as u64,
        run_us = ran.as_micros() as u64,
        in_flight,
        pooled,
        thread = thread.name().unwrap_or("unnamed"),
        "preprocess timing"
    );
}

/// See [`PreprocessWorkers::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<PreprocessWorkers>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_run_on_the_named_threads_of_the_pool() {
        let workers =
            PreprocessWorkers::start(PreprocessExecution { workers: 2, debug_perf: true, ..Default::default() }).expect("pool");
        let name =
            workers.run("prompt", 5, || std::thread::current().name().map(str::to_string)).await.expect("pooled").expect("ran");
        assert!(name.is_some_and(|n| n.starts_with("tritium-preprocess-")));
        let none = PreprocessWorkers::start(PreprocessExecution::default()).expect("no pool");
        assert!(none.run("prompt", 5, || ()).await.is_none(), "without a pool the caller runs the step");
        assert!(PreprocessWorkers::start(PreprocessExecution { workers: 100_000, ..Default::default() }).is_err());
    }
}
