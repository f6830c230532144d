//! Dynamo's `PreprocessedRequest` as Tritium sends it: typed, so that a generation's body is
//! written straight from the request's fields (built as a `json!` tree it cost three dozen
//! allocations a request, and a walk to write them), or as a JSON tree where a prefill handoff
//! adds fields to it.

use serde::Serialize;
use serde_json::Value as Json;
use tritium_backend_api::llm::GenerateRequest;

use super::protocol::{PayloadCodec, guided_decoding, token_ids_head};

/// The fields of Dynamo's `PreprocessedRequest` Tritium fills in, in the order its frontend
/// writes them; `token_ids` is written first, from the prompt, by [`encode`](Self::encode).
#[derive(Debug, Serialize)]
pub struct PreprocessedRequest<'a> {
    model: &'a str,
    stop_conditions: StopConditions<'a>,
    sampling_options: SamplingOptions,
    output_options: OutputOptions,
    eos_token_ids: &'a [u32],
    annotations: [u32; 0],
}

#[derive(Debug, Serialize)]
struct StopConditions<'a> {
    max_tokens: u32,
    stop_token_ids_hidden: Option<&'a [u32]>,
    min_tokens: Option<u32>,
    ignore_eos: Option<bool>,
}

#[derive(Debug, Serialize)]
struct SamplingOptions {
    temperature: f32,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    min_p: Option<f32>,
    guided_decoding: Option<Json>,
}

#[derive(Debug, Serialize)]
struct OutputOptions {
    logprobs: Option<u32>,
}

impl<'a> PreprocessedRequest<'a> {
    /// A Tritium generation as Dynamo's request. `max_tokens` is always set: Dynamo's workers may
    /// require it (the mocker does) and a frontend fills it in.
    pub fn new(model: &'a str, request: &'a GenerateRequest, max_tokens: u32, eos_token_ids: &'a [u32]) -> Self {
        let (sampling, stop) = (&request.sampling, &request.stop);
        let positive = |value: f32| (value != 0.0).then_some(value);
        PreprocessedRequest {
            model,
            stop_conditions: StopConditions {
                max_tokens,
                stop_token_ids_hidden: (!stop.stop_token_ids.is_empty()).then_some(stop.stop_token_ids.as_slice()),
                min_tokens: (stop.min_tokens > 0).then_some(stop.min_tokens),
                ignore_eos: stop.ignore_eos.then_some(true),
            },
            sampling_options: SamplingOptions {
                temperature: sampling.temperature,
                top_p: (sampling.top_p < 1.0).then_some(sampling.top_p),
                top_k: (sampling.top_k > 0).then_some(sampling.top_k),
                seed: sampling.seed,
                presence_penalty: positive(sampling.presence_penalty),
                frequency_penalty: positive(sampling.frequency_penalty),
                repetition_penalty: (sampling.repetition_penalty != 1.0).then_some(sampling.repetition_penalty),
                min_p: positive(sampling.min_p),
                guided_decoding: request.constraint.as_ref().map(guided_decoding),
            },
            output_options: OutputOptions { logprobs: request.logprobs },
            eos_token_ids,
            annotations: [],
        }
    }

    /// The request as a JSON tree, for a caller that adds fields (a prefill handoff's).
    pub fn tree(&self) -> Json {
        serde_json::to_value(self).unwrap_or(Json::Null)
    }

    /// The body in the worker's codec with `token_ids` first, as
    /// [`encode_request`](super::protocol::encode_request) writes the tree's. In msgpack the bytes
    /// are the same; in JSON a float is written as the `f32` it is (`0.7`, as Dynamo's frontend
    /// writes it), where the tree's `f64` wrote `0.699999988079071`.
    pub fn encode(&self, token_ids: &[u32], codec: PayloadCodec) -> Vec<u8> {
        // Writing into a Vec cannot fail.
        match codec {
            // A grammar's JSON schema may hold floats, which the tree's writer sends as 32-bit.
            PayloadCodec::Msgpack if self.sampling_options.guided_decoding.is_some() => {
                super::protocol::encode_request(&self.tree(), token_ids, codec)
            }
            PayloadCodec::Json => {
                let mut bytes = token_ids_head(token_ids, FIELDS, codec);
                let fields = bytes.len();
                let _ = serde_json::to_writer(&mut bytes, self);
                // The fields' own `{` becomes the comma after the ids.
                if let Some(brace) = bytes.get_mut(fields) {
                    *brace = b',';
                }
                bytes
            }
            PayloadCodec::Msgpack => {
                let mut bytes = token_ids_head(token_ids, FIELDS, codec);
                let fields = bytes.len();
                let _ = self.serialize(&mut rmp_serde::Serializer::new(&mut bytes).with_struct_map());
                // The fields' own map header (a fixmap, one byte) goes: the one above counts them.
                bytes.remove(fields);
                bytes
            }
        }
    }
}

