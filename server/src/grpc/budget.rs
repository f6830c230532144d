//! The server-wide budget of request bytes being received, and the request body that charges it.
//!
//! tonic reserves a message's whole declared length as soon as its 5-byte prefix arrives, and
//! inflates a compressed message up to the message-size limit (2 GiB by default, as Triton). So a
//! client that declares large messages and never sends them, or sends a small compressed body that
//! inflates to gigabytes, makes the server hold memory it never meant to. [`BudgetedBody`] reads
//! the gRPC framing on its way to tonic: it holds each message until all of it has arrived,
//! charging the [`ByteBudget`] for the bytes that really came, and only then hands it to tonic
//! (so tonic's reservation is for bytes the client sent). Compressed messages it inflates itself,
//! the output bounded by the message limit and charged as it grows, and hands tonic the plain
//! message. A charge over the budget ends the call with RESOURCE_EXHAUSTED. A message's charge
//! is returned when the next one starts or the body ends, so a call holds at most one.

use std::collections::VecDeque;
use std::io::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tonic::Status;

/// Bytes the server may hold for requests being received, shared by every connection.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: AtomicU64,
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget { limit, used: AtomicU64::new(0) }
    }

    /// Takes `bytes` from the budget, or refuses without taking anything.
    pub(crate) fn take(&self, bytes: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    pub(crate) fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The compression a request's `grpc-encoding` names, when this module inflates it itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Deflate,
    Zstd,
}

impl Encoding {
    /// Takes the request's `grpc-encoding` out of `headers` when it is one we inflate, so tonic
    /// sees plain messages; an unknown one is left for tonic to refuse.
    pub fn take_from(headers: &mut HeaderMap) -> Option<Encoding> {
        let encoding = match headers.get("grpc-encoding")?.as_bytes() {
            b"gzip" => Encoding::Gzip,
            b"deflate" => Encoding::Deflate,
            b"zstd" => Encoding::Zstd,
            _ => return None,
        };
        headers.remove("grpc-encoding");
        Some(encoding)
    }
}

const PREFIX: usize = 5;

enum State {
    /// Reading a message's prefix (`have` of its 5 bytes so far).
    Prefix { prefix: [u8; PREFIX], have: usize },
    /// Holding a plain message (its prefix first) until `remaining` more bytes have arrived.
    Plain { remaining: usize, held: Vec<Bytes> },
    /// Collecting a compressed message of `len` bytes (`have` so far, in the pieces they came in,
    /// never copied) to inflate it.
    Compressed { len: usize, have: usize, pieces: Vec<Bytes> },
    /// A message larger than the limit: passed through untouched for tonic to refuse it.
    Oversized,
}

/// A request body on its way to tonic, charged to the budget (see the module docs).
pub struct BudgetedBody {
    inner: Incoming,
    budget: Arc<ByteBudget>,
    encoding: Option<Encoding>,
    max_message: usize,
    state: State,
    /// What the current message holds of the budget.
    charged: u64,
    ready: VecDeque<Bytes>,
    failed: bool,
}

impl BudgetedBody {
    pub fn new(inner: Incoming, budget: Arc<ByteBudget>, encoding: Option<Encoding>, max_message: usize) -> BudgetedBody {
        BudgetedBody {
            inner,
            budget,
            encoding,
            max_message,
            state: State::Prefix { prefix: [0; PREFIX], have: 0 },
            charged: 0,
            ready: VecDeque::new(),
            failed: false,
        }
    }

