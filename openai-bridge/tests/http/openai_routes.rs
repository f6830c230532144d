//! The `/v1` routes driven without sockets (`tower::ServiceExt::oneshot`) over a fake hub.

use crate::support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tritium_backend_api::llm::{FinishReason, GenerateError, GenerateEvent};
use tritium_openai_bridge::metrics::LlmMetrics;

use support::{FakeHub, Script, app, ids, post, send, token_events};

fn hello_world(hub: &FakeHub) -> Vec<u32> {
    ids(&hub.llm, "Hello world")
}

#[tokio::test]
async fn completion() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Stop));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi there", "temperature": 0})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.content_type, "application/json");
    let body = reply.json();
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")), "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "tiny");
    assert!(body["created"].as_u64().is_some());
    assert_eq!(body["choices"], json!([{"index": 0, "text": "Hello world", "logprobs": null, "finish_reason": "stop"}]));
    let prompt_tokens = ids(&hub.llm, "Hi there").len();
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2, "prompt_tokens_details": {"cached_tokens": 0}})
    );

    let request = hub.last_request();
    assert_eq!(request.prompt, ids(&hub.llm, "Hi there"));
    assert_eq!(request.stop.max_tokens, Some(16), "completions default to 16 tokens");
    assert_eq!(request.sampling.temperature, 0.0);
}

#[tokio::test]
async fn completion_from_token_ids_and_length() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Stop));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": [[5, 6, 7]], "max_tokens": 1})).await;
    let body = reply.json();
    assert_eq!(body["choices"][0]["text"], "Hello");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(hub.last_request().prompt, vec![5, 6, 7]);

    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": [5, 99999]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["param"], "prompt");
}

#[tokio::test]
async fn streaming_completion_frames() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Stop));
    let body = json!({"model": "tiny", "prompt": "Hi", "stream": true, "stream_options": {"include_usage": true}});
    let reply = post(&hub, "/v1/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let chunks = reply.chunks();
    // Exact framing: every frame is `data: <one-line json>\n\n`, fields in OpenAI's order.
    assert!(reply.body.starts_with(r#"data: {"id":"cmpl-"#), "{}", reply.body);
    assert!(reply.body.split_terminator("\n\n").all(|frame| frame.starts_with("data: ") && !frame.contains('\n')));
    assert_eq!(reply.body.matches("\n\n").count(), 4);
    assert_eq!(chunks.len(), 3, "{}", reply.body);
    let id = chunks[0]["id"].as_str().expect("id");
    assert!(id.starts_with("cmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "text_completion");
    }
    assert_eq!(chunks[0]["choices"], json!([{"index": 0, "text": "Hello", "logprobs": null, "finish_reason": null}]));
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert_eq!(chunks[1]["choices"], json!([{"index": 0, "text": " world", "logprobs": null, "finish_reason": "stop"}]));
    assert_eq!(chunks[2]["choices"], json!([]));
    let prompt_tokens = ids(&hub.llm, "Hi").len();
    assert_eq!(
        chunks[2]["usage"],
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": 2, "total_tokens": prompt_tokens + 2, "prompt_tokens_details": {"cached_tokens": 0}})
    );
}

#[tokio::test]
async fn chat_completion() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Stop));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 5});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = reply.json();
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")), "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "message": {"role": "assistant", "content": "Hello world"}, "logprobs": null, "finish_reason": "stop"}])
    );
    let request = hub.last_request();
    let prompt = hub.llm.tokenizer().decode(&request.prompt, false).expect("decodes");
    assert_eq!(prompt, "<|user|>Hi<|end|><|assistant|>");
    assert!(request.prompt.contains(&support::END_ID), "the template's special tokens are tokens");
    assert_eq!(request.stop.max_tokens, Some(5));
    assert_eq!(body["usage"]["prompt_tokens"], request.prompt.len());
}

#[tokio::test]
async fn chat_without_max_tokens_may_fill_the_context() {
    let hub = FakeHub::new();
    let reply =
        post(&hub, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let request = hub.last_request();
    assert_eq!(request.stop.max_tokens, Some(64 - request.prompt.len() as u32));
}

#[tokio::test]
async fn streaming_chat_frames() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Length));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": true});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK);
    let chunks = reply.chunks();
    assert_eq!(chunks.len(), 3, "{}", reply.body);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk.get("usage").is_none(), "no usage unless asked: {chunk}");
    }
    let choices: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]).collect();
    assert_eq!(
        *choices[0],
        json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null})
    );
    assert_eq!(*choices[1], json!({"index": 0, "delta": {"content": "Hello"}, "logprobs": null, "finish_reason": null}));
    assert_eq!(*choices[2], json!({"index": 0, "delta": {"content": " world"}, "logprobs": null, "finish_reason": "length"}));
}

