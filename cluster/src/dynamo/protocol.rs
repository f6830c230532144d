//! The messages inside Dynamo's frames: the request's control message and body
//! (`PreprocessedRequest` for workers that take tokens), and the response stream's prologue,
//! items (`Annotated<LLMEngineOutput>`) and control words. Tritium always sends JSON, which every
//! Dynamo 1.x worker answers in kind.

use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tritium_backend_api::llm::{Constraint, FinishReason};

pub use crate::discovery::dynamo_target::PayloadCodec;

/// Structured output as Dynamo's `GuidedDecodingOptions`, which its workers hand their engine's
/// guided decoding (a JSON schema, any JSON object, a regex, a choice, or a grammar as written).
pub(super) fn guided_decoding(constraint: &Constraint) -> Json {
    match constraint {
        Constraint::JsonObject => json!({"json": {"type": "object"}}),
        Constraint::JsonSchema(schema) => json!({"json": serde_json::from_str::<Json>(schema).unwrap_or_else(|_| schema.clone().into())}),
        Constraint::Regex(regex) => json!({"regex": regex}),
        Constraint::Choice(choices) => json!({"choice": choices}),
        Constraint::Lark(grammar) => json!({"grammar": grammar}),
    }
}

/// The control message heading a request (its JSON): who asks, and where the worker calls home.
pub fn control_message(request_id: &str, response_address: &str, subject: &str, codec: PayloadCodec) -> Vec<u8> {
    // Written from borrowed fields (a `json!` tree cost two dozen allocations a request).
    #[derive(Serialize)]
    struct CallHomeInfo<'a> {
        address: &'a str,
        subject: &'a str,
        context: &'a str,
        stream_type: &'static str,
    }
    #[derive(Serialize)]
    struct ConnectionInfo {
        transport: &'static str,
        info: String,
    }
    #[derive(Serialize)]
    struct ControlMessage<'a> {
        id: &'a str,
        request_type: &'static str,
        response_type: &'static str,
        payload_codec: &'static str,
        connection_info: ConnectionInfo,
    }
    let info = CallHomeInfo { address: response_address, subject, context: request_id, stream_type: "response" };
    let message = ControlMessage {
        id: request_id,
        request_type: "single_in",
        response_type: "many_out",
        payload_codec: codec.name(),
        connection_info: ConnectionInfo { transport: "tcp_server", info: serde_json::to_string(&info).unwrap_or_default() },
    };
    let mut bytes = Vec::with_capacity(384);
    // Writing these fields into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut bytes, &message);
    bytes
}

/// The request headers Dynamo's TCP client sends (their JSON), with the W3C `traceparent` of a
/// traced request (Dynamo's workers continue the trace from it).
pub fn headers(endpoint_path: &str, request_id: &str, traceparent: Option<&str>) -> String {
    #[derive(Serialize)]
    struct Headers<'a> {
        #[serde(rename = "x-endpoint-path")]
        endpoint_path: &'a str,
        #[serde(rename = "request-id")]
        request_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        traceparent: Option<&'a str>,
    }
    serde_json::to_string(&Headers { endpoint_path, request_id, traceparent }).unwrap_or_default()
}

/// What a Dynamo prefill worker's first item hands its decode worker: Dynamo's `prefill_result`
/// (the engine's `disaggregated_params`, the prompt's cached-token details) and the prefill
/// worker's instance id.
pub fn prefill_result(item: &Json, prefill_worker: u64) -> Json {
    let field = |pointer: &str| item.pointer(pointer).cloned().unwrap_or(Json::Null);
    json!({
        "prefill_result": {
            "disaggregated_params": field("/disaggregated_params"),
            "prompt_tokens_details": field("/completion_usage/prompt_tokens_details"),
        },
        "prefill_worker_id": prefill_worker,
    })
}

