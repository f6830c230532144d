//! `repeat` and `square`: Triton's decoupled example backends, with Triton's configs and meaning,
//! so that Triton's test models (`repeat_int32`, `square_int32`) and the client examples that use
//! them work unchanged.
//!
//! - `repeat`: inputs `IN` (INT32 [n]), `DELAY` (UINT32, IN's shape), `WAIT` (UINT32 [1]); for each
//!   element i of IN, after DELAY[i] ms, one response with `OUT` = IN[i] (INT32 [1]) and `IDX` = i
//!   (UINT32 [1]); then the request ends (an empty IN: no response). The model's instance is
//!   released WAIT ms after the request started, even if responses are still coming, so one
//!   instance interleaves several requests when WAIT is short.
//! - `square`: input `IN` (INT32 [1]) = n gives n responses, each with `OUT` = n.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};
use tritium_proto::ErrorCode;
use tritium_proto::inference::{DataType, ModelConfig};
use tritium_tensor::Tensor;

use super::tritium_repeat::first;
use crate::scheduler_limits::instance_count;

fn invalid(message: String) -> BackendError {
    BackendError::failed(ErrorCode::InvalidArg, message)
}

fn shape_text(dims: &[i64]) -> String {
    format!("[{}]", dims.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

fn type_text(data_type: i32) -> String {
    DataType::try_from(data_type).map_or_else(|_| data_type.to_string(), |t| t.as_str_name().to_string())
}

/// Checks the config as Triton's repeat backend does (names in order, shapes, datatypes).
fn check_repeat_config(config: &ModelConfig) -> Result<(), String> {
    if config.max_batch_size != 0 {
        return Err("repeat backend only supports models with max_batch_size == 0".to_string());
    }
    if config.input.len() != 3 {
        return Err(format!("expected 3 inputs, got {}", config.input.len()));
    }
    if config.output.len() != 2 {
        return Err(format!("expected 2 outputs, got {}", config.output.len()));
    }
    let (input, delay, wait) = (&config.input[0], &config.input[1], &config.input[2]);
    let (out, idx) = (&config.output[0], &config.output[1]);
    for (position, found, wanted) in [
        ("first input", &input.name, "IN"),
        ("second input", &delay.name, "DELAY"),
        ("third input", &wait.name, "WAIT"),
        ("first output", &out.name, "OUT"),
        ("second output", &idx.name, "IDX"),
    ] {
        if found != wanted {
            return Err(format!("expected {position} tensor name to be {wanted}, got {found}"));
        }
    }
    if input.dims.len() != 1 {
        return Err(format!("expected IN shape to have one dimension, got {}", shape_text(&input.dims)));
    }
    if input.dims != delay.dims {
        return Err(format!(
            "expected IN and DELAY shape to match, got {} and {}",
            shape_text(&input.dims),
            shape_text(&delay.dims)
        ));
    }
    for (name, dims) in [("WAIT", &wait.dims), ("OUT", &out.dims), ("IDX", &idx.dims)] {
        if dims.as_slice() != [1] {
            return Err(format!("expected {name} shape to be [1], got {}", shape_text(dims)));
        }
    }
    for (name, found, wanted, text) in [
        ("IN", input.data_type, DataType::TypeInt32, "INT32"),
        ("DELAY", delay.data_type, DataType::TypeUint32, "UINT32"),
        ("WAIT", wait.data_type, DataType::TypeUint32, "UINT32"),
        ("OUT", out.data_type, DataType::TypeInt32, "INT32"),
        ("IDX", idx.data_type, DataType::TypeUint32, "UINT32"),
    ] {
        if found != wanted as i32 {
            return Err(format!("expected {name} datatype to be {text}, got {}", type_text(found)));
        }
    }
    Ok(())
}

fn needs_decoupled(config: &ModelConfig, backend: &str) -> Result<(), String> {
    if config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled) {
        Ok(())
    } else {
        Err(format!("the {backend} backend needs model_transaction_policy {{ decoupled: true }}"))
    }
}

#[derive(Debug)]
pub struct Repeat {
    /// One permit per instance: a request holds one for its WAIT.
    instances: Arc<Semaphore>,
}

impl Repeat {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        check_repeat_config(context.config)?;
        needs_decoupled(context.config, "repeat")?;
        Ok(Engine::tensors(Repeat { instances: Arc::new(Semaphore::new(instance_count(context.config))) }))
    }
}

