//! The model repository's options: `--model-repository` and its control mode, `--model-path`
//! for language and embedding models with their engine bounds, and the repository options they
//! make.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tritium_backend_api::config_params::BackendSettings;
use tritium_worker::registry::on_demand::OnDemandOptions;
use tritium_worker::{ControlMode, DeclaredModel, RepositoryOptions, SchedulerLimits};

use super::cluster::EngineArgs;
use crate::backends::BackendsConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelControlMode {
    None,
    Explicit,
    Poll,
    OnDemand,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model repository")]
pub struct RepositoryArgs {
    /// Model repository (Triton layout): a folder, or an object store's `s3://bucket/path`,
    /// `s3://[http://|https://]HOST:PORT/bucket/path`, `gs://bucket/path`,
    /// `as://account/container/path`; repeatable, mixable. Without one, the built-in repository
    /// (identity, identity_batch, add_sub, repeat, dense, accumulate, add_sub_twice) is served.
    #[arg(long = "model-repository", env = "TRITIUM_MODEL_REPOSITORY", value_delimiter = ',')]
    pub model_repository: Vec<String>,
    /// Where models of object-store repositories are copied before they load (created 0700 if
    /// missing, kept at exit); default: a private temporary folder removed at exit.
    #[arg(long, env = "TRITIUM_CLOUD_CACHE_DIR")]
    pub cloud_cache_dir: Option<PathBuf>,
    /// Bytes one model of an object-store repository may hold (all its objects); a larger model
    /// does not load.
    #[arg(long, env = "TRITIUM_CLOUD_MAX_MODEL_BYTES", default_value_t = 64 << 30)]
    pub cloud_max_model_bytes: u64,
    /// Objects one model of an object-store repository may hold; more and it does not load.
    #[arg(long, env = "TRITIUM_CLOUD_MAX_MODEL_OBJECTS", default_value_t = 10_000)]
    pub cloud_max_model_objects: usize,
    /// none: load all at start; explicit: load what --load-model names and what clients ask for;
    /// poll: load all and follow changes; on-demand: list every model and load each at its first
    /// request (inference, metadata, config or readiness), unloading the least recently used idle
    /// model past --max-loaded-models / --model-memory-budget; clients load and unload too.
    #[arg(long, env = "TRITIUM_MODEL_CONTROL_MODE", value_enum, default_value = "none")]
    pub model_control_mode: ModelControlMode,
    /// On-demand mode: the most models loaded at once (at least 1; default: no limit).
    #[arg(long, env = "TRITIUM_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,
    /// On-demand mode: the most bytes of models loaded at once, a model counting as the total size
    /// of its files on disk (its folder in the repository; 0 for built-in models); a model larger
    /// than the budget does not load. Default: no limit.
    #[arg(long, env = "TRITIUM_MODEL_MEMORY_BUDGET")]
    pub model_memory_budget: Option<u64>,
    /// On-demand mode: a model loaded at start and never evicted; repeatable.
    #[arg(long = "pin-model", env = "TRITIUM_PIN_MODEL", value_delimiter = ',')]
    pub pin_model: Vec<String>,
    /// Model to load at start in explicit mode; repeatable; `*` loads every model.
    #[arg(long = "load-model", env = "TRITIUM_LOAD_MODEL", value_delimiter = ',')]
    pub load_model: Vec<String>,
    /// Seconds between repository polls in poll mode.
    #[arg(long, env = "TRITIUM_REPOSITORY_POLL_SECS", default_value_t = 15)]
    pub repository_poll_secs: u64,
    /// Serve configs exactly as written: no backend fills in what `config.pbtxt` leaves out, and
    /// a model folder without one does not load.
    #[arg(long, env = "TRITIUM_DISABLE_AUTO_COMPLETE_CONFIG")]
    pub disable_auto_complete_config: bool,
    /// Requests a dynamic batcher's priority level, or a sequence batcher, holds when the config
    /// sets no `max_queue_size` (Triton: unbounded); beyond it, UNAVAILABLE.
    #[arg(long, env = "TRITIUM_SCHEDULER_MAX_QUEUE_SIZE", default_value_t = SchedulerLimits::default().max_queue_size)]
    pub scheduler_max_queue_size: usize,
    /// Sequences one stateful model keeps at once (each holds its state); a new sequence beyond
    /// it is refused UNAVAILABLE.
    #[arg(long, env = "TRITIUM_MAX_SEQUENCES_PER_MODEL", default_value_t = SchedulerLimits::default().max_sequences)]
    pub max_sequences_per_model: usize,
    /// Triton's `<backend>,<setting>=<value>` or `<setting>=<value>` (every backend); repeatable.
    /// onnxruntime reads `default-max-batch-size` (4), `thread-spinning` (false: the shared
    /// intra-op pool's threads block between runs rather than spin) and
    /// `solo-session-max-byte-size` (256 MiB: a CPU model on that pool whose model file's folder
    /// holds no more also opens a session whose own pool spins while it runs, for requests that
    /// find no other run in flight; 0: none); python reads `stub-timeout-seconds` (30),
    /// `shm-region-byte-size` (64 MiB per instance), `packed-env-max-byte-size` (8 GiB) and
    /// `packed-env-max-entries` (200000), the last two bounding an EXECUTION_ENV_PATH archive.
    #[arg(long = "backend-config", env = "TRITIUM_BACKEND_CONFIG", value_delimiter = ';')]
    pub backend_config: Vec<String>,
    /// The ONNX Runtime library (libonnxruntime.so, 1.31); default: $ORT_DYLIB_PATH (the variable
    /// the `ort` crate reads), else what `scripts/install-onnxruntime.sh` installed.
    #[arg(long, env = "TRITIUM_ONNXRUNTIME_LIBRARY")]
    pub onnxruntime_library: Option<PathBuf>,
    /// The Python interpreter of python-backend models (numpy required) unless a model's
    /// EXECUTION_ENV_PATH names its own; default: `python3` on PATH.
    #[arg(long, env = "TRITIUM_PYTHON_INTERPRETER")]
    pub python_interpreter: Option<PathBuf>,
}

impl RepositoryArgs {
    /// The backend crates' settings: `--backend-config` (each backend reads its own keys), the ONNX
    /// Runtime library and the Python interpreter, and the language-model engine's bounds.
    /// A backend's own flag given to a server built without that backend is refused, not ignored.
    pub fn backends(&self, models: &ModelArgs) -> Result<BackendsConfig, String> {
        // Parsed whatever backends are built in: a malformed value is refused either way.
        let settings = BackendSettings::parse(&self.backend_config)?;
        let without = |flag: &str, feature: &str| format!("{flag}: this server was built without the {feature} feature");
        #[cfg(not(feature = "onnxruntime"))]
        if self.onnxruntime_library.is_some() {
            return Err(without("--onnxruntime-library", "onnxruntime"));
        }
        #[cfg(not(feature = "python"))]
        if self.python_interpreter.is_some() {
            return Err(without("--python-interpreter", "python"));
        }
        let _ = (&settings, models, without);
        Ok(BackendsConfig {
            #[cfg(feature = "llm")]
            llm: engine_options(models)?,
            #[cfg(feature = "onnxruntime")]
            onnxruntime: tritium_onnxruntime::OrtSettings::from_backend_config(&settings, self.onnxruntime_library.clone())?,
            #[cfg(feature = "python")]
            python: tritium_python::PythonSettings::from_backend_config(&settings, self.python_interpreter.clone())?,
            // Set from the cluster options (`--engine-grpc-*`) by the caller.
            engines: Default::default(),
        })
    }
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Language and embedding models")]
pub struct ModelArgs {
    /// Serve the model at PATH: a GGUF file or a Hugging Face folder (a causal LM, or a sentence
    /// embedder, told apart from its files); repeatable. Without --model-repository, only these
    /// are served.
    #[arg(long = "model-path", env = "DYN_MODEL_PATH", value_delimiter = ',')]
    pub model_path: Vec<PathBuf>,
    /// The name of the --model-path at the same position (default: the file stem or folder name).
    #[arg(long = "model-name", env = "DYN_MODEL_NAME", value_delimiter = ',')]
    pub model_name: Vec<String>,
    /// Sequences a language model decodes together in one batch.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_MAX_SEQUENCES", default_value_t = tritium_llm::EngineOptions::default().max_sequences)]
    pub llm_max_sequences: usize,
    /// KV-cache positions of one model's block pool, shared by the running sequences and the
    /// prefix cache. Sequences take blocks as they grow; when none is left the newest sequence is
    /// preempted (and resumes later from the prefix cache).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_MAX_KV_TOKENS", default_value_t = tritium_llm::EngineOptions::default().max_kv_tokens)]
    pub llm_max_kv_tokens: usize,
    /// Positions per KV-cache block: the unit of allocation, of prefix reuse and of KV events.
    /// Keep it equal to the router's --kv-cache-block-size for KV-aware routing.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_KV_BLOCK_SIZE", default_value_t = tritium_llm::EngineOptions::default().kv_block_size)]
    pub llm_kv_block_size: usize,
    /// Turns the prefix cache off: every prompt is computed in full and no KV events are sent.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_NO_PREFIX_CACHE")]
    pub llm_no_prefix_cache: bool,
    /// A folder for the KV cache's offload tier: blocks evicted from memory are written there and
    /// read back instead of computed. Each model gets a subfolder, emptied at start-up.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_KV_OFFLOAD_DIR")]
    pub llm_kv_offload_dir: Option<PathBuf>,
    /// Bytes of block files the offload tier keeps per model (least recently used go first).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_KV_OFFLOAD_BYTES", default_value_t = 1 << 30)]
    pub llm_kv_offload_bytes: u64,
    /// Requests that may wait for a place in the batch; beyond it they are refused with
    /// RESOURCE_EXHAUSTED (HTTP 429).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_MAX_QUEUE", default_value_t = tritium_llm::EngineOptions::default().max_queue)]
    pub llm_max_queue: usize,
    /// Bytes of one request's output grammar (response_format JSON schema, guided regex, choices
    /// or Lark grammar, forced tool calls' schemas), at most; beyond it the request is refused.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_MAX_CONSTRAINT_BYTES", default_value_t = tritium_llm::EngineOptions::default().max_constraint_bytes)]
    pub llm_max_constraint_bytes: usize,
    /// Prompt tokens fed per decode step over all new sequences (chunked prefill).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_LLM_PREFILL_CHUNK", default_value_t = tritium_llm::EngineOptions::default().prefill_chunk)]
    pub llm_prefill_chunk: usize,
    /// How a language model orders its waiting requests: `fcfs` (arrival order) or `priority`
    /// (vLLM's `priority`, lower first; Dynamo's `nvext.agent_hints`; the KServe `priority`
    /// parameter): the most urgent are admitted first, preempt less urgent running sequences when
    /// the batch is full, and the least urgent give way when the KV pool runs dry.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_SCHEDULING_POLICY", default_value = "fcfs", value_parser = parse_scheduling_policy)]
    pub scheduling_policy: tritium_llm::SchedulingPolicy,
    /// Speculative decoding for language models: `ngram` proposes, at each step, the tokens that
    /// followed the latest earlier occurrence of a sequence's last tokens (prompt lookup); `draft`
    /// the greedy tokens of --draft-model-path. The model keeps those it draws itself (answers
    /// are unchanged).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_SPECULATIVE", value_parser = ["ngram", "draft"])]
    pub speculative: Option<String>,
    /// A smaller model with the same tokenizer (GGUF file or Hugging Face folder) whose greedy
    /// tokens are the speculative proposals (implies --speculative draft).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_DRAFT_MODEL_PATH")]
    pub draft_model_path: Option<PathBuf>,
    /// Tokens proposed per step at most, with --speculative.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_NUM_SPECULATIVE_TOKENS", default_value_t = tritium_llm::SpeculativeOptions::default().num_tokens)]
    pub num_speculative_tokens: usize,
    /// The shortest suffix of a sequence looked up earlier in it, with --speculative ngram.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_PROMPT_LOOKUP_MIN", default_value_t = tritium_llm::SpeculativeOptions::default().lookup_min)]
    pub prompt_lookup_min: usize,
    /// The longest suffix looked up (tried first), with --speculative ngram.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_PROMPT_LOOKUP_MAX", default_value_t = tritium_llm::SpeculativeOptions::default().lookup_max)]
    pub prompt_lookup_max: usize,
    /// With more sequences decoding than this, none speculates (a wide batch keeps the machine
    /// busy already), with --speculative.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_SPECULATIVE_DISABLE_BY_BATCH_SIZE", default_value_t = tritium_llm::SpeculativeOptions::default().disable_by_batch_size)]
    pub speculative_disable_by_batch_size: usize,
    /// A LoRA adapter to load into every language model served, as NAME=PATH (a GGUF adapter as
    /// llama.cpp writes them, or a PEFT folder); repeatable. Requests name it as their model.
    #[cfg(feature = "llm")]
    #[arg(long = "lora", visible_alias = "lora-modules", env = "TRITIUM_LORA", value_delimiter = ',', value_parser = parse_lora)]
    pub lora: Vec<(String, PathBuf)>,
    /// A folder LoRA adapters may be loaded from at run time (`POST /v1/load_lora_adapter`, whose
    /// paths must lie inside it); without it those routes answer 404.
    #[arg(long, env = "TRITIUM_LORA_DIR")]
    pub lora_dir: Option<PathBuf>,
    /// LoRA adapters one language model holds at once (loaded at start or over HTTP).
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MAX_LORAS", default_value_t = tritium_llm::EngineOptions::default().max_loras)]
    pub max_loras: usize,
    /// The largest LoRA rank accepted.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MAX_LORA_RANK", default_value_t = tritium_llm::EngineOptions::default().max_lora_rank)]
    pub max_lora_rank: usize,
    /// The share of a language model's KV blocks that explicit prompt caching (Anthropic's
    /// `cache_control`) may pin, from 0 (no pins) to 1; past it the pins refreshed longest ago
    /// lapse first.
    #[cfg(feature = "llm")]
    #[arg(long, env = "TRITIUM_MAX_PINNED_KV_FRACTION", default_value_t = 0.5, value_parser = fraction)]
    pub max_pinned_kv_fraction: f64,
}

#[cfg(feature = "llm")]
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("expected a number from 0 to 1, got '{text}'")),
    }
}