#[tokio::test]
async fn stop_strings_across_tokens() {
    let hub = FakeHub::new();
    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Length));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi", "stop": ["lo w"]})).await;
    let body = reply.json();
    assert_eq!(body["choices"][0]["text"], "Hel");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 2);

    hub.script(Script::Tokens(hello_world(&hub), FinishReason::Length));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": true, "stop": "o w"});
    let chunks = post(&hub, "/v1/chat/completions", body).await.chunks();
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "Hell");
    assert_eq!(chunks.last().map(|c| c["choices"][0]["finish_reason"].clone()), Some(json!("stop")));
}

#[tokio::test]
async fn unknown_model_is_404() {
    let hub = FakeHub::new();
    let reply = post(&hub, "/v1/completions", json!({"model": "nope", "prompt": "Hi"})).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.content_type, "application/json");
    assert_eq!(
        reply.json(),
        json!({"error": {"message": "the model 'nope' does not exist", "type": "invalid_request_error", "param": null,
            "code": "model_not_found"}})
    );
    let reply = send(app(&hub, &Arc::new(LlmMetrics::new())), "GET", "/v1/models/nope", "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn bad_json_is_400_naming_the_field() {
    let hub = FakeHub::new();
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi", "max_tokens": "ten"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["param"], "max_tokens");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("max_tokens") && m.contains("ten")), "{error}");

    let reply = send(app(&hub, &Arc::new(LlmMetrics::new())), "POST", "/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.content_type, "application/json");
    assert!(reply.json()["error"]["message"].as_str().is_some_and(|m| m.contains("not valid JSON")), "{}", reply.body);

    let reply = post(&hub, "/v1/chat/completions", json!({"model": "tiny"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["param"], "messages");
    assert!(hub.requests.lock().is_empty(), "nothing reached the engine");
}

#[tokio::test]
async fn choices_within_the_bound() {
    let hub = FakeHub::new();
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi", "n": 17})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let error = &reply.json()["error"];
    assert_eq!(error["param"], "n");
    assert_eq!(error["message"], "n: must be between 1 and 16, got 17");
    assert!(hub.requests.lock().is_empty(), "nothing reached the engine");
}

#[tokio::test]
async fn overload_is_429() {
    let hub = FakeHub::new();
    hub.script(Script::Overloaded);
    let metrics = Arc::new(LlmMetrics::new());
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": true}).to_string();
    let reply = send(app(&hub, &metrics), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let error = &reply.json()["error"];
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("overloaded")), "{error}");
    let text = metrics.render(&[]);
    assert!(
        text.contains(r#"tritium_llm_request_errors_total{code="resource_exhausted",model="tiny",protocol="http"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn completion_logprobs() {
    let hub = FakeHub::new();
    let tokens = hello_world(&hub);
    hub.script(Script::Tokens(tokens.clone(), FinishReason::Stop));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi", "logprobs": 2})).await;
    assert_eq!(hub.last_request().logprobs, Some(2));
    let logprobs = &reply.json()["choices"][0]["logprobs"];
    let (first, second) = (hub.llm.token_text(tokens[0]), hub.llm.token_text(tokens[1]));
    let zero = hub.llm.token_text(0);
    assert_eq!(logprobs["tokens"], json!([first, second]));
    assert_eq!(logprobs["token_logprobs"], json!([-0.5, -0.5]));
    assert_eq!(logprobs["top_logprobs"], json!([{first.clone(): -0.5, zero.clone(): -1.5}, {second.clone(): -0.5, zero: -1.5}]));
    assert_eq!(logprobs["text_offset"], json!([0, first.chars().count()]));
}

#[tokio::test]
async fn chat_logprobs() {
    let hub = FakeHub::new();
    let tokens = hello_world(&hub);
    hub.script(Script::Tokens(tokens.clone(), FinishReason::Stop));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "top_logprobs": 1});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(hub.last_request().logprobs, Some(1));
    let content = &reply.json()["choices"][0]["logprobs"]["content"];
    let entry = |id: u32| {
        let token = hub.llm.token_text(id);
        let bytes = hub.llm.token_bytes(id);
        json!({"token": token, "logprob": -0.5, "bytes": bytes, "top_logprobs": [{"token": token, "logprob": -0.5, "bytes": bytes}]})
    };
    assert_eq!(*content, json!([entry(tokens[0]), entry(tokens[1])]));
    assert_eq!(content[1]["bytes"], json!(b" world".to_vec()));

    hub.script(Script::Tokens(tokens.clone(), FinishReason::Stop));
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "logprobs": true, "stream": true});
    let chunks = post(&hub, "/v1/chat/completions", body).await.chunks();
    assert_eq!(chunks[0]["choices"][0]["logprobs"], Value::Null, "the role chunk has no tokens");
    let streamed: Vec<Value> =
        chunks[1..].iter().flat_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned().unwrap_or_default()).collect();
    assert_eq!(streamed.len(), 2);
    assert_eq!(streamed[0]["top_logprobs"], json!([]));
}

