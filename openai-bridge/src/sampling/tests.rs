use tritium_backend_api::llm::ModelKind;

use super::*;

fn card(context_length: usize) -> ModelCard {
    ModelCard {
        kind: ModelKind::Generate,
        tokenizer_json: String::new(),
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: vec![],
        add_bos_token: false,
        context_length,
        max_input_tokens: None,
        source: "test".into(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    }
}

fn field_of(error: BridgeError) -> String {
    match error {
        BridgeError::InvalidField { field, .. } => field,
        other => panic!("expected InvalidField, got {other:?}"),
    }
}

#[test]
fn ranges_name_the_field() {
    let cases: Vec<(CompletionOptions, &str)> = vec![
        (CompletionOptions { max_tokens: Some(0), ..Default::default() }, "max_tokens"),
        (CompletionOptions { temperature: Some(2.5), ..Default::default() }, "temperature"),
        (CompletionOptions { temperature: Some(f32::NAN), ..Default::default() }, "temperature"),
        (CompletionOptions { top_p: Some(0.0), ..Default::default() }, "top_p"),
        (CompletionOptions { top_p: Some(1.01), ..Default::default() }, "top_p"),
        (CompletionOptions { top_k: Some(-2), ..Default::default() }, "top_k"),
        (CompletionOptions { presence_penalty: Some(-2.1), ..Default::default() }, "presence_penalty"),
        (CompletionOptions { frequency_penalty: Some(2.1), ..Default::default() }, "frequency_penalty"),
        (CompletionOptions { repetition_penalty: Some(0.0), ..Default::default() }, "repetition_penalty"),
        (CompletionOptions { stop: vec![String::new()], ..Default::default() }, "stop"),
        (CompletionOptions { logprobs: Some(21), ..Default::default() }, "logprobs"),
        (CompletionOptions { min_tokens: Some(5), max_tokens: Some(4), ..Default::default() }, "min_tokens"),
    ];
    for (options, field) in cases {
        assert_eq!(field_of(options.validate().expect_err(field)), field);
    }
    let fine = CompletionOptions {
        max_tokens: Some(1),
        temperature: Some(0.0),
        top_p: Some(1.0),
        top_k: Some(-1),
        presence_penalty: Some(-2.0),
        frequency_penalty: Some(2.0),
        repetition_penalty: Some(1.3),
        stop: vec!["x".into(); 16],
        logprobs: Some(20),
        ..Default::default()
    };
    assert_eq!(fine.validate(), Ok(()));
    assert_eq!(fine.check_limits(&CompletionLimits::default()), Ok(()));
}

#[test]
fn the_servers_bounds_on_stopping_conditions_are_its_own() {
    let limits =
        CompletionLimits { max_stop_strings: 2, max_stop_string_bytes: 4, max_stop_token_ids: 3, max_prompts: 2, max_choices: 2 };
    let cases = [
        (CompletionOptions { stop: vec!["x".into(); 3], ..Default::default() }, "stop"),
        (CompletionOptions { stop: vec!["12345".into()], ..Default::default() }, "stop"),
        (CompletionOptions { stop_token_ids: vec![1; 4], ..Default::default() }, "stop_token_ids"),
    ];
    for (options, field) in cases {
        assert_eq!(options.validate(), Ok(()), "{field} is within OpenAI's ranges");
        assert_eq!(field_of(options.check_limits(&limits).expect_err(field)), field);
        let error = options.to_generate_request(vec![1], &card(10), None, &limits).expect_err(field);
        assert_eq!(field_of(error), field);
    }
    let at_the_bounds = CompletionOptions { stop: vec!["1234".into(); 2], stop_token_ids: vec![1; 3], ..Default::default() };
    assert_eq!(at_the_bounds.check_limits(&limits), Ok(()));
    let defaults = CompletionLimits::default();
    assert!(CompletionOptions { stop: vec!["x".into(); 17], ..Default::default() }.check_limits(&defaults).is_err());
    assert!(CompletionOptions { stop_token_ids: vec![1; 65], ..Default::default() }.check_limits(&defaults).is_err());
}

#[test]
fn generate_request_fills_defaults_and_caps_max_tokens() {
    let options = CompletionOptions { top_k: Some(-1), stop_token_ids: vec![7], ..Default::default() };
    let request = options.to_generate_request(vec![1, 2, 3], &card(10), None, &CompletionLimits::default()).expect("valid");
    assert_eq!(request.prompt, vec![1, 2, 3]);
    assert_eq!(request.sampling, SamplingOptions::default());
    assert_eq!(request.stop.max_tokens, Some(7));
    assert_eq!(request.stop.stop_token_ids, vec![7]);
    assert_eq!(request.logprobs, None);

    let request = options.to_generate_request(vec![1, 2, 3], &card(10), Some(16), &CompletionLimits::default()).expect("valid");
    assert_eq!(request.stop.max_tokens, Some(7));
    let request = options.to_generate_request(vec![1, 2, 3], &card(100), Some(16), &CompletionLimits::default()).expect("valid");
    assert_eq!(request.stop.max_tokens, Some(16));

    let options = CompletionOptions {
        max_tokens: Some(5),
        temperature: Some(0.0),
        top_k: Some(40),
        seed: Some(9),
        min_tokens: Some(2),
        logprobs: Some(3),
        ignore_eos: true,
        ..Default::default()
    };
    let request = options.to_generate_request(vec![1], &card(100), Some(16), &CompletionLimits::default()).expect("valid");
    assert_eq!(request.stop.max_tokens, Some(5));
    assert_eq!(request.stop.min_tokens, 2);
    assert!(request.stop.ignore_eos);
    assert_eq!(request.sampling.temperature, 0.0);
    assert_eq!(request.sampling.top_k, 40);
    assert_eq!(request.sampling.seed, Some(9));
    assert_eq!(request.logprobs, Some(3));
}

#[test]
fn prompts_must_fit() {
    let options = CompletionOptions::default();
    let error = options.to_generate_request(vec![], &card(10), None, &CompletionLimits::default()).expect_err("empty");
    assert_eq!(field_of(error), "prompt");
    let error = options.to_generate_request(vec![0; 10], &card(10), None, &CompletionLimits::default()).expect_err("too long");
    assert_eq!(error.to_string(), "prompt: the prompt has 10 tokens; the model's context length is 10");
}

fn params(items: &[(&str, ParamValue)]) -> Parameters {
    items.iter().map(|(name, value)| (name.to_string(), value.clone())).collect()
}

#[test]
fn kserve_parameters_accept_every_sensible_type() {
    let options = CompletionOptions::from_kserve_parameters(&params(&[
        ("max_tokens", ParamValue::Double(32.0)),
        ("temperature", ParamValue::String("0.5".into())),
        ("top_p", ParamValue::Double(0.9)),
        ("top_k", ParamValue::Int64(-1)),
        ("seed", ParamValue::Uint64(u64::MAX)),
        ("presence_penalty", ParamValue::Int64(1)),
        ("frequency_penalty", ParamValue::String("-0.5".into())),
        ("repetition_penalty", ParamValue::Double(1.1)),
        ("stop", ParamValue::String(r#"["\n\n", "END"]"#.into())),
        ("stop_token_ids", ParamValue::String("[2, 3]".into())),
        ("ignore_eos", ParamValue::String("true".into())),
        ("min_tokens", ParamValue::String("4".into())),
        ("logprobs", ParamValue::Uint64(2)),
        ("min_p", ParamValue::Double(0.05)),
        ("logit_bias", ParamValue::String(r#"{"7": -100, "9": 2.5}"#.into())),
        ("triton_enable_empty_final_response", ParamValue::Bool(true)),
        ("sequence_id", ParamValue::Uint64(7)),
        ("priority", ParamValue::Uint64(2)),
    ]))
    .expect("valid");
    assert_eq!(
        options,
        CompletionOptions {
            max_tokens: Some(32),
            temperature: Some(0.5),
            top_p: Some(0.9),
            top_k: Some(-1),
            seed: Some(u64::MAX),
            presence_penalty: Some(1.0),
            frequency_penalty: Some(-0.5),
            repetition_penalty: Some(1.1),
            stop: vec!["\n\n".into(), "END".into()],
            stop_token_ids: vec![2, 3],
            ignore_eos: true,
            min_tokens: Some(4),
            logprobs: Some(2),
            constraint: None,
            prompt_logprobs: None,
            min_p: Some(0.05),
            logit_bias: vec![(7, -100.0), (9, 2.5)],
            priority: Some(i64::from(i32::MIN) + 2),
            strict_priority: None,
            adapter: None,
            pin: None,
        }
    );
    let single = CompletionOptions::from_kserve_parameters(&params(&[("stop", ParamValue::String("###".into()))]));
    assert_eq!(single.expect("valid").stop, vec!["###".to_string()]);
}

#[test]
fn kserve_parameters_of_the_wrong_type_name_the_parameter() {
    let cases = [
        ("max_tokens", ParamValue::Double(1.5)),
        ("max_tokens", ParamValue::Int64(-1)),
        ("max_tokens", ParamValue::Bool(true)),
        ("temperature", ParamValue::String("hot".into())),
        ("temperature", ParamValue::Bool(false)),
        ("seed", ParamValue::Int64(-3)),
        ("ignore_eos", ParamValue::String("yes".into())),
        ("stop", ParamValue::Int64(3)),
        ("stop", ParamValue::String("[1]".into())),
        ("stop_token_ids", ParamValue::String("[-1]".into())),
        ("stop_token_ids", ParamValue::Double(2.0)),
    ];
    for (name, value) in cases {
        let error =
            CompletionOptions::from_kserve_parameters(&params(&[(name, value.clone())])).expect_err(&format!("{name} {value:?}"));
        assert_eq!(field_of(error), name, "{value:?}");
    }
}
