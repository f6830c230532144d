//! The frontend's stand-ins for models that workers in other processes serve. Each remote model
//! version becomes a [`ModelVersion`] in the frontend's registry, so ModelMetadata, ModelConfig,
//! ModelReady, the repository index, statistics and `/v1/models` treat it like a local one; the
//! router sends its requests to the workers. A stand-in answers requests itself only when no
//! worker can be reached, with UNAVAILABLE.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use parking_lot::Mutex;

use async_trait::async_trait;
use tritium_backend_api::llm::{
    EmbeddingModel, EngineStats, GenerateError, GenerateRequest, LanguageModel, ModelCard, ModelKind, TokenStream,
};
use tritium_worker::schema::ModelSchema;
use tritium_worker::{Backend, BackendError, BackendRequest, Engine, ModelVersion, Responder, ServedModel};

use crate::events::LoadReport;
use crate::discovery::dynamo_target::TextApis;
use crate::remote::{RemoteModel, RemoteWorker};

type Loads = Arc<Mutex<HashMap<(String, String), LoadReport>>>;

/// What the frontend knows of remote workers' models.
pub(super) struct RemoteModels {
    loads: Loads,
    clients: Mutex<HashMap<Arc<str>, Arc<RemoteWorker>>>,
    /// Each worker's models, as it described them.
    described: Mutex<HashMap<Arc<str>, Vec<RemoteModel>>>,
    /// Stand-ins by (model, version), kept while the config is the same so statistics survive.
    proxies: Mutex<HashMap<(String, i64), Arc<ModelVersion>>>,
    /// What the request path asks of the described models on every request, kept apart and
    /// swapped in whole when workers describe theirs: read without a lock.
    index: arc_swap::ArcSwap<Index>,
}

/// The described models the request path asks about by name.
#[derive(Debug, Default)]
struct Index {
    /// The text-input models and the routes each serves.
    text_models: HashMap<String, TextApis>,
    /// Tritium workers' LoRA adapters: the model each adapts and the seed its blocks chain from.
    adapters: HashMap<String, (String, u64)>,
}

impl RemoteModels {
    pub(super) fn new(loads: Loads) -> RemoteModels {
        RemoteModels {
            loads,
            clients: Mutex::default(),
            described: Mutex::default(),
            proxies: Mutex::default(),
            index: arc_swap::ArcSwap::from_pointee(Index::default()),
        }
    }

    pub(super) fn connected(&self, id: &Arc<str>, client: Arc<RemoteWorker>) {
        self.clients.lock().insert(Arc::clone(id), client);
    }

    pub(super) fn client(&self, id: &str) -> Option<Arc<RemoteWorker>> {
        self.clients.lock().get(id).cloned()
    }

    /// Whether the worker's described models are exactly `models` (else: describe it again).
    pub(super) fn serves_exactly(&self, id: &str, models: &[String]) -> bool {
        let described = self.described.lock();
        let Some(known) = described.get(id) else { return false };
        let mut known: Vec<&str> = known.iter().map(|m| m.name.as_str()).collect();
        let mut listed: Vec<&str> = models.iter().map(String::as_str).collect();
        known.sort_unstable();
        known.dedup();
        listed.sort_unstable();
        known == listed
    }

    /// The config some worker described for `name`.
    pub(super) fn config_of(&self, name: &str) -> Option<tritium_proto::inference::ModelConfig> {
        self.described.lock().values().flatten().find(|m| m.name == name).map(|m| m.config.clone())
    }

    /// For a model a worker described as a LoRA adapter: the model it adapts and its path.
    pub(super) fn adapter_of(&self, name: &str) -> Option<(String, String)> {
        self.described.lock().values().flatten().find(|m| m.name == name)?.adapter_of.clone()
    }

    /// For a LoRA adapter of Tritium workers: the model it adapts (whose KV events carry its
    /// blocks) and the seed its block hashes chain from.
    pub(super) fn tritium_adapter(&self, name: &str) -> Option<(String, u64)> {
        self.index.load().adapters.get(name).cloned()
    }

    /// For a model whose workers take OpenAI requests as they came: the routes it serves.
    pub(super) fn text_input(&self, name: &str) -> Option<TextApis> {
        self.index.load().text_models.get(name).copied()
    }

    /// Recomputes [`RemoteModels::index`] from what the workers described.
    fn reindex(&self, described: &HashMap<Arc<str>, Vec<RemoteModel>>) {
        let models = || described.values().flatten();
        let text_models = models().filter_map(|m| Some((m.name.clone(), m.text_input?))).collect();
        let mut adapters = HashMap::new();
        for m in models() {
            if let (Some(seed), Some((base, _))) = (m.adapter_kv_seed, &m.adapter_of) {
                adapters.entry(m.name.clone()).or_insert_with(|| (base.clone(), seed));
            }
        }
        self.index.store(Arc::new(Index { text_models, adapters }));
    }

