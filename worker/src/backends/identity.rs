//! `identity`: output i is input i, any datatype and shape, without copying the payload.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{Backend, BackendContext, BackendError, BackendRequest, Responder};

/// Returns each input under the name of the output at the same position in the config.
#[derive(Debug)]
pub struct Identity {
    /// (input name, output name) pairs in config order.
    pairs: Vec<(String, String)>,
}

impl Identity {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Arc<dyn Backend>, String> {
        let config = context.config;
        if config.input.len() != config.output.len() {
            return Err(format!(
                "the identity backend needs as many outputs as inputs, config has {} inputs and {} outputs",
                config.input.len(),
                config.output.len()
            ));
        }
        let pairs = config.input.iter().zip(&config.output).map(|(i, o)| (i.name.clone(), o.name.clone())).collect();
        Ok(Arc::new(Identity { pairs }))
    }
}

#[async_trait]
impl Backend for Identity {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let mut inputs = request.inputs;
        let mut outputs = Vec::with_capacity(self.pairs.len());
        for (input_name, output_name) in &self.pairs {
            // Optional inputs that were not sent simply produce no output. Validation has
            // refused duplicate names, so each input is taken at most once.
            if let Some(position) = inputs.iter().position(|t| &t.name == input_name) {
                let mut tensor = inputs.swap_remove(position);
                // The input's name buffer becomes the output's: no allocation per request.
                tensor.name.clear();
                tensor.name.push_str(output_name);
                outputs.push(tensor);
            }
        }
        responder.send(outputs).await
    }
}
