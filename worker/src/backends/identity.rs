//! `identity`: output i is input i, any datatype and shape, without copying the payload.

use async_trait::async_trait;
use tritium_tensor::Tensor;

use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};

/// Returns each input under the name of the output at the same position in the config.
#[derive(Debug)]
pub struct Identity {
    /// (input name, output name) pairs in config order.
    pairs: Vec<(String, String)>,
}

impl Identity {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        if config.input.len() != config.output.len() {
            return Err(format!(
                "the identity backend needs as many outputs as inputs, config has {} inputs and {} outputs",
                config.input.len(),
                config.output.len()
            ));
        }
        let pairs = config.input.iter().zip(&config.output).map(|(i, o)| (i.name.clone(), o.name.clone())).collect();
        Ok(Engine::tensors(Identity { pairs }))
    }
}

/// The input's name buffer becomes the output's: no allocation per request.
fn rename(tensor: &mut Tensor, output_name: &str) {
    tensor.name.clear();
    tensor.name.push_str(output_name);
}

#[async_trait]
impl Backend for Identity {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let mut inputs = request.inputs;
        // Clients nearly always send every input in config order: rename them where they lie.
        let in_order = inputs.len() == self.pairs.len() && inputs.iter().zip(&self.pairs).all(|(t, (name, _))| &t.name == name);
        if in_order {
            for (tensor, (_, output_name)) in inputs.iter_mut().zip(&self.pairs) {
                rename(tensor, output_name);
            }
            return responder.send(inputs).await;
        }
        let mut outputs = Vec::with_capacity(self.pairs.len());
        for (input_name, output_name) in &self.pairs {
            // Optional inputs that were not sent simply produce no output. Validation has
            // refused duplicate names, so each input is taken at most once.
            if let Some(position) = inputs.iter().position(|t| &t.name == input_name) {
                let mut tensor = inputs.swap_remove(position);
                rename(&mut tensor, output_name);
                outputs.push(tensor);
            }
        }
        responder.send(outputs).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tritium_tensor::DataType;

    fn identity() -> Identity {
        let pair = |i: usize| (format!("INPUT{i}"), format!("OUTPUT{i}"));
        Identity { pairs: vec![pair(0), pair(1)] }
    }

    fn tensor(name: &str, payload: &'static [u8]) -> Tensor {
        Tensor::new(name, DataType::Uint8, vec![payload.len() as i64], Bytes::from_static(payload))
    }

    async fn run(inputs: Vec<Tensor>) -> Vec<(String, Bytes)> {
        let mut responder = Responder::single();
        let request = BackendRequest {
            inputs,
            parameters: Default::default(),
            cancel: None,
            id: String::new(),
            requested_outputs: Vec::new(),
            trace: None,
        };
        identity().execute(request, &mut responder).await.expect("identity answers");
        responder.take_single().expect("one response").into_iter().map(|t| (t.name, t.data)).collect()
    }

    fn named(pairs: &[(&str, &'static [u8])]) -> Vec<(String, Bytes)> {
        pairs.iter().map(|(n, d)| (n.to_string(), Bytes::from_static(d))).collect()
    }

    #[tokio::test]
    async fn inputs_in_config_order_come_back_renamed() {
        let outputs = run(vec![tensor("INPUT0", b"a"), tensor("INPUT1", b"bc")]).await;
        assert_eq!(outputs, named(&[("OUTPUT0", b"a"), ("OUTPUT1", b"bc")]));
    }

    #[tokio::test]
    async fn inputs_out_of_order_come_back_in_config_order() {
        let outputs = run(vec![tensor("INPUT1", b"bc"), tensor("INPUT0", b"a")]).await;
        assert_eq!(outputs, named(&[("OUTPUT0", b"a"), ("OUTPUT1", b"bc")]));
    }

    #[tokio::test]
    async fn an_input_not_sent_has_no_output() {
        let outputs = run(vec![tensor("INPUT1", b"bc")]).await;
        assert_eq!(outputs, named(&[("OUTPUT1", b"bc")]));
    }
}
