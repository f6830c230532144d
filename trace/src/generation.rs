//! A worker process's trace of one generation it runs for a frontend: the root of the worker's
//! part of the trace (a `SERVER` span whose parent is the frontend's hop), with the OpenTelemetry
//! GenAI attributes, the prefix-cache hit, the first token as an event and the usage when done.

use tritium_backend_api::llm::{GenerateError, GenerateEvent, GenerateRequest};
use tritium_backend_api::trace::{RequestTrace, TimestampKind};

use super::Tracer;
use super::otlp_spans::SPAN_KIND_ATTRIBUTE;

/// Starts the worker's trace of `request` to `model` when the frontend traced it (or this
/// worker's own sampler picks it).
pub fn start(tracer: &Tracer, model: &str, request: &GenerateRequest, headers: &http::HeaderMap) -> Option<RequestTrace> {
    if !tracer.is_on() {
        return None;
    }
    let trace = tracer.sample(model, "", super::caller(headers))?;
    trace.set_attribute(SPAN_KIND_ATTRIBUTE, "server");
    trace.stamp(TimestampKind::RequestStart);
    trace.set_attribute("gen_ai.operation.name", "text_completion");
    trace.set_attribute("gen_ai.request.model", model.to_owned());
    trace.set_attribute("gen_ai.usage.input_tokens", request.prompt.len());
    if let Some(max) = request.stop.max_tokens {
        trace.set_attribute("gen_ai.request.max_tokens", max);
    }
    trace.set_attribute("gen_ai.request.temperature", f64::from(request.sampling.temperature));
    Some(trace)
}

/// Starts the worker's trace of a call that is not a generation (`operation`: `embeddings`, or
/// `prefill` for another worker's generation) when the caller traced it (or this worker's own
/// sampler picks it): a `SERVER` span with `input_tokens`, ended when the returned value drops.
pub fn start_call(
    tracer: &Tracer,
    model: &str,
    operation: &'static str,
    input_tokens: usize,
    headers: &http::HeaderMap,
) -> GenerationTrace {
    if !tracer.is_on() {
        return GenerationTrace::new(None);
    }
    let trace = tracer.sample(model, "", super::caller(headers));
    if let Some(trace) = &trace {
        trace.set_attribute(SPAN_KIND_ATTRIBUTE, "server");
        trace.stamp(TimestampKind::RequestStart);
        trace.set_attribute("gen_ai.operation.name", operation);
        trace.set_attribute("gen_ai.request.model", model.to_owned());
        trace.set_attribute("gen_ai.usage.input_tokens", input_tokens);
    }
    GenerationTrace::new(trace)
}

/// Follows a generation's events onto its trace; ends the trace when dropped.
pub struct GenerationTrace {
    trace: Option<RequestTrace>,
    tokens: u32,
}

impl GenerationTrace {
    pub fn new(trace: Option<RequestTrace>) -> GenerationTrace {
        GenerationTrace { trace, tokens: 0 }
    }

    pub fn saw(&mut self, event: &Result<GenerateEvent, GenerateError>) {
        let Some(trace) = &self.trace else { return };
        match event {
            Ok(GenerateEvent::Token(token)) => {
                if self.tokens == 0 {
                    trace.event("first_token", Vec::new());
                }
                if let Some(cached) = token.prompt_cached {
                    trace.set_attribute("tritium.prefix_cache.hit_tokens", cached);
                }
                self.tokens = self.tokens.saturating_add(1);
            }
            Ok(GenerateEvent::Finished { reason, completion_tokens, cached_tokens, .. }) => {
                trace.set_attribute("gen_ai.response.finish_reasons", reason.as_str());
                trace.set_attribute("gen_ai.usage.output_tokens", *completion_tokens);
                trace.set_attribute("tritium.prefix_cache.hit_tokens", *cached_tokens);
            }
            Ok(GenerateEvent::PromptLogprobs(_)) => {}
            Err(e) => trace.set_attribute("error.type", e.to_string()),
        }
    }
}

impl GenerationTrace {
    /// The trace, for calls made on its behalf (a KV pull from a prefill worker).
    pub fn trace(&self) -> Option<&RequestTrace> {
        self.trace.as_ref()
    }

    /// Notes that the call failed, and why.
    pub fn failed(&self, why: String) {
        if let Some(trace) = &self.trace {
            trace.set_attribute("error.type", why);
        }
    }
}

impl Drop for GenerationTrace {
    fn drop(&mut self) {
        if let Some(trace) = &self.trace {
            trace.stamp(TimestampKind::RequestEnd);
        }
    }
}
