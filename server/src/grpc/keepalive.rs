//! A gRPC connection's pings, handled under hyper the way gRPC's own servers (and so Triton)
//! handle them.
//!
//! hyper answers every PING a client sends, however many, and its own keepalive pings only a
//! peer that has been silent. [`Policed`] sits between hyper and the socket and follows the frame
//! headers going both ways ([`crate::h2_frames`]; payloads are never copied):
//! - **Client pings.** A ping that comes sooner than the allowed interval after the previous one
//!   is a strike: the interval is `--grpc-http2-min-recv-ping-interval-without-data`, or 2 hours
//!   on a connection with no call open unless `--grpc-keepalive-permit-without-calls`. Headers,
//!   data or a connection window update sent by the server clear the strikes (all as measured on
//!   Triton 2.51: the first ping is free, GOAWAY comes at ping `strikes + 2`). One strike past
//!   `--grpc-http2-max-ping-strikes` and the connection is sent GOAWAY ENHANCE_YOUR_CALM
//!   `too_many_pings` and closed, which tells gRPC clients to ping less.
//! - **Server keepalive.** Every `--grpc-keepalive-time` the server writes a PING of its own
//!   between two of hyper's frames, and closes the connection when its answer does not come
//!   within `--grpc-keepalive-timeout`. After `--grpc-http2-max-pings-without-data` pings with
//!   no headers or data sent, it waits for some before pinging again. The answers to these pings
//!   are hidden from hyper (their frame type is rewritten to one HTTP/2 says to ignore), since
//!   hyper did not send them.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::config::KeepaliveConfig;
use crate::config::keepalive::IDLE_PING_INTERVAL;
use crate::h2_frames::{
    ACK, DATA, END_STREAM, ENHANCE_YOUR_CALM, FrameCursor, FrameHeader, HEADERS, PING, RST_STREAM, WINDOW_UPDATE, frame, goaway,
};

/// The payload of the server's keepalive pings.
const KEEPALIVE_PAYLOAD: [u8; 8] = *b"tritium\0";

/// A frame type HTTP/2 has not defined: receivers must ignore such frames.
const IGNORED_TYPE: u8 = 0xf7;

/// Streams remembered as open; beyond this many the connection counts as busy anyway.
const MAX_TRACKED_STREAMS: usize = 1 << 16;

/// Who wrote a PING that awaits its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pinger {
    Server,
    Hyper,
}

enum Keepalive {
    Off,
    /// The next ping is due when the timer fires.
    Waiting,
    /// A ping is out; the connection closes when the timer fires first.
    AwaitingAnswer,
    /// `max_pings_without_data` pings went out with nothing else; waiting for headers or data.
    Exhausted,
}

/// A connection's socket under hyper, with its pings policed and kept alive (see the module docs).
pub(crate) struct Policed<T> {
    inner: T,
    config: KeepaliveConfig,
    read: FrameCursor,
    write: FrameCursor,
    /// Client streams opened and not yet ended by the server or reset.
    open_streams: HashSet<u32>,
    last_stream: u32,
    strikes: u32,
    last_ping: Option<Instant>,
    /// The client has sent data (so the server's window updates give it back).
    data_received: bool,
    keepalive: Keepalive,
    timer: Pin<Box<Sleep>>,
    pings_without_data: u32,
    /// PINGs written and not yet answered, in the order written.
    unanswered: VecDeque<Pinger>,
    /// Frames of the server's own waiting for a frame boundary, and how much of them is written.
    pending: Vec<u8>,
    pending_written: usize,
    /// Once set, the connection is closed when `pending` is written; every call fails after.
    closing: Option<&'static str>,
    closed: bool,
}

impl<T> Policed<T> {
    pub(crate) fn new(inner: T, config: KeepaliveConfig) -> Policed<T> {
        let (keepalive, first) = match config.time {
            Some(time) => (Keepalive::Waiting, time),
            None => (Keepalive::Off, IDLE_PING_INTERVAL),
        };
        Policed {
            inner,
            config,
            read: FrameCursor::client(),
            write: FrameCursor::server(),
            open_streams: HashSet::new(),
            last_stream: 0,
            strikes: 0,
            last_ping: None,
            data_received: false,
            keepalive,
            timer: Box::pin(tokio::time::sleep(first)),
            pings_without_data: 0,
            unanswered: VecDeque::new(),
            pending: Vec::new(),
            pending_written: 0,
            closing: None,
            closed: false,
        }
    }

