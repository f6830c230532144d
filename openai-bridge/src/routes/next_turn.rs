//! Dynamo's `nvext.agent_hints.speculative_prefill` on chat completions: once a turn is answered,
//! the next turn's prompt will start with the conversation so far and this answer, so that prefix
//! is rendered, tokenized and computed now (one token generated and dropped, as the least urgent
//! request), and the next turn finds it in the prefix cache.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value};
use tritium_backend_api::llm::{GenerateRequest, Priority, SamplingOptions, StopOptions};

use crate::hub::LlmHub;
use crate::preprocess::Preprocessor;
use crate::protocol::ChatMessage;

/// What the next turn's prefix is made of, kept until the answer is known.
pub(super) struct NextTurn {
    pub hub: Arc<dyn LlmHub>,
    pub pre: Arc<Preprocessor>,
    pub model: String,
    /// The worker the turn ran on, when the request named one.
    pub worker: Option<String>,
    pub messages: Vec<Value>,
    pub extra: Option<Map<String, Value>>,
}

/// The assistant message being streamed, put together from its deltas.
#[derive(Debug, Default)]
pub(super) struct StreamedAnswer {
    pub content: String,
    pub reasoning: String,
    pub tool_calls: Vec<crate::protocol::ChatToolCall>,
}

impl StreamedAnswer {
    pub fn message(self) -> ChatMessage {
        let content = match (self.content.is_empty(), self.tool_calls.is_empty()) {
            (true, false) => None,
            _ => Some(self.content),
        };
        let tool_calls = self.tool_calls.into_iter().map(|call| crate::protocol::ChatToolCall { index: None, ..call }).collect();
        ChatMessage {
            role: "assistant",
            content,
            reasoning_content: (!self.reasoning.is_empty()).then_some(self.reasoning),
            tool_calls,
        }
    }
}

impl NextTurn {
    /// Prefills the conversation followed by `answer` in the background; failures are logged
    /// (nothing waits on it).
    pub fn prefill(self, answer: &ChatMessage) {
        let answer = match serde_json::to_value(answer) {
            Ok(answer) => answer,
            Err(e) => return tracing::debug!("speculative prefill: the answer does not serialize: {e}"),
        };
        tokio::spawn(async move {
            if let Err(e) = self.run(answer).await {
                tracing::debug!(model = %self.model, "speculative prefill: {e}");
            }
        });
    }

    async fn run(&self, answer: Value) -> Result<(), crate::BridgeError> {
        let mut messages = self.messages.clone();
        messages.push(answer);
        let text = self.pre.render_chat_bounded(&messages, false, self.extra.as_ref()).await?;
        let prompt = self.pre.encode_off_runtime(text, false).await?;
        let request = GenerateRequest {
            prompt,
            sampling: SamplingOptions { temperature: 0.0, ..SamplingOptions::default() },
            stop: StopOptions { max_tokens: Some(1), ignore_eos: true, ..StopOptions::default() },
            priority: Priority { tier: 0, level: i32::MAX },
            ..GenerateRequest::default()
        };
        let mut stream = match &self.worker {
            Some(worker) => self.hub.generate_on(&self.model, worker, request).await?,
            None => self.hub.generate(&self.model, request).await?,
        };
        while let Some(event) = stream.next().await {
            event.map_err(crate::BridgeError::from)?;
        }
        tracing::debug!(model = %self.model, "speculative prefill done");
        Ok(())
    }
}