#[tokio::test]
async fn embeddings() {
    let hub = FakeHub::new();
    let reply = post(&hub, "/v1/embeddings", json!({"model": "embedder", "input": ["Hello", "Hello world"]})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let hello = ids(&hub.embedder, "Hello").len();
    let both = ids(&hub.embedder, "Hello world").len();
    assert_eq!(
        reply.json(),
        json!({"object": "list", "model": "embedder",
            "data": [{"object": "embedding", "index": 0, "embedding": [hello as f32, 0.5, -1.0]},
                     {"object": "embedding", "index": 1, "embedding": [both as f32, 0.5, -1.0]}],
            "usage": {"prompt_tokens": hello + both, "total_tokens": hello + both}})
    );

    let body = json!({"model": "embedder", "input": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]], "encoding_format": "base64"});
    let reply = post(&hub, "/v1/embeddings", body).await;
    let data = &reply.json()["data"][0];
    // [8.0, 0.5, -1.0] as little-endian f32 bytes: the card cuts inputs to 8 tokens.
    assert_eq!(data["embedding"], "AAAAQQAAAD8AAIC/");
    assert_eq!(hub.embedded.lock().last().map(|inputs| inputs[0].len()), Some(8));
}

#[tokio::test]
async fn models_of_the_wrong_kind_are_400() {
    let hub = FakeHub::new();
    let reply =
        post(&hub, "/v1/chat/completions", json!({"model": "embedder", "messages": [{"role": "user", "content": "Hi"}]})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.json()["error"]["message"].as_str().map(str::to_string).unwrap_or_default();
    assert!(message.contains("embedding model") && message.contains("/v1/embeddings"), "{message}");

    let reply = post(&hub, "/v1/embeddings", json!({"model": "tiny", "input": "Hi"})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let message = reply.json()["error"]["message"].as_str().map(str::to_string).unwrap_or_default();
    assert!(message.contains("language model"), "{message}");

    let reply = post(&hub, "/v1/embeddings", json!({"model": "embedder", "input": "Hi", "dimensions": 2})).await;
    assert_eq!(reply.json()["error"]["param"], "dimensions");
}

#[tokio::test]
async fn models() {
    let hub = FakeHub::new();
    let router = app(&hub, &Arc::new(LlmMetrics::new()));
    let reply = send(router.clone(), "GET", "/v1/models", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0], json!({"id": "tiny", "object": "model", "created": 1_700_000_000u64, "owned_by": "tritium"}));
    assert_eq!(body["data"].as_array().map(Vec::len), Some(3));
    let reply = send(router, "GET", "/v1/models/org/tiny", "").await;
    assert_eq!(reply.json(), json!({"id": "org/tiny", "object": "model", "created": 1_700_000_002u64, "owned_by": "tritium"}));
}

#[tokio::test]
async fn a_client_leaving_a_stream_cancels_the_sequence() {
    let hub = FakeHub::new();
    hub.script(Script::Held(token_events(&ids(&hub.llm, "Hello"), None)));
    let metrics = Arc::new(LlmMetrics::new());
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "stream": true}).to_string();
    let request = Request::post("/v1/chat/completions").body(Body::from(body)).expect("request");
    let response = app(&hub, &metrics).oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut seen = String::new();
    while !seen.contains("Hello") {
        let frame = body.frame().await.expect("a frame").expect("no error");
        seen.push_str(std::str::from_utf8(frame.data_ref().expect("data")).expect("utf-8"));
    }
    let sender = hub.held_sender();
    assert!(!sender.is_closed(), "the sequence is still running");
    drop(body);
    assert!(sender.is_closed(), "dropping the body dropped the token stream");
    let text = metrics.render(&[]);
    assert!(text.contains(r#"tritium_llm_requests_cancelled_total{model="tiny",protocol="http"} 1"#), "{text}");
}

#[tokio::test]
async fn errors_after_the_stream_started_are_events() {
    let hub = FakeHub::new();
    let mut events = token_events(&ids(&hub.llm, "Hello"), None);
    events.push(Err(GenerateError::Engine { model: "tiny".into(), message: "device lost".into() }));
    hub.script(Script::Held(events));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi", "stream": true})).await;
    assert_eq!(reply.status, StatusCode::OK);
    let events = reply.events();
    assert_eq!(events.len(), 3, "{events:?}");
    let error: Value = serde_json::from_str(&events[1]).expect("json");
    assert_eq!(error["error"]["message"], "the model 'tiny' failed: device lost");
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(events[2], "[DONE]");
}

#[tokio::test]
async fn held_streams_finish_normally_too() {
    let hub = FakeHub::new();
    let mut events = token_events(&ids(&hub.llm, "Hello"), None);
    events.push(Ok(GenerateEvent::Finished {
        reason: FinishReason::Stop,
        prompt_tokens: 2,
        completion_tokens: 1,
        cached_tokens: 0,
        queued_for: std::time::Duration::ZERO,
    }));
    hub.script(Script::Held(events));
    let reply = post(&hub, "/v1/completions", json!({"model": "tiny", "prompt": "Hi"})).await;
    assert_eq!(reply.json()["choices"][0]["text"], "Hello");
}
