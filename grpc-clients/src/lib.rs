//! A typed Rust client for KServe v2 / Triton gRPC servers (Tritium or Triton), over the stubs
//! generated from Tritium's own protos. Used by the end-to-end tests and benches.
//!
//! ```no_run
//! # async fn run() -> Result<(), tritium_grpc_clients::ClientError> {
//! use tritium_grpc_clients::{InferClient, InferRequestBuilder};
//! use tritium_tensor::Tensor;
//!
//! let mut client = InferClient::connect("http://127.0.0.1:8001").await?;
//! let request = InferRequestBuilder::new("identity")
//!     .input(Tensor::from_slice("INPUT0", vec![3], &[1.0f32, 2.0, 3.0]))
//!     .build();
//! let response = client.infer(request).await?;
//! let output = tritium_grpc_clients::output_tensor(&response, "OUTPUT0")?;
//! assert_eq!(output.to_vec::<f32>()?, vec![1.0, 2.0, 3.0]);
//! # Ok(()) }
//! ```

use std::collections::HashMap;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tritium_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_proto::inference::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use tritium_proto::inference::*;
use tritium_tensor::{DataType, Tensor, TensorError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("response has no output '{0}'")]
    MissingOutput(String),
    #[error("output '{name}' has unknown datatype '{datatype}'")]
    UnknownDatatype { name: String, datatype: String },
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// The generated client with Triton's channel settings (2 GiB - 1 messages both ways).
#[derive(Debug, Clone)]
pub struct InferClient {
    inner: GrpcInferenceServiceClient<Channel>,
}

impl InferClient {
    /// Connects to `uri`, e.g. `http://127.0.0.1:8001`.
    pub async fn connect(uri: impl Into<String>) -> Result<InferClient, ClientError> {
        let channel = Endpoint::from_shared(uri.into())?.tcp_nodelay(true).connect().await?;
        Ok(InferClient::from_channel(channel))
    }

    pub fn from_channel(channel: Channel) -> InferClient {
        let inner = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(i32::MAX as usize)
            .max_encoding_message_size(i32::MAX as usize);
        InferClient { inner }
    }

    /// The generated client, for calls this wrapper has no helper for.
    pub fn raw(&mut self) -> &mut GrpcInferenceServiceClient<Channel> {
        &mut self.inner
    }

    pub async fn infer(&mut self, request: ModelInferRequest) -> Result<ModelInferResponse, ClientError> {
        Ok(self.inner.model_infer(request).await?.into_inner())
    }

    pub async fn model_metadata(&mut self, name: &str, version: &str) -> Result<ModelMetadataResponse, ClientError> {
        let request = ModelMetadataRequest { name: name.to_string(), version: version.to_string() };
        Ok(self.inner.model_metadata(request).await?.into_inner())
    }

    pub async fn model_config(&mut self, name: &str, version: &str) -> Result<ModelConfig, ClientError> {
        let request = ModelConfigRequest { name: name.to_string(), version: version.to_string() };
        Ok(self.inner.model_config(request).await?.into_inner().config.unwrap_or_default())
    }

    pub async fn model_ready(&mut self, name: &str, version: &str) -> Result<bool, ClientError> {
        let request = ModelReadyRequest { name: name.to_string(), version: version.to_string() };
        Ok(self.inner.model_ready(request).await?.into_inner().ready)
    }

    pub async fn statistics(&mut self, name: &str, version: &str) -> Result<Vec<ModelStatistics>, ClientError> {
        let request = ModelStatisticsRequest { name: name.to_string(), version: version.to_string() };
        Ok(self.inner.model_statistics(request).await?.into_inner().model_stats)
    }

    /// Opens a ModelStreamInfer call; send requests on the returned sender, read responses
    /// from the stream. Dropping the sender half-closes the call.
    pub async fn stream(
        &mut self,
    ) -> Result<(mpsc::Sender<ModelInferRequest>, tonic::Streaming<ModelStreamInferResponse>), ClientError> {
        self.stream_with(tonic::metadata::MetadataMap::new()).await
    }