#[cfg(feature = "llm")]
fn parse_lora(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok((name.to_string(), PathBuf::from(path))),
        _ => Err(format!("expected NAME=PATH, got '{text}'")),
    }
}

#[cfg(feature = "llm")]
fn parse_scheduling_policy(name: &str) -> Result<tritium_llm::SchedulingPolicy, String> {
    name.parse()
}

#[cfg(feature = "llm")]
fn engine_options(models: &ModelArgs) -> Result<tritium_llm::EngineOptions, String> {
    use tritium_llm::EngineOptions;

    let options = EngineOptions {
        loras: models.lora.clone(),
        max_loras: models.max_loras,
        max_lora_rank: models.max_lora_rank,
        // In [0, 1] (see `fraction`): at most 1000.
        max_pinned_kv_permille: (models.max_pinned_kv_fraction * 1000.0).round() as u16,
        max_sequences: models.llm_max_sequences,
        max_kv_tokens: models.llm_max_kv_tokens,
        max_queue: models.llm_max_queue,
        prefill_chunk: models.llm_prefill_chunk,
        max_constraint_bytes: models.llm_max_constraint_bytes,
        kv_block_size: models.llm_kv_block_size,
        prefix_caching: !models.llm_no_prefix_cache,
        offload: models
            .llm_kv_offload_dir
            .clone()
            .map(|dir| tritium_llm::OffloadOptions { dir, max_bytes: models.llm_kv_offload_bytes }),
        scheduling_policy: models.scheduling_policy,
        draft_model_path: models.draft_model_path.clone(),
        speculative: (models.speculative.is_some() || models.draft_model_path.is_some()).then(|| {
            tritium_llm::SpeculativeOptions {
                num_tokens: models.num_speculative_tokens,
                lookup_min: models.prompt_lookup_min,
                lookup_max: models.prompt_lookup_max,
                disable_by_batch_size: models.speculative_disable_by_batch_size,
            }
        }),
    };
    if let Some(speculative) = &options.speculative {
        speculative.validate()?;
    }
    let defaults = tritium_llm::SpeculativeOptions::default();
    let tuned: Vec<&str> = [
        (models.num_speculative_tokens != defaults.num_tokens, "--num-speculative-tokens"),
        (models.prompt_lookup_min != defaults.lookup_min, "--prompt-lookup-min"),
        (models.prompt_lookup_max != defaults.lookup_max, "--prompt-lookup-max"),
        (models.speculative_disable_by_batch_size != defaults.disable_by_batch_size, "--speculative-disable-by-batch-size"),
    ]
    .into_iter()
    .filter_map(|(given, name)| given.then_some(name))
    .collect();
    if options.speculative.is_none() && !tuned.is_empty() {
        return Err(format!("{} tune speculative decoding: give --speculative (or --draft-model-path) too", tuned.join(", ")));
    }
    let lookups = tuned.iter().any(|name| name.starts_with("--prompt-lookup"));
    if lookups && (models.speculative.as_deref() == Some("draft") || models.draft_model_path.is_some()) {
        return Err("--prompt-lookup-min and --prompt-lookup-max tune --speculative ngram; the draft model proposes here".into());
    }
    match (models.speculative.as_deref(), &models.draft_model_path) {
        (Some("draft"), None) => return Err("--speculative draft needs --draft-model-path".to_string()),
        (Some("ngram"), Some(_)) => {
            return Err("--draft-model-path proposes with a draft model: drop --speculative ngram".to_string());
        }
        _ => {}
    }
    Ok(options)
}

