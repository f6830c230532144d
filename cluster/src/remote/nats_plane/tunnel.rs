//! One byte stream carried by NATS messages: what gRPC's HTTP/2 connection runs over on the NATS
//! request plane.
//!
//! Each side holds one end of an in-memory pipe; two tasks move bytes between the other end and
//! NATS. Every message is a frame: an 8-byte big-endian sequence number, then the bytes; a frame
//! with no bytes ends the stream. NATS keeps one publisher's messages to one subscriber in order,
//! so a sequence number out of place means one was dropped (a slow consumer): the stream is broken
//! and both ends see it close. HTTP/2 flow control bounds what is in flight, so a reader that keeps
//! up never gets there.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_nats::{Client, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

/// Bytes buffered in each direction of the in-memory pipe.
const PIPE_BUFFER: usize = 256 << 10;
/// The sequence number ahead of each frame's bytes.
const HEADER: usize = 8;
/// How long a tunnel whose local side closed still delivers what arrives.
const LINGER: std::time::Duration = std::time::Duration::from_secs(1);

/// A frame: `sequence`, then `data` (empty: the end of the stream).
pub(super) fn frame(sequence: u64, data: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(HEADER + data.len());
    frame.put_u64(sequence);
    frame.put_slice(data);
    frame.freeze()
}

/// A frame's sequence number and bytes, or `None` for a message too short to be one.
pub(super) fn unframe(payload: &Bytes) -> Option<(u64, Bytes)> {
    let header: [u8; HEADER] = payload.get(..HEADER)?.try_into().ok()?;
    Some((u64::from_be_bytes(header), payload.slice(HEADER..)))
}

/// Counts a side's open tunnels; the count drops when both of a tunnel's tasks have ended.
#[derive(Debug, Clone, Default)]
pub(super) struct TunnelCount(Arc<AtomicUsize>);

impl TunnelCount {
    pub(super) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn hold(&self) -> CountGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        CountGuard(Arc::clone(&self.0))
    }
}

struct CountGuard(Arc<AtomicUsize>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a tunnel that publishes what is written to the returned pipe on `send_to`, in frames of
/// at most `chunk` bytes, and makes what arrives on `inbound` readable from it. `label` names it
/// in logs.
pub(super) fn open(
    client: Client,
    send_to: String,
    inbound: Subscriber,
    chunk: usize,
    count: &TunnelCount,
    label: String,
) -> DuplexStream {
    let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
    let (reader, writer) = tokio::io::split(theirs);
    let broken = CancellationToken::new();
    let guard = Arc::new(count.hold());
    tokio::spawn(outbound(client, send_to, reader, chunk.max(1), broken.clone(), Arc::clone(&guard), label.clone()));
    tokio::spawn(inbound_pump(inbound, writer, broken, guard, label));
    ours
}

/// Publishes what the local side writes, then the end frame once it closes.
async fn outbound(
    client: Client,
    send_to: String,
    mut reader: ReadHalf<DuplexStream>,
    chunk: usize,
    broken: CancellationToken,
    _count: Arc<CountGuard>,
    label: String,
) {
    let mut buffer = vec![0u8; chunk];
    let mut sequence = 0u64;
    loop {
        let read = tokio::select! {
            read = reader.read(&mut buffer) => read,
            () = broken.cancelled() => return,
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(tunnel = %label, "reading the local side failed: {e}");
                0
            }
        };
        if let Err(e) = client.publish(send_to.clone(), frame(sequence, &buffer[..n])).await {
            tracing::debug!(tunnel = %label, "publishing to NATS failed: {e}");
            broken.cancel();
            return;
        }
        if n == 0 {
            // HTTP/2 closes both directions at once; what the peer still sends within a moment
            // is delivered, then the tunnel ends even if its end frame never comes (a peer that
            // died).
            tokio::time::sleep(LINGER).await;
            broken.cancel();
            return;
        }
        sequence += 1;
    }
}

/// Writes what arrives to the local side, until the end frame, a frame out of order, or the
/// local side closing.
async fn inbound_pump(
    mut inbound: Subscriber,
    mut writer: WriteHalf<DuplexStream>,
    broken: CancellationToken,
    _count: Arc<CountGuard>,
    label: String,
) {
    let mut expected = 0u64;
    loop {
        let message = tokio::select! {
            message = inbound.next() => message,
            () = broken.cancelled() => break,
        };
        let Some(message) = message else {
            tracing::debug!(tunnel = %label, "the NATS subscription ended");
            broken.cancel();
            break;
        };
        let Some((sequence, data)) = unframe(&message.payload) else {
            tracing::warn!(tunnel = %label, "a message that is no frame ({} bytes); closing", message.payload.len());
            broken.cancel();
            break;
        };
        if sequence != expected {
            tracing::warn!(tunnel = %label, expected, got = sequence, "frames were lost (a slow consumer); closing");
            broken.cancel();
            break;
        }
        expected += 1;
        if data.is_empty() {
            break;
        }
        if writer.write_all(&data).await.is_err() {
            // The local side is gone: nothing more to deliver.
            broken.cancel();
            break;
        }
    }
    // The local side reads the end of the stream; unsubscribing happens on drop.
    let _ = writer.shutdown().await;
    let _ = inbound.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_short_messages_are_refused() {
        let framed = frame(7, b"hello");
        assert_eq!(unframe(&framed), Some((7, Bytes::from_static(b"hello"))));
        assert_eq!(unframe(&frame(u64::MAX, b"")), Some((u64::MAX, Bytes::new())));
        assert_eq!(unframe(&Bytes::from_static(b"1234567")), None);
    }
}
