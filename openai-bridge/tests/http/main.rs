//! The bridge's tests as one binary (each test binary links the whole bridge): the `/v1` routes
//! (chat and completions; responses, messages and tool calls), and the text pipeline, over a fake hub from `support`.

mod agent_routes;
mod nvext_routes;
mod openai_routes;
mod pipeline;
mod support;
