//! `GET /v1/responses/{id}/input_items`: the items a stored response was generated from (the
//! conversation it continued and its own input), as OpenAI lists them: messages, function calls
//! and their outputs, newest first by default, `limit` (1 to 100, default 20) at a time after the
//! item `after` names.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::listing::{ListQuery, page};
use super::{ApiError, AppState, json_response};
use crate::BridgeError;


#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "openai",
    params(("id" = String, Path, description = "A stored response's id"), ("limit" = Option<usize>, Query, description = "1 to 100 (20)"),
           ("order" = Option<String>, Query, description = "`desc` (newest first, the default) or `asc`"), ("after" = Option<String>, Query, description = "List the items after this one")),
    responses((status = 200, description = "A list of input items", body = serde_json::Value), (status = 400, description = "A bad query", body = crate::protocol::ErrorBody), (status = 404, description = "Not stored (or expired)", body = crate::protocol::ErrorBody)))]
pub(super) async fn list(State(state): State<AppState>, Path(id): Path<String>, Query(query): Query<ListQuery>) -> Response {
    let stored = match state.store.fetch(&id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return super::responses::not_found(&id),
        Err(error) => return ApiError(BridgeError::Internal(error)).into_response(),
    };
    let answered = stored.response.get("output").and_then(Value::as_array).is_some_and(|output| !output.is_empty());
    let mut messages: &[Value] = stored.conversation.as_slice();
    // The last message of an answered response is its own output, not an input.
    if answered && messages.last().is_some_and(|m| m.get("role").and_then(Value::as_str) == Some("assistant")) {
        messages = &messages[..messages.len() - 1];
    }
    match page(input_items(&id, messages), &query, "response") {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => ApiError(error).into_response(),
    }
}

/// Chat messages as Responses input items, each with an id stable for the response.
fn input_items(response: &str, messages: &[Value]) -> Vec<Value> {
    let mut items = Vec::new();
    let next_id = |items: &Vec<Value>| format!("{response}_item_{}", items.len());
    for message in messages {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("user");
        let text = match message.get("content") {
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Array(parts)) => {
                Some(parts.iter().filter_map(|part| part.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""))
            }
            _ => None,
        };
        match role {
            "tool" => {
                let id = next_id(&items);
                let call = message.get("tool_call_id").cloned().unwrap_or(Value::Null);
                items
                    .push(json!({"type": "function_call_output", "id": id, "call_id": call, "output": text.unwrap_or_default()}));
            }
            _ => {
                if let Some(text) = text.filter(|text| !text.is_empty() || role != "assistant") {
                    let kind = if role == "assistant" { "output_text" } else { "input_text" };
                    let id = next_id(&items);
                    let content = json!([{"type": kind, "text": text}]);
                    items.push(json!({"type": "message", "id": id, "role": role, "status": "completed", "content": content}));
                }
                for call in message.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    let id = next_id(&items);
                    let field = |pointer: &str| call.pointer(pointer).cloned().unwrap_or(Value::Null);
                    items.push(
                        json!({"type": "function_call", "id": id, "call_id": field("/id"), "name": field("/function/name"),
                                      "arguments": field("/function/arguments"), "status": "completed"}),
                    );
                }
            }
        }
    }
    items
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_calls_and_outputs_become_input_items() {
        let messages = [
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "weather?"}),
            json!({"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "function": {"name": "w", "arguments": "{}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}),
        ];
        let items = input_items("resp_1", &messages);
        let kinds: Vec<&str> = items.iter().map(|item| item["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["message", "message", "function_call", "function_call_output"]);
        assert_eq!(items[1]["content"][0], json!({"type": "input_text", "text": "weather?"}));
        assert_eq!(items[2]["call_id"], "c1");
        assert_eq!(items[3]["output"], "sunny");
        assert_eq!(items[3]["id"], "resp_1_item_3");
    }
}
