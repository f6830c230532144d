//! Text scorers and classifiers (tensor models whose config names an `openai_task`): the
//! cross-encoder path of `/v1/score` and `/v1/rerank`, and vLLM's `POST /classify` (also
//! `/v1/classify`) for sequence classifiers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{ApiError, AppState, failed, json_response};
use crate::BridgeError;
use crate::protocol::{new_id, unix_now};
use crate::text_models::{TextModel, TextTaskKind, pair_score, softmax};
use tritium_backend_api::llm::OpenAiApi;

/// Where the classify API is mounted.
pub const CLASSIFY_PATHS: [&str; 2] = ["/classify", "/v1/classify"];

/// Texts one request may score (each is embedded) or classify.
pub const MAX_TEXTS: usize = 2048;

/// One text, or a list of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Texts(pub Vec<String>, pub bool);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Texts, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Texts(vec![text], false)),
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    _ => Err(D::Error::custom("expected a string or an array of strings")),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|texts| Texts(texts, true)),
            _ => Err(D::Error::custom("expected a string or an array of strings")),
        }
    }
}

/// vLLM's classify request.
#[derive(Debug, Clone, Deserialize)]
pub struct ClassifyRequest {
    pub model: String,
    pub input: Texts,
}

/// `model` as a text model of `kind`: `None` when it is not a text model at all (the embedding
/// path then answers), an error naming what it serves when it is the other kind.
pub(super) fn text_model(
    state: &AppState,
    model: &str,
    kind: TextTaskKind,
    endpoint: &str,
) -> Result<Option<Arc<TextModel>>, BridgeError> {
    match state.hub.text_model(model) {
        Some(found) if found.kind == kind => Ok(Some(found)),
        Some(found) => {
            let (is, serves) = match found.kind {
                TextTaskKind::Score => ("a cross-encoder", "/v1/score and /v1/rerank"),
                TextTaskKind::Classify => ("a classifier", "/classify"),
            };
            Err(BridgeError::field("model", format!("the model '{model}' is {is}; it serves {serves}, not {endpoint}")))
        }
        None => match state.hub.remote_text_task(model) {
            Some(task) => Err(BridgeError::Unsupported {
                model: model.to_string(),
                what: format!(
                    "{endpoint} here: it is a text model (openai_task: {task}) on a remote worker, whose tokenizer this \
                     frontend does not hold; call {endpoint} on a server that loads it (tritium serve with its repository)"
                ),
            }),
            None => Ok(None),
        },
    }
}

/// Runs `texts` (one text or a pair each) through the model: one output vector per text, and the
/// tokens spent.
pub(super) async fn run(
    state: &AppState,
    caller: super::CallerTrace,
    model: &str,
    text_model: &Arc<TextModel>,
    texts: Vec<(String, Option<String>)>,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    let mut observer = state.observer(model, caller);
    let count = texts.len();
    let encoder = Arc::clone(text_model);
    let encoded = tokio::task::spawn_blocking(move || encoder.encode(texts)).await;
    let rows = match encoded {
        Ok(Ok(rows)) => rows,
        Ok(Err(reason)) => return Err(failed(&mut observer, BridgeError::field("input", reason)).into()),
        Err(e) => return Err(failed(&mut observer, BridgeError::Internal(format!("tokenizing failed: {e}"))).into()),
    };
    let tokens = u32::try_from(rows.iter().map(|(ids, _)| ids.len()).sum::<usize>()).unwrap_or(u32::MAX);
    observer.prompt_tokens(tokens);
    let outputs = super::embeddings::one_per_input(state.hub.run_text_model(model, rows).await, count, &mut observer)?;
    Ok((outputs, tokens))
}

/// A cross-encoder's scores of `pairs`.
pub(super) async fn pair_scores(
    state: &AppState,
    caller: super::CallerTrace,
    model: &str,
    text_model: &Arc<TextModel>,
    pairs: Vec<(String, String)>,
) -> Result<(Vec<f32>, u32), ApiError> {
    let texts = pairs.into_iter().map(|(a, b)| (a, Some(b))).collect();
    let (outputs, tokens) = run(state, caller, model, text_model, texts).await?;
    Ok((outputs.iter().map(|logits| pair_score(logits)).collect(), tokens))
}

/// `POST /classify`: each input's class probabilities and its likeliest label.
pub(super) async fn classify(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
    super::OpenAiJsonAndBody(request, body): super::OpenAiJsonAndBody<ClassifyRequest>,
) -> Result<Response, ApiError> {
    let inputs = request.input.0;
    if inputs.is_empty() || inputs.len() > MAX_TEXTS {
        return Err(BridgeError::field("input", format!("between 1 and {MAX_TEXTS} texts are required")).into());
    }
    if let Some(i) = inputs.iter().position(String::is_empty) {
        return Err(BridgeError::field(format!("input[{i}]"), "must not be empty").into());
    }
    if state.hub.takes_text(&request.model) {
        let worker = worker.or_nvext(None);
        return super::text_unary::forward(&state, OpenAiApi::Classify, &request.model, worker, body.json()?, caller).await;
    }
    let Some(text_model) = text_model(&state, &request.model, TextTaskKind::Classify, "/classify")? else {
        state.hub.preprocessor(&request.model)?;
        let reason =
            format!("the model '{}' is not a classifier (a model whose config sets openai_task: classify)", request.model);
        return Err(BridgeError::field("model", reason).into());
    };
    let texts = inputs.into_iter().map(|text| (text, None)).collect();
    let (outputs, tokens) = run(&state, caller, &request.model, &text_model, texts).await?;
    let data: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(index, logits)| {
            let probs = softmax(logits);
            let best = probs.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            json!({"index": index, "label": text_model.label(best), "probs": probs, "num_classes": probs.len()})
        })
        .collect();
    let body = json!({
        "id": new_id("classify"), "object": "list", "created": unix_now(), "model": request.model, "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    });
    Ok(json_response(StatusCode::OK, &body))
}
