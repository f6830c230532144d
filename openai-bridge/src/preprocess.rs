//! A model's frontend half: its chat template (rendered with minijinja the way Hugging Face's
//! `apply_chat_template` does) and its tokenizer, both from the worker's [`ModelCard`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tritium_backend_api::llm::ModelCard;
//! # use tritium_openai_bridge::preprocess::Preprocessor;
//! # fn demo(card: ModelCard) -> Result<(), tritium_openai_bridge::BridgeError> {
//! let pre = Preprocessor::new(Arc::new(card))?;
//! let messages = [serde_json::json!({"role": "user", "content": "Hi!"})];
//! let prompt = pre.render_chat(&messages, true, None)?;
//! let ids = pre.encode(&prompt, false)?; // the template already wrote the special tokens
//! # Ok(()) }
//! ```

mod budget;
mod template;

use std::sync::Arc;

use minijinja::Environment;
use minijinja::value::{Serde, Value};
use serde_json::{Map, Value as Json};
use tokenizers::Tokenizer;
use tritium_backend_api::llm::{ModelCard, ModelKind, Vocabulary};

use crate::detokenize::Detokenizer;
use crate::error::BridgeError;
use crate::parsers::{OutputFormats, ToolCallFormat};
use crate::sampling::CompletionLimits;

pub use budget::{
    DEFAULT_MAX_TOKENIZING_BYTES, INLINE_BYTES, PreprocessBudget, PreprocessLimits, PreprocessPermit,
    RENDER_BYTES_PER_INPUT_BYTE, TOKENIZE_BYTES_PER_INPUT_BYTE, set_reclaim,
};

const TEMPLATE: &str = "chat";

pub struct Preprocessor {
    card: Arc<ModelCard>,
    tokenizer: Arc<Tokenizer>,
    /// Holds the chat template under [`TEMPLATE`] when the model has one.
    env: Environment<'static>,
    has_template: bool,
    /// Whether the chat template reads `tool_calls`; if not, calls are written into the text.
    template_reads_tool_calls: bool,
    bos_id: Option<u32>,
    /// How token ids map back to bytes.
    vocabulary: Vocabulary,
    /// Ids a [`Detokenizer`] starts with as already-emitted context (see [`Self::detokenizer`]).
    detokenizer_context: Vec<u32>,
    /// Text longer than this cannot fit the context of a generating model whatever it says: its
    /// longest vocabulary entry times the context length. Checked before tokenizing.
    max_prompt_bytes: Option<usize>,
    /// The server's bounds on a completion's stopping conditions.
    limits: CompletionLimits,
    /// How the server splits reasoning and tool calls out of this model's output.
    formats: OutputFormats,
    /// What rendering and tokenizing may hold at once, shared with the server's other models.
    budget: Arc<PreprocessBudget>,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("source", &self.card.source)
            .field("has_template", &self.has_template)
            .field("byte_level", &self.vocabulary.is_byte_level())
            .finish_non_exhaustive()
    }
}

