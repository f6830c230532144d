//! ModelStreamInfer: requests on one stream run concurrently; plain models answer in request
//! order, decoupled ones interleave as their responses are ready. Errors go in-band with the
//! request id and the stream stays open. With the `triton_grpc_error: true` header, as in Triton
//! 2.51, a request's own errors (unknown model or version, malformed or invalid inputs) still go
//! in-band, while the first error of a request that was running (its model failed, its outputs
//! could not be written) ends the call with its real status.

use tritium_trace::door::Sending;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tritium_backend_api::trace_context::TraceContext;

use futures::stream::{FuturesOrdered, SelectAll};
use futures::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, Streaming};
use tritium_proto::inference::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use tritium_worker::{InferOutcome, StreamItem};

use super::convert::{decode_for_model, empty_final, encode_response};
use crate::state::ServerState;

use crate::error::ServerError;

/// Requests of one stream in flight at once; beyond it the stream stops reading, and HTTP/2
/// flow control pushes back on the client.
const MAX_IN_FLIGHT: usize = 1024;

type Reply = Result<ModelStreamInferResponse, Status>;
type ReplyStream = Pin<Box<dyn Stream<Item = Reply> + Send>>;

/// What one request contributes to the stream.
enum Answer {
    Now(Reply),
    Later(ReplyStream),
}

/// Labels of a request, kept to mark its responses and errors.
#[derive(Clone)]
struct Label {
    model: String,
    version: String,
    id: String,
}

fn in_band(label: &Label, error: ServerError, grpc_errors: bool) -> Reply {
    in_band_marked(label, error, grpc_errors, false)
}

/// An error the model's run ended with: as Triton sends it, it ends the request, so it carries
/// `triton_final_response: true` (an error in the request itself, found before it ran, carries no
/// parameters).
fn in_band_final(label: &Label, error: ServerError, grpc_errors: bool) -> Reply {
    in_band_marked(label, error, grpc_errors, true)
}

fn in_band_marked(label: &Label, error: ServerError, grpc_errors: bool, last: bool) -> Reply {
    if grpc_errors {
        return Err(error.into());
    }
    let mut response = ModelInferResponse {
        model_name: label.model.clone(),
        model_version: label.version.clone(),
        id: label.id.clone(),
        ..Default::default()
    };
    if last {
        response.parameters.insert("triton_final_response".to_string(), super::convert::bool_param(true));
    }
    Ok(ModelStreamInferResponse { error_message: error.to_string(), infer_response: Some(response) })
}

fn ok(response: ModelInferResponse) -> Reply {
    Ok(ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) })
}

async fn answer(
    state: Arc<ServerState>,
    request: ModelInferRequest,
    grpc_errors: bool,
    caller: Option<TraceContext>,
    key: Option<tritium_backend_api::trace::ApiKeyName>,
) -> Answer {
    let arrived = Instant::now();
    let label = Label { model: request.model_name.clone(), version: request.model_version.clone(), id: request.id.clone() };
    // The request's own errors: in-band in both modes.
    let _in_use = match crate::dispatch::load_on_demand(&state, &request.model_name).await {
        Ok(in_use) => in_use,
        Err(e) => return Answer::Now(in_band(&label, e, false)),
    };
    let admitted = decode_for_model(request, &state.shm, &state.repository, None, arrived).and_then(|mut decoded| {
        let trace = tritium_trace::door::grpc_stream_received(&state.tracer, &mut decoded.request, caller, arrived);
        if let Some(trace) = &trace {
            trace.name_api_key(key.as_ref());
        }
        let admitted = crate::dispatch::admit(&state, decoded.request, decoded.model)?;
        Ok((admitted, decoded.shm, decoded.enable_empty_final, trace))
    });
    let (admitted, regions, empty_final_wanted, mut trace) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => return Answer::Now(in_band(&label, e, false)),
    };
    let outcome = crate::dispatch::streamed(&state, admitted).await;
    match outcome {
        Err(e) => Answer::Now(in_band_final(&label, e, grpc_errors)),
        Ok(InferOutcome::Single(response)) => {
            let _sent = Sending::grpc(trace);
            Answer::Now(
                encode_response(response, &regions, &state.shm, Some(true)).map_or_else(|e| in_band(&label, e, grpc_errors), ok),
            )
        }
        Ok(InferOutcome::Stream(responses)) => {
            let replies = responses.filter_map(move |item| {
                let reply = match item {
                    // A decoupled backend's responses are never final (Complete ends them); a
                    // language model's last delta is.
                    StreamItem::Response(response) => {
                        let last = response.is_final;
                        let _sent = last.then(|| Sending::grpc(trace.take()));
                        Some(
                            encode_response(response, &regions, &state.shm, Some(last))
                                .map_or_else(|e| in_band(&label, e, grpc_errors), ok),
                        )
                    }
                    StreamItem::Complete => {
                        let _sent = Sending::grpc(trace.take());
                        empty_final_wanted.then(|| ok(empty_final(&label.model, &label.id)))
                    }
                    StreamItem::Error(e) => Some(in_band_final(&label, e.into(), grpc_errors)),
                };
                std::future::ready(reply)
            });
            Answer::Later(Box::pin(replies))
        }
    }
}

