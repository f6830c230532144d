//! Arbitrary bytes as the body of `/v1/completions`, `/v1/chat/completions` and `/v1/embeddings`:
//! parsing, `options()`, the chat messages' template view and the engine request
//! (`to_generate_request`) never panic, every error is a client error, and an engine request
//! stays within the model's context.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::protocol::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Prompt, parse_json};
use tritium_openai_bridge::sampling::CompletionOptions;
use tritium_proto::ErrorCode;
use tritium_worker::llm::{ModelCard, ModelKind};

const CONTEXT_LENGTH: usize = 64;

fuzz_target!(|data: &[u8]| {
    if let Some(request) = client_ok(parse_json::<CompletionRequest>(data)) {
        if let Some(options) = client_ok(request.options()) {
            // Text stands in for its tokens one byte each; the tokenizer is not under test here.
            let prompt = match &request.prompt {
                Prompt::Tokens(ids) => ids.clone(),
                Prompt::Text(text) => text.bytes().map(u32::from).collect(),
            };
            generate(&options, prompt);
        }
    }
    if let Some(request) = client_ok(parse_json::<ChatCompletionRequest>(data)) {
        if let Some(options) = client_ok(request.options()) {
            generate(&options, vec![1, 2, 3]);
        }
        if let Some(messages) = client_ok(request.template_messages()) {
            assert!(messages.iter().all(|m| m.get("role").is_some_and(serde_json::Value::is_string)));
        }
        let _ = request.template_extra();
    }
    if let Some(request) = client_ok(parse_json::<EmbeddingRequest>(data)) {
        client_ok(request.validate());
    }
});

/// The value, or `None` after checking the error is the client's.
fn client_ok<T>(result: Result<T, BridgeError>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            assert_eq!(error.code(), ErrorCode::InvalidArg, "{error}");
            None
        }
    }
}

fn generate(options: &CompletionOptions, prompt: Vec<u32>) {
    let card = ModelCard {
        kind: ModelKind::Generate,
        tokenizer_json: String::new(),
        chat_template: None,
        bos_token: None,
        eos_token: None,
        eos_token_ids: vec![],
        add_bos_token: false,
        context_length: CONTEXT_LENGTH,
        max_input_tokens: None,
        source: "fuzz".into(),
        default_completion_tokens: Some(16),
        parsers: Default::default(),
    };
    let fits = !prompt.is_empty() && prompt.len() < CONTEXT_LENGTH;
    if let Some(request) = client_ok(options.to_generate_request(prompt, &card, Some(16))) {
        assert!(fits);
        let max = request.stop.max_tokens.expect("a limit is always set") as usize;
        assert!(max >= 1 && request.prompt.len() + max <= CONTEXT_LENGTH);
        assert!(request.stop.min_tokens as usize <= max);
    }
}