    pub(super) fn described(&self, id: &Arc<str>, models: Vec<RemoteModel>) {
        let mut described = self.described.lock();
        described.insert(Arc::clone(id), models);
        self.reindex(&described);
    }

    /// Forgets workers that are no longer listed.
    pub(super) fn retain(&self, ids: &[Arc<str>]) {
        let mut described = self.described.lock();
        described.retain(|id, _| ids.contains(id));
        self.reindex(&described);
        drop(described);
        self.clients.lock().retain(|id, _| ids.contains(id));
    }

    /// One [`ServedModel`] per remote model name, with every version some worker serves.
    pub(super) fn served_models(&self) -> Vec<Arc<ServedModel>> {
        let described = self.described.lock();
        let mut by_name: BTreeMap<&str, BTreeMap<i64, &RemoteModel>> = BTreeMap::new();
        let mut ids: Vec<&Arc<str>> = described.keys().collect();
        ids.sort();
        for id in ids {
            for model in &described[id] {
                by_name.entry(model.name.as_str()).or_default().entry(model.version).or_insert(model);
            }
        }
        let mut proxies = self.proxies.lock();
        let mut served = Vec::new();
        for (name, versions) in by_name {
            let mut built = BTreeMap::new();
            for (version, model) in versions {
                let key = (name.to_string(), version);
                let reuse = proxies.get(&key).filter(|p| *p.config == model.config).cloned();
                let proxy = match reuse {
                    Some(proxy) => proxy,
                    None => match self.stand_in(model) {
                        Ok(proxy) => {
                            proxies.insert(key, Arc::clone(&proxy));
                            proxy
                        }
                        Err(e) => {
                            tracing::warn!(model = name, version, "a remote model's config is not usable here: {e}");
                            continue;
                        }
                    },
                };
                built.insert(version, proxy);
            }
            if let Some(latest) = built.values().next_back() {
                let config = Arc::clone(&latest.config);
                served.push(Arc::new(ServedModel::new(name.to_string(), config, built)));
            }
        }
        proxies.retain(|(name, version), _| served.iter().any(|m| m.name == *name && m.versions.contains_key(version)));
        served
    }

    fn stand_in(&self, model: &RemoteModel) -> Result<Arc<ModelVersion>, String> {
        let config = Arc::new(model.config.clone());
        let mut schema = ModelSchema::from_config(&config)?;
        for (output, labels) in &model.labels {
            if let Some(spec) = schema.outputs.iter_mut().find(|spec| spec.name == *output) {
                spec.labels = Some(Arc::clone(labels));
            }
        }
        let name = model.name.clone();
        let engine = match &model.card {
            Some(card) if card.kind == ModelKind::Generate => {
                Engine::Language(Arc::new(RemoteLanguageModel { name, card: Arc::clone(card), loads: Arc::clone(&self.loads) }))
            }
            Some(card) => Engine::Embedding(Arc::new(RemoteEmbedder { name, card: Arc::clone(card) })),
            None => Engine::tensors(StandIn { name }),
        };
        Ok(Arc::new(ModelVersion::new(config, model.version, schema, engine)))
    }
}

/// The backend of a tensor model's stand-in: it answers only when no worker could take the
/// request. A language model's or an embedder's stand-in holds its card instead (the frontend
/// tokenizes with it).
struct StandIn {
    name: String,
}

impl StandIn {
    fn unavailable(&self) -> String {
        format!("model '{}' is served by remote workers, and none of them can be reached now", self.name)
    }
}

#[async_trait]
impl Backend for StandIn {
    async fn execute(&self, _request: BackendRequest, _responder: &mut Responder) -> Result<(), BackendError> {
        Err(BackendError::failed(tritium_proto::ErrorCode::Unavailable, self.unavailable()))
    }
}

struct RemoteLanguageModel {
    name: String,
    card: Arc<ModelCard>,
    loads: Loads,
}

impl LanguageModel for RemoteLanguageModel {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    fn generate(&self, _request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        Err(GenerateError::Unavailable { model: self.name.clone(), message: "no worker serving it can be reached".into() })
    }

    /// The sum of the workers' last load reports for this model.
    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::default();
        for report in self.loads.lock().values().filter(|r| r.model == self.name) {
            let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
            stats.running += count(report.active);
            stats.waiting += count(report.queued);
            stats.kv_tokens_used += count(report.kv_used);
            stats.kv_tokens_capacity += count(report.kv_capacity);
            stats.prompt_tokens += report.prompt_tokens;
            stats.prompt_tokens_cached += report.prompt_tokens_cached;
            stats.tokens_generated += report.tokens_generated;
        }
        stats
    }
}

struct RemoteEmbedder {
    name: String,
    card: Arc<ModelCard>,
}

#[async_trait]
impl EmbeddingModel for RemoteEmbedder {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    async fn embed(&self, _inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError> {
        Err(GenerateError::Unavailable { model: self.name.clone(), message: "no worker serving it can be reached".into() })
    }
}
