//! The messages inside Dynamo's frames: the request's control message and body
//! (`PreprocessedRequest` for workers that take tokens), and the response stream's prologue,
//! items (`Annotated<LLMEngineOutput>`) and control words. Tritium always sends JSON, which every
//! Dynamo 1.x worker answers in kind.

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tritium_backend_api::llm::{FinishReason, GenerateRequest};

/// The control message heading a request: who asks, and where the worker calls home.
pub fn control_message(request_id: &str, response_address: &str, subject: &str) -> Json {
    let info = json!({"address": response_address, "subject": subject, "context": request_id, "stream_type": "response"});
    json!({
        "id": request_id,
        "request_type": "single_in",
        "response_type": "many_out",
        "payload_codec": "json",
        "connection_info": {"transport": "tcp_server", "info": info.to_string()},
    })
}

/// The request headers Dynamo's TCP client sends, with the W3C `traceparent` of a traced
/// request (Dynamo's workers continue the trace from it).
pub fn headers(endpoint_path: &str, request_id: &str, traceparent: Option<&str>) -> Json {
    let mut headers = json!({"x-endpoint-path": endpoint_path, "request-id": request_id});
    if let (Some(traceparent), Some(map)) = (traceparent, headers.as_object_mut()) {
        map.insert("traceparent".into(), traceparent.into());
    }
    headers
}

/// A Tritium generation as Dynamo's `PreprocessedRequest`. `max_tokens` is always set: Dynamo's
/// workers may require it (the mocker does) and a frontend fills it in.
pub fn preprocessed_request(model: &str, request: &GenerateRequest, max_tokens: u32, eos_token_ids: &[u32]) -> Json {
    let sampling = &request.sampling;
    let positive = |value: f32| (value != 0.0).then_some(value);
    json!({
        "model": model,
        "token_ids": request.prompt,
        "stop_conditions": {
            "max_tokens": max_tokens,
            "stop_token_ids_hidden": (!request.stop.stop_token_ids.is_empty()).then_some(&request.stop.stop_token_ids),
            "min_tokens": (request.stop.min_tokens > 0).then_some(request.stop.min_tokens),
            "ignore_eos": request.stop.ignore_eos.then_some(true),
        },
        "sampling_options": {
            "temperature": sampling.temperature,
            "top_p": (sampling.top_p < 1.0).then_some(sampling.top_p),
            "top_k": (sampling.top_k > 0).then_some(sampling.top_k),
            "seed": sampling.seed,
            "presence_penalty": positive(sampling.presence_penalty),
            "frequency_penalty": positive(sampling.frequency_penalty),
            "repetition_penalty": (sampling.repetition_penalty != 1.0).then_some(sampling.repetition_penalty),
            "min_p": positive(sampling.min_p),
        },
        "output_options": {"logprobs": request.logprobs},
        "eos_token_ids": eos_token_ids,
        "annotations": [],
    })
}

/// The call-home handshake: the first frame on a response connection.
#[derive(Debug, Deserialize)]
pub struct Handshake {
    pub subject: String,
    #[serde(default)]
    pub stream_type: Option<String>,
}

/// The prologue: whether the worker's engine took the request.
#[derive(Debug, Deserialize)]
pub struct Prologue {
    #[serde(default)]
    pub error: Option<String>,
}

/// One response-stream frame's body.
#[derive(Debug, Deserialize)]
pub struct StreamItem {
    #[serde(default)]
    pub data: Option<Annotated>,
    #[serde(default)]
    pub complete_final: bool,
}

#[derive(Debug, Deserialize)]
pub struct Annotated {
    #[serde(default)]
    pub data: Option<EngineOutput>,
    #[serde(default)]
    pub event: Option<String>,
    /// A string, or a structured error in later versions.
    #[serde(default)]
    pub error: Option<Json>,
    #[serde(default)]
    pub comment: Option<Json>,
}

