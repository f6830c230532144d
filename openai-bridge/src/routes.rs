//! The OpenAI `/v1/*` HTTP API (axum) over the narrow [`LlmHub`] trait: the server implements
//! the hub over its models; these routes do the rest (parsing, templates, tokenization,
//! streaming, metrics).
//!
//! - `POST /v1/completions`, `POST /v1/chat/completions`: JSON, or SSE with `"stream": true`
//!   (`data: {chunk}\n\n` … `data: [DONE]\n\n`).
//! - `POST /v1/responses` (OpenAI's Responses API, with `GET`/`DELETE /v1/responses/{id}` and
//!   `POST /v1/responses/{id}/cancel` for background responses, `GET /v1/responses/{id}/input_items`).
//! - `POST /v1/messages`, `POST /v1/messages/count_tokens` (Anthropic's Messages API, when the
//!   server enables it).
//! - `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{model}`.
//! - `POST /tokenize`, `POST /detokenize`, `GET /tokenizer_info` (vLLM's, with or without `/v1`).
//! - `GET /openapi.json` (generated from the handlers' types) and Swagger UI at `/docs`.
//!
//! Errors are OpenAI's body with the HTTP status of the error's code; an error after a stream
//! started is a `data: {"error": …}` event followed by `data: [DONE]`. A client that goes away
//! drops the response, which drops the text stream and cancels the sequence. When the server's
//! grace period ends ([`LlmHub::hard_stop`]), a request still running ends the same way: 503 (529
//! on Anthropic's routes) before its response started, the error event after.

mod background;
mod chat;
mod classify;
mod headers;
mod completions;
mod conversations;
mod docs;
mod embeddings;
mod input_items;
mod listing;
mod score;
mod messages;
mod next_turn;
mod prefix_pin;
mod responses;
mod sse;
mod text_doors;
mod text_input;
mod text_unary;
mod tokenize;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tritium_backend_api::llm::ModelKind;

use crate::BridgeError;
use crate::choices::generate_choices;
pub use crate::hub::{HubModel, LlmHub};
use crate::metrics::{LlmMetrics, RequestObserver};
use crate::parsers::{ForcedCalls, OutputFormats, OutputParser, ParsedDelta, ToolSchemas};
use crate::pipeline::{ModelRef, StreamMeta, TextStream};
use crate::preprocess::Preprocessor;
use crate::protocol::{CacheBreakpoint, ErrorBody, ModelList, ModelObject, NvExt, ToolChoice, Tools, forced_calls, parse_json};
use crate::response_store::{ResponseStore, StoreLimits};
use crate::sampling::CompletionOptions;

/// Dynamo's default body limit of the OpenAI routes (`DYN_HTTP_BODY_LIMIT_MB`).
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 192 << 20;

/// Background responses a frontend generates at once by default.
pub const DEFAULT_BACKGROUND_LIMIT: usize = 64;

/// What the server chose for the routes (flags of `tritium serve`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Serve Anthropic's `/v1/messages` and `/v1/messages/count_tokens`.
    pub anthropic: bool,
    /// The Responses API's store of past responses.
    pub store: StoreLimits,
    /// A store shared with other frontends (`--responses-store redis://…`), written through.
    pub shared_store: Option<crate::shared_store::SharedStore>,
    /// Background responses generating at once, at most (`--responses-background-max`).
    pub background_limit: usize,
    /// Bytes of one request body, at most (413 beyond).
    pub max_body_bytes: usize,
    pub paths: ApiPaths,
    /// The HTTP header that names the worker a request runs on (the router's `direct` mode);
    /// `nvext.backend_instance_id` wins over it.
    pub worker_header: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            anthropic: false,
            store: StoreLimits::default(),
            shared_store: None,
            background_limit: DEFAULT_BACKGROUND_LIMIT,
            max_body_bytes: DEFAULT_BODY_LIMIT_BYTES,
            paths: ApiPaths::default(),
            worker_header: None,
        }
    }
}

/// Where each endpoint is mounted (Dynamo's `DYN_HTTP_SVC_*_PATH` overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPaths {
    pub chat: String,
    pub completions: String,
    pub embeddings: String,
    pub responses: String,
    pub models: String,
    /// Anthropic's messages; `count_tokens` hangs below it.
    pub messages: String,
}

impl Default for ApiPaths {
    fn default() -> Self {
        ApiPaths {
            chat: "/v1/chat/completions".into(),
            completions: "/v1/completions".into(),
            embeddings: "/v1/embeddings".into(),
            responses: "/v1/responses".into(),
            models: "/v1/models".into(),
            messages: "/v1/messages".into(),
        }
    }
}