    fn closed_error(&self) -> io::Error {
        let why = self.closing.unwrap_or("closed");
        io::Error::new(io::ErrorKind::ConnectionAborted, why)
    }

    /// A PING from the client: counts a strike when it comes too soon; true when the
    /// connection has now taken too many.
    fn client_pinged(&mut self) -> bool {
        let now = Instant::now();
        let idle = self.open_streams.is_empty() && !self.config.permit_without_calls;
        let interval = if idle { IDLE_PING_INTERVAL } else { self.config.min_recv_ping_interval_without_data };
        let too_soon = self.last_ping.is_some_and(|last| now < last + interval);
        self.last_ping = Some(now);
        if !too_soon {
            return false;
        }
        self.strikes = self.strikes.saturating_add(1);
        self.config.max_ping_strikes != 0 && self.strikes > self.config.max_ping_strikes
    }

    /// Follows one frame from the client; true when its type byte must be hidden from hyper.
    fn on_read_header(&mut self, header: FrameHeader) -> bool {
        match header.kind {
            PING if header.flags & ACK == 0 => {
                if self.client_pinged() && self.closing.is_none() {
                    tracing::debug!(
                        "closing a gRPC connection: {} pings too soon (--grpc-http2-max-ping-strikes {})",
                        self.strikes,
                        self.config.max_ping_strikes
                    );
                    self.pending.extend(goaway(self.last_stream, ENHANCE_YOUR_CALM, b"too_many_pings"));
                    self.closing = Some("too many pings");
                }
            }
            PING => match self.unanswered.pop_front() {
                Some(Pinger::Server) => {
                    if let (Keepalive::AwaitingAnswer, Some(time)) = (&self.keepalive, self.config.time) {
                        self.keepalive = Keepalive::Waiting;
                        self.reset_timer(time);
                    }
                    return true;
                }
                Some(Pinger::Hyper) | None => {}
            },
            HEADERS if header.stream > self.last_stream => {
                self.last_stream = header.stream;
                if self.open_streams.len() < MAX_TRACKED_STREAMS {
                    self.open_streams.insert(header.stream);
                }
            }
            RST_STREAM => {
                self.open_streams.remove(&header.stream);
            }
            DATA if header.length > 0 => self.data_received = true,
            _ => {}
        }
        false
    }

    fn on_write_header(&mut self, header: FrameHeader) {
        match header.kind {
            // As gRPC's servers do (measured on Triton 2.51): a connection window update that
            // gives back what the client sent clears the strikes too. hyper's first update, which
            // only opens the window, may go out after the first pings; it clears nothing.
            WINDOW_UPDATE if header.stream == 0 && self.data_received => {
                self.strikes = 0;
                self.last_ping = None;
            }
            DATA | HEADERS => {
                self.strikes = 0;
                self.last_ping = None;
                self.pings_without_data = 0;
                if header.flags & END_STREAM != 0 {
                    self.open_streams.remove(&header.stream);
                }
                if let (Keepalive::Exhausted, Some(time)) = (&self.keepalive, self.config.time) {
                    self.keepalive = Keepalive::Waiting;
                    self.reset_timer(time);
                }
            }
            RST_STREAM => {
                self.open_streams.remove(&header.stream);
            }
            PING if header.flags & ACK == 0 => self.unanswered.push_back(Pinger::Hyper),
            _ => {}
        }
    }

    fn reset_timer(&mut self, after: std::time::Duration) {
        self.timer.as_mut().reset(tokio::time::Instant::now() + after);
    }

