//! OpenAI's Conversations API: `/v1/conversations` (create, get, update its metadata, delete) and
//! its items (list, add, get, delete), and the Responses API's `conversation`, whose items come
//! before a response's input and which gains the input and output of each response made in it.
//! A conversation is kept in the response store beside the responses (the same bounds, time to
//! live and shared store): its items, each with its own id, and its object. Two responses made in
//! one conversation at the same moment both read the items before either; the later write wins.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::listing::ListQuery;
use super::{ApiError, AppState, json_response};
use crate::BridgeError;
use crate::protocol::{ResponsesRequest, items_to_messages, new_item_id, unix_now};
use crate::response_store::ResponseStore;

/// Most items one request may add (OpenAI's bound).
pub const MAX_ADDED_ITEMS: usize = 20;
/// Most metadata keys, and the longest key and value (OpenAI's bounds).
const MAX_METADATA_KEYS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    #[serde(default)]
    items: Vec<Value>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateBody {
    metadata: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddBody {
    items: Vec<Value>,
}

/// A conversation as stored: its object and its items.
struct Conversation {
    object: Value,
    items: Vec<Value>,
}

/// `POST /v1/conversations`.
pub(super) async fn create(State(state): State<AppState>, super::OpenAiJson(body): super::OpenAiJson<CreateBody>) -> Response {
    let made = (|| {
        let metadata = checked_metadata(body.metadata.unwrap_or_default())?;
        let items = checked_items(body.items, "items")?;
        let id = new_item_id("conv");
        let object = json!({"id": id, "object": "conversation", "created_at": unix_now(), "metadata": metadata});
        Ok::<_, BridgeError>((id, Conversation { object, items }))
    })();
    match made {
        Ok((id, conversation)) => match keep(&state.store, &id, conversation).await {
            Ok(object) => json_response(StatusCode::OK, &object),
            Err(error) => ApiError(error).into_response(),
        },
        Err(error) => ApiError(error).into_response(),
    }
}

/// `GET /v1/conversations/{id}`.
pub(super) async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match fetch(&state.store, &id).await {
        Ok(conversation) => json_response(StatusCode::OK, &conversation.object),
        Err(refusal) => refusal,
    }
}

/// `POST /v1/conversations/{id}`: its metadata replaced.
pub(super) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    super::OpenAiJson(body): super::OpenAiJson<UpdateBody>,
) -> Response {
    let mut conversation = match fetch(&state.store, &id).await {
        Ok(conversation) => conversation,
        Err(refusal) => return refusal,
    };
    match checked_metadata(body.metadata) {
        Ok(metadata) => conversation.object["metadata"] = Value::Object(metadata),
        Err(error) => return ApiError(error).into_response(),
    }
    match keep(&state.store, &id, conversation).await {
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(error) => ApiError(error).into_response(),
    }
}

/// `DELETE /v1/conversations/{id}`.
pub(super) async fn delete(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(refusal) = fetch(&state.store, &id).await {
        return refusal;
    }
    match state.store.delete(&id).await {
        Ok(_) => json_response(StatusCode::OK, &json!({"id": id, "object": "conversation.deleted", "deleted": true})),
        Err(error) => ApiError(BridgeError::Internal(error)).into_response(),
    }
}

/// `GET /v1/conversations/{id}/items`: `limit` (1 to 100, 20) at a time after the item `after`
/// names, newest first unless `order` is `asc`.
pub(super) async fn list_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let items = match fetch(&state.store, &id).await {
        Ok(conversation) => conversation.items,
        Err(refusal) => return refusal,
    };
    match super::listing::page(items, &query, "conversation") {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => ApiError(error).into_response(),
    }
}

/// `POST /v1/conversations/{id}/items`: the items added, as a list.
pub(super) async fn add_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    super::OpenAiJson(body): super::OpenAiJson<AddBody>,
) -> Response {
    let mut conversation = match fetch(&state.store, &id).await {
        Ok(conversation) => conversation,
        Err(refusal) => return refusal,
    };
    if body.items.is_empty() {
        return ApiError(BridgeError::field("items", "at least one item is required")).into_response();
    }
    let added = match checked_items(body.items, "items") {
        Ok(added) => added,
        Err(error) => return ApiError(error).into_response(),
    };
    conversation.items.extend(added.iter().cloned());
    match keep(&state.store, &id, conversation).await {
        Ok(_) => json_response(StatusCode::OK, &super::listing::list_object(added, false)),
        Err(error) => ApiError(error).into_response(),
    }
}