/// A decode worker's request carrying a prefill worker's handoff, as Dynamo's frontend sends it.
pub fn with_handoff(body: &mut Json, handoff: Json) {
    let Json::Object(mut handoff) = handoff else { return };
    if let Some(result) = handoff.remove("prefill_result") {
        body["prefill_result"] = result;
    }
    if let Some(bootstrap) = handoff.remove("bootstrap_info") {
        body["bootstrap_info"] = bootstrap;
    }
    if let Some(worker) = handoff.remove("prefill_worker_id") {
        body["routing"] = json!({"prefill_worker_id": worker});
    }
}

/// A body in the worker's codec: JSON text, or msgpack maps with named fields (floats as 32-bit,
/// the width of every float of Dynamo's request).
pub fn encode_body(body: &Json, codec: PayloadCodec) -> Vec<u8> {
    match codec {
        PayloadCodec::Json => serde_json::to_vec(body).unwrap_or_default(),
        PayloadCodec::Msgpack => {
            let mut bytes = Vec::new();
            write_msgpack(body, &mut bytes);
            bytes
        }
    }
}

/// A generation request's body: `body`'s fields with `token_ids` first, the prompt written from
/// its ids straight into the bytes (a long prompt is most of the request, and a JSON array of it
/// would cost more than the rest of the request path).
pub fn encode_request(body: &Json, token_ids: &[u32], codec: PayloadCodec) -> Vec<u8> {
    let Json::Object(fields) = body else { return encode_body(body, codec) };
    let fields = fields.iter().filter(|(key, _)| key.as_str() != "token_ids");
    match codec {
        PayloadCodec::Json => {
            let mut bytes = token_ids_head(token_ids, 0, codec);
            for (key, value) in fields {
                bytes.push(b',');
                let _ = serde_json::to_writer(&mut bytes, key);
                bytes.push(b':');
                let _ = serde_json::to_writer(&mut bytes, value);
            }
            bytes.push(b'}');
            bytes
        }
        PayloadCodec::Msgpack => {
            let fields: Vec<_> = fields.collect();
            let mut bytes = token_ids_head(token_ids, fields.len(), codec);
            for (key, value) in fields {
                write_msgpack_field(key, value, &mut bytes);
            }
            bytes
        }
    }
}

/// A generation body's start, written from the prompt's ids: in JSON `{"token_ids":[…]` (the
/// rest follows from `,`); in msgpack the map's header for `token_ids` and `fields` more entries,
/// then `token_ids`.
pub(super) fn token_ids_head(token_ids: &[u32], fields: usize, codec: PayloadCodec) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    match codec {
        PayloadCodec::Json => {
            let mut bytes = Vec::with_capacity(512 + token_ids.len() * 6);
            bytes.extend_from_slice(b"{\"token_ids\":");
            let _ = serde_json::to_writer(&mut bytes, token_ids);
            bytes
        }
        PayloadCodec::Msgpack => {
            use rmp::encode;
            let mut bytes = Vec::with_capacity(512 + token_ids.len() * 3);
            let _ = encode::write_map_len(&mut bytes, u32::try_from(fields.saturating_add(1)).unwrap_or(u32::MAX));
            let _ = encode::write_str(&mut bytes, "token_ids");
            let _ = encode::write_array_len(&mut bytes, u32::try_from(token_ids.len()).unwrap_or(u32::MAX));
            write_msgpack_ids(&mut bytes, token_ids);
            bytes
        }
    }
}

