//! Test fixtures: a tiny byte-level BPE tokenizer built by hand, model cards over it, and a fake
//! [`LlmHub`] whose generator plays scripted tokens.

#![allow(dead_code)]

mod reply;

pub use reply::{post, send};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tritium_backend_api::llm::{
    FinishReason, GenerateError, GenerateEvent, GenerateRequest, GeneratedToken, ModelCard, ModelKind, TokenStream,
};
use tritium_openai_bridge::BridgeError;
use tritium_openai_bridge::metrics::LlmMetrics;
use tritium_openai_bridge::parsers::OutputFormats;
use tritium_openai_bridge::preprocess::Preprocessor;
use tritium_openai_bridge::routes::{ApiSettings, HubModel, LlmHub, openai_routes};

pub const END: &str = "<|end|>";
pub const CHAT_TEMPLATE: &str = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}\
{% if add_generation_prompt %}<|assistant|>{% endif %}";

/// GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are shifted
/// past 255.
fn byte_symbol(byte: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    if printable(byte) {
        return char::from(byte);
    }
    let shifted = (0..byte).filter(|&b| !printable(b)).count() as u32;
    char::from_u32(256 + shifted).expect("valid char")
}

/// Merges on top of the 256 byte symbols (ids 0..=255 are the bytes themselves), so that
/// "Hello world" is two tokens.
const MERGES: [(&str, &str); 9] =
    [("H", "e"), ("l", "l"), ("ll", "o"), ("He", "llo"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld")];

/// The id of `<|end|>`, after the bytes and the merges.
pub const END_ID: u32 = 256 + MERGES.len() as u32;

pub fn tokenizer_json() -> String {
    let mut vocab = serde_json::Map::new();
    for byte in 0..=255u8 {
        vocab.insert(byte_symbol(byte).to_string(), json!(byte));
    }
    for (i, (a, b)) in MERGES.iter().enumerate() {
        vocab.insert(format!("{a}{b}"), json!(256 + i));
    }
    let merges: Vec<Value> = MERGES.iter().map(|(a, b)| json!(format!("{a} {b}"))).collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": END_ID, "content": END, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges}
    })
    .to_string()
}

pub fn card(kind: ModelKind) -> ModelCard {
    ModelCard {
        kind,
        tokenizer_json: tokenizer_json(),
        chat_template: Some(CHAT_TEMPLATE.into()),
        bos_token: None,
        eos_token: Some(END.into()),
        eos_token_ids: vec![END_ID],
        add_bos_token: false,
        context_length: 64,
        max_input_tokens: Some(8),
        source: "test".into(),
        default_completion_tokens: Some(tritium_backend_api::llm::OPENAI_COMPLETION_TOKENS),
        parsers: Default::default(),
    }
}

pub fn preprocessor(kind: ModelKind) -> Arc<Preprocessor> {
    Arc::new(Preprocessor::new(Arc::new(card(kind))).expect("the test tokenizer loads"))
}

/// Token ids of `text`, without special tokens.
pub fn ids(pre: &Preprocessor, text: &str) -> Vec<u32> {
    pre.encode(text, false).expect("encodes")
}

/// The events an engine sends for `tokens`: each with logprob -0.5 and, when asked for, the
/// alternatives `[token, 0]` at -0.5 and -1.5.
pub fn token_events(tokens: &[u32], logprobs: Option<u32>) -> Vec<Result<GenerateEvent, GenerateError>> {
    tokens
        .iter()
        .map(|&id| {
            let top = match logprobs {
                Some(n) => [(id, -0.5), (0, -1.5)].into_iter().take(n as usize).collect(),
                None => Vec::new(),
            };
            Ok(GenerateEvent::Token(GeneratedToken {
                id,
                logprob: logprobs.map(|_| -0.5),
                top_logprobs: top,
                prompt_cached: None,
                prompt_pinned: None,
                stop: false,
            }))
        })
        .collect()
}

/// What the fake engine does with the next generate call.
pub enum Script {
    /// Plays these tokens (cut to `max_tokens`), then finishes.
    Tokens(Vec<u32>, FinishReason),
    /// Refuses, as a full queue does.
    Overloaded,
    /// Sends these events and keeps the sender in [`FakeHub::held`], so a test can watch the
    /// stream's receiver go away or send more.
    Held(Vec<Result<GenerateEvent, GenerateError>>),
}

pub struct FakeHub {
    pub llm: Arc<Preprocessor>,
    pub embedder: Arc<Preprocessor>,
    pub scripts: Mutex<VecDeque<Script>>,
    pub requests: Mutex<Vec<GenerateRequest>>,
    pub held: Mutex<Vec<mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>>>>,
    pub embedded: Mutex<Vec<Vec<Vec<u32>>>>,
    /// The workers `generate_on` was asked for.
    pub workers: Mutex<Vec<String>>,
}