type AnswerFuture = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// One ModelStreamInfer call, served as hyper polls for its next response: reading requests,
/// running them and yielding replies all happen in the call's own task, with no task or channel
/// between. When the client stops reading responses, hyper stops polling, so requests stop being
/// read too and HTTP/2 flow control pushes back on the client.
pub struct StreamCall {
    state: Arc<ServerState>,
    incoming: Streaming<ModelInferRequest>,
    grpc_errors: bool,
    /// The caller's W3C context, from the call's metadata: each sampled request continues it.
    caller: Option<TraceContext>,
    /// The call's API key: its name goes on traces, and other models than its list (when it has
    /// one) are refused in-band.
    scope: Option<crate::api_keys::KeyScope>,
    /// Plain requests, answered in the order they came.
    in_order: FuturesOrdered<AnswerFuture>,
    /// Responses of decoupled requests, as they are ready.
    interleaved: SelectAll<ReplyStream>,
    reading: bool,
    /// An error ended the call (`triton_grpc_error` mode, or a broken request stream).
    ended: bool,
    stopping: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `stopping` was last polled with.
    stop_waker: Option<Waker>,
    /// The server's hard stop, through a token of the call's own (no lock every call shares).
    hard_stop: CancellationToken,
    hard_stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `hard_stop` was last polled with.
    hard_stop_waker: Option<Waker>,
    interleaved_first: bool,
}

/// The status a call still running when the server's grace period ends is ended with.
pub fn shutting_down() -> Status {
    ServerError::Bridge(tritium_openai_bridge::BridgeError::ShuttingDown).into()
}

/// Serves one ModelStreamInfer call.
pub fn serve(
    state: Arc<ServerState>,
    incoming: Streaming<ModelInferRequest>,
    grpc_errors: bool,
    caller: Option<TraceContext>,
    scope: Option<crate::api_keys::KeyScope>,
) -> StreamCall {
    let stopping = Box::pin(state.stopping.clone().cancelled_owned());
    let hard_stop = state.hard_stop.child_token();
    StreamCall {
        state,
        incoming,
        grpc_errors,
        caller,
        scope,
        in_order: FuturesOrdered::new(),
        interleaved: SelectAll::new(),
        reading: true,
        ended: false,
        stopping,
        stop_waker: None,
        hard_stopped: Box::pin(hard_stop.clone().cancelled_owned()),
        hard_stop,
        hard_stop_waker: None,
        interleaved_first: false,
    }
}

impl StreamCall {
    fn in_flight(&self) -> usize {
        self.in_order.len() + self.interleaved.len()
    }

