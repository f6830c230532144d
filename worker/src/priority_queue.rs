//! The dynamic batcher's queue with Triton's priority levels and queue policies: one queue per
//! level (level 1 first), each bounded by its `max_queue_size`, each with its own timeout and
//! what happens when a request's timeout passes in the queue (`REJECT`: it is answered
//! UNAVAILABLE; `DELAY`: it moves behind the level's requests that are still in time). A batch
//! takes requests in order: level by level, within a level the punctual ones before the delayed.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tritium_proto::inference::model_queue_policy::TimeoutAction;
use tritium_proto::inference::{ModelDynamicBatching, ModelQueuePolicy};

/// What one priority level does with its requests.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueuePolicy {
    timeout: Option<Duration>,
    delay_on_timeout: bool,
    allow_override: bool,
    pub(crate) max_size: usize,
}

impl QueuePolicy {
    fn from_config(policy: Option<&ModelQueuePolicy>, default_max_queue: usize) -> QueuePolicy {
        let policy = policy.cloned().unwrap_or_default();
        QueuePolicy {
            timeout: (policy.default_timeout_microseconds > 0)
                .then(|| Duration::from_micros(policy.default_timeout_microseconds)),
            delay_on_timeout: policy.timeout_action() == TimeoutAction::Delay,
            allow_override: policy.allow_timeout_override,
            max_size: if policy.max_queue_size == 0 { default_max_queue } else { policy.max_queue_size as usize },
        }
    }

    /// When a request that arrived at `arrived` times out: after the policy's default timeout,
    /// or the request's own `timeout` (in microseconds) where the policy allows an override and
    /// it is shorter (as Triton's, an override only ever shortens); never without a default.
    pub(crate) fn deadline(&self, arrived: Instant, requested_us: Option<i64>) -> Option<Instant> {
        let default = self.timeout?;
        let requested =
            requested_us.filter(|&us| us > 0 && self.allow_override).map(|us| Duration::from_micros(us.unsigned_abs()));
        arrived.checked_add(requested.map_or(default, |r| r.min(default)))
    }
}

/// The priority levels of one model: their policies, and which one a request's `priority` names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Levels {
    pub(crate) policies: Vec<QueuePolicy>,
    default_level: usize,
}

impl Levels {
    /// The levels `dynamic_batching` declares, checked as Triton checks them at load.
    pub(crate) fn from_config(batching: &ModelDynamicBatching, default_max_queue: usize) -> Result<Levels, String> {
        let count = batching.priority_levels;
        if count == 0 {
            let policy = QueuePolicy::from_config(batching.default_queue_policy.as_ref(), default_max_queue);
            return Ok(Levels { policies: vec![policy], default_level: 0 });
        }
        if count > 1024 {
            return Err(format!("dynamic_batching priority_levels must be at most 1024, got {count}"));
        }
        let default = batching.default_priority_level;
        if default == 0 || default > count {
            return Err(format!("default priority level must be in range [1, {count}]"));
        }
        if let Some(level) = batching.priority_queue_policy.keys().find(|&&level| level == 0 || level > count) {
            return Err(format!("priority queue policy must have priority level in range [1, {count}], got {level}"));
        }
        let policies = (1..=count)
            .map(|level| {
                let policy = batching.priority_queue_policy.get(&level).or(batching.default_queue_policy.as_ref());
                QueuePolicy::from_config(policy, default_max_queue)
            })
            .collect();
        Ok(Levels { policies, default_level: (default - 1) as usize })
    }

    /// The level (an index into `policies`) a request of `priority` waits at: Triton puts 0, and
    /// anything beyond the last level, at the default level.
    pub(crate) fn level_of(&self, priority: u64) -> usize {
        match usize::try_from(priority) {
            Ok(p) if p >= 1 && p <= self.policies.len() && self.policies.len() > 1 => p - 1,
            _ => self.default_level,
        }
    }
}

/// One waiting request's place in the queue.
pub(crate) trait Queued {
    fn level(&self) -> usize;
    fn deadline(&self) -> Option<Instant>;
}

#[derive(Debug)]
struct LevelQueue<T> {
    punctual: VecDeque<T>,
    delayed: VecDeque<T>,
    delay_on_timeout: bool,
}

/// The waiting requests of every level, in the order a batch takes them.
#[derive(Debug)]
pub(crate) struct PriorityQueue<T> {
    levels: Vec<LevelQueue<T>>,
}

impl<T: Queued> PriorityQueue<T> {
    pub(crate) fn new(levels: &Levels) -> PriorityQueue<T> {
        let levels = levels
            .policies
            .iter()
            .map(|p| LevelQueue { punctual: VecDeque::new(), delayed: VecDeque::new(), delay_on_timeout: p.delay_on_timeout })
            .collect();
        PriorityQueue { levels }
    }

    pub(crate) fn push(&mut self, item: T) {
        let last = self.levels.len() - 1;
        self.levels[item.level().min(last)].punctual.push_back(item);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.levels.iter().all(|l| l.punctual.is_empty() && l.delayed.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        self.levels.iter().map(|l| l.punctual.len() + l.delayed.len()).sum()
    }

    /// Every waiting request, in the order batches take them.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.levels.iter().flat_map(|l| l.punctual.iter().chain(l.delayed.iter()))
    }

    /// Takes the first `count` requests (in [`PriorityQueue::iter`] order).
    pub(crate) fn take(&mut self, mut count: usize) -> Vec<T> {
        let mut taken = Vec::with_capacity(count);
        for level in &mut self.levels {
            for queue in [&mut level.punctual, &mut level.delayed] {
                let n = count.min(queue.len());
                taken.extend(queue.drain(..n));
                count -= n;
            }
        }
        taken
    }

