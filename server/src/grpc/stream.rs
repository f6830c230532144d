//! ModelStreamInfer: requests on one stream run concurrently; plain models answer in request
//! order, decoupled ones interleave as their responses are ready. Errors go in-band with the
//! request id and the stream stays open, unless the client opened it with the
//! `triton_grpc_error: true` header: then the first error ends the call with its real status.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesOrdered, SelectAll};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tritium_proto::inference::{ModelInferRequest, ModelInferResponse, ModelStreamInferResponse};
use tritium_worker::{InferOutcome, StreamItem};

use super::convert::{decode_request, empty_final, encode_response};
use super::service::GrpcState;
use tritium_worker::WorkerClient;

use crate::error::ServerError;

/// Responses written ahead of a slow reader before request handling waits.
const OUTBOX: usize = 64;

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
    if grpc_errors {
        return Err(error.into());
    }
    Ok(ModelStreamInferResponse {
        error_message: error.to_string(),
        infer_response: Some(ModelInferResponse {
            model_name: label.model.clone(),
            model_version: label.version.clone(),
            id: label.id.clone(),
            ..Default::default()
        }),
    })
}

fn ok(response: ModelInferResponse) -> Reply {
    Ok(ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) })
}

async fn answer(state: Arc<GrpcState>, request: ModelInferRequest, grpc_errors: bool) -> Answer {
    let arrived = Instant::now();
    let label = Label { model: request.model_name.clone(), version: request.model_version.clone(), id: request.id.clone() };
    let decoded = match decode_request(request, &state.shm, arrived) {
        Ok(decoded) => decoded,
        Err(e) => return Answer::Now(in_band(&label, e, grpc_errors)),
    };
    let regions = decoded.output_regions;
    let empty_final_wanted = decoded.enable_empty_final;
    let outcome = if state.llm.is_language_model(&decoded.request.model_name, decoded.request.model_version) {
        let hint = crate::routing::hint_of(&decoded.request.parameters);
        crate::routing::WORKER_HINT.scope(hint, state.llm.infer_kserve(decoded.request, true)).await
    } else {
        state.router.infer_stream(decoded.request).await.map_err(ServerError::from)
    };
    match outcome {
        Err(e) => Answer::Now(in_band(&label, e, grpc_errors)),
        Ok(InferOutcome::Single(response)) => Answer::Now(
            encode_response(response, &regions, &state.shm, Some(true))
                .map_or_else(|e| in_band(&label, e, grpc_errors), ok),
        ),
        Ok(InferOutcome::Stream(responses)) => {
            let replies = responses.filter_map(move |item| {
                let reply = match item {
                    // A decoupled backend's responses are never final (Complete ends them); a
                    // language model's last delta is.
                    StreamItem::Response(response) => {
                        let last = response.is_final;
                        Some(
                            encode_response(response, &regions, &state.shm, Some(last))
                                .map_or_else(|e| in_band(&label, e, grpc_errors), ok),
                        )
                    }
                    StreamItem::Complete => empty_final_wanted.then(|| ok(empty_final(&label.model, &label.id))),
                    StreamItem::Error(e) => Some(in_band(&label, e.into(), grpc_errors)),
                };
                std::future::ready(reply)
            });
            Answer::Later(Box::pin(replies))
        }
    }
}

/// Starts the task that serves one ModelStreamInfer call and returns its response stream.
pub fn serve(state: Arc<GrpcState>, mut incoming: Streaming<ModelInferRequest>, grpc_errors: bool) -> ReceiverStream<Reply> {
    let (outbox, replies) = mpsc::channel::<Reply>(OUTBOX);
    tokio::spawn(async move {
        let mut in_order = FuturesOrdered::new();
        let mut interleaved: SelectAll<ReplyStream> = SelectAll::new();
        let mut reading = true;
        loop {
            if !reading && in_order.is_empty() && interleaved.is_empty() {
                return;
            }
            let reply = tokio::select! {
                message = incoming.message(), if reading && in_order.len() + interleaved.len() < MAX_IN_FLIGHT => {
                    match message {
                        Ok(Some(request)) => in_order.push_back(answer(Arc::clone(&state), request, grpc_errors)),
                        Ok(None) => reading = false,
                        // The client reset the stream or sent something undecodable.
                        Err(status) => {
                            let _ = outbox.send(Err(status)).await;
                            return;
                        }
                    }
                    continue;
                }
                Some(answer) = in_order.next(), if !in_order.is_empty() => match answer {
                    Answer::Now(reply) => reply,
                    Answer::Later(stream) => {
                        interleaved.push(stream);
                        continue;
                    }
                },
                // A decoupled request that just ended yields None: look again at what is left.
                reply = interleaved.next(), if !interleaved.is_empty() => match reply {
                    Some(reply) => reply,
                    None => continue,
                },
                _ = state.stopping.cancelled(), if reading => {
                    reading = false;
                    continue;
                }
                _ = outbox.closed() => return,
            };
            let failed = reply.is_err();
            if outbox.send(reply).await.is_err() || failed {
                // The client has gone, or an error ended the call in triton_grpc_error mode;
                // dropping the pending work cancels it.
                return;
            }
        }
    });
    ReceiverStream::new(replies)
}

/// Whether the client asked for real status codes on stream errors.
pub fn wants_grpc_errors(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get("triton_grpc_error")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

