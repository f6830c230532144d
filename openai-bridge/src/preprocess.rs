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
mod byte_bpe;
mod prefix_cache;
mod template;
pub mod workers;

use std::sync::Arc;

use minijinja::Environment;
use minijinja::value::{Serde, Value};
use serde_json::{Map, Value as Json};
use tokenizers::Tokenizer;
use tritium_backend_api::llm::{ModelCard, ModelKind, Vocabulary};

use crate::detokenize::{DecodeTable, Detokenizer};
use crate::error::BridgeError;
use crate::parsers::{OutputFormats, ToolCallFormat};
use crate::sampling::CompletionLimits;
use workers::PreprocessWorkers;

pub use byte_bpe::{ByteLevelBpe, DEFAULT_WORD_CACHE_ENTRIES, WordCache};
pub use prefix_cache::{
    DEFAULT_TOKENIZER_CACHE_BYTES, DEFAULT_TOKENIZER_CACHE_ENTRIES, Plan, PrefixCache, PrefixCacheCounters, PrefixCacheLimits,
};
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
    /// How generated ids decode without the tokenizer, for a byte-level one.
    decode_table: Option<Arc<DecodeTable>>,
    /// Text longer than this cannot fit the context of a generating model whatever it says: its
    /// longest vocabulary entry times the context length. Checked before tokenizing.
    max_prompt_bytes: Option<usize>,
    /// How many token ids the tokenizer knows, added tokens included: `tokenizers` counts them
    /// by building the whole vocabulary map, too slow for each request.
    vocab_size: usize,
    /// Whether the tokenizer's post-processor leaves ids as they are (no `[CLS]`, no `<s>` of its
    /// own), so texts tokenized with special tokens can go through the prefix cache too.
    post_processor_adds_nothing: bool,
    /// The server's bounds on a completion's stopping conditions.
    limits: CompletionLimits,
    /// How the server splits reasoning and tool calls out of this model's output.
    formats: OutputFormats,
    /// What rendering and tokenizing may hold at once, shared with the server's other models.
    budget: Arc<PreprocessBudget>,
    /// Where rendering and tokenizing run, and whether they log their timing.
    workers: Arc<PreprocessWorkers>,
    /// `--tokenizer fastokens`: the encoder of prompts instead of `tokenizer` (which still decodes).
    fast: Option<Arc<fastokens::Tokenizer>>,
    /// The encoder of prompts instead of `tokenizer` when the tokenizer has GPT-2's shape (and
    /// not `fast`): the same ids, less work (see [`ByteLevelBpe`]).
    byte_bpe: Option<Arc<ByteLevelBpe>>,
    /// Words `byte_bpe` merged before (`None`: off).
    word_cache: Option<WordCache>,
    /// Token ids of prompt prefixes seen before (see [`PrefixCache`]); `None`: off, or the
    /// tokenizer cannot have one.
    prefix_cache: Option<PrefixCache>,
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
                template::add_chat_template(&mut env, TEMPLATE, source).map_err(|e| BridgeError::Template(template::describe(&e)))?;
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
        let vocab = tokenizer.get_vocab(true);
        let longest_token = vocab.keys().map(String::len).max().unwrap_or(1).max(1);
        let vocab_size = vocab.len();
        drop(vocab);
        let ids = |text: &str, special: bool| tokenizer.encode_fast(text, special).map(|e| e.get_ids().to_vec()).ok();
        let post_processor_adds_nothing =
            ["a", "Hello, world", " x\n"].iter().all(|text| ids(text, true).is_some_and(|with| Some(with) == ids(text, false)));
        let byte_bpe = match ByteLevelBpe::new(&tokenizer, &card.tokenizer_json) {
            Ok(encoder) => Some(Arc::new(encoder)),
            Err(why) => {
                tracing::debug!(model = %card.source, "prompts are encoded by tokenizers: no byte-level BPE encoder ({why})");
                None
            }
        };
        let max_prompt_bytes = (card.kind == ModelKind::Generate && card.context_length > 0)
            .then(|| longest_token.saturating_mul(card.context_length));
        Ok(Preprocessor {
            max_prompt_bytes,
            vocab_size,
            post_processor_adds_nothing,
            limits: CompletionLimits::default(),
            formats: OutputFormats::default(),
            budget: Arc::new(PreprocessBudget::default()),
            workers: PreprocessWorkers::start(workers::PreprocessExecution::default()).map_err(BridgeError::Internal)?,
            fast: None,
            byte_bpe,
            word_cache: WordCache::new(DEFAULT_WORD_CACHE_ENTRIES),
            prefix_cache: None,
            card,
            env,
            has_template,
            template_reads_tool_calls,
            bos_id,
            vocabulary,
            detokenizer_context,
            decode_table: DecodeTable::new(&tokenizer).map(Arc::new),
            tokenizer: Arc::new(tokenizer),
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

    /// The same preprocessor, encoding prompts with `fastokens` (Dynamo's `--tokenizer
    /// fastokens`), which gives the ids `tokenizers` gives, faster. A tokenizer it cannot load
    /// is an error, or with `fallback` a warning and `tokenizers` as before.
    pub fn with_fast_tokenizer(self, fallback: bool) -> Result<Preprocessor, BridgeError> {
        let loaded = serde_json::from_str(&self.card.tokenizer_json)
            .map_err(|e| e.to_string())
            .and_then(|json| fastokens::Tokenizer::from_json(json).map_err(|e| e.to_string()));
        match loaded {
            Ok(fast) => Ok(Preprocessor { fast: Some(Arc::new(fast)), byte_bpe: None, ..self }),
            Err(e) if fallback => {
                tracing::warn!(model = %self.card.source, "fastokens cannot load this tokenizer ({e}); using tokenizers");
                Ok(self)
            }
            Err(e) => Err(BridgeError::Tokenizer(format!(
                "fastokens cannot load the tokenizer of {} ({e}); --tokenizer-fallback would use tokenizers",
                self.card.source
            ))),
        }
    }

    /// The same preprocessor, reusing the token ids of prompt prefixes it has tokenized before,
    /// within `limits`, counting in `counters`. A tokenizer that cannot split its prompts where
    /// the ids would be the same (see [`PrefixCache`]) gets no cache, with a note in the log.
    pub fn with_prefix_cache(self, limits: PrefixCacheLimits, counters: PrefixCacheCounters) -> Preprocessor {
        match PrefixCache::new(&self.tokenizer, limits, counters) {
            Ok(cache) => Preprocessor { prefix_cache: Some(cache), ..self },
            Err(why) => {
                if limits.bytes > 0 {
                    tracing::info!(model = %self.card.source, "no tokenizer prefix cache: {why}");
                }
                self
            }
        }
    }

    /// The tokenizer prefix cache, when there is one.
    pub fn prefix_cache(&self) -> Option<&PrefixCache> {
        self.prefix_cache.as_ref()
    }

    /// The same preprocessor, encoding prompts with `tokenizers` alone (`--tokenizer tokenizers`).
    pub fn with_tokenizers_encoder(self) -> Preprocessor {
        Preprocessor { fast: None, byte_bpe: None, ..self }
    }

    /// The same preprocessor, its byte-level BPE encoder keeping at most `entries` merged words
    /// (`--tokenizer-word-cache-entries`; 0: none).
    pub fn with_word_cache_entries(self, entries: usize) -> Preprocessor {
        Preprocessor { word_cache: WordCache::new(entries), ..self }
    }

    /// Words the byte-level BPE encoder keeps now.
    pub fn cached_words(&self) -> usize {
        self.word_cache.as_ref().map_or(0, WordCache::len)
    }

    /// Whether prompts are encoded by Tritium's byte-level BPE encoder.
    pub fn encodes_with_byte_level_bpe(&self) -> bool {
        self.byte_bpe.is_some()
    }

    /// Whether prompts are encoded by `fastokens`.
    pub fn encodes_with_fastokens(&self) -> bool {
        self.fast.is_some()
    }

    /// The same preprocessor, rendering and tokenizing on `workers` (the server shares them).
    pub fn with_workers(self, workers: Arc<PreprocessWorkers>) -> Preprocessor {
        Preprocessor { workers, ..self }
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
        // A template that never reads `tool_calls` sees earlier calls as text, in the format the
        // server parses (hermes when none is set: the commonest).
        let calls_as_text = (!self.template_reads_tool_calls).then(|| self.formats.tool_calls.unwrap_or(ToolCallFormat::Hermes));
        let context = template::TemplateContext {
            extra,
            messages: template::normalize_messages(messages, calls_as_text)?,
            add_generation_prompt,
            bos_token: self.card.bos_token.as_deref().unwrap_or_default(),
            eos_token: self.card.eos_token.as_deref().unwrap_or_default(),
        };
        let chat = self.env.get_template(TEMPLATE).map_err(|e| BridgeError::Template(template::describe(&e)))?;
        chat.render(Value::from(Serde(&context))).map_err(|e| BridgeError::Template(template::describe(&e)))
    }

    /// [`Preprocessor::render_chat`] once the budget has room for it (see [`PreprocessBudget`]).
    pub async fn render_chat_bounded(
        self: &Arc<Self>,
        messages: &[Json],
        add_generation_prompt: bool,
        extra: Option<&Map<String, Json>>,
    ) -> Result<String, BridgeError> {
        let bytes = messages.iter().chain(extra.into_iter().flat_map(Map::values)).map(text_bytes).sum();
        let _permit = self.budget.admit("chat", bytes, RENDER_BYTES_PER_INPUT_BYTE).await?;
        let _flight = self.workers.begin();
        if self.workers.pooled() {
            let (pre, messages, extra) = (Arc::clone(self), messages.to_vec(), extra.cloned());
            let render = move || pre.render_chat(&messages, add_generation_prompt, extra.as_ref());
            if let Some(rendered) = self.workers.run("chat_template", bytes, render).await {
                return rendered?;
            }
        }
        self.workers.timed("chat_template", bytes, || self.render_chat(messages, add_generation_prompt, extra))
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
        // A prefix from the prefix cache costs no tokenizing: the budget, and whether the work
        // leaves the runtime thread, go by what is left.
        let plan = match (self.cacheable(add_special_tokens), &self.prefix_cache) {
            (true, Some(cache)) => Some(cache.plan(&text)),
            _ => None,
        };
        let bytes = plan.as_ref().map_or(text.len(), Plan::uncached_bytes);
        let permit = self.budget.admit("prompt", bytes, TOKENIZE_BYTES_PER_INPUT_BYTE).await?;
        let _flight = self.workers.begin();
        if self.workers.pooled() {
            let pre = Arc::clone(self);
            let tokenize = move || pre.tokenize_planned(&text, add_special_tokens, plan).map(keep);
            return self
                .workers
                .run(self.tokenize_stage(add_special_tokens), bytes, tokenize)
                .await
                .unwrap_or_else(|| Err(BridgeError::Internal("the preprocessing pool went away".into())))?;
        }
        if bytes <= INLINE_BYTES {
            return self
                .workers
                .timed(self.tokenize_stage(add_special_tokens), bytes, || self.tokenize_planned(&text, add_special_tokens, plan).map(keep));
        }
        let pre = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let kept =
                pre.workers.timed(pre.tokenize_stage(add_special_tokens), bytes, || pre.tokenize_planned(&text, add_special_tokens, plan).map(keep));
            drop(text);
            permit.reclaim();
            kept
        })
        .await
        .map_err(|e| BridgeError::Internal(format!("the tokenizing task failed: {e}")))?
    }

    /// [`Preprocessor::tokenize`] from a prefix-cache lookup already made.
    fn tokenize_planned(&self, text: &str, add_special_tokens: bool, plan: Option<Plan>) -> Result<Vec<u32>, BridgeError> {
        match (plan, &self.prefix_cache) {
            (Some(plan), Some(cache)) => {
                let mut ids = cache.finish(text, plan, |piece| self.tokenize_uncached(piece, false))?;
                self.add_bos(&mut ids, add_special_tokens);
                Ok(ids)
            }
            _ => self.tokenize(text, add_special_tokens),
        }
    }

    /// The perf log's name of a tokenization, naming the encoder.
    fn tokenize_stage(&self, add_special_tokens: bool) -> &'static str {
        match (&self.fast, self.byte_level_bpe_for(add_special_tokens)) {
            (Some(_), _) => "tokenize (fastokens)",
            (None, Some(_)) => "tokenize (byte-level BPE)",
            (None, None) => "tokenize",
        }
    }

    /// The byte-level BPE encoder, when it encodes texts tokenized this way: its ids are those of
    /// a text without the post-processor's tokens.
    fn byte_level_bpe_for(&self, add_special_tokens: bool) -> Option<&ByteLevelBpe> {
        self.byte_bpe.as_deref().filter(|_| !add_special_tokens || self.post_processor_adds_nothing)
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
        // A post-processor (BERT's `[CLS] … [SEP]`) would wrap each piece: such a tokenizer's
        // texts with special tokens are not cached.
        if let (true, Some(cache)) = (self.cacheable(add_special_tokens), &self.prefix_cache) {
            let mut ids = cache.encode(text, |piece| self.tokenize_uncached(piece, false))?;
            self.add_bos(&mut ids, add_special_tokens);
            return Ok(ids);
        }
        self.tokenize_uncached(text, add_special_tokens)
    }

    fn tokenize_uncached(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BridgeError> {
        let mut ids = match (&self.fast, self.byte_level_bpe_for(add_special_tokens)) {
            (Some(fast), _) => {
                fast.encode_with_special_tokens(text, add_special_tokens).map_err(|e| BridgeError::Tokenizer(e.to_string()))?
            }
            (None, Some(bpe)) => bpe.encode(text, self.word_cache.as_ref()),
            (None, None) => {
                // Without offsets: the same ids, and the encoding holds less (see `budget`).
                let encoding =
                    self.tokenizer.encode_fast(text, add_special_tokens).map_err(|e| BridgeError::Tokenizer(e.to_string()))?;
                encoding.get_ids().to_vec()
            }
        };
        self.add_bos(&mut ids, add_special_tokens);
        Ok(ids)
    }

    /// Puts BOS in front when special tokens are added, the card says so and it is not there yet.
    fn add_bos(&self, ids: &mut Vec<u32>, add_special_tokens: bool) {
        if let (true, true, Some(bos)) = (add_special_tokens, self.card.add_bos_token, self.bos_id)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
    }

    /// Whether the prefix cache may tokenize this text: always without special tokens, and with
    /// them when the tokenizer's post-processor adds none (BOS, added here, goes in front after).
    fn cacheable(&self, add_special_tokens: bool) -> bool {
        !add_special_tokens || self.post_processor_adds_nothing
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
        self.vocab_size
    }

    /// The bytes one token stands for (see [`Vocabulary::token_bytes`]).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.vocabulary.token_bytes(&self.tokenizer, id)
    }

    /// A fresh incremental decoder for one generated sequence. Its text continues the prompt:
    /// where the decoder would drop a string's leading space (SentencePiece), the first
    /// generated token keeps it (`"▁Paris"` after a prompt is `" Paris"`).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(Arc::clone(&self.tokenizer), self.decode_table.clone(), self.detokenizer_context.clone())
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
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod prefix_cache_tests;
