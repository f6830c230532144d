//! Python language models: the `python_llm` backend. A handler bound with `Worker.bind_llm` is an
//! async generator that receives a request (prompt token ids, sampling options, stop conditions,
//! a cancellation flag) and yields token ids; the frontend tokenizes, applies the chat template
//! and detokenizes with the card read from the model path it was bound with (a GGUF file or a
//! Hugging Face folder), as Dynamo's `register_llm` does. This engine enforces the token-level
//! stop conditions (`max_tokens`, stop token ids, end of sequence) and ends the handler when the
//! client goes away. The handler announces its KV blocks through `request.kv` ([`crate::kv`]);
//! the engine hands them to the worker as a Rust engine's `kv_events()`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tokio::sync::mpsc::UnboundedSender;
use tritium_backend_api::llm::{
    EngineStats, FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, LanguageModel, ModelCard,
    ModelKind, TokenStream, complete_llm_config,
};
use tritium_backend_api::{BackendContext, BackendFactory, BackendRegistry, Engine};
use tritium_proto::inference::ModelConfig;

use crate::kv::KvChannel;

/// The backend name a bound language model's config names.
pub const LLM_BACKEND_NAME: &str = "python_llm";

/// A bound handler, the model path its card is read from, and where its KV events go.
pub struct Handler {
    pub function: Arc<Py<PyAny>>,
    pub model_path: PathBuf,
    pub kv: KvChannel,
}

/// The language-model handlers bound on one worker, by model name.
pub type Handlers = Arc<Mutex<HashMap<String, Handler>>>;

/// Registers the `python_llm` backend, serving the handlers in `handlers`.
pub fn register(registry: &mut BackendRegistry, handlers: Handlers) {
    registry.register(LLM_BACKEND_NAME, HandlerFactory { handlers });
}

struct HandlerFactory {
    handlers: Handlers,
}

/// The card of the model at `path`: a GGUF file's metadata, or a Hugging Face folder.
pub fn read_card(path: &Path) -> Result<ModelCard, String> {
    if path.is_dir() { tritium_llm::card_from_hf_dir(path, ModelKind::Generate) } else { tritium_llm::card_from_gguf_file(path) }
}

impl BackendFactory for HandlerFactory {
    fn create(&self, context: &BackendContext<'_>) -> Result<Engine, String> {
        let handlers = self.handlers.lock();
        let handler = handlers
            .get(context.model_name)
            .ok_or_else(|| format!("no Python language-model handler is bound as model '{}'", context.model_name))?;
        let card = read_card(&handler.model_path)?;
        Ok(Engine::Language(Arc::new(PythonLanguageModel {
            name: context.model_name.to_string(),
            card: Arc::new(card),
            function: Arc::clone(&handler.function),
            counters: Arc::default(),
            kv: handler.kv.clone(),
        })))
    }

    fn complete_config(&self, config: &mut ModelConfig, _: Option<&Path>) -> Result<(), String> {
        complete_llm_config(config);
        Ok(())
    }
}

#[derive(Default)]
struct Counters {
    running: AtomicU64,
    tokens: AtomicU64,
    prompt_tokens: AtomicU64,
    finished: AtomicU64,
    cancelled: AtomicU64,
}

struct PythonLanguageModel {
    name: String,
    card: Arc<ModelCard>,
    function: Arc<Py<PyAny>>,
    counters: Arc<Counters>,
    kv: KvChannel,
}

impl LanguageModel for PythonLanguageModel {
    fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    fn generate(&self, request: GenerateRequest) -> Result<TokenStream, GenerateError> {
        let room = self.card.room_after(request.prompt.len()).map_err(GenerateError::InvalidRequest)?;
        let max_tokens = request.stop.max_tokens.map_or(room, |m| (m as usize).min(room));
        let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut end_ids = request.stop.stop_token_ids.clone();
        let eos_ids = if request.stop.ignore_eos { Vec::new() } else { self.card.eos_token_ids.clone() };
        end_ids.sort_unstable();
        let sink = Sink {
            state: Arc::new(Mutex::new(SinkState {
                sender: sender.clone(),
                generated: 0,
                max_tokens,
                stop_ids: end_ids,
                eos_ids,
                min_tokens: request.stop.min_tokens as usize,
                finished: None,
            })),
        };
        let (name, function, counters) = (self.name.clone(), Arc::clone(&self.function), Arc::clone(&self.counters));
        let kv = self.kv.clone();
        counters.running.fetch_add(1, Ordering::Relaxed);
        counters.prompt_tokens.fetch_add(request.prompt.len() as u64, Ordering::Relaxed);
        let prompt_tokens = request.prompt.len() as u32;
        let state = Arc::clone(&sink.state);
        let spawned = std::thread::Builder::new().name("tritium-python-llm".into()).spawn(move || {
            let outcome = Python::attach(|py| drive(py, &function, &request, sink, &kv));
            let state = state.lock();
            counters.running.fetch_sub(1, Ordering::Relaxed);
            counters.tokens.fetch_add(state.generated as u64, Ordering::Relaxed);
            let event = match outcome {
                Err(error) => Err(GenerateError::Engine { model: name, message: error }),
                Ok(()) => {
                    let reason =
                        if sender.is_closed() { FinishReason::Cancelled } else { state.finished.unwrap_or(FinishReason::Stop) };
                    let counter = if reason == FinishReason::Cancelled { &counters.cancelled } else { &counters.finished };
                    counter.fetch_add(1, Ordering::Relaxed);
                    Ok(GenerateEvent::Finished {
                        reason,
                        prompt_tokens,
                        completion_tokens: state.generated as u32,
                        cached_tokens: 0,
                        queued_for: std::time::Duration::ZERO,
                    })
                }
            };
            let _ = sender.send(event);
        });
        spawned.map_err(|e| GenerateError::Engine {
            model: self.name.clone(),
            message: format!("cannot start the handler's thread: {e}"),
        })?;
        Ok(TokenStream::new(receiver))
    }