/// Each id as msgpack's smallest unsigned integer (what `rmp::encode::write_uint` writes), through
/// a buffer on the stack: a prompt's ids are most of a request, and a `Vec` push per byte cost more
/// than the rest of the encoding.
fn write_msgpack_ids(out: &mut Vec<u8>, ids: &[u32]) {
    use std::hint::select_unpredictable as select;
    const CHUNK: usize = 1024;
    // Each id is stored as 8 bytes and the cursor moves by its width, both chosen without a branch
    // (prompts mix 1- and 3-byte ids at random, and a mispredicted branch cost more than the rest);
    // 3 bytes of slack past the widest last id.
    let mut buffer = [0u8; CHUNK * 5 + 3];
    for chunk in ids.chunks(CHUNK) {
        let mut at = 0;
        for &id in chunk {
            let wide = u64::from(id);
            let (over_byte, over_short) = (id >= 0x100, id >= 0x1_0000);
            let tagged = select(
                over_short,
                0xce | u64::from(id.to_be()) << 8,
                select(over_byte, 0xcd | u64::from((id as u16).to_be()) << 8, 0xcc | wide << 8),
            );
            let small = id < 0x80;
            let word = select(small, wide, tagged);
            let width = 1 + usize::from(!small) + usize::from(over_byte) + 2 * usize::from(over_short);
            buffer[at..at + 8].copy_from_slice(&word.to_le_bytes());
            at += width;
        }
        out.extend_from_slice(&buffer[..at]);
    }
}

/// `value` in msgpack, written straight into `out` (no intermediate tree: a long prompt's ids are
/// written once). Writing into a Vec cannot fail.
fn write_msgpack(value: &Json, out: &mut Vec<u8>) {
    use rmp::encode;
    let _ = match value {
        Json::Null => encode::write_nil(out).map_err(drop),
        Json::Bool(b) => encode::write_bool(out, *b).map_err(drop),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => encode::write_uint(out, u).map(drop).map_err(drop),
            (_, Some(i), _) => encode::write_sint(out, i).map(drop).map_err(drop),
            (_, _, Some(f)) => encode::write_f32(out, f as f32).map_err(drop),
            _ => encode::write_nil(out).map_err(drop),
        },
        Json::String(text) => encode::write_str(out, text).map_err(drop),
        Json::Array(items) => {
            let _ = encode::write_array_len(out, u32::try_from(items.len()).unwrap_or(u32::MAX));
            items.iter().for_each(|item| write_msgpack(item, out));
            Ok(())
        }
        Json::Object(map) => {
            let _ = encode::write_map_len(out, u32::try_from(map.len()).unwrap_or(u32::MAX));
            map.iter().for_each(|(key, item)| write_msgpack_field(key, item, out));
            Ok(())
        }
    };
}

/// One field of a map: its name, then its value.
fn write_msgpack_field(key: &str, value: &Json, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_str(out, key);
    match (key, value) {
        ("bootstrap_info", Json::Object(info)) => write_bootstrap_info(info, out),
        _ => write_msgpack(value, out),
    }
}

/// `bootstrap_info` as Dynamo's workers read it in msgpack: its `handoff_id` (a UUID, text in
/// JSON) as its 16 bytes, the one binary field of a request.
fn write_bootstrap_info(info: &serde_json::Map<String, Json>, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_map_len(out, u32::try_from(info.len()).unwrap_or(u32::MAX));
    for (key, item) in info {
        let _ = rmp::encode::write_str(out, key);
        match (key.as_str(), item.as_str().and_then(uuid_bytes)) {
            ("handoff_id", Some(bytes)) => {
                let _ = rmp::encode::write_bin(out, &bytes);
            }
            _ => write_msgpack(item, out),
        }
    }
}

