use super::*;

fn field_of(error: BridgeError) -> String {
    match error {
        BridgeError::InvalidField { field, .. } => field,
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn prompts_of_every_shape() {
    let parse = |prompt: &str| parse_json::<CompletionRequest>(format!(r#"{{"model":"m","prompt":{prompt}}}"#).as_bytes());
    let one = |prompt| Ok(Prompts(vec![prompt]));
    assert_eq!(parse(r#""hi""#).map(|r| r.prompt), one(Prompt::Text("hi".into())));
    assert_eq!(parse(r#"["hi"]"#).map(|r| r.prompt), one(Prompt::Text("hi".into())));
    assert_eq!(parse("[1, 2]").map(|r| r.prompt), one(Prompt::Tokens(vec![1, 2])));
    assert_eq!(parse("[[3]]").map(|r| r.prompt), one(Prompt::Tokens(vec![3])));
    let two = Prompts(vec![Prompt::Text("a".into()), Prompt::Text("b".into())]);
    assert_eq!(parse(r#"["a", "b"]"#).map(|r| r.prompt), Ok(two));
    let mixed = Prompts(vec![Prompt::Tokens(vec![1]), Prompt::Text("b".into()), Prompt::Tokens(vec![2, 3])]);
    assert_eq!(parse(r#"[[1], "b", [2, 3]]"#).map(|r| r.prompt), Ok(mixed));
    for bad in ["[-1]", "[1.5]", "7", "{}", r#"[["a"]]"#, "[]", "[[]]", r#"["a", 1]"#, "[[1], [-2]]"] {
        assert_eq!(field_of(parse(bad).expect_err(bad)), "prompt", "{bad}");
    }
}

#[test]
fn wrong_types_name_the_field() {
    let cases = [
        (r#"{"model":"m","prompt":"x","max_tokens":"ten"}"#, "max_tokens"),
        (r#"{"model":"m","prompt":"x","stream":"yes"}"#, "stream"),
        (r#"{"model":"m","prompt":"x","temperature":true,"top_p":"z"}"#, "temperature"),
        (r#"{"model":"m","prompt":"x","stop":[1]}"#, "stop"),
        (r#"{"model":"m","prompt":"x","stream_options":{"include_usage":1}}"#, "stream_options"),
        (r#"{"model":3,"prompt":"x"}"#, "model"),
        (r#"{"prompt":"x"}"#, "model"),
        (r#"{"model":"m"}"#, "prompt"),
    ];
    for (body, field) in cases {
        let error = parse_json::<CompletionRequest>(body.as_bytes()).expect_err(body);
        assert!(error.to_string().starts_with(&format!("{field}: ")), "{body}: {error}");
    }
    assert!(matches!(parse_json::<CompletionRequest>(b"{"), Err(BridgeError::InvalidBody(_))));
    assert!(matches!(parse_json::<CompletionRequest>(b"[1]"), Err(BridgeError::InvalidBody(_))));
}

#[test]
fn completion_options() {
    let request: CompletionRequest = parse_json(
        br#"{"model":"m","prompt":"x","max_tokens":5,"stop":"\n","n":1,"logprobs":2,"top_k":3,
             "stream":true,"stream_options":{"include_usage":true},"unknown":{"deep":[1]}}"#,
    )
    .expect("valid");
    let options = request.options().expect("valid");
    assert_eq!(options.max_tokens, Some(5));
    assert_eq!(options.stop, vec!["\n".to_string()]);
    assert_eq!(options.logprobs, Some(2));
    assert_eq!(options.top_k, Some(3));
    assert!(request.stream && request.include_usage());

    let options = |body: &str| parse_json::<CompletionRequest>(body.as_bytes()).and_then(|r| r.options());
    let choices = |body: &str| {
        parse_json::<CompletionRequest>(body.as_bytes())
            .and_then(|r| r.sampling.choices(r.best_of, r.stream, &crate::sampling::CompletionLimits::default()))
    };
    assert_eq!(choices(r#"{"model":"m","prompt":"x","n":2,"best_of":3}"#).expect("valid"), (2, 3));
    assert_eq!(field_of(choices(r#"{"model":"m","prompt":"x","n":0}"#).expect_err("n")), "n");
    assert_eq!(field_of(choices(r#"{"model":"m","prompt":"x","n":2,"best_of":3,"stream":true}"#).expect_err("s")), "best_of");
    let echo = r#"{"model":"m","prompt":"x","echo":true,"stream":true}"#;
    assert_eq!(field_of(options(echo).expect_err("echo")), "echo");
    let scored = r#"{"model":"m","prompt":"x","prompt_logprobs":1,"stream":true}"#;
    assert_eq!(field_of(options(scored).expect_err("stream")), "prompt_logprobs");
    let scored = r#"{"model":"m","prompt":"x","prompt_logprobs":21}"#;
    assert_eq!(field_of(options(scored).expect_err("21")), "prompt_logprobs");
    assert_eq!(field_of(options(r#"{"model":"m","prompt":"x","max_tokens":0}"#).expect_err("0")), "max_tokens");
    let request = parse_json::<CompletionRequest>(br#"{"model":"m","prompt":"x","echo":true,"logprobs":2,"max_tokens":0}"#);
    let request = request.expect("valid");
    assert!(request.prompt_only());
    let scored = request.options().expect("valid");
    assert_eq!((scored.max_tokens, scored.logprobs, scored.prompt_logprobs), (Some(1), Some(2), Some(2)));
    let request = parse_json::<CompletionRequest>(br#"{"model":"m","prompt":"x","prompt_logprobs":3,"max_tokens":5}"#);
    let request = request.expect("valid");
    assert!(!request.prompt_only());
    let scored = request.options().expect("valid");
    assert_eq!((scored.max_tokens, scored.logprobs, scored.prompt_logprobs), (Some(5), None, Some(3)));
    let echo_alone = options(r#"{"model":"m","prompt":"x","echo":true}"#).expect("valid");
    assert_eq!(echo_alone.prompt_logprobs, None);
    assert_eq!(field_of(options(r#"{"model":"m","prompt":"x","temperature":3}"#).expect_err("t")), "temperature");
}

#[test]
fn chat_options_and_messages() {
    let request: ChatCompletionRequest = parse_json(
        br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],
             "max_tokens":9,"max_completion_tokens":7,"logprobs":true,"top_logprobs":2,
             "response_format":{"type":"text"},"tools":[{"type":"function"}],"chat_template_kwargs":{"x":1}}"#,
    )
    .expect("valid");
    let options = request.options().expect("valid");
    assert_eq!(options.max_tokens, Some(7));
    assert_eq!(options.logprobs, Some(2));
    assert_eq!(request.template_messages().expect("valid"), vec![serde_json::json!({"role":"user","content":"ab"})]);
    let error = request.tools().expect_err("a function tool needs its function");
    assert_eq!(field_of(error), "tools[0]");
    let extra = request.template_extra(&Tools::default()).expect("extra");
    assert_eq!(extra.get("x"), Some(&serde_json::json!(1)));
    assert_eq!(extra.get("tools"), None);

    let chat = |body: &str| parse_json::<ChatCompletionRequest>(body.as_bytes());
    let error = chat(r#"{"model":"m","messages":[{"role":"user"}],"top_logprobs":2}"#).and_then(|r| r.options());
    assert_eq!(field_of(error.expect_err("top_logprobs")), "top_logprobs");
    let error = chat(r#"{"model":"m","messages":[],"response_format":{"type":"xml"}}"#).and_then(|r| r.options());
    assert_eq!(field_of(error.expect_err("format")), "response_format");
    let options = chat(r#"{"model":"m","messages":[],"response_format":{"type":"json_object"}}"#).and_then(|r| r.options());
    assert_eq!(options.expect("valid").constraint, Some(tritium_backend_api::llm::Constraint::JsonObject));
    let error = chat(r#"{"model":"m","messages":[{"content":"x"}]}"#).and_then(|r| r.template_messages());
    assert_eq!(field_of(error.expect_err("role")), "messages[0].role");
    let error = chat(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#)
        .and_then(|r| r.template_messages());
    assert_eq!(field_of(error.expect_err("image")), "messages[0].content");
    assert_eq!(field_of(chat(r#"{"model":"m","messages":"hi"}"#).expect_err("messages")), "messages");
}

#[test]
fn guided_decoding_at_the_top_level_as_vllm_and_dynamo_read_it() {
    use tritium_backend_api::llm::Constraint;
    let chat = |body: &str| parse_json::<ChatCompletionRequest>(body.as_bytes()).and_then(|r| r.options());
    let options = chat(r#"{"model":"m","messages":[],"guided_regex":"a+"}"#).expect("valid");
    assert_eq!(options.constraint, Some(Constraint::Regex("a+".into())));
    let completion = parse_json::<CompletionRequest>(br#"{"model":"m","prompt":"p","guided_choice":["x","y"]}"#);
    assert_eq!(completion.and_then(|r| r.options()).expect("valid").constraint, Some(Constraint::Choice(vec!["x".into(), "y".into()])));
    let twice = chat(r#"{"model":"m","messages":[],"guided_regex":"a+","response_format":{"type":"json_object"}}"#);
    assert_eq!(field_of(twice.expect_err("with response_format")), "response_format");
    let twice = chat(r#"{"model":"m","messages":[],"guided_regex":"a+","nvext":{"guided_choice":["a"]}}"#);
    assert_eq!(field_of(twice.expect_err("with nvext")), "nvext");
    let two = chat(r#"{"model":"m","messages":[],"guided_regex":"a+","guided_choice":["a"]}"#);
    assert_eq!(field_of(two.expect_err("two at the top")), "guided_json");
    assert_eq!(field_of(chat(r#"{"model":"m","messages":[],"guided_json":3}"#).expect_err("schema")), "guided_json");
    let pattern = chat(r#"{"model":"m","messages":[],"guided_regex":"a","guided_whitespace_pattern":" "}"#);
    assert_eq!(field_of(pattern.expect_err("whitespace")), "guided_whitespace_pattern");
}

#[test]
fn embedding_inputs() {
    let parse = |input: &str| parse_json::<EmbeddingRequest>(format!(r#"{{"model":"m","input":{input}}}"#).as_bytes());
    assert_eq!(parse(r#""a""#).map(|r| r.input), Ok(EmbeddingInput::Texts(vec!["a".into()])));
    assert_eq!(parse(r#"["a","b"]"#).map(|r| r.input), Ok(EmbeddingInput::Texts(vec!["a".into(), "b".into()])));
    assert_eq!(parse("[1,2]").map(|r| r.input), Ok(EmbeddingInput::Tokens(vec![vec![1, 2]])));
    assert_eq!(parse("[[1],[2,3]]").map(|r| r.input), Ok(EmbeddingInput::Tokens(vec![vec![1], vec![2, 3]])));
    assert_eq!(field_of(parse(r#"[1,"a"]"#).expect_err("mixed")), "input");
    assert_eq!(field_of(parse("[]").and_then(|r| r.validate()).expect_err("none")), "input");
    assert_eq!(field_of(parse(r#"["a",""]"#).and_then(|r| r.validate()).expect_err("empty")), "input[1]");
    let request = parse_json::<EmbeddingRequest>(br#"{"model":"m","input":"a","dimensions":8}"#).expect("parses");
    assert_eq!(field_of(request.validate().expect_err("dimensions")), "dimensions");
    let request = parse_json::<EmbeddingRequest>(br#"{"model":"m","input":"a","encoding_format":"base64"}"#);
    assert_eq!(request.map(|r| r.encoding_format), Ok(Some(EncodingFormat::Base64)));
    let error = parse_json::<EmbeddingRequest>(br#"{"model":"m","input":"a","encoding_format":"int8"}"#);
    assert_eq!(field_of(error.expect_err("format")), "encoding_format");
}

/// Found by the proptest `arbitrary_chat_bodies`: `options()` validated
/// `max_completion_tokens` under the name `max_tokens`, a field the client did not send.
#[test]
fn chat_max_completion_tokens_error_names_its_field() {
    let request =
        parse_json::<ChatCompletionRequest>(br#"{"model":"m","messages":[],"max_completion_tokens":0}"#).expect("parses");
    assert_eq!(field_of(request.options().expect_err("zero tokens")), "max_completion_tokens");
}

#[test]
fn a_body_is_an_object_and_a_repeated_field_keeps_its_last_value() {
    // serde reads a struct from an array too; a body never is one.
    let error = parse_json::<EmbeddingRequest>(br#"["tiny", "hello", null, null, null]"#).expect_err("an array");
    assert_eq!(error.to_string(), "the request body must be a JSON object");
    let request = parse_json::<EmbeddingRequest>(br#"{"model": "first", "input": "hi", "model": "last"}"#).expect("valid");
    assert_eq!(request.model, "last");
    let error = parse_json::<EmbeddingRequest>(br#"{"model": "tiny", "input": "hi", "dimensions": "many"}"#).expect_err("a string");
    assert_eq!(field_of(error), "dimensions");
}
