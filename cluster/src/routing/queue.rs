//! The router's own queue (Dynamo's `--router-queue-threshold`): while every worker of a model
//! has more of this router's prompt tokens still to prefill than the threshold's fraction of what
//! one engine step prefills (`max_batched_tokens`, from its load reports), a new language-model
//! request waits here instead of joining a worker's queue, where it could no longer go to the
//! worker that frees up first. Waiting requests leave in `--router-queue-policy` order: `fcfs`
//! (arrival, the more urgent priority first), `wspt` (Smith's rule: the fewest prompt tokens per
//! unit of priority first, which minimises mean time to first token) or `lcfs` (newest first).
//! The queue holds at most `--router-queue-max-requests`; beyond it requests are refused (503).

use std::sync::Arc;
use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tritium_backend_api::llm::Priority;


/// `--router-queue-policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueuePolicy {
    /// First come, first served, the more urgent priority first.
    Fcfs,
    /// Weighted shortest processing time: fewest prompt tokens (per priority weight) first.
    Wspt,
    /// Last come, first served.
    Lcfs,
}

/// The queue's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueOptions {
    /// Fraction of `max_batched_tokens` of pending prefill over which a worker counts as full.
    pub threshold: f64,
    pub policy: QueuePolicy,
    pub max_requests: usize,
}

/// Queued requests are checked again this often even without news: load reports change what
/// counts as full without any request of this router finishing.
const RECHECK: Duration = Duration::from_millis(250);

#[derive(Debug)]
struct Waiter {
    seq: u64,
    model: String,
    prompt_tokens: usize,
    priority: Priority,
}

#[derive(Debug, Default)]
struct State {
    waiting: Vec<Waiter>,
    next: u64,
    /// Requests that waited here, since start.
    queued_total: u64,
    /// Requests let go and not yet counted on a worker, by model: until they are, the workers'
    /// load does not show them, so nobody else of the model is let go.
    in_transit: std::collections::HashMap<String, usize>,
}

/// See the module docs.
#[derive(Debug)]
pub struct RouterQueue {
    options: QueueOptions,
    state: Mutex<State>,
    /// Notified when a worker's prefill load goes down (shared with the load tracking) and when
    /// a request leaves the queue.
    changed: Arc<Notify>,
}

impl RouterQueue {
    pub fn new(options: QueueOptions, changed: Arc<Notify>) -> RouterQueue {
        RouterQueue { options, state: Mutex::new(State::default()), changed }
    }

    pub fn options(&self) -> &QueueOptions {
        &self.options
    }

    /// Wakes waiting requests to look again (a worker's prefill load went down).
    pub fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// (requests waiting now, requests that waited since start).
    pub fn counts(&self) -> (usize, u64) {
        let state = self.state.lock();
        (state.waiting.len(), state.queued_total)
    }

    /// Waits until `full(model)` is false and this request is the first of its model's waiting
    /// ones by the policy; at once when nothing waits and the model's workers have room. `Err`
    /// when the queue is full.
    pub async fn admit(
        &self,
        model: &str,
        prompt_tokens: usize,
        priority: Priority,
        full: impl Fn(&str) -> bool,
    ) -> Result<Admitted<'_>, String> {
        let seq = {
            let mut state = self.state.lock();
            let nobody_waits = !state.waiting.iter().any(|w| w.model == model);
            if nobody_waits && !state.in_transit.contains_key(model) && !full(model) {
                return Ok(self.admitted(&mut state, model));
            }
            if state.waiting.len() >= self.options.max_requests {
                return Err(format!(
                    "the router's queue is full ({} requests wait for a worker with room)",
                    self.options.max_requests
                ));
            }
            let seq = state.next;
            state.next += 1;
            state.queued_total += 1;
            state.waiting.push(Waiter { seq, model: model.to_string(), prompt_tokens, priority });
            seq
        };
        // Leaves the queue however the wait ends, the client going away included.
        let _leave = Leave { queue: self, seq };
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if !state.in_transit.contains_key(model) && is_next(&state, self.options.policy, seq, model) && !full(model) {
                    return Ok(self.admitted(&mut state, model));
                }
            }
            let _ = tokio::time::timeout(RECHECK, notified).await;
        }
    }

    fn admitted(&self, state: &mut State, model: &str) -> Admitted<'_> {
        *state.in_transit.entry(model.to_string()).or_default() += 1;
        Admitted { queue: self, model: model.to_string() }
    }
}

