//! How a frontend routes: `--router-mode` and the KV router's tuning, under Dynamo's names and
//! variables (Tritium's earlier names stay as aliases), with Dynamo's `--x` / `--no-x` pairs for
//! booleans.

use std::time::Duration;

use clap::Args;
use clap::builder::BoolishValueParser;

use tritium_cluster::routing::active::Tracking;
use tritium_cluster::routing::kv_index::KvScoring;
use tritium_cluster::routing::queue::{QueueOptions, QueuePolicy};
use tritium_cluster::routing::sessions::{AffinityMode, AffinityOptions, DEFAULT_MAX_SESSIONS, MAX_SESSION_TTL_SECS};
use tritium_cluster::routing::{RouterMode, RouterOptions};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Routing")]
pub struct RouterArgs {
    /// Token sent to remote workers on the worker plane (they must be started with the same).
    #[arg(long = "worker-token", env = "TRITIUM_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// How a request's worker is chosen among those serving its model.
    #[arg(long, env = "DYN_ROUTER_MODE", value_enum, default_value = "round-robin")]
    pub router_mode: RouterMode,
    /// Dynamo's load-aware preset: --router-mode kv with the overlap credit at 0 and KV events
    /// off, so workers are chosen by their load alone.
    #[arg(long, env = "DYN_ROUTER_LOAD_AWARE", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub load_aware: bool,
    /// Turns --load-aware off (it wins over --load-aware and its variable).
    #[arg(long)]
    pub no_load_aware: bool,
    /// Times a language-model stream whose worker died is continued on another worker; 0 ends
    /// such streams with UNAVAILABLE (Dynamo's default is 0).
    #[arg(long, env = "DYN_MIGRATION_LIMIT", default_value_t = 3)]
    pub migration_limit: u32,
    /// Tokens per KV block (must match the workers' engines). `--kv-block-size` is Tritium's name.
    #[arg(long = "kv-cache-block-size", visible_alias = "kv-block-size", env = "DYN_KV_CACHE_BLOCK_SIZE",
          default_value_t = tritium_backend_api::kv::DEFAULT_KV_BLOCK_SIZE)]
    pub kv_block_size: usize,
    /// kv mode: weight in [0, 1] of the cached-prefix share in a worker's score (0: load only).
    /// `--kv-overlap-weight` is Tritium's name.
    #[arg(
        long = "router-kv-overlap-score-credit",
        visible_alias = "kv-overlap-weight",
        env = "DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT",
        default_value_t = 1.0,
        allow_negative_numbers = true
    )]
    pub kv_overlap_weight: f64,
    /// kv mode: weight of the load in a worker's score.
    #[arg(long, env = "TRITIUM_KV_LOAD_WEIGHT", default_value_t = 1.0)]
    pub kv_load_weight: f64,
    /// kv mode: 0 picks the best score; higher values sample from softmax(score / temperature).
    /// `--kv-temperature` is Tritium's name.
    #[arg(
        long = "router-temperature",
        visible_alias = "kv-temperature",
        env = "DYN_ROUTER_TEMPERATURE",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub kv_temperature: f64,
    /// kv mode: score cached prefixes from the workers' KV events; with --no-router-kv-events the
    /// router predicts them instead: a prompt's blocks are assumed held by the worker it was sent
    /// to for --router-ttl-secs.
    #[arg(long = "router-kv-events", visible_alias = "kv-events", env = "DYN_ROUTER_USE_KV_EVENTS", default_value_t = true,
          num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = BoolishValueParser::new())]
    pub router_kv_events: bool,
    /// Turns --router-kv-events off (it wins over --router-kv-events and its variable).
    #[arg(long = "no-router-kv-events", visible_alias = "no-kv-events")]
    pub no_router_kv_events: bool,
    /// With --no-router-kv-events: share this router's predictions with the other frontends'
    /// routers over the event plane and take theirs, so a prefix warmed through one is routed to
    /// the same worker through another.
    #[arg(long, env = "DYN_ROUTER_REPLICA_SYNC", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_replica_sync: bool,
    /// Turns --router-replica-sync off (it wins over --router-replica-sync and its variable).
    #[arg(long)]
    pub no_router_replica_sync: bool,
    /// Tasks applying the workers' KV events to the router's index (1..=64); each worker's events
    /// go to one of them, in order.
    #[arg(long, env = "DYN_ROUTER_EVENT_THREADS", default_value_t = 4)]
    pub router_event_threads: usize,
    /// KV events applied between two snapshots of the router's index in the namespace's shared
    /// store (etcd or the discovery folder), from which a frontend starting later restores it.
    #[arg(long, env = "DYN_ROUTER_SNAPSHOT_THRESHOLD", default_value_t = 1_000_000)]
    pub router_snapshot_threshold: u64,
    /// Start from an empty index and delete the stored snapshot.
    #[arg(long, env = "DYN_ROUTER_RESET_STATES", default_value_t = false, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_reset_states: bool,
    /// Turns --router-reset-states off (it wins over --router-reset-states and its variable).
    #[arg(long)]
    pub no_router_reset_states: bool,
    /// Seconds a predicted block is assumed held (with --no-router-kv-events).
    #[arg(long, env = "DYN_ROUTER_TTL_SECS", default_value_t = 120.0, allow_negative_numbers = true)]
    pub router_ttl_secs: f64,
    /// kv mode: count the KV blocks of the requests this router has running on each worker as its
    /// load (shared prompt blocks once, with --router-assume-kv-reuse) and price workers as Dynamo
    /// does. On by default, as Dynamo 1.6.1. --no-router-track-active-blocks scores the workers'
    /// reported load instead, which measured better on a shared-prefix workload
    /// (test_distributed.py, 2 mock workers, 3 requests at a time: 77.5 % of prompt tokens cached
    /// at 39-42 ms to first token, against Dynamo's price's 52-54 % at 57-61 ms).
    #[arg(long = "router-track-active-blocks", visible_alias = "track-active-blocks", env = "DYN_ROUTER_TRACK_ACTIVE_BLOCKS", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_track_active_blocks: bool,
    /// Turns --router-track-active-blocks off (it wins over --router-track-active-blocks and its variable).
    #[arg(long = "no-router-track-active-blocks", visible_alias = "no-track-active-blocks")]
    pub no_router_track_active_blocks: bool,
    /// kv mode: a running request's load grows by a block every --kv-cache-block-size tokens it
    /// generates.
    #[arg(long = "router-track-output-blocks", visible_alias = "track-output-blocks", env = "DYN_ROUTER_TRACK_OUTPUT_BLOCKS", default_value_t = false, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_track_output_blocks: bool,
    /// Turns --router-track-output-blocks off (it wins over --router-track-output-blocks and its variable).
    #[arg(long = "no-router-track-output-blocks", visible_alias = "no-track-output-blocks")]
    pub no_router_track_output_blocks: bool,
    /// kv mode: requests sharing a prompt prefix on a worker share its blocks (off: each request's
    /// blocks count on their own).
    #[arg(long = "router-assume-kv-reuse", visible_alias = "assume-kv-reuse", env = "DYN_ROUTER_ASSUME_KV_REUSE", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_assume_kv_reuse: bool,
    /// Turns --router-assume-kv-reuse off (it wins over --router-assume-kv-reuse and its variable).
    #[arg(long = "no-router-assume-kv-reuse", visible_alias = "no-assume-kv-reuse")]
    pub no_router_assume_kv_reuse: bool,
    /// kv mode: prompt tokens a worker has not prefilled yet (until each request's first token) are
    /// load.
    #[arg(long = "router-track-prefill-tokens", env = "DYN_ROUTER_TRACK_PREFILL_TOKENS", default_value_t = true, num_args = 0..=1,
          default_missing_value = "true", action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub router_track_prefill_tokens: bool,
    /// Turns --router-track-prefill-tokens off (it wins over --router-track-prefill-tokens and its variable).
    #[arg(long = "no-router-track-prefill-tokens")]
    pub no_router_track_prefill_tokens: bool,
    /// kv mode: the weight of prefill work (the request's uncached blocks, and the prompts a worker
    /// has still to prefill) against the blocks it holds.
    #[arg(long, env = "DYN_ROUTER_PREFILL_LOAD_SCALE", default_value_t = 1.0, allow_negative_numbers = true)]
    pub router_prefill_load_scale: f64,
    /// A language-model worker whose KV cache is fuller than this fraction (0..1] is busy: the
    /// router passes it over, and refuses requests (503, Retry-After) when all are. Per model:
    /// `POST /busy_threshold`. Unset: workers are never busy.
    #[arg(long, env = "DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD", value_parser = parse_optional_f64)]
    pub active_decode_blocks_threshold: Option<OrNone<f64>>,
    /// A worker with more prompt tokens of this router's requests still to prefill than this is
    /// busy (passed over; all busy: 503). `None` or unset: no such limit.
    #[arg(long, env = "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD", value_parser = parse_optional_u64)]
    pub active_prefill_tokens_threshold: Option<OrNone<u64>>,
    /// ... or more than this fraction (> 0) of the tokens one of its engine steps prefills (its
    /// `max_batched_tokens`, from its load reports on the event plane).
    #[arg(long, env = "DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD_FRAC", value_parser = parse_optional_f64, allow_negative_numbers = true)]
    pub active_prefill_tokens_threshold_frac: Option<OrNone<f64>>,
    /// `token-capacity` applies the busy thresholds above; `none` turns them all off.
    #[arg(long, env = "DYN_ADMISSION_CONTROL", default_value = "token-capacity", value_parser = ["token-capacity", "none"])]
    pub admission_control: String,
    /// device-aware-weighted mode: how many CPU workers' load one accelerator worker takes (>= 1).
    #[arg(long, env = "DYN_ENCODER_CUDA_TO_CPU_RATIO", default_value_t = 8)]
    pub non_cpu_to_cpu_ratio: u32,
    /// Language-model requests wait in the router while every worker of their model has more of
    /// this router's prompt tokens to prefill than this fraction (>= 0) of what one engine step
    /// prefills (its reported `max_batched_tokens`); unset: they never wait there.
    #[arg(long, env = "DYN_ROUTER_QUEUE_THRESHOLD", value_parser = parse_optional_f64, allow_negative_numbers = true)]
    pub router_queue_threshold: Option<OrNone<f64>>,
    /// The order requests leave the router's queue in: fcfs (arrival, the more urgent priority
    /// first), wspt (fewest prompt tokens per priority weight first) or lcfs (newest first).
    #[arg(long, env = "DYN_ROUTER_QUEUE_POLICY", value_enum, default_value = "fcfs")]
    pub router_queue_policy: QueuePolicy,
    /// Requests the router's queue holds at most; beyond it they are refused (503).
    #[arg(long, env = "TRITIUM_ROUTER_QUEUE_MAX_REQUESTS", default_value_t = 1024)]
    pub router_queue_max_requests: usize,
    /// With decode workers (`--disaggregation-mode decode`) and no prefill worker up, the decode
    /// workers prefill and decode requests themselves; with --no-decode-fallback such requests are
    /// refused (503) until a prefill worker is up.
    #[arg(long, env = "DYN_DECODE_FALLBACK", default_value_t = true, num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub decode_fallback: bool,
    /// Turns --decode-fallback off (it wins over --decode-fallback and its variable).
    #[arg(long)]
    pub no_decode_fallback: bool,
    /// With prefill workers (`tritium worker --disaggregation-mode prefill`) serving a model: a
    /// prompt whose part the chosen decode worker lacks is longer than this many tokens is
    /// prefilled on a prefill worker; shorter ones are prefilled where they decode.
    #[arg(long, env = "TRITIUM_MAX_LOCAL_PREFILL_LENGTH", default_value_t = tritium_cluster::routing::policy::DEFAULT_MAX_LOCAL_PREFILL_LENGTH)]
    pub max_local_prefill_length: usize,
    /// Keep each agent session's requests (header `x-dynamo-session-id`, or the coding agents'
    /// session headers) on the worker its first request went to, until the session has been idle
    /// this many seconds (1..=31536000). Off when not given.
    #[arg(long, env = "DYN_ROUTER_SESSION_AFFINITY_TTL_SECS")]
    pub router_session_affinity_ttl_secs: Option<u64>,
    /// hard: a bound session's requests go to its worker (a new one is picked when it left or
    /// could not be reached); soft: its worker is tried first, the policy picks when it is busy or
    /// away, and the binding follows.
    #[arg(long, env = "DYN_ROUTER_SESSION_AFFINITY_MODE", value_enum, default_value = "hard")]
    pub router_session_affinity_mode: AffinityMode,
    /// Sessions the router holds at most; a new session past it is refused (429) until some
    /// expire.
    #[arg(long, env = "TRITIUM_ROUTER_SESSION_AFFINITY_MAX_SESSIONS", default_value_t = DEFAULT_MAX_SESSIONS)]
    pub router_session_affinity_max_sessions: usize,
}