/// The repository options of `--model-repository`, `--model-path` and `--engine mock`.
pub(super) fn repository_options(
    repository: &RepositoryArgs,
    models: &ModelArgs,
    engine: &EngineArgs,
    builtins: bool,
) -> Result<RepositoryOptions, String> {
    let control_mode = match repository.model_control_mode {
        ModelControlMode::None => ControlMode::None,
        ModelControlMode::Explicit => ControlMode::Explicit,
        ModelControlMode::Poll => ControlMode::Poll,
        ModelControlMode::OnDemand => ControlMode::OnDemand,
    };
    let on_demand = on_demand_options(repository)?;
    #[cfg(feature = "llm")]
    let mut declared = engine.mock_models(&models.model_name, models.scheduling_policy)?;
    #[cfg(not(feature = "llm"))]
    let mut declared = engine.mock_models(&models.model_name)?;
    if declared.is_empty() {
        declared = declared_models(&models.model_path, &models.model_name)?;
    } else if !models.model_path.is_empty() {
        return Err("--engine mock simulates its models: give them --model-name, not --model-path".into());
    }
    Ok(RepositoryOptions {
        paths: repository.model_repository.iter().filter(|r| !is_url(r)).map(PathBuf::from).collect(),
        remote: cloud_repositories(repository)?,
        control_mode,
        startup_models: repository.load_model.clone(),
        poll_interval: Duration::from_secs(repository.repository_poll_secs.max(1)),
        declared,
        builtins,
        // Set by the `--rate-limit` flags (config/rate_limit.rs).
        rate_limiter: Default::default(),
        // Set by `--cache-config` (config/cache.rs).
        response_cache: None,
        auto_complete_config: !repository.disable_auto_complete_config,
        scheduler_limits: SchedulerLimits {
            max_queue_size: repository.scheduler_max_queue_size.max(1),
            max_sequences: repository.max_sequences_per_model.max(1),
        },
        on_demand,
    })
}

