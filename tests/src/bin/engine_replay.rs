//! `engine-replay --fixture DIR`: an engine that answers vLLM's gRPC engine service
//! (`VllmEngine`) from an exchange recorded with the real engine (`tests/fixtures/engine_grpc/`,
//! written by `scripts/test-engines.sh --record`), so the default test run drives Tritium's
//! engine client against the engine's own frames without the 5.8 GB engine. It serves on an
//! ephemeral 127.0.0.1 port, prints `listening on 127.0.0.1:PORT` first, then `generate ID` for
//! each call (with ` traceparent=...` when the call carries one) and `abort ID` for each request
//! the client aborts. A `Generate` whose prompt and `max_tokens` were never recorded is refused
//! with NOT_FOUND naming them.
//!
//! `--misbehave MODE` makes it a broken engine for the client's error paths: `unfinished` (streams
//! end before their complete message), `garbage` (a chunk for a choice never asked for), `hang`
//! (streams send nothing after the first chunk), `flood` (far more tokens than asked for); `slow`
//! sends the recorded frames a second apart, `late` answers each call 5 s late; `warming` answers
//! `grpc.health.v1` with NOT_SERVING, as an engine still warming up. `--embedder` makes it an
//! embedding engine (`is_generation` false) whose `Embed` answers a function of the token ids it
//! gets (count, sum / 1000, first, last) and prints `embed ID,ID,...`; `--no-tokenizer` answers
//! `GetTokenizer` with UNIMPLEMENTED.

use std::net::SocketAddr;
use std::pin::Pin;

use futures::Stream;
use serde_json::Value as Json;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};
use tritium_proto::engine::vllm_engine_server::{VllmEngine, VllmEngineServer};
use tritium_proto::engine::*;

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Misbehave {
    None,
    Unfinished,
    Garbage,
    Hang,
    Flood,
    Slow,
    Late,
    /// `grpc.health.v1` says NOT_SERVING throughout, as an engine still warming up does.
    Warming,
}

struct Replay {
    exchange: Json,
    tokenizer: Vec<u8>,
    misbehave: Misbehave,
    /// `--embedder`: the engine says it is an embedding model and answers `Embed`.
    embedder: bool,
    /// `--no-tokenizer`: `GetTokenizer` is UNIMPLEMENTED, as on engines that send none.
    no_tokenizer: bool,
}

/// What `--embedder` answers for the token ids `ids` (nothing recorded: a function of the ids the
/// tests compute too): their count, their sum over 1000, the first and the last.
fn embedding_of(ids: &[u32]) -> Vec<f32> {
    let sum: u64 = ids.iter().map(|&id| u64::from(id)).sum();
    let edge = |id: Option<&u32>| id.map_or(0.0, |&id| id as f32);
    vec![ids.len() as f32, sum as f32 / 1000.0, edge(ids.first()), edge(ids.last())]
}

fn u32s(value: &Json) -> Vec<u32> {
    value.as_array().map(|items| items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect()).unwrap_or_default()
}

fn f32s(value: &Json) -> Vec<f32> {
    value.as_array().map(|items| items.iter().filter_map(Json::as_f64).map(|v| v as f32).collect()).unwrap_or_default()
}

fn uint(value: &Json, key: &str) -> u32 {
    value.get(key).and_then(Json::as_u64).unwrap_or(0) as u32
}

fn int(value: &Json, key: &str) -> i32 {
    value.get(key).and_then(Json::as_i64).unwrap_or(0) as i32
}

fn text(value: &Json, key: &str) -> String {
    value.get(key).and_then(Json::as_str).unwrap_or_default().to_string()
}

fn token_logprobs(value: Option<&Json>) -> Option<TokenLogprobs> {
    let value = value?;
    Some(TokenLogprobs {
        token_logprobs: f32s(&value["token_logprobs"]),
        token_ids: u32s(&value["token_ids"]),
        top_logprobs: alternatives(&value["top_logprobs"]),
    })
}

