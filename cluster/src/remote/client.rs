//! [`RemoteWorker`]: a [`WorkerClient`] over a lazy tonic channel to a worker process.
//!
//! A status carrying the worker's origin marker becomes `WorkerError::Failed` with the worker's
//! code and exact message; any other status (connection refused or reset, HTTP/2 errors) means
//! the worker is unreachable (`WorkerError::Unreachable`). A status the worker marks as "not
//! started" (it is draining) becomes `WorkerError::NotStarted`. Inside a token stream, where
//! errors are [`GenerateError`]s, the unreachable case is `GenerateError::WorkerLost`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tritium_backend_api::llm::{GenerateError, GenerateEvent, GenerateRequest, ModelCard, PrefillSource, TokenStream};
use tritium_proto::ErrorCode;
use tritium_proto::inference::{ModelConfig, ModelInferResponse};
use tritium_proto::worker::worker_client::WorkerClient as WorkerRpc;
use tritium_proto::worker::{DescribeModelsRequest, EmbedRequest, InferStreamResponse, TokenIds};
use tritium_repository::labels::Labels;
use tritium_worker::{InferOutcome, InferenceResponse, ResponseStream, StreamItem, ValidInferRequest, WorkerClient, WorkerError};

use super::convert::{
    event_from_proto, generate_request_to_proto, prefill_source_to_proto, request_to_proto, response_from_proto,
};
use super::nats_plane::Dialer;
use super::{NOT_STARTED_KEY, ORIGIN_KEY, ORIGIN_WORKER, OUTCOME_KEY, OUTCOME_SINGLE, PREFILL_WORKER_KEY};
use tritium_trace::hop::Hop;

/// How long connecting may take before the worker counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings notice a peer that vanished without closing its connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Decoupled responses received ahead of a slow consumer.
const STREAM_BUFFER: usize = 16;

/// A model version a remote worker serves, as its DescribeModels answer lists it.
#[derive(Debug, Clone)]
pub struct RemoteModel {
    pub name: String,
    pub version: i64,
    pub config: ModelConfig,
    /// For language and embedding models: what the frontend tokenizes with.
    pub card: Option<Arc<ModelCard>>,
    /// The labels of the outputs that have a `label_filename`, by output name.
    pub labels: Vec<(String, Arc<Labels>)>,
    /// For a LoRA adapter: the model it adapts, and where the worker read it from.
    pub adapter_of: Option<(String, String)>,
    /// For a LoRA adapter of a Tritium worker: the seed its KV block hashes chain from.
    pub adapter_kv_seed: Option<u64>,
    /// For a model whose worker takes OpenAI requests as they came: the routes it serves.
    pub text_input: Option<crate::discovery::dynamo_target::TextApis>,
}

/// A worker process reached over gRPC.
#[derive(Clone)]
pub struct RemoteWorker {
    id: String,
    uri: String,
    client: WorkerRpc<InterceptedService<Channel, super::auth::BearerToken>>,
}

impl std::fmt::Debug for RemoteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWorker").field("id", &self.id).field("uri", &self.uri).finish()
    }
}

/// The worker's own error, or the transport's.
fn status_error(worker: &str, status: Status) -> WorkerError {
    if status.metadata().get(ORIGIN_KEY).is_some_and(|v| v == ORIGIN_WORKER) {
        if status.metadata().get(NOT_STARTED_KEY).is_some() {
            return WorkerError::NotStarted { worker: worker.to_string(), message: status.message().to_string() };
        }
        return WorkerError::Failed { code: ErrorCode::from_grpc(status.code()), message: status.message().to_string() };
    }
    WorkerError::Unreachable { worker: worker.to_string(), message: transport_message(&status) }
}

