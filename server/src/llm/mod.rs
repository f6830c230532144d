//! The frontend's side of language and embedding models: it preprocesses (chat template,
//! tokenization) with each model's card, sends token ids to a worker through the router, and
//! turns the tokens that come back into text. gRPC (KServe `text_input`) and HTTP (OpenAI
//! `/v1/*`) both go through [`LlmFrontend`].

mod bridging_holds;
mod kserve;
mod text_models;

pub mod interactive;

use std::collections::HashMap;
use std::sync::Arc;
use parking_lot::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tritium_backend_api::trace::RequestTrace;
use tritium_backend_api::trace_context::TraceContext;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::{
    EngineStats, GenerateRequest, ModelCard, ModelKind, OpenAiApi, OpenAiChunks, OpenAiRequest, TokenStream,
};
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::metrics::LlmMetrics;
use tritium_openai_bridge::parsers::OutputFormats;
use tritium_openai_bridge::preprocess::workers::{PreprocessWorkers, PromptEncoder};
use tritium_openai_bridge::preprocess::{PreprocessBudget, PreprocessLimits, Preprocessor};
use tritium_openai_bridge::routes::{HubModel, LlmHub};
use tritium_openai_bridge::sampling::CompletionLimits;
use tritium_worker::{ModelRepository, WorkerClient, WorkerError};

use tritium_cluster::routing::Router;

/// Preprocessors are built once per loaded card (a reload brings a new card).
type PreprocessorCache = HashMap<String, (Arc<ModelCard>, Arc<Preprocessor>)>;

pub struct LlmFrontend {
    repository: Arc<ModelRepository>,
    router: Arc<Router>,
    metrics: Arc<LlmMetrics>,
    preprocessors: Mutex<PreprocessorCache>,
    limits: CompletionLimits,
    formats: OutputFormats,
    /// What rendering and tokenizing may hold at once, across all models.
    budget: Arc<PreprocessBudget>,
    /// The server's hard stop (see [`LlmHub::hard_stop`]).
    hard_stop: CancellationToken,
    started: u64,
    /// The server's sampler: the OpenAI routes' requests are traced as the KServe ones are.
    tracer: Arc<tritium_trace::Tracer>,
    /// `--lora-dir`: where adapters loaded at run time must lie (`None`: no loading at run time).
    lora_dir: Option<std::path::PathBuf>,
    /// Where every model's rendering and tokenizing run (`--dyn-preprocess-workers`), and whether
    /// they log their timing (`--dyn-debug-perf`).
    preprocess_workers: Option<Arc<PreprocessWorkers>>,
    /// Tensor models served as text scorers and classifiers (`openai_task`), built once each.
    text_models: text_models::TextModels,
    /// How long a request waits for its model to load on demand (`--model-load-timeout-secs`).
    load_timeout: std::time::Duration,
    /// Models loaded on demand for requests not generating yet.
    bridging: bridging_holds::BridgingHolds,
}

impl std::fmt::Debug for LlmFrontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmFrontend").finish_non_exhaustive()
    }
}

impl LlmFrontend {
    pub fn new(
        repository: Arc<ModelRepository>,
        router: Arc<Router>,
        limits: CompletionLimits,
        formats: OutputFormats,
        metrics_prefix: &str,
        preprocess: PreprocessLimits,
        hard_stop: CancellationToken,
    ) -> LlmFrontend {
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        LlmFrontend {
            repository,
            router,
            metrics: Arc::new(LlmMetrics::with_prefix(metrics_prefix)),
            preprocessors: Mutex::new(HashMap::new()),
            limits,
            formats,
            budget: Arc::new(PreprocessBudget::new(preprocess)),
            hard_stop,
            started,
            tracer: Arc::new(tritium_trace::Tracer::default()),
            lora_dir: None,
            preprocess_workers: None,
            text_models: text_models::TextModels::default(),
            load_timeout: std::time::Duration::from_secs(600),
            bridging: bridging_holds::BridgingHolds::default(),
        }
    }

    pub fn with_preprocess_workers(self, workers: Arc<PreprocessWorkers>) -> LlmFrontend {
        LlmFrontend { preprocess_workers: Some(workers), ..self }
    }