impl Preprocessor {
    /// Parses the tokenizer and compiles the chat template; either failing is an error here, not
    /// at the first request.
    pub fn new(card: Arc<ModelCard>) -> Result<Preprocessor, BridgeError> {
        let tokenizer: Tokenizer = card
            .tokenizer_json
            .parse()
            .map_err(|e| BridgeError::Tokenizer(format!("cannot load the tokenizer of {}: {e}", card.source)))?;
        let mut env = template::environment();
        let template_reads_tool_calls = card.chat_template.as_deref().is_some_and(|source| source.contains("tool_calls"));
        let has_template = match &card.chat_template {
            Some(source) => {
                env.add_template_owned(TEMPLATE, source.clone()).map_err(|e| BridgeError::Template(template::describe(&e)))?;
                true
            }
            None => false,
        };
        let bos_id = card.bos_token.as_deref().and_then(|text| tokenizer.token_to_id(text));
        let vocabulary = Vocabulary::new(&tokenizer);
        let detokenizer_context = match vocabulary.is_byte_level() {
            true => Vec::new(),
            false => tokenizer.encode("a", false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
        };
        let longest_token = tokenizer.get_vocab(true).keys().map(String::len).max().unwrap_or(1).max(1);
        let max_prompt_bytes = (card.kind == ModelKind::Generate && card.context_length > 0)
            .then(|| longest_token.saturating_mul(card.context_length));
        Ok(Preprocessor {
            max_prompt_bytes,
            limits: CompletionLimits::default(),
            formats: OutputFormats::default(),
            budget: Arc::new(PreprocessBudget::default()),
            card,
            tokenizer: Arc::new(tokenizer),
            env,
            has_template,
            template_reads_tool_calls,
            bos_id,
            vocabulary,
            detokenizer_context,
        })
    }

    /// The same preprocessor, holding completions to `limits` instead of the defaults.
    pub fn with_limits(self, limits: CompletionLimits) -> Preprocessor {
        Preprocessor { limits, ..self }
    }

    pub fn limits(&self) -> &CompletionLimits {
        &self.limits
    }

    /// The same preprocessor, parsing reasoning and tool calls in `formats`.
    pub fn with_output_formats(self, formats: OutputFormats) -> Preprocessor {
        Preprocessor { formats, ..self }
    }

    pub fn output_formats(&self) -> &OutputFormats {
        &self.formats
    }

    /// The same preprocessor, rendering and tokenizing within `budget` (the server shares one
    /// among its models) instead of a budget of its own.
    pub fn with_budget(self, budget: Arc<PreprocessBudget>) -> Preprocessor {
        Preprocessor { budget, ..self }
    }

    pub fn budget(&self) -> &Arc<PreprocessBudget> {
        &self.budget
    }

    /// The special tokens a response's detokenizer must show for its parser to see their
    /// markers (`with_tools`: the request offered tools).
    pub fn marker_tokens(&self, with_tools: bool) -> Vec<u32> {
        self.formats.markers(with_tools).into_iter().filter_map(|marker| self.tokenizer.token_to_id(marker)).collect()
    }

    pub fn card(&self) -> &Arc<ModelCard> {
        &self.card
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Renders OpenAI chat `messages` into the model's prompt text. `extra` adds template
    /// variables (e.g. `tools`, `enable_thinking`); it cannot replace the standard ones.
    pub fn render_chat(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        extra: Option<&Map<String, Json>>,
    ) -> Result<String, BridgeError> {
        if !self.has_template {
            return Err(BridgeError::Unsupported {
                model: self.card.source.clone(),
                what: "chat (it has no chat template)".into(),
            });
        }
        let mut context = extra.cloned().unwrap_or_default();
        // A template that never reads `tool_calls` sees earlier calls as text, in the format the
        // server parses (hermes when none is set: the commonest).
        let calls_as_text = (!self.template_reads_tool_calls).then(|| self.formats.tool_calls.unwrap_or(ToolCallFormat::Hermes));
        context.insert("messages".into(), Json::Array(template::normalize_messages(messages, calls_as_text)?));
        context.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        for (key, token) in [("bos_token", &self.card.bos_token), ("eos_token", &self.card.eos_token)] {
            context.insert(key.into(), token.clone().map_or(Json::String(String::new()), Json::String));
        }
        let chat = self.env.get_template(TEMPLATE).map_err(|e| BridgeError::Template(template::describe(&e)))?;
        chat.render(Value::from(Serde(&context))).map_err(|e| BridgeError::Template(template::describe(&e)))
    }

    /// [`Preprocessor::render_chat`] once the budget has room for it (see [`PreprocessBudget`]).
    pub async fn render_chat_bounded(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        extra: Option<&Map<String, Json>>,
    ) -> Result<String, BridgeError> {
        let bytes = messages.iter().chain(extra.into_iter().flat_map(Map::values)).map(text_bytes).sum();
        let _permit = self.budget.admit("chat", bytes, RENDER_BYTES_PER_INPUT_BYTE).await?;
        self.render_chat(messages, add_generation_prompt, extra)
    }

    /// [`Preprocessor::encode`] once the budget has room for it (see [`PreprocessBudget`]): in
    /// place for a short text, else on the blocking pool, where tokenizing a long one does not
    /// hold a runtime thread (a hop costs more than a short text).
    pub async fn encode_off_runtime(self: &Arc<Self>, text: String, add_special_tokens: bool) -> Result<Vec<u32>, BridgeError> {
        self.fits_context(&text)?;
        self.tokenize_bounded(text, add_special_tokens, |ids| ids).await
    }

    /// The number of tokens of `text` (Anthropic's `count_tokens`): like
    /// [`Preprocessor::encode_off_runtime`], but a text too long for the model's context is
    /// counted all the same.
    pub async fn count_tokens(self: &Arc<Self>, text: String, add_special_tokens: bool) -> Result<usize, BridgeError> {
        // The ids are dropped where they were made: a blocking thread's memory is handed back there.
        self.tokenize_bounded(text, add_special_tokens, |ids| ids.len()).await
    }

    async fn tokenize_bounded<T: Send + 'static>(
        self: &Arc<Self>,
        text: String,
        add_special_tokens: bool,
        keep: fn(Vec<u32>) -> T,
    ) -> Result<T, BridgeError> {
        let permit = self.budget.admit("prompt", text.len(), TOKENIZE_BYTES_PER_INPUT_BYTE).await?;
        if text.len() <= INLINE_BYTES {
            return self.tokenize(&text, add_special_tokens).map(keep);
        }
        let pre = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let kept = pre.tokenize(&text, add_special_tokens).map(keep);
            drop(text);
            permit.reclaim();
            kept
        })
        .await
        .map_err(|e| BridgeError::Internal(format!("the tokenizing task failed: {e}")))?
    }

    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor runs (BERT's
    /// `[CLS] … [SEP]`) and BOS is put in front when the card says so and it is not there yet.
    /// Text that could not fit the model's context is refused before the tokenizer sees it. It
    /// runs at once, outside the budget: for short texts and tests.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BridgeError> {
        self.fits_context(text)?;
        self.tokenize(text, add_special_tokens)
    }

    /// Refuses a text longer than any prompt that fits the model's context can be.
    fn fits_context(&self, text: &str) -> Result<(), BridgeError> {
        match self.max_prompt_bytes {
            Some(limit) if text.len() > limit => Err(BridgeError::field(
                "prompt",
                format!(
                    "the prompt is {} bytes, more than any prompt of at most {} tokens (the model's context) can be",
                    text.len(),
                    self.card.context_length
                ),
            )),
            _ => Ok(()),
        }
    }

    fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BridgeError> {
        // Without offsets: the same ids, and the encoding holds less (see `budget`).
        let encoding = self.tokenizer.encode_fast(text, add_special_tokens).map_err(|e| BridgeError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        drop(encoding);
        if let (true, true, Some(bos)) = (add_special_tokens, self.card.add_bos_token, self.bos_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, BridgeError> {
        self.tokenizer.decode(ids, true).map_err(|e| BridgeError::Tokenizer(e.to_string()))
    }

    /// One token as text (for logprobs): a token holding part of a UTF-8 character shows as U+FFFD.
    pub fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.token_bytes(id)).into_owned()
    }

    /// How many token ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The bytes one token stands for (see [`Vocabulary::token_bytes`]).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.vocabulary.token_bytes(&self.tokenizer, id)
    }

    /// A fresh incremental decoder for one generated sequence. Its text continues the prompt:
    /// where the decoder would drop a string's leading space (SentencePiece), the first
    /// generated token keeps it (`"▁Paris"` after a prompt is `" Paris"`).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(Arc::clone(&self.tokenizer), self.detokenizer_context.clone())
    }
}

