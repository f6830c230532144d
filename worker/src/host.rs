//! The model repository as the [`Host`] its backends call back into: Triton's business-logic
//! scripting and model control from a model, and the [`Steps`] its ensembles run.

use std::sync::Arc;

use async_trait::async_trait;
use tritium_backend_api::{Host, InferOutcome, InferenceRequest, WorkerError};

use crate::ensemble::Steps;
use crate::model::ModelVersion;
use crate::registry::{FileOverride, ModelRepository};

impl Steps for ModelRepository {
    fn resolve(&self, name: &str, version: Option<i64>) -> Result<Arc<ModelVersion>, WorkerError> {
        ModelRepository::resolve(self, name, version)
    }
}

#[async_trait]
impl Host for ModelRepository {
    async fn infer(&self, request: InferenceRequest) -> Result<InferOutcome, WorkerError> {
        ModelVersion::run_any(self.validate(request)?).await
    }

    async fn infer_run(&self, request: InferenceRequest) -> Result<Result<InferOutcome, WorkerError>, WorkerError> {
        ModelVersion::run_any_split(self.validate(request)?).await
    }

    fn is_ready(&self, model: &str, version: Option<i64>) -> bool {
        ModelRepository::is_ready(self, model, version)
    }

    fn load(&self, model: &str, config_json: Option<&str>) -> Result<(), WorkerError> {
        ModelRepository::load(self, model, config_json)
    }

    fn unload(&self, model: &str) -> Result<(), WorkerError> {
        ModelRepository::unload(self, model)
    }

    fn load_files(&self, model: &str, config_json: Option<&str>, files: Vec<(String, Vec<u8>)>) -> Result<(), WorkerError> {
        let files: Vec<FileOverride> =
            files.into_iter().map(|(path, content)| FileOverride { path, content: content.into() }).collect();
        ModelRepository::load_files(self, model, config_json, &files)
    }
}