    /// The same frontend loading LoRA adapters at run time from inside `dir`.
    pub fn with_load_timeout(self, load_timeout: std::time::Duration) -> LlmFrontend {
        LlmFrontend { load_timeout, ..self }
    }

    /// Loads `model` (an adapter's base model for an adapter) in on-demand mode and holds it
    /// loaded while the hold lives; `None` in the other modes or for a model served elsewhere.
    async fn hold(&self, model: &str) -> Result<Option<tritium_worker::registry::on_demand::InUse>, BridgeError> {
        let base = self.repository.adapter_base(model).unwrap_or_else(|| model.to_string());
        let hold = self.repository.ensure_loaded(&base, self.load_timeout).await.map_err(|e| bridge_error(model, e))?;
        // This request's own hold replaces the one its route took while loading.
        self.bridging.take_over(&base);
        Ok(hold)
    }

    pub fn with_lora_dir(self, dir: Option<std::path::PathBuf>) -> LlmFrontend {
        LlmFrontend { lora_dir: dir, ..self }
    }

    pub fn lora_dir(&self) -> Option<&std::path::PathBuf> {
        self.lora_dir.as_ref()
    }

    /// The same frontend tracing its requests with `tracer`.
    pub fn with_tracer(self, tracer: Arc<tritium_trace::Tracer>) -> LlmFrontend {
        LlmFrontend { tracer, ..self }
    }