/// A request let go by the queue; drop it once the request is counted on its worker (or will not
/// be), and the next may go.
#[derive(Debug)]
pub struct Admitted<'q> {
    queue: &'q RouterQueue,
    model: String,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut state = self.queue.state.lock();
        if let Some(count) = state.in_transit.get_mut(&self.model) {
            *count -= 1;
            if *count == 0 {
                state.in_transit.remove(&self.model);
            }
        }
        drop(state);
        self.queue.wake();
    }
}

/// Whether `seq` comes first among `model`'s waiting requests under `policy`.
fn is_next(state: &State, policy: QueuePolicy, seq: u64, model: &str) -> bool {
    let of_model = state.waiting.iter().filter(|w| w.model == model);
    let first = match policy {
        QueuePolicy::Fcfs => of_model.min_by(|a, b| a.priority.cmp(&b.priority).then(a.seq.cmp(&b.seq))),
        QueuePolicy::Lcfs => of_model.max_by_key(|w| w.seq),
        QueuePolicy::Wspt => {
            of_model.min_by(|a, b| wspt_key(a).total_cmp(&wspt_key(b)).then(a.priority.cmp(&b.priority)).then(a.seq.cmp(&b.seq)))
        }
    };
    first.is_some_and(|w| w.seq == seq)
}

/// Smith's rule: processing time over weight. The weight grows with urgency: tier first, then a
/// lower level.
fn wspt_key(waiter: &Waiter) -> f64 {
    let level_weight = 2f64.powf(-(waiter.priority.level.clamp(-30, 30) as f64) / 4.0);
    let tier_weight = 16f64.powi(waiter.priority.tier.min(8) as i32);
    waiter.prompt_tokens.max(1) as f64 / (level_weight * tier_weight)
}

struct Leave<'q> {
    queue: &'q RouterQueue,
    seq: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.queue.state.lock().waiting.retain(|w| w.seq != self.seq);
        // The next one may go now.
        self.queue.wake();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    async fn order(policy: QueuePolicy, requests: &[(usize, Priority)]) -> Vec<usize> {
        let options = QueueOptions { threshold: 0.0, policy, max_requests: 16 };
        let queue = Arc::new(RouterQueue::new(options, Arc::default()));
        let full = Arc::new(AtomicBool::new(true));
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (index, &(tokens, priority)) in requests.iter().enumerate() {
            let (task_queue, full, sender) = (Arc::clone(&queue), Arc::clone(&full), sender.clone());
            tasks.push(tokio::spawn(async move {
                // One request gets in per release: seeing room takes it.
                task_queue.admit("m", tokens, priority, |_| full.swap(true, Ordering::SeqCst)).await.expect("admitted");
                sender.send(index).expect("send");
            }));
            while queue.counts().0 < index + 1 {
                tokio::task::yield_now().await;
            }
        }
        let mut order = Vec::new();
        for _ in requests {
            full.store(false, Ordering::SeqCst);
            queue.wake();
            order.push(receiver.recv().await.expect("one admitted"));
        }
        order
    }

    #[tokio::test]
    async fn each_policy_lets_requests_go_in_its_order() {
        let normal = Priority::default();
        let urgent = Priority { tier: 0, level: -5 };
        let requests = [(300, normal), (20, normal), (100, urgent), (50, normal)];
        assert_eq!(order(QueuePolicy::Fcfs, &requests).await, vec![2, 0, 1, 3]);
        assert_eq!(order(QueuePolicy::Lcfs, &requests).await, vec![3, 2, 1, 0]);
        // 100 urgent tokens weigh 100 / 2^(5/4) = 42: after 20, before 50.
        assert_eq!(order(QueuePolicy::Wspt, &requests).await, vec![1, 2, 3, 0]);
    }

    #[tokio::test]
    async fn with_room_and_nobody_waiting_a_request_goes_at_once_and_a_full_queue_refuses() {
        let options = QueueOptions { threshold: 0.0, policy: QueuePolicy::Fcfs, max_requests: 0 };
        let queue = RouterQueue::new(options, Arc::default());
        assert!(queue.admit("m", 10, Priority::default(), |_| false).await.is_ok());
        let error = queue.admit("m", 10, Priority::default(), |_| true).await.expect_err("full");
        assert!(error.contains("queue is full"), "{error}");
        assert_eq!(queue.counts(), (0, 0));
    }
}
