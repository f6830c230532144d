//! [`ValidInferRequest`]: an inference request checked once, in one place, against the model
//! version it resolved to. Everything after the transport takes this type (the worker seam, the
//! router, the remote path, the language-model frontend, the backends), so none of them checks
//! the request again, and none can run a request that was never checked: the only way to get one
//! is [`ModelVersion::validate`] (or `ModelRepository::validate`, which resolves the version
//! first).
//!
//! What is checked: the model and version exist and are ready; every input is known, given once,
//! of the config's datatype and shape (with the batch rules of `max_batch_size`), and its bytes
//! fit that shape (BYTES elements included); required inputs are present; requested outputs exist;
//! Triton's reserved parameters have the right types. The transport has already turned the wire
//! message into tensors (datatype names, raw/typed contents, shared memory).

use std::sync::Arc;
use std::time::Instant;

use super::ModelVersion;
use crate::params::{RequestOptions, parse_request_options};
use tritium_backend_api::error::WorkerError;
use tritium_backend_api::request::InferenceRequest;

/// A request that fits its model version: see the module docs.
#[derive(Debug, Clone)]
pub struct ValidInferRequest {
    model: Arc<ModelVersion>,
    /// As the client sent it, with `model_version` set to the resolved version.
    request: InferenceRequest,
    options: RequestOptions,
    batch_size: u64,
    /// When validation began and ended (the statistics' queue and compute-input phases).
    pub(crate) started: Instant,
    pub(crate) validated: Instant,
}

impl ModelVersion {
    /// Checks `request` against this version's contract; the result runs on this version (or, for
    /// a model a worker process serves, is sent there with this version number).
    pub fn validate(self: &Arc<Self>, mut request: InferenceRequest) -> Result<ValidInferRequest, WorkerError> {
        let started = Instant::now();
        self.schema.validate(&request)?;
        let options =
            parse_request_options(&self.name, &request.parameters).map_err(|reason| WorkerError::invalid(&request.id, reason))?;
        let batch_size = match request.inputs.first() {
            Some(input) if self.schema.batched() => input.shape.first().map_or(1, |&b| u64::try_from(b).unwrap_or(0)),
            _ => 1,
        };
        request.model_version = Some(self.version);
        Ok(ValidInferRequest { model: Arc::clone(self), request, options, batch_size, started, validated: Instant::now() })
    }
}

impl ValidInferRequest {
    /// The version this request was checked against and runs on.
    pub fn model(&self) -> &Arc<ModelVersion> {
        &self.model
    }

    /// The resolved version number (never "latest": resolution happened once, here).
    pub fn version(&self) -> i64 {
        self.model.version
    }

    pub fn model_name(&self) -> &str {
        &self.request.model_name
    }

    pub fn request(&self) -> &InferenceRequest {
        &self.request
    }

    /// Triton's reserved parameters, parsed.
    pub fn options(&self) -> &RequestOptions {
        &self.options
    }

    /// The batch dimension of the inputs (1 for a model that does not batch).
    pub fn batch_size(&self) -> u64 {
        self.batch_size
    }

    /// The request with its version pinned, e.g. to send to a worker process, which validates
    /// what it receives again: a process boundary is a trust boundary.
    pub fn into_request(self) -> InferenceRequest {
        self.request
    }

    pub(crate) fn into_parts(self) -> (Arc<ModelVersion>, InferenceRequest, Timing, RequestOptions) {
        let timing = Timing { arrived: self.request.arrived, started: self.started, validated: self.validated };
        (self.model, self.request, timing, self.options)
    }
}

/// Timestamps of one request, turned into statistics once it has succeeded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) arrived: Instant,
    pub(crate) started: Instant,
    pub(crate) validated: Instant,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelRepository, RepositoryOptions};
    use tritium_tensor::Tensor;

    fn repository() -> Arc<ModelRepository> {
        ModelRepository::open(RepositoryOptions::default(), crate::builtin_backends()).expect("built-ins")
    }

    #[test]
    fn a_valid_request_pins_the_version_it_resolved_to() {
        let repository = repository();
        let request = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![2], &[1f32, 2.0])]);
        let valid = repository.validate(request).expect("valid");
        assert_eq!(valid.request().model_version, Some(valid.version()));
        assert_eq!(valid.model_name(), "identity");
        assert_eq!(valid.batch_size(), 1);
    }

    #[test]
    fn resolution_and_contract_errors_come_from_the_one_check() {
        let repository = repository();
        let unknown = repository.validate(InferenceRequest::new("nope", vec![])).expect_err("unknown model");
        assert!(matches!(unknown, WorkerError::ModelNotFound { .. }), "{unknown}");
        let mut versioned = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[1f32])]);
        versioned.model_version = Some(99);
        let missing = repository.validate(versioned).expect_err("no such version");
        assert!(matches!(missing, WorkerError::VersionNotFound { version: 99, .. }), "{missing}");
        let mut reserved = InferenceRequest::new("identity", vec![Tensor::from_slice("INPUT0", vec![1], &[1f32])]);
        reserved.parameters.push(("triton_mine".into(), crate::ParamValue::Bool(true)));
        let message = repository.validate(reserved).expect_err("reserved key").to_string();
        assert!(message.contains("reserved for Triton usage"), "{message}");
    }
}