    /// Like [`InferClient::stream`], with request metadata (e.g. `triton_grpc_error: true`).
    pub async fn stream_with(
        &mut self,
        metadata: tonic::metadata::MetadataMap,
    ) -> Result<(mpsc::Sender<ModelInferRequest>, tonic::Streaming<ModelStreamInferResponse>), ClientError> {
        let (sender, receiver) = mpsc::channel(64);
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        *request.metadata_mut() = metadata;
        let responses = self.inner.model_stream_infer(request).await?.into_inner();
        Ok((sender, responses))
    }
}

/// Builds a `ModelInferRequest` with raw inputs, as tritonclient and perf_analyzer send them.
#[derive(Debug, Clone, Default)]
pub struct InferRequestBuilder {
    request: ModelInferRequest,
}

impl InferRequestBuilder {
    pub fn new(model: &str) -> InferRequestBuilder {
        InferRequestBuilder { request: ModelInferRequest { model_name: model.to_string(), ..Default::default() } }
    }

    pub fn version(mut self, version: &str) -> Self {
        self.request.model_version = version.to_string();
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.request.id = id.to_string();
        self
    }

    /// Adds an input carried in `raw_input_contents`.
    pub fn input(mut self, tensor: Tensor) -> Self {
        self.request.inputs.push(InferInputTensor {
            name: tensor.name,
            datatype: tensor.datatype.kserve_name().to_string(),
            shape: tensor.shape,
            parameters: HashMap::new(),
            contents: None,
        });
        self.request.raw_input_contents.push(tensor.data);
        self
    }

    /// Adds an input described by hand (typed contents, shared memory, odd datatypes).
    pub fn input_tensor(mut self, input: InferInputTensor) -> Self {
        self.request.inputs.push(input);
        self
    }

    pub fn raw(mut self, data: impl Into<bytes::Bytes>) -> Self {
        self.request.raw_input_contents.push(data.into());
        self
    }

    pub fn output(mut self, name: &str) -> Self {
        self.request.outputs.push(InferRequestedOutputTensor { name: name.to_string(), parameters: HashMap::new() });
        self
    }

    pub fn parameter(mut self, key: &str, value: ParameterChoice) -> Self {
        self.request.parameters.insert(key.to_string(), InferParameter { parameter_choice: Some(value) });
        self
    }

    pub fn build(self) -> ModelInferRequest {
        self.request
    }
}

/// The output called `name` as a tensor, read from `raw_output_contents`.
pub fn output_tensor(response: &ModelInferResponse, name: &str) -> Result<Tensor, ClientError> {
    let index =
        response.outputs.iter().position(|o| o.name == name).ok_or_else(|| ClientError::MissingOutput(name.to_string()))?;
    let output = &response.outputs[index];
    let datatype = DataType::from_kserve(&output.datatype)
        .ok_or_else(|| ClientError::UnknownDatatype { name: name.to_string(), datatype: output.datatype.clone() })?;
    let data = response.raw_output_contents.get(index).cloned().unwrap_or_default();
    Ok(Tensor::new(name, datatype, output.shape.clone(), data))
}

/// The `triton_final_response` flag of a stream response.
pub fn is_final(response: &ModelInferResponse) -> Option<bool> {
    match response.parameters.get("triton_final_response")?.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => Some(b),
        _ => None,
    }
}

/// Collects a stream's responses until `count` have arrived or it ends.
pub async fn take_responses(
    responses: &mut (impl Stream<Item = Result<ModelStreamInferResponse, tonic::Status>> + Unpin),
    count: usize,
) -> Result<Vec<ModelStreamInferResponse>, ClientError> {
    use futures::StreamExt;
    let mut collected = Vec::with_capacity(count);
    while collected.len() < count {
        match responses.next().await {
            Some(item) => collected.push(item?),
            None => break,
        }
    }
    Ok(collected)
}
