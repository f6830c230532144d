#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tritium_proto::inference::model_queue_policy::TimeoutAction;
use tritium_proto::inference::{ModelDynamicBatching, ModelInstanceGroup, ModelQueuePolicy};

use super::*;

/// OUTPUT = INPUT + 1 (INT32); records each call's rows; with a `gate`, says it started and
/// waits for a permit before answering.
#[derive(Default)]
struct Counter {
    calls: Mutex<Vec<Vec<i32>>>,
    gate: Option<(Notify, Semaphore)>,
}

#[async_trait]
impl Backend for Counter {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input("INPUT")?;
        self.calls.lock().push(input.to_vec::<i32>()?);
        if let Some((started, permits)) = &self.gate {
            started.notify_one();
            permits.acquire().await.unwrap().forget();
        }
        let plus_one: Vec<i32> = input.to_vec::<i32>()?.iter().map(|x| x + 1).collect();
        responder.send(vec![Tensor::from_slice("OUTPUT", input.shape.clone(), &plus_one)]).await
    }
}

impl Counter {
    fn gated() -> Arc<Counter> {
        Arc::new(Counter { gate: Some((Notify::new(), Semaphore::new(0))), ..Default::default() })
    }

    async fn started(&self) {
        self.gate.as_ref().unwrap().0.notified().await;
    }

    fn release(&self, calls: usize) {
        self.gate.as_ref().unwrap().1.add_permits(calls);
    }

    fn calls(&self) -> Vec<Vec<i32>> {
        self.calls.lock().clone()
    }
}

fn batching(delay_us: u64, max_queue_size: u32) -> ModelDynamicBatching {
    ModelDynamicBatching {
        max_queue_delay_microseconds: delay_us,
        default_queue_policy: Some(ModelQueuePolicy { max_queue_size, ..Default::default() }),
        ..Default::default()
    }
}

fn config_with(max_batch_size: i32, instances: i32, batching: ModelDynamicBatching) -> ModelConfig {
    ModelConfig {
        name: "m".into(),
        max_batch_size,
        instance_group: vec![ModelInstanceGroup { count: instances, ..Default::default() }],
        scheduling_choice: Some(SchedulingChoice::DynamicBatching(batching)),
        ..Default::default()
    }
}

fn batcher(config: ModelConfig, backend: &Arc<Counter>) -> Arc<DynamicBatcher> {
    let dynamic: Arc<dyn Backend> = backend.clone();
    Arc::new(DynamicBatcher::for_config(&config, &dynamic, &Arc::default(), 4096).unwrap().unwrap())
}

fn request(values: &[i32], width: i64) -> BackendRequest {
    let rows = values.len() as i64 / width;
    BackendRequest {
        inputs: vec![Tensor::from_slice("INPUT", vec![rows, width], values)],
        parameters: vec![],
        cancel: None,
        id: String::new(),
        requested_outputs: Vec::new(),
        trace: None,
    }
}

fn submit_with(batcher: &Arc<DynamicBatcher>, values: Vec<i32>, width: i64, options: RequestOptions) -> JoinHandle<BatchAnswer> {
    let batcher = Arc::clone(batcher);
    let rows = values.len() as i64 / width;
    tokio::spawn(async move { batcher.submit(request(&values, width), rows, &options).await })
}

fn submit(batcher: &Arc<DynamicBatcher>, values: Vec<i32>, width: i64) -> JoinHandle<BatchAnswer> {
    submit_with(batcher, values, width, RequestOptions::default())
}

async fn values(task: JoinHandle<BatchAnswer>) -> Vec<i32> {
    task.await.unwrap().unwrap().outputs.unwrap()[0].to_vec::<i32>().unwrap()
}