/// Bytes of the text in a JSON value (its strings and keys): what a template renders from it.
fn text_bytes(value: &Json) -> usize {
    match value {
        Json::String(text) => text.len(),
        Json::Array(items) => items.iter().map(text_bytes).sum(),
        Json::Object(fields) => fields.iter().map(|(key, value)| key.len() + text_bytes(value)).sum(),
        Json::Null | Json::Bool(_) | Json::Number(_) => 8,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;

    /// The SmolLM2 preprocessor, built once: its model comes from `scripts/fetch-models.sh`.
    pub(crate) fn smollm2() -> &'static Preprocessor {
        static PRE: OnceLock<Preprocessor> = OnceLock::new();
        PRE.get_or_init(|| {
            let path = tritium_llm::test_models::installed_model(tritium_llm::test_models::SMOLLM2_GGUF);
            Preprocessor::new(Arc::new(tritium_llm::card_from_gguf_file(&path).unwrap())).unwrap()
        })
    }

    fn with_template(template: &str) -> Preprocessor {
        let mut card = (**smollm2().card()).clone();
        card.chat_template = Some(template.to_owned());
        Preprocessor::new(Arc::new(card)).unwrap()
    }

    #[test]
    fn a_prompt_too_long_for_any_context_is_refused_before_tokenizing() {
        let pre = smollm2();
        let limit = pre.max_prompt_bytes.expect("a generating model has a bound");
        assert!(limit >= pre.card.context_length, "{limit}");
        let error = pre.encode(&"a".repeat(limit + 1), true).expect_err("too long");
        assert!(error.to_string().starts_with("prompt: the prompt is"), "{error}");
        // Within the bound the tokenizer runs (and the engine checks the real token count).
        assert!(pre.encode("Hello", true).is_ok());
    }

    #[tokio::test]
    async fn count_tokens_counts_what_the_context_cannot_hold_and_the_budget_bounds_both() {
        let card = ModelCard { context_length: 16, ..(**smollm2().card()).clone() };
        let pre = Arc::new(Preprocessor::new(Arc::new(card)).unwrap());
        let limit = pre.max_prompt_bytes.expect("a generating model has a bound");
        let text = "1".repeat((limit + 1).max(INLINE_BYTES + 1));
        // Past the inline size: tokenized on the blocking pool, within the budget.
        let error = pre.encode_off_runtime(text.clone(), false).await.unwrap_err();
        assert!(error.to_string().starts_with("prompt: the prompt is"), "{error}");
        assert_eq!(pre.count_tokens(text.clone(), false).await.unwrap(), text.len());
        assert_eq!(pre.budget().available_bytes(), DEFAULT_MAX_TOKENIZING_BYTES);

        // A budget too small for the text refuses it before tokenizing; a short text still goes.
        let small = PreprocessBudget::new(PreprocessLimits {
            max_bytes: text.len() * TOKENIZE_BYTES_PER_INPUT_BYTE - 1,
            max_concurrent: 1,
        });
        let pre = Arc::new(Preprocessor::new(Arc::clone(smollm2().card())).unwrap().with_budget(Arc::new(small)));
        let error = pre.count_tokens(text, false).await.unwrap_err();
        assert!(matches!(&error, BridgeError::TooLarge(message) if message.starts_with("the prompt is")), "{error}");
        assert_eq!(pre.encode_off_runtime("Hello".into(), false).await.unwrap(), vec![19556]);
        let messages = [json!({"role": "user", "content": "2".repeat(INLINE_BYTES * 128)})];
        let error = pre.render_chat_bounded(&messages, true, None).await.unwrap_err();
        assert!(matches!(&error, BridgeError::TooLarge(message) if message.starts_with("the chat is")), "{error}");
    }

    #[test]
    fn renders_the_smollm2_chatml_template() {
        let pre = smollm2();
        let messages = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}),
        ];
        let prompt = pre.render_chat(&messages, true, None).unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"
        );
        // Without a system message the template adds its own.
        let prompt = pre.render_chat(&messages[1..], false, None).unwrap();
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");
        assert!(prompt.ends_with("<|im_end|>\n"), "{prompt}");

        let ids = pre.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
        assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
    }

    #[test]
    fn a_template_without_tool_calls_sees_an_earlier_call_as_text() {
        let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
        let messages = [
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}),
        ];
        let pre = smollm2();
        let prompt = pre.render_chat(&messages, true, None).expect("a null content with calls renders");
        let turn = "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call><|im_end|>";
        assert!(prompt.contains(turn), "{prompt}");
        assert!(prompt.contains("<|im_start|>tool\nSunny<|im_end|>"), "{prompt}");

        // In the configured format; text the assistant wrote stays in front of its calls.
        let mistral = OutputFormats { tool_calls: Some(ToolCallFormat::Mistral), reasoning: None };
        let pre = Preprocessor::new(Arc::clone(smollm2().card())).expect("preprocessor").with_output_formats(mistral);
        let mut messages = messages;
        messages[1]["content"] = json!("Let me look.");
        let prompt = pre.render_chat(&messages, true, None).expect("renders");
        let turn = "<|im_start|>assistant\nLet me look.\n[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}]<|im_end|>";
        assert!(prompt.contains(turn), "{prompt}");
    }

    #[test]
    fn rejects_non_text_parts_and_models_without_templates() {
        let pre = smollm2();
        let messages = [json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})];
        let err = pre.render_chat(&messages, true, None).unwrap_err();
        assert!(
            matches!(&err, BridgeError::InvalidField { field, reason } if field == "messages[0].content" && reason.contains("image_url")),
            "{err:?}"
        );
        assert!(matches!(pre.render_chat(&[json!("hi")], true, None), Err(BridgeError::InvalidField { .. })));

        let mut card = (**pre.card()).clone();
        card.chat_template = None;
        let err = Preprocessor::new(Arc::new(card)).unwrap().render_chat(&[], true, None).unwrap_err();
        assert!(matches!(&err, BridgeError::Unsupported { what, .. } if what == "chat (it has no chat template)"), "{err:?}");
    }

    #[test]
    fn templates_get_python_methods_raise_exception_extras_and_tojson() {
        let pre = with_template(
            "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with the user') }}{% endif %}\
             {% for m in messages %}[{{ m.content.strip().upper() }}]{% endfor %}\
             {% if tools %}{{ tools | tojson }}{% endif %}{{ bos_token }}|{{ eos_token }}",
        );
        let messages = [json!({"role": "user", "content": "  hi <b> \n"})];
        let extra: Map<String, Json> =
            [("tools".to_string(), json!([{"description": "a < b & c'd é", "name": "f"}]))].into_iter().collect();
        let out = pre.render_chat(&messages, true, Some(&extra)).unwrap();
        assert_eq!(out, r#"[HI <B>][{"description": "a < b & c'd é", "name": "f"}]<|im_start|>|<|im_end|>"#);

        let err = pre.render_chat(&[json!({"role": "assistant", "content": "x"})], true, None).unwrap_err();
        assert_eq!(err, BridgeError::Template("Conversation must start with the user".into()));

        let sorted = [json!({"content": "  hi <b> \n", "role": "user"})];
        let indented = with_template("{{ messages[0] | tojson(indent=2) }}").render_chat(&sorted, true, None).unwrap();
        assert_eq!(indented, "{\n  \"content\": \"  hi <b> \\n\",\n  \"role\": \"user\"\n}");
        let err = Preprocessor::new(Arc::new(ModelCard { chat_template: Some("{% if %}".into()), ..(**pre.card()).clone() }))
            .unwrap_err();
        assert!(matches!(err, BridgeError::Template(_)), "{err:?}");
    }

    #[test]
    fn trims_blocks_like_hugging_face() {
        let pre = with_template("{% for m in messages %}\n  {% if true %}\n{{ m.role }}\n  {% endif %}\n{% endfor %}");
        let out = pre.render_chat(&[json!({"role": "user", "content": ""}), json!({"role": "a", "content": ""})], true, None);
        assert_eq!(out.unwrap(), "user\na\n");
    }

    #[test]
    fn encodes_with_bos_only_when_the_card_says_so() {
        let pre = smollm2();
        assert_eq!(pre.encode("Hello world! 12345", true).unwrap(), vec![19556, 905, 17, 216, 33, 34, 35, 36, 37]);
        let mut card = (**pre.card()).clone();
        card.add_bos_token = true;
        let with_bos = Preprocessor::new(Arc::new(card)).unwrap();
        assert_eq!(with_bos.encode("Hello", true).unwrap(), vec![1, 19556]);
        assert_eq!(with_bos.encode("<|im_start|>Hello", true).unwrap(), vec![1, 19556]);
        assert_eq!(with_bos.encode("Hello", false).unwrap(), vec![19556]);
    }

    #[test]
    fn token_bytes_undo_the_byte_level_alphabet() {
        let pre = smollm2();
        assert!(pre.vocabulary.is_byte_level());
        let ids = pre.encode(" world é🙂", false).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| pre.token_bytes(id)).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), " world é🙂");
        assert_eq!(pre.token_text(905), " world");
        assert_eq!(pre.token_text(2), "<|im_end|>");
        assert_eq!(pre.decode(&[19556, 2, 905]).unwrap(), "Hello world");
        assert!(pre.token_bytes(u32::MAX).is_empty());
        // A lone byte of a multi-byte character shows as U+FFFD.
        let partial = ids.iter().find(|&&id| std::str::from_utf8(&pre.token_bytes(id)).is_err());
        assert!(partial.is_some_and(|&id| pre.token_text(id).contains('\u{FFFD}')));
    }

    /// A toy SentencePiece tokenizer as Hugging Face writes Llama 2's: `▁` for spaces, byte
    /// fallback, and a decoder that drops the string's first space.
    fn sentencepiece() -> Preprocessor {
        let tokenizer = json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [
                {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            ],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u{2581}"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            ]},
            "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": {"<unk>": 0, "<s>": 1, "<0xC3>": 2, "<0xA9>": 3, "\u{2581}": 4, "h": 5, "i": 6,
                          "\u{2581}h": 7, "\u{2581}hi": 8, "a": 9},
                "merges": [["\u{2581}", "h"], ["\u{2581}h", "i"]]},
        });
        let card = ModelCard {
            tokenizer_json: tokenizer.to_string(),
            chat_template: None,
            bos_token: Some("<s>".into()),
            eos_token: None,
            eos_token_ids: Vec::new(),
            add_bos_token: true,
            ..(**smollm2().card()).clone()
        };
        Preprocessor::new(Arc::new(card)).unwrap()
    }

    #[test]
    fn sentencepiece_tokens_and_continuations() {
        let pre = sentencepiece();
        assert!(!pre.vocabulary.is_byte_level());
        let ids = pre.encode("hi hi é", true).unwrap();
        assert_eq!(ids, vec![1, 8, 8, 4, 2, 3]);
        assert_eq!(pre.decode(&ids).unwrap(), "hi hi é");
        assert_eq!(pre.token_text(8), " hi");
        assert_eq!(pre.token_bytes(2), vec![0xC3]);
        assert_eq!(pre.token_text(2), "\u{FFFD}");
        // Generated text continues a prompt, so its first token keeps its space.
        let mut detok = pre.detokenizer();
        let pieces: Vec<String> = ids[1..].iter().map(|&id| detok.push(id)).collect();
        assert_eq!(pieces, [" hi", " hi", " ", "", "é"]);
        assert_eq!(detok.finish(), "");
    }
}
