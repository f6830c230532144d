//! `tritium_repeat`: a decoupled model for testing streams. Input `IN` (INT32 [1]) = n gives n
//! responses with `OUT` = 0..n-1, then the request ends; the optional `DELAY_MS` (UINT32 [1]) waits
//! between responses, so cancellation and interleaving can be observed. (Triton's own `repeat`
//! backend, with other inputs and meaning, is [`super::repeat`].)

use std::time::Duration;

use async_trait::async_trait;
use tritium_proto::ErrorCode;
use tritium_tensor::Tensor;

use tritium_backend_api::{Backend, BackendContext, BackendError, BackendRequest, Engine, Responder};

#[derive(Debug)]
pub struct TritiumRepeat {
    output: String,
}

impl TritiumRepeat {
    pub fn from_context(context: &BackendContext<'_>) -> Result<Engine, String> {
        let decoupled = context.config.model_transaction_policy.as_ref().is_some_and(|p| p.decoupled);
        if !decoupled {
            return Err("the tritium_repeat backend needs model_transaction_policy { decoupled: true }".to_string());
        }
        let output = context.config.output.first().ok_or("the tritium_repeat backend needs one output")?;
        Ok(Engine::tensors(TritiumRepeat { output: output.name.clone() }))
    }
}

#[async_trait]
impl Backend for TritiumRepeat {
    async fn execute(&self, request: BackendRequest, responder: &mut Responder) -> Result<(), BackendError> {
        let count = first::<i32>(request.input("IN")?)?;
        let count = u32::try_from(count)
            .map_err(|_| BackendError::failed(ErrorCode::InvalidArg, format!("IN must be >= 0, got {count}")))?;
        let delay = match request.optional_input("DELAY_MS") {
            Some(t) => Duration::from_millis(u64::from(first::<u32>(t)?)),
            None => Duration::ZERO,
        };
        for i in 0..count {
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = request.cancelled() => return Err(BackendError::Cancelled),
                }
            }
            // i < count <= i32::MAX, so the cast is exact.
            responder.send(vec![Tensor::from_slice(self.output.clone(), vec![1], &[i as i32])]).await?;
        }
        Ok(())
    }
}

pub(super) fn first<T: tritium_tensor::Element>(tensor: &Tensor) -> Result<T, BackendError> {
    tensor
        .to_vec::<T>()?
        .first()
        .copied()
        .ok_or_else(|| BackendError::failed(ErrorCode::InvalidArg, format!("input '{}' must hold one element", tensor.name)))
}