/// A path a route can be mounted at: absolute, no route syntax (`{`, `}`, `*`), no trailing `/`.
pub fn valid_route_path(path: &str) -> bool {
    path.len() > 1 && path.starts_with('/') && !path.ends_with('/') && !path.contains(['{', '}', '*', ' ', '?', '#'])
}

/// The `/v1` routes, ready to merge into the server's router.
pub fn openai_routes(hub: Arc<dyn LlmHub>, metrics: Arc<LlmMetrics>, settings: ApiSettings) -> Router {
    let store = match &settings.shared_store {
        Some(shared) => Arc::new(ResponseStore::new(settings.store).with_shared(Arc::clone(&shared.0))),
        None => Arc::new(ResponseStore::new(settings.store)),
    };
    let paths = &settings.paths;
    let state = AppState {
        hub,
        metrics,
        store,
        worker_header: settings.worker_header.clone().map(Arc::from),
        fold_limit: settings.max_body_bytes,
        background: Arc::new(background::Background::new(settings.background_limit)),
    };
    let mut router = Router::new()
        .route(&paths.completions, post(completions::completions))
        .route(&paths.chat, post(chat::chat_completions))
        .route(&paths.responses, post(responses::create))
        .route(&format!("{}/{{id}}", paths.responses), get(responses::get).delete(responses::delete))
        .route(&format!("{}/{{id}}/cancel", paths.responses), post(responses::cancel))
        .route(&format!("{}/{{id}}/input_items", paths.responses), get(input_items::list))
        .route("/v1/conversations", post(conversations::create))
        .route("/v1/conversations/{id}", get(conversations::get).post(conversations::update).delete(conversations::delete))
        .route("/v1/conversations/{id}/items", get(conversations::list_items).post(conversations::add_items))
        .route("/v1/conversations/{id}/items/{item}", get(conversations::get_item).delete(conversations::delete_item))
        .route(&paths.embeddings, post(embeddings::embeddings))
        .route(&paths.models, get(list_models))
        // A catch-all, so that names with slashes (`org/model`) work.
        .route(&format!("{}/{{*model}}", paths.models), get(get_model));
    for path in score::SCORE_PATHS {
        router = router.route(path, post(score::score));
    }
    for path in score::RERANK_PATHS {
        router = router.route(path, post(score::rerank));
    }
    for path in classify::CLASSIFY_PATHS {
        router = router.route(path, post(classify::classify));
    }
    for path in tokenize::TOKENIZE_PATHS {
        router = router.route(path, post(tokenize::tokenize));
    }
    for path in tokenize::DETOKENIZE_PATHS {
        router = router.route(path, post(tokenize::detokenize));
    }
    for path in tokenize::TOKENIZER_INFO_PATHS {
        router = router.route(path, get(tokenize::tokenizer_info));
    }
    router = router.route_layer(middleware::from_fn_with_state(state.clone(), until_hard_stop::<ApiError>));
    if settings.anthropic {
        let anthropic = Router::new()
            .route(&paths.messages, post(messages::messages))
            .route(&format!("{}/count_tokens", paths.messages), post(messages::count_tokens))
            .route_layer(middleware::from_fn_with_state(state.clone(), until_hard_stop::<messages::AnthropicError>));
        router = router.merge(anthropic);
    }
    router.layer(DefaultBodyLimit::max(settings.max_body_bytes)).with_state(state).merge(docs::routes(&settings))
}

/// Answers a request whose response has not started when the server's hard stop comes with
/// [`BridgeError::ShuttingDown`] in the door's format `E` (a started stream ends through its
/// text stream, see [`crate::pipeline::TextStream::until`]).
async fn until_hard_stop<E: From<BridgeError> + IntoResponse>(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(stop) = state.hub.hard_stop() else {
        return next.run(request).await;
    };
    // A token of the request's own: polling it takes no lock every request shares.
    let stop = stop.child_token();
    tokio::select! {
        response = next.run(request) => response,
        () = stop.cancelled() => E::from(BridgeError::ShuttingDown).into_response(),
    }
}

/// The protocol label of HTTP requests in the metrics.
pub(crate) use headers::{CallerTrace, HeaderPriority, HeaderWorker};

const PROTOCOL: &str = "http";

