//! Tritium's worker: the engines behind the frontend.
//!
//! - [`backend::Backend`]: the trait a model implements (tensors in, tensors out; any number of
//!   responses for decoupled models), and [`backend::BackendRegistry`] to add one by name.
//! - [`registry::ModelRepository`]: Triton's model repository layout, version policies and
//!   control modes, with a built-in repository (`identity`, `identity_batch`, `add_sub`,
//!   `repeat`) when no folder is given.
//! - [`valid::ValidInferRequest`]: a request checked once against the version it resolved to;
//!   everything after the transport takes it.
//! - [`worker::WorkerClient`]: the dispatch seam; [`worker::LocalWorker`] runs requests in
//!   process.
//!
//! ```
//! # tokio_test_block(async {
//! use std::sync::Arc;
//! use tritium_tensor::Tensor;
//! use tritium_worker::{BackendRegistry, InferenceRequest, LocalWorker, ModelRepository, RepositoryOptions, WorkerClient};
//!
//! let repository = ModelRepository::open(RepositoryOptions::default(), BackendRegistry::with_builtins()).unwrap();
//! let worker = LocalWorker::new(Arc::clone(&repository));
//! let input = Tensor::from_slice("INPUT0", vec![3], &[1.0f32, 2.0, 3.0]);
//! // Checked once against the model's contract, then trusted by whatever runs it.
//! let request = repository.validate(InferenceRequest::new("identity", vec![input])).unwrap();
//! let response = worker.infer(request).await.unwrap();
//! assert_eq!(response.outputs[0].to_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0]);
//! # });
//! # fn tokio_test_block<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

pub mod backend;
pub mod backends;
mod batch_tensors;
pub mod dynamic_batcher;
pub mod embed;
pub mod ensemble;
pub mod error;
pub mod first_response;
pub mod kv;
pub mod latency;
pub mod llm;
mod load_gate;
pub mod model;
pub mod params;
mod priority_queue;
pub mod ragged;
pub mod registry;
mod reply;
pub mod repository;
pub mod request;
pub mod scheduler;
pub mod schema;
pub mod sequence;
pub mod stats;
pub mod test_models;
pub mod valid;
mod warmup;
pub mod worker;

pub use backend::{Backend, BackendContext, BackendError, BackendRegistry, BackendRequest, Responder, StreamedRequest};
pub use error::WorkerError;
pub use model::ModelVersion;
pub use registry::{ByName, ControlMode, DeclaredModel, IndexEntry, ModelRepository, ModelState, RepositoryOptions, ServedModel};
pub use request::{InferenceRequest, InferenceResponse, ParamValue, Parameters, parse_version};
pub use scheduler::SchedulerLimits;
pub use stats::{BatchStat, FailureReason, PhaseTimes, StatsSnapshot};
pub use valid::ValidInferRequest;
pub use worker::{InferOutcome, LocalWorker, ResponseStream, StreamItem, WorkerClient};
