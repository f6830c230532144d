//! `nvext` and structured output on the `/v1` routes, over the fake hub: what reaches the
//! engine (constraint, prompt, worker) and what comes back (forced calls, annotations, timing).

#![allow(clippy::unwrap_used)]

use crate::support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use tritium_backend_api::llm::{Constraint, FinishReason};
use tritium_openai_bridge::parsers::OutputFormats;

use support::{FakeHub, Script, ids, post};

fn hub() -> std::sync::Arc<FakeHub> {
    FakeHub::with_formats(OutputFormats::default())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn response_formats_and_guided_fields_reach_the_engine_as_constraints() {
    let hub = hub();
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let cases = [
        (json!({"response_format": {"type": "json_object"}}), Constraint::JsonObject),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
            Constraint::JsonSchema(schema.to_string()),
        ),
        (json!({"nvext": {"guided_regex": "[0-9]+"}}), Constraint::Regex("[0-9]+".into())),
        (json!({"nvext": {"guided_choice": ["yes", "no"]}}), Constraint::Choice(vec!["yes".into(), "no".into()])),
        (json!({"nvext": {"guided_grammar": "start: \"x\""}}), Constraint::Lark("start: \"x\"".into())),
    ];
    for (extra, constraint) in cases {
        let mut body = json!({"model": "tiny", "messages": user("x"), "max_tokens": 4});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let reply = post(&hub, "/v1/chat/completions", body.clone()).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.body);
        assert_eq!(hub.last_request().constraint, Some(constraint), "{body}");
    }
    let body = json!({"model": "tiny", "input": "x", "text": {"format": {"type": "json_schema", "name": "x", "schema": schema}}});
    assert_eq!(post(&hub, "/v1/responses", body).await.status, StatusCode::OK);
    assert_eq!(hub.last_request().constraint, Some(Constraint::JsonSchema(schema.to_string())));
    let body = json!({"model": "tiny", "prompt": "x", "nvext": {"guided_choice": ["a"]}});
    assert_eq!(post(&hub, "/v1/completions", body).await.status, StatusCode::OK);
    assert_eq!(hub.last_request().constraint, Some(Constraint::Choice(vec!["a".into()])));

    let both = json!({"model": "tiny", "messages": user("x"), "response_format": {"type": "json_object"}, "nvext": {"guided_regex": "a"}});
    let reply = post(&hub, "/v1/chat/completions", both).await;
    assert_eq!((reply.status, reply.json()["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("nvext")));
}

#[tokio::test]
async fn a_named_tool_choice_makes_the_grammar_write_the_call() {
    let hub = hub();
    hub.script(Script::Tokens(ids(&hub.llm, r#"{"city": "Paris"}"#), FinishReason::Stop));
    let tool = json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}});
    let body = json!({"model": "tiny", "messages": user("Weather?"), "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let choice = &reply.json()["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(choice["message"]["tool_calls"][0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let Some(Constraint::JsonSchema(schema)) = hub.last_request().constraint else { panic!("a schema constraint") };
    assert_eq!(serde_json::from_str::<Value>(&schema).unwrap()["properties"]["city"]["type"], "string");

    // "required": an array of calls, any of the tools.
    hub.script(Script::Tokens(ids(&hub.llm, r#"[{"name": "get_weather", "arguments": {"city": "Oslo"}}]"#), FinishReason::Stop));
    let body = json!({"model": "tiny", "messages": user("Weather?"), "tools": [tool], "tool_choice": "required",
        "response_format": {"type": "text"}});
    let message = post(&hub, "/v1/chat/completions", body).await.json()["choices"][0]["message"].clone();
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], r#"{"city":"Oslo"}"#);
    let conflict = json!({"model": "tiny", "messages": user("x"), "tools": [tool], "tool_choice": "required",
        "response_format": {"type": "json_object"}});
    assert_eq!(post(&hub, "/v1/chat/completions", conflict).await.json()["error"]["param"], "tool_choice");
}

#[tokio::test]
async fn nvext_shapes_the_prompt_the_sampling_and_the_worker() {
    let hub = hub();
    let body = json!({"model": "tiny", "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        "temperature": 1.5, "nvext": {"use_raw_prompt": true, "greed_sampling": true, "top_k": 3, "backend_instance_id": 42}});
    assert_eq!(post(&hub, "/v1/chat/completions", body).await.status, StatusCode::OK);
    let request = hub.last_request();
    assert_eq!(hub.last_prompt(), "S\nHi");
    assert_eq!((request.sampling.temperature, request.sampling.top_k), (0.0, 3));
    assert_eq!(hub.workers.lock().last().map(String::as_str), Some("42"));

    let body = json!({"model": "tiny", "messages": user("ignored"), "nvext": {"token_data": [72, 105]}});
    assert_eq!(post(&hub, "/v1/chat/completions", body).await.status, StatusCode::OK);
    assert_eq!(hub.last_request().prompt, vec![72, 105]);
    let body = json!({"model": "tiny", "prompt": "ignored", "nvext": {"token_data": [99999]}});
    assert_eq!(post(&hub, "/v1/completions", body).await.json()["error"]["param"], "nvext.token_data");
    // A prompt longer than the context (4096) is refused before its ids are decoded for annotations.
    let long = vec![72; 4096];
    let body =
        json!({"model": "tiny", "messages": user("x"), "nvext": {"token_data": long, "annotations": ["formatted_prompt"]}});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("context length is 4096"), "{}", reply.body);

    for bad in [json!({"greedy": true}), json!({"annotations": ["all"]}), json!({"extra_fields": ["gpu"]})] {
        let reply = post(&hub, "/v1/chat/completions", json!({"model": "tiny", "messages": user("x"), "nvext": bad})).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(reply.json()["error"]["param"].as_str().unwrap().starts_with("nvext"), "{bad}: {}", reply.body);
    }
}

#[tokio::test]
async fn annotations_and_extra_fields_come_back() {
    let hub = hub();
    hub.script(Script::Tokens(ids(&hub.llm, "Hello world"), FinishReason::Stop));
    let body = json!({"model": "tiny", "messages": user("Hi"), "stream": true,
        "nvext": {"annotations": ["formatted_prompt", "token_ids"], "extra_fields": ["timing", "worker_id"], "backend_instance_id": "w1"}});
    let reply = post(&hub, "/v1/chat/completions", body).await;
    let frames: Vec<&str> = reply.body.split_terminator("\n\n").collect();
    assert_eq!(
        frames[0],
        r#"event: formatted_prompt
data: "<|user|>Hi<|end|><|assistant|>""#
    );
    let ids_frame = frames[1].strip_prefix("event: token_ids\ndata: ").unwrap();
    assert_eq!(serde_json::from_str::<Vec<u32>>(ids_frame).unwrap(), ids(&hub.llm, "<|user|>Hi<|end|><|assistant|>"));
    let last: Value = serde_json::from_str(frames[frames.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(last["nvext"]["worker_id"]["decode_worker_id"], "w1");
    assert_eq!(last["nvext"]["worker_id"]["prefill_worker_id"], "w1", "one worker did both: named twice");
    assert!(last["nvext"]["timing"]["ttft_ms"].as_f64().unwrap() >= 0.0, "{last}");

    hub.script(Script::Tokens(ids(&hub.llm, "Hello world"), FinishReason::Stop));
    let body = json!({"model": "tiny", "prompt": "Hi", "nvext": {"extra_fields": ["timing"]}});
    let reply = post(&hub, "/v1/completions", body).await.json();
    assert!(reply["nvext"]["timing"]["itl_ms"].as_f64().is_some(), "{reply}");
    assert!(reply["nvext"].get("worker_id").is_none());
}
