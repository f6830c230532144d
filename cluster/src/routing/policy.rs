//! How the router picks one worker among those serving a model: the modes of `--router-mode`,
//! and the per-request hint that `direct` mode reads.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;

use super::kv_index::{Candidate, KvScoring, choose};

/// `--router-mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouterMode {
    /// Each worker in turn.
    #[default]
    RoundRobin,
    /// A worker drawn uniformly.
    Random,
    /// Two workers drawn uniformly; the one with fewer requests in flight.
    PowerOfTwo,
    /// The worker with the fewest requests outstanding from this frontend plus those it reports queued.
    LeastLoaded,
    /// The best score of cached-prefix overlap against load (language models; others: least-loaded).
    Kv,
    /// The least loaded worker, an accelerator's load counting `--non-cpu-to-cpu-ratio` times less
    /// than a CPU worker's.
    DeviceAwareWeighted,
    /// The worker the request names (KServe parameter `worker_id`, HTTP header `x-tritium-worker`).
    Direct,
}

impl RouterMode {
    /// The mode as `--router-mode` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterMode::RoundRobin => "round-robin",
            RouterMode::Random => "random",
            RouterMode::PowerOfTwo => "power-of-two",
            RouterMode::LeastLoaded => "least-loaded",
            RouterMode::Kv => "kv",
            RouterMode::DeviceAwareWeighted => "device-aware-weighted",
            RouterMode::Direct => "direct",
        }
    }
}

/// The request parameter (KServe) that names the worker in `direct` mode.
pub const WORKER_ID_PARAMETER: &str = "worker_id";
/// The HTTP header that names the worker in `direct` mode.
pub const WORKER_ID_HEADER: &str = "x-tritium-worker";

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    pub mode: RouterMode,
    pub kv: KvScoring,
    /// Tokens per KV block; must match the workers' engines.
    pub kv_block_size: usize,
    /// How many times a language-model stream whose worker died is continued on another worker.
    pub migration_limit: u32,
    /// How long a worker that could not be reached is passed over (unless it is the only one).
    pub suspect_for: std::time::Duration,
    /// Sent to remote workers on every call (`--worker-token`).
    pub worker_token: Option<String>,
    /// What an engine reached over gRPC may cost (`--engine-grpc-idle-timeout` and its siblings).
    pub engine_limits: crate::engines::EngineLimits,
    /// A language-model worker whose KV cache is fuller than this fraction is busy (passed over;
    /// all busy: refused). `None`: never busy. Per-model values are set over HTTP.
    pub busy_threshold: Option<f64>,
    /// With prefill workers about: a prompt whose part the decode worker lacks is longer than
    /// this many tokens is prefilled on a prefill worker.
    pub max_local_prefill_length: usize,
    /// kv mode: score overlaps from the workers' KV events (`true`) or from the router's own
    /// predictions (`false`, Dynamo's `--no-router-kv-events`).
    pub kv_events: bool,
    /// How long a predicted block is assumed held (`--router-ttl-secs`).
    pub prediction_ttl: std::time::Duration,
    /// What the router counts of the load it puts on workers (`--router-track-*`).
    pub tracking: super::active::Tracking,
    /// A worker with more prompt tokens than this still to prefill (of this router's requests) is
    /// busy (`--active-prefill-tokens-threshold`).
    pub prefill_tokens_threshold: Option<u64>,
    /// ... or more than this fraction of what one of its engine steps prefills
    /// (`--active-prefill-tokens-threshold-frac`, against its reported `max_batched_tokens`).
    pub prefill_tokens_threshold_frac: Option<f64>,
    /// With decode workers and no prefill worker up, the decode workers serve requests whole
    /// (`--decode-fallback`); else such requests are refused.
    pub decode_fallback: bool,
    /// device-aware-weighted mode: the load one accelerator takes for one a CPU worker takes.
    pub accelerator_weight: u32,
    /// The router's own queue (`--router-queue-threshold`); `None`: requests never wait there.
    pub queue: Option<super::queue::QueueOptions>,
    /// Share this router's predictions with the other frontends' routers over the event plane,
    /// and take theirs (`--router-replica-sync`).
    pub replica_sync: bool,
    /// Tasks that apply workers' KV events to the index (`--router-event-threads`).
    pub event_threads: usize,
    /// KV events applied between two snapshots of the index (`--router-snapshot-threshold`).
    pub snapshot_threshold: u64,
    /// Start from an empty index and delete the stored snapshot (`--router-reset-states`).
    pub reset_states: bool,
    /// Keep each session's requests on one worker (`--router-session-affinity-ttl-secs`).
    pub affinity: Option<super::sessions::AffinityOptions>,
}

