//! The worker request plane: the `tritium.worker.v1.Worker` gRPC service a worker process serves
//! ([`WorkerService`], over its model repository) and the client a frontend reaches it with
//! ([`RemoteWorker`], a [`tritium_worker::WorkerClient`] like the in-process `LocalWorker`).
//!
//! Telling errors apart is the point of the protocol's one convention: every status the
//! worker's handlers produce carries the metadata entry [`ORIGIN_KEY`]` = `[`ORIGIN_WORKER`].
//! With it, the worker answered and the client returns `WorkerError::Failed` with the worker's
//! code and exact message; without it the transport failed, and the client returns
//! `WorkerError::Unreachable` (or, inside a token stream, `GenerateError::WorkerLost`), so the
//! router can retry or migrate elsewhere.
//!
//! A draining worker refuses new calls with `UNAVAILABLE` [`DRAINING_MESSAGE`], marked as the
//! worker's and as not started ([`NOT_STARTED_KEY`]): the client returns
//! `WorkerError::NotStarted`, and a frontend may run the request elsewhere.
//!
//! ```no_run
//! # async fn run(repository: std::sync::Arc<tritium_worker::ModelRepository>) -> Result<(), Box<dyn std::error::Error>> {
//! use tritium_cluster::remote::{RemoteWorker, worker_service};
//! use tritium_worker::WorkerClient;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let uri = format!("http://{}", listener.local_addr()?);
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .add_service(worker_service(repository, 64 << 20))
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//! let worker = RemoteWorker::new("w1", &uri, 64 << 20)?;
//! for model in worker.describe_models().await? {
//!     println!("{} version {}", model.name, model.version);
//! }
//! # Ok(()) }
//! ```

pub mod auth;
mod client;
pub mod convert;
// The real engine on both sides of the worker plane.
#[cfg(test)]
mod disagg_tests;
mod drain;
mod kv_pull;
#[cfg(test)]
mod llm_tests;
pub mod nats_plane;
mod service;
#[cfg(test)]
mod tests;
pub mod tls;

pub use client::{RemoteModel, RemoteWorker};
pub use drain::{InFlight, InFlightGuard};
pub use kv_pull::TransferOptions;
pub use nats_plane::{Dialer, NatsListener, NatsPlane};
pub use tls::{ClientTls, PlaneTlsFiles, ServerTls};
pub use service::{DRAINING_MESSAGE, WorkerService, worker_service};

/// The metadata key that marks a status as the worker's own answer.
pub const ORIGIN_KEY: &str = "tritium-origin";
/// Its value.
pub const ORIGIN_WORKER: &str = "worker";

/// The metadata key that marks a worker's refusal as made before the call started (it is
/// draining), so the call may run on another worker.
pub const NOT_STARTED_KEY: &str = "tritium-not-started";

/// The InferStream response header saying which kind of model answered.
pub const OUTCOME_KEY: &str = "tritium-outcome";
/// A plain model: exactly one message follows.
pub const OUTCOME_SINGLE: &str = "single";
/// A decoupled model: any number of messages follow.
pub const OUTCOME_STREAM: &str = "stream";

/// The Generate response header naming the worker a decode worker's prompt blocks came from.
pub const PREFILL_WORKER_KEY: &str = "tritium-prefill-worker";
