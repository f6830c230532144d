//! `identity`: output i is input i, any datatype and shape, without copying the payload.

use std::sync::Arc;

use async_trait::async_trait;
use tritium_tensor::Tensor;

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
        let mut outputs = Vec::with_capacity(self.pairs.len());
        for (input_name, output_name) in &self.pairs {
            // Optional inputs that were not sent simply produce no output.
            if let Some(input) = request.optional_input(input_name) {
                outputs.push(Tensor::new(output_name.clone(), input.datatype, input.shape.clone(), input.data.clone()));
            }
        }
        responder.send(outputs).await
    }
}