    fn release(&mut self) {
        if self.charged > 0 {
            self.budget.give_back(self.charged);
            self.charged = 0;
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Status> {
        if self.budget.take(bytes as u64) {
            self.charged += bytes as u64;
            Ok(())
        } else {
            Err(Status::resource_exhausted(format!(
                "the server is holding its limit of request bytes ({} bytes, --max-buffered-request-bytes); try again later",
                self.budget.limit
            )))
        }
    }

    /// Splits `data` along message boundaries. A message is charged by the bytes that really
    /// arrived and handed to tonic only once complete: tonic reserves a message's declared length
    /// when it sees the prefix, and a client that declares much and sends little must not make
    /// the server hold what it never sent.
    fn absorb(&mut self, mut data: Bytes) -> Result<(), Status> {
        while !data.is_empty() {
            match &mut self.state {
                State::Oversized => {
                    self.ready.push_back(std::mem::take(&mut data));
                }
                State::Prefix { prefix, have } => {
                    if *have == 0 && data.len() >= PREFIX {
                        // The usual case: the whole prefix in this chunk, kept without a copy.
                        let mut whole = [0; PREFIX];
                        whole.copy_from_slice(&data[..PREFIX]);
                        if let Some(len) = self.start_message(whole)? {
                            let n = (PREFIX + len).min(data.len());
                            self.charge(n)?;
                            self.hold(data.split_to(n), PREFIX + len - n, Vec::new());
                        } else {
                            data.advance(PREFIX);
                        }
                        continue;
                    }
                    let n = (PREFIX - *have).min(data.len());
                    prefix[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data.advance(n);
                    if *have < PREFIX {
                        continue;
                    }
                    let whole = *prefix;
                    if let Some(len) = self.start_message(whole)? {
                        self.charge(PREFIX)?;
                        self.hold(Bytes::copy_from_slice(&whole), len, Vec::new());
                    }
                }
                State::Plain { remaining, held } => {
                    let n = (*remaining).min(data.len());
                    let (remaining, held) = (*remaining - n, std::mem::take(held));
                    self.charge(n)?;
                    self.hold(data.split_to(n), remaining, held);
                }
                State::Compressed { len, have, pieces } => {
                    let n = (*len - *have).min(data.len());
                    pieces.push(data.split_to(n));
                    *have += n;
                    let complete = *have == *len;
                    self.charge(n)?;
                    if complete
                        && let State::Compressed { pieces, .. } =
                            std::mem::replace(&mut self.state, State::Prefix { prefix: [0; PREFIX], have: 0 })
                    {
                        self.inflate(Pieces { pieces: pieces.into() })?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds `piece` to the plain message being held; hands the message on once `remaining` is 0.
    fn hold(&mut self, piece: Bytes, remaining: usize, mut held: Vec<Bytes>) {
        if remaining == 0 {
            self.ready.extend(held);
            self.ready.push_back(piece);
            self.state = State::Prefix { prefix: [0; PREFIX], have: 0 };
        } else {
            held.push(piece);
            self.state = State::Plain { remaining, held };
        }
    }

    /// Reads a message's prefix and picks the state for its body. `Some(len)` for a plain
    /// message, whose prefix the caller holds; `None` when the prefix was handled here.
    fn start_message(&mut self, prefix: [u8; PREFIX]) -> Result<Option<usize>, Status> {
        // The previous message is in tonic's hands now.
        self.release();
        let compressed = prefix[0] == 1;
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.max_message || prefix[0] > 1 || (compressed && self.encoding.is_none()) {
            // tonic answers these with its own errors; nothing of the message is buffered here.
            self.ready.push_back(Bytes::copy_from_slice(&prefix));
            self.state = State::Oversized;
            return Ok(None);
        }
        if !compressed {
            return Ok(Some(len));
        }
        self.charge(PREFIX)?;
        self.state = State::Compressed { len, have: 0, pieces: Vec::new() };
        if len == 0 {
            self.inflate(Pieces { pieces: VecDeque::new() })?;
            self.state = State::Prefix { prefix: [0; PREFIX], have: 0 };
        }
        Ok(None)
    }

    /// Inflates one message into a plain one, bounded by the message limit and the budget.
    fn inflate(&mut self, compressed: Pieces) -> Result<(), Status> {
        let Some(encoding) = self.encoding else { return Ok(()) };
        let mut sink = BoundedSink { chunks: Vec::new(), current: BytesMut::new(), len: 0, body: self, limit_hit: None };
        let outcome = match encoding {
            Encoding::Gzip => std::io::copy(&mut flate2::read::GzDecoder::new(compressed), &mut sink),
            Encoding::Deflate => std::io::copy(&mut flate2::read::ZlibDecoder::new(compressed), &mut sink),
            Encoding::Zstd => match zstd::stream::read::Decoder::new(compressed) {
                Ok(mut decoder) => std::io::copy(&mut decoder, &mut sink),
                Err(e) => Err(e),
            },
        };
        let BoundedSink { mut chunks, current, len, limit_hit, .. } = sink;
        if let Some(status) = limit_hit {
            return Err(status);
        }
        if let Err(e) = outcome {
            return Err(Status::internal(format!("Error decompressing: {e}, while sending request")));
        }
        chunks.push(current.freeze());
        let mut plain = BytesMut::with_capacity(PREFIX);
        plain.put_u8(0);
        plain.put_u32(len as u32);
        self.ready.push_back(plain.freeze());
        self.ready.extend(chunks.into_iter().filter(|c| !c.is_empty()));
        Ok(())
    }
}

/// A compressed message as it arrived, read as one stream.
struct Pieces {
    pieces: VecDeque<Bytes>,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.pieces.front_mut() {
            if front.is_empty() {
                self.pieces.pop_front();
                continue;
            }
            let n = front.len().min(buf.len());
            buf[..n].copy_from_slice(&front[..n]);
            front.advance(n);
            return Ok(n);
        }
        Ok(0)
    }
}

/// The first chunk an inflated message is written to, and the largest: chunks double from one to
/// the other, so a small message allocates little and a large one is never copied to grow.
const FIRST_CHUNK: usize = 64 << 10;
const LARGEST_CHUNK: usize = 4 << 20;

/// Where inflated bytes go: chunks charged to the budget by their capacity as each is allocated
/// (what the server holds, not what was filled); refuses to grow past the message limit or the
/// budget.
struct BoundedSink<'a> {
    chunks: Vec<Bytes>,
    current: BytesMut,
    len: usize,
    body: &'a mut BudgetedBody,
    limit_hit: Option<Status>,
}

impl Write for BoundedSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let limit = self.body.max_message;
        if self.len + buf.len() > limit {
            self.limit_hit = Some(Status::resource_exhausted(format!(
                "Error decompressing: size limit, of {limit} bytes, exceeded while decompressing message"
            )));
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        if self.current.len() == self.current.capacity() {
            let size = match self.chunks.last() {
                None if self.current.capacity() == 0 => FIRST_CHUNK,
                _ => (self.current.capacity() * 2).clamp(FIRST_CHUNK, LARGEST_CHUNK),
            };
            // Never more than the message may still hold.
            let size = size.min(limit - self.len).max(1);
            if let Err(status) = self.body.charge(size) {
                self.limit_hit = Some(status);
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let full = std::mem::replace(&mut self.current, BytesMut::with_capacity(size));
            if !full.is_empty() {
                self.chunks.push(full.freeze());
            }
        }
        let n = buf.len().min(self.current.capacity() - self.current.len());
        self.current.extend_from_slice(&buf[..n]);
        self.len += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for BudgetedBody {
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(data) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if this.failed {
                return Poll::Ready(None);
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.release();
                    return Poll::Ready(Some(Err(Status::from_error(Box::new(e)))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    if let Err(status) = this.absorb(data) {
                        this.failed = true;
                        this.ready.clear();
                        this.release();
                        return Poll::Ready(Some(Err(status)));
                    }
                }
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_what_does_not_fit_and_takes_nothing() {
        let budget = ByteBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41));
        assert_eq!(budget.used(), 60);
        assert!(budget.take(40));
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
        assert!(!budget.take(u64::MAX));
    }

    #[test]
    fn only_known_encodings_are_taken_from_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-encoding", "gzip".parse().expect("value"));
        assert_eq!(Encoding::take_from(&mut headers), Some(Encoding::Gzip));
        assert!(headers.get("grpc-encoding").is_none());
        headers.insert("grpc-encoding", "snappy".parse().expect("value"));
        assert_eq!(Encoding::take_from(&mut headers), None);
        assert!(headers.get("grpc-encoding").is_some());
    }
}
