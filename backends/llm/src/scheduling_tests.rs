//! Priority scheduling on the real engine over the mock model: the queue's order, preemption for
//! an urgent arrival, and who gives way when the block pool runs dry, each against FCFS.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;

use crate::engine_state::SchedulingPolicy;
use crate::mock::{MockEngine, MockOptions};
use tritium_backend_api::llm::{EngineStats, GenerateEvent, GenerateRequest, LanguageModel, Priority, StopOptions, TokenStream};

fn engine(policy: SchedulingPolicy, options: MockOptions) -> Arc<MockEngine> {
    MockEngine::new("m", MockOptions { prefill_us_per_token: 0, decode_ms_per_step: 1, scheduling_policy: policy, ..options })
}

fn request(max_tokens: u32, tier: u32, level: i32) -> GenerateRequest {
    GenerateRequest {
        prompt: (0..16).map(|i| 40 + i).collect(),
        stop: StopOptions { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() },
        priority: Priority { tier, level },
        ..Default::default()
    }
}

/// The tokens of a stream, and how long it waited for its first admission.
async fn collect(mut stream: TokenStream) -> (Vec<u32>, Duration) {
    let mut tokens = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            GenerateEvent::Token(token) => tokens.push(token.id),
            GenerateEvent::PromptLogprobs(_) => {}
            GenerateEvent::Finished { queued_for, .. } => return (tokens, queued_for),
        }
    }
    panic!("the stream ended without Finished");
}

async fn wait_for(engine: &MockEngine, what: &str, done: impl Fn(&EngineStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&engine.stats()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", engine.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The order three queued requests are admitted in, one sequence at a time, behind a running one.
async fn admission_order(policy: SchedulingPolicy) -> Vec<&'static str> {
    let engine = engine(policy, MockOptions { max_sequences: 1, ..MockOptions::default() });
    let running = engine.generate(request(5000, 0, -100)).unwrap();
    wait_for(&engine, "the first request runs", |s| s.running == 1).await;
    let queued: Vec<_> = [("b", 0, 5), ("c", 0, 0), ("d", 0, -3), ("e", 1, 50)]
        .into_iter()
        .map(|(name, tier, level)| (name, engine.generate(request(3, tier, level)).unwrap()))
        .collect();
    wait_for(&engine, "four requests wait", |s| s.waiting == 4).await;
    // Under priority, tier 1 goes ahead of the running tier-0 sequence.
    let preempted = if policy == SchedulingPolicy::Priority { 1 } else { 0 };
    if preempted == 1 {
        wait_for(&engine, "e preempts the running sequence", |s| s.sequences_preempted == 1).await;
    }
    drop(running);
    let mut waited = Vec::new();
    for (name, stream) in queued {
        waited.push((collect(stream).await.1, name));
    }
    assert_eq!(engine.stats().sequences_preempted, preempted);
    waited.sort();
    waited.into_iter().map(|(_, name)| name).collect()
}

#[tokio::test]
async fn the_queue_is_served_by_tier_then_priority_and_fcfs_ignores_both() {
    assert_eq!(admission_order(SchedulingPolicy::Priority).await, ["e", "d", "c", "b"]);
    assert_eq!(admission_order(SchedulingPolicy::Fcfs).await, ["b", "c", "d", "e"]);
}

#[tokio::test]
async fn an_urgent_arrival_preempts_a_less_urgent_sequence_which_resumes_unchanged() {
    let alone = engine(SchedulingPolicy::Fcfs, MockOptions::default());
    let (expected, _) = collect(alone.generate(request(300, 0, 5)).unwrap()).await;

    let engine = engine(SchedulingPolicy::Priority, MockOptions { max_sequences: 1, ..MockOptions::default() });
    let background = engine.generate(request(300, 0, 5)).unwrap();
    wait_for(&engine, "the background sequence generates", |s| s.tokens_generated >= 10).await;
    let (urgent, _) = collect(engine.generate(request(3, 0, -1)).unwrap()).await;
    assert_eq!(urgent.len(), 3);
    // With one place in the batch, the urgent request ran by taking the background one's.
    assert_eq!(engine.stats().sequences_preempted, 1);
    let (resumed, _) = collect(background).await;
    assert_eq!(resumed, expected, "a preempted sequence goes on where it was");

    // An equally urgent arrival waits its turn.
    let background = engine.generate(request(300, 0, 5)).unwrap();
    wait_for(&engine, "the background sequence generates", |s| s.running == 1).await;
    let same = engine.generate(request(3, 0, 5)).unwrap();
    let (finished, _) = collect(background).await;
    assert_eq!(finished, expected);
    collect(same).await;
    assert_eq!(engine.stats().sequences_preempted, 1, "no preemption among equals");
}

/// Which of two sequences growing past the pool finishes first: `a`, admitted first and less
/// urgent, or `b`.
async fn first_to_finish_when_the_pool_runs_dry(policy: SchedulingPolicy) -> (&'static str, Vec<u32>) {
    // 10 blocks of 16: each sequence needs 9 to finish.
    let engine = engine(policy, MockOptions { kv_blocks: 10, block_size: 16, ..MockOptions::default() });
    let a = engine.generate(request(120, 0, 5)).unwrap();
    wait_for(&engine, "a runs", |s| s.running == 1).await;
    let b = engine.generate(request(120, 0, -5)).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let task = |name: &'static str, stream| {
        let order = Arc::clone(&order);
        tokio::spawn(async move {
            let (tokens, _) = collect(stream).await;
            order.lock().push(name);
            tokens
        })
    };
    let (a, b) = (task("a", a), task("b", b));
    let a_tokens = a.await.unwrap();
    assert_eq!(b.await.unwrap().len(), 120);
    assert!(engine.stats().sequences_preempted >= 1, "{:?}", engine.stats());
    let first = order.lock()[0];
    (first, a_tokens)
}

#[tokio::test]
async fn the_least_urgent_sequence_gives_way_when_the_pool_runs_dry() {
    let (first, by_priority) = first_to_finish_when_the_pool_runs_dry(SchedulingPolicy::Priority).await;
    assert_eq!(first, "b", "under priority the older but less urgent sequence gives way");
    let (first, by_arrival) = first_to_finish_when_the_pool_runs_dry(SchedulingPolicy::Fcfs).await;
    assert_eq!(first, "a", "under FCFS the newest gives way");
    assert_eq!(by_priority, by_arrival, "giving way changes no token");
}

#[test]
fn policies_parse_by_name() {
    assert_eq!("priority".parse(), Ok(SchedulingPolicy::Priority));
    assert_eq!("fcfs".parse(), Ok(SchedulingPolicy::Fcfs));
    let error = "lifo".parse::<SchedulingPolicy>().unwrap_err();
    assert_eq!(error, "unknown scheduling policy 'lifo': expected one of fcfs, priority");
}
