//! The worker's side of Dynamo's TCP request plane: request frames on a listener, each
//! acknowledged in order, its `PreprocessedRequest` run on the local repository and its tokens
//! sent back over a response connection the worker opens to the frontend (handshake, prologue,
//! data frames, `complete_final`, sentinel). The frontend's `stop` or `kill` on that connection,
//! or its closing, cancels the generation.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tritium_backend_api::llm::{
    Constraint, FinishReason, GenerateError, GenerateEvent, GenerateRequest, SamplingOptions, StopOptions,
};
use tritium_worker::WorkerClient;

use super::home::{CallHomeInfo, call_home};
use crate::dynamo::codec::{FrameError, RequestFrame, TwoPart, ack_frame};
use crate::dynamo::tls::{DynamoTls, PlaneStream};

/// What one read of a frontend's request connection takes in at most; a longer payload (a long
/// prompt's ids) is read past it.
const REQUEST_READ_BUFFER: usize = 16 * 1024;

/// What the listener serves.
#[derive(Clone)]
pub struct Served {
    pub worker: Arc<dyn WorkerClient>,
    /// The endpoint paths request frames may name (one per model).
    pub endpoint_paths: Vec<String>,
    pub max_message_size: usize,
    /// Where each prompt's blocks are learned under Dynamo's names, for the KV events.
    pub names: Arc<super::kv_publish::BlockNames>,
    pub block_size: usize,
    pub tls: DynamoTls,
}