#[derive(Clone)]
struct AppState {
    hub: Arc<dyn LlmHub>,
    metrics: Arc<LlmMetrics>,
    store: Arc<ResponseStore>,
    worker_header: Option<Arc<str>>,
    /// Bytes of a text-input worker's chunks folded into one answer, at most (the body limit).
    fold_limit: usize,
    background: Arc<background::Background>,
}

impl AppState {
    /// Observes one request to `model` (a served model), traced when the server's sampler picks it.
    fn observer(&self, model: &str, caller: CallerTrace) -> RequestObserver {
        let trace = self.hub.trace(model, caller.0);
        if let Some(trace) = &trace {
            trace.name_api_key(caller.1.as_ref());
        }
        self.metrics.observer(model, PROTOCOL).with_trace(trace)
    }

    /// The preprocessor of `model` (loaded first when models load on demand), which must be of
    /// `kind`; `endpoint` names the route for the error when it is not.
    async fn preprocessor(&self, model: &str, kind: ModelKind, endpoint: &str) -> Result<Arc<Preprocessor>, BridgeError> {
        self.hub.load_on_demand(model).await?;
        let pre = self.hub.preprocessor(model)?;
        if pre.card().kind == kind {
            return Ok(pre);
        }
        let (is, serves) = match pre.card().kind {
            ModelKind::Embed => ("an embedding model", "/v1/embeddings, /v1/score and /v1/rerank"),
            ModelKind::Generate => ("a language model", "/v1/completions, /v1/chat/completions, /v1/responses and /v1/messages"),
        };
        Err(BridgeError::field("model", format!("the model '{model}' is {is}; it serves {serves}, not {endpoint}")))
    }
}

/// A chat to render into a prompt.
struct ChatPrompt<'a> {
    messages: &'a [Value],
    add_generation_prompt: bool,
    /// Template variables beyond the messages (`tools`, `chat_template_kwargs`).
    extra: Option<&'a Map<String, Value>>,
    /// The request offered tools: the parser's markers must show in the text.
    with_tools: bool,
    nvext: Option<&'a NvExt>,
    /// The worker to run on, when the request names one.
    worker: Option<&'a str>,
    /// The agent session the request belongs to, when its headers name one.
    session: Option<&'a str>,
    /// Explicit prompt caching: the messages whose prompt prefix the engine keeps cached.
    cache_breakpoint: Option<CacheBreakpoint>,
}

/// The choices of one chat (`n`) under way, with the annotation events sent before them.
struct StartedChoices {
    streams: Vec<TextStream>,
    annotations: Vec<Bytes>,
}

impl AppState {
    /// Renders the chat (or takes `nvext.token_data`, or the raw contents with
    /// `nvext.use_raw_prompt`), tokenizes it and starts generating on the worker `nvext` names,
    /// if any: the start of the Responses and Messages APIs (one choice, no annotation events).
    async fn start_chat(
        &self,
        pre: &Arc<Preprocessor>,
        model: &str,
        options: &CompletionOptions,
        chat: ChatPrompt<'_>,
        observer: RequestObserver,
    ) -> Result<TextStream, BridgeError> {
        let StartedChoices { mut streams, .. } = self.start_chat_choices(pre, model, options, chat, vec![observer]).await?;
        streams.pop().ok_or_else(|| BridgeError::Internal("no generation started".into()))
    }

    /// [`AppState::start_chat`] with one choice per observer (`n`; the first carries the trace),
    /// and the `nvext.annotations` events (chat completions).
    async fn start_chat_choices(
        &self,
        pre: &Arc<Preprocessor>,
        model: &str,
        options: &CompletionOptions,
        chat: ChatPrompt<'_>,
        mut observers: Vec<RequestObserver>,
    ) -> Result<StartedChoices, BridgeError> {
        let Some(observer) = observers.first_mut() else {
            return Err(BridgeError::Internal("a chat with no choice".into()));
        };
        let nvext = chat.nvext;
        let (text, prompt) = match nvext.and_then(|n| n.token_data.clone()) {
            Some(ids) => {
                check_token_ids(pre, "nvext.token_data", &ids).map_err(|e| failed(observer, e))?;
                (None, ids)
            }
            None => {
                let raw = nvext.is_some_and(|n| n.use_raw_prompt == Some(true));
                let text = match raw {
                    true => raw_prompt(chat.messages),
                    false => pre.render_chat_bounded(chat.messages, chat.add_generation_prompt, chat.extra).await,
                };
                let text = text.map_err(|e| failed(observer, e))?;
                let kept = nvext.is_some_and(|n| n.annotates("formatted_prompt")).then(|| text.clone());
                // A template writes the special tokens (BOS included) itself; raw text gets them here.
                (kept, pre.encode_off_runtime(text, raw).await.map_err(|e| failed(observer, e))?)
            }
        };
        let annotations = annotation_frames(nvext, pre, text, &prompt);
        let target = ModelRef { name: model, version: None, worker: chat.worker, session: chat.session };
        let pinned;
        let options = match chat.cache_breakpoint {
            Some(breakpoint) => {
                let pin = self.prefix_pin(pre, &chat, breakpoint, &prompt).await.map_err(|e| failed(observer, e))?;
                pinned = CompletionOptions { pin: Some(pin), ..options.clone() };
                &pinned
            }
            None => options,
        };
        let streams = generate_choices(self.hub.as_ref(), pre, target, options, prompt, None, observers).await?;
        let streams = streams.into_iter().map(|stream| stream.show_special(pre.marker_tokens(chat.with_tools))).collect();
        Ok(StartedChoices { streams, annotations })
    }
}