    /// Whether the server's hard stop came, watching for it with `cx`'s waker.
    fn hard_stopped(&mut self, cx: &mut Context<'_>) -> bool {
        // As for `stopping`: the future is polled only when the waker changes.
        if self.hard_stop_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return self.hard_stop.is_cancelled();
        }
        self.hard_stop_waker = Some(cx.waker().clone());
        self.hard_stopped.as_mut().poll(cx).is_ready()
    }

    fn end_with(&mut self, reply: Reply) -> Poll<Option<Reply>> {
        // The first error ends the call; dropping the pending work cancels it.
        self.ended |= reply.is_err();
        Poll::Ready(Some(reply))
    }
}

impl Stream for StreamCall {
    type Item = Reply;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        // On shutdown, stop taking requests, finish what is in flight, and end. A busy call is
        // polled again as its work completes, so only an idle one waits on the token (polling
        // that future on every call costs more than the check).
        if this.reading && this.state.stopping.is_cancelled() {
            this.reading = false;
        }
        // At the end of the grace period, requests still running end the call with UNAVAILABLE
        // (dropping them cancels their work).
        if this.in_flight() > 0 && this.hard_stopped(cx) {
            return this.end_with(Err(shutting_down()));
        }
        // Every other poll, decoupled responses go first, so that a flood of requests answered
        // at once cannot hold them back.
        this.interleaved_first = !this.interleaved_first;
        if this.interleaved_first
            && !this.interleaved.is_empty()
            && let Poll::Ready(Some(reply)) = this.interleaved.poll_next_unpin(cx)
        {
            return this.end_with(reply);
        }
        while this.reading && this.in_flight() < MAX_IN_FLIGHT {
            match this.incoming.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(request))) => {
                    let mut answer: AnswerFuture = match crate::api_keys::check_model(this.scope.as_ref(), &request.model_name) {
                        // In order with the requests before it, like any request's own error.
                        Err(reason) => {
                            let label = Label { model: request.model_name, version: request.model_version, id: request.id };
                            let refusal = in_band(&label, ServerError::PermissionDenied { reason }, false);
                            Box::pin(std::future::ready(Answer::Now(refusal)))
                        }
                        Ok(()) => {
                            let key = this.scope.as_ref().map(|scope| tritium_backend_api::trace::ApiKeyName(scope.name.as_str().into()));
                            Box::pin(answer(Arc::clone(&this.state), request, this.grpc_errors, this.caller.clone(), key))
                        }
                    };
                    // Most models answer without waiting: with nothing ahead of it in order, such
                    // an answer goes out at once instead of through the ordered queue.
                    if this.in_order.is_empty() {
                        match answer.as_mut().poll(cx) {
                            Poll::Ready(Answer::Now(reply)) => return this.end_with(reply),
                            Poll::Ready(Answer::Later(stream)) => this.interleaved.push(stream),
                            Poll::Pending => this.in_order.push_back(answer),
                        }
                    } else {
                        this.in_order.push_back(answer);
                    }
                }
                Poll::Ready(None) => this.reading = false,
                // The client reset the stream or sent something undecodable.
                Poll::Ready(Some(Err(status))) => return this.end_with(Err(status)),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(answer)) = this.in_order.poll_next_unpin(cx) {
            match answer {
                Answer::Now(reply) => return this.end_with(reply),
                Answer::Later(stream) => this.interleaved.push(stream),
            }
        }
        // A decoupled request that just ended is dropped by SelectAll, which then goes on with
        // the others; None means none is left.
        if !this.interleaved.is_empty()
            && let Poll::Ready(Some(reply)) = this.interleaved.poll_next_unpin(cx)
        {
            return this.end_with(reply);
        }
        if this.in_flight() == 0 {
            if !this.reading {
                return Poll::Ready(None);
            }
            // hyper polls a body from its stream's task, so the waker is nearly always the one
            // the token already holds.
            let registered = this.stop_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
            if !registered {
                if this.stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                this.stop_waker = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

/// Whether the client asked for real status codes on stream errors.
pub fn wants_grpc_errors(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.get("triton_grpc_error").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}
