//! Tool calls and reasoning in chat, the Responses API and Anthropic's Messages API, over the
//! fake hub: the model's scripted output goes through the server's parsers.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tritium_backend_api::llm::FinishReason;
use tritium_openai_bridge::metrics::LlmMetrics;
use tritium_openai_bridge::parsers::{OutputFormats, ReasoningFormat, ToolCallFormat};
use tritium_openai_bridge::routes::{ApiSettings, openai_routes};

use support::{FakeHub, Script, ids, post, send};

const CALL: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

fn hermes_and_think() -> Arc<FakeHub> {
    FakeHub::with_formats(OutputFormats { tool_calls: Some(ToolCallFormat::Hermes), reasoning: Some(ReasoningFormat::Think) })
}

fn plays(hub: &FakeHub, text: &str, reason: FinishReason) {
    hub.script(Script::Tokens(ids(&hub.llm, text), reason));
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

#[tokio::test]
async fn chat_returns_tool_calls_and_reasoning() {
    let hub = hermes_and_think();
    plays(&hub, &format!("<think>The user wants weather.</think>\n\n{CALL}"), FinishReason::Stop);
    let body =
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [weather_tool()]});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let choice = &reply.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["reasoning_content"], "The user wants weather.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(), json!({"city": "Paris"}));
}

#[tokio::test]
async fn without_tools_a_call_stays_text() {
    let hub = hermes_and_think();
    plays(&hub, CALL, FinishReason::Stop);
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]});
    let choice = post(&hub, "/v1/chat/completions", body).await.json()["choices"][0].clone();
    assert_eq!(choice["message"]["content"], CALL);
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none());
}

#[tokio::test]
async fn streamed_chat_sends_a_call_name_first_then_its_arguments_in_pieces() {
    let hub = hermes_and_think();
    plays(&hub, &format!("Checking.\n{CALL}"), FinishReason::Stop);
    let body = json!({"model": "tiny", "stream": true, "messages": [{"role": "user", "content": "Weather?"}], "tools": [weather_tool()]});
    let chunks = post(&hub, "/v1/chat/completions", body).await.chunks();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    let content: String = deltas.iter().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(content, "Checking.");
    let pieces: Vec<&Value> = deltas.iter().filter_map(|d| d["tool_calls"].as_array()).flatten().collect();
    assert!(pieces.len() > 2, "the arguments come in pieces: {chunks:?}");
    // OpenAI's shape: the first piece has the id, type and name; the rest only arguments.
    assert!(pieces[0]["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{}", pieces[0]);
    assert_eq!((&pieces[0]["type"], &pieces[0]["function"]["name"]), (&json!("function"), &json!("get_weather")));
    for piece in &pieces[1..] {
        assert_eq!(piece["index"], 0);
        assert!(piece.get("id").is_none() && piece["function"].get("name").is_none(), "{piece}");
    }
    let arguments: String = pieces.iter().filter_map(|p| p["function"]["arguments"].as_str()).collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"city": "Paris"}));
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn bad_tools_are_400_naming_the_field() {
    let hub = hermes_and_think();
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["param"], "tools[0]");
}

