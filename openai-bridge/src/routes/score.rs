//! Scoring with embedding models, in the shapes retrieval pipelines call beside embeddings:
//! vLLM's `POST /v1/score` (`text_1` against `text_2`) and the Jina/Cohere rerank API
//! (`POST /v1/rerank`, also at `/rerank` and `/v2/rerank`). A score is the cosine similarity of
//! the two texts' embeddings, each text embedded once per request; with a cross-encoder (a tensor
//! model whose config sets `openai_task: score`), the model's own score of each pair.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tritium_backend_api::llm::{ModelKind, OpenAiApi};

use super::classify::{self, MAX_TEXTS, Texts};
use super::embeddings::{one_per_input, tokenize};
use super::{ApiError, AppState, OpenAiJson, failed, json_response};
use crate::BridgeError;
use crate::protocol::{EmbeddingInput, new_id, unix_now};
use crate::text_models::TextTaskKind;

/// Where the rerank API is mounted (vLLM's three paths).
pub const RERANK_PATHS: [&str; 3] = ["/v1/rerank", "/rerank", "/v2/rerank"];
/// Where the score API is mounted.
pub const SCORE_PATHS: [&str; 2] = ["/v1/score", "/score"];
/// vLLM's `POST /v1/score`.
#[derive(Debug, Clone, Deserialize)]
pub struct ScoreRequest {
    pub model: String,
    pub text_1: Texts,
    pub text_2: Texts,
}

/// A rerank document: a string, or `{"text": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Document {
    pub text: String,
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Document, D::Error> {
        use serde::de::Error;
        match Value::deserialize(deserializer)? {
            Value::String(text) => Ok(Document { text }),
            Value::Object(map) => match map.get("text") {
                Some(Value::String(text)) => Ok(Document { text: text.clone() }),
                _ => Err(D::Error::custom("a document object needs a string `text`")),
            },
            _ => Err(D::Error::custom("expected a string or an object with `text`")),
        }
    }
}

/// The rerank API's request (Jina's and Cohere's fields).
#[derive(Debug, Clone, Deserialize)]
pub struct RerankRequest {
    pub model: String,
    pub query: String,
    pub documents: Vec<Document>,
    pub top_n: Option<usize>,
    pub return_documents: Option<bool>,
}