impl FakeHub {
    pub fn new() -> Arc<FakeHub> {
        Arc::new(FakeHub {
            llm: preprocessor(ModelKind::Generate),
            embedder: preprocessor(ModelKind::Embed),
            scripts: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            embedded: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// A hub whose language model's output is parsed in `formats`.
    pub fn with_formats(formats: OutputFormats) -> Arc<FakeHub> {
        // Byte tokens: room for tool calls spelled out one byte at a time.
        let card = ModelCard { context_length: 4096, max_input_tokens: None, ..card(ModelKind::Generate) };
        let llm = Preprocessor::new(Arc::new(card)).expect("loads").with_output_formats(formats);
        Arc::new(FakeHub {
            llm: Arc::new(llm),
            embedder: preprocessor(ModelKind::Embed),
            scripts: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            embedded: Mutex::new(Vec::new()),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// The text of the last prompt the engine was given.
    pub fn last_prompt(&self) -> String {
        self.llm.decode(&self.last_request().prompt).expect("decodes")
    }

    pub fn script(&self, script: Script) {
        self.scripts.lock().push_back(script);
    }

    pub fn last_request(&self) -> GenerateRequest {
        self.requests.lock().last().cloned().expect("a generate call")
    }

    pub fn held_sender(&self) -> mpsc::UnboundedSender<Result<GenerateEvent, GenerateError>> {
        self.held.lock().last().cloned().expect("a held stream")
    }
}

#[async_trait]
impl LlmHub for FakeHub {
    fn models(&self) -> Vec<HubModel> {
        vec![
            HubModel { name: "tiny".into(), kind: ModelKind::Generate, created: 1_700_000_000, adapter_of: None },
            HubModel { name: "embedder".into(), kind: ModelKind::Embed, created: 1_700_000_001, adapter_of: None },
            HubModel { name: "org/tiny".into(), kind: ModelKind::Generate, created: 1_700_000_002, adapter_of: None },
        ]
    }

    fn preprocessor(&self, model: &str) -> Result<Arc<Preprocessor>, BridgeError> {
        match model {
            "tiny" | "org/tiny" => Ok(Arc::clone(&self.llm)),
            "embedder" => Ok(Arc::clone(&self.embedder)),
            _ => Err(BridgeError::ModelNotFound(model.to_string())),
        }
    }

    async fn generate(&self, model: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        self.requests.lock().push(request.clone());
        let script = self.scripts.lock().pop_front().unwrap_or(Script::Tokens(vec![], FinishReason::Stop));
        match script {
            Script::Overloaded => Err(BridgeError::Generate(GenerateError::Overloaded {
                model: model.to_string(),
                running: 4,
                waiting: 8,
                limit: 8,
            })),
            Script::Tokens(mut tokens, mut reason) => {
                if let Some(max) = request.stop.max_tokens
                    && tokens.len() > max as usize
                {
                    tokens.truncate(max as usize);
                    reason = FinishReason::Length;
                }
                let mut events = token_events(&tokens, request.logprobs);
                events.push(Ok(GenerateEvent::Finished {
                    reason,
                    prompt_tokens: request.prompt.len() as u32,
                    completion_tokens: tokens.len() as u32,
                    cached_tokens: 0,
                    queued_for: Duration::from_millis(2),
                }));
                Ok(TokenStream::from_events(events))
            }
            Script::Held(events) => {
                let (sender, receiver) = mpsc::unbounded_channel();
                for event in events {
                    let _ = sender.send(event);
                }
                self.held.lock().push(sender);
                Ok(TokenStream::new(receiver))
            }
        }
    }

    async fn generate_on(&self, model: &str, worker: &str, request: GenerateRequest) -> Result<TokenStream, BridgeError> {
        self.workers.lock().push(worker.to_string());
        let stream = self.generate(model, request).await?;
        Ok(stream.served_by(std::sync::Arc::from(worker)))
    }

    async fn embed(&self, _model: &str, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, BridgeError> {
        self.embedded.lock().push(inputs.clone());
        Ok(inputs.iter().map(|ids| vec![ids.len() as f32, 0.5, -1.0]).collect())
    }
}

pub fn app(hub: &Arc<FakeHub>, metrics: &Arc<LlmMetrics>) -> axum::Router {
    let settings = ApiSettings { anthropic: true, ..ApiSettings::default() };
    openai_routes(Arc::clone(hub) as Arc<dyn LlmHub>, Arc::clone(metrics), settings)
}
