//! How a request's answers travel back: one response, or a stream of them that the client's
//! going away cancels.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::WorkerError;
use crate::request::InferenceResponse;

/// One event of a streamed request.
#[derive(Debug)]
pub enum StreamItem {
    Response(InferenceResponse),
    /// The request finished; nothing follows.
    Complete,
    /// The request failed; nothing follows.
    Error(WorkerError),
}

/// The responses of one streamed request. Dropping it cancels the request.
#[derive(Debug)]
pub struct ResponseStream {
    receiver: mpsc::Receiver<StreamItem>,
    _cancel_on_drop: DropGuard,
}

impl ResponseStream {
    /// Responses arriving on `receiver`; dropping the stream cancels `cancel`.
    pub fn new(receiver: mpsc::Receiver<StreamItem>, cancel: CancellationToken) -> ResponseStream {
        ResponseStream { receiver, _cancel_on_drop: cancel.drop_guard() }
    }

    /// A stream holding one response, then the end; how a plain model answers on a stream.
    pub fn single(response: InferenceResponse) -> ResponseStream {
        let (sender, receiver) = mpsc::channel(2);
        // Capacity 2 holds both items, so these sends cannot fail.
        let _ = sender.try_send(StreamItem::Response(response));
        let _ = sender.try_send(StreamItem::Complete);
        ResponseStream::new(receiver, CancellationToken::new())
    }
}

impl Stream for ResponseStream {
    type Item = StreamItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamItem>> {
        self.receiver.poll_recv(cx)
    }
}

/// How a request is to be answered.
#[derive(Debug)]
pub enum InferOutcome {
    Single(InferenceResponse),
    Stream(ResponseStream),
}