/// `nvext.use_raw_prompt`: the messages' text, in order, one per line.
fn raw_prompt(messages: &[Value]) -> Result<String, BridgeError> {
    let texts: Vec<&str> = messages.iter().filter_map(|m| m.get("content").and_then(Value::as_str)).collect();
    match texts.is_empty() {
        true => Err(BridgeError::field("messages", "use_raw_prompt needs messages with text content")),
        false => Ok(texts.join("\n")),
    }
}

/// The `nvext.annotations` events: `formatted_prompt` (the prompt text, decoded when the client
/// sent ids) and `token_ids`.
fn annotation_frames(nvext: Option<&NvExt>, pre: &Preprocessor, text: Option<String>, prompt: &[u32]) -> Vec<Bytes> {
    let Some(nvext) = nvext else {
        return Vec::new();
    };
    let mut frames = Vec::new();
    if nvext.annotates("formatted_prompt") {
        let text = text.or_else(|| pre.decode(prompt).ok()).unwrap_or_default();
        frames.push(sse::named_frame("formatted_prompt", &text));
    }
    if nvext.annotates("token_ids") {
        frames.push(sse::named_frame("token_ids", &prompt));
    }
    frames
}

/// The response's `nvext` object: what `nvext.extra_fields` asked for.
fn nvext_fields(nvext: Option<&NvExt>, meta: &StreamMeta) -> Option<Value> {
    let nvext = nvext?;
    let mut fields = Map::new();
    if nvext.wants("worker_id") {
        // One worker that did both is named twice, as Dynamo does.
        let prefill = meta.prefill_worker.as_ref().or(meta.worker.as_ref());
        fields.insert("worker_id".into(), serde_json::json!({"prefill_worker_id": prefill, "decode_worker_id": meta.worker}));
    }
    if nvext.wants("timing") {
        fields.insert("timing".into(), serde_json::to_value(meta.timing).unwrap_or(Value::Null));
    }
    (!fields.is_empty()).then_some(Value::Object(fields))
}

/// The parser of a chat-shaped response's output, and the grammar its tools force: with
/// `tool_choice` required or named, the calls are written by a grammar (whatever the model's own
/// call format) and parsed as JSON at the end. A grammar leaves no room for reasoning, so the
/// reasoning parser is off whenever the output is constrained.
fn output_parser(
    pre: &Preprocessor,
    tools: &Tools,
    options: &mut CompletionOptions,
) -> Result<Option<OutputParser>, BridgeError> {
    let formats = pre.output_formats();
    if let Some(forced) = forced_calls(tools) {
        if options.constraint.is_some() {
            let reason = "a required tool call cannot be combined with another structured output format";
            return Err(BridgeError::field("tool_choice", reason));
        }
        options.constraint = Some(forced);
        let calls = match &tools.choice {
            ToolChoice::Named(name) => ForcedCalls::Named(name.clone()),
            _ => ForcedCalls::Any,
        };
        return Ok(Some(OutputParser::forced(None, calls)));
    }
    let formats = match options.constraint {
        Some(_) => OutputFormats { reasoning: None, ..*formats },
        None => *formats,
    };
    Ok(formats.parser(tools.offered().then(|| ToolSchemas::new(tools.specs.iter().map(|spec| (spec.name.as_str(), &spec.parameters))))))
}

/// A whole answer split by its parser (all text without one).
fn parse_whole(parser: Option<OutputParser>, text: String) -> ParsedDelta {
    match parser {
        Some(parser) => parser.parse_all(&text),
        None => ParsedDelta { content: text, ..Default::default() },
    }
}