/// A transport status's message with its causes, which say what actually broke.
fn transport_message(status: &Status) -> String {
    let mut message = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        // tonic and hyper repeat their causes in their own messages; say each once.
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

/// A worker whose answer does not make sense (a bug or a version mismatch, not a retry).
fn protocol_error(worker: &str, problem: String) -> WorkerError {
    WorkerError::Failed { code: ErrorCode::Internal, message: format!("worker '{worker}' answered badly: {problem}") }
}

/// A status ending a token stream, as the GenerateError the worker's engine raised or, from the
/// transport, `GenerateError::WorkerLost`.
fn generate_error(worker: &str, model: &str, status: Status) -> GenerateError {
    let engine = |message: String| GenerateError::Engine { model: model.to_string(), message };
    match status_error(worker, status) {
        WorkerError::Failed { code, message } => match code {
            ErrorCode::InvalidArg => GenerateError::InvalidRequest(message),
            ErrorCode::Unavailable if message == format!("the model '{model}' is shutting down") => {
                GenerateError::ShuttingDown(model.to_string())
            }
            // The engine's text was "the model 'm' failed: x"; rebuilding the variant keeps it.
            _ => match message.strip_prefix(&format!("the model '{model}' failed: ")) {
                Some(inner) => engine(inner.to_string()),
                None => engine(message),
            },
        },
        WorkerError::Unreachable { message, .. } => {
            GenerateError::WorkerLost { model: model.to_string(), worker: worker.to_string(), message }
        }
        other => engine(other.to_string()),
    }
}

impl RemoteWorker {
    /// A client of the worker at `uri` (`http://host:port`), known as `id`. Connects on first use,
    /// and again after the connection breaks. Needs a Tokio runtime.
    pub fn new(id: &str, uri: &str, max_message_size: usize) -> Result<RemoteWorker, WorkerError> {
        RemoteWorker::with_token(id, uri, max_message_size, None)
    }

    /// [`RemoteWorker::new`], sending the worker-plane `token` on every call.
    pub fn with_token(id: &str, uri: &str, max_message_size: usize, token: Option<&str>) -> Result<RemoteWorker, WorkerError> {
        RemoteWorker::dial(id, uri, max_message_size, token, &Dialer::default())
    }

    /// [`RemoteWorker::with_token`], reaching a worker whose address is on the NATS request
    /// plane (`nats:…`) through `dialer`'s connection.
    pub fn dial(
        id: &str,
        uri: &str,
        max_message_size: usize,
        token: Option<&str>,
        dialer: &Dialer,
    ) -> Result<RemoteWorker, WorkerError> {
        let token = super::auth::BearerToken::new(token)
            .map_err(|message| WorkerError::Failed { code: ErrorCode::InvalidArg, message })?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::Failed {
                code: ErrorCode::Internal,
                message: format!("worker '{id}': a remote worker client needs a Tokio runtime"),
            });
        }
        let channel = match dialer.nats_channel(uri) {
            Some(channel) => channel
                .map_err(|why| WorkerError::Failed { code: ErrorCode::InvalidArg, message: format!("worker '{id}': {why}") })?,
            None => {
                let endpoint = Endpoint::from_shared(uri.to_string())
                    .map_err(|e| WorkerError::Failed {
                        code: ErrorCode::InvalidArg,
                        message: format!("worker '{id}' has an invalid address '{uri}': {e}"),
                    })?
                    .tcp_nodelay(true)
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                    .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                    .keep_alive_while_idle(true);
                match dialer.tls() {
                    Some(tls) => endpoint.connect_with_connector_lazy(super::tls::TlsDial::new(Arc::clone(tls), CONNECT_TIMEOUT)),
                    None => endpoint.connect_lazy(),
                }
            }
        };
        let client = WorkerRpc::with_interceptor(channel, token)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size);
        Ok(RemoteWorker { id: id.to_string(), uri: uri.to_string(), client })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's prefill of a prompt for another worker: its layout, then the blocks, and the
    /// hop of the current trace the call is (kept while the blocks are read).
    pub(crate) async fn prefill(
        &self,
        request: tritium_proto::worker::PrefillRequest,
    ) -> Result<(tonic::Streaming<tritium_proto::worker::KvTransfer>, Hop), WorkerError> {
        let mut client = self.client.clone();
        let hop = Hop::start(None, &self.id);
        let stream = client.prefill(hop.request(request)).await.map_err(|s| status_error(&self.id, s))?.into_inner();
        Ok((stream, hop))
    }

    async fn start_generation(
        &self,
        model: &str,
        request: tritium_proto::worker::GenerateRequest,
    ) -> Result<TokenStream, WorkerError> {
        let mut client = self.client.clone();
        let hop = Hop::start(None, &self.id);
        // Awaiting the response headers means a worker that cannot be reached, or refuses, fails
        // here rather than in the stream.
        let response = client.generate(hop.request(request)).await.map_err(|s| status_error(&self.id, s))?;
        let prefill_worker = response.metadata().get(PREFILL_WORKER_KEY).and_then(|v| v.to_str().ok()).map(Arc::<str>::from);
        if let Some(prefill) = &prefill_worker {
            hop.set_attribute("tritium.prefill_worker", prefill.to_string());
        }
        let mut events = response.into_inner();
        let (sender, receiver) = mpsc::unbounded_channel();
        let (worker, model) = (self.id.clone(), model.to_string());
        tokio::spawn(async move {
            let _hop = hop;
            loop {
                let next = tokio::select! {
                    next = events.message() => next,
                    // The TokenStream was dropped: dropping `events` cancels the RPC, and the
                    // worker's engine cancels the sequence.
                    () = sender.closed() => return,
                };
                let item = match next {
                    Ok(Some(event)) => event_from_proto(event).map_err(|problem| GenerateError::Engine {
                        model: model.clone(),
                        message: format!("worker '{worker}' answered badly: {problem}"),
                    }),
                    // Finished always comes last; a stream ending without it lost its worker.
                    Ok(None) => Err(GenerateError::WorkerLost {
                        model: model.clone(),
                        worker: worker.clone(),
                        message: "it ended the stream before the sequence finished".into(),
                    }),
                    Err(status) => Err(generate_error(&worker, &model, status)),
                };
                let last = !matches!(item, Ok(GenerateEvent::Token(_)));
                if sender.send(item).is_err() || last {
                    return;
                }
            }
        });
        Ok(TokenStream::new(receiver).prefilled_by(prefill_worker))
    }

    /// Every ready model version the worker serves, with its config and (for language and
    /// embedding models) its card.
    pub async fn describe_models(&self) -> Result<Vec<RemoteModel>, WorkerError> {
        let mut client = self.client.clone();
        let answer = client.describe_models(DescribeModelsRequest {}).await.map_err(|s| status_error(&self.id, s))?;
        let mut models = Vec::new();
        for model in answer.into_inner().models {
            let card =
                match model.card_json {
                    None => None,
                    Some(json) => Some(Arc::new(serde_json::from_str::<ModelCard>(&json).map_err(|e| {
                        protocol_error(&self.id, format!("the card of model '{}' does not parse: {e}", model.name))
                    })?)),
                };
            let mut labels = Vec::with_capacity(model.output_labels.len());
            for (output, text) in model.output_labels {
                let parsed = Labels::parse(Bytes::from(text)).map_err(|why| {
                    protocol_error(&self.id, format!("the labels of output '{output}' of model '{}' {why}", model.name))
                })?;
                labels.push((output, Arc::new(parsed)));
            }
            models.push(RemoteModel {
                name: model.name,
                version: model.version,
                config: model.config.unwrap_or_default(),
                card,
                labels,
                adapter_of: model.adapter_of.map(|base| (base, model.adapter_path.unwrap_or_default())),
                adapter_kv_seed: model.adapter_kv_seed,
                text_input: None,
            });
        }
        Ok(models)
    }

    /// Loads a LoRA adapter into one of the worker's language models (see `worker.proto`).
    pub async fn load_adapter(&self, request: tritium_proto::worker::LoadAdapterRequest) -> Result<(), WorkerError> {
        let mut client = self.client.clone();
        client.load_adapter(request).await.map_err(|s| status_error(&self.id, s))?;
        Ok(())
    }

    /// Unloads a LoRA adapter: whether the worker held one of that name.
    pub async fn unload_adapter(&self, name: &str) -> Result<bool, WorkerError> {
        let mut client = self.client.clone();
        let request = tritium_proto::worker::UnloadAdapterRequest { name: name.to_string() };
        Ok(client.unload_adapter(request).await.map_err(|s| status_error(&self.id, s))?.into_inner().found)
    }

    fn stream_response(worker: &str, reply: InferStreamResponse) -> Result<InferenceResponse, WorkerError> {
        let response: ModelInferResponse =
            reply.response.ok_or_else(|| protocol_error(worker, "a stream message without a response".into()))?;
        response_from_proto(response, reply.r#final).map_err(|problem| protocol_error(worker, problem))
    }
}

