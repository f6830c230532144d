//! Property tests of the request path that takes client JSON: `parse_json` into the OpenAI request
//! types, `options()` and `CompletionOptions::validate`, the chat template's message handling,
//! `to_generate_request` (the engine's request), and the KServe LLM request parser.
//!
//! Valid requests are generated from a spec and must come back as exactly the options the spec
//! describes; a single wrong or out-of-range field must be the field the error names; arbitrary
//! JSON must give an error naming a field the body has (or a required one) and never a panic.
//! The fuzz target `fuzz/fuzz_targets/openai_request.rs` drives the same entry points. The KServe
//! parser's properties are in `proptests/kserve.rs`.

mod kserve;

use std::sync::{Arc, OnceLock};

use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tritium_backend_api::llm::{GenerateRequest, ModelCard, ModelKind, SamplingOptions};

use crate::BridgeError;
use crate::preprocess::Preprocessor;
use crate::protocol::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Prompt, parse_json};
use crate::sampling::{CompletionLimits, CompletionOptions, MAX_LOGPROBS};

/// Cases per property: the suite stays in seconds on two cores. `PROPTEST_CASES=100000` runs a
/// longer search locally.
fn config() -> ProptestConfig {
    match std::env::var_os("PROPTEST_CASES") {
        Some(_) => ProptestConfig::default(),
        None => ProptestConfig::with_cases(256),
    }
}

const CONTEXT_LENGTH: usize = 64;

/// Every field name the request types know, and a few they do not.
const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "include_usage",
    "logprobs",
    "top_logprobs",
    "echo",
    "user",
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "top_k",
    "repetition_penalty",
    "min_tokens",
    "ignore_eos",
    "stop_token_ids",
    "response_format",
    "type",
    "text",
    "tools",
    "tool_choice",
    "chat_template_kwargs",
    "add_generation_prompt",
    "role",
    "content",
    "encoding_format",
    "dimensions",
    "unknown",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-3i64..30).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3.0f64..3.0).prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        proptest::sample::select(vec!["", "m", "user", "text", "hi there", "\n", "float", "base64", "image_url"])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ]
}

/// JSON whose keys are mostly the request types' own, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![4 => proptest::sample::select(FIELDS).prop_map(str::to_string), 1 => "[a-z_]{0,6}"];
    json_leaf().prop_recursive(3, 32, 5, move |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            vec((key.clone(), inner), 0..5).prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    let key = prop_oneof![6 => proptest::sample::select(FIELDS).prop_map(str::to_string), 1 => "[a-z_]{0,6}"];
    vec((key, json_value()), 0..8).prop_map(|fields| fields.into_iter().collect())
}

/// A chat message: usually a string role and string or text-part content, sometimes not.
fn message() -> impl Strategy<Value = Value> {
    let role =
        prop_oneof![4 => proptest::sample::select(vec!["user", "system", "assistant"]).prop_map(Value::from), 1 => json_leaf()];
    let part = prop_oneof![
        4 => "[a-z ]{0,6}".prop_map(|text| json!({"type": "text", "text": text})),
        1 => json_value(),
    ];
    let content = prop_oneof![
        4 => "[a-z <>{}%]{0,10}".prop_map(Value::from),
        2 => vec(part, 0..3).prop_map(Value::Array),
        1 => json_leaf(),
    ];
    prop_oneof![
        8 => (role, content).prop_map(|(role, content)| json!({"role": role, "content": content})),
        1 => json_value(),
    ]
}

/// A body every endpoint accepts (unknown fields are ignored): model, prompt, messages, input
/// and valid sampling fields.
fn valid_body() -> impl Strategy<Value = Map<String, Value>> {
    let input = prop_oneof![
        "[a-z]{0,6}".prop_map(Value::from),
        vec("[a-z]{0,4}", 1..3).prop_map(Value::from),
        vec(vec(any::<u32>(), 0..3), 1..3).prop_map(Value::from),
    ];
    (completion_spec(), vec(message(), 0..3), input).prop_map(|((mut body, _, _), messages, input)| {
        body.insert("messages".into(), Value::Array(messages));
        body.insert("input".into(), input);
        body
    })
}

/// A request body as bytes: a valid body with a few fields replaced by anything, a generated
/// object, random JSON-ish text, or random bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![6 => proptest::sample::select(FIELDS).prop_map(str::to_string), 1 => "[a-z_]{0,6}"];
    prop_oneof![
        6 => (valid_body(), vec((key, json_value()), 0..3)).prop_map(|(mut body, changes)| {
            body.extend(changes);
            Value::Object(body).to_string().into_bytes()
        }),
        2 => json_object().prop_map(|o| Value::Object(o).to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => "[\\[\\]{}\":,0-9a-z ]{0,40}".prop_map(String::into_bytes),
        1 => vec(any::<u8>(), 0..40),
    ]
}