    /// Removes the requests `keep` refuses and returns them.
    pub(crate) fn remove_unkept(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for level in &mut self.levels {
            for queue in [&mut level.punctual, &mut level.delayed] {
                if queue.iter().all(&mut keep) {
                    continue;
                }
                let (kept, gone): (VecDeque<T>, VecDeque<T>) = queue.drain(..).partition(&mut keep);
                *queue = kept;
                removed.extend(gone);
            }
        }
        removed
    }

    /// Applies the timeout policies at `now`: returns the requests to reject; delayed ones move
    /// behind their level's punctual requests (and time out no more).
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut rejected = Vec::new();
        for level in &mut self.levels {
            if !level.punctual.iter().any(|item| item.deadline().is_some_and(|d| d <= now)) {
                continue;
            }
            let (late, punctual): (VecDeque<T>, VecDeque<T>) =
                level.punctual.drain(..).partition(|item| item.deadline().is_some_and(|d| d <= now));
            level.punctual = punctual;
            if level.delay_on_timeout {
                level.delayed.extend(late);
            } else {
                rejected.extend(late);
            }
        }
        rejected
    }

    /// The earliest deadline of a request still in time.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.levels.iter().flat_map(|l| l.punctual.iter()).filter_map(Queued::deadline).min()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, PartialEq)]
    struct Item(usize, Option<Instant>, &'static str);

    impl Queued for Item {
        fn level(&self) -> usize {
            self.0
        }
        fn deadline(&self) -> Option<Instant> {
            self.1
        }
    }

    fn policy(action: TimeoutAction, timeout_us: u64, max: u32, allow_override: bool) -> ModelQueuePolicy {
        ModelQueuePolicy {
            timeout_action: action as i32,
            default_timeout_microseconds: timeout_us,
            allow_timeout_override: allow_override,
            max_queue_size: max,
        }
    }

    fn two_levels() -> Levels {
        Levels::from_config(
            &ModelDynamicBatching {
                priority_levels: 2,
                default_priority_level: 2,
                default_queue_policy: Some(policy(TimeoutAction::Reject, 1000, 2, true)),
                priority_queue_policy: HashMap::from([(1, policy(TimeoutAction::Delay, 1000, 8, false))]),
                ..Default::default()
            },
            4096,
        )
        .unwrap()
    }

    #[test]
    fn priorities_pick_levels_as_triton_does() {
        let levels = two_levels();
        assert_eq!([0, 1, 2, 3, u64::MAX].map(|p| levels.level_of(p)), [1, 0, 1, 1, 1]);
        assert_eq!(levels.policies.iter().map(|p| p.max_size).collect::<Vec<_>>(), [8, 2]);
        let single = Levels::from_config(&ModelDynamicBatching::default(), 7).unwrap();
        assert_eq!((single.level_of(5), single.policies[0].max_size), (0, 7));
    }

    #[test]
    fn levels_the_config_gets_wrong_fail_the_load() {
        let bad = |default, key| ModelDynamicBatching {
            priority_levels: 2,
            default_priority_level: default,
            priority_queue_policy: HashMap::from([(key, ModelQueuePolicy::default())]),
            ..Default::default()
        };
        assert_eq!(Levels::from_config(&bad(0, 1), 1).unwrap_err(), "default priority level must be in range [1, 2]");
        assert!(Levels::from_config(&bad(1, 3), 1).unwrap_err().contains("got 3"));
    }

    #[test]
    fn timeouts_follow_the_override_rule() {
        let levels = two_levels();
        let now = Instant::now();
        let (delaying, rejecting) = (&levels.policies[0], &levels.policies[1]);
        assert_eq!(delaying.deadline(now, Some(50)), Some(now + Duration::from_micros(1000)), "override not allowed");
        assert_eq!(rejecting.deadline(now, Some(50)), Some(now + Duration::from_micros(50)));
        assert_eq!(rejecting.deadline(now, Some(0)), Some(now + Duration::from_micros(1000)));
        assert_eq!(rejecting.deadline(now, Some(5000)), Some(now + Duration::from_micros(1000)), "an override only shortens");
        assert_eq!(QueuePolicy::from_config(None, 1).deadline(now, Some(50)), None);
    }

    #[test]
    fn batches_take_levels_in_order_and_expired_requests_are_rejected_or_delayed() {
        let levels = two_levels();
        let mut queue = PriorityQueue::new(&levels);
        let now = Instant::now();
        let past = Some(now - Duration::from_millis(1));
        queue.push(Item(1, None, "low"));
        queue.push(Item(1, past, "low late"));
        queue.push(Item(0, past, "high late"));
        queue.push(Item(0, None, "high"));
        assert_eq!(queue.next_deadline(), past);
        let rejected = queue.expire(now);
        assert_eq!(rejected, [Item(1, past, "low late")]);
        let order: Vec<&str> = queue.iter().map(|i| i.2).collect();
        assert_eq!(order, ["high", "high late", "low"], "delayed behind its level, before the next level");
        assert_eq!(queue.next_deadline(), None, "a delayed request times out no more");
        assert_eq!(queue.take(2).iter().map(|i| i.2).collect::<Vec<_>>(), ["high", "high late"]);
        assert_eq!(queue.remove_unkept(|i| i.2 != "low").len(), 1);
        assert!(queue.is_empty());
    }
}
