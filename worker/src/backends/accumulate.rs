//! `accumulate`: a stateful model for the sequence batcher. Each row's `OUTPUT` is the
//! sequence's running sum: its state input plus `INPUT`, which also becomes the next state. The
//! state lives in the server (the config's implicit `state`), so the backend holds nothing
//! between calls. Every tensor is INT32; the state's input and output names are the config's.

use async_trait::async_trait;
use tritium_proto::inference::model_config::SchedulingChoice;
use tritium_tensor::{DataType, Tensor};

use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};

#[derive(Debug)]
pub struct Accumulate {
    input: String,
    output: String,
    state_input: String,
    state_output: String,
}

impl Accumulate {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        let ([input], [output]) = (config.input.as_slice(), config.output.as_slice()) else {
            return Err("the accumulate backend needs one input and one output".to_string());
        };
        let Some(SchedulingChoice::SequenceBatching(batching)) = &config.scheduling_choice else {
            return Err("the accumulate backend needs sequence_batching with one state".to_string());
        };
        let [state] = batching.state.as_slice() else {
            return Err("the accumulate backend needs sequence_batching with one state".to_string());
        };
        let int32 = |t: i32| DataType::from_config(t) == Some(DataType::Int32);
        if !int32(input.data_type) || !int32(output.data_type) || !int32(state.data_type) {
            return Err("the accumulate backend works on TYPE_INT32".to_string());
        }
        Ok(Engine::tensors(Accumulate {
            input: input.name.clone(),
            output: output.name.clone(),
            state_input: state.input_name.clone(),
            state_output: state.output_name.clone(),
        }))
    }
}

#[async_trait]
impl Backend for Accumulate {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let input = request.input(&self.input)?;
        let state = request.input(&self.state_input)?;
        let sums: Vec<i32> = input.to_vec::<i32>()?.iter().zip(state.to_vec::<i32>()?).map(|(x, s)| s.wrapping_add(*x)).collect();
        responder
            .send(vec![
                Tensor::from_slice(self.output.clone(), input.shape.clone(), &sums),
                Tensor::from_slice(self.state_output.clone(), input.shape.clone(), &sums),
            ])
            .await
    }
}
