#![allow(clippy::unwrap_used)]

use std::pin::pin;
use std::task::Poll;

use futures::poll;
use tritium_proto::inference::model_instance_group::Kind;
use tritium_proto::inference::model_rate_limiter::Resource;
use tritium_proto::inference::{ModelConfig, ModelInstanceGroup, ModelRateLimiter};

use super::*;

fn resource(name: &str, count: u32, global: bool) -> Resource {
    Resource { name: name.to_string(), count, global }
}

/// A model of `count` instances (on `gpus`, CPU when empty), each needing `resources`.
fn model(count: i32, gpus: &[i32], resources: Vec<Resource>, priority: u32) -> ModelConfig {
    let kind = if gpus.is_empty() { Kind::Cpu } else { Kind::Gpu };
    ModelConfig {
        instance_group: vec![ModelInstanceGroup {
            count,
            kind: kind as i32,
            gpus: gpus.to_vec(),
            rate_limiter: Some(ModelRateLimiter { resources, priority }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn on() -> Arc<RateLimiter> {
    RateLimiter::new(RateLimitMode::ExecutionCount, Vec::new())
}

fn flag(name: &str, count: u64, device: Option<i32>) -> ResourceLimit {
    ResourceLimit { name: name.to_string(), count, device }
}

fn register(limiter: &Arc<RateLimiter>, config: &ModelConfig) -> ModelRates {
    limiter.register(config).expect("registers").expect("the limiter is on")
}

#[tokio::test]
async fn off_registers_nothing_and_checks_nothing() {
    let limiter = RateLimiter::new(RateLimitMode::Off, vec![flag("R", 1, None)]);
    assert!(limiter.register(&model(1, &[], vec![resource("R", 5, false)], 0)).unwrap().is_none());
}

#[tokio::test]
async fn two_models_needing_one_resource_take_turns() {
    let limiter = on();
    let a = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let b = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let held = a.acquire(None).await;
    let mut waiting = pin!(b.acquire(None));
    assert!(poll!(&mut waiting).is_pending(), "R has one copy and model a holds it");
    drop(held);
    let Poll::Ready(grant) = poll!(&mut waiting) else { panic!("released R goes to the waiting execution") };
    drop(grant);
    // A model needing nothing is never held back by R.
    let free = register(&limiter, &model(1, &[], Vec::new(), 0));
    let _held = a.acquire(None).await;
    let _other = free.acquire(None).await;
}

#[tokio::test]
async fn a_count_of_two_lets_two_run() {
    let limiter = on();
    let a = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let b = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let c = register(&limiter, &model(1, &[], vec![resource("R", 2, false)], 0));
    let first = a.acquire(None).await;
    let second = b.acquire(None).await;
    let mut third = pin!(c.acquire(None));
    assert!(poll!(&mut third).is_pending(), "c needs both copies");
    drop(first);
    assert!(poll!(&mut third).is_pending(), "one copy is still held");
    drop(second);
    assert!(poll!(&mut third).is_ready());
}

#[tokio::test]
async fn the_instance_with_fewer_scaled_turns_goes_first() {
    let limiter = on();
    let high = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 1));
    let low = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 5));
    // One turn each: scaled priorities 1 (high) and 5 (low).
    drop(high.acquire(None).await);
    drop(low.acquire(None).await);
    let held = high.acquire(None).await;
    let mut low_waits = pin!(low.acquire(None));
    let mut high_waits = pin!(high.acquire(None));
    assert!(poll!(&mut low_waits).is_pending());
    assert!(poll!(&mut high_waits).is_pending());
    drop(held);
    // high: 2 turns x 1 = 2; low: 1 turn x 5 = 5. Arrival does not matter.
    assert!(poll!(&mut low_waits).is_pending());
    let Poll::Ready(grant) = poll!(&mut high_waits) else { panic!("the higher priority runs first") };
    drop(grant);
    assert!(poll!(&mut low_waits).is_ready());
}

#[tokio::test]
async fn equal_turns_go_by_arrival() {
    let limiter = on();
    let a = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 1));
    let b = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 1));
    let c = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 1));
    let held = a.acquire(None).await;
    let mut c_waits = pin!(c.acquire(None));
    let mut b_waits = pin!(b.acquire(None));
    assert!(poll!(&mut c_waits).is_pending());
    assert!(poll!(&mut b_waits).is_pending());
    drop(held);
    assert!(poll!(&mut b_waits).is_pending());
    assert!(poll!(&mut c_waits).is_ready(), "c came first");
}

