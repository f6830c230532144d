//! What the doors (gRPC, KServe REST) add to a request's trace: the sampler's choice, made once
//! the request names its model and id, with the caller's W3C context, and Triton's receive and
//! send stamps around the core's.

use std::time::Instant;

use tritium_backend_api::request::InferenceRequest;
use tritium_backend_api::trace::{RequestTrace, TimestampKind, ns_of};

use super::Tracer;

/// Samples a request the gRPC door received at `arrived` and decoded now.
pub fn grpc_received(
    tracer: &Tracer,
    request: &mut InferenceRequest,
    headers: &http::HeaderMap,
    arrived: Instant,
) -> Option<RequestTrace> {
    received(
        tracer,
        request,
        headers,
        [(TimestampKind::GrpcWaitreadStart, arrived), (TimestampKind::GrpcWaitreadEnd, Instant::now())],
    )
}

/// Samples a request of a ModelStreamInfer call (`caller`: the call's W3C context).
pub fn grpc_stream_received(
    tracer: &Tracer,
    request: &mut InferenceRequest,
    caller: Option<tritium_backend_api::trace_context::TraceContext>,
    arrived: Instant,
) -> Option<RequestTrace> {
    if !tracer.is_on() {
        return None;
    }
    let trace = tracer.sample(&request.model_name, &request.id, caller)?;
    trace.stamp_at(TimestampKind::GrpcWaitreadStart, ns_of(arrived));
    trace.stamp(TimestampKind::GrpcWaitreadEnd);
    request.trace = Some(trace.clone());
    Some(trace)
}

/// Samples a request the HTTP door began reading at `arrived` and had whole at `read`.
pub fn http_received(
    tracer: &Tracer,
    request: &mut InferenceRequest,
    headers: &http::HeaderMap,
    arrived: Instant,
    read: Instant,
) -> Option<RequestTrace> {
    received(tracer, request, headers, [(TimestampKind::HttpRecvStart, arrived), (TimestampKind::HttpRecvEnd, read)])
}

fn received(
    tracer: &Tracer,
    request: &mut InferenceRequest,
    headers: &http::HeaderMap,
    stamps: [(TimestampKind, Instant); 2],
) -> Option<RequestTrace> {
    if !tracer.is_on() {
        return None;
    }
    let trace = tracer.sample(&request.model_name, &request.id, super::caller(headers))?;
    if let Some(version) = request.model_version {
        trace.set_model_version(version);
    }
    for (kind, at) in stamps {
        trace.stamp_at(kind, ns_of(at));
    }
    request.trace = Some(trace.clone());
    Some(trace)
}

/// Held while the door encodes and sends the response: stamps the send's start when made and
/// its end when dropped.
pub struct Sending {
    trace: Option<RequestTrace>,
    end: TimestampKind,
}

impl Sending {
    pub fn grpc(trace: Option<RequestTrace>) -> Sending {
        Sending::start(trace, TimestampKind::GrpcSendStart, TimestampKind::GrpcSendEnd)
    }

    pub fn http(trace: Option<RequestTrace>) -> Sending {
        Sending::start(trace, TimestampKind::HttpSendStart, TimestampKind::HttpSendEnd)
    }

    fn start(trace: Option<RequestTrace>, start: TimestampKind, end: TimestampKind) -> Sending {
        if let Some(trace) = &trace {
            trace.stamp(TimestampKind::InferResponseComplete);
            trace.stamp(start);
        }
        Sending { trace, end }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let Some(trace) = &self.trace {
            trace.stamp(self.end);
        }
    }
}