/// `--max-loaded-models`, `--model-memory-budget` and `--pin-model`, which only on-demand mode reads.
fn on_demand_options(repository: &RepositoryArgs) -> Result<OnDemandOptions, String> {
    let options = OnDemandOptions {
        max_loaded_models: repository.max_loaded_models,
        memory_budget: repository.model_memory_budget,
        pinned: repository.pin_model.clone(),
    };
    if repository.model_control_mode != ModelControlMode::OnDemand {
        if options != OnDemandOptions::default() {
            return Err("--max-loaded-models, --model-memory-budget and --pin-model need --model-control-mode on-demand".into());
        }
        return Ok(options);
    }
    if options.max_loaded_models == Some(0) {
        return Err("--max-loaded-models must be at least 1".into());
    }
    if options.memory_budget == Some(0) {
        return Err("--model-memory-budget must be at least 1 byte".into());
    }
    if let Some(pin) = options.pinned.iter().find(|p| p.is_empty() || *p == "*") {
        return Err(format!("--pin-model '{pin}' does not name a model"));
    }
    if let Some(max) = options.max_loaded_models
        && options.pinned.len() > max
    {
        return Err(format!("{} models pinned with --pin-model, more than --max-loaded-models {max}", options.pinned.len()));
    }
    Ok(options)
}