/// The valid sampling fields of a request, as JSON and as the options they must become.
fn sampling_spec() -> impl Strategy<Value = (Map<String, Value>, CompletionOptions)> {
    let max_tokens = proptest::option::of(1u32..100);
    let unit = proptest::option::of((0u32..=100).prop_map(|p| p as f32 / 50.0));
    let top_p = proptest::option::of((1u32..=100).prop_map(|p| p as f32 / 100.0));
    let penalty = proptest::option::of((0u32..=40).prop_map(|p| p as f32 / 10.0 - 2.0));
    let stop = proptest::option::of(vec("[a-z\n]{1,4}", 0..4));
    let extras = (
        proptest::option::of(-1i64..50),
        proptest::option::of(any::<u64>()),
        proptest::option::of((1u32..30).prop_map(|p| p as f32 / 10.0)),
        proptest::option::of(0u32..=1),
        proptest::option::of(any::<bool>()),
        proptest::option::of(vec(any::<u32>(), 0..3)),
        proptest::option::of(0u32..=MAX_LOGPROBS),
    );
    (max_tokens, unit, top_p, penalty.clone(), penalty, stop, extras).prop_map(
        |(max_tokens, temperature, top_p, presence, frequency, stop, extras)| {
            let (top_k, seed, repetition, min_tokens, ignore_eos, stop_token_ids, logprobs) = extras;
            let mut body = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    body.insert(key.to_string(), value);
                }
            };
            put("max_tokens", max_tokens.map(Value::from));
            put("temperature", temperature.map(Value::from));
            put("top_p", top_p.map(Value::from));
            put("presence_penalty", presence.map(Value::from));
            put("frequency_penalty", frequency.map(Value::from));
            put("stop", stop.clone().map(Value::from));
            put("top_k", top_k.map(Value::from));
            put("seed", seed.map(Value::from));
            put("repetition_penalty", repetition.map(Value::from));
            put("min_tokens", min_tokens.map(Value::from));
            put("ignore_eos", ignore_eos.map(Value::from));
            put("stop_token_ids", stop_token_ids.clone().map(Value::from));
            let options = CompletionOptions {
                max_tokens,
                temperature,
                top_p,
                top_k,
                seed,
                presence_penalty: presence,
                frequency_penalty: frequency,
                repetition_penalty: repetition,
                stop: stop.unwrap_or_default(),
                stop_token_ids: stop_token_ids.unwrap_or_default(),
                ignore_eos: ignore_eos.unwrap_or(false),
                min_tokens,
                logprobs,
                constraint: None,
                prompt_logprobs: None,
                min_p: None,
                logit_bias: Vec::new(),
                priority: None,
                strict_priority: None,
                adapter: None,
                pin: None,
            };
            (body, options)
        },
    )
}

/// A valid `/v1/completions` body and the options it must give.
fn completion_spec() -> impl Strategy<Value = (Map<String, Value>, CompletionOptions, Prompt)> {
    let prompt = prop_oneof!["[a-z ]{0,12}".prop_map(Prompt::Text), vec(any::<u32>(), 1..6).prop_map(Prompt::Tokens),];
    (sampling_spec(), prompt, "[a-z]{1,6}", any::<bool>(), any::<bool>()).prop_map(
        |((mut body, options), prompt, model, as_list, stream)| {
            body.insert("model".into(), model.into());
            let value = match &prompt {
                Prompt::Text(text) if as_list => json!([text]),
                Prompt::Text(text) => json!(text),
                Prompt::Tokens(ids) if as_list => json!([ids]),
                Prompt::Tokens(ids) => json!(ids),
            };
            body.insert("prompt".into(), value);
            body.insert("stream".into(), stream.into());
            if let Some(logprobs) = options.logprobs {
                body.insert("logprobs".into(), logprobs.into());
            }
            (body, options, prompt)
        },
    )
}