/// A value, or `None` (Dynamo's way to leave a threshold unset).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrNone<T>(pub Option<T>);

fn parse_optional_f64(text: &str) -> Result<OrNone<f64>, String> {
    match text {
        "None" | "none" => Ok(OrNone(None)),
        _ => text.parse().map(|v| OrNone(Some(v))).map_err(|_| format!("'{text}' is not a number (or None)")),
    }
}

fn parse_optional_u64(text: &str) -> Result<OrNone<u64>, String> {
    match text {
        "None" | "none" => Ok(OrNone(None)),
        _ => text.parse().map(|v| OrNone(Some(v))).map_err(|_| format!("'{text}' is not a token count (or None)")),
    }
}

/// The most sessions a router may be told to hold (each costs about a hundred bytes and its id).
const MAX_SESSIONS_LIMIT: usize = 16 << 20;

/// The longest prediction: a day (an `Instant` far in the future could overflow).
const MAX_ROUTER_TTL_SECS: f64 = 86_400.0;

impl RouterArgs {
    pub fn options(&self, lease_ttl: Duration) -> Result<RouterOptions, String> {
        if self.kv_block_size == 0 {
            return Err("--kv-cache-block-size must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.kv_overlap_weight) {
            return Err(format!("--router-kv-overlap-score-credit must be in [0, 1], got {}", self.kv_overlap_weight));
        }
        if !(self.kv_temperature >= 0.0 && self.kv_temperature.is_finite()) {
            return Err(format!("--router-temperature must be a finite number >= 0, got {}", self.kv_temperature));
        }
        if !(self.router_ttl_secs > 0.0 && self.router_ttl_secs <= MAX_ROUTER_TTL_SECS) {
            return Err(format!("--router-ttl-secs must be in (0, {MAX_ROUTER_TTL_SECS}], got {}", self.router_ttl_secs));
        }
        if !(self.router_prefill_load_scale >= 0.0 && self.router_prefill_load_scale.is_finite()) {
            return Err(format!(
                "--router-prefill-load-scale must be a finite number >= 0, got {}",
                self.router_prefill_load_scale
            ));
        }
        let prefill_frac = self.active_prefill_tokens_threshold_frac.and_then(|v| v.0);
        if prefill_frac.is_some_and(|f| !(f > 0.0 && f.is_finite())) {
            return Err(format!(
                "--active-prefill-tokens-threshold-frac must be a number > 0, got {}",
                prefill_frac.unwrap_or(0.0)
            ));
        }
        if !(1..=64).contains(&self.router_event_threads) {
            return Err(format!("--router-event-threads must be in 1..=64, got {}", self.router_event_threads));
        }
        if self.non_cpu_to_cpu_ratio == 0 {
            return Err("--non-cpu-to-cpu-ratio must be at least 1".into());
        }
        if self.router_snapshot_threshold == 0 {
            return Err("--router-snapshot-threshold must be at least 1".into());
        }
        if self.router_session_affinity_ttl_secs.is_some_and(|ttl| !(1..=MAX_SESSION_TTL_SECS).contains(&ttl)) {
            return Err(format!("--router-session-affinity-ttl-secs must be between 1 and {MAX_SESSION_TTL_SECS}"));
        }
        if !(1..=MAX_SESSIONS_LIMIT).contains(&self.router_session_affinity_max_sessions) {
            return Err(format!("--router-session-affinity-max-sessions must be in 1..={MAX_SESSIONS_LIMIT}"));
        }
        let admission = self.admission_control == "token-capacity";
        let queue_threshold = self.router_queue_threshold.and_then(|v| v.0);
        if queue_threshold.is_some_and(|t| !(t >= 0.0 && t.is_finite())) {
            return Err(format!("--router-queue-threshold must be a number >= 0, got {}", queue_threshold.unwrap_or(0.0)));
        }
        let load_aware = self.load_aware && !self.no_load_aware;
        let kv_events = self.router_kv_events && !self.no_router_kv_events && !load_aware;
        // Dynamo's load-aware preset tracks active blocks and prefill tokens, without kv reuse.
        let tracking = Tracking {
            active_blocks: load_aware || (self.router_track_active_blocks && !self.no_router_track_active_blocks),
            output_blocks: self.router_track_output_blocks && !self.no_router_track_output_blocks,
            prefill_tokens: load_aware || (self.router_track_prefill_tokens && !self.no_router_track_prefill_tokens),
            assume_kv_reuse: !load_aware && self.router_assume_kv_reuse && !self.no_router_assume_kv_reuse,
            prefill_load_scale: self.router_prefill_load_scale,
        };
        Ok(RouterOptions {
            mode: if load_aware { RouterMode::Kv } else { self.router_mode },
            kv: KvScoring {
                overlap_weight: if load_aware { 0.0 } else { self.kv_overlap_weight },
                load_weight: self.kv_load_weight,
                temperature: self.kv_temperature,
                tracked: tracking.active_blocks,
                prefill_load_scale: self.router_prefill_load_scale,
                block_size: self.kv_block_size,
            },
            kv_block_size: self.kv_block_size,
            migration_limit: self.migration_limit,
            suspect_for: lease_ttl,
            worker_token: self.worker_token.clone().filter(|t| !t.is_empty()),
            // Set from the cluster options (`--engine-grpc-*`) by the caller.
            engine_limits: Default::default(),
            busy_threshold: self
                .active_decode_blocks_threshold
                .and_then(|v| v.0)
                .filter(|_| admission)
                .map(tritium_cluster::routing::busy::BusyThresholds::check)
                .transpose()
                .map_err(|e| format!("--active-decode-blocks-threshold: {e}"))?,
            prefill_tokens_threshold: self.active_prefill_tokens_threshold.and_then(|v| v.0).filter(|_| admission),
            prefill_tokens_threshold_frac: prefill_frac.filter(|_| admission),
            decode_fallback: self.decode_fallback && !self.no_decode_fallback,
            accelerator_weight: self.non_cpu_to_cpu_ratio,
            replica_sync: self.router_replica_sync && !self.no_router_replica_sync,
            event_threads: self.router_event_threads,
            snapshot_threshold: self.router_snapshot_threshold,
            reset_states: self.router_reset_states && !self.no_router_reset_states,
            queue: queue_threshold.map(|threshold| QueueOptions {
                threshold,
                policy: self.router_queue_policy,
                max_requests: self.router_queue_max_requests,
            }),
            max_local_prefill_length: self.max_local_prefill_length,
            kv_events,
            prediction_ttl: Duration::from_secs_f64(self.router_ttl_secs),
            tracking,
            affinity: self.router_session_affinity_ttl_secs.map(|ttl| AffinityOptions {
                ttl: Duration::from_secs(ttl),
                mode: self.router_session_affinity_mode,
                max_sessions: self.router_session_affinity_max_sessions,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        router: RouterArgs,
    }

    fn options(args: &[&str]) -> Result<RouterOptions, String> {
        let flags = Flags::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?;
        flags.router.options(Duration::from_secs(10))
    }

    #[test]
    fn dynamo_names_and_tritium_aliases_set_the_same_options() {
        let dynamo =
            options(&["--router-kv-overlap-score-credit", "0.25", "--router-temperature", "0.5", "--kv-cache-block-size", "32"])
                .expect("dynamo");
        let ours = options(&["--kv-overlap-weight", "0.25", "--kv-temperature", "0.5", "--kv-block-size", "32"]).expect("ours");
        for o in [&dynamo, &ours] {
            assert_eq!((o.kv.overlap_weight, o.kv.temperature, o.kv_block_size), (0.25, 0.5, 32));
        }
    }

    #[test]
    fn the_no_flag_of_a_pair_wins() {
        assert!(options(&[]).expect("default").kv_events);
        assert!(!options(&["--no-router-kv-events"]).expect("off").kv_events);
        assert!(!options(&["--no-kv-events"]).expect("old name").kv_events);
        assert!(!options(&["--no-router-kv-events", "--router-kv-events"]).expect("no- first").kv_events);
        assert!(!options(&["--router-kv-events", "--no-router-kv-events"]).expect("no- last").kv_events);
        assert!(options(&["--router-kv-events"]).expect("on").kv_events);
        assert!(!options(&["--router-kv-events=false"]).expect("=false").kv_events);
        let ttl = options(&["--no-router-kv-events", "--router-ttl-secs", "2.5"]).expect("ttl");
        assert_eq!(ttl.prediction_ttl, Duration::from_millis(2500));
    }

    #[test]
    fn load_aware_is_kv_routing_by_load_alone() {
        let preset =
            options(&["--load-aware", "--router-mode", "round-robin", "--no-router-track-active-blocks"]).expect("preset");
        assert_eq!((preset.mode, preset.kv.overlap_weight, preset.kv_events), (RouterMode::Kv, 0.0, false));
        let t = preset.tracking;
        assert!(t.active_blocks && t.prefill_tokens && !t.assume_kv_reuse && preset.kv.tracked);
        let undone = options(&["--load-aware", "--no-load-aware"]).expect("undone");
        assert_eq!((undone.mode, undone.kv.overlap_weight, undone.kv_events), (RouterMode::RoundRobin, 1.0, true));
    }

    #[test]
    fn tracking_flags_follow_dynamos_defaults_and_pairs() {
        let default = options(&[]).expect("default");
        assert_eq!(default.tracking, Tracking { active_blocks: true, ..Tracking::default() }, "Dynamo 1.6.1's defaults");
        assert!(default.kv.tracked, "Dynamo's price unless --no-router-track-active-blocks");
        assert!(!options(&["--no-router-track-active-blocks"]).expect("off").kv.tracked, "the reported-load score");
        let off = options(&[
            "--no-router-track-active-blocks",
            "--no-track-output-blocks",
            "--router-track-output-blocks",
            "--no-router-assume-kv-reuse",
            "--no-router-track-prefill-tokens",
            "--router-prefill-load-scale",
            "2",
        ])
        .expect("off");
        let t = off.tracking;
        assert!(!t.active_blocks && !t.output_blocks && !t.assume_kv_reuse && !t.prefill_tokens, "{t:?}");
        assert_eq!((off.kv.tracked, off.kv.prefill_load_scale), (false, 2.0));
        assert!(options(&["--track-output-blocks"]).expect("old name").tracking.output_blocks);
    }

    #[test]
    fn busy_thresholds_take_none_and_admission_control_none_clears_them() {
        let on = options(&[
            "--active-decode-blocks-threshold",
            "0.8",
            "--active-prefill-tokens-threshold",
            "500",
            "--active-prefill-tokens-threshold-frac",
            "1.5",
        ])
        .expect("on");
        assert_eq!(
            (on.busy_threshold, on.prefill_tokens_threshold, on.prefill_tokens_threshold_frac),
            (Some(0.8), Some(500), Some(1.5))
        );
        let none =
            options(&["--active-decode-blocks-threshold", "None", "--active-prefill-tokens-threshold", "None"]).expect("None");
        assert_eq!((none.busy_threshold, none.prefill_tokens_threshold), (None, None));
        let cleared = options(&[
            "--active-decode-blocks-threshold",
            "0.8",
            "--active-prefill-tokens-threshold",
            "500",
            "--admission-control",
            "none",
        ])
        .expect("cleared");
        assert_eq!((cleared.busy_threshold, cleared.prefill_tokens_threshold), (None, None));
        assert!(options(&["--admission-control", "strict"]).expect_err("refused").contains("token-capacity"));
        assert!(
            options(&[]).expect("default").decode_fallback && !options(&["--no-decode-fallback"]).expect("off").decode_fallback
        );
    }

    #[test]
    fn session_affinity_is_off_unless_its_ttl_is_given() {
        assert_eq!(options(&[]).expect("default").affinity, None);
        let on = options(&["--router-session-affinity-ttl-secs", "600"]).expect("on").affinity.expect("set");
        assert_eq!((on.ttl, on.mode, on.max_sessions), (Duration::from_secs(600), AffinityMode::Hard, DEFAULT_MAX_SESSIONS));
        let soft = options(&["--router-session-affinity-ttl-secs", "5", "--router-session-affinity-mode", "soft"]).expect("soft");
        assert_eq!(soft.affinity.map(|a| a.mode), Some(AffinityMode::Soft));
    }

    #[test]
    fn out_of_range_values_are_refused_naming_the_option() {
        for (args, fragment) in [
            (&["--router-kv-overlap-score-credit", "2"][..], "--router-kv-overlap-score-credit must be in [0, 1]"),
            (&["--router-temperature", "-1"][..], "--router-temperature must be a finite number >= 0"),
            (&["--router-ttl-secs", "0"][..], "--router-ttl-secs must be in"),
            (&["--kv-cache-block-size", "0"][..], "--kv-cache-block-size must be at least 1"),
            (&["--router-prefill-load-scale", "-1"][..], "--router-prefill-load-scale must be a finite number >= 0"),
            (&["--active-prefill-tokens-threshold-frac", "0"][..], "--active-prefill-tokens-threshold-frac must be a number > 0"),
            (&["--router-queue-threshold", "-0.5"][..], "--router-queue-threshold must be a number >= 0"),
            (&["--router-event-threads", "0"][..], "--router-event-threads must be in 1..=64"),
            (&["--router-snapshot-threshold", "0"][..], "--router-snapshot-threshold must be at least 1"),
            (
                &["--router-session-affinity-ttl-secs", "0"][..],
                "--router-session-affinity-ttl-secs must be between 1 and 31536000",
            ),
            (&["--router-session-affinity-ttl-secs", "31536001"][..], "must be between 1 and 31536000"),
            (&["--router-session-affinity-max-sessions", "0"][..], "--router-session-affinity-max-sessions must be in"),
        ] {
            let error = options(args).expect_err("refused");
            assert!(error.contains(fragment), "{args:?}: {error}");
        }
        let error = options(&["--router-mode", "xyz"]).expect_err("refused");
        for mode in ["round-robin", "random", "power-of-two", "least-loaded", "kv", "direct"] {
            assert!(error.contains(mode), "the allowed modes are named: {error}");
        }
        assert!(options(&["--router-kv-events=maybe"]).is_err());
        let error = options(&["--router-queue-policy", "xyz"]).expect_err("refused");
        assert!(["fcfs", "wspt", "lcfs"].iter().all(|p| error.contains(p)), "{error}");
        let queue = options(&["--router-queue-threshold", "0", "--router-queue-policy", "lcfs"]).expect("queue").queue;
        assert_eq!(queue.map(|q| (q.threshold, q.policy)), Some((0.0, QueuePolicy::Lcfs)));
        assert!(options(&[]).expect("default").queue.is_none());
    }
}
