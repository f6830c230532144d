//! [`DynamoWorker`]: a [`WorkerClient`] for one Dynamo worker instance, over Dynamo's TCP request
//! plane. A generation is one request frame on a pooled connection (acknowledged in order),
//! then a response stream the worker opens back to this process's [`CallHome`]. Dropping the
//! token stream sends the worker Dynamo's `stop`; a stream that ends before `complete_final`
//! is a lost worker, which the router migrates like any other.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use serde_json::Value as Json;
use tritium_backend_api::llm::{
    GenerateError, GenerateRequest, ModelKind, OpenAiApi, OpenAiChunks, OpenAiRequest, PrefillHandoff, TokenStream,
};
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::ModelCard;
use tritium_backend_api::{ResponseStream as Responses, StreamItem as Reply};
use tritium_proto::ErrorCode;
use tritium_worker::{InferOutcome, InferenceResponse, ValidInferRequest, WorkerClient, WorkerError};

use super::call_home::{CallHome, Expected};
use super::codec::{FrameError, TwoPart, read_ack, request_frame_head};
use super::items::{ItemError, Items};
use super::preprocessed::PreprocessedRequest;
use super::protocol::{control_message, encode_body, encode_request, headers};
use super::tls::{DynamoTls, PlaneStream};
use super::view::{DynamoEndpoint, DynamoModel, DynamoTarget};

/// Connections kept to one worker; requests share them (Dynamo's `DYN_TCP_POOL_SIZE`).
const POOL_SIZE: usize = 4;
/// As Dynamo's client: a request not acknowledged within this is given up.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the worker may take to open the response stream after acknowledging.
const CALL_HOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Responses of a decoupled tensor model held for a client that reads slowly.
const STREAM_BUFFER: usize = 16;
/// What one read of a request connection's acknowledgements takes in at most (each is a short
/// JSON text).
const ACK_READ_BUFFER: usize = 4 * 1024;

type AckWaiter = oneshot::Sender<Result<String, String>>;
/// A request body shorter than this is copied into its frame (one write); a longer one is written
/// after it.
const COALESCE_BYTES: usize = 16 << 10;

/// One pooled connection: frames are written under the writer's lock, and each frame's waiter
/// is queued in the same order, so acknowledgements (which come back in order) find theirs.
struct Connection {
    writer: tokio::sync::Mutex<WriteHalf<PlaneStream>>,
    waiters: Arc<Mutex<VecDeque<AckWaiter>>>,
    broken: Arc<AtomicBool>,
}

impl Connection {
    async fn open(address: &str, tls: &DynamoTls) -> Result<Connection, String> {
        let stream = tls.dial(address, CONNECT_TIMEOUT).await?;
        let (reader, writer) = tokio::io::split(stream);
        let waiters: Arc<Mutex<VecDeque<AckWaiter>>> = Arc::default();
        let broken = Arc::new(AtomicBool::new(false));
        tokio::spawn(read_acks(reader, Arc::clone(&waiters), Arc::clone(&broken)));
        Ok(Connection { writer: tokio::sync::Mutex::new(writer), waiters, broken })
    }

    /// Writes one frame, given in `parts`, under the writer's lock.
    async fn send(&self, parts: &[&[u8]]) -> Result<oneshot::Receiver<Result<String, String>>, String> {
        let (sender, receiver) = oneshot::channel();
        let mut writer = self.writer.lock().await;
        self.waiters.lock().push_back(sender);
        for part in parts.iter().filter(|part| !part.is_empty()) {
            if let Err(e) = writer.write_all(part).await {
                self.broken.store(true, Ordering::Relaxed);
                return Err(format!("sending the request failed: {e}"));
            }
        }
        Ok(receiver)
    }
}

async fn read_acks(reader: ReadHalf<PlaneStream>, waiters: Arc<Mutex<VecDeque<AckWaiter>>>, broken: Arc<AtomicBool>) {
    // Acknowledgements of pipelined requests arrive together: one read takes them all in.
    let mut reader = tokio::io::BufReader::with_capacity(ACK_READ_BUFFER, reader);
    let reason = loop {
        match read_ack(&mut reader).await {
            Ok(ack) => match waiters.lock().pop_front() {
                Some(waiter) => {
                    let _ = waiter.send(Ok(ack));
                }
                None => break "the worker acknowledged a request never sent".to_string(),
            },
            Err(FrameError::Closed) => break "the worker closed the connection".to_string(),
            Err(e) => break format!("reading the acknowledgement failed: {e}"),
        }
    };
    broken.store(true, Ordering::Relaxed);
    for waiter in waiters.lock().drain(..) {
        let _ = waiter.send(Err(reason.clone()));
    }
}