/// One field set to a value of the wrong type, for `/v1/completions`.
fn wrong_type() -> impl Strategy<Value = (&'static str, Value)> {
    proptest::sample::select(vec![
        ("model", json!(3)),
        ("model", json!(null)),
        ("prompt", json!(7)),
        ("prompt", json!([])),
        ("prompt", json!([[1], []])),
        ("prompt", json!(["a", 1])),
        ("prompt", json!([-1])),
        ("max_tokens", json!("ten")),
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(1.5)),
        ("stream", json!("yes")),
        ("stream_options", json!({"include_usage": 1})),
        ("logprobs", json!(-1)),
        ("echo", json!("x")),
        ("user", json!(5)),
        ("temperature", json!("hot")),
        ("top_p", json!(true)),
        ("n", json!(-1)),
        ("stop", json!([1])),
        ("stop", json!({"a": "b"})),
        ("seed", json!(-1)),
        ("top_k", json!(1.5)),
        ("min_tokens", json!("2")),
        ("ignore_eos", json!("no")),
        ("stop_token_ids", json!([-1])),
        ("stop_token_ids", json!("1,2")),
    ])
}

/// One option out of its range: parses, but `options()` must reject it, naming the field.
fn out_of_range() -> impl Strategy<Value = (&'static str, Value)> {
    proptest::sample::select(vec![
        ("max_tokens", json!(0)),
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("top_k", json!(-2)),
        ("presence_penalty", json!(2.5)),
        ("frequency_penalty", json!(-3)),
        ("repetition_penalty", json!(0)),
        ("logprobs", json!(MAX_LOGPROBS + 1)),
        ("prompt_logprobs", json!(MAX_LOGPROBS + 1)),
        ("stop", json!([""])),
        ("logit_bias", json!({"42": 500})),
        ("logit_bias", json!({"x": 5})),
        ("min_p", json!(1.5)),
        ("min_tokens", json!(u32::MAX)),
    ])
}

fn card() -> ModelCard {
    ModelCard {
        kind: ModelKind::Generate,
        tokenizer_json: String::new(),
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: vec![],
        add_bos_token: false,
        context_length: CONTEXT_LENGTH,
        max_input_tokens: None,
        source: "proptest".into(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    }
}

/// A word-level tokenizer (one id per whitespace-separated word, unknown words id 0) and a chat
/// template that prints every message, so rendering can be checked exactly.
fn preprocessor() -> &'static Preprocessor {
    static PRE: OnceLock<Preprocessor> = OnceLock::new();
    PRE.get_or_init(|| {
        let tokenizer = json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hi": 1, "there": 2}, "unk_token": "[UNK]"},
        });
        let card = ModelCard {
            tokenizer_json: tokenizer.to_string(),
            chat_template: Some(
                "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
                    .into(),
            ),
            ..card()
        };
        Preprocessor::new(Arc::new(card)).expect("the test tokenizer and template load")
    })
}

/// The keys a field error may name: one the body has, or a required one it lacks.
fn check_named(error: &BridgeError, body: &[u8], required: &[&str]) -> Result<(), TestCaseError> {
    let object = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.as_object().cloned());
    match (error, object) {
        (BridgeError::InvalidField { field, .. }, Some(object)) => {
            prop_assert!(object.contains_key(field) || required.contains(&field.as_str()), "{field} for {object:?}");
        }
        (BridgeError::InvalidBody(_), _) => {}
        (other, object) => prop_assert!(false, "{other:?} for {object:?}"),
    }
    Ok(())
}

/// `validate`'s ranges, restated.
fn check_in_range(o: &CompletionOptions) -> Result<(), TestCaseError> {
    prop_assert!(o.max_tokens.is_none_or(|m| m >= 1));
    prop_assert!(o.temperature.is_none_or(|t| (0.0..=2.0).contains(&t)));
    prop_assert!(o.top_p.is_none_or(|p| p > 0.0 && p <= 1.0));
    prop_assert!(o.top_k.is_none_or(|k| k >= -1));
    prop_assert!(o.presence_penalty.is_none_or(|p| (-2.0..=2.0).contains(&p)));
    prop_assert!(o.frequency_penalty.is_none_or(|p| (-2.0..=2.0).contains(&p)));
    prop_assert!(o.repetition_penalty.is_none_or(|p| p > 0.0 && p.is_finite()));
    prop_assert!(o.stop.iter().all(|s| !s.is_empty()));
    prop_assert!(o.logprobs.is_none_or(|l| l <= MAX_LOGPROBS));
    if let (Some(min), Some(max)) = (o.min_tokens, o.max_tokens) {
        prop_assert!(min <= max);
    }
    Ok(())
}

