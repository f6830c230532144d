//! The HTTP port's bounds, over raw TCP so no client library hides what the server does: the
//! connection cap, the handshake and idle deadlines, the body limit and the server-wide byte
//! budget it shares with gRPC. Before these, axum's own `serve` held any number of silent
//! connections forever and buffered bodies outside every budget.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tritium_server::{ServerConfig, ServerHandle};
use tritium_worker::BackendRegistry;

const DEADLINE: Duration = Duration::from_secs(30);

async fn server(config: ServerConfig) -> ServerHandle {
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("binds gRPC");
    let http = TcpListener::bind("127.0.0.1:0").await.expect("binds HTTP");
    tritium_server::spawn_with_listeners(config, grpc, Some(http), BackendRegistry::default()).await.expect("starts")
}

async fn connect(server: &ServerHandle) -> TcpStream {
    TcpStream::connect(http_addr(server)).await.expect("connects")
}

fn http_addr(server: &ServerHandle) -> SocketAddr {
    server.http_addr().expect("serves HTTP")
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole answer.
async fn exchange(stream: &mut TcpStream, method: &str, path: &str, body: &[u8]) -> String {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("writes the head");
    // A refused body may be answered before it is all sent; the answer is what matters.
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await.expect("answered in time");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn live(server: &ServerHandle) -> String {
    live_at(http_addr(server)).await
}

async fn live_at(address: SocketAddr) -> String {
    let mut stream = TcpStream::connect(address).await.expect("connects");
    exchange(&mut stream, "GET", "/live", b"").await
}

fn assert_live(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_handshake_deadline() {
    let mut config = ServerConfig::default();
    config.http_limits.header_timeout = Some(Duration::from_millis(200));
    let server = server(config).await;
    let mut silent = connect(&server).await;
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(DEADLINE, silent.read_to_end(&mut buffer)).await.expect("closed in time");
    assert_eq!(read.expect("reads to the end"), 0, "closed without an answer");
    assert_live(&live(&server).await);
}

#[tokio::test]
async fn a_keep_alive_connection_that_goes_quiet_is_closed_at_the_idle_deadline() {
    let mut config = ServerConfig::default();
    config.http_limits.idle_timeout = Some(Duration::from_millis(300));
    let server = server(config).await;
    let mut stream = connect(&server).await;
    stream.write_all(b"GET /live HTTP/1.1\r\nhost: test\r\n\r\n").await.expect("writes");
    let mut answer = Vec::new();
    // Keep-alive: the answer comes, then the connection stays open until the idle deadline.
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await.expect("closed in time");
    read.expect("reads to the end");
    assert_live(&String::from_utf8_lossy(&answer));
}

#[tokio::test]
async fn past_the_connection_limit_new_clients_wait_until_one_leaves() {
    let mut config = ServerConfig::default();
    config.http_limits.max_connections = 1;
    let server = server(config).await;
    let first = connect(&server).await;
    let second = tokio::spawn(live_at(http_addr(&server)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "a second connection was served past the limit of 1");
    drop(first);
    let answer = tokio::time::timeout(DEADLINE, second).await.expect("served once the first left").expect("task");
    assert_live(&answer);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413_and_the_server_goes_on() {
    let mut config = ServerConfig::default();
    config.http_limits.max_body_bytes = 1024;
    let server = server(config).await;
    let body = format!("{{\"model\": \"x\", \"prompt\": \"{}\"}}", "a".repeat(4096));
    let answer = exchange(&mut connect(&server).await, "POST", "/v1/completions", body.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_live(&live(&server).await);
}

#[tokio::test]
async fn bodies_are_charged_to_the_byte_budget_shared_with_grpc() {
    let mut config = ServerConfig::default();
    config.transport.max_buffered_request_bytes = 2048;
    let server = server(config).await;
    let big = format!("{{\"model\": \"x\", \"prompt\": \"{}\"}}", "a".repeat(8192));
    let answer = exchange(&mut connect(&server).await, "POST", "/v1/completions", big.as_bytes()).await;
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(answer.contains("too many request bytes"), "the refusal says why: {answer}");
    // The refused body's bytes were given back: a small body is read and answered on its merits.
    let small = b"{\"model\": \"nope\", \"prompt\": \"hi\"}";
    let answer = exchange(&mut connect(&server).await, "POST", "/v1/completions", small).await;
    assert!(answer.starts_with("HTTP/1.1 404"), "the unknown model, not the budget: {answer}");
    assert_live(&live(&server).await);
}
