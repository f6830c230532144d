//! hyper's real HTTP/2 server over [`Policed`] on an in-memory pipe, against a client that
//! writes raw frames, on tokio's paused clock (timers fire when every task waits, so no test
//! waits for real time or asserts on it).

use std::convert::Infallible;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::h2_frames::{CLIENT_PREFACE, GOAWAY};

const SETTINGS: u8 = 0x4;

fn policy(change: impl FnOnce(&mut KeepaliveConfig)) -> KeepaliveConfig {
    let mut config = KeepaliveConfig { time: None, ..KeepaliveConfig::default() };
    change(&mut config);
    config
}

/// A server on one end of a pipe; the other end, with the preface and SETTINGS written.
async fn connect(config: KeepaliveConfig) -> Client {
    let (server, client) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"ok"))))
        });
        let _ = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(Policed::new(server, config)), service)
            .await;
    });
    let mut client = Client { io: client };
    client.io.write_all(CLIENT_PREFACE).await.expect("preface");
    client.send(SETTINGS, 0, 0, &[]).await;
    client
}

struct Client {
    io: DuplexStream,
}

impl Client {
    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.io.write_all(&frame(kind, flags, stream, payload)).await.expect("a frame written");
    }

    async fn ping(&mut self, n: u8) {
        self.send(PING, 0, 0, &[n; 8]).await;
    }

    /// `GET /` on `stream`, headers only, with static-table HPACK fields.
    async fn get(&mut self, stream: u32) {
        self.send(HEADERS, 0x4 | END_STREAM, stream, &[0x82, 0x84, 0x86]).await;
    }

    /// The next frame, its SETTINGS acknowledged; `None` once the server has closed.
    async fn next(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
        loop {
            let mut head = [0u8; 9];
            self.io.read_exact(&mut head).await.ok()?;
            let header = FrameHeader {
                length: u32::from_be_bytes([0, head[0], head[1], head[2]]),
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]),
            };
            let mut payload = vec![0; header.length as usize];
            self.io.read_exact(&mut payload).await.ok()?;
            if header.kind == SETTINGS {
                if header.flags & ACK == 0 {
                    // The server may have closed already; the next read tells.
                    let _ = self.io.write_all(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                continue;
            }
            return Some((header, payload));
        }
    }

    /// Frames until one of `kind` (skipping others); `None` if the server closes first.
    async fn until(&mut self, kind: u8) -> Option<(FrameHeader, Vec<u8>)> {
        loop {
            let (header, payload) = self.next().await?;
            if header.kind == kind {
                return Some((header, payload));
            }
        }
    }

    /// Whether the server closes the connection within a day, reading what comes before.
    async fn closes(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(24 * 3600), async { while self.next().await.is_some() {} }).await.is_ok()
    }
}

#[tokio::test(start_paused = true)]
async fn a_ping_flood_gets_goaway_too_many_pings_and_the_connection_closes() {
    let mut client = connect(policy(|_| {})).await;
    for n in 0..4 {
        client.ping(n).await;
    }
    let (header, payload) = client.until(GOAWAY).await.expect("a GOAWAY");
    assert_eq!(header.stream, 0);
    assert_eq!(&payload[..4], &[0, 0, 0, 0], "no stream was processed");
    assert_eq!(&payload[4..8], &ENHANCE_YOUR_CALM.to_be_bytes());
    assert_eq!(&payload[8..], b"too_many_pings");
    assert!(client.closes().await);
}

#[tokio::test(start_paused = true)]
async fn strikes_are_counted_past_the_limit_only() {
    let mut client = connect(policy(|p| p.max_ping_strikes = 5)).await;
    // The first ping is no strike; five more are, and pass.
    for n in 0..6 {
        client.ping(n).await;
        let (header, payload) = client.until(PING).await.expect("an answer");
        assert_eq!((header.flags, payload), (ACK, vec![n; 8]));
    }
    client.ping(6).await;
    assert!(client.until(GOAWAY).await.is_some(), "the sixth strike is one too many");
}