impl Default for RouterOptions {
    fn default() -> RouterOptions {
        RouterOptions {
            mode: RouterMode::RoundRobin,
            kv: KvScoring::default(),
            kv_block_size: tritium_backend_api::kv::DEFAULT_KV_BLOCK_SIZE,
            migration_limit: 3,
            suspect_for: std::time::Duration::from_secs(5),
            worker_token: None,
            engine_limits: crate::engines::EngineLimits::default(),
            busy_threshold: None,
            max_local_prefill_length: DEFAULT_MAX_LOCAL_PREFILL_LENGTH,
            kv_events: true,
            prediction_ttl: std::time::Duration::from_secs(120),
            tracking: super::active::Tracking::default(),
            prefill_tokens_threshold: None,
            prefill_tokens_threshold_frac: None,
            decode_fallback: true,
            accelerator_weight: 8,
            queue: None,
            replica_sync: false,
            event_threads: 4,
            snapshot_threshold: 1_000_000,
            reset_states: false,
            affinity: None,
        }
    }
}

/// Tokens a decode worker prefills itself by default (Dynamo's default too).
pub const DEFAULT_MAX_LOCAL_PREFILL_LENGTH: usize = 512;

/// One worker that may take the request, with what the router knows of it.
#[derive(Debug, Clone)]
pub struct Choice {
    pub id: Arc<str>,
    /// Requests this frontend has outstanding on it.
    pub outstanding: u64,
    /// Its last load report for the model (zeros when it sent none).
    pub reported_active: u64,
    pub reported_queued: u64,
    pub kv_used: u64,
    pub kv_capacity: u64,
    /// What the router itself counts on it (zeros when it does not track).
    pub tracked: super::active::CandidateLoad,
    /// It computes on an accelerator (device-aware-weighted mode).
    pub accelerator: bool,
}

/// What a pick is based on beyond the candidates.
#[derive(Debug, Default)]
pub struct PickContext<'a> {
    /// Leading cached blocks per worker (kv mode), and the request's block count.
    pub overlaps: Option<(&'a HashMap<String, usize>, usize)>,
    /// A turn counter for round-robin.
    pub turn: usize,
    /// How many CPU workers' load one accelerator takes (device-aware-weighted mode).
    pub accelerator_weight: u32,
}

/// The index in `choices` of the worker to use; `None` only when `choices` is empty.
pub fn pick(
    mode: RouterMode,
    choices: &[Choice],
    context: &PickContext<'_>,
    kv: &KvScoring,
    rng: &mut impl Rng,
) -> Option<usize> {
    if choices.is_empty() {
        return None;
    }
    match mode {
        RouterMode::RoundRobin | RouterMode::Direct => Some(context.turn % choices.len()),
        RouterMode::Random => Some(rng.random_range(0..choices.len())),
        RouterMode::PowerOfTwo => {
            // Two different workers (one when there is one).
            let first = rng.random_range(0..choices.len());
            let second = match choices.len() {
                1 => first,
                n => (first + rng.random_range(1..n)) % n,
            };
            let load = |c: &Choice| c.outstanding.max(c.reported_active) + c.reported_queued;
            Some(if load(&choices[second]) < load(&choices[first]) { second } else { first })
        }
        RouterMode::LeastLoaded => least_loaded(choices, context.turn),
        RouterMode::DeviceAwareWeighted => device_weighted(choices, context),
        RouterMode::Kv => match context.overlaps {
            Some((overlaps, request_blocks)) => {
                let candidates: Vec<Candidate> = choices
                    .iter()
                    .map(|c| Candidate {
                        overlap_blocks: overlaps.get(c.id.as_ref()).copied().unwrap_or(0),
                        active: c.outstanding.max(c.reported_active),
                        queued: c.reported_queued,
                        kv_used: c.kv_used,
                        kv_capacity: c.kv_capacity,
                        potential_blocks: c.tracked.potential_blocks,
                        pending_prefill_tokens: c.tracked.prefill_tokens,
                    })
                    .collect();
                choose(&candidates, request_blocks, kv, rng)
            }
            None => least_loaded(choices, context.turn),
        },
    }
}