/// The engine's request: built exactly when the prompt fits, within the context, every option
/// carried over.
fn check_generate(options: &CompletionOptions, prompt: Vec<u32>) -> Result<(), TestCaseError> {
    let limits = CompletionLimits::default();
    let built = options.to_generate_request(prompt.clone(), &card(), Some(16), &limits);
    if let Err(BridgeError::InvalidField { field, .. }) = options.check_limits(&limits) {
        prop_assert!(matches!(&built, Err(BridgeError::InvalidField { field: f, .. }) if *f == field), "{built:?}");
        return Ok(());
    }
    if prompt.is_empty() || prompt.len() >= CONTEXT_LENGTH {
        prop_assert!(matches!(&built, Err(BridgeError::InvalidField { field, .. }) if field == "prompt"), "{built:?}");
        return Ok(());
    }
    let GenerateRequest { prompt: sent, sampling, stop, logprobs, model_version, constraint, prompt_logprobs, priority, .. } =
        built.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let room = (CONTEXT_LENGTH - prompt.len()) as u32;
    let max = options.max_tokens.unwrap_or(16).min(room);
    prop_assert_eq!(sent, prompt);
    prop_assert_eq!(stop.max_tokens, Some(max));
    prop_assert_eq!(stop.min_tokens, options.min_tokens.unwrap_or(0).min(max));
    prop_assert_eq!(&stop.stop_token_ids, &options.stop_token_ids);
    prop_assert_eq!(stop.ignore_eos, options.ignore_eos);
    prop_assert_eq!(logprobs, options.logprobs);
    prop_assert_eq!(model_version, None, "the OpenAI options name no version: the latest runs");
    prop_assert_eq!(constraint, None);
    prop_assert_eq!(prompt_logprobs, options.prompt_logprobs);
    prop_assert_eq!(priority, Default::default(), "no priority named: the default");
    let defaults = SamplingOptions::default();
    prop_assert_eq!(sampling.temperature, options.temperature.unwrap_or(defaults.temperature));
    prop_assert_eq!(sampling.top_p, options.top_p.unwrap_or(defaults.top_p));
    prop_assert_eq!(sampling.top_k, options.top_k.filter(|&k| k > 0).map_or(0, |k| k as usize));
    prop_assert_eq!(sampling.seed, options.seed);
    prop_assert_eq!(sampling.repetition_penalty, options.repetition_penalty.unwrap_or(defaults.repetition_penalty));
    Ok(())
}

/// The prompt ids of a completion: token ids as given, text through the test tokenizer.
fn prompt_ids(prompt: &Prompt) -> Result<Vec<u32>, TestCaseError> {
    match prompt {
        Prompt::Tokens(ids) => Ok(ids.clone()),
        Prompt::Text(text) => preprocessor().encode(text, false).map_err(|e| TestCaseError::fail(e.to_string())),
    }
}

