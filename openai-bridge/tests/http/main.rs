//! The bridge's tests as one binary (each test binary links the whole bridge): the `/v1` routes
//! and the text pipeline, over a fake hub from `support`.

mod openai_routes;
mod pipeline;
mod support;