/// The worker with the least load per unit of capacity (an accelerator's capacity is
/// `accelerator_weight`, a CPU worker's 1); ties go round-robin.
fn device_weighted(choices: &[Choice], context: &PickContext<'_>) -> Option<usize> {
    let weight = |c: &Choice| if c.accelerator { u64::from(context.accelerator_weight.max(1)) } else { 1 };
    let load = |c: &Choice| c.outstanding.max(c.reported_active) + c.reported_queued;
    // a/wa < b/wb as a*wb < b*wa: no floating point.
    let lighter =
        |a: &Choice, b: &Choice| u128::from(load(a)) * u128::from(weight(b)) < u128::from(load(b)) * u128::from(weight(a));
    let best = choices.iter().enumerate().fold(None, |best: Option<usize>, (i, c)| match best {
        Some(b) if !lighter(c, &choices[b]) => Some(b),
        _ => Some(i),
    })?;
    let tied: Vec<usize> = (0..choices.len()).filter(|&i| !lighter(&choices[best], &choices[i])).collect();
    tied.get(context.turn % tied.len()).copied()
}

/// The least loaded worker; ties go round-robin so equal workers share the work.
fn least_loaded(choices: &[Choice], turn: usize) -> Option<usize> {
    let load = |c: &Choice| c.outstanding.max(c.reported_active) + c.reported_queued;
    let best = choices.iter().map(load).min()?;
    let tied: Vec<usize> = (0..choices.len()).filter(|&i| load(&choices[i]) == best).collect();
    tied.get(turn % tied.len()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(id: &str, outstanding: u64, queued: u64) -> Choice {
        Choice {
            id: Arc::from(id),
            outstanding,
            reported_active: 0,
            reported_queued: queued,
            kv_used: 0,
            kv_capacity: 0,
            tracked: Default::default(),
            accelerator: false,
        }
    }

    #[test]
    fn round_robin_takes_turns_and_least_loaded_takes_the_idle_one() {
        let choices = [choice("a", 3, 0), choice("b", 0, 1), choice("c", 0, 0)];
        let kv = KvScoring::default();
        let mut rng = rand::rng();
        let turns: Vec<_> = (0..3)
            .map(|turn| pick(RouterMode::RoundRobin, &choices, &PickContext { turn, ..Default::default() }, &kv, &mut rng))
            .collect();
        assert_eq!(turns, vec![Some(0), Some(1), Some(2)]);
        let least = pick(RouterMode::LeastLoaded, &choices, &PickContext::default(), &kv, &mut rng);
        assert_eq!(least, Some(2));
        assert_eq!(pick(RouterMode::Random, &[], &PickContext::default(), &kv, &mut rng), None);
        // Of two draws, the less loaded: the busiest of three is never picked.
        for _ in 0..50 {
            assert_ne!(pick(RouterMode::PowerOfTwo, &choices, &PickContext::default(), &kv, &mut rng), Some(0));
        }
    }

    #[test]
    fn device_aware_weighted_gives_an_accelerator_its_ratio_of_the_load() {
        let context = |turn| PickContext { turn, accelerator_weight: 8, ..Default::default() };
        let mut rng = rand::rng();
        let (mut cpu, mut gpu) = (choice("cpu", 0, 0), Choice { accelerator: true, ..choice("gpu", 0, 0) });
        let mut counts = [0, 0];
        for turn in 0..18 {
            let index = pick(
                RouterMode::DeviceAwareWeighted,
                &[cpu.clone(), gpu.clone()],
                &context(turn),
                &KvScoring::default(),
                &mut rng,
            )
            .expect("a worker");
            counts[index] += 1;
            if index == 0 { cpu.outstanding += 1 } else { gpu.outstanding += 1 }
        }
        assert_eq!(counts, [2, 16], "an accelerator takes 8 for each one a CPU worker takes");
    }

    #[test]
    fn kv_mode_follows_the_cached_prefix() {
        let choices = [choice("a", 0, 0), choice("b", 0, 0)];
        let overlaps = HashMap::from([("b".to_string(), 8usize)]);
        let context = PickContext { overlaps: Some((&overlaps, 8)), ..Default::default() };
        let mut rng = rand::rng();
        for _ in 0..20 {
            assert_eq!(pick(RouterMode::Kv, &choices, &context, &KvScoring::default(), &mut rng), Some(1));
        }
    }
}
