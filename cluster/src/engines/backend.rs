//! `backend: "engine_grpc"`: a model repository's model that is an engine reached over its gRPC.
//! The config names the engine in its parameters (`url`; optionally `idle_timeout_secs`, and
//! `tokenizer_path`, a folder inside the model folder, for engines that send no tokenizer);
//! loading the model connects, checks the engine's `grpc.health.v1` status (an engine still
//! warming up fails the load, which says so) and asks it what it serves, as `--engine-grpc`
//! does. The model is then a language model (or an embedder) like any other in the repository:
//! every door, on-demand loading, the repository API and `tritium worker` serve it, and each
//! generation is one [`EngineWorker`] call.
//!
//! ```text
//! name: "smollm2"
//! backend: "engine_grpc"
//! parameters { key: "url" value { string_value: "127.0.0.1:50051" } }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;
use tritium_backend_api::llm::{
    EmbeddingModel, EngineStats, GenerateError, GenerateRequest, HfFiles, LanguageModel, ModelCard, ModelKind, TokenStream,
    complete_llm_config, hf_files_from_dir,
};
use tritium_backend_api::{BackendContext, BackendFactory, BackendRegistry, Engine, WorkerError};
use tritium_proto::inference::ModelConfig;
use tritium_worker::WorkerClient;

use super::client::EngineWorker;
use super::{CONNECT_TIMEOUT, EngineLimits, engine_url};

/// The `backend` a `config.pbtxt` names for an engine reached over gRPC.
pub const ENGINE_GRPC_BACKEND: &str = "engine_grpc";

/// The longest `idle_timeout_secs` a config may ask for (a day): a bound, not a policy.
const MAX_IDLE_TIMEOUT_SECS: u64 = 86_400;

/// Adds the `engine_grpc` backend to `registry`, its models bounded by `limits` (a config's
/// `idle_timeout_secs` overrides the idle bound).
pub fn register(registry: &mut BackendRegistry, limits: EngineLimits) {
    registry.register(ENGINE_GRPC_BACKEND, EngineGrpcFactory { limits });
}

struct EngineGrpcFactory {
    limits: EngineLimits,
}

impl BackendFactory for EngineGrpcFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let name = context.model_name.to_string();
        let (url, idle_timeout) = engine_parameters(context.config, &name, self.limits.idle_timeout)?;
        let read = ["url", "idle_timeout_secs", "tokenizer_path"];
        tritium_backend_api::warn_unread_parameters(context.model_name, "engine_grpc", context.config, &read);
        let limits = EngineLimits { idle_timeout, ..self.limits };
        let runtime =
            Handle::try_current().map_err(|_| format!("the model '{name}' (engine_grpc) loads only inside the server"))?;
        let tokenizer = tokenizer_files(context, self.limits.max_tokenizer as u64)?;
        let reach = {
            let (name, url) = (name.clone(), url.clone());
            async move {
                let channel = Endpoint::from_shared(url.clone())
                    .map_err(|e| format!("'{url}' is not an engine URL: {e}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| format!("the engine at {url} cannot be reached: {e}"))?;
                super::follow::health(&channel)
                    .await
                    .map_err(|why| format!("the engine at {url} is not serving ({why}): load the model again once it is"))?;
                let target = super::describe::describe(&name, &url, channel.clone(), &limits, tokenizer).await?;
                Ok::<_, String>((target, channel))
            }
        };
        // Loads run on blocking threads or inside the runtime; a thread of its own may block on
        // the runtime in either case, and the channel's tasks stay on the runtime.
        let (target, channel) = std::thread::scope(|scope| scope.spawn(|| runtime.block_on(reach)).join())
            .map_err(|_| format!("loading the model '{name}' from its engine panicked"))??;
        tracing::info!(
            model = %name, %url, served = %target.served_name, server = %target.server_type,
            context = target.card.context_length, "engine described its model"
        );
        let kind = target.card.kind;
        let id = super::follow::engine_id(&name, &url);
        let worker = Arc::new(EngineWorker::new(&id, Arc::new(target), channel, &limits));
        let model = EngineModel { name, worker, runtime, running: Arc::default() };
        Ok(match kind {
            ModelKind::Generate => Engine::Language(Arc::new(model)),
            ModelKind::Embed => Engine::Embedding(Arc::new(model)),
        })
    }

    fn complete_config(&self, config: &mut ModelConfig, _model_dir: Option<&std::path::Path>) -> Result<(), String> {
        let name = config.name.clone();
        engine_parameters(config, &name, self.limits.idle_timeout)?;
        complete_llm_config(config);
        Ok(())
    }
}

/// The tokenizer files the config names (`tokenizer_path`, a folder inside the model folder),
/// for engines that do not send theirs (`GetTokenizer`); each file at most `max_file` bytes.
fn tokenizer_files(context: &BackendContext<'_>, max_file: u64) -> Result<Option<HfFiles>, String> {
    let Some(named) = context.params().text("tokenizer_path") else { return Ok(None) };
    let model = context.model_name;
    tritium_backend_api::model_files::confined(named).map_err(|why| format!("the model '{model}': tokenizer_path {why}"))?;
    let dir = tritium_backend_api::model_files::resolve_model_file(context.model_dir, named)
        .map_err(|why| format!("the model '{model}': tokenizer_path {why}"))?;
    if !dir.is_dir() {
        return Err(format!("the model '{model}': tokenizer_path '{named}' must be a folder of Hugging Face tokenizer files"));
    }
    // The kind is the engine's to say; an embedder's sentence-transformers file is not needed for its tokens.
    hf_files_from_dir(&dir, ModelKind::Generate, max_file).map(Some).map_err(|why| format!("the model '{model}': {why}"))
}