    /// Moves the keepalive on when its timer has fired: a ping queued, or the connection
    /// closed for want of an answer.
    fn tick(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if matches!(self.keepalive, Keepalive::Off | Keepalive::Exhausted) || self.timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        match self.keepalive {
            Keepalive::AwaitingAnswer => {
                tracing::debug!("closing a gRPC connection: no answer to a keepalive ping (--grpc-keepalive-timeout)");
                self.closing = Some("keepalive ping not answered");
                self.closed = true;
                Err(self.closed_error())
            }
            Keepalive::Waiting if self.closing.is_some() => Ok(()),
            Keepalive::Waiting => {
                let limit = self.config.max_pings_without_data;
                if limit != 0 && self.pings_without_data >= limit {
                    self.keepalive = Keepalive::Exhausted;
                    return Ok(());
                }
                self.pending.extend(frame(PING, 0, 0, &KEEPALIVE_PAYLOAD));
                self.unanswered.push_back(Pinger::Server);
                self.pings_without_data += 1;
                self.keepalive = Keepalive::AwaitingAnswer;
                self.reset_timer(self.config.timeout);
                // Arms the timer's waker for the new deadline.
                let _ = self.timer.as_mut().poll(cx);
                Ok(())
            }
            Keepalive::Off | Keepalive::Exhausted => Ok(()),
        }
    }
}

impl<T: AsyncWrite + Unpin> Policed<T> {
    /// Writes the server's own frames, if any wait and the write side is between two frames.
    /// Ready once nothing of them is left; after a GOAWAY, the connection is closed then.
    fn write_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() || !self.write.at_boundary() {
            return Poll::Ready(Ok(()));
        }
        while self.pending_written < self.pending.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.pending_written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending_written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.pending_written = 0;
        // TLS holds written bytes until a flush; a flush that cannot finish now finishes with
        // hyper's next one.
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_flush(cx) {
            return Poll::Ready(Err(e));
        }
        if self.closing.is_some() {
            self.closed = true;
            return Poll::Ready(Err(self.closed_error()));
        }
        Poll::Ready(Ok(()))
    }

    /// What every call does first: fail once closed, move the keepalive on, and write the
    /// server's own frames when they fit in.
    fn before_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closed {
            return Poll::Ready(Err(self.closed_error()));
        }
        self.tick(cx)?;
        self.write_pending(cx)
    }

    fn wrote(&mut self, bytes: &[u8]) {
        let mut cursor = std::mem::replace(&mut self.write, FrameCursor::server());
        cursor.advance(bytes, |header, _| self.on_write_header(header));
        self.write = cursor;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Policed<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.before_io(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            // Nothing more is read from a connection being closed.
            Poll::Pending if this.closing.is_some() => return Poll::Pending,
            _ => {}
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let mut cursor = std::mem::replace(&mut this.read, FrameCursor::client());
            let mut hidden = Vec::new();
            cursor.advance(&buf.filled()[before..], |header, kind_at| {
                if this.on_read_header(header)
                    && let Some(at) = kind_at
                {
                    hidden.push(before + at);
                }
            });
            this.read = cursor;
            for at in hidden {
                buf.filled_mut()[at] = IGNORED_TYPE;
            }
            if this.closing.is_some() {
                // The GOAWAY goes out now if the write side is between frames; else once it is.
                if let Poll::Ready(Err(e)) = this.write_pending(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        polled
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Policed<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.before_io(cx) {
            return Poll::Ready(Err(e));
        }
        // With frames of the server's own waiting, hyper's write stops at its frame's end.
        let limit = if this.pending.is_empty() { buf.len() } else { this.write.bytes_to_boundary().min(buf.len()) };
        if limit == 0 {
            return Poll::Pending;
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]);
        if let Poll::Ready(Ok(n)) = written {
            this.wrote(&buf[..n]);
            if !this.pending.is_empty() && this.write.at_boundary() {
                // The waker is armed by the write if it cannot finish now; hyper polls again.
                if let Poll::Ready(Err(e)) = this.write_pending(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        written
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Poll::Ready(Err(e)) = this.before_io(cx) {
            return Poll::Ready(Err(e));
        }
        if !this.pending.is_empty() {
            // The keepalive just queued a ping: write around it.
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for slice in bufs {
                let take = n.min(slice.len());
                this.wrote(&slice[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.before_io(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_flush(cx),
            other => other,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "keepalive_tests.rs"]
mod tests;