/// One streamed piece split by the parser; `last` flushes what it held back.
fn parse_piece(parser: &mut Option<OutputParser>, text: String, last: bool) -> ParsedDelta {
    let Some(parser) = parser else {
        return ParsedDelta { content: text, ..Default::default() };
    };
    let mut parsed = parser.push(&text);
    if last {
        parsed.extend(parser.finish());
    }
    parsed
}

fn failed(observer: &mut RequestObserver, error: BridgeError) -> BridgeError {
    observer.failed(&error);
    error
}

/// Token ids a client sent must exist in the vocabulary.
fn check_token_ids(pre: &Preprocessor, field: &str, ids: &[u32]) -> Result<(), BridgeError> {
    // Before anything is done with them (decoding them for annotations, say): a prompt that
    // cannot fit the context is refused whatever its ids.
    pre.card().room_after(ids.len()).map_err(|reason| BridgeError::field(field, reason))?;
    let vocab = pre.vocab_size();
    match ids.iter().find(|&&id| usize::try_from(id).map_or(true, |id| id >= vocab)) {
        Some(id) => Err(BridgeError::field(field, format!("token id {id} is out of range (the vocabulary has {vocab} tokens)"))),
        None => Ok(()),
    }
}

/// An error as OpenAI's body with the status of its code.
#[derive(Debug)]
struct ApiError(BridgeError);

impl From<BridgeError> for ApiError {
    fn from(error: BridgeError) -> ApiError {
        ApiError(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = ErrorBody::from_error(&self.0);
        if status >= 500 {
            tracing::warn!(error = %self.0, "OpenAI request failed");
        }
        let mut response = json_response(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body);
        retry_later(&mut response);
        response
    }
}

/// A 503 (every worker busy, a model shutting down) tells the client when to come back.
fn retry_later(response: &mut Response) {
    if matches!(response.status().as_u16(), 503 | 529) {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(json) => (status, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

/// A JSON body whose errors are OpenAI error bodies naming the field (axum's `Json` answers
/// plain text). The content type is not checked: curl users often leave it out.
struct OpenAiJson<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpenAiJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<OpenAiJson<T>, Response> {
        let body = body_of(request, state).await?;
        parse_json(&body).map(OpenAiJson).map_err(|error| ApiError(error).into_response())
    }
}

/// A request's body, or the OpenAI error for one that cannot be read (over the limit, say).
async fn body_of<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Response> {
    Bytes::from_request(request, state).await.map_err(|rejection| {
        let (_, body) = ErrorBody::from_error(&BridgeError::InvalidBody(rejection.body_text()));
        json_response(rejection.status(), &body)
    })
}

/// [`OpenAiJson`] with the body kept as it came: a request for a text-input model is forwarded as
/// the client sent it.
struct OpenAiJsonAndBody<T>(T, SentBody);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OpenAiJsonAndBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<OpenAiJsonAndBody<T>, Response> {
        let body = body_of(request, state).await?;
        crate::protocol::parse_json(&body)
            .map(|parsed| OpenAiJsonAndBody(parsed, SentBody(body)))
            .map_err(|error| ApiError(error).into_response())
    }
}

/// A request body as the client sent it, read as JSON again only for a request forwarded whole
/// (most requests are tokenized here, and keeping a second tree of a long conversation cost a
/// copy of it per request).
struct SentBody(Bytes);

impl SentBody {
    /// The body's JSON (an object: it parsed as the request already).
    fn json(&self) -> Result<Value, ApiError> {
        crate::protocol::parse_json::<Value>(&self.0).map_err(ApiError)
    }
}

#[utoipa::path(get, path = "/v1/models", tag = "openai", responses((status = 200, description = "The models served", body = ModelList)))]
async fn list_models(State(state): State<AppState>) -> Response {
    let data = state.hub.models().into_iter().map(ModelObject::of).collect();
    json_response(StatusCode::OK, &ModelList { object: "list", data })
}

#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", params(("model" = String, Path, description = "A model's name (may hold '/')")),
    responses((status = 200, description = "The model", body = ModelObject), (status = 404, description = "No such model", body = ErrorBody)))]
async fn get_model(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    match state.hub.models().into_iter().find(|m| m.name == model) {
        Some(m) => json_response(StatusCode::OK, &ModelObject::of(m)),
        None => ApiError(BridgeError::ModelNotFound(model)).into_response(),
    }
}