#[tokio::test(start_paused = true)]
async fn pings_spaced_by_the_interval_are_no_strikes() {
    let mut client = connect(policy(|p| {
        p.permit_without_calls = true;
        p.min_recv_ping_interval_without_data = Duration::from_secs(10);
    }))
    .await;
    for n in 0..10 {
        client.ping(n).await;
        let answer = client.until(PING).await;
        assert!(answer.is_some(), "{n}: {answer:?}");
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_no_call_may_ping_only_every_two_hours() {
    let mut client = connect(policy(|p| p.min_recv_ping_interval_without_data = Duration::ZERO)).await;
    for n in 0..3 {
        client.ping(n).await;
        assert!(client.until(PING).await.is_some());
        tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    }
    client.ping(3).await;
    assert!(client.until(GOAWAY).await.is_some(), "an hour apart is too soon with no call");
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_no_call_may_ping_every_two_hours() {
    let mut client = connect(policy(|_| {})).await;
    for n in 0..5 {
        client.ping(n).await;
        assert!(client.until(PING).await.is_some(), "{n}");
        tokio::time::sleep(IDLE_PING_INTERVAL).await;
    }
}

#[tokio::test(start_paused = true)]
async fn with_permit_without_calls_and_no_interval_pings_are_unlimited() {
    let mut client = connect(policy(|p| {
        p.permit_without_calls = true;
        p.min_recv_ping_interval_without_data = Duration::ZERO;
    }))
    .await;
    for n in 0..100 {
        client.ping(n).await;
        assert!(client.until(PING).await.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn zero_strikes_means_no_limit() {
    let mut client = connect(policy(|p| p.max_ping_strikes = 0)).await;
    for n in 0..50 {
        client.ping(n).await;
        assert!(client.until(PING).await.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn headers_or_data_sent_by_the_server_clear_the_strikes() {
    let mut client = connect(policy(|_| {})).await;
    for n in 0..10u8 {
        client.ping(n).await;
        assert!(client.until(PING).await.is_some());
        let stream = 1 + 2 * u32::from(n);
        client.get(stream).await;
        let (header, _) = client.until(HEADERS).await.expect("a response");
        assert_eq!(header.stream, stream);
    }
}

#[tokio::test(start_paused = true)]
async fn the_goaway_names_the_last_stream_processed() {
    let mut client = connect(policy(|_| {})).await;
    client.get(1).await;
    client.get(3).await;
    for _ in 0..2 {
        client.until(DATA).await.expect("a response body");
    }
    for n in 0..4 {
        client.ping(n).await;
    }
    let (_, payload) = client.until(GOAWAY).await.expect("a GOAWAY");
    assert_eq!(&payload[..4], &3u32.to_be_bytes());
}

fn keepalive(time: u64, timeout: u64, max_pings_without_data: u32) -> KeepaliveConfig {
    policy(|p| {
        p.time = Some(Duration::from_secs(time));
        p.timeout = Duration::from_secs(timeout);
        p.max_pings_without_data = max_pings_without_data;
    })
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_ping_not_answered_closes_the_connection() {
    let mut client = connect(keepalive(60, 5, 2)).await;
    let (header, payload) = client.until(PING).await.expect("a keepalive ping");
    assert_eq!((header.flags, payload.as_slice()), (0, &KEEPALIVE_PAYLOAD[..]));
    assert!(client.closes().await);
}

#[tokio::test(start_paused = true)]
async fn answered_keepalive_pings_keep_the_connection_and_stop_after_the_limit_without_data() {
    let mut client = connect(keepalive(60, 5, 2)).await;
    for _ in 0..2 {
        let (_, payload) = client.until(PING).await.expect("a keepalive ping");
        client.send(PING, ACK, 0, &payload).await;
    }
    // A third ping waits for the server to send data; the connection stays open and serves.
    let nothing = tokio::time::timeout(Duration::from_secs(3600), client.next()).await;
    assert!(nothing.is_err(), "nothing comes without data: {nothing:?}");
    client.get(1).await;
    client.until(DATA).await.expect("a response");
    let (_, payload) = client.until(PING).await.expect("pings again once data went out");
    assert_eq!(payload, KEEPALIVE_PAYLOAD);
}

#[tokio::test(start_paused = true)]
async fn answers_to_keepalive_pings_leave_the_connection_serving() {
    let mut client = connect(keepalive(60, 5, 0)).await;
    for stream in [1, 3, 5] {
        let (_, payload) = client.until(PING).await.expect("a keepalive ping");
        client.send(PING, ACK, 0, &payload).await;
        client.get(stream).await;
        let (header, _) = client.until(HEADERS).await.expect("the connection still serves");
        assert_eq!(header.stream, stream);
    }
}