fn alternatives(value: &Json) -> Vec<Alternatives> {
    value
        .as_array()
        .map(|items| {
            items.iter().map(|top| Alternatives { values: f32s(&top["values"]), token_ids: u32s(&top["token_ids"]) }).collect()
        })
        .unwrap_or_default()
}

fn prompt_logprobs(value: Option<&Json>) -> Option<PromptLogprobs> {
    let value = value?;
    Some(PromptLogprobs {
        token_logprobs: value["token_logprobs"]
            .as_array()
            .map(|items| {
                items.iter().map(|p| PromptLogprob { value: p.get("value").and_then(Json::as_f64).map(|v| v as f32) }).collect()
            })
            .unwrap_or_default(),
        token_ids: u32s(&value["token_ids"]),
        top_logprobs: alternatives(&value["top_logprobs"]),
    })
}

/// One recorded response message (protobuf's JSON mapping, field names as in the proto).
fn response(value: &Json) -> Result<GenerateResponse, Status> {
    if let Some(chunk) = value.get("chunk") {
        return Ok(GenerateResponse {
            response: Some(generate_response::Response::Chunk(GenerateChunk {
                token_ids: u32s(&chunk["token_ids"]),
                prompt_tokens: uint(chunk, "prompt_tokens"),
                completion_tokens: uint(chunk, "completion_tokens"),
                cached_tokens: uint(chunk, "cached_tokens"),
                output_logprobs: token_logprobs(chunk.get("output_logprobs")),
                input_logprobs: prompt_logprobs(chunk.get("input_logprobs")),
                index: uint(chunk, "index"),
            })),
        });
    }
    if let Some(complete) = value.get("complete") {
        let matched_stop = match (complete.get("matched_token_id"), complete.get("matched_stop_str")) {
            (Some(id), _) => id.as_u64().map(|id| generate_complete::MatchedStop::MatchedTokenId(id as u32)),
            (None, Some(text)) => text.as_str().map(|t| generate_complete::MatchedStop::MatchedStopStr(t.to_string())),
            _ => None,
        };
        return Ok(GenerateResponse {
            response: Some(generate_response::Response::Complete(GenerateComplete {
                output_ids: u32s(&complete["output_ids"]),
                finish_reason: text(complete, "finish_reason"),
                prompt_tokens: uint(complete, "prompt_tokens"),
                completion_tokens: uint(complete, "completion_tokens"),
                cached_tokens: uint(complete, "cached_tokens"),
                output_logprobs: token_logprobs(complete.get("output_logprobs")),
                input_logprobs: prompt_logprobs(complete.get("input_logprobs")),
                index: uint(complete, "index"),
                matched_stop,
            })),
        });
    }
    Err(Status::internal("a recorded response is neither a chunk nor a complete message"))
}

impl Replay {
    /// The recorded responses to a streamed request with these prompt ids and `max_tokens`.
    fn recorded(&self, ids: &[u32], max_tokens: Option<u32>) -> Option<Vec<Json>> {
        let cases = self.exchange["cases"].as_array()?;
        cases.iter().flat_map(|case| case["generate"].as_array().into_iter().flatten()).find_map(|exchange| {
            let request = &exchange["request"];
            let same = u32s(&request["tokenized"]["input_ids"]) == ids
                && request["sampling_params"].get("max_tokens").and_then(Json::as_u64).map(|n| n as u32) == max_tokens
                && request.get("stream").and_then(Json::as_bool).unwrap_or(false);
            same.then(|| exchange["responses"].as_array().cloned().unwrap_or_default())
        })
    }
}

#[tonic::async_trait]
impl VllmEngine for Replay {
    type GenerateStream = Answers<GenerateResponse>;
    type GetTokenizerStream = Answers<GetTokenizerChunk>;
    type SubscribeKvEventsStream = Answers<KvEventBatch>;