/// A Dynamo worker instance serving language models.
pub struct DynamoWorker {
    id: String,
    target: Arc<DynamoTarget>,
    home: Arc<CallHome>,
    /// For workers on the NATS request plane.
    nats: Option<async_nats::Client>,
    pool: Mutex<Vec<Arc<Connection>>>,
    turn: AtomicUsize,
    max_message_size: usize,
}

impl std::fmt::Debug for DynamoWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoWorker").field("id", &self.id).field("endpoint", &self.target.endpoint).finish_non_exhaustive()
    }
}

impl DynamoWorker {
    /// A client for the worker `target`; one on the NATS request plane needs `nats`.
    pub fn new(
        id: &str,
        target: Arc<DynamoTarget>,
        home: Arc<CallHome>,
        nats: Option<async_nats::Client>,
        max_message_size: usize,
    ) -> Result<DynamoWorker, String> {
        if matches!(target.endpoint, DynamoEndpoint::Nats { .. }) && nats.is_none() {
            return Err("this Dynamo worker takes requests over NATS: start the frontend with --request-plane nats".into());
        }
        Ok(DynamoWorker {
            id: id.to_string(),
            target,
            max_message_size: max_message_size.min(home.max_message()),
            home,
            nats,
            pool: Mutex::new(Vec::new()),
            turn: AtomicUsize::new(0),
        })
    }

    fn unreachable(&self, message: String) -> WorkerError {
        WorkerError::Unreachable { worker: self.id.clone(), message }
    }

    /// A live pooled connection to `address`, opening one while the pool is not full.
    async fn connection(&self, address: &str) -> Result<Arc<Connection>, WorkerError> {
        {
            let mut pool = self.pool.lock();
            pool.retain(|connection| !connection.broken.load(Ordering::Relaxed));
            if pool.len() >= POOL_SIZE {
                let turn = self.turn.fetch_add(1, Ordering::Relaxed);
                return Ok(Arc::clone(&pool[turn % pool.len()]));
            }
        }
        let connection = Arc::new(Connection::open(address, self.home.tls()).await.map_err(|e| self.unreachable(e))?);
        self.pool.lock().push(Arc::clone(&connection));
        Ok(connection)
    }

    fn model(&self, name: &str) -> Result<&DynamoModel, WorkerError> {
        self.target.models.iter().find(|m| m.name == name).ok_or_else(|| WorkerError::ModelNotFound { name: name.to_string() })
    }

    /// A model of `kind` and its card (a text-input model takes no tokens).
    fn tokenized(&self, name: &str, kind: ModelKind) -> Result<(&DynamoModel, &ModelCard), WorkerError> {
        let model = self.model(name)?;
        match model.card.as_deref() {
            Some(card) if card.kind == kind && model.text_input.is_none() => Ok((model, card)),
            _ if kind == ModelKind::Embed => Err(WorkerError::NotEmbeddingModel { model: name.to_string() }),
            _ => Err(WorkerError::NotLanguageModel { model: name.to_string() }),
        }
    }

    /// What `max_tokens` the worker is sent: the request's, else what the worker's token budget
    /// (or, without one, the context) leaves after the prompt. A budget's overflow rules refuse
    /// as Dynamo's frontend does.
    fn max_tokens(&self, model: &DynamoModel, card: &ModelCard, request: &GenerateRequest) -> Result<u32, WorkerError> {
        let prompt = request.prompt.len();
        let refuse =
            |message: String| WorkerError::Generate { model: model.name.clone(), source: GenerateError::InvalidRequest(message) };
        let (limit, budget) = match model.token_budget {
            Some(budget) => (usize::try_from(budget.combined_limit).unwrap_or(usize::MAX), Some(budget)),
            None => (card.context_length, None),
        };
        let over = |total: String| {
            format!(
                "This model configuration accepts at most {limit} combined input and output tokens. However, {total}. \
                 Please reduce the input length or requested output length."
            )
        };
        let Some(room) = limit.checked_sub(prompt).filter(|room| *room > 0) else {
            if budget.is_some_and(|b| !b.reject_prompt_overflow) {
                // The worker decides about prompts over its budget.
                return Ok(request.stop.max_tokens.unwrap_or(1));
            }
            return Err(refuse(over(format!("your request has {prompt} input tokens"))));
        };
        if let (Some(asked), Some(budget)) = (request.stop.max_tokens, budget)
            && budget.reject_total_overflow
            && prompt + asked as usize > limit
        {
            let total = prompt + asked as usize;
            return Err(refuse(over(format!(
                "your request has {prompt} input tokens and asks for {asked} output tokens ({total} tokens total)"
            ))));
        }
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        Ok(request.stop.max_tokens.map_or(room, |asked| asked.min(room)))
    }
}