/// `GET /v1/conversations/{id}/items/{item_id}`.
pub(super) async fn get_item(State(state): State<AppState>, Path((id, item)): Path<(String, String)>) -> Response {
    match fetch(&state.store, &id).await {
        Ok(conversation) => match conversation.items.into_iter().find(|held| held["id"].as_str() == Some(&item)) {
            Some(found) => json_response(StatusCode::OK, &found),
            None => item_not_found(&item),
        },
        Err(refusal) => refusal,
    }
}

/// `DELETE /v1/conversations/{id}/items/{item_id}`: answers with the conversation.
pub(super) async fn delete_item(State(state): State<AppState>, Path((id, item)): Path<(String, String)>) -> Response {
    let mut conversation = match fetch(&state.store, &id).await {
        Ok(conversation) => conversation,
        Err(refusal) => return refusal,
    };
    let before = conversation.items.len();
    conversation.items.retain(|held| held["id"].as_str() != Some(&item));
    if conversation.items.len() == before {
        return item_not_found(&item);
    }
    match keep(&state.store, &id, conversation).await {
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(error) => ApiError(error).into_response(),
    }
}

/// The Conversations API's conversation a Responses turn is made in, with the turn's input.
pub(super) struct Thread {
    id: String,
    input: Vec<Value>,
    store: Arc<ResponseStore>,
}

impl Thread {
    pub(super) fn of(request: &ResponsesRequest, store: &Arc<ResponseStore>) -> Option<Thread> {
        let id = request.conversation_id()?.to_owned();
        Some(Thread { id, input: request.input_items(), store: Arc::clone(store) })
    }

    /// Adds the turn to the conversation; awaited before a unary answer goes out, so the
    /// client's next turn finds it.
    async fn record(self, output: Vec<Value>) {
        record_turn(&self.store, &self.id, self.input, output).await;
    }
}

/// The router's session key for a Responses API turn whose headers name no session: its
/// conversation, or the first response of the chain of `previous_response_id`s it continues, so
/// that a conversation's turns stay on the worker holding its prefix under
/// `--router-session-affinity-ttl-secs`. A chain's first response binds nothing (most requests
/// are never continued, and the table is bounded); its second turn, which the KV-aware pick sends
/// where the first turn's prefix is, binds the chain there.
pub(super) fn implied_session(request: &ResponsesRequest, chain: Option<&str>) -> Option<String> {
    let (kind, id) = match (request.conversation_id(), chain) {
        (Some(conversation), _) => ("conversation", conversation),
        (None, Some(root)) => ("response", root),
        (None, None) => return None,
    };
    let mark = tritium_backend_api::llm::IMPLIED_SESSION_MARK;
    Some(format!("{mark}{kind}:{}", blake3::hash(id.as_bytes()).to_hex()))
}

/// What is left to do once a turn's response is made: its conversation's update, if any.
#[must_use]
pub(super) struct Recording(pub(super) Option<(Thread, Vec<Value>)>);

impl Recording {
    pub(super) async fn run(self) {
        if let Some((thread, output)) = self.0 {
            thread.record(output).await;
        }
    }
}

/// The chat messages a response made in conversation `id` continues (its items, as input items
/// are read); a conversation that does not exist is refused by field.
pub(super) async fn messages_of(store: &ResponseStore, id: &str) -> Result<Vec<Value>, BridgeError> {
    match load(store, id).await? {
        Some(conversation) => items_to_messages(&conversation.items),
        None => Err(BridgeError::field("conversation", format!("Conversation with id '{id}' not found."))),
    }
}

/// Adds a response's input and output items to conversation `id` (here and in the shared
/// store); logged when it is gone or cannot be written, since the response stands.
async fn record_turn(store: &ResponseStore, id: &str, input: Vec<Value>, output: Vec<Value>) {
    let recorded = async {
        let Some(mut conversation) = load(store, id).await? else {
            return Err(BridgeError::field("conversation", format!("Conversation with id '{id}' not found.")));
        };
        conversation.items.extend(with_ids(input));
        conversation.items.extend(output);
        keep(store, id, conversation).await
    };
    if let Err(error) = recorded.await {
        tracing::warn!(conversation = id, "a response's items are not in its conversation: {error}");
    }
}

async fn load(store: &ResponseStore, id: &str) -> Result<Option<Conversation>, BridgeError> {
    let Some(stored) = store.fetch_latest(id).await.map_err(BridgeError::Internal)? else { return Ok(None) };
    if stored.response.get("object").and_then(Value::as_str) != Some("conversation") {
        return Ok(None);
    }
    Ok(Some(Conversation { object: stored.response.as_ref().clone(), items: stored.conversation.as_ref().clone() }))
}

