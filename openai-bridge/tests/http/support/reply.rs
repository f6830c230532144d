//! Replies of the routes driven without sockets (`tower::ServiceExt::oneshot`).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tritium_openai_bridge::metrics::LlmMetrics;

use super::{FakeHub, app};

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The SSE frames' payloads, checking the framing on the way.
    pub fn events(&self) -> Vec<String> {
        assert_eq!(self.content_type, "text/event-stream");
        assert!(self.body.ends_with("data: [DONE]\n\n"), "{:?}", self.body);
        let events: Vec<String> = self
            .body
            .split_terminator("\n\n")
            .map(|frame| frame.strip_prefix("data: ").unwrap_or_else(|| panic!("bad frame {frame:?}")).to_string())
            .collect();
        assert_eq!(events.iter().filter(|e| *e == "[DONE]").count(), 1);
        events
    }

    /// The named events of a Responses or Messages stream: (event, data), checking that each
    /// frame's `event:` line and its data's `type` agree and that no `[DONE]` comes.
    pub fn named_events(&self) -> Vec<(String, Value)> {
        assert_eq!(self.content_type, "text/event-stream");
        assert!(!self.body.contains("[DONE]"), "{:?}", self.body);
        self.body
            .split_terminator("\n\n")
            .map(|frame| {
                let (event, data) = frame.split_once('\n').unwrap_or_else(|| panic!("bad frame {frame:?}"));
                let event = event.strip_prefix("event: ").unwrap_or_else(|| panic!("no event line in {frame:?}"));
                let data = data.strip_prefix("data: ").unwrap_or_else(|| panic!("no data line in {frame:?}"));
                let data: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
                assert_eq!(data["type"], event, "{frame}");
                (event.to_string(), data)
            })
            .collect()
    }

    /// The JSON chunks of an SSE reply (without `[DONE]`).
    pub fn chunks(&self) -> Vec<Value> {
        let events = self.events();
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"))).collect()
    }
}

pub async fn send(router: axum::Router, method: &str, uri: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, content_type, body: String::from_utf8(bytes.to_vec()).expect("utf-8") }
}

pub async fn post(hub: &Arc<FakeHub>, uri: &str, body: Value) -> Reply {
    send(app(hub, &Arc::new(LlmMetrics::new())), "POST", uri, &body.to_string()).await
}
