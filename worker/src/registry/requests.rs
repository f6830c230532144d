//! Requests meeting the repository: resolved to the version they ask for and checked against it.

use std::sync::Arc;

use tritium_backend_api::{InferenceRequest, WorkerError};

use super::ModelRepository;
use crate::model::ValidInferRequest;

impl ModelRepository {
    /// Resolves the version a request asks for and checks the request against it: the one place
    /// a request is validated.
    pub fn validate(&self, request: InferenceRequest) -> Result<ValidInferRequest, WorkerError> {
        self.resolve(&request.model_name, request.model_version)?.validate(request)
    }

    /// `request` as this repository runs it: as it is when it was checked against this
    /// repository's own version; checked again against that version otherwise (it was validated
    /// against a remote model's stand-in, or against a version reloaded since).
    pub fn adopt(&self, request: ValidInferRequest) -> Result<ValidInferRequest, WorkerError> {
        let own = self.resolve(request.model_name(), Some(request.version()))?;
        if Arc::ptr_eq(&own, request.model()) { Ok(request) } else { own.validate(request.into_request()) }
    }
}