/// The pairs `text_1` and `text_2` make, as vLLM pairs them: one against one, one against many,
/// or many against as many, element by element.
fn pairs(first: &Texts, second: &Texts) -> Result<Vec<(usize, usize)>, BridgeError> {
    let (a, b) = (first.0.len(), second.0.len());
    if a == 0 || b == 0 {
        let field = if a == 0 { "text_1" } else { "text_2" };
        return Err(BridgeError::field(field, "at least one text is required"));
    }
    if a + b > MAX_TEXTS {
        return Err(BridgeError::field("text_2", format!("at most {MAX_TEXTS} texts may be scored in one request")));
    }
    match (a, b) {
        (1, _) => Ok((0..b).map(|j| (0, j)).collect()),
        _ if a == b => Ok((0..a).map(|i| (i, i)).collect()),
        _ => Err(BridgeError::field(
            "text_2",
            format!("text_1 has {a} texts and text_2 {b}: give one text_1, or as many as text_2"),
        )),
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let norms = norm(a) * norm(b);
    if norms > 0.0 { dot / norms } else { 0.0 }
}

/// Embeds `texts` with `model`: the vectors and the prompt tokens spent.
async fn embed(
    state: &AppState,
    caller: super::CallerTrace,
    model: &str,
    endpoint: &str,
    texts: Vec<String>,
) -> Result<(Vec<Vec<f32>>, u32), ApiError> {
    let pre = state.preprocessor(model, ModelKind::Embed, endpoint).await?;
    let mut observer = state.observer(model, caller);
    let count = texts.len();
    let inputs = tokenize(&pre, &EmbeddingInput::Texts(texts)).await.map_err(|e| failed(&mut observer, e))?;
    let tokens = u32::try_from(inputs.iter().map(Vec::len).sum::<usize>()).unwrap_or(u32::MAX);
    observer.prompt_tokens(tokens);
    let embedded = tritium_backend_api::trace::scoped(observer.trace().cloned(), state.hub.embed(model, inputs)).await;
    let vectors = one_per_input(embedded, count, &mut observer)?;
    Ok((vectors, tokens))
}

/// `POST /v1/score`.
pub(super) async fn score(
    State(state): State<AppState>,
    caller: super::CallerTrace,
    OpenAiJson(request): OpenAiJson<ScoreRequest>,
) -> Result<Response, ApiError> {
    let pairs = pairs(&request.text_1, &request.text_2)?;
    let split = request.text_1.0.len();
    let texts: Vec<String> = request.text_1.0.iter().chain(&request.text_2.0).cloned().collect();
    if let Some(i) = texts.iter().position(String::is_empty) {
        let field = if i < split { format!("text_1[{i}]") } else { format!("text_2[{}]", i - split) };
        return Err(BridgeError::field(field, "must not be empty").into());
    }
    let (scores, tokens) = match classify::text_model(&state, &request.model, TextTaskKind::Score, "/v1/score")? {
        // A cross-encoder reads each pair whole.
        Some(model) => {
            let pairs = pairs.iter().map(|&(i, j)| (texts[i].clone(), texts[split + j].clone())).collect();
            classify::pair_scores(&state, caller, &request.model, &model, pairs).await?
        }
        None => {
            let (vectors, tokens) = embed(&state, caller, &request.model, "/v1/score", texts).await?;
            (pairs.iter().map(|&(i, j)| cosine(&vectors[i], &vectors[split + j])).collect(), tokens)
        }
    };
    let data: Vec<Value> = scores
        .into_iter()
        .enumerate()
        .map(|(index, score)| serde_json::json!({"index": index, "object": "score", "score": score}))
        .collect();
    let body = serde_json::json!({
        "id": new_id("score"), "object": "list", "created": unix_now(), "model": request.model, "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0},
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// `POST /v1/rerank` (and `/rerank`, `/v2/rerank`): the documents by relevance to the query,
/// most relevant first.
pub(super) async fn rerank(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
    super::OpenAiJsonAndBody(request, body): super::OpenAiJsonAndBody<RerankRequest>,
) -> Result<Response, ApiError> {
    if request.query.is_empty() {
        return Err(BridgeError::field("query", "must not be empty").into());
    }
    if request.documents.is_empty() || request.documents.len() >= MAX_TEXTS {
        return Err(BridgeError::field("documents", format!("between 1 and {} documents are required", MAX_TEXTS - 1)).into());
    }
    if let Some(i) = request.documents.iter().position(|d| d.text.is_empty()) {
        return Err(BridgeError::field(format!("documents[{i}]"), "must not be empty").into());
    }
    if state.hub.takes_text(&request.model) {
        let worker = worker.or_nvext(None);
        return super::text_unary::forward(&state, OpenAiApi::Rerank, &request.model, worker, body.json()?, caller).await;
    }
    let (relevance, tokens) = match classify::text_model(&state, &request.model, TextTaskKind::Score, "/v1/rerank")? {
        Some(model) => {
            let pairs = request.documents.iter().map(|d| (request.query.clone(), d.text.clone())).collect();
            classify::pair_scores(&state, caller, &request.model, &model, pairs).await?
        }
        None => {
            let texts: Vec<String> =
                std::iter::once(request.query.clone()).chain(request.documents.iter().map(|d| d.text.clone())).collect();
            let (vectors, tokens) = embed(&state, caller, &request.model, "/v1/rerank", texts).await?;
            ((0..request.documents.len()).map(|i| cosine(&vectors[0], &vectors[i + 1])).collect::<Vec<f32>>(), tokens)
        }
    };
    let mut ranked: Vec<(usize, f32)> = relevance.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(request.top_n.unwrap_or(ranked.len()));
    let with_documents = request.return_documents.unwrap_or(true);
    let results: Vec<Value> = ranked
        .into_iter()
        .map(|(index, relevance)| {
            let mut result = serde_json::json!({"index": index, "relevance_score": relevance});
            if with_documents {
                result["document"] = serde_json::json!(request.documents[index]);
            }
            result
        })
        .collect();
    let body = serde_json::json!({
        "id": new_id("rerank"), "model": request.model, "usage": {"total_tokens": tokens}, "results": results,
    });
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn texts(value: Value) -> Texts {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn texts_pair_as_vllm_pairs_them() {
        assert_eq!(pairs(&texts("a".into()), &texts(serde_json::json!(["b", "c"]))).unwrap(), vec![(0, 0), (0, 1)]);
        assert_eq!(
            pairs(&texts(serde_json::json!(["a", "b"])), &texts(serde_json::json!(["c", "d"]))).unwrap(),
            vec![(0, 0), (1, 1)]
        );
        let uneven = pairs(&texts(serde_json::json!(["a", "b"])), &texts(serde_json::json!(["c", "d", "e"]))).unwrap_err();
        assert!(uneven.to_string().contains("text_1 has 2 texts and text_2 3"), "{uneven}");
        assert!(pairs(&texts(serde_json::json!([])), &texts("b".into())).is_err());
        assert!(serde_json::from_value::<Texts>(serde_json::json!([1])).is_err());
    }

    #[test]
    fn documents_are_strings_or_text_objects_and_cosine_is_scale_free() {
        let documents: Vec<Document> = serde_json::from_value(serde_json::json!(["a", {"text": "b"}])).unwrap();
        assert_eq!(documents, vec![Document { text: "a".into() }, Document { text: "b".into() }]);
        assert!(serde_json::from_value::<Document>(serde_json::json!({"body": "x"})).is_err());
        assert!((cosine(&[1.0, 0.0], &[2.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 3.0]).abs() < 1e-6);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