    async fn generate(&self, request: Request<GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let traceparent = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string);
        let request = request.into_inner();
        match traceparent {
            Some(traceparent) => say(format!("generate {} traceparent={traceparent}", request.request_id)).await,
            None => say(format!("generate {}", request.request_id)).await,
        }
        let ids = match &request.input {
            Some(generate_request::Input::Tokenized(tokens)) => tokens.input_ids.clone(),
            _ => return Err(Status::invalid_argument("the replay takes tokenized input only")),
        };
        let max_tokens = request.sampling_params.as_ref().and_then(|p| p.max_tokens);
        let recorded = self.recorded(&ids, max_tokens).ok_or_else(|| {
            Status::not_found(format!("no recorded exchange for prompt {ids:?} with max_tokens {max_tokens:?}"))
        })?;
        let mut answers: Vec<Result<GenerateResponse, Status>> = recorded.iter().map(response).collect();
        let misbehave = self.misbehave;
        match misbehave {
            Misbehave::None | Misbehave::Hang | Misbehave::Slow | Misbehave::Warming => {}
            // Engines send a call's headers with its first token: a long silence before them.
            Misbehave::Late => tokio::time::sleep(std::time::Duration::from_secs(5)).await,
            Misbehave::Unfinished => {
                answers.pop();
            }
            Misbehave::Garbage => answers.insert(
                0,
                Ok(GenerateResponse {
                    response: Some(generate_response::Response::Chunk(GenerateChunk {
                        token_ids: vec![1],
                        index: 7,
                        ..Default::default()
                    })),
                }),
            ),
            Misbehave::Flood => {
                let chunk = GenerateChunk { token_ids: vec![42; 64], ..Default::default() };
                let flood = GenerateResponse { response: Some(generate_response::Response::Chunk(chunk)) };
                answers = std::iter::repeat_n(Ok(flood), 64).collect();
            }
        }
        let stream = async_stream(answers, misbehave);
        Ok(Response::new(stream))
    }

    async fn embed(&self, request: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        if !self.embedder {
            return Err(Status::unimplemented("the recorded engine is a language model"));
        }
        let ids = request.into_inner().tokenized.map(|t| t.input_ids).unwrap_or_default();
        say(format!("embed {}", ids.iter().map(u32::to_string).collect::<Vec<_>>().join(","))).await;
        let embedding = embedding_of(&ids);
        let prompt_tokens = ids.len() as u32;
        Ok(Response::new(EmbedResponse { embedding_dim: embedding.len() as u32, embedding, prompt_tokens }))
    }

    async fn health_check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { healthy: true, message: String::new() }))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<AbortResponse>, Status> {
        for id in request.into_inner().request_ids {
            say(format!("abort {id}")).await;
        }
        Ok(Response::new(AbortResponse {}))
    }

    async fn get_model_info(&self, _: Request<GetModelInfoRequest>) -> Result<Response<GetModelInfoResponse>, Status> {
        let info = &self.exchange["model_info"];
        Ok(Response::new(GetModelInfoResponse {
            model_path: text(info, "model_path"),
            is_generation: !self.embedder && info.get("is_generation").and_then(Json::as_bool).unwrap_or(false),
            max_context_length: uint(info, "max_context_length"),
            vocab_size: uint(info, "vocab_size"),
            served_model_name: text(info, "served_model_name"),
            model_type: text(info, "model_type"),
            architectures: info["architectures"]
                .as_array()
                .map(|names| names.iter().filter_map(Json::as_str).map(str::to_string).collect())
                .unwrap_or_default(),
            eos_token_ids: u32s(&info["eos_token_ids"]).into_iter().map(|id| id as i32).collect(),
            pad_token_id: int(info, "pad_token_id"),
            bos_token_id: int(info, "bos_token_id"),
            max_req_input_len: int(info, "max_req_input_len"),
        }))
    }

    async fn get_server_info(&self, _: Request<GetServerInfoRequest>) -> Result<Response<GetServerInfoResponse>, Status> {
        let info = &self.exchange["server_info"];
        Ok(Response::new(GetServerInfoResponse {
            active_requests: uint(info, "active_requests"),
            is_paused: false,
            server_type: text(info, "server_type"),
            data_parallel_size: int(info, "data_parallel_size"),
            kv_cache_dtype: text(info, "kv_cache_dtype"),
            block_size: int(info, "block_size"),
            model_dtype: text(info, "model_dtype"),
            max_num_seqs: int(info, "max_num_seqs"),
        }))
    }

    async fn get_loads(&self, _: Request<GetLoadsRequest>) -> Result<Response<GetLoadsResponse>, Status> {
        Ok(Response::new(GetLoadsResponse { dp_rank_count: 1, loads: vec![SchedulerLoad::default()] }))
    }

    async fn get_tokenizer(&self, _: Request<GetTokenizerRequest>) -> Result<Response<Self::GetTokenizerStream>, Status> {
        if self.no_tokenizer {
            return Err(Status::unimplemented("this engine sends no tokenizer"));
        }
        let digest: String = sha2::Sha256::digest(&self.tokenizer).iter().map(|b| format!("{b:02x}")).collect();
        let pieces: Vec<&[u8]> = self.tokenizer.chunks(64 << 10).collect();
        let last = pieces.len().saturating_sub(1);
        let chunks: Vec<Result<GetTokenizerChunk, Status>> = pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                Ok(GetTokenizerChunk {
                    data: bytes::Bytes::copy_from_slice(piece),
                    sha256: if i == last { digest.clone() } else { String::new() },
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn subscribe_kv_events(
        &self,
        _: Request<SubscribeKvEventsRequest>,
    ) -> Result<Response<Self::SubscribeKvEventsStream>, Status> {
        Err(Status::unimplemented("the recorded engine publishes no KV events"))
    }
}

/// One line on stdout, for the test driving the replay.
async fn say(line: String) {
    let mut out = tokio::io::stdout();
    let _ = out.write_all(format!("{line}\n").as_bytes()).await;
    let _ = out.flush().await;
}

/// The answers one by one; with `hang`, the first one and then nothing (the call stays open);
/// with `slow`, a second apart (a client has time to go away).
fn async_stream(answers: Vec<Result<GenerateResponse, Status>>, misbehave: Misbehave) -> Answers<GenerateResponse> {
    use futures::StreamExt;
    match misbehave {
        Misbehave::Hang => {
            let first = answers.into_iter().take(1);
            Box::pin(futures::stream::iter(first).chain(futures::stream::pending()))
        }
        Misbehave::Slow => Box::pin(futures::stream::iter(answers).then(|answer| async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            answer
        })),
        _ => Box::pin(futures::stream::iter(answers)),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut fixture = None;
    let mut misbehave = Misbehave::None;
    let mut embedder = false;
    let mut no_tokenizer = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fixture" => fixture = args.next(),
            "--embedder" => embedder = true,
            "--no-tokenizer" => no_tokenizer = true,
            "--misbehave" => {
                misbehave = match args.next().as_deref() {
                    Some("unfinished") => Misbehave::Unfinished,
                    Some("garbage") => Misbehave::Garbage,
                    Some("hang") => Misbehave::Hang,
                    Some("flood") => Misbehave::Flood,
                    Some("slow") => Misbehave::Slow,
                    Some("late") => Misbehave::Late,
                    Some("warming") => Misbehave::Warming,
                    other => {
                        return Err(
                            format!("--misbehave {other:?}: unfinished, garbage, hang, flood, slow, late or warming").into()
                        );
                    }
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let dir = std::path::PathBuf::from(fixture.ok_or("--fixture DIR is required")?);
    let exchange: Json = serde_json::from_slice(&std::fs::read(dir.join("exchange.json"))?)?;
    let tokenizer = std::fs::read(dir.join(exchange["tokenizer"]["file"].as_str().unwrap_or("tokenizer.zip")))?;
    let replay = Replay { exchange, tokenizer, misbehave, embedder, no_tokenizer };

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let address = listener.local_addr()?;
    println!("listening on {address}");
    let (reporter, health) = tonic_health::server::health_reporter();
    let standing = if misbehave == Misbehave::Warming {
        tonic_health::ServingStatus::NotServing
    } else {
        tonic_health::ServingStatus::Serving
    };
    reporter.set_service_status("", standing).await;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(VllmEngineServer::new(replay))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await?;
    Ok(())
}
