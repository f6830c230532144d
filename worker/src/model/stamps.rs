//! Triton's core timestamps on a sampled request's trace, from the instants the statistics are
//! taken from, so the trace and the statistics tell one story: `REQUEST_START` when the core
//! took the request (validation began), `QUEUE_START` when it was handed to its scheduler,
//! `COMPUTE_START` .. `COMPUTE_END` around the backend's execution of its batch (its input and
//! output phases as the batch measured them), `REQUEST_END` when its response was complete.

use std::time::{Duration, Instant};

use tritium_backend_api::trace::{RequestTrace, TensorActivity, TimestampKind, now_ns, ns_of};
use tritium_tensor::Tensor;

use super::valid::Timing;
use crate::dynamic_batcher::Execution;

/// The request entered the core and its scheduler's queue (with its inputs at level `TENSORS`).
pub(super) fn queued(trace: &RequestTrace, version: i64, timing: &Timing, inputs: &[Tensor]) {
    trace.set_model_version(version);
    trace.stamp_at(TimestampKind::RequestStart, ns_of(timing.started));
    trace.stamp_at(TimestampKind::QueueStart, ns_of(timing.validated));
    if trace.wants_tensors() {
        for input in inputs {
            trace.tensor(TensorActivity::QueueInput, input);
        }
    }
}

/// The backend ran the request's batch: `batched` is how long it waited in the batcher's queue,
/// `execution` the batch's phases when a batcher measured them, `inferred` when its outputs came.
pub(super) fn computed(
    trace: &RequestTrace,
    timing: &Timing,
    batched: Duration,
    execution: Option<&Execution>,
    inferred: Instant,
) {
    let queued = ns_of(timing.validated);
    let done = ns_of(inferred);
    let (start, input_end, output_start) = match execution {
        Some(e) => {
            // The batch the dynamic or sequence batcher ran this request in.
            trace.set_attribute("tritium.batch_size", i64::try_from(e.batch_size).unwrap_or(i64::MAX));
            let start = done.saturating_sub(nanos(e.compute_input + e.compute_infer + e.compute_output)).max(queued);
            let input_end = (start + nanos(e.compute_input)).min(done);
            (start, input_end, (input_end + nanos(e.compute_infer)).min(done))
        }
        None => {
            let start = (queued + nanos(batched)).min(done);
            (start, start, done)
        }
    };
    trace.stamp_at(TimestampKind::ComputeStart, start);
    trace.stamp_at(TimestampKind::ComputeInputEnd, input_end);
    trace.stamp_at(TimestampKind::ComputeOutputStart, output_start);
}

/// The outputs are the response's: `COMPUTE_END` after a compute, and `REQUEST_END` (with the
/// outputs at level `TENSORS`).
pub(super) fn answered(trace: &RequestTrace, outputs: &[Tensor]) {
    if trace.wants_tensors() {
        for output in outputs {
            trace.tensor(TensorActivity::BackendOutput, output);
        }
    }
    let now = now_ns();
    if trace.has_stamp(TimestampKind::ComputeStart) {
        trace.stamp_at(TimestampKind::ComputeEnd, now);
    }
    trace.stamp_at(TimestampKind::RequestEnd, now);
}

/// The request failed: its end, so the trace still closes.
pub(super) fn failed(trace: &RequestTrace) {
    trace.set_attribute("error", true);
    trace.stamp(TimestampKind::RequestEnd);
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX / 4)
}