impl Annotated {
    /// The error this item carries, if any.
    pub fn error_text(&self) -> Option<String> {
        match (&self.error, self.event.as_deref()) {
            (Some(Json::String(text)), _) => Some(text.clone()),
            (Some(Json::Null) | None, Some("error")) => {
                Some(self.comment.as_ref().map(Json::to_string).unwrap_or_else(|| "the worker reported an error".into()))
            }
            (Some(Json::Null) | None, _) => None,
            (Some(other), _) => {
                Some(other.get("message").and_then(Json::as_str).map(str::to_owned).unwrap_or_else(|| other.to_string()))
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EngineOutput {
    #[serde(default)]
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub finish_reason: Option<Json>,
    #[serde(default)]
    pub completion_usage: Option<Usage>,
    #[serde(default)]
    pub log_probs: Option<Vec<f64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub completion_tokens: Option<u32>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

/// What a finish reason means here: a normal end, or the engine's error.
pub enum Finish {
    Done(FinishReason),
    Error(String),
}

/// `"eos" | "stop" | "length" | "cancelled" | "content_filter" | {"error": "…"}`.
pub fn finish_of(reason: &Json) -> Finish {
    match reason {
        Json::String(text) => match text.as_str() {
            "length" => Finish::Done(FinishReason::Length),
            "cancelled" => Finish::Done(FinishReason::Cancelled),
            _ => Finish::Done(FinishReason::Stop),
        },
        Json::Object(object) => {
            Finish::Error(object.get("error").and_then(Json::as_str).map(str::to_owned).unwrap_or_else(|| reason.to_string()))
        }
        _ => Finish::Done(FinishReason::Stop),
    }
}

/// The control words sent and received as header-only frames on a response connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Stop,
    Kill,
    Sentinel,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_mockers_items_read_as_captured() {
        let item: StreamItem = serde_json::from_str(
            r#"{"data":{"data":{"token_ids":[1099],"tokens":null,"text":null,"output_type":"text","finish_reason":null,
            "completion_usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8,
            "prompt_tokens_details":{"audio_tokens":null,"cached_tokens":0}}}},"complete_final":false}"#,
        )
        .unwrap();
        let annotated = item.data.unwrap();
        assert_eq!(annotated.error_text(), None);
        let output = annotated.data.unwrap();
        assert_eq!(output.token_ids, vec![1099]);
        assert_eq!(output.completion_usage.unwrap().prompt_tokens, Some(7));
        let last: StreamItem = serde_json::from_str(r#"{"complete_final":true}"#).unwrap();
        assert!(last.complete_final && last.data.is_none());
        assert!(matches!(finish_of(&json!("length")), Finish::Done(FinishReason::Length)));
        assert!(matches!(finish_of(&json!("eos")), Finish::Done(FinishReason::Stop)));
        assert!(matches!(finish_of(&json!({"error": "boom"})), Finish::Error(e) if e == "boom"));
        assert_eq!(serde_json::to_string(&Control::Stop).unwrap(), "\"stop\"");
        assert_eq!(serde_json::from_str::<Control>("\"sentinel\"").unwrap(), Control::Sentinel);
    }

    #[test]
    fn a_request_names_its_call_home_as_a_json_string() {
        let control = control_message("r1", "127.0.0.1:9", "s1");
        let info: Json = serde_json::from_str(control["connection_info"]["info"].as_str().unwrap()).unwrap();
        assert_eq!(info["subject"], "s1");
        assert_eq!(control["payload_codec"], "json");
        let request = GenerateRequest { prompt: vec![1, 2], ..Default::default() };
        let body = preprocessed_request("tiny", &request, 5, &[2]);
        assert_eq!(body["stop_conditions"]["max_tokens"], 5);
        assert_eq!(body["sampling_options"]["temperature"], 1.0);
        assert!(body["sampling_options"]["top_p"].is_null());
    }
}
