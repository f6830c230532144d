//! A client that costs the machine almost nothing, for `bench/llm.py`'s measure of the
//! frontend's share of inter-token latency: on 2 cores the Python clients (tritonclient, openai)
//! spend 0.5 to 1.6 ms of CPU per token, taken from the engine that shares the cores, so their
//! rows hold the client's cost as well as the server's. This one streams the same requests over
//! gRPC (KServe ModelStreamInfer, `text_input` + `streaming`) or HTTP (`/v1/completions` with
//! `stream: true`, read as server-sent events) from one thread.
//!
//! Speaks the same line protocol as `engine_itl`: prints `ready` once connected, then for each
//! line of stdin (a number of streams) runs that many streams at once and prints one JSON line:
//! for each stream, in seconds from the run's start, when it was sent (`sent`), when each text
//! delta came (`deltas`) and how many tokens it generated (`tokens`).
//!
//! ```text
//! cargo run --release -j2 -p tritium-bench --example llm_client -- \
//!     --protocol grpc --address 127.0.0.1:8001 --model smollm2 --prompts prompts.txt
//! ```

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tritium_grpc_clients::{InferClient, InferRequestBuilder, output_tensor};
use tritium_proto::inference::infer_parameter::ParameterChoice;
use tritium_tensor::Tensor;

type Error = Box<dyn std::error::Error>;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Protocol {
    Grpc,
    Http,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum)]
    protocol: Protocol,
    /// host:port of the server's gRPC or HTTP listener.
    #[arg(long)]
    address: String,
    #[arg(long, default_value = "smollm2")]
    model: String,
    /// Prompts, one per line; stream i takes line i (modulo their number).
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
}

/// One stream's record, in seconds from the run's start.
struct Record {
    sent: f64,
    deltas: Vec<f64>,
    tokens: u64,
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let prompts = tritium_bench::read_prompts(&args.prompts)?;
    // One thread: the point is a client that takes as little of the machine as it can.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!("ready");
    for line in std::io::stdin().lines() {
        let line = line?;
        let streams: usize = line.trim().parse().map_err(|_| format!("not a number of streams: {line:?}"))?;
        println!("{}", runtime.block_on(run(&args, &prompts, streams))?);
    }
    Ok(())
}

/// `streams` streams at once, each on its own connection (as the Python driver's threads do),
/// connected before the clock starts.
async fn run(args: &Args, prompts: &[String], streams: usize) -> Result<Value, Error> {
    let mut connections = Vec::with_capacity(streams);
    for _ in 0..streams {
        connections.push(Connection::open(args).await?);
    }
    let start = Instant::now();
    let runs = connections.into_iter().enumerate().map(|(i, connection)| {
        let prompt = prompts[i % prompts.len()].clone();
        async move { connection.generate(args, &prompt, start).await }
    });
    let mut out = Vec::with_capacity(streams);
    for record in futures::future::join_all(runs).await {
        let record = record?;
        if record.tokens != u64::from(args.max_tokens) {
            return Err(format!("a stream generated {} tokens, not {}", record.tokens, args.max_tokens).into());
        }
        out.push(json!({ "sent": record.sent, "deltas": record.deltas, "tokens": record.tokens }));
    }
    Ok(json!({ "streams": streams, "runs": out }))
}

enum Connection {
    Grpc(InferClient),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

impl Connection {
    async fn open(args: &Args) -> Result<Connection, Error> {
        match args.protocol {
            Protocol::Grpc => Ok(Connection::Grpc(InferClient::connect(format!("http://{}", args.address)).await?)),
            Protocol::Http => {
                let tcp = tokio::net::TcpStream::connect(&args.address).await?;
                tcp.set_nodelay(true)?;
                let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
                tokio::spawn(connection);
                Ok(Connection::Http(sender))
            }
        }
    }

    async fn generate(self, args: &Args, prompt: &str, start: Instant) -> Result<Record, Error> {
        match self {
            Connection::Grpc(client) => grpc(client, args, prompt, start).await,
            Connection::Http(sender) => http(sender, args, prompt, start).await,
        }
    }
}

async fn grpc(mut client: InferClient, args: &Args, prompt: &str, start: Instant) -> Result<Record, Error> {
    let request = InferRequestBuilder::new(&args.model)
        .input(Tensor::from_byte_strings("text_input", vec![1], [prompt]))
        .input(Tensor::from_slice("streaming", vec![1], &[true]))
        .parameter("max_tokens", ParameterChoice::Int64Param(i64::from(args.max_tokens)))
        .parameter("temperature", ParameterChoice::DoubleParam(0.0))
        .parameter("ignore_eos", ParameterChoice::BoolParam(true))
        .build();
    let (requests, mut responses) = client.stream().await?;
    let sent = start.elapsed().as_secs_f64();
    requests.send(request).await?;
    let mut deltas = Vec::new();
    while let Some(message) = responses.next().await {
        let now = start.elapsed().as_secs_f64();
        let message = message?;
        if !message.error_message.is_empty() {
            return Err(format!("the stream failed: {}", message.error_message).into());
        }
        let response = message.infer_response.ok_or("a stream response without a response")?;
        let text = output_tensor(&response, "text_output")?;
        if text.byte_strings().map_or(0, |s| s.iter().map(|b| b.len()).sum::<usize>()) > 0 {
            deltas.push(now);
        }
        if tritium_grpc_clients::is_final(&response) == Some(true) {
            let finish = output_tensor(&response, "finish_reason")?;
            let reason = finish.byte_strings().ok().and_then(|s| s.first().map(|r| r.to_vec())).unwrap_or_default();
            if reason != b"length" {
                return Err(format!("finished with {:?}, not 'length'", String::from_utf8_lossy(&reason)).into());
            }
            return Ok(Record { sent, deltas, tokens: u64::from(args.max_tokens) });
        }
    }
    Err("the stream ended without a final response".into())
}

async fn http(
    mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    args: &Args,
    prompt: &str,
    start: Instant,
) -> Result<Record, Error> {
    let body = json!({
        "model": args.model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true,
    });
    let request = hyper::Request::post("/v1/completions")
        .header(hyper::header::HOST, &args.address)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let sent = start.elapsed().as_secs_f64();
    let response = sender.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()).into());
    }
    let mut body = response.into_body();
    let (mut pending, mut deltas, mut tokens) = (Vec::<u8>::new(), Vec::new(), None);
    while let Some(frame) = body.frame().await {
        let now = start.elapsed().as_secs_f64();
        let Ok(data) = frame?.into_data() else { continue };
        pending.extend_from_slice(&data);
        // Server-sent events end with a blank line; each of ours is one `data:` line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let Some(payload) = event.strip_prefix(b"data: ") else { continue };
            let payload = payload.trim_ascii_end();
            if payload == b"[DONE]" {
                let tokens = tokens.ok_or("no usage before [DONE]")?;
                return Ok(Record { sent, deltas, tokens });
            }
            let chunk: Value = serde_json::from_slice(payload)?;
            if let Some(used) = chunk["usage"]["completion_tokens"].as_u64() {
                tokens = Some(used);
            }
            let texts = chunk["choices"].as_array().into_iter().flatten();
            if texts.filter_map(|c| c["text"].as_str()).any(|t| !t.is_empty()) {
                deltas.push(now);
            }
        }
    }
    Err("the event stream ended without [DONE]".into())
}