    fn kv_events(&self) -> Option<tokio::sync::broadcast::Receiver<tritium_backend_api::kv::KvEvent>> {
        Some(self.kv.subscribe())
    }

    fn stats(&self) -> EngineStats {
        let c = &self.counters;
        EngineStats {
            running: c.running.load(Ordering::Relaxed) as usize,
            tokens_generated: c.tokens.load(Ordering::Relaxed),
            prompt_tokens: c.prompt_tokens.load(Ordering::Relaxed),
            sequences_finished: c.finished.load(Ordering::Relaxed),
            sequences_cancelled: c.cancelled.load(Ordering::Relaxed),
            ..EngineStats::default()
        }
    }
}

/// Runs the handler to its end through `tritium._llm.drive`; the error's text when it fails.
fn drive(py: Python<'_>, function: &Py<PyAny>, request: &GenerateRequest, sink: Sink, kv: &KvChannel) -> Result<(), String> {
    let run = || -> PyResult<()> {
        let sampling = PyDict::new(py);
        let s = &request.sampling;
        sampling.set_item("temperature", s.temperature)?;
        sampling.set_item("top_p", s.top_p)?;
        sampling.set_item("top_k", s.top_k)?;
        sampling.set_item("seed", s.seed)?;
        sampling.set_item("presence_penalty", s.presence_penalty)?;
        sampling.set_item("frequency_penalty", s.frequency_penalty)?;
        sampling.set_item("repetition_penalty", s.repetition_penalty)?;
        let stop = PyDict::new(py);
        stop.set_item("max_tokens", request.stop.max_tokens)?;
        stop.set_item("stop_token_ids", request.stop.stop_token_ids.clone())?;
        stop.set_item("ignore_eos", request.stop.ignore_eos)?;
        stop.set_item("min_tokens", request.stop.min_tokens)?;
        let module = py.import("tritium._llm")?;
        module.getattr("drive")?.call1((function.bind(py), request.prompt.clone(), sampling, stop, sink, kv.publisher()))?;
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

struct SinkState {
    sender: UnboundedSender<Result<GenerateEvent, GenerateError>>,
    generated: usize,
    max_tokens: usize,
    /// Sorted: a generated one ends the sequence unemitted.
    stop_ids: Vec<u32>,
    eos_ids: Vec<u32>,
    min_tokens: usize,
    finished: Option<FinishReason>,
}

/// What the handler's tokens go to; calling it with token ids says whether to go on.
#[pyclass(module = "tritium._tritium", name = "_TokenSink")]
struct Sink {
    state: Arc<Mutex<SinkState>>,
}

#[pymethods]
impl Sink {
    /// Emits `ids` in order, up to a stop condition; false once the sequence has ended (a stop
    /// condition met, or the client gone): the handler is then closed.
    fn __call__(&self, ids: Vec<u32>) -> bool {
        let mut state = self.state.lock();
        for id in ids {
            if state.finished.is_some() || state.sender.is_closed() {
                return false;
            }
            if state.generated >= state.max_tokens {
                state.finished = Some(FinishReason::Length);
                return false;
            }
            let past_min = state.generated >= state.min_tokens;
            if state.stop_ids.binary_search(&id).is_ok() || (past_min && state.eos_ids.contains(&id)) {
                state.finished = Some(FinishReason::Stop);
                return false;
            }
            let token = GeneratedToken {
                id,
                logprob: None,
                top_logprobs: Vec::new(),
                prompt_cached: None,
                prompt_pinned: None,
                stop: false,
            };
            if state.sender.send(Ok(GenerateEvent::Token(token))).is_err() {
                return false;
            }
            state.generated += 1;
            if state.generated >= state.max_tokens {
                state.finished = Some(FinishReason::Length);
                return false;
            }
        }
        state.finished.is_none() && !state.sender.is_closed()
    }

    /// Whether the client went away (the request's cancellation flag).
    #[getter]
    fn cancelled(&self) -> bool {
        self.state.lock().sender.is_closed()
    }
}
