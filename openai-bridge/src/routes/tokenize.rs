//! vLLM's tokenizer endpoints, which evaluators (lm-eval's `tokenizer_backend=remote`) and agent
//! frameworks use to count and split text exactly as the server does:
//!
//! - `POST /tokenize`: `{model?, prompt, add_special_tokens = true, return_token_strs = false}` or
//!   `{model?, messages, add_generation_prompt = true, add_special_tokens = false, tools?,
//!   chat_template_kwargs?}` (the chat rendered by the model's template first), answering
//!   `{count, max_model_len, tokens, token_strs}`.
//! - `POST /detokenize`: `{model?, tokens}` answering `{prompt}`.
//! - `GET /tokenizer_info[?model=]`: the tokenizer's class and special tokens, its chat template
//!   and the model's context length.
//!
//! Each is served with and without the `/v1` prefix, as vLLM serves them. `model` may be left out
//! when the server has one language model.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tritium_backend_api::llm::ModelKind;

use super::{ApiError, AppState, OpenAiJson, json_response};
use crate::BridgeError;
use crate::protocol::{ChatCompletionRequest, parse_json};

/// The paths each endpoint answers on.
pub(super) const TOKENIZE_PATHS: [&str; 2] = ["/tokenize", "/v1/tokenize"];
pub(super) const DETOKENIZE_PATHS: [&str; 2] = ["/detokenize", "/v1/detokenize"];
pub(super) const TOKENIZER_INFO_PATHS: [&str; 2] = ["/tokenizer_info", "/v1/tokenizer_info"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenizeText {
    model: Option<String>,
    prompt: String,
    add_special_tokens: Option<bool>,
    return_token_strs: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(super) struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ModelQuery {
    model: Option<String>,
}

impl AppState {
    /// The language model a tokenizer request names, or the only one served.
    fn tokenizer_model(&self, model: Option<String>) -> Result<String, BridgeError> {
        if let Some(model) = model {
            return Ok(model);
        }
        let mut generators = self.hub.models().into_iter().filter(|m| m.kind == ModelKind::Generate);
        match (generators.next(), generators.next()) {
            (Some(only), None) => Ok(only.name),
            (None, _) => Err(BridgeError::field("model", "no language model is served")),
            (Some(_), Some(_)) => Err(BridgeError::field("model", "the server has several language models: name one")),
        }
    }
}

pub(super) async fn tokenize(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Map<String, Value>>,
) -> Result<Response, ApiError> {
    let chat = body.contains_key("messages");
    let (model, tokens, return_token_strs) = if chat {
        // A chat body is a chat-completion request's template fields; nothing is generated.
        let flag = |name: &'static str, default: bool| match body.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => value.as_bool().ok_or_else(|| BridgeError::field(name, "must be a boolean")),
        };
        let (add_special_tokens, return_token_strs) = (flag("add_special_tokens", false)?, flag("return_token_strs", false)?);
        if flag("continue_final_message", false)? {
            return Err(BridgeError::field("continue_final_message", "continue_final_message is not supported").into());
        }
        let mut fields = body;
        fields.remove("add_special_tokens");
        fields.remove("return_token_strs");
        fields.remove("continue_final_message");
        let named = match fields.remove("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(model)) => Some(model),
            Some(_) => return Err(BridgeError::field("model", "must be a string").into()),
        };
        let model = state.tokenizer_model(named)?;
        fields.insert("model".into(), Value::String(model.clone()));
        let request: ChatCompletionRequest =
            parse_json(&serde_json::to_vec(&fields).map_err(|e| BridgeError::Internal(e.to_string()))?)?;
        let pre = state.preprocessor(&model, ModelKind::Generate, "/tokenize").await?;
        let tools = request.tools()?;
        let messages = request.template_messages()?;
        let extra = request.template_extra(&tools);
        let text = pre.render_chat_bounded(&messages, request.add_generation_prompt.unwrap_or(true), extra.as_ref()).await?;
        (model, pre.encode_off_runtime(text, add_special_tokens).await?, return_token_strs)
    } else {
        let request: TokenizeText =
            serde_json::from_value(Value::Object(body)).map_err(|e| BridgeError::field("prompt", e.to_string()))?;
        let model = state.tokenizer_model(request.model)?;
        // A text is tokenized for any model with a tokenizer (an embedder's too, as vLLM does).
        let pre = state.hub.preprocessor(&model)?;
        let tokens = pre.encode_off_runtime(request.prompt, request.add_special_tokens.unwrap_or(true)).await?;
        (model, tokens, request.return_token_strs.unwrap_or(false))
    };
    let pre = state.hub.preprocessor(&model)?;
    let token_strs = return_token_strs.then(|| tokens.iter().map(|&id| pre.token_text(id)).collect::<Vec<_>>());
    let body = json!({
        "count": tokens.len(),
        "max_model_len": pre.card().context_length,
        "tokens": tokens,
        "token_strs": token_strs,
    });
    Ok(json_response(StatusCode::OK, &body))
}

pub(super) async fn detokenize(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let model = state.tokenizer_model(request.model)?;
    let pre = state.preprocessor(&model, ModelKind::Generate, "/detokenize").await?;
    // No sequence the model can hold is longer than its context: a longer list is no text it made.
    let context = pre.card().context_length;
    if context > 0 && request.tokens.len() > context {
        let count = request.tokens.len();
        return Err(
            BridgeError::field("tokens", format!("{count} tokens are more than the model's context length ({context})")).into()
        );
    }
    let vocab = pre.vocab_size();
    if let Some(id) = request.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(
            BridgeError::field("tokens", format!("token id {id} is out of range (the vocabulary has {vocab} tokens)")).into()
        );
    }
    // Special tokens are kept: the text is what the ids say, as vLLM answers.
    let prompt = pre.tokenizer().decode(&request.tokens, false).map_err(|e| BridgeError::Tokenizer(e.to_string()))?;
    Ok(json_response(StatusCode::OK, &json!({ "prompt": prompt })))
}

pub(super) async fn tokenizer_info(State(state): State<AppState>, Query(query): Query<ModelQuery>) -> Result<Response, ApiError> {
    let model = state.tokenizer_model(query.model)?;
    let pre = state.preprocessor(&model, ModelKind::Generate, "/tokenizer_info").await?;
    let card = pre.card();
    let text = |id: Option<u32>| id.map(|id| pre.token_text(id));
    let body = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model": model,
        "bos_token": card.bos_token,
        "eos_token": card.eos_token,
        "eos_token_ids": card.eos_token_ids,
        "pad_token": text(pre.tokenizer().get_padding().map(|p| p.pad_id)),
        "add_bos_token": card.add_bos_token,
        "chat_template": card.chat_template,
        "model_max_length": card.context_length,
        "max_model_len": card.context_length,
        "vocab_size": pre.vocab_size(),
    });
    Ok(json_response(StatusCode::OK, &body))
}