/// How many fields [`PreprocessedRequest`] writes (fewer than 16: its msgpack map header is one byte).
const FIELDS: usize = 6;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;
    use tritium_backend_api::llm::{Constraint, SamplingOptions, StopOptions};

    use super::super::protocol::{decode_body, encode_request};
    use super::*;

    /// A JSON tree with every float read as the `f32` it was written from.
    fn as_f32(value: Json) -> Json {
        match value {
            Json::Number(n) if n.is_f64() => Json::from(n.as_f64().unwrap() as f32),
            Json::Array(items) => Json::Array(items.into_iter().map(as_f32).collect()),
            Json::Object(map) => Json::Object(map.into_iter().map(|(k, v)| (k, as_f32(v))).collect()),
            other => other,
        }
    }

    fn request(
        floats: [f32; 6],
        ints: (usize, Option<u64>, u32, Option<u32>),
        flags: (bool, bool),
        prompt: Vec<u32>,
    ) -> GenerateRequest {
        let [temperature, top_p, presence_penalty, frequency_penalty, repetition_penalty, min_p] = floats;
        GenerateRequest {
            prompt,
            sampling: SamplingOptions {
                temperature,
                top_p,
                top_k: ints.0,
                seed: ints.1,
                presence_penalty,
                frequency_penalty,
                repetition_penalty,
                min_p,
                ..Default::default()
            },
            stop: StopOptions {
                stop_token_ids: if flags.0 { vec![7, 300, 70_000] } else { Vec::new() },
                ignore_eos: flags.1,
                min_tokens: ints.2,
                ..Default::default()
            },
            logprobs: ints.3,
            ..Default::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The typed body is the tree's: the same msgpack bytes, and the same JSON up to how a
        /// float is written.
        #[test]
        fn the_typed_body_is_the_trees(
            floats in prop::array::uniform6(prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..2.0]),
            top_k in prop_oneof![Just(0usize), 1usize..100],
            seed in prop::option::of(any::<u64>()),
            min_tokens in 0u32..5,
            logprobs in prop::option::of(0u32..20),
            flags in (any::<bool>(), any::<bool>()),
            prompt in prop::collection::vec(prop_oneof![0u32..0x80, 0u32..0x1_0000, any::<u32>()], 0..300),
            max_tokens in any::<u32>(),
        ) {
            let request = request(floats, (top_k, seed, min_tokens, logprobs), flags, prompt);
            let typed = PreprocessedRequest::new("a-model", &request, max_tokens, &[2, 128_001]);
            let tree = typed.tree();
            prop_assert_eq!(typed.encode(&request.prompt, PayloadCodec::Msgpack), encode_request(&tree, &request.prompt, PayloadCodec::Msgpack));
            let json = typed.encode(&request.prompt, PayloadCodec::Json);
            let from_tree = encode_request(&tree, &request.prompt, PayloadCodec::Json);
            prop_assert_eq!(as_f32(decode_body(&json, PayloadCodec::Json).unwrap()), as_f32(decode_body(&from_tree, PayloadCodec::Json).unwrap()));
            // Field order too: Dynamo's workers read a map, but a capture is compared as text.
            let keys = |bytes: &[u8]| decode_body(bytes, PayloadCodec::Json).unwrap().as_object().unwrap().keys().cloned().collect::<Vec<_>>();
            prop_assert_eq!(keys(&json), keys(&from_tree));
        }
    }

    #[test]
    fn floats_go_as_the_f32_they_are_and_a_grammar_as_dynamo_names_it() {
        let mut request = request([0.7, 0.9, 0.0, 0.0, 1.0, 0.0], (0, None, 0, None), (false, false), vec![1, 2]);
        request.constraint = Some(Constraint::Regex("[a-z]+".into()));
        let json =
            String::from_utf8(PreprocessedRequest::new("m", &request, 5, &[2]).encode(&request.prompt, PayloadCodec::Json))
                .unwrap();
        assert!(json.starts_with(r#"{"token_ids":[1,2],"model":"m","stop_conditions":{"max_tokens":5,"#), "{json}");
        assert!(json.contains(r#""temperature":0.7,"top_p":0.9,"#), "{json}");
        assert!(json.contains(r#""guided_decoding":{"regex":"[a-z]+"}"#), "{json}");
        assert!(json.ends_with(r#""eos_token_ids":[2],"annotations":[]}"#), "{json}");
    }
}