#[async_trait]
impl WorkerClient for DynamoWorker {
    async fn infer(&self, request: ValidInferRequest) -> Result<InferenceResponse, WorkerError> {
        if request.model().decoupled() {
            return Err(WorkerError::DecoupledUnary { model: request.model_name().to_string() });
        }
        let (mut items, answer) = self.tensor_call(&request).await?;
        let mut response = None;
        while let Some(item) = answer.next(&mut items).await? {
            if response.replace(item).is_some() {
                return Err(answer.failed("answered more than once, as only a decoupled model may"));
            }
        }
        let mut response = response.ok_or_else(|| answer.failed("ended its stream without an answer"))?;
        response.is_final = true;
        Ok(response)
    }

    async fn infer_stream(&self, request: ValidInferRequest) -> Result<InferOutcome, WorkerError> {
        if !request.model().decoupled() {
            return self.infer(request).await.map(InferOutcome::Single);
        }
        let (mut items, answer) = self.tensor_call(&request).await?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            loop {
                let item = tokio::select! {
                    next = answer.next(&mut items) => match next {
                        Ok(Some(response)) => Reply::Response(response),
                        Ok(None) => Reply::Complete,
                        Err(e) => Reply::Error(e),
                    },
                    // The client went away: dropping the connection ends the worker's stream.
                    () = sender.closed() => return,
                };
                let last = !matches!(item, Reply::Response(_));
                if sender.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(InferOutcome::Stream(Responses::new(receiver, CancellationToken::new())))
    }

    async fn embed(&self, model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, WorkerError> {
        self.tokenized(model, ModelKind::Embed)?;
        let count = inputs.len();
        let mut expected = self.call(model, &super::embed::embedding_request(model, &inputs)).await?;
        let connection = expected.connection(CALL_HOME_TIMEOUT).await;
        let reading = super::embed::EmbeddingStream {
            worker: &self.id,
            model,
            count,
            max_bytes: self.max_message_size,
            codec: self.target.codec,
        };
        reading.read(connection).await.map_err(|source| WorkerError::Generate { model: model.to_string(), source })
    }

    async fn generate_openai(&self, model: &str, api: OpenAiApi, request: OpenAiRequest) -> Result<OpenAiChunks, WorkerError> {
        match self.model(model)?.text_input {
            Some(apis) if apis.serves(api) => {}
            Some(_) => {
                let source = GenerateError::InvalidRequest(format!("the model '{model}' is not served on {}", api.path()));
                return Err(WorkerError::Generate { model: model.to_string(), source });
            }
            None => return Err(WorkerError::NotLanguageModel { model: model.to_string() }),
        }
        let mut expected = self.call(model, &request).await?;
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        let stream = super::text::TextStream {
            worker: self.id.clone(),
            model: model.to_string(),
            max_frame: self.max_message_size,
            codec: self.target.codec,
        };
        tokio::spawn(async move {
            let connection = expected.connection(CALL_HOME_TIMEOUT).await;
            stream.relay(connection, sender).await
        });
        Ok(OpenAiChunks::new(receiver))
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.start_generation(model, &request, None).await
    }

    async fn generate_borrowed(&self, model: &str, request: &GenerateRequest) -> Result<TokenStream, WorkerError> {
        self.start_generation(model, request, None).await
    }

    async fn prefill_handoff(&self, model: &str, request: &GenerateRequest) -> Result<PrefillHandoff, WorkerError> {
        let (served, card) = self.tokenized(model, ModelKind::Generate)?;
        let mut body = PreprocessedRequest::new(model, request, 1, &card.eos_token_ids).tree();
        body["routing"] = serde_json::json!({"prefill_worker_id": self.target.instance_id});
        let bootstrap = served.bootstrap.as_ref().map(|endpoint| super::bootstrap::bootstrap_info(endpoint));
        if let Some(info) = &bootstrap {
            body["bootstrap_info"] = info.clone();
        }
        let request_id = new_request_id();
        let encoded = encode_request(&body, &request.prompt, self.target.codec);
        let mut expected = self.call_as(&request_id, model, encoded).await?;
        if let Some(info) = bootstrap {
            // The decode request goes out now; this one's stream is read to its end meanwhile.
            let (max_frame, codec, worker) = (self.max_message_size, self.target.codec, self.id.clone());
            let model = model.to_string();
            tokio::spawn(async move {
                let connection = expected.connection(CALL_HOME_TIMEOUT).await;
                super::bootstrap::drain(Items::open(connection, max_frame, codec).await, worker, model).await;
            });
            return Ok(serde_json::json!({
                "bootstrap_info": info,
                "prefill_worker_id": self.target.instance_id,
                "request_id": request_id,
            }));
        }
        let connection = expected.connection(CALL_HOME_TIMEOUT).await;
        let error = |e: ItemError| match e {
            ItemError::Lost(message) => self.unreachable(message),
            ItemError::Engine(message) => {
                WorkerError::Generate { model: model.to_string(), source: GenerateError::Engine { model: model.to_string(), message } }
            }
        };
        let mut items = Items::open(connection, self.max_message_size, self.target.codec).await.map_err(error)?;
        let mut handoff = None;
        // One token at most: the whole stream is read, the first item holding the handoff.
        while let Some((item, _)) = items.next::<Json>().await.map_err(error)? {
            handoff.get_or_insert_with(|| super::protocol::prefill_result(&item, self.target.instance_id));
        }
        handoff.ok_or_else(|| self.unreachable("the prefill worker ended its stream without a result".into()))
    }

    async fn generate_from_handoff(
        &self,
        model: &str,
        request: GenerateRequest,
        handoff: PrefillHandoff,
    ) -> Result<TokenStream, WorkerError> {
        self.start_generation(model, &request, Some(handoff)).await
    }
}

impl DynamoWorker {
    /// Sends a generation (with a prefill worker's handoff, when one computed the prompt) and
    /// reads its tokens back.
    async fn start_generation(
        &self,
        model: &str,
        request: &GenerateRequest,
        handoff: Option<PrefillHandoff>,
    ) -> Result<TokenStream, WorkerError> {
        let (served, card) = self.tokenized(model, ModelKind::Generate)?;
        let max_tokens = self.max_tokens(served, card, request)?;
        let body = PreprocessedRequest::new(model, request, max_tokens, &card.eos_token_ids);
        let codec = self.target.codec;
        let (request_id, encoded) = match handoff {
            None => (new_request_id(), body.encode(&request.prompt, codec)),
            Some(handoff) => {
                let request_id = handoff.get("request_id").and_then(Json::as_str).map_or_else(new_request_id, str::to_string);
                let mut body = body.tree();
                super::protocol::with_handoff(&mut body, handoff);
                (request_id, encode_request(&body, &request.prompt, codec))
            }
        };
        let mut expected = self.call_as(&request_id, model, encoded).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let stream = super::token_stream::ResponseStream {
            worker: self.id.clone(),
            model: model.to_string(),
            prompt_tokens: request.prompt.len() as u32,
            max_frame: self.max_message_size,
            codec,
        };
        tokio::spawn(async move {
            let connection = expected.connection(CALL_HOME_TIMEOUT).await;
            stream.run(connection, sender).await
        });
        Ok(TokenStream::new(receiver))
    }
}

impl DynamoWorker {
    /// Sends `body` to the worker for `model` and waits for its acknowledgement; the worker then
    /// opens the response stream that the returned [`Expected`] waits for.
    async fn call(&self, model: &str, body: &Json) -> Result<Expected, WorkerError> {
        self.call_as(&new_request_id(), model, encode_body(body, self.target.codec)).await
    }

    /// [`call`](Self::call) under a given request id: the two halves of a bootstrapped
    /// disaggregated request share one, as the workers match them by it.
    async fn call_as(&self, request_id: &str, model: &str, body: Vec<u8>) -> Result<Expected, WorkerError> {
        let subject = format!("{:032x}", rand::random::<u128>());
        let expected = self.home.expect(subject.clone());
        let codec = self.target.codec;
        let control = control_message(request_id, &self.home.address(), &subject, codec);
        let payload = TwoPart { header: Bytes::from(control), body: Bytes::from(body) };
        if payload.encoded_len() > self.max_message_size {
            return Err(WorkerError::Generate {
                model: model.to_string(),
                source: GenerateError::InvalidRequest(format!(
                    "the request is {} bytes, over the {} a message may have",
                    payload.encoded_len(),
                    self.max_message_size
                )),
            });
        }
        let ack = self.send(request_id, payload).await?;
        if !ack.is_empty() {
            // "Server overloaded: …" or "Server unavailable: …": nothing ran, another worker may.
            return Err(WorkerError::NotStarted { worker: self.id.clone(), message: format!("Dynamo worker refused: {ack}") });
        }
        Ok(expected)
    }

    /// Sends a KServe request to a tensor model; its response stream, and how to read it.
    async fn tensor_call(&self, request: &ValidInferRequest) -> Result<(Items, TensorAnswer), WorkerError> {
        let model = request.model_name();
        if self.model(model)?.tensor.is_none() {
            return Err(WorkerError::NotLanguageModel { model: model.to_string() });
        }
        let body = super::tensor::tensor_request(request.request(), model)
            .map_err(|reason| WorkerError::InvalidRequest { id: request.request().id.clone(), reason })?;
        let mut expected = self.call(model, &body).await?;
        let connection = expected.connection(CALL_HOME_TIMEOUT).await;
        let answer = TensorAnswer {
            worker: self.id.clone(),
            model: Arc::from(model),
            version: request.version(),
            id: request.request().id.clone(),
            requested: request.request().requested_outputs.clone(),
        };
        let items = Items::open(connection, self.max_message_size, self.target.codec).await.map_err(|e| answer.error(e))?;
        Ok((items, answer))
    }

    /// Sends one request payload (a two-part message) and returns the worker's acknowledgement.
    async fn send(&self, request_id: &str, payload: TwoPart) -> Result<String, WorkerError> {
        let traceparent = tritium_backend_api::trace::current().map(|trace| trace.context().traceparent());
        match (&self.target.endpoint, &self.nats) {
            (DynamoEndpoint::Tcp { address, path }, _) => {
                let headers = headers(path, request_id, traceparent.as_deref());
                // A long body (a long prompt's ids) is written where it lies, after the rest:
                // copying it into one frame cost more than a second write.
                let inline = payload.body.len() < COALESCE_BYTES;
                let reserve = if inline { payload.encoded_len() } else { payload.encoded_len() - payload.body.len() };
                let mut frame = request_frame_head(path, headers.as_bytes(), payload.encoded_len(), reserve)
                    .map_err(|e| self.unreachable(e.to_string()))?;
                payload.encode_head(&mut frame);
                let rest: &[u8] = if inline {
                    frame.put_slice(&payload.body);
                    &[]
                } else {
                    &payload.body
                };
                let connection = self.connection(address).await?;
                let ack = connection.send(&[&frame, rest]).await.map_err(|e| self.unreachable(e))?;
                match tokio::time::timeout(ACK_TIMEOUT, ack).await {
                    Err(_) => Err(self.unreachable(format!("no acknowledgement within {ACK_TIMEOUT:?}"))),
                    Ok(Err(_)) => Err(self.unreachable("the connection closed".to_string())),
                    Ok(Ok(Err(e))) => Err(self.unreachable(e)),
                    Ok(Ok(Ok(ack))) => Ok(ack),
                }
            }
            (DynamoEndpoint::Nats { subject }, Some(nats)) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("request-id", request_id);
                if let Some(traceparent) = &traceparent {
                    headers.insert("traceparent", traceparent.as_str());
                }
                let request = nats.request_with_headers(subject.clone(), headers, payload.to_bytes());
                match tokio::time::timeout(ACK_TIMEOUT, request).await {
                    Err(_) => Err(self.unreachable(format!("no acknowledgement within {ACK_TIMEOUT:?}"))),
                    Ok(Err(e)) => Err(self.unreachable(format!("the NATS request failed: {e}"))),
                    Ok(Ok(reply)) => Ok(String::from_utf8_lossy(&reply.payload).into_owned()),
                }
            }
            (DynamoEndpoint::Nats { .. }, None) => Err(self.unreachable("no NATS connection".to_string())),
        }
    }
}

/// How a tensor model's response items are read into KServe responses.
struct TensorAnswer {
    worker: String,
    model: Arc<str>,
    version: i64,
    id: String,
    requested: Vec<String>,
}

impl TensorAnswer {
    async fn next(&self, items: &mut Items) -> Result<Option<InferenceResponse>, WorkerError> {
        let Some((item, _)) = items.next::<super::tensor::TensorResponse>().await.map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        super::tensor::response_of(item, &self.model, self.version, &self.id, &self.requested)
            .map(Some)
            .map_err(|why| self.failed(&why))
    }

    fn failed(&self, why: &str) -> WorkerError {
        WorkerError::Failed { code: ErrorCode::Internal, message: format!("the Dynamo worker serving '{}' {why}", self.model) }
    }

    fn error(&self, error: ItemError) -> WorkerError {
        match error {
            ItemError::Lost(message) => WorkerError::Unreachable { worker: self.worker.clone(), message },
            ItemError::Engine(message) => WorkerError::Failed { code: ErrorCode::Internal, message },
        }
    }
}

/// A fresh request id (a UUID's 32 hex digits, which Dynamo's workers read as one).
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