#[tokio::test]
async fn a_response_is_stored_and_continued() {
    let hub = hermes_and_think();
    plays(&hub, "Hello world", FinishReason::Stop);
    let router = support::app(&hub, &Arc::new(LlmMetrics::new()));
    let body = json!({"model": "tiny", "input": "Say hi", "instructions": "Be nice."});
    let reply = send(router.clone(), "POST", "/v1/responses", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let first = reply.json();
    let id = first["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!((first["object"].as_str(), first["status"].as_str()), (Some("response"), Some("completed")));
    assert_eq!(first["output"][0]["type"], "message");
    assert_eq!(first["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(first["output"][0]["content"][0]["text"], "Hello world");
    assert_eq!(first["usage"]["output_tokens"], 2);
    assert_eq!(first["usage"]["total_tokens"], first["usage"]["input_tokens"].as_u64().unwrap() + 2);
    assert!(hub.last_prompt().starts_with("<|system|>Be nice."), "{}", hub.last_prompt());

    // The next turn sees the first one (but not its instructions).
    plays(&hub, "Bye", FinishReason::Stop);
    let body = json!({"model": "tiny", "input": [{"role": "user", "content": "Again"}], "previous_response_id": id});
    let reply = send(router.clone(), "POST", "/v1/responses", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(hub.last_prompt(), "<|user|>Say hi<|assistant|>Hello world<|user|>Again<|assistant|>");
    assert_eq!(reply.json()["previous_response_id"], id.as_str());
}

#[tokio::test]
async fn stored_responses_are_read_and_deleted() {
    let hub = hermes_and_think();
    let router = support::app(&hub, &Arc::new(LlmMetrics::new()));
    plays(&hub, "Hello", FinishReason::Stop);
    let created = send(router.clone(), "POST", "/v1/responses", r#"{"model": "tiny", "input": "x"}"#).await.json();
    let id = created["id"].as_str().unwrap();
    let got = send(router.clone(), "GET", &format!("/v1/responses/{id}"), "").await;
    assert_eq!(got.json(), created);
    let deleted = send(router.clone(), "DELETE", &format!("/v1/responses/{id}"), "").await;
    assert_eq!(deleted.json()["deleted"], true);
    let gone = send(router.clone(), "GET", &format!("/v1/responses/{id}"), "").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let body = json!({"model": "tiny", "input": "x", "previous_response_id": id});
    let reply = send(router, "POST", "/v1/responses", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["param"], "previous_response_id");
}

#[tokio::test]
async fn unstored_responses_cannot_be_continued() {
    let hub = hermes_and_think();
    let router = support::app(&hub, &Arc::new(LlmMetrics::new()));
    plays(&hub, "Hello", FinishReason::Stop);
    let created = send(router.clone(), "POST", "/v1/responses", r#"{"model": "tiny", "input": "x", "store": false}"#).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(send(router, "GET", &format!("/v1/responses/{id}"), "").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_response_with_a_function_call_and_its_output() {
    let hub = hermes_and_think();
    let router = support::app(&hub, &Arc::new(LlmMetrics::new()));
    plays(&hub, &format!("<think>Need data.</think>{CALL}"), FinishReason::Stop);
    let tool = json!({"type": "function", "name": "get_weather", "parameters": {"type": "object"}});
    let body = json!({"model": "tiny", "input": "Weather in Paris?", "tools": [tool]});
    let first = send(router.clone(), "POST", "/v1/responses", &body.to_string()).await.json();
    let output = first["output"].as_array().unwrap();
    assert_eq!(output.iter().map(|item| item["type"].as_str().unwrap()).collect::<Vec<_>>(), ["reasoning", "function_call"]);
    assert_eq!(output[0]["content"][0]["text"], "Need data.");
    let call = &output[1];
    assert_eq!(call["name"], "get_weather");
    assert!(call["call_id"].as_str().unwrap().starts_with("call_") && call["id"].as_str().unwrap().starts_with("fc_"));

    plays(&hub, "It is 18C.", FinishReason::Stop);
    let body = json!({"model": "tiny", "previous_response_id": first["id"], "tools": [tool],
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}]});
    let second = send(router, "POST", "/v1/responses", &body.to_string()).await.json();
    assert_eq!(second["output"][0]["content"][0]["text"], "It is 18C.");
    assert!(hub.last_prompt().ends_with("<|tool|>18C<|assistant|>"), "{}", hub.last_prompt());
}

#[tokio::test]
async fn a_streamed_response_sends_the_typed_events() {
    let hub = hermes_and_think();
    plays(&hub, "<think>Hmm.</think>Hello world", FinishReason::Length);
    let body = json!({"model": "tiny", "input": "Say hi", "stream": true});
    let events = post(&hub, "/v1/responses", body).await.named_events();
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds[..2], ["response.created", "response.in_progress"]);
    assert_eq!(kinds.last(), Some(&"response.incomplete"), "{kinds:?}");
    for expected in [
        "response.output_item.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&expected), "{expected} in {kinds:?}");
    }
    let numbers: Vec<u64> = events.iter().map(|(_, data)| data["sequence_number"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let text: String = events
        .iter()
        .filter(|(kind, _)| kind == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello world");
    let last = &events.last().unwrap().1["response"];
    assert_eq!(last["status"], "incomplete");
    assert_eq!(last["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(last["output"][1]["content"][0]["text"], "Hello world");
}

#[tokio::test]
async fn a_message_with_a_stop_sequence_and_usage() {
    let hub = hermes_and_think();
    plays(&hub, "Hello world", FinishReason::Stop);
    let body = json!({"model": "tiny", "max_tokens": 8, "system": "Be brief.", "stop_sequences": [" wor"],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]});
    let reply = post(&hub, "/v1/messages", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let message = reply.json();
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!((message["type"].as_str(), message["role"].as_str()), (Some("message"), Some("assistant")));
    assert_eq!(message["content"], json!([{"type": "text", "text": "Hello"}]));
    assert_eq!(message["stop_reason"], "stop_sequence");
    assert_eq!(message["stop_sequence"], " wor");
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(hub.last_prompt(), "<|system|>Be brief.<|user|>Hi<|assistant|>");
}

#[tokio::test]
async fn a_message_that_uses_a_tool() {
    let hub = hermes_and_think();
    plays(&hub, &format!("<think>Weather lookup.</think>{CALL}"), FinishReason::Stop);
    let tool = json!({"name": "get_weather", "input_schema": {"type": "object"}});
    let body = json!({"model": "tiny", "max_tokens": 512, "tools": [tool], "messages": [{"role": "user", "content": "Paris?"}]});
    let message = post(&hub, "/v1/messages", body).await.json();
    assert_eq!(message["stop_reason"], "tool_use");
    let content = message["content"].as_array().unwrap();
    assert_eq!(content[0], json!({"type": "thinking", "thinking": "Weather lookup.", "signature": ""}));
    assert_eq!(content[1]["type"], "tool_use");
    assert!(content[1]["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(content[1]["input"], json!({"city": "Paris"}));
}

#[tokio::test]
async fn a_streamed_message_sends_its_events() {
    let hub = hermes_and_think();
    plays(&hub, &format!("Hello world{CALL}"), FinishReason::Stop);
    let tool = json!({"name": "get_weather", "input_schema": {"type": "object"}});
    let body = json!({"model": "tiny", "max_tokens": 512, "stream": true, "tools": [tool], "messages": [{"role": "user", "content": "Hi"}]});
    let events = post(&hub, "/v1/messages", body).await.named_events();
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(kinds[..2], ["message_start", "ping"]);
    assert_eq!(kinds[kinds.len() - 2..], ["message_delta", "message_stop"]);
    assert!(events[0].1["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let text: String = events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "text_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello world");
    let starts: Vec<&Value> = events.iter().filter(|(k, _)| k == "content_block_start").map(|(_, d)| d).collect();
    assert_eq!(starts.len(), 2);
    assert_eq!((starts[0]["index"].as_u64(), starts[1]["index"].as_u64()), (Some(0), Some(1)));
    assert_eq!(starts[1]["content_block"]["name"], "get_weather");
    let json: String = events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), json!({"city": "Paris"}));
    assert_eq!(events.iter().filter(|(k, _)| k == "content_block_stop").count(), 2);
    assert_eq!(events[events.len() - 2].1["delta"]["stop_reason"], "tool_use");
}

#[tokio::test]
async fn messages_errors_have_anthropics_shape() {
    let hub = hermes_and_think();
    let cases = [
        (json!({"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}), 404, "not_found_error"),
        (json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}]}), 400, "invalid_request_error"),
        (
            json!({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
            400,
            "invalid_request_error",
        ),
    ];
    for (body, status, kind) in cases {
        let reply = post(&hub, "/v1/messages", body.clone()).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {}", reply.body);
        let error = reply.json();
        assert_eq!((error["type"].as_str(), error["error"]["type"].as_str()), (Some("error"), Some(kind)), "{error}");
    }
    let reply = send(support::app(&hub, &Arc::new(LlmMetrics::new())), "POST", "/v1/messages", "{not json").await;
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn count_tokens_counts_the_rendered_prompt() {
    let hub = hermes_and_think();
    let body = json!({"model": "tiny", "system": "S", "messages": [{"role": "user", "content": "Hello world"}]});
    let reply = post(&hub, "/v1/messages/count_tokens", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let expected = hub.llm.encode("<|system|>S<|end|><|user|>Hello world<|end|><|assistant|>", false).unwrap().len();
    assert_eq!(reply.json(), json!({"input_tokens": expected}));
}

#[tokio::test]
async fn the_anthropic_api_is_off_unless_enabled() {
    let hub = hermes_and_think();
    let router = openai_routes(hub, Arc::new(LlmMetrics::new()), ApiSettings::default());
    let body = json!({"model": "tiny", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}).to_string();
    assert_eq!(send(router, "POST", "/v1/messages", &body).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn paths_move_and_bodies_are_bounded() {
    let hub = hermes_and_think();
    let paths =
        tritium_openai_bridge::routes::ApiPaths { responses: "/r".into(), messages: "/anthropic".into(), ..Default::default() };
    let settings = ApiSettings { anthropic: true, max_body_bytes: 256, paths, ..ApiSettings::default() };
    let router = openai_routes(hub.clone(), Arc::new(LlmMetrics::new()), settings);
    plays(&hub, "Hi", FinishReason::Stop);
    assert_eq!(send(router.clone(), "POST", "/r", r#"{"model": "tiny", "input": "x"}"#).await.status, StatusCode::OK);
    assert_eq!(
        send(router.clone(), "POST", "/v1/responses", r#"{"model": "tiny", "input": "x"}"#).await.status,
        StatusCode::NOT_FOUND
    );
    let count = r#"{"model": "tiny", "messages": [{"role": "user", "content": "x"}]}"#;
    assert_eq!(send(router.clone(), "POST", "/anthropic/count_tokens", count).await.status, StatusCode::OK);
    let big = json!({"model": "tiny", "input": "x".repeat(300)}).to_string();
    let reply = send(router.clone(), "POST", "/r", &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"]["message"].is_string(), "{}", reply.body);
    let big = json!({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x".repeat(300)}]}).to_string();
    let reply = send(router, "POST", "/anthropic", &big).await;
    assert_eq!(
        (reply.status, reply.json()["error"]["type"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("request_too_large"))
    );
}

#[tokio::test]
async fn the_openapi_document_and_swagger_ui_are_served() {
    let hub = hermes_and_think();
    let router = support::app(&hub, &Arc::new(LlmMetrics::new()));
    let reply = send(router.clone(), "GET", "/openapi.json", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let document = reply.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."), "{}", document["openapi"]);
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/responses/{id}",
        "/v1/messages",
        "/v1/messages/count_tokens",
    ] {
        assert!(paths.contains_key(path), "{path} in {:?}", paths.keys().collect::<Vec<_>>());
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in ["ChatCompletionRequest", "ResponsesRequest", "MessagesRequest", "NvExt", "ResponseObject", "ErrorBody"] {
        assert!(schemas.contains_key(schema), "{schema}");
    }
    let ui = send(router.clone(), "GET", "/docs/", "").await;
    assert_eq!(ui.status, StatusCode::OK);
    assert!(ui.body.contains("swagger-ui"), "{}", &ui.body[..ui.body.len().min(300)]);
    let without = openai_routes(hub, Arc::new(LlmMetrics::new()), ApiSettings::default());
    let document = send(without, "GET", "/openapi.json", "").await.json();
    assert!(document["paths"].get("/v1/messages").is_none(), "the Anthropic routes are documented only when served");
}