async fn queued_at_least(batcher: &DynamicBatcher, level: usize, count: usize) {
    while batcher.queued[level].load(Ordering::Acquire) < count {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_backend_call_and_get_their_own_rows() {
    let backend = Arc::new(Counter::default());
    let batcher = batcher(config_with(8, 1, batching(60_000_000, 0)), &backend);
    let tasks: Vec<_> = (0..4).map(|i| submit(&batcher, vec![i * 10, i * 10 + 1, i * 10 + 2, i * 10 + 3], 2)).collect();
    let mut executions = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let BatchShare { outputs, execution, .. } = task.await.unwrap().unwrap();
        let outputs = outputs.unwrap();
        let i = i as i32;
        assert_eq!(outputs[0].shape, [2, 2]);
        assert_eq!(outputs[0].to_vec::<i32>().unwrap(), [i * 10 + 1, i * 10 + 2, i * 10 + 3, i * 10 + 4]);
        executions.extend(execution);
    }
    assert_eq!(backend.calls().iter().map(Vec::len).collect::<Vec<_>>(), [16], "4 requests of 2 rows filled one batch of 8");
    assert_eq!(executions.len(), 1, "one request carries the batch's execution");
    assert_eq!(executions[0].batch_size, 8);
}

#[tokio::test]
async fn requests_of_other_shapes_wait_for_their_own_batch() {
    let backend = Arc::new(Counter::default());
    let batcher = batcher(config_with(8, 1, batching(200_000, 0)), &backend);
    let wide = submit(&batcher, vec![1, 2, 3], 3);
    let narrow = submit(&batcher, vec![7, 8], 2);
    assert_eq!(values(wide).await, [2, 3, 4]);
    assert_eq!(values(narrow).await, [8, 9]);
    assert_eq!(backend.calls().len(), 2);
}

#[tokio::test]
async fn a_full_queue_answers_unavailable_and_the_queued_requests_still_run() {
    let backend = Counter::gated();
    let batcher = batcher(config_with(1, 1, batching(0, 2)), &backend);
    let running = submit(&batcher, vec![0], 1);
    backend.started().await;
    let queued = [submit(&batcher, vec![1], 1), submit(&batcher, vec![2], 1)];
    queued_at_least(&batcher, 0, 2).await;
    let refused = batcher.submit(request(&[3], 1), 1, &RequestOptions::default()).await.unwrap_err();
    assert_eq!((refused.code(), refused.to_string().as_str()), (ErrorCode::Unavailable, "Exceeds maximum queue size"));
    backend.release(3);
    assert_eq!(values(running).await, [1]);
    for (value, task) in (2..).zip(queued) {
        assert_eq!(values(task).await, [value]);
    }
    assert_eq!(backend.calls(), [[0], [1], [2]]);
}

fn two_priority_levels(low_action: TimeoutAction, low_timeout_us: u64) -> ModelDynamicBatching {
    // Level 2 (the default) allows overrides of its timeout; level 1 has none.
    let policy = |action: TimeoutAction, timeout_us, allow_timeout_override| ModelQueuePolicy {
        timeout_action: action as i32,
        default_timeout_microseconds: timeout_us,
        allow_timeout_override,
        max_queue_size: 0,
    };
    ModelDynamicBatching {
        priority_levels: 2,
        default_priority_level: 2,
        default_queue_policy: Some(policy(low_action, low_timeout_us, true)),
        priority_queue_policy: HashMap::from([(1, policy(TimeoutAction::Reject, 0, false))]),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_higher_priority_request_overtakes_the_queue() {
    let backend = Counter::gated();
    let batcher = batcher(config_with(1, 1, two_priority_levels(TimeoutAction::Reject, 0)), &backend);
    let running = submit(&batcher, vec![0], 1);
    backend.started().await;
    let low = submit_with(&batcher, vec![1], 1, RequestOptions { priority: 2, ..Default::default() });
    let default = submit(&batcher, vec![2], 1);
    queued_at_least(&batcher, 1, 2).await;
    let high = submit_with(&batcher, vec![3], 1, RequestOptions { priority: 1, ..Default::default() });
    queued_at_least(&batcher, 0, 1).await;
    backend.release(4);
    for (task, expected) in [(running, 1), (low, 2), (default, 3), (high, 4)] {
        assert_eq!(values(task).await, [expected]);
    }
    assert_eq!(backend.calls(), [[0], [3], [1], [2]], "level 1 first; priority 0 is the default level 2");
}

#[tokio::test]
async fn a_request_whose_timeout_passes_in_the_queue_is_rejected_and_the_others_run() {
    let backend = Counter::gated();
    let batcher = batcher(config_with(1, 1, two_priority_levels(TimeoutAction::Reject, 60_000_000)), &backend);
    let running = submit(&batcher, vec![0], 1);
    backend.started().await;
    let hurried = submit_with(&batcher, vec![1], 1, RequestOptions { timeout_us: Some(1000), ..Default::default() });
    let patient = submit(&batcher, vec![2], 1);
    let error = hurried.await.unwrap().unwrap_err();
    assert_eq!((error.code(), error.to_string().as_str()), (ErrorCode::Unavailable, "Request timeout expired"));
    backend.release(2);
    assert_eq!(values(running).await, [1]);
    assert_eq!(values(patient).await, [3]);
    assert_eq!(backend.calls(), [[0], [2]]);
    assert_eq!(batcher.queued[1].load(Ordering::Acquire), 0, "the rejected request gave its place back");
}

#[tokio::test]
async fn a_delayed_request_runs_after_the_punctual_ones() {
    let backend = Counter::gated();
    let batcher = batcher(config_with(1, 1, two_priority_levels(TimeoutAction::Delay, 1000)), &backend);
    let running = submit(&batcher, vec![0], 1);
    backend.started().await;
    let late = submit(&batcher, vec![1], 1);
    queued_at_least(&batcher, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let punctual = submit_with(&batcher, vec![2], 1, RequestOptions { timeout_us: Some(60_000_000), ..Default::default() });
    queued_at_least(&batcher, 1, 2).await;
    backend.release(3);
    assert_eq!(values(running).await, [1]);
    assert_eq!(values(punctual).await, [3]);
    assert_eq!(values(late).await, [2]);
    assert_eq!(backend.calls(), [[0], [2], [1]]);
}

/// Answers value 0 only when let, and says when it has answered anything else.
#[derive(Default)]
struct SlowFirst {
    first_may_answer: Notify,
    other_answered: Notify,
}

#[async_trait]
impl Backend for SlowFirst {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input("INPUT")?.clone();
        if input.to_vec::<i32>()? == [0] {
            self.first_may_answer.notified().await;
        }
        responder.send(vec![input]).await?;
        self.other_answered.notify_one();
        Ok(())
    }
}

#[tokio::test]
async fn with_preserve_ordering_a_later_batch_answers_after_an_earlier_one() {
    let backend = Arc::new(SlowFirst::default());
    let dynamic: Arc<dyn Backend> = backend.clone();
    let config = config_with(1, 2, ModelDynamicBatching { preserve_ordering: true, ..batching(0, 0) });
    let batcher = Arc::new(DynamicBatcher::for_config(&config, &dynamic, &Arc::default(), 4096).unwrap().unwrap());
    let first = submit(&batcher, vec![0], 1);
    let second = submit(&batcher, vec![1], 1);
    backend.other_answered.notified().await;
    // The second batch ran on the other instance and is done; its answer waits for the first's.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!second.is_finished() && !first.is_finished());
    backend.first_may_answer.notify_one();
    assert_eq!(values(first).await, [0]);
    assert_eq!(values(second).await, [1]);
}

#[tokio::test]
async fn requests_with_other_custom_parameters_are_not_batched_together() {
    let backend = Arc::new(Counter::default());
    let batcher = batcher(config_with(8, 1, batching(200_000, 0)), &backend);
    let mut custom = request(&[1], 1);
    custom.parameters.push(("mine".into(), crate::ParamValue::Bool(true)));
    let tagged = {
        let batcher = Arc::clone(&batcher);
        tokio::spawn(async move { batcher.submit(custom, 1, &RequestOptions::default()).await })
    };
    let plain = submit_with(&batcher, vec![2], 1, RequestOptions { priority: 3, ..Default::default() });
    assert_eq!(values(tagged).await, [2]);
    assert_eq!(values(plain).await, [3]);
    assert_eq!(backend.calls().len(), 2);
}

#[test]
fn no_batcher_without_dynamic_batching_or_a_batch_dimension() {
    let backend: Arc<dyn Backend> = Arc::new(Counter::default());
    assert!(
        DynamicBatcher::for_config(&ModelConfig { max_batch_size: 8, ..Default::default() }, &backend, &Arc::default(), 4096)
            .unwrap()
            .is_none()
    );
    assert!(DynamicBatcher::for_config(&config_with(0, 1, batching(0, 0)), &backend, &Arc::default(), 4096).unwrap().is_none());
    let batcher =
        DynamicBatcher::for_config(&config_with(8, 1, batching(100, 0)), &backend, &Arc::default(), 4096).unwrap().unwrap();
    assert_eq!(batcher.policy.levels.policies[0].max_size, 4096);
    assert_eq!(batcher.policy.instances, 1);
    let bad = config_with(8, 1, ModelDynamicBatching { priority_levels: 2, ..Default::default() });
    assert!(DynamicBatcher::for_config(&bad, &backend, &Arc::default(), 4096).is_err());
}

#[tokio::test]
async fn a_batch_waits_for_its_resources_and_requests_gone_meanwhile_do_not_run() {
    use tritium_proto::inference::ModelRateLimiter;
    use tritium_proto::inference::model_rate_limiter::Resource;

    use crate::rate_limiter::{RateLimitMode, RateLimiter};

    let limiter = RateLimiter::new(RateLimitMode::ExecutionCount, Vec::new());
    let needs_r = |config: ModelConfig| ModelConfig {
        instance_group: vec![ModelInstanceGroup {
            count: 1,
            rate_limiter: Some(ModelRateLimiter {
                resources: vec![Resource { name: "R".into(), count: 1, global: false }],
                priority: 0,
            }),
            ..Default::default()
        }],
        ..config
    };
    let other = limiter.register(&needs_r(ModelConfig::default())).unwrap().unwrap();
    let config = needs_r(config_with(8, 1, batching(0, 0)));
    let backend = Arc::new(Counter::default());
    let dynamic: Arc<dyn Backend> = backend.clone();
    let rates = limiter.register(&config).unwrap();
    let batcher =
        Arc::new(DynamicBatcher::for_config(&config, &dynamic, &Arc::default(), 4096).unwrap().unwrap().with_rates(rates));
    let held = other.acquire(None).await;
    let gone = submit(&batcher, vec![1], 1);
    while limiter.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    gone.abort();
    let _ = gone.await;
    drop(held);
    assert_eq!(values(submit(&batcher, vec![5], 1)).await, [6]);
    assert_eq!(backend.calls(), [vec![5]], "the request whose client went away never ran");
}