/// Accepts frontends' connections until `stop`.
pub async fn serve(listener: TcpListener, served: Served, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (served, stop) = (served.clone(), stop.clone());
                tokio::spawn(async move {
                    if let Some(stream) = served.tls.accept(stream, peer, "Dynamo request plane").await {
                        connection(stream, served, stop).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accepting a Dynamo frontend's connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The control message heading a request, as much of it as the worker acts on.
#[derive(Debug, Deserialize)]
struct Control0 {
    #[serde(default)]
    payload_codec: Option<String>,
    connection_info: ConnectionInfo,
}

#[derive(Debug, Deserialize)]
struct ConnectionInfo {
    info: String,
}


async fn connection(stream: PlaneStream, served: Served, stop: CancellationToken) {
    let (reader, writer) = tokio::io::split(stream);
    // A request frame comes in four parts after its prefix; one read takes in a short request whole.
    let mut reader = tokio::io::BufReader::with_capacity(REQUEST_READ_BUFFER, reader);
    let mut writer = BufWriter::new(writer);
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return,
            frame = RequestFrame::read(&mut reader, served.max_message_size) => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Closed) => return,
            Err(e) => {
                tracing::warn!("a Dynamo request frame is refused and its connection closed: {e}");
                return;
            }
        };
        let ack = match accept(&frame, &served) {
            Ok((home, Job::Generate { model, request })) => {
                if let Ok(request) = &request {
                    served.names.learn(&model, &request.prompt, served.block_size);
                }
                tokio::spawn(answer(served.worker.clone(), model, request, home));
                String::new()
            }
            Ok((home, Job::Tensor(request))) => {
                tokio::spawn(super::tensor_serve::answer(served.worker.clone(), request, home));
                String::new()
            }
            Ok((home, Job::Embed { model, inputs })) => {
                tokio::spawn(answer_embedding(served.worker.clone(), model, inputs, home));
                String::new()
            }
            Err(refusal) => refusal,
        };
        if writer.write_all(&ack_frame(&ack)).await.is_err() || writer.flush().await.is_err() {
            return;
        }
    }
}

/// What a request frame asks for.
enum Job {
    /// A `PreprocessedRequest` to a language model, or why it cannot run (an option the engine
    /// does not have: refused on the response stream, as an engine's error).
    Generate { model: String, request: Result<GenerateRequest, String> },
    /// An `NvCreateTensorRequest` to a tensor model, or the reason it cannot run.
    Tensor(Result<tritium_worker::ValidInferRequest, String>),
    /// A `PreprocessedEmbeddingRequest`: one token list per input.
    Embed { model: String, inputs: Vec<Vec<u32>> },
}

/// The request a frame carries, or the acknowledgement refusing it.
fn accept(frame: &RequestFrame, served: &Served) -> Result<(CallHomeInfo, Job), String> {
    if !served.endpoint_paths.contains(&frame.endpoint_path) {
        return Err(format!("Server unavailable: no endpoint {}", frame.endpoint_path));
    }
    let message =
        TwoPart::decode(frame.payload.clone(), served.max_message_size).map_err(|e| format!("Server unavailable: {e}"))?;
    let control: Control0 =
        serde_json::from_slice(&message.header).map_err(|e| format!("Server unavailable: not a request control message: {e}"))?;
    if control.payload_codec.as_deref().is_some_and(|codec| codec != "json") {
        return Err("Server unavailable: this worker takes JSON payloads (its record's request_plane_codec)".into());
    }
    let mut home: CallHomeInfo = serde_json::from_str(&control.connection_info.info)
        .map_err(|e| format!("Server unavailable: not a response-stream address: {e}"))?;
    home.tls = served.tls.clone();
    let body: Json = serde_json::from_slice(&message.body).map_err(|e| format!("Server unavailable: not a request body: {e}"))?;
    if body.get("tensors").is_some() {
        return Ok((home, Job::Tensor(super::tensor_serve::validated(&body, served.worker.as_ref()))));
    }
    if let Some((model, inputs)) = embedding_request(&body) {
        return Ok((home, Job::Embed { model, inputs }));
    }
    let (model, request) = generate_request(&body).ok_or("Server unavailable: not a PreprocessedRequest")?;
    Ok((home, Job::Generate { model, request }))
}

/// A `PreprocessedEmbeddingRequest` (its `token_ids` a list of token lists).
fn embedding_request(body: &Json) -> Option<(String, Vec<Vec<u32>>)> {
    let inputs = body.get("token_ids")?.as_array()?;
    if !inputs.first().is_some_and(Json::is_array) {
        return None;
    }
    let token = |t: &Json| t.as_u64().and_then(|t| u32::try_from(t).ok());
    let inputs = inputs.iter().map(|input| input.as_array()?.iter().map(token).collect()).collect::<Option<Vec<Vec<u32>>>>()?;
    Some((body.get("model")?.as_str()?.to_string(), inputs))
}

/// Embeds the inputs and sends the vectors home as Dynamo's vLLM worker does: one item of
/// `EmbeddingsEngineOutput`, each vector base64 of little-endian `f32`s.
async fn answer_embedding(worker: Arc<dyn WorkerClient>, model: String, inputs: Vec<Vec<u32>>, home: CallHomeInfo) {
    use base64::Engine as _;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let embedded = worker.embed(&model, inputs).await;
    let refused = embedded.as_ref().err().map(ToString::to_string);
    let Some((mut writer, _)) = call_home(&home, refused).await else { return };
    let Ok(vectors) = embedded else { return };
    let encoded: Vec<String> = vectors
        .iter()
        .map(|vector| {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            base64::engine::general_purpose::STANDARD.encode(bytes)
        })
        .collect();
    let item = json!({"embeddings": encoded, "prompt_tokens": tokens, "total_tokens": tokens});
    if writer.item(json!({ "data": item })).await {
        writer.finish().await;
    }
}

/// Most alternatives a token's log-probabilities may list (OpenAI's `top_logprobs` bound).
const MAX_LOGPROBS: u32 = 20;

/// A `PreprocessedRequest` as Tritium's generation request (`None`: not one; the request an
/// error when it asks for what Tritium's engines do not do).
fn generate_request(body: &Json) -> Option<(String, Result<GenerateRequest, String>)> {
    let model = body.get("model")?.as_str()?.to_string();
    let prompt = body
        .get("token_ids")?
        .as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect::<Option<Vec<u32>>>()?;
    let stop = body.get("stop_conditions").cloned().unwrap_or(Json::Null);
    let sampling = body.get("sampling_options").cloned().unwrap_or(Json::Null);
    let number = |map: &Json, key: &str| map.get(key).and_then(Json::as_f64);
    let ids = |key: &str| -> Vec<u32> {
        stop.get(key)
            .and_then(Json::as_array)
            .map(|ids| ids.iter().filter_map(|t| t.as_u64()?.try_into().ok()).collect())
            .unwrap_or_default()
    };
    let defaults = SamplingOptions::default();
    let constraint = match sampling.get("guided_decoding").filter(|g| !g.is_null()) {
        Some(guided) => match guided_constraint(guided) {
            Ok(constraint) => constraint,
            Err(why) => return Some((model, Err(why))),
        },
        None => None,
    };
    let output = body.get("output_options").cloned().unwrap_or(Json::Null);
    let logprobs = output.get("logprobs").and_then(Json::as_u64).map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    if logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
        return Some((model, Err(format!("logprobs asks for more than {MAX_LOGPROBS} alternatives a token"))));
    }
    if output.get("prompt_logprobs").is_some_and(|n| !n.is_null()) {
        return Some((model, Err("prompt_logprobs is not served by this worker".into())));
    }
    let request = GenerateRequest {
        prompt,
        sampling: SamplingOptions {
            temperature: number(&sampling, "temperature").map_or(defaults.temperature, |v| v as f32),
            top_p: number(&sampling, "top_p").map_or(defaults.top_p, |v| v as f32),
            top_k: sampling.get("top_k").and_then(Json::as_i64).filter(|k| *k > 0).map_or(0, |k| k as usize),
            seed: sampling.get("seed").and_then(Json::as_u64),
            presence_penalty: number(&sampling, "presence_penalty").map_or(0.0, |v| v as f32),
            frequency_penalty: number(&sampling, "frequency_penalty").map_or(0.0, |v| v as f32),
            repetition_penalty: number(&sampling, "repetition_penalty").map_or(1.0, |v| v as f32),
            min_p: number(&sampling, "min_p").map_or(0.0, |v| v as f32),
            ..defaults
        },
        stop: StopOptions {
            max_tokens: stop.get("max_tokens").and_then(Json::as_u64).and_then(|n| u32::try_from(n).ok()),
            stop_token_ids: [ids("stop_token_ids_hidden"), ids("stop_token_ids")].concat(),
            ignore_eos: stop.get("ignore_eos").and_then(Json::as_bool).unwrap_or(false),
            min_tokens: stop.get("min_tokens").and_then(Json::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
        },
        constraint,
        logprobs,
        ..Default::default()
    };
    Some((model, Ok(request)))
}

/// Dynamo's `GuidedDecodingOptions` as the engine's constraint: `json` (a schema, or its text),
/// `regex`, `choice`, `grammar` (Lark, the engine's grammar dialect); `backend` names a library
/// and changes nothing here. A whitespace pattern or structural tag the engine cannot follow is
/// refused rather than dropped.
fn guided_constraint(guided: &Json) -> Result<Option<Constraint>, String> {
    let given = |key: &str| guided.get(key).filter(|v| !v.is_null());
    for unsupported in ["whitespace_pattern", "structural_tag"] {
        if given(unsupported).is_some() {
            return Err(format!("guided decoding's {unsupported} is not served by this worker"));
        }
    }
    let named: Vec<&str> = ["json", "regex", "choice", "grammar"].into_iter().filter(|k| given(k).is_some()).collect();
    if named.len() > 1 {
        return Err(format!("guided decoding names {} at once; give one", named.join(" and ")));
    }
    let malformed = |key: &str| format!("guided decoding's {key} is malformed");
    Ok(match named.first().copied() {
        Some("json") => match given("json") {
            Some(Json::String(text)) => Some(Constraint::JsonSchema(text.clone())),
            Some(schema @ (Json::Object(_) | Json::Bool(_))) => Some(Constraint::JsonSchema(schema.to_string())),
            _ => return Err(malformed("json")),
        },
        Some("regex") => Some(Constraint::Regex(given("regex").and_then(Json::as_str).ok_or_else(|| malformed("regex"))?.into())),
        Some("choice") => {
            let choices = given("choice").and_then(Json::as_array).ok_or_else(|| malformed("choice"))?;
            let choices: Option<Vec<String>> = choices.iter().map(|c| c.as_str().map(str::to_string)).collect();
            Some(Constraint::Choice(choices.filter(|c| !c.is_empty()).ok_or_else(|| malformed("choice"))?))
        }
        Some(_) => Some(Constraint::Lark(given("grammar").and_then(Json::as_str).ok_or_else(|| malformed("grammar"))?.into())),
        None => None,
    })
}

/// Runs the request and streams its answer home.
async fn answer(worker: Arc<dyn WorkerClient>, model: String, request: Result<GenerateRequest, String>, home: CallHomeInfo) {
    // A request the engine refuses is answered with an error item, which Dynamo's frontend gives
    // the client; a generation that cannot start (no such model, the engine gone) is refused in
    // the prologue, so that the frontend may try another worker.
    let (started, invalid) = match request {
        Ok(request) => match worker.generate(&model, request).await {
            Ok(tokens) => (Ok(tokens), None),
            Err(tritium_worker::WorkerError::Generate { source: GenerateError::InvalidRequest(why), .. }) => {
                (Err(None), Some(why))
            }
            Err(e) => (Err(Some(e.to_string())), None),
        },
        Err(why) => (Err(None), Some(why)),
    };
    let refused = started.as_ref().err().cloned().flatten();
    let Some((mut writer, cancelled)) = call_home(&home, refused).await else { return };
    if let Some(why) = invalid {
        tracing::info!(model, "a request is refused: {why}");
        if writer.item(json!({"data": {"token_ids": [], "finish_reason": {"error": why}}})).await {
            writer.finish().await;
        }
        return;
    }
    let Ok(mut tokens) = started else { return };
    loop {
        let event = tokio::select! {
            _ = cancelled.cancelled() => return,
            event = tokens.next() => event,
        };
        let item = match event {
            // The token that ended the sequence is no output (it comes only with logprobs asked for).
            Some(Ok(GenerateEvent::Token(token))) if token.stop => continue,
            Some(Ok(GenerateEvent::Token(token))) => token_item(&token),
            Some(Ok(GenerateEvent::Finished { reason, prompt_tokens, completion_tokens, cached_tokens, .. })) => {
                let reason = match reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                    FinishReason::Cancelled => "cancelled",
                };
                json!({"token_ids": [], "finish_reason": reason, "completion_usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {"cached_tokens": cached_tokens}}})
            }
            Some(Ok(GenerateEvent::PromptLogprobs(_))) => continue,
            Some(Err(e)) => json!({"token_ids": [], "finish_reason": {"error": e.to_string()}}),
            None => break,
        };
        if !writer.item(json!({ "data": item })).await {
            return;
        }
    }
    writer.finish().await;
}

/// One token as Dynamo's `LLMEngineOutput`, with its log-probability and alternatives when the
/// request asked for them (`output_options.logprobs`).
fn token_item(token: &tritium_backend_api::llm::GeneratedToken) -> Json {
    let mut item = json!({"token_ids": [token.id]});
    if let Some(logprob) = token.logprob {
        item["log_probs"] = json!([logprob]);
        let alternatives: Vec<Json> = token
            .top_logprobs
            .iter()
            .zip(1u32..)
            .map(|(&(id, logprob), rank)| json!({"rank": rank, "token_id": id, "token": null, "logprob": logprob}))
            .collect();
        item["top_logprobs"] = json!([alternatives]);
    }
    item
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_preprocessed_request_as_dynamos_frontend_sends_it() {
        let body = json!({"model":"tiny","token_ids":[466,673,79],
            "stop_conditions":{"max_tokens":5,"stop":null,"stop_token_ids_hidden":[2],"min_tokens":null,"ignore_eos":null},
            "sampling_options":{"temperature":0.7,"top_p":null,"top_k":null,"seed":3},
            "output_options":{},"eos_token_ids":[2],"annotations":[]});
        let (model, request) = generate_request(&body).unwrap();
        let request = request.unwrap();
        assert_eq!(model, "tiny");
        assert_eq!(request.prompt, vec![466, 673, 79]);
        assert_eq!(request.stop.max_tokens, Some(5));
        assert_eq!(request.stop.stop_token_ids, vec![2]);
        assert_eq!(request.sampling.seed, Some(3));
        assert!((request.sampling.temperature - 0.7).abs() < 1e-6);
        assert_eq!(request.sampling.top_p, 1.0);
        assert!(generate_request(&json!({"model": "tiny", "token_ids": [-1]})).is_none());
    }

    #[test]
    fn guided_decoding_and_logprobs_reach_the_engine_or_are_refused() {
        let with = |sampling: Json, output: Json| {
            let body = json!({"model": "m", "token_ids": [1], "sampling_options": sampling, "output_options": output});
            generate_request(&body).unwrap().1
        };
        let request = with(json!({"guided_decoding": {"json": {"type": "object"}, "backend": "xgrammar"}}), json!({"logprobs": 2})).unwrap();
        assert_eq!(request.constraint, Some(Constraint::JsonSchema(r#"{"type":"object"}"#.into())));
        assert_eq!(request.logprobs, Some(2));
        let choice = with(json!({"guided_decoding": {"choice": ["a", "b"]}}), Json::Null).unwrap();
        assert_eq!(choice.constraint, Some(Constraint::Choice(vec!["a".into(), "b".into()])));
        let regex = with(json!({"guided_decoding": {"regex": "a+"}}), Json::Null).unwrap();
        assert_eq!(regex.constraint, Some(Constraint::Regex("a+".into())));
        assert!(with(json!({"guided_decoding": {"regex": "a", "choice": ["a"]}}), Json::Null).unwrap_err().contains("at once"));
        assert!(with(json!({"guided_decoding": {"whitespace_pattern": " "}}), Json::Null).unwrap_err().contains("whitespace_pattern"));
        assert!(with(json!({"guided_decoding": {"choice": []}}), Json::Null).unwrap_err().contains("choice"));
        assert!(with(Json::Null, json!({"prompt_logprobs": 1})).unwrap_err().contains("prompt_logprobs"));
        assert!(with(Json::Null, json!({"logprobs": 21})).unwrap_err().contains("20"));
        assert_eq!(with(Json::Null, json!({"logprobs": 20})).unwrap().logprobs, Some(20));
        let token = tritium_backend_api::llm::GeneratedToken {
            id: 7,
            logprob: Some(-0.5),
            top_logprobs: vec![(7, -0.5), (9, -1.5)],
            prompt_cached: None,
            prompt_pinned: None,
            stop: false,
        };
        let item = token_item(&token);
        assert_eq!(item["log_probs"], json!([-0.5]));
        assert_eq!(item["top_logprobs"][0][1], json!({"rank": 2, "token_id": 9, "token": null, "logprob": -1.5}));
    }
}
