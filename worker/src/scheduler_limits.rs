//! What every scheduler is bounded by: the server-wide queue and sequence limits, and a model's
//! instance count. The dynamic and sequence batchers read these; the `scheduler` module picks
//! between them.

use tritium_proto::inference::ModelConfig;

/// The server-wide bounds of every model's scheduler queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerLimits {
    /// Requests one priority level of a dynamic batcher, or one sequence batcher, holds when the
    /// config sets no `max_queue_size` (Triton's unbounded); beyond it, UNAVAILABLE.
    pub max_queue_size: usize,
    /// Sequences one model keeps at once (in a slot or waiting for one); beyond it, a new
    /// sequence's START is refused UNAVAILABLE.
    pub max_sequences: usize,
}

impl Default for SchedulerLimits {
    fn default() -> Self {
        SchedulerLimits { max_queue_size: 4096, max_sequences: 16_384 }
    }
}

/// The instances of a config's `instance_group`, together (a group without a count is one; at least one).
pub fn instance_count(config: &ModelConfig) -> usize {
    let counts = config.instance_group.iter().map(|g| usize::try_from(g.count.max(1)).unwrap_or(1));
    counts.fold(0, usize::saturating_add).max(1)
}