async fn fetch(store: &ResponseStore, id: &str) -> Result<Conversation, Response> {
    match load(store, id).await {
        Ok(Some(conversation)) => Ok(conversation),
        Ok(None) => Err(not_found("Conversation", id)),
        Err(error) => Err(ApiError(error).into_response()),
    }
}

/// Stores the conversation (here and in the shared store); its object.
async fn keep(store: &ResponseStore, id: &str, conversation: Conversation) -> Result<Value, BridgeError> {
    let object = conversation.object.clone();
    if !store.insert(id.to_owned(), conversation.items, conversation.object) {
        return Err(BridgeError::TooLarge("the conversation is larger than the response store (--responses-store-bytes)".into()));
    }
    store.share(id).await;
    Ok(object)
}

/// Items checked as a response's input is (they must read as chat messages), each given an id.
fn checked_items(items: Vec<Value>, field: &str) -> Result<Vec<Value>, BridgeError> {
    if items.len() > MAX_ADDED_ITEMS {
        return Err(BridgeError::field(field, format!("at most {MAX_ADDED_ITEMS} items may be added at once")));
    }
    items_to_messages(&items).map_err(|error| match error {
        BridgeError::InvalidField { field: inner, reason } => BridgeError::field(inner.replacen("input", field, 1), reason),
        other => other,
    })?;
    Ok(with_ids(items))
}

/// Items with an `id` (and `type`) each, as OpenAI lists them.
fn with_ids(items: Vec<Value>) -> Vec<Value> {
    items
        .into_iter()
        .map(|mut item| {
            if let Some(object) = item.as_object_mut() {
                let kind = object.get("type").and_then(Value::as_str).unwrap_or("message").to_owned();
                object.entry("type").or_insert_with(|| kind.clone().into());
                // A message's text as content parts, as OpenAI lists them.
                if kind == "message"
                    && let Some(Value::String(text)) = object.get("content")
                {
                    let part = if object.get("role").and_then(Value::as_str) == Some("assistant") {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    let parts = json!([{"type": part, "text": text}]);
                    object.insert("content".into(), parts);
                }
                if !object.get("id").is_some_and(Value::is_string) {
                    let prefix = match kind.as_str() {
                        "function_call" => "fc",
                        "function_call_output" => "fco",
                        "reasoning" => "rs",
                        _ => "msg",
                    };
                    object.insert("id".into(), new_item_id(prefix).into());
                }
            }
            item
        })
        .collect()
}

fn checked_metadata(metadata: Map<String, Value>) -> Result<Map<String, Value>, BridgeError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(BridgeError::field("metadata", format!("at most {MAX_METADATA_KEYS} keys")));
    }
    for (key, value) in &metadata {
        let Some(text) = value.as_str() else {
            return Err(BridgeError::field(format!("metadata.{key}"), "values are strings"));
        };
        if key.len() > MAX_METADATA_KEY || text.len() > MAX_METADATA_VALUE {
            let reason = format!("keys are at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}");
            return Err(BridgeError::field("metadata", reason));
        }
    }
    Ok(metadata)
}

fn not_found(what: &str, id: &str) -> Response {
    let message = format!("{what} with id '{id}' not found.");
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

fn item_not_found(id: &str) -> Response {
    not_found("Item", id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_get_ids_and_types_and_are_checked_as_input_is() {
        let items = checked_items(
            vec![
                json!({"role": "user", "content": "hi"}),
                json!({"type": "message", "role": "assistant", "content": "yo", "id": "msg_1"}),
            ],
            "items",
        )
        .unwrap();
        assert!(items[0]["id"].as_str().unwrap().starts_with("msg"));
        assert_eq!(items[0]["type"], "message");
        assert_eq!(items[1]["id"], "msg_1");
        let error = checked_items(vec![json!({"role": "robot", "content": "x"})], "items").unwrap_err();
        assert!(matches!(error, BridgeError::InvalidField { ref field, .. } if field == "items[0]"), "{error:?}");
        assert!(checked_items(vec![json!({"role": "user", "content": "x"}); 21], "items").is_err());
    }

    #[test]
    fn metadata_is_bounded_as_openai_bounds_it() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(checked_metadata(many).is_err());
        let mut not_text = Map::new();
        not_text.insert("k".into(), json!(1));
        assert!(checked_metadata(not_text).is_err());
        let mut long = Map::new();
        long.insert("k".into(), json!("v".repeat(513)));
        assert!(checked_metadata(long).is_err());
    }
}
