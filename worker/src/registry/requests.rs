//! Requests meeting the repository: resolved to the version they ask for and checked against it.

use tritium_backend_api::{InferenceRequest, WorkerError};

use super::ModelRepository;
use crate::model::ValidInferRequest;

impl ModelRepository {
    /// Resolves the version a request asks for and checks the request against it: the one place
    /// a request is validated.
    pub fn validate(&self, request: InferenceRequest) -> Result<ValidInferRequest, WorkerError> {
        self.resolve(&request.model_name, request.model_version)?.validate(request)
    }

    /// `request` as this repository runs it: as it is when it was checked against a version this
    /// repository built (like a request the frontend runs directly, on the version it resolved
    /// once, even if a reload replaced it since); checked again against this repository's version
    /// otherwise (it was validated against a remote model's stand-in).
    pub fn adopt(&self, request: ValidInferRequest) -> Result<ValidInferRequest, WorkerError> {
        if request.model().owner == self.id {
            return Ok(request);
        }
        let own = self.resolve(request.model_name(), Some(request.version()))?;
        own.validate(request.into_request())
    }
}
