//! `/v1/embeddings`, `/v1/classify` and `/v1/rerank` for models whose workers take OpenAI
//! requests as the client sent them (Dynamo's text-input workers with an `Embedding`, `Classify`
//! or `Rerank` model type: SGLang's embedding worker with its own tokenizer, `dynamo.triton --task
//! classify`, a Python worker registered so). The request is forwarded unchanged and the worker's
//! answers folded as Dynamo's frontend folds them: lists joined, usage added, the first `id`,
//! `created` and `model` kept. A rerank answer (a list of `{index, score, document}`) is given in
//! the shape this door gives every rerank (`results` with `relevance_score`), most relevant first.
//! What is folded is held to the body limit.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};
use tritium_backend_api::llm::{FinishReason, GenerateError, OpenAiApi};

use super::{ApiError, AppState, CallerTrace, json_response};
use crate::BridgeError;

/// Forwards `request` (what the client sent to `api`) to a worker of `model` and answers with
/// the worker's answers folded into one.
pub(super) async fn forward(
    state: &AppState,
    api: OpenAiApi,
    model: &str,
    worker: Option<&str>,
    request: Value,
    caller: CallerTrace,
) -> Result<Response, ApiError> {
    let place = super::text_input::Place { worker, session: None };
    let (mut answers, mut observer) = super::text_input::send(state, api, model, place, request, caller).await?;
    let mut fold = UnaryFold::new(api, model, state.fold_limit);
    while let Some(answer) = super::text_input::next_chunk(&mut answers, state.hub.hard_stop()).await {
        let answer = answer.map_err(|error| super::failed(&mut observer, error))?;
        fold.add(answer).map_err(|error| super::failed(&mut observer, error))?;
    }
    let body = fold.answer().map_err(|error| super::failed(&mut observer, error))?;
    observer.finished(FinishReason::Stop);
    Ok(json_response(StatusCode::OK, &body))
}

/// The worker's answers to one unary request, folded.
#[derive(Debug)]
struct UnaryFold {
    api: OpenAiApi,
    model: String,
    limit: usize,
    held: usize,
    head: Map<String, Value>,
    data: Vec<Value>,
    usage: Map<String, Value>,
    answered: bool,
}

impl UnaryFold {
    fn new(api: OpenAiApi, model: &str, limit: usize) -> UnaryFold {
        UnaryFold {
            api,
            model: model.to_string(),
            limit,
            held: 0,
            head: Map::new(),
            data: Vec::new(),
            usage: Map::new(),
            answered: false,
        }
    }

    fn add(&mut self, answer: Value) -> Result<(), BridgeError> {
        self.held = self.held.saturating_add(serde_json::to_vec(&answer).map_or(0, |bytes| bytes.len()));
        if self.held > self.limit {
            return Err(BridgeError::TooLarge(format!(
                "the worker's answer is over the {} bytes an answer may hold",
                self.limit
            )));
        }
        self.answered = true;
        let Value::Object(mut answer) = answer else {
            // A rerank answer is a bare list of results.
            let Value::Array(results) = answer else { return Err(self.unreadable()) };
            if self.api != OpenAiApi::Rerank {
                return Err(self.unreadable());
            }
            self.data.extend(results);
            return Ok(());
        };
        for key in ["id", "object", "created", "model"] {
            if let Some(value) = answer.remove(key).filter(|v| !v.is_null()) {
                self.head.entry(key).or_insert(value);
            }
        }
        match answer.remove("data") {
            Some(Value::Array(data)) => self.data.extend(data),
            None | Some(Value::Null) => {}
            Some(_) => return Err(self.unreadable()),
        }
        if let Some(Value::Object(usage)) = answer.remove("usage") {
            for (key, count) in usage {
                let Some(count) = count.as_u64() else { continue };
                let sum = self.usage.get(&key).and_then(Value::as_u64).unwrap_or(0).saturating_add(count);
                self.usage.insert(key, sum.into());
            }
        }
        Ok(())
    }

    fn unreadable(&self) -> BridgeError {
        self.failed(format!("the worker's {} answer is not one this door reads", self.api.path()))
    }