#[async_trait]
impl WorkerClient for RemoteWorker {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        let mut client = self.client.clone();
        let hop = Hop::start(request.request().trace.as_ref(), &self.id);
        let call = hop.request(request_to_proto(request.into_request()));
        let response = client.infer(call).await.map_err(|s| status_error(&self.id, s))?;
        response_from_proto(response.into_inner(), true).map_err(|problem| protocol_error(&self.id, problem))
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        let mut client = self.client.clone();
        let hop = Hop::start(request.request().trace.as_ref(), &self.id);
        let call = hop.request(request_to_proto(request.into_request()));
        let response = client.infer_stream(call).await.map_err(|s| status_error(&self.id, s))?;
        let single = response.metadata().get(OUTCOME_KEY).is_some_and(|v| v == OUTCOME_SINGLE);
        let mut replies = response.into_inner();
        if single {
            let reply = replies.message().await.map_err(|s| status_error(&self.id, s))?;
            let reply =
                reply.ok_or_else(|| protocol_error(&self.id, "a plain model's stream ended without its answer".into()))?;
            return RemoteWorker::stream_response(&self.id, reply).map(InferOutcome::Single);
        }
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let worker = self.id.clone();
        tokio::spawn(async move {
            let _hop = hop;
            loop {
                let next = tokio::select! {
                    next = replies.message() => next,
                    // The consumer dropped the ResponseStream: dropping `replies` cancels the call.
                    () = sender.closed() => return,
                };
                let item = match next {
                    Ok(Some(reply)) => match RemoteWorker::stream_response(&worker, reply) {
                        Ok(response) => StreamItem::Response(response),
                        Err(e) => StreamItem::Error(e),
                    },
                    Ok(None) => StreamItem::Complete,
                    Err(status) => StreamItem::Error(status_error(&worker, status)),
                };
                let last = !matches!(item, StreamItem::Response(_));
                if sender.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        // The forwarding task watches the channel, so the token has nothing more to do.
        Ok(InferOutcome::Stream(ResponseStream::new(receiver, CancellationToken::new())))
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.start_generation(model, generate_request_to_proto(model, request)).await
    }

    async fn generate_with_prefill(
        &self,
        model: &str,
        request: GenerateRequest,
        prefill: PrefillSource,
    ) -> Result<TokenStream, WorkerError> {
        let mut request = generate_request_to_proto(model, request);
        request.prefill = Some(prefill_source_to_proto(prefill));
        self.start_generation(model, request).await
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        let mut client = self.client.clone();
        let request = EmbedRequest { model: model.to_string(), inputs: inputs.into_iter().map(|ids| TokenIds { ids }).collect() };
        let hop = Hop::start(None, &self.id);
        let response = client.embed(hop.request(request)).await.map_err(|s| status_error(&self.id, s))?;
        Ok(response.into_inner().embeddings.into_iter().map(|e| e.values).collect())
    }
}