/// The engine's URL and idle bound from a config's parameters, or why they are wrong.
fn engine_parameters(config: &ModelConfig, name: &str, idle: Duration) -> Result<(String, Duration), String> {
    let params = tritium_backend_api::ConfigParams::of(config);
    let url = params.text("url").ok_or_else(|| {
        format!("the model '{name}' (backend engine_grpc) needs the parameter 'url', the engine's address (host:port)")
    })?;
    if url.contains(',') {
        return Err(format!(
            "the model '{name}': 'url' names one engine; a pool of engines is `--engine-grpc {name}=URL,URL` on tritium serve"
        ));
    }
    let idle = params.number("idle_timeout_secs", idle.as_secs())?;
    if idle == 0 || idle > MAX_IDLE_TIMEOUT_SECS {
        return Err(format!("the model '{name}': parameter 'idle_timeout_secs' must be 1 to {MAX_IDLE_TIMEOUT_SECS}"));
    }
    Ok((engine_url(url)?, Duration::from_secs(idle)))
}

/// A repository model served by one engine.
struct EngineModel {
    name: String,
    worker: Arc<EngineWorker>,
    runtime: Handle,
    /// Generations started and not yet ended, for [`LanguageModel::stats`].
    running: Arc<AtomicUsize>,
}

/// Counts a generation as running while it lives.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl LanguageModel for EngineModel {
    fn card(&self) -> &Arc<ModelCard> {
        &self.worker.target().card
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        self.worker.check_generate(&self.name, &request).map_err(|e| generate_error(&self.name, e))?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let (worker, name) = (Arc::clone(&self.worker), self.name.clone());
        self.running.fetch_add(1, Ordering::Relaxed);
        let running = Running(Arc::clone(&self.running));
        self.runtime.spawn(async move {
            let _running = running;
            let mut events = match worker.generate(&name, request).await {
                Ok(events) => events,
                Err(error) => {
                    let _ = sender.send(Err(generate_error(&name, error)));
                    return;
                }
            };
            // Dropping `events` when the reader goes away cancels the call and aborts it.
            loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(event) => if sender.send(event).is_err() { return },
                        None => return,
                    },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(TokenStream::new(receiver))
    }

    fn stats(&self) -> EngineStats {
        EngineStats { running: self.running.load(Ordering::Relaxed), ..EngineStats::default() }
    }
}

#[async_trait]
impl EmbeddingModel for EngineModel {
    fn card(&self) -> &Arc<ModelCard> {
        &self.worker.target().card
    }

    async fn embed(&self, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.worker.embed(&self.name, inputs).await.map_err(|e| generate_error(&self.name, e))
    }
}

/// A failed call as a language model's error: the engine's refusals keep their class; an engine
/// that cannot be reached makes the model unavailable.
fn generate_error(model: &str, error: WorkerError) -> GenerateError {
    match error {
        WorkerError::Generate { source, .. } => source,
        WorkerError::Unreachable { message, .. } | WorkerError::NotStarted { message, .. } => {
            GenerateError::Unavailable { model: model.to_string(), message }
        }
        other => GenerateError::Engine { model: model.to_string(), message: other.to_string() },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_proto::inference::ModelParameter;

    use super::*;
    use crate::engines::client::DEFAULT_IDLE_TIMEOUT;

    fn config(params: &[(&str, &str)]) -> ModelConfig {
        let mut config = ModelConfig { name: "m".into(), backend: ENGINE_GRPC_BACKEND.into(), ..Default::default() };
        for (key, value) in params {
            config.parameters.insert(key.to_string(), ModelParameter { string_value: value.to_string() });
        }
        config
    }

    #[test]
    fn the_config_names_one_engine_and_a_bounded_idle_timeout() {
        let (url, idle) = engine_parameters(&config(&[("url", "127.0.0.1:5000")]), "m", DEFAULT_IDLE_TIMEOUT).unwrap();
        assert_eq!((url.as_str(), idle), ("http://127.0.0.1:5000", DEFAULT_IDLE_TIMEOUT));
        let (_, idle) =
            engine_parameters(&config(&[("url", "h:1"), ("idle_timeout_secs", "7")]), "m", DEFAULT_IDLE_TIMEOUT).unwrap();
        assert_eq!(idle, Duration::from_secs(7));
        for (params, named) in [
            (vec![], "needs the parameter 'url'"),
            (vec![("url", "h:1,h:2")], "a pool of engines"),
            (vec![("url", "https://h:1")], "http only"),
            (vec![("url", "h:1"), ("idle_timeout_secs", "0")], "idle_timeout_secs"),
            (vec![("url", "h:1"), ("idle_timeout_secs", "x")], "whole number"),
        ] {
            let error = engine_parameters(&config(&params), "m", DEFAULT_IDLE_TIMEOUT).unwrap_err();
            assert!(error.contains(named), "{error}");
        }
    }

    #[test]
    fn a_completed_config_has_the_language_model_tensors() {
        let mut config = config(&[("url", "h:1")]);
        EngineGrpcFactory { limits: EngineLimits::default() }.complete_config(&mut config, None).unwrap();
        assert_eq!(config.input[0].name, "text_input");
        assert!(config.model_transaction_policy.unwrap().decoupled);
    }
}
