//! The one seam between Tritium's core and its backends.
//!
//! A backend (the built-ins, ONNX Runtime, Python, the LLM engine, one of your own) depends on this
//! crate alone. It implements [`Backend`] for tensors, or [`llm::LanguageModel`] /
//! [`llm::EmbeddingModel`] for token ids, and registers a [`BackendFactory`] under its name in a
//! [`BackendRegistry`]. The core (`tritium-worker`) owns the model registry and the schedulers
//! and calls the factory when a model of that backend loads; the factory gets a
//! [`BackendContext`] (the config, the model's folders, the [`Host`] for calls back into the
//! server, a [`ConfigParams`] reader for its own parameters) and returns an [`Engine`].
//!
//! ```
//! use async_trait::async_trait;
//! use tritium_backend_api::{Backend, BackendError, BackendRegistry, BackendRequest, Engine, Responder};
//! use tritium_tensor::Tensor;
//!
//! /// Doubles every FP32 element of INPUT0.
//! struct Doubler;
//!
//! #[async_trait]
//! impl Backend for Doubler {
//!     async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
//!         let input = request.input("INPUT0")?;
//!         let doubled: Vec<f32> = input.to_vec::<f32>()?.iter().map(|x| x * 2.0).collect();
//!         responder.send(vec![Tensor::from_slice("OUTPUT0", input.shape.clone(), &doubled)]).await
//!     }
//! }
//!
//! let mut registry = BackendRegistry::default();
//! registry.register("doubler", |_: &tritium_backend_api::BackendContext<'_>| Ok(Engine::tensors(Doubler)));
//! assert!(registry.get("doubler").is_some());
//! ```

pub mod backend;
pub mod config_params;
pub mod custom_metrics;
pub mod engine;
pub mod error;
pub mod factory;
pub mod first_response;
pub mod host;
pub mod kv;
pub mod llm;
pub mod request;
pub mod stream;
pub mod trace;
pub mod trace_context;

pub use backend::{Backend, BackendRequest, OutputShapes, Responder, StreamTarget, StreamedRequest, select_outputs};
pub use config_params::{
    BackendSettings, ConfigParams, TEXT_MODEL_PARAMETERS, config_parameter, unread_parameters, warn_unread_parameters,
};
pub use engine::Engine;
pub use error::{BackendError, RequestId, WorkerError};
pub use factory::{BackendContext, BackendFactory, BackendRegistry};
pub use host::{Host, no_host};
pub use request::{InferenceRequest, InferenceResponse, ParamValue, Parameters, is_reserved, parse_version};
pub use stream::{InferOutcome, ResponseStream, StreamItem};
/// What a backend needs of the model repository's on-disk rules: files a config names stay inside
/// the model's folder, and Triton's JSON form of a model config (which model code reads and writes).
pub use tritium_repository::{config_to_json, model_files, parse_config_json};
