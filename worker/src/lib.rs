//! Tritium's core: the model registry, the schedulers (written once, for every backend), the
//! statistics, dispatch and the built-in backends. Backends plug in through
//! [`tritium_backend_api`] and never import this crate.
//!
//! - [`registry::ModelRepository`]: Triton's model repository layout, version policies and
//!   control modes, with a built-in repository (`identity`, `identity_batch`, `add_sub`,
//!   `repeat`, ...) when no folder is given; it builds each model version through the
//!   [`BackendRegistry`] it is given, and is the [`tritium_backend_api::Host`] backends call back.
//! - [`scheduler::Scheduler`]: none, Triton's dynamic batcher or its sequence batcher; ensembles
//!   in [`ensemble`]; every execution they start waits for its resources in the server's
//!   [`rate_limiter::RateLimiter`] (`--rate-limit execution_count`).
//! - [`valid::ValidInferRequest`]: a request checked once against the version it resolved to;
//!   everything after the transport takes it.
//! - [`worker::WorkerClient`]: the dispatch seam; [`worker::LocalWorker`] runs requests in
//!   process.
//!
//! ```
//! # tokio_test_block(async {
//! use std::sync::Arc;
//! use tritium_tensor::Tensor;
//! use tritium_worker::{InferenceRequest, LocalWorker, ModelRepository, RepositoryOptions, WorkerClient, builtin_backends};
//!
//! let repository = ModelRepository::open(RepositoryOptions::default(), builtin_backends()).unwrap();
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

pub mod backends;
mod batch_tensors;
pub mod dynamic_batcher;
pub mod ensemble;
mod host;
mod load_gate;
pub mod model;
pub mod params;
mod priority_queue;
pub mod ragged;
pub mod rate_limiter;
pub mod registry;
mod reply;
pub mod response_cache;
pub mod scheduler;
mod scheduler_limits;
pub mod schema;
pub mod sequence;
pub mod stats;
pub mod text_task;
mod warmup;
pub mod worker;

pub use backends::{builtin_backends, register_builtins};
pub use model::ModelVersion;
pub use rate_limiter::{RateLimitMode, RateLimiter, ResourceLimit};
pub use registry::{
    ByName, ControlMode, DeclaredModel, FileOverride, IndexEntry, MAX_OVERRIDE_BYTES, MAX_OVERRIDE_FILES, ModelRepository,
    ModelState, OverrideFolder, RemoteModel, RemoteRepository, RepositoryOptions, ServedModel, SyncedModel,
};
pub use scheduler_limits::{SchedulerLimits, instance_count};
pub use stats::{BatchStat, FailureReason, PhaseTimes, StatsSnapshot};
// The seam's request, response and error types, which every caller of the core handles too.
pub use model::ValidInferRequest;
pub use tritium_backend_api::{
    Backend, BackendContext, BackendError, BackendFactory, BackendRegistry, BackendRequest, Engine, InferOutcome,
    InferenceRequest, InferenceResponse, ParamValue, Parameters, Responder, ResponseStream, StreamItem, StreamedRequest,
    WorkerError, parse_version,
};
pub use worker::{LocalWorker, WorkerClient};