/// One `config.pbtxt` per `--model-path`: `tritium_llm` for a causal LM, `tritium_embed` for an
/// embedder, pointing at the path (made absolute).
fn declared_models(paths: &[PathBuf], names: &[String]) -> Result<Vec<DeclaredModel>, String> {
    if names.len() > paths.len() {
        return Err(format!("{} --model-name values for {} --model-path values", names.len(), paths.len()));
    }
    let mut declared = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        let path = std::path::absolute(path).map_err(|e| format!("--model-path {}: {e}", path.display()))?;
        let backend = model_path_backend(&path)?;
        let name = match names.get(index) {
            Some(name) => name.clone(),
            None => default_model_name(&path),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!("--model-name '{name}' is not a usable model name"));
        }
        let quoted = serde_json::to_string(&path.display().to_string()).map_err(|e| e.to_string())?;
        let config_text = format!(
            "name: \"{name}\"\nbackend: \"{backend}\"\nparameters {{ key: \"model_path\" value {{ string_value: {quoted} }} }}\n"
        );
        declared.push(DeclaredModel { name, config_text });
    }
    Ok(declared)
}

/// The backend that serves the model at `path`: `tritium_llm` for a causal LM, `tritium_embed` for
/// an embedder.
#[cfg(feature = "llm")]
fn model_path_backend(path: &std::path::Path) -> Result<&'static str, String> {
    use tritium_backend_api::llm::ModelKind;
    match tritium_llm::detect_kind(path).map_err(|e| format!("--model-path {}: {e}", path.display()))? {
        ModelKind::Generate => Ok(tritium_llm::LLM_BACKEND),
        ModelKind::Embed => Ok(tritium_llm::EMBED_BACKEND),
    }
}