#[async_trait]
impl Backend for Repeat {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let permit = tokio::select! {
            permit = Arc::clone(&self.instances).acquire_owned() => permit.map_err(|_| BackendError::Cancelled)?,
            () = request.cancelled() => return Err(BackendError::Cancelled),
        };
        let wait = request.input("WAIT")?;
        if wait.data.len() != size_of::<u32>() {
            drop(permit);
            return Err(invalid("unexpected size for WAIT input".to_string()));
        }
        let wait = Duration::from_millis(u64::from(first::<u32>(wait)?));
        // The instance is free again WAIT ms after the request began, whatever is still to send.
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            drop(permit);
        });
        let (input, delay) = (request.input("IN")?, request.input("DELAY")?);
        if input.shape != delay.shape {
            return Err(invalid(format!(
                "expected IN and DELAY shape to match, got {} and {}",
                shape_text(&input.shape),
                shape_text(&delay.shape)
            )));
        }
        let (values, delays) = (input.to_vec::<i32>()?, delay.to_vec::<u32>()?);
        for (index, (value, delay)) in values.iter().zip(&delays).enumerate() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(u64::from(*delay))) => {}
                () = request.cancelled() => return Err(BackendError::Cancelled),
            }
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            responder
                .send(vec![Tensor::from_slice("OUT", vec![1], &[*value]), Tensor::from_slice("IDX", vec![1], &[index])])
                .await?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct Square;

impl Square {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        let config = context.config;
        needs_decoupled(config, "square")?;
        let fits =
            |tensors: &[(&str, i32, &[i64])]| tensors.iter().all(|(_, t, d)| *t == DataType::TypeInt32 as i32 && *d == [1]);
        let inputs: Vec<_> = config.input.iter().map(|i| (i.name.as_str(), i.data_type, i.dims.as_slice())).collect();
        let outputs: Vec<_> = config.output.iter().map(|o| (o.name.as_str(), o.data_type, o.dims.as_slice())).collect();
        if inputs.len() != 1
            || inputs[0].0 != "IN"
            || outputs.len() != 1
            || outputs[0].0 != "OUT"
            || !fits(&inputs)
            || !fits(&outputs)
        {
            return Err("the square backend needs one input IN and one output OUT, both INT32 [1]".to_string());
        }
        Ok(Engine::tensors(Square))
    }
}

#[async_trait]
impl Backend for Square {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let n = first::<i32>(request.input("IN")?)?;
        for _ in 0..n.max(0) {
            if request.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Err(BackendError::Cancelled);
            }
            responder.send(vec![Tensor::from_slice("OUT", vec![1], &[n])]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_proto::inference::{ModelInput, ModelOutput};

    fn repeat_int32() -> ModelConfig {
        let input = |name: &str, data_type: DataType, dims: Vec<i64>| ModelInput {
            name: name.to_string(),
            data_type: data_type as i32,
            dims,
            ..Default::default()
        };
        let output = |name: &str, data_type: DataType| ModelOutput {
            name: name.to_string(),
            data_type: data_type as i32,
            dims: vec![1],
            ..Default::default()
        };
        ModelConfig {
            name: "repeat_int32".to_string(),
            backend: "repeat".to_string(),
            input: vec![
                input("IN", DataType::TypeInt32, vec![-1]),
                input("DELAY", DataType::TypeUint32, vec![-1]),
                input("WAIT", DataType::TypeUint32, vec![1]),
            ],
            output: vec![output("OUT", DataType::TypeInt32), output("IDX", DataType::TypeUint32)],
            ..Default::default()
        }
    }

    #[test]
    fn tritons_repeat_int32_config_is_accepted_and_others_are_refused_with_its_words() {
        check_repeat_config(&repeat_int32()).expect("Triton's config");
        let mut ours = repeat_int32();
        ours.input.truncate(1);
        assert_eq!(check_repeat_config(&ours).expect_err("ours"), "expected 3 inputs, got 1");
        let mut renamed = repeat_int32();
        renamed.input[1].name = "DELAY_MS".to_string();
        assert_eq!(
            check_repeat_config(&renamed).expect_err("renamed"),
            "expected second input tensor name to be DELAY, got DELAY_MS"
        );
        let mut typed = repeat_int32();
        typed.output[1].data_type = DataType::TypeInt32 as i32;
        assert_eq!(check_repeat_config(&typed).expect_err("typed"), "expected IDX datatype to be UINT32, got TYPE_INT32");
        let mut batched = repeat_int32();
        batched.max_batch_size = 4;
        assert!(check_repeat_config(&batched).expect_err("batched").contains("max_batch_size == 0"));
    }
}