#[tokio::test]
async fn per_device_resources_are_counted_per_device_and_global_ones_once() {
    let limiter = on();
    let gpu0 = register(&limiter, &model(1, &[0], vec![resource("R", 1, false)], 0));
    let gpu1 = register(&limiter, &model(1, &[1], vec![resource("R", 1, false)], 0));
    let _on0 = gpu0.acquire(None).await;
    let _on1 = gpu1.acquire(None).await;

    let limiter = on();
    let gpu0 = register(&limiter, &model(1, &[0], vec![resource("G", 1, true)], 0));
    let gpu1 = register(&limiter, &model(1, &[1], vec![resource("G", 1, true)], 0));
    let held = gpu0.acquire(None).await;
    let mut waiting = pin!(gpu1.acquire(None));
    assert!(poll!(&mut waiting).is_pending(), "a global resource has one count for every device");
    drop(held);
    assert!(poll!(&mut waiting).is_ready());
}

#[tokio::test]
async fn device_flags_give_each_device_its_count() {
    let limiter =
        RateLimiter::new(RateLimitMode::ExecutionCount, vec![flag("R", 1, Some(0)), flag("R", 2, Some(1)), flag("G", 3, None)]);
    let error = limiter.register(&model(1, &[0], vec![resource("R", 2, false)], 0)).unwrap_err();
    assert_eq!(
        error,
        "Resource count for \"R\" is limited to 1 which will prevent scheduling of one or more model instances, the minimum \
         required count is 2"
    );
    let on1 = register(&limiter, &model(2, &[1], vec![resource("R", 1, false)], 0));
    let _first = on1.acquire(None).await;
    let _second = on1.acquire(None).await;
    // A global resource takes the largest count any flag gives its name.
    let global = register(&limiter, &model(1, &[], vec![resource("G", 3, true)], 0));
    drop(global.acquire(None).await);
}

#[tokio::test]
async fn an_instance_over_the_count_or_a_resource_not_given_is_refused() {
    let limiter = RateLimiter::new(RateLimitMode::ExecutionCount, vec![flag("R", 1, None)]);
    let error = limiter.register(&model(1, &[], vec![resource("R", 2, false)], 0)).unwrap_err();
    assert!(error.starts_with("Resource count for \"R\" is limited to 1 "), "{error}");
    // Once resources are given by flag, one they do not name has none (Triton's rule).
    let error = limiter.register(&model(1, &[], vec![resource("S", 1, false)], 0)).unwrap_err();
    assert!(error.contains("\"S\" is limited to 0 ") && error.ends_with("the minimum required count is 1"), "{error}");
    // A refused model leaves nothing behind: R still has its one copy for others.
    let fine = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    drop(fine.acquire(None).await);
}

#[tokio::test]
async fn a_resource_both_global_and_per_device_is_refused() {
    let limiter = on();
    let _device = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let error = limiter.register(&model(1, &[], vec![resource("R", 1, true)], 0)).unwrap_err();
    assert_eq!(error, "Resource \"R\" is present as both global and device-specific resource in the model configuration.");
}

#[tokio::test]
async fn default_counts_follow_the_models_loaded() {
    let limiter = on();
    let small = register(&limiter, &model(2, &[], vec![resource("R", 1, false)], 0));
    let big = register(&limiter, &model(1, &[], vec![resource("R", 2, false)], 0));
    // R has 2 copies while `big` is loaded: both instances of `small` run.
    let first = small.acquire(None).await;
    let second = small.acquire(None).await;
    drop((first, second));
    drop(big);
    // Unloaded: R is back to 1.
    let first = small.acquire(None).await;
    let mut second = pin!(small.acquire(None));
    assert!(poll!(&mut second).is_pending());
    drop(first);
    assert!(poll!(&mut second).is_ready());
}

