//! The gRPC surface: `inference.GRPCInferenceService`, `grpc.health.v1.Health` tied to
//! readiness, and server reflection (v1 and v1alpha).

pub mod budget;
pub mod classification;
pub mod convert;
pub mod health;
mod keepalive;
pub mod service;
pub mod stream;
pub mod transport;

pub use crate::admin::EXTENSIONS;
pub use service::InferenceService;