/// Chat messages through the template: exact output when every role and content is a string.
fn check_chat(request: &ChatCompletionRequest) -> Result<(), TestCaseError> {
    let messages = match request.template_messages() {
        Ok(messages) => messages,
        Err(error) => {
            prop_assert!(matches!(&error, BridgeError::InvalidField { field, .. } if field.starts_with("messages")), "{error:?}");
            return Ok(());
        }
    };
    prop_assert!(messages.iter().all(|m| m.get("role").is_some_and(Value::is_string)));
    prop_assert!(messages.iter().all(|m| !m.get("content").is_some_and(Value::is_array)));
    let add = request.add_generation_prompt.unwrap_or(true);
    let extra = request.template_extra(&request.tools().unwrap_or_default());
    let rendered = preprocessor().render_chat(&messages, add, extra.as_ref());
    let texts: Option<String> =
        messages.iter().map(|m| Some(format!("<{}>{}", m.get("role")?.as_str()?, m.get("content")?.as_str()?))).collect();
    match (rendered, texts) {
        (Ok(text), Some(expected)) => prop_assert_eq!(text, expected + if add { "<bot>" } else { "" }),
        (Ok(_), None) => {}
        (Err(error), _) => {
            prop_assert!(matches!(error, BridgeError::Template(_) | BridgeError::InvalidField { .. }), "{error:?}")
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Any body: `/v1/completions` parsing, options and the engine request never panic; errors
    /// name a field the body has (or a required one); accepted options are within range, and
    /// the engine request carries them.
    #[test]
    fn arbitrary_completion_bodies(body in body()) {
        match parse_json::<CompletionRequest>(&body) {
            Err(error) => check_named(&error, &body, &["model", "prompt"])?,
            Ok(request) => match request.options() {
                Err(error) => check_named(&error, &body, &[])?,
                Ok(options) => {
                    check_in_range(&options)?;
                    for prompt in &request.prompt.0 {
                        check_generate(&options, prompt_ids(prompt)?)?;
                    }
                }
            },
        }
    }

    /// Any body for `/v1/chat/completions`: the same, plus the template's view of the messages.
    #[test]
    fn arbitrary_chat_bodies(body in body()) {
        match parse_json::<ChatCompletionRequest>(&body) {
            Err(error) => check_named(&error, &body, &["model", "messages"])?,
            Ok(request) => {
                check_chat(&request)?;
                match request.options() {
                    Err(error) => check_named(&error, &body, &[])?,
                    Ok(options) => check_in_range(&options)?,
                }
            }
        }
    }

    /// A body read straight into its type is what the JSON tree made of it, for every door's
    /// request type, and one the type refuses is decided by the tree (a field repeated before the
    /// rest: the tree keeps the last).
    #[test]
    fn a_body_read_straight_is_the_trees(body in body(), repeated in proptest::option::of((proptest::sample::select(FIELDS), json_value()))) {
        let body = match (repeated, body.strip_prefix(b"{")) {
            (Some((key, value)), Some(rest)) if rest.first().is_some_and(|&c| c != b'}') => {
                [format!("{{{}:{value},", Value::from(key)).as_bytes(), rest].concat()
            }
            _ => body,
        };
        fn same<T: serde::de::DeserializeOwned + std::fmt::Debug>(body: &[u8]) -> Result<(), TestCaseError> {
            let (straight, tree) = (parse_json::<T>(body), crate::protocol::parse_json_tree::<T>(body));
            prop_assert_eq!(format!("{straight:?}"), format!("{tree:?}"), "{}", String::from_utf8_lossy(body));
            Ok(())
        }
        same::<ChatCompletionRequest>(&body)?;
        same::<CompletionRequest>(&body)?;
        same::<EmbeddingRequest>(&body)?;
        same::<crate::protocol::MessagesRequest>(&body)?;
        same::<crate::protocol::ResponsesRequest>(&body)?;
    }

    /// Any body for `/v1/embeddings`: parsed inputs are all texts or all token lists, and
    /// `validate` accepts exactly those with no empty input and no `dimensions`.
    #[test]
    fn arbitrary_embedding_bodies(body in body()) {
        match parse_json::<EmbeddingRequest>(&body) {
            Err(error) => check_named(&error, &body, &["model", "input"])?,
            Ok(request) => {
                let empty = match &request.input {
                    crate::protocol::EmbeddingInput::Texts(texts) => texts.iter().any(String::is_empty),
                    crate::protocol::EmbeddingInput::Tokens(tokens) => tokens.iter().any(Vec::is_empty),
                };
                let valid = request.dimensions.is_none() && !request.input.is_empty() && !empty;
                prop_assert_eq!(request.validate().is_ok(), valid);
            }
        }
    }

    /// A valid completion body parses back to the options it was written from, and its
    /// engine request carries them.
    #[test]
    fn valid_completions_round_trip((body, expected, prompt) in completion_spec()) {
        let bytes = Value::Object(body).to_string().into_bytes();
        let request = parse_json::<CompletionRequest>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&request.prompt.0, &vec![prompt.clone()]);
        let options = request.options().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&options, &expected);
        check_generate(&options, prompt_ids(&prompt)?)?;
    }

    /// One field of the wrong type in a valid body: the error names exactly that field.
    #[test]
    fn a_wrong_type_names_its_field((body, _, _) in completion_spec(), (field, value) in wrong_type()) {
        let mut body = body;
        body.insert(field.into(), value);
        let bytes = Value::Object(body).to_string().into_bytes();
        let error = parse_json::<CompletionRequest>(&bytes).map(|_| ()).expect_err("a wrong type");
        prop_assert!(matches!(&error, BridgeError::InvalidField { field: named, .. } if named == field), "{error:?}");
    }

    /// One option out of range in a valid body: it parses, and `options()` names that field.
    #[test]
    fn an_out_of_range_option_names_its_field((body, _, _) in completion_spec(), (field, value) in out_of_range()) {
        let mut body = body;
        body.insert(field.into(), value);
        if field == "min_tokens" {
            body.insert("max_tokens".into(), json!(1));
        }
        let bytes = Value::Object(body).to_string().into_bytes();
        let request = parse_json::<CompletionRequest>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let error = request.options().map(|_| ()).expect_err("out of range");
        prop_assert!(matches!(&error, BridgeError::InvalidField { field: named, .. } if named == field), "{error:?}");
    }
}
