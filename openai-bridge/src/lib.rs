//! The OpenAI completions bridge: how text requests reach token-level language models.
//!
//! - [`preprocess::Preprocessor`]: the model's chat template (rendered by minijinja) and tokenizer,
//!   built from the worker's [`ModelCard`](tritium_backend_api::llm::ModelCard). Tokenization happens in
//!   the frontend; workers see token ids.
//! - [`detokenize::Detokenizer`] and [`stop::StopMatcher`]: incremental text, correct across
//!   multi-byte UTF-8 and stop strings that span tokens.
//! - [`pipeline`]: a worker's token stream turned into text deltas, shared by gRPC and HTTP.
//! - [`kserve`]: the KServe v2 face of an LLM (`text_input` in, `text_output` out, decoupled).
//! - [`protocol`], [`routes`]: the OpenAI `/v1/*` HTTP API (axum) over the narrow [`hub::LlmHub`] trait.
//! - [`parsers`]: reasoning and tool calls split from a model's streamed output, per model family.
//! - [`response_store`]: the Responses API's stored conversations, bounded in count, bytes and time.
//! - [`metrics`]: Prometheus metrics per model (requests, errors, queue time, TTFT, inter-token latency, tokens).

pub mod choices;
pub mod detokenize;
pub mod error;
pub mod hub;
pub mod kserve;
pub mod metrics;
pub mod parsers;
pub mod pipeline;
pub mod preprocess;
pub mod protocol;
pub mod response_store;
pub mod routes;
pub mod sampling;
pub mod shared_store;
pub mod stop;
pub mod text_models;

#[cfg(test)]
mod proptests;

pub use error::BridgeError;