    pub fn metrics(&self) -> &Arc<LlmMetrics> {
        &self.metrics
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The card of a served language or embedding model (its latest ready version), or of the
    /// model a LoRA adapter adapts.
    fn card(&self, model: &str) -> Option<Arc<ModelCard>> {
        let version = self.repository.resolve_served(model, None).ok()?;
        if let Some(engine) = version.language_model() {
            return Some(Arc::clone(engine.card()));
        }
        version.embedding_model().map(|e| Arc::clone(e.card()))
    }

    /// Where a request for `model` goes: the model itself, or for an adapter its base model with
    /// the adapter named in the request.
    fn target(&self, model: &str, mut request: GenerateRequest) -> (String, GenerateRequest) {
        if let Some(base) = self.repository.adapter_base(model) {
            request.adapter = Some(model.to_string());
            return (base, request);
        }
        (model.to_string(), request)
    }

    /// The served language model `model`'s engine, for loading and unloading its adapters.
    pub fn language_model(&self, model: &str) -> Option<Arc<dyn tritium_backend_api::llm::LanguageModel>> {
        self.repository.resolve(model, None).ok()?.language_model()
    }

    /// The served language models' names.
    pub fn language_models(&self) -> Vec<String> {
        self.models().into_iter().filter(|m| m.kind == ModelKind::Generate && m.adapter_of.is_none()).map(|m| m.name).collect()
    }

    /// Whether a KServe request for `model` (`version`, or the latest) is for a language model,
    /// whose requests come here. One registry lookup: it runs for every tensor request too.
    pub fn is_language_model(&self, model: &str, version: Option<i64>) -> bool {
        self.repository.resolve(model, version).is_ok_and(|v| v.is_language_model())
    }

    /// Engine counters of every served language model, for `/metrics`.
    fn engine_stats(&self) -> Vec<(String, EngineStats)> {
        let mut stats = Vec::new();
        for model in self.repository.served_models() {
            if let Some(engine) = model.versions.values().next_back().and_then(|v| v.language_model()) {
                stats.push((model.name.clone(), engine.stats()));
            }
        }
        stats
    }

    /// The bridge's request metrics and the engines' counters, read now.
    pub fn metric_families(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.metrics.metric_families(&self.engine_stats())
    }


    pub fn preprocessor_for(&self, model: &str) -> Result<Arc<Preprocessor>, BridgeError> {
        if self.router.text_input(model).is_some() {
            // Its worker templates and tokenizes: it is reached only by forwarding the request.
            return Err(BridgeError::Unsupported {
                model: model.to_string(),
                what: "this route: its Dynamo worker takes OpenAI requests as they come (text input), which \
                       /v1/chat/completions, /v1/completions, /v1/responses and /v1/messages forward"
                    .to_string(),
            });
        }
        let card = self.card(model).ok_or_else(|| BridgeError::ModelNotFound(model.to_string()))?;
        self.preprocessor_for_card(model, card)
    }

    /// The preprocessor of `card`, built once per loaded card (a reload brings a new card).
    pub(crate) fn preprocessor_for_card(&self, model: &str, card: Arc<ModelCard>) -> Result<Arc<Preprocessor>, BridgeError> {
        if let Some((cached_card, pre)) = self.preprocessors.lock().get(model)
            && Arc::ptr_eq(cached_card, &card)
        {
            return Ok(Arc::clone(pre));
        }
        // Built outside the lock: a large tokenizer takes a moment to parse.
        // A model that names its parsers (its Dynamo card, its repository config) gets those.
        let formats = self.formats.for_model(&card.parsers).map_err(|reason| BridgeError::Unsupported {
            model: model.to_string(),
            what: format!("its output ({reason})"),
        })?;
        let pre = Preprocessor::new(Arc::clone(&card))?.with_limits(self.limits).with_output_formats(formats);
        let pre = pre.with_budget(Arc::clone(&self.budget));
        let pre = match &self.preprocess_workers {
            Some(workers) => match workers.execution().encoder {
                PromptEncoder::Fastokens => {
                    pre.with_fast_tokenizer(workers.execution().tokenizer_fallback)?.with_workers(Arc::clone(workers))
                }
                PromptEncoder::Tokenizers => pre.with_tokenizers_encoder().with_workers(Arc::clone(workers)),
                PromptEncoder::Default => {
                    pre.with_word_cache_entries(workers.execution().word_cache_entries).with_workers(Arc::clone(workers))
                }
            },
            None => pre,
        };
        let pre = match &self.preprocess_workers {
            // Off: no cache, and no series in the metrics.
            Some(workers) if workers.execution().prefix_cache.bytes > 0 => {
                pre.with_prefix_cache(workers.execution().prefix_cache, self.metrics.tokenizer_cache(model))
            }
            _ => pre,
        };
        let pre = Arc::new(pre);
        self.preprocessors.lock().insert(model.to_string(), (card, Arc::clone(&pre)));
        Ok(pre)
    }
}

fn bridge_error(model: &str, error: WorkerError) -> BridgeError {
    match error {
        WorkerError::Generate { source, .. } => BridgeError::Generate(source),
        WorkerError::ModelNotFound { .. } | WorkerError::NoAvailableVersions { .. } | WorkerError::VersionNotFound { .. } => {
            BridgeError::ModelNotFound(model.to_string())
        }
        WorkerError::NotLanguageModel { .. } => {
            BridgeError::Unsupported { model: model.to_string(), what: "text generation".to_string() }
        }
        WorkerError::NotEmbeddingModel { .. } => {
            BridgeError::Unsupported { model: model.to_string(), what: "embeddings".to_string() }
        }
        // The request named a worker that does not serve the model, or none in `direct` mode.
        WorkerError::Failed { code: tritium_proto::ErrorCode::InvalidArg | tritium_proto::ErrorCode::NotFound, message } => {
            BridgeError::InvalidBody(message)
        }
        // A bound of the router's is full (its sessions).
        WorkerError::Failed { code: tritium_proto::ErrorCode::ResourceExhausted, message } => BridgeError::Busy(message),
        other => BridgeError::Internal(other.to_string()),
    }
}

#[async_trait]
impl LlmHub for LlmFrontend {
    fn models(&self) -> Vec<HubModel> {
        let mut models: Vec<HubModel> = self
            .repository
            .served_models()
            .iter()
            .filter_map(|m| {
                let version = m.versions.values().next_back()?;
                let kind = if version.language_model().is_some() {
                    ModelKind::Generate
                } else if version.embedding_model().is_some() || version.text_task.is_some() {
                    // A text scorer or classifier is an encoder too.
                    ModelKind::Embed
                } else {
                    return None;
                };
                // A worker's adapter is a model here; it names its base.
                let adapter_of = self.router.remote_adapter_of(&m.name);
                Some(HubModel { name: m.name.clone(), kind, created: self.started, adapter_of })
            })
            .collect();
        for model in self.repository.served_models() {
            let Some(engine) = model.versions.values().next_back().and_then(|v| v.language_model()) else { continue };
            for adapter in engine.adapters() {
                if models.iter().all(|m| m.name != adapter.name) {
                    let adapter_of = Some((model.name.clone(), adapter.path));
                    models.push(HubModel { name: adapter.name, kind: ModelKind::Generate, created: self.started, adapter_of });
                }
            }
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    fn preprocessor(&self, model: &str) -> Result<Arc<Preprocessor>, BridgeError> {
        self.preprocessor_for(model)
    }

    async fn load_on_demand(&self, model: &str) -> Result<(), BridgeError> {
        let base = self.repository.adapter_base(model).unwrap_or_else(|| model.to_string());
        let hold = self.repository.ensure_loaded(&base, self.load_timeout).await.map_err(|e| bridge_error(model, e))?;
        if let Some(hold) = hold {
            self.bridging.keep(&base, hold);
        }
        Ok(())
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        let hold = self.hold(model).await?;
        let (target, request) = self.target(model, request);
        let stream = self.router.generate(&target, request).await.map_err(|e| bridge_error(model, e))?;
        Ok(match hold {
            Some(hold) => stream.holding(hold),
            None => stream,
        })
    }

    async fn generate_in_session(&self, model: &str, session: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        let hold = self.hold(model).await?;
        let (target, request) = self.target(model, request);
        let stream = self.router.generate_in_session(&target, session, request).await.map_err(|e| bridge_error(model, e))?;
        Ok(match hold {
            Some(hold) => stream.holding(hold),
            None => stream,
        })
    }

    async fn generate_on(&self, model: &str, worker: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        let hold = self.hold(model).await?;
        let (target, request) = self.target(model, request);
        let stream = self.router.generate_on(&target, Some(worker), request).await.map_err(|e| bridge_error(model, e))?;
        Ok(match hold {
            Some(hold) => stream.holding(hold),
            None => stream,
        })
    }

    fn takes_text(&self, model: &str) -> bool {
        self.router.text_input(model).is_some()
    }

    async fn generate_openai(
        &self,
        model: &str,
        worker: Option<&str>,
        session: Option<&str>,
        api: OpenAiApi,
        request: OpenAiRequest,
    ) -> Result<OpenAiChunks, BridgeError> {
        let chunks = match (worker, session) {
            (None, Some(session)) => self.router.generate_openai_in_session(model, session, api, request).await,
            (worker, _) => self.router.generate_openai_on(model, worker, api, request).await,
        };
        chunks.map_err(|e| bridge_error(model, e))
    }

    async fn embed_on(&self, model: &str, worker: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, BridgeError> {
        let _hold = self.hold(model).await?;
        self.router.embed_on(model, Some(worker), inputs).await.map_err(|e| bridge_error(model, e))
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, BridgeError> {
        let _hold = self.hold(model).await?;
        self.router.embed(model, inputs).await.map_err(|e| bridge_error(model, e))
    }

    fn hard_stop(&self) -> Option<&CancellationToken> {
        Some(&self.hard_stop)
    }

    fn text_model(&self, model: &str) -> Option<Arc<tritium_openai_bridge::text_models::TextModel>> {
        let version = self.repository.resolve(model, None).ok()?;
        self.text_models.get(model, &version)
    }

    fn remote_text_task(&self, model: &str) -> Option<String> {
        // Asked only when no text model is loaded here under that name.
        let config = self.router.remote_config(model)?;
        tritium_backend_api::config_parameter(&config, tritium_worker::text_task::TASK_PARAMETER).map(str::to_owned)
    }

    async fn run_text_model(
        &self,
        model: &str,
        rows: tritium_openai_bridge::text_models::TokenRows,
    ) -> Result<Vec<Vec<f32>>, BridgeError> {
        let version = self.repository.resolve(model, None).map_err(|e| bridge_error(model, e))?;
        text_models::run(model, version, rows).await
    }

    fn trace(&self, model: &str, caller: Option<TraceContext>) -> Option<RequestTrace> {
        if !self.tracer.is_on() {
            return None;
        }
        self.tracer.sample(model, "", caller)
    }
}