#[cfg(not(feature = "llm"))]
fn model_path_backend(path: &std::path::Path) -> Result<&'static str, String> {
    Err(format!("--model-path {}: this server was built without the llm feature", path.display()))
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf` -> `SmolLM2-135M-Instruct.Q4_1`; a folder gives its name.
fn default_model_name(path: &std::path::Path) -> String {
    let name = if path.is_dir() { path.file_name() } else { path.file_stem() };
    name.map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".to_string())
}

/// `scheme://...`: an object store's location rather than a folder.
fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The object-store repositories among `--model-repository` (the `cloud` feature).
fn cloud_repositories(repository: &RepositoryArgs) -> Result<Vec<std::sync::Arc<dyn tritium_worker::RemoteRepository>>, String> {
    let urls: Vec<String> = repository.model_repository.iter().filter(|r| is_url(r)).cloned().collect();
    #[cfg(feature = "cloud")]
    {
        use tritium_cloud_repository::{CloudEnvironment, CloudOptions, Limits};
        let options = CloudOptions {
            cache_dir: repository.cloud_cache_dir.clone(),
            limits: Limits {
                max_bytes: repository.cloud_max_model_bytes.max(1),
                max_objects: repository.cloud_max_model_objects.max(1),
            },
        };
        tritium_cloud_repository::open_repositories(&urls, &options, &CloudEnvironment::from_process())
    }
    #[cfg(not(feature = "cloud"))]
    {
        let without = "this server was built without the cloud feature";
        if let Some(url) = urls.first() {
            return Err(format!("--model-repository {url}: {without}"));
        }
        if repository.cloud_cache_dir.is_some() {
            return Err(format!("--cloud-cache-dir: {without}"));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod cloud_tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        repository: RepositoryArgs,
    }

    fn repositories(args: &[&str]) -> Result<(Vec<PathBuf>, usize), String> {
        let flags = Flags::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?;
        let paths = flags.repository.model_repository.iter().filter(|r| !is_url(r)).map(PathBuf::from).collect();
        Ok((paths, cloud_repositories(&flags.repository)?.len()))
    }

    #[test]
    fn folders_and_urls_are_told_apart() {
        assert!(is_url("s3://bucket/models") && is_url("gs://b") && is_url("as://a/c") && is_url("ftp://x"));
        assert!(!is_url("/models") && !is_url("models") && !is_url("./odd://name"));
        assert_eq!(repositories(&["--model-repository", "/a,/b"]).unwrap(), (vec![PathBuf::from("/a"), PathBuf::from("/b")], 0));
    }

    #[test]
    #[cfg(feature = "cloud")]
    fn cloud_locations_mix_with_folders() {
        // No credentials is not an error here: the repository fails to list, and the others serve.
        let (paths, remote) = repositories(&["--model-repository", "/a", "--model-repository", "s3://bucket/models"]).unwrap();
        assert_eq!((paths, remote), (vec![PathBuf::from("/a")], 1));
        let error = repositories(&["--model-repository", "hdfs://cluster/models"]).unwrap_err();
        assert!(error.contains("unknown scheme 'hdfs'"), "{error}");
    }

    /// `--no-default-features` (CI runs these tests so): a URL repository is refused by name.
    #[test]
    #[cfg(not(feature = "cloud"))]
    fn a_cloud_location_without_the_feature_is_refused() {
        assert_eq!(
            repositories(&["--model-repository", "s3://bucket/models"]).unwrap_err(),
            "--model-repository s3://bucket/models: this server was built without the cloud feature"
        );
        assert_eq!(
            repositories(&["--cloud-cache-dir", "/tmp/cache"]).unwrap_err(),
            "--cloud-cache-dir: this server was built without the cloud feature"
        );
    }

    #[derive(Parser)]
    #[cfg(feature = "llm")]
    struct ModelFlags {
        #[command(flatten)]
        models: ModelArgs,
    }

    /// `--max-pinned-kv-fraction` reaches the engine as a permille, and only 0 to 1 is taken.
    #[test]
    #[cfg(feature = "llm")]
    fn the_pinned_kv_fraction_is_a_share_from_0_to_1() {
        let permille = |value: &str| {
            let flag = format!("--max-pinned-kv-fraction={value}");
            let flags = ModelFlags::try_parse_from(["tritium", flag.as_str()]).map_err(|e| e.to_string())?;
            engine_options(&flags.models).map(|options| options.max_pinned_kv_permille)
        };
        assert_eq!(permille("0.25"), Ok(250));
        assert_eq!(permille("0"), Ok(0));
        assert_eq!(permille("1"), Ok(1000));
        for bad in ["1.5", "-0.1", "half"] {
            let error = permille(bad).unwrap_err();
            assert!(error.contains("--max-pinned-kv-fraction") && error.contains("expected a number from 0 to 1"), "{error}");
        }
        let default = ModelFlags::try_parse_from(["tritium"]).unwrap();
        assert_eq!(engine_options(&default.models).map(|o| o.max_pinned_kv_permille), Ok(500));
    }
}
