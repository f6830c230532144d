//! `POST /v1/embeddings`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use tritium_backend_api::llm::{FinishReason, ModelKind, OpenAiApi};

use super::{ApiError, AppState, check_token_ids, failed, json_response};
use crate::BridgeError;
use crate::preprocess::Preprocessor;
use crate::protocol::{
    EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EmbeddingVector, EncodingFormat,
    ErrorBody,
};

#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingRequest,
    responses((status = 200, description = "One vector per input", body = EmbeddingResponse), (status = 400, description = "A malformed request; `param` names the field", body = ErrorBody), (status = 404, description = "No such model", body = ErrorBody), (status = 429, description = "The model's queue is full", body = ErrorBody), (status = 500, description = "The engine failed", body = ErrorBody)))]
pub(super) async fn embeddings(
    State(state): State<AppState>,
    worker: super::HeaderWorker,
    caller: super::CallerTrace,
    super::OpenAiJsonAndBody(request, body): super::OpenAiJsonAndBody<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    if state.hub.takes_text(&request.model) {
        let worker = worker.or_nvext(None);
        return super::text_unary::forward(&state, OpenAiApi::Embeddings, &request.model, worker, body.json()?, caller).await;
    }
    let pre = state.preprocessor(&request.model, ModelKind::Embed, "/v1/embeddings").await?;
    let mut observer = state.observer(&request.model, caller);
    let inputs = match request.validate() {
        Ok(()) => tokenize(&pre, &request.input).await,
        Err(error) => Err(error),
    };
    let inputs = inputs.map_err(|error| failed(&mut observer, error))?;
    let prompt_tokens = inputs.iter().map(Vec::len).sum::<usize>();
    let prompt_tokens = u32::try_from(prompt_tokens).unwrap_or(u32::MAX);
    observer.prompt_tokens(prompt_tokens);
    let count = inputs.len();
    let embedding = async {
        match worker.or_nvext(None) {
            Some(worker) => state.hub.embed_on(&request.model, worker, inputs).await,
            None => state.hub.embed(&request.model, inputs).await,
        }
    };
    // A worker process that embeds joins the request's trace (its call is a hop of it).
    let embedded = tritium_backend_api::trace::scoped(observer.trace().cloned(), embedding).await;
    let vectors = one_per_input(embedded, count, &mut observer)?;
    let base64 = request.encoding_format == Some(EncodingFormat::Base64);
    let data = vectors
        .into_iter()
        .zip(0u32..)
        .map(|(vector, index)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match base64 {
                true => EmbeddingVector::base64(&vector),
                false => EmbeddingVector::Float(vector),
            },
        })
        .collect();
    let response = EmbeddingResponse {
        object: "list",
        data,
        model: request.model,
        usage: EmbeddingUsage { prompt_tokens, total_tokens: prompt_tokens },
    };
    Ok(json_response(StatusCode::OK, &response))
}

/// The model's vectors when there is one per input (the observer finished), else the failure
/// (the observer told).
pub(super) fn one_per_input(
    embedded: Result<Vec<Vec<f32>>, BridgeError>,
    count: usize,
    observer: &mut crate::metrics::RequestObserver,
) -> Result<Vec<Vec<f32>>, ApiError> {
    match embedded {
        Ok(vectors) if vectors.len() == count => {
            observer.finished(FinishReason::Stop);
            Ok(vectors)
        }
        Ok(vectors) => {
            let error = BridgeError::Internal(format!("the model returned {} embeddings for {count} inputs", vectors.len()));
            Err(failed(observer, error).into())
        }
        Err(error) => Err(failed(observer, error).into()),
    }
}

/// Token ids of each input, cut to the model's input limit (the card promises truncation). Each
/// text is tokenized within the preprocessing budget, one after the other.
pub(super) async fn tokenize(pre: &Arc<Preprocessor>, input: &EmbeddingInput) -> Result<Vec<Vec<u32>>, BridgeError> {
    let mut inputs = match input {
        EmbeddingInput::Texts(texts) => {
            let mut inputs = Vec::with_capacity(texts.len());
            for text in texts {
                inputs.push(pre.encode_off_runtime(text.clone(), true).await?);
            }
            inputs
        }
        EmbeddingInput::Tokens(tokens) => {
            for ids in tokens {
                check_token_ids(pre, "input", ids)?;
            }
            tokens.clone()
        }
    };
    if let Some(limit) = pre.card().max_input_tokens {
        for ids in &mut inputs {
            ids.truncate(limit);
        }
    }
    Ok(inputs)
}