    fn failed(&self, message: String) -> BridgeError {
        BridgeError::Generate(GenerateError::Engine { model: self.model.clone(), message })
    }

    fn answer(self) -> Result<Value, BridgeError> {
        if !self.answered {
            return Err(self.failed("the worker ended its answer without one".into()));
        }
        if self.api == OpenAiApi::Rerank {
            return Ok(rerank_answer(self.head, self.data, self.usage, &self.model));
        }
        let mut body = self.head;
        body.entry("object").or_insert_with(|| "list".into());
        body.entry("model").or_insert_with(|| self.model.into());
        body.insert("data".into(), Value::Array(self.data));
        body.insert("usage".into(), Value::Object(self.usage));
        Ok(Value::Object(body))
    }
}

/// Scored documents as this door answers a rerank: `results` by relevance (`score` becomes
/// `relevance_score`; a document's text becomes `{text}`), each keeping its input `index`.
fn rerank_answer(head: Map<String, Value>, results: Vec<Value>, usage: Map<String, Value>, model: &str) -> Value {
    let mut results: Vec<Value> = results
        .into_iter()
        .map(|result| {
            let Value::Object(mut result) = result else { return result };
            if let Some(score) = result.remove("score") {
                result.insert("relevance_score".into(), score);
            }
            if let Some(Value::String(text)) = result.remove("document") {
                result.insert("document".into(), json!({"text": text}));
            }
            Value::Object(result)
        })
        .collect();
    let score = |result: &Value| result.get("relevance_score").and_then(Value::as_f64).unwrap_or(f64::NEG_INFINITY);
    results.sort_by(|a, b| score(b).total_cmp(&score(a)));
    let id = head.get("id").cloned().unwrap_or_else(|| crate::protocol::new_id("rerank").into());
    let mut body = json!({"id": id, "model": model, "results": results});
    if !usage.is_empty() {
        body["usage"] = Value::Object(usage);
    }
    body
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_fold_as_dynamos_frontend_folds_them() {
        let mut fold = UnaryFold::new(OpenAiApi::Classify, "m", 1 << 20);
        let part = |index: u64, tokens: u64| {
            json!({"id": format!("c{index}"), "object": "list", "created": 7, "model": "m",
                "data": [{"index": index, "label": "yes", "probs": [0.1, 0.9], "num_classes": 2}],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}})
        };
        fold.add(part(0, 3)).unwrap();
        fold.add(part(1, 4)).unwrap();
        let body = fold.answer().unwrap();
        assert_eq!(body["id"], "c0");
        assert_eq!(body["data"].as_array().unwrap().len(), 2);
        assert_eq!(body["usage"], json!({"prompt_tokens": 7, "total_tokens": 7, "completion_tokens": 0}));
    }

    #[test]
    fn a_rerank_list_is_given_in_this_doors_shape_by_relevance() {
        let mut fold = UnaryFold::new(OpenAiApi::Rerank, "m", 1 << 20);
        fold.add(json!([{"index": 0, "score": 0.2, "document": "a"}, {"index": 1, "score": 0.7}])).unwrap();
        let body = fold.answer().unwrap();
        let results = body["results"].as_array().unwrap();
        assert_eq!((results[0]["index"].as_u64(), results[0]["relevance_score"].as_f64()), (Some(1), Some(0.7)));
        assert_eq!(results[1]["document"], json!({"text": "a"}));
        assert!(body.get("usage").is_none());
    }

    #[test]
    fn what_cannot_be_read_or_is_too_large_or_missing_is_refused() {
        let mut fold = UnaryFold::new(OpenAiApi::Embeddings, "m", 1 << 20);
        assert!(fold.add(json!([1, 2])).is_err(), "only a rerank answer is a bare list");
        assert!(fold.add(json!({"data": "x"})).is_err());
        let mut small = UnaryFold::new(OpenAiApi::Embeddings, "m", 16);
        assert!(matches!(small.add(json!({"data": [{"embedding": [1.0, 2.0, 3.0]}]})), Err(BridgeError::TooLarge(_))));
        assert!(UnaryFold::new(OpenAiApi::Embeddings, "m", 16).answer().is_err());
    }
}
