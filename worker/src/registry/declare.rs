//! Models declared after the server started: a process that embeds the server (the Python
//! package's `Server.bind` on a running server) adds a model by its config alone, as
//! `--model-path` declares one at start, and it is loaded there and then.

use super::{DeclaredModel, LoadCause, ModelRepository, builtin_source};
use tritium_backend_api::error::WorkerError;

impl ModelRepository {
    /// Declares `model` and loads it, whatever the control mode: the embedding process asks, not
    /// a client. A name the repository already has is refused; a model that fails to load is
    /// not kept declared (its failure stays in the index, as a failed load's does).
    pub fn declare(&self, model: DeclaredModel) -> Result<(), WorkerError> {
        let source = builtin_source(&model.name, &model.config_text);
        {
            let _guard = self.lifecycle.lock();
            if self.find_source(&model.name)?.is_some() || self.is_served(&model.name) {
                return Err(WorkerError::LoadFailed {
                    name: model.name.clone(),
                    reason: "a model of that name is already in the repository".to_string(),
                });
            }
            self.declared_later.lock().push(model);
        }
        let _loading = self.loading.enter(&source.name);
        let built = self.build(&source, None);
        let _guard = self.lifecycle.lock();
        let settled = self.settle(&source, built, LoadCause::Client);
        if settled.is_err() {
            self.declared_later.lock().retain(|d| d.name != source.name);
        }
        settled
    }
}