/// A UUID's 16 bytes from its hyphenated text.
fn uuid_bytes(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.bytes().filter(|&c| c != b'-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// A body the worker sent in `codec`, as JSON.
pub fn decode_body(bytes: &[u8], codec: PayloadCodec) -> Result<Json, String> {
    match codec {
        PayloadCodec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        PayloadCodec::Msgpack => {
            let value = rmpv::decode::read_value(&mut &bytes[..]).map_err(|e| e.to_string())?;
            from_msgpack(&value).ok_or_else(|| "a msgpack value JSON cannot hold".to_string())
        }
    }
}

/// A frame's body read into `T`, as `serde_json::from_value(decode_body(..))` reads it, without the
/// value tree between (one per streamed token). A msgpack body `rmp_serde` cannot read into `T`
/// directly (a binary field, which JSON holds as an array of numbers) goes through the tree.
pub fn decode_item<T: serde::de::DeserializeOwned>(bytes: &[u8], codec: PayloadCodec) -> Result<T, String> {
    match codec {
        PayloadCodec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
        PayloadCodec::Msgpack => rmp_serde::from_slice(bytes)
            .or_else(|_| decode_body(bytes, codec).and_then(|body| serde_json::from_value(body).map_err(|e| e.to_string()))),
    }
}

fn from_msgpack(value: &rmpv::Value) -> Option<Json> {
    use rmpv::Value as M;
    Some(match value {
        M::Nil => Json::Null,
        M::Boolean(b) => Json::Bool(*b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::from(u),
            (_, Some(i)) => Json::from(i),
            _ => return None,
        },
        M::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number),
        M::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        M::String(text) => Json::String(text.as_str()?.to_string()),
        M::Binary(bytes) => Json::Array(bytes.iter().map(|b| Json::from(*b)).collect()),
        M::Array(items) => Json::Array(items.iter().map(from_msgpack).collect::<Option<_>>()?),
        M::Map(entries) => {
            Json::Object(entries.iter().map(|(k, v)| Some((k.as_str()?.to_string(), from_msgpack(v)?))).collect::<Option<_>>()?)
        }
        M::Ext(..) => return None,
    })
}

/// The call-home handshake: the first frame on a response connection.
#[derive(Debug, Deserialize)]
pub struct Handshake {
    pub subject: String,
    #[serde(default)]
    pub stream_type: Option<String>,
}

/// The prologue: whether the worker's engine took the request.
#[derive(Debug, Deserialize)]
pub struct Prologue {
    #[serde(default)]
    pub error: Option<String>,
}

/// One response-stream frame's body: a generation's output by default (an embedding call's
/// items carry [`super::embed::EmbeddingsOutput`]).
#[derive(Debug, Deserialize)]
pub struct StreamItem<T = EngineOutput> {
    #[serde(default = "Option::default")]
    pub data: Option<Annotated<T>>,
    #[serde(default)]
    pub complete_final: bool,
}

#[derive(Debug, Deserialize)]
pub struct Annotated<T = EngineOutput> {
    #[serde(default = "Option::default")]
    pub data: Option<T>,
    #[serde(default)]
    pub event: Option<String>,
    /// A string, or a structured error in later versions.
    #[serde(default)]
    pub error: Option<Json>,
    #[serde(default)]
    pub comment: Option<Json>,
}

impl<T> Annotated<T> {
    /// The error this item carries, if any.
    pub fn error_text(&self) -> Option<String> {
        match (&self.error, self.event.as_deref()) {
            (Some(Json::String(text)), _) => Some(text.clone()),
            (Some(Json::Null) | None, Some("error")) => {
                Some(self.comment.as_ref().map(Json::to_string).unwrap_or_else(|| "the worker reported an error".into()))
            }
            (Some(Json::Null) | None, _) => None,
            (Some(other), _) => {
                Some(other.get("message").and_then(Json::as_str).map(str::to_owned).unwrap_or_else(|| other.to_string()))
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EngineOutput {
    #[serde(default)]
    pub token_ids: Vec<u32>,
    #[serde(default)]
    pub finish_reason: Option<Json>,
    #[serde(default)]
    pub completion_usage: Option<Usage>,
    #[serde(default)]
    pub log_probs: Option<Vec<f64>>,
    /// Per token, its most likely alternatives (Dynamo's `TopLogprobs`).
    #[serde(default)]
    pub top_logprobs: Option<Vec<Vec<TopLogprob>>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f64,
}

#[derive(Debug, Default, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u32>,
    #[serde(default)]
    pub completion_tokens: Option<u32>,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptTokensDetails {
    #[serde(default)]
    pub cached_tokens: Option<u32>,
}

/// What a finish reason means here: a normal end, or the engine's error.
pub enum Finish {
    Done(FinishReason),
    Error(String),
}

/// `"eos" | "stop" | "length" | "cancelled" | "content_filter" | {"error": "…"}`.
pub fn finish_of(reason: &Json) -> Finish {
    match reason {
        Json::String(text) => match text.as_str() {
            "length" => Finish::Done(FinishReason::Length),
            "cancelled" => Finish::Done(FinishReason::Cancelled),
            _ => Finish::Done(FinishReason::Stop),
        },
        Json::Object(object) => {
            Finish::Error(object.get("error").and_then(Json::as_str).map(str::to_owned).unwrap_or_else(|| reason.to_string()))
        }
        _ => Finish::Done(FinishReason::Stop),
    }
}

/// The control words sent and received as header-only frames on a response connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Stop,
    Kill,
    Sentinel,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tritium_backend_api::llm::GenerateRequest;

    use super::*;

    #[test]
    fn the_mockers_items_read_as_captured() {
        let item: StreamItem = serde_json::from_str(
            r#"{"data":{"data":{"token_ids":[1099],"tokens":null,"text":null,"output_type":"text","finish_reason":null,
            "completion_usage":{"prompt_tokens":7,"completion_tokens":1,"total_tokens":8,
            "prompt_tokens_details":{"audio_tokens":null,"cached_tokens":0}}}},"complete_final":false}"#,
        )
        .unwrap();
        let annotated = item.data.unwrap();
        assert_eq!(annotated.error_text(), None);
        let output = annotated.data.unwrap();
        assert_eq!(output.token_ids, vec![1099]);
        assert_eq!(output.completion_usage.unwrap().prompt_tokens, Some(7));
        let last: StreamItem = serde_json::from_str(r#"{"complete_final":true}"#).unwrap();
        assert!(last.complete_final && last.data.is_none());
        assert!(matches!(finish_of(&json!("length")), Finish::Done(FinishReason::Length)));
        assert!(matches!(finish_of(&json!("eos")), Finish::Done(FinishReason::Stop)));
        assert!(matches!(finish_of(&json!({"error": "boom"})), Finish::Error(e) if e == "boom"));
        assert_eq!(serde_json::to_string(&Control::Stop).unwrap(), "\"stop\"");
        assert_eq!(serde_json::from_str::<Control>("\"sentinel\"").unwrap(), Control::Sentinel);
    }

    #[test]
    fn ids_are_written_as_rmp_writes_them() {
        let mut ids = vec![0, 1, 0x7f, 0x80, 0xff, 0x100, 0x1234, 0xffff, 0x1_0000, 49_151, 151_935, u32::MAX];
        // Past one chunk of the stack buffer, ids of every width mixed.
        ids.extend((0..3000u32).map(|i| i.wrapping_mul(2_654_435_761) >> (i % 32)));
        let mut ours = Vec::new();
        write_msgpack_ids(&mut ours, &ids);
        let mut theirs = Vec::new();
        for &id in &ids {
            rmp::encode::write_uint(&mut theirs, u64::from(id)).unwrap();
        }
        assert_eq!(ours, theirs);
    }

    #[test]
    fn msgpack_bodies_round_trip_as_the_json_they_stand_for() {
        let body = json!({"token_ids": [1, 70000, 4294967295u64], "offset": -3, "temperature": 0.5, "seed": null, "stop": ["x"], "flag": true});
        let bytes = encode_body(&body, PayloadCodec::Msgpack);
        assert_eq!(decode_body(&bytes, PayloadCodec::Msgpack).unwrap(), body);
        // An array of two holding one element.
        assert!(decode_body(b"\x92\x01", PayloadCodec::Msgpack).is_err());
    }

    #[test]
    fn items_read_straight_as_through_the_value_tree() {
        let captured = json!({"data": {"data": {"token_ids": [1099, 70000], "tokens": null, "text": null, "output_type": "text",
            "finish_reason": {"error": "boom"}, "completion_usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8,
            "prompt_tokens_details": {"audio_tokens": null, "cached_tokens": 0}}, "log_probs": [-0.5]}}, "complete_final": false});
        for codec in [PayloadCodec::Json, PayloadCodec::Msgpack] {
            let bytes = encode_body(&captured, codec);
            let straight: StreamItem = decode_item(&bytes, codec).unwrap();
            let through: StreamItem = serde_json::from_value(decode_body(&bytes, codec).unwrap()).unwrap();
            assert_eq!(format!("{straight:?}"), format!("{through:?}"), "{codec:?}");
        }
        // A binary field rmp_serde cannot read into JSON goes through the tree, as an array of numbers.
        let mut bytes = Vec::new();
        rmpv::encode::write_value(
            &mut bytes,
            &rmpv::Value::Map(vec![("complete_final".into(), false.into()), ("extra".into(), rmpv::Value::Binary(vec![1, 2]))]),
        )
        .unwrap();
        let item: Json = decode_item(&bytes, PayloadCodec::Msgpack).unwrap();
        assert_eq!(item, json!({"complete_final": false, "extra": [1, 2]}));
        assert!(decode_item::<StreamItem>(b"\x92\x01", PayloadCodec::Msgpack).is_err());
    }

    #[test]
    fn a_request_written_with_its_prompt_reads_as_the_body_with_token_ids() {
        let request = GenerateRequest { prompt: vec![0, 127, 128, 65535, 65536, u32::MAX], ..Default::default() };
        let mut body = super::super::preprocessed::PreprocessedRequest::new("tiny", &request, 5, &[2]).tree();
        body["routing"] = json!({"prefill_worker_id": 7});
        let mut expected = body.clone();
        expected["token_ids"] = json!(request.prompt);
        for codec in [PayloadCodec::Json, PayloadCodec::Msgpack] {
            let bytes = encode_request(&body, &request.prompt, codec);
            assert_eq!(decode_body(&bytes, codec).unwrap(), expected, "{codec:?}");
        }
        assert_eq!(
            decode_body(&encode_request(&body, &[], PayloadCodec::Json), PayloadCodec::Json).unwrap()["token_ids"],
            json!([])
        );
    }

    #[test]
    fn a_request_names_its_call_home_as_a_json_string() {
        let control: Json = serde_json::from_slice(&control_message("r1", "127.0.0.1:9", "s1", PayloadCodec::Json)).unwrap();
        assert_eq!(
            control,
            json!({"id": "r1", "request_type": "single_in", "response_type": "many_out", "payload_codec": "json",
                   "connection_info": {"transport": "tcp_server", "info": control["connection_info"]["info"]}})
        );
        let plain: Json = serde_json::from_str(&headers("/p", "r1", None)).unwrap();
        assert_eq!(plain, json!({"x-endpoint-path": "/p", "request-id": "r1"}));
        let traced: Json = serde_json::from_str(&headers("/p", "r1", Some("00-ab-cd-01"))).unwrap();
        assert_eq!(traced["traceparent"], "00-ab-cd-01");
        let info: Json = serde_json::from_str(control["connection_info"]["info"].as_str().unwrap()).unwrap();
        assert_eq!(info, json!({"address": "127.0.0.1:9", "subject": "s1", "context": "r1", "stream_type": "response"}));
        let request = GenerateRequest { prompt: vec![1, 2], ..Default::default() };
        let body = super::super::preprocessed::PreprocessedRequest::new("tiny", &request, 5, &[2]).tree();
        assert_eq!(body["stop_conditions"]["max_tokens"], 5);
        assert_eq!(body["sampling_options"]["temperature"], 1.0);
        assert!(body["sampling_options"]["top_p"].is_null());
    }
}