#[tokio::test]
async fn a_waiter_that_goes_away_leaves_the_queue() {
    let limiter = on();
    let a = register(&limiter, &model(1, &[], vec![resource("R", 2, false)], 0));
    let b = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let c = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let held = b.acquire(None).await;
    {
        // a needs both copies and came first: it holds c back (Triton's head of the line).
        let mut big = pin!(a.acquire(None));
        assert!(poll!(&mut big).is_pending());
        let mut behind = pin!(c.acquire(None));
        assert!(poll!(&mut behind).is_pending(), "a, first in line, holds c back");
        // a's client goes away: c runs on the free copy.
    }
    let mut behind = pin!(c.acquire(None));
    assert!(poll!(&mut behind).is_ready());
    drop(held);
}

#[tokio::test]
async fn a_grant_sent_to_a_waiter_that_went_away_is_given_back() {
    let limiter = on();
    let a = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let b = register(&limiter, &model(1, &[], vec![resource("R", 1, false)], 0));
    let held = a.acquire(None).await;
    let mut waiting = Box::pin(b.acquire(None));
    assert!(poll!(&mut waiting).is_pending());
    // The grant is sent to b's queue entry, and b drops it unread.
    drop(held);
    drop(waiting);
    let _again = a.acquire(None).await;
}

#[tokio::test]
async fn a_sequence_batch_waits_for_its_own_instance() {
    let limiter = on();
    let model = register(&limiter, &model(2, &[], Vec::new(), 0));
    let on_first = model.acquire(Some(0)).await;
    let mut first_again = pin!(model.acquire(Some(0)));
    assert!(poll!(&mut first_again).is_pending(), "instance 0 is busy");
    let _on_second = model.acquire(Some(1)).await;
    drop(on_first);
    assert!(poll!(&mut first_again).is_ready());
}

#[tokio::test]
async fn a_model_runs_at_most_its_instances_at_once() {
    let limiter = on();
    let model = register(&limiter, &model(2, &[], Vec::new(), 0));
    let first = model.acquire(None).await;
    let _second = model.acquire(None).await;
    let mut third = pin!(model.acquire(None));
    assert!(poll!(&mut third).is_pending());
    drop(first);
    assert!(poll!(&mut third).is_ready());
}

#[tokio::test]
async fn the_config_text_of_tritons_docs_registers() {
    // Triton's rate limiter docs write `global: True`.
    let text = r#"
        name: "m"
        instance_group [ { count: 2 kind: KIND_CPU rate_limiter {
            resources [ { name: "R1" count: 2 }, { name: "R3" global: True count: 1 } ] priority: 2 } } ]
    "#;
    let config = tritium_repository::parse_config_text(text).unwrap();
    let limiter = on();
    let model = register(&limiter, &config);
    let first = model.acquire(None).await;
    let mut second = pin!(model.acquire(None));
    assert!(poll!(&mut second).is_pending(), "the one global R3 is held");
    drop(first);
    assert!(poll!(&mut second).is_ready());
}

#[tokio::test]
async fn a_model_loaded_with_a_larger_need_lets_waiting_executions_go() {
    let limiter = on();
    let small = register(&limiter, &model(2, &[], vec![resource("R", 1, false)], 0));
    let held = small.acquire(None).await;
    let mut second = pin!(small.acquire(None));
    assert!(poll!(&mut second).is_pending(), "R has one copy");
    // R now has two copies: the waiting execution goes without another release.
    let _big = register(&limiter, &model(1, &[], vec![resource("R", 2, false)], 0));
    assert!(poll!(&mut second).is_ready());
    drop(held);
}

#[tokio::test]
async fn a_resource_named_twice_in_one_instance_counts_once() {
    let limiter = RateLimiter::new(RateLimitMode::ExecutionCount, vec![flag("R", 1, None)]);
    let twice = register(&limiter, &model(1, &[], vec![resource("R", 1, false), resource("R", 1, false)], 0));
    drop(twice.acquire(None).await);
}

#[tokio::test]
async fn a_model_of_too_many_instances_is_refused() {
    let error = on().register(&model(i32::MAX, &[], Vec::new(), 0)).unwrap_err();
    assert_eq!(
        error,
        format!("the rate limiter serves at most {MAX_INSTANCES} instances of one model; the config asks for 2147483647")
    );
    assert!(on().register(&model(MAX_INSTANCES as i32, &[], Vec::new(), 0)).is_ok());
}
