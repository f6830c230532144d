//! The hop to a worker process: a `CLIENT` span in the frontend's trace, whose W3C context rides
//! in the call's gRPC metadata so that the worker's own trace of the request joins the same
//! trace (the worker's root span is the hop's child).

use tritium_backend_api::trace::{RequestTrace, TimestampKind, current};
use tritium_backend_api::trace_context::{TRACEPARENT, TRACESTATE};

use super::otlp_spans::SPAN_KIND_ATTRIBUTE;

/// The attribute that marks a node as the hop to a worker, not a request of its own (Triton's
/// trace file leaves such nodes out).
pub const HOP_ATTRIBUTE: &str = "tritium.worker";

/// One call to a worker, traced when the request it carries is: ends when dropped.
pub struct Hop(Option<RequestTrace>);

impl Hop {
    /// A hop to `worker` for `request`'s trace (or the task's current one, for a generation).
    pub fn start(request: Option<&RequestTrace>, worker: &str) -> Hop {
        let parent = request.cloned().or_else(current);
        Hop(parent.map(|parent| {
            let hop = parent.child(parent.model_name(), None);
            hop.set_attribute(SPAN_KIND_ATTRIBUTE, "client");
            hop.set_attribute(HOP_ATTRIBUTE, worker.to_owned());
            hop.stamp(TimestampKind::RequestStart);
            hop
        }))
    }

    /// Notes what the worker answered about the call (the prefill worker it used).
    pub fn set_attribute(&self, key: &'static str, value: String) {
        if let Some(hop) = &self.0 {
            hop.set_attribute(key, value);
        }
    }

    /// `message` as a call whose metadata carries the hop's context.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(hop) = &self.0 {
            let context = hop.context();
            if let Ok(value) = context.traceparent().parse() {
                request.metadata_mut().insert(TRACEPARENT, value);
            }
            if let Some(value) = context.tracestate().and_then(|s| s.parse().ok()) {
                request.metadata_mut().insert(TRACESTATE, value);
            }
        }
        request
    }
}

impl Drop for Hop {
    fn drop(&mut self) {
        if let Some(hop) = &self.0 {
            hop.stamp(TimestampKind::RequestEnd);
        }
    }
}

/// Whether `node` is a hop (not a request): Triton's trace file leaves it out.
pub fn is_hop(attributes: &[(std::borrow::Cow<'static, str>, tritium_backend_api::trace::AttrValue)]) -> bool {
    attributes.iter().any(|(k, _)| k == HOP_ATTRIBUTE)
}
