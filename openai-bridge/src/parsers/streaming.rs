//! Tool calls given out while their block is still arriving: a call's name as soon as it is
//! certain, then its arguments in pieces. JSON arguments stream as their text arrives (minified,
//! so the pieces add up to the whole call's text); key/value arguments stream one parameter at a
//! time, read by the same reader that reads the whole block, on the block cut after its last
//! complete parameter. When the block closes, the whole reading decides: each call's last
//! pieces go out with it.

use super::arguments::{Minifier, ToolSchemas};
use super::balance::{Balance, Scan};
use super::blocks::block_syntax;
use super::{CallPiece, ParsedDelta, StreamedCall, ToolCall, ToolCallFormat, new_call_id};

/// A call whose name and the start of whose arguments have arrived.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PartialCall {
    pub name: String,
    /// The model's own id for the call (Kimi's `functions.name:0`).
    pub id: Option<String>,
    pub arguments: PartialArguments,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum PartialArguments {
    /// JSON text starting at this byte of the body (an object: its `{`).
    Json { start: usize },
    /// This much of the arguments' text is certain.
    Text(String),
}

/// The stream of the block being read.
#[derive(Debug, Default)]
pub(super) struct BlockStream {
    calls: Vec<StreamedCall>,
    /// The JSON arguments of the last call, while they stream.
    json: Option<JsonArguments>,
    /// The body's length when it was last read for calls.
    read: usize,
    /// The last call's arguments cannot stream (JSON that is not an object): the calls after
    /// it wait for the block's end, so no call's pieces come after the next one's start.
    held: bool,
}

#[derive(Debug)]
struct JsonArguments {
    start: usize,
    balance: Balance,
    minifier: Minifier,
    /// Bytes of the body (from `start`) given out so far.
    scanned: usize,
    done: bool,
}

impl BlockStream {
    /// Gives out what `body` (the block so far, its end not arrived) makes certain.
    pub(super) fn advance(
        &mut self,
        format: ToolCallFormat,
        open: &str,
        body: &str,
        schemas: &ToolSchemas,
        out: &mut ParsedDelta,
    ) {
        loop {
            if let Some(json) = self.json.as_mut().filter(|json| !json.done) {
                let piece = json.advance(body);
                if let (false, Some(call)) = (piece.is_empty(), self.calls.last_mut()) {
                    call.sent += piece.len();
                    out.call_pieces.push(CallPiece::Arguments(piece));
                }
                if !self.json.as_ref().is_some_and(|json| json.done) {
                    return;
                }
            }
            // Read again only when a tag or a call's header may have ended since: a long parameter
            // value is not read again for each of its pieces.
            let fresh = body.get(self.read.min(body.len())..).unwrap_or("");
            if fresh.is_empty() || !fresh.contains(triggers(format)) {
                return;
            }
            self.read = body.len();
            let partial = partial_calls(format, open, body, schemas);
            let mut started = false;
            for (index, call) in partial.into_iter().enumerate() {
                match self.calls.get_mut(index) {
                    Some(streamed) => {
                        if let PartialArguments::Text(text) = &call.arguments
                            && text.len() > streamed.sent
                            && let Some(rest) = text.get(streamed.sent..)
                        {
                            out.call_pieces.push(CallPiece::Arguments(rest.to_owned()));
                            streamed.sent = text.len();
                        }
                    }
                    None => {
                        if self.held {
                            break;
                        }
                        if let PartialArguments::Json { start } = call.arguments
                            && body.get(start..).is_none_or(str::is_empty)
                        {
                            // The arguments' first character decides how they stream.
                            break;
                        }
                        let id = call.id.unwrap_or_else(new_call_id);
                        out.call_pieces.push(CallPiece::Start { id: id.clone(), name: call.name });
                        let mut streamed = StreamedCall { id, sent: 0 };
                        match call.arguments {
                            PartialArguments::Json { start } => {
                                self.json = body.get(start..).filter(|json| json.starts_with('{')).map(|_| JsonArguments {
                                    start,
                                    balance: Balance::default(),
                                    minifier: Minifier::default(),
                                    scanned: 0,
                                    done: false,
                                });
                                // Arguments that are not an object come whole at the end.
                                self.held = self.json.is_none();
                            }
                            PartialArguments::Text(text) => {
                                streamed.sent = text.len();
                                if !text.is_empty() {
                                    out.call_pieces.push(CallPiece::Arguments(text));
                                }
                            }
                        }
                        self.calls.push(streamed);
                        started = true;
                        break;
                    }
                }
            }
            if !started {
                return;
            }
            // A new JSON call: stream what of its arguments is here, then look for the next.
            self.read = 0;
        }
    }

    /// The block is whole: its calls go out with the pieces not given yet.
    pub(super) fn finish(&mut self, calls: Vec<ToolCall>, out: &mut ParsedDelta) {
        let mut streamed = std::mem::take(&mut self.calls).into_iter();
        for mut call in calls {
            let mut this = streamed.next();
            if let Some(this) = &this {
                call.id = this.id.clone();
            }
            out.complete(call, &mut this);
        }
        *self = BlockStream::default();
    }

    /// Whether any call of this block went out in pieces.
    pub(super) fn started(&self) -> bool {
        !self.calls.is_empty()
    }
}

impl JsonArguments {
    /// The minified text of what arrived since, up to the arguments' end.
    fn advance(&mut self, body: &str) -> String {
        let Some(text) = body.get(self.start..) else {
            return String::new();
        };
        let end = match self.balance.scan(text, &['"']) {
            Scan::Closed(end) => {
                self.done = true;
                end
            }
            Scan::Open => text.len(),
            Scan::NotAValue => {
                self.done = true;
                return String::new();
            }
        };
        let mut piece = String::new();
        if let Some(fresh) = text.get(self.scanned..end) {
            self.minifier.push(fresh, &mut piece);
        }
        self.scanned = end;
        piece
    }
}

/// The characters whose arrival may complete what [`partial_calls`] reads: a tag's end for the
/// key/value families, a JSON header's pieces for the others.
fn triggers(format: ToolCallFormat) -> &'static [char] {
    use ToolCallFormat::*;
    match format {
        Qwen3Coder | MinimaxM2 | MinimaxM3 | DeepseekV32 | DeepseekV4 | DeepseekV41 | MuseGlimmer | Glm | KimiK3 => &['>', '\n'],
        Pythonic => &['(', ',', ')'],
        Gemma4 => &['{', ',', '}', '>'],
        _ => &['>', '{', '}', ':', ',', '|', '｜', '\n', '"'],
    }
}

/// The calls of a block's body so far whose names are certain, in order.
fn partial_calls(format: ToolCallFormat, open: &str, body: &str, schemas: &ToolSchemas) -> Vec<PartialCall> {
    use ToolCallFormat::*;
    match format {
        Hermes | NemotronDeci | Jamba => json_headers(body, 0, &["arguments", "parameters"]),
        Qwen3 if body.trim_start().starts_with('{') => json_headers(body, 0, &["arguments", "parameters"]),
        DeepseekV3 | DeepseekV31 => marked_headers(body, "<｜tool▁call▁begin｜>", |call| {
            let (head, tail) = call.split_once("<｜tool▁sep｜>")?;
            let head_len = call.len() - tail.len();
            match tail.split_once("```") {
                // V3: `function<｜tool▁sep｜>name\n```json\n{…}`.
                Some((name, fenced)) => {
                    if fenced.len() < 4 && "json".starts_with(fenced) {
                        return None;
                    }
                    let json = fenced.strip_prefix("json").unwrap_or(fenced);
                    let skipped = json.len() - json.trim_start().len();
                    Some((name.trim().to_owned(), None, call.len() - json.len() + skipped))
                }
                None if tail.trim_start().starts_with('{') => {
                    Some((head.trim().to_owned(), None, head_len + tail.len() - tail.trim_start().len()))
                }
                None => None,
            }
        }),
        KimiK2 => marked_headers(body, "<|tool_call_begin|>", |call| {
            let (id, arguments) = call.split_once("<|tool_call_argument_begin|>")?;
            let id = id.trim();
            let name = id.strip_prefix("functions.").unwrap_or(id);
            let name = name.rsplit_once(':').map_or(name, |(name, _)| name);
            let start = call.len() - arguments.len() + (arguments.len() - arguments.trim_start().len());
            Some((name.to_owned(), Some(id.to_owned()), start))
        }),
        Harmony => {
            let Some((header, arguments)) = body.split_once("<|message|>") else { return Vec::new() };
            let Some((_, to)) = header.split_once("to=") else { return Vec::new() };
            let name: String = to.chars().take_while(|c| !c.is_whitespace() && *c != '<').collect();
            let name = name.strip_prefix("functions.").unwrap_or(&name).to_owned();
            let start = body.len() - arguments.len() + (arguments.len() - arguments.trim_start().len());
            vec![PartialCall { name, id: None, arguments: PartialArguments::Json { start } }]
        }
        Inkling => match body.find("<|content_invoke_tool_json|>") {
            Some(at) => json_headers(body, at + "<|content_invoke_tool_json|>".len(), &["args", "arguments"]),
            None => Vec::new(),
        },
        Qwen3Coder | Qwen3 if open == "<function=" => {
            // A bare function: the body starts with its name, and its end is the block's.
            let header = body.find('>').map(|at| at + 1);
            let cut = body.rfind("</parameter>").map(|at| at + "</parameter>".len());
            read_cut(format, open, body, schemas, cut.max(header), "", "\u{0}")
        }
        Qwen3Coder | Qwen3 => cut_and_read(
            format,
            open,
            body,
            schemas,
            &["</parameter>", "</function>"],
            &[("<function=", ">")],
            "</function>",
            "</function>",
        ),
        MinimaxM2 => invoke_stream(format, open, body, schemas, ""),
        DeepseekV32 | DeepseekV4 => invoke_stream(format, open, body, schemas, "｜DSML｜"),
        DeepseekV41 => invoke_stream(format, open, body, schemas, "｜DSML｜ "),
        MuseGlimmer => invoke_stream(format, open, body, schemas, "atem:"),
        MinimaxM3 => {
            const NS: &str = "]<]minimax[>[";
            let ends = [format!("{NS}</"), format!("{NS}</invoke>")];
            let cut = body.rfind(ends[0].as_str()).and_then(|at| body[at..].find('>').map(|end| at + end + 1));
            let header = last_header(body, &[("<invoke", ">")]);
            read_cut(format, open, body, schemas, cut.max(header), &format!("{NS}</invoke>"), &ends[1])
        }
        Glm => {
            let header = body
                .find("<arg_key>")
                .or_else(|| body.trim_start().find('\n').map(|at| at + body.len() - body.trim_start().len()));
            let cut = body.rfind("</arg_value>").map(|at| at + "</arg_value>".len()).or(header);
            read_cut(format, open, body, schemas, cut, "", "\u{0}")
        }
        KimiK3 => cut_and_read(
            format,
            open,
            body,
            schemas,
            &["<|close|>argument<|sep|>", "<|close|>call<|sep|>"],
            &[("<|open|>call", "<|sep|>")],
            "<|close|>call<|sep|>",
            "<|close|>call<|sep|>",
        ),
        Llama3Json => json_headers(body, 0, &["parameters", "arguments"]),
        Phi4 => json_headers(body, 0, &["arguments", "parameters"]),
        Mistral if body.starts_with(['[', '{']) => json_headers(body, 0, &["arguments", "parameters"]),
        Mistral => mistral_header(body).into_iter().collect(),
        Pythonic => super::pythonic::partial_calls(body)
            .into_iter()
            .map(|(name, text)| PartialCall { name, id: None, arguments: PartialArguments::Text(text) })
            .collect(),
        Gemma4 => super::xml_calls::gemma4_partial(body)
            .map(|(name, text)| PartialCall { name, id: None, arguments: PartialArguments::Text(text) })
            .into_iter()
            .collect(),
    }
}

/// Mistral's `name[ARGS]{` (or `name[CALL_ID]id[ARGS]{`).
fn mistral_header(body: &str) -> Option<PartialCall> {
    let brace = body.find('{')?;
    let head = &body[..brace];
    let (name, id) = match head.split_once("[CALL_ID]") {
        Some((name, rest)) => (name, Some(rest.trim_end_matches("[ARGS]").trim())),
        None => (head.trim_end_matches("[ARGS]"), None),
    };
    let name = name.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || "_-.".contains(c))).then_some(())?;
    let id = id.filter(|id| !id.is_empty()).map(str::to_owned);
    Some(PartialCall { name: name.to_owned(), id, arguments: PartialArguments::Json { start: brace } })
}

fn invoke_stream(format: ToolCallFormat, open: &str, body: &str, schemas: &ToolSchemas, prefix: &str) -> Vec<PartialCall> {
    let (parameter_end, invoke_end) = (format!("</{prefix}parameter>"), format!("</{prefix}invoke>"));
    let header = format!("<{prefix}invoke");
    cut_and_read(format, open, body, schemas, &[&parameter_end, &invoke_end], &[(&header, ">")], &invoke_end, &invoke_end)
}

/// The body cut after the last of `ends` (or after the last call header, `(start, end)` marker
/// pairs), completed with `closer`, read by the format's whole-block reader.
#[allow(clippy::too_many_arguments)]
fn cut_and_read(
    format: ToolCallFormat,
    open: &str,
    body: &str,
    schemas: &ToolSchemas,
    ends: &[&str],
    headers: &[(&str, &str)],
    closer: &str,
    call_end: &str,
) -> Vec<PartialCall> {
    let cut = ends.iter().filter_map(|end| body.rfind(end).map(|at| at + end.len())).max();
    let header = last_header(body, headers);
    read_cut(format, open, body, schemas, cut.max(header), closer, call_end)
}

/// Where the last call header (`start` … `end`) that has arrived ends.
fn last_header(body: &str, headers: &[(&str, &str)]) -> Option<usize> {
    headers
        .iter()
        .filter_map(|(start, end)| {
            let at = body.rfind(start)?;
            body[at..].find(end).map(|to| at + to + end.len())
        })
        .max()
}

/// Reads `body[..cut]` + `closer` (unless the cut ends a call, `call_end`) as a whole block: the
/// last call, when it was completed here, is certain up to its arguments' closing brace.
fn read_cut(
    format: ToolCallFormat,
    open: &str,
    body: &str,
    schemas: &ToolSchemas,
    cut: Option<usize>,
    closer: &str,
    call_end: &str,
) -> Vec<PartialCall> {
    let Some(cut) = cut else { return Vec::new() };
    let Some(block) = block_syntax(format) else { return Vec::new() };
    let text = &body[..cut];
    let completed = !text.ends_with(call_end);
    let whole = if completed { format!("{text}{closer}") } else { text.to_owned() };
    let Some(calls) = (block.read)(open, &whole, schemas) else { return Vec::new() };
    let last = calls.len().saturating_sub(1);
    calls
        .into_iter()
        .enumerate()
        .map(|(index, call)| {
            let mut arguments = call.arguments;
            if completed && index == last {
                arguments.pop();
            }
            PartialCall { name: call.name, id: None, arguments: PartialArguments::Text(arguments) }
        })
        .collect()
}

/// Calls marked by `begin`, each read by `header` into (name, id, arguments' offset in the call).
fn marked_headers(body: &str, begin: &str, header: impl Fn(&str) -> Option<(String, Option<String>, usize)>) -> Vec<PartialCall> {
    let mut calls = Vec::new();
    let mut from = 0;
    while let Some(at) = body[from..].find(begin).map(|at| from + at + begin.len()) {
        let next = body[at..].find(begin).map_or(body.len(), |to| at + to);
        match header(&body[at..next]) {
            Some((name, id, start)) => {
                calls.push(PartialCall { name, id, arguments: PartialArguments::Json { start: at + start } })
            }
            None => break,
        }
        from = next;
    }
    calls
}

/// JSON calls from `from` on: objects (maybe in an array) whose `"name"` comes first and then
/// one of `keys` holding the arguments.
fn json_headers(body: &str, from: usize, keys: &[&str]) -> Vec<PartialCall> {
    let mut calls = Vec::new();
    let mut at = from;
    loop {
        at = skip(body, at, |c| c.is_whitespace() || matches!(c, '[' | ',' | ';'));
        if !body[at..].starts_with('{') {
            return calls;
        }
        let Some((name, start)) = object_header(body, at, keys) else { return calls };
        calls.push(PartialCall { name, id: None, arguments: PartialArguments::Json { start } });
        let mut balance = Balance::default();
        let Scan::Closed(end) = balance.scan(&body[start..], &['"']) else { return calls };
        let after = skip(body, start + end, char::is_whitespace);
        if !body[after..].starts_with('}') {
            return calls;
        }
        at = after + 1;
    }
}

/// `{"name": "…", "<key>": ` at `at`: the name and where the arguments start.
fn object_header(body: &str, at: usize, keys: &[&str]) -> Option<(String, usize)> {
    let mut at = skip(body, at + 1, char::is_whitespace);
    at = expect(body, at, "\"name\"")?;
    at = expect(body, skip(body, at, char::is_whitespace), ":")?;
    at = skip(body, at, char::is_whitespace);
    let end = string_end(body, at)?;
    let name: String = serde_json::from_str(&body[at..end]).ok()?;
    at = expect(body, skip(body, end, char::is_whitespace), ",")?;
    at = skip(body, at, char::is_whitespace);
    let key = keys.iter().find_map(|key| expect(body, at, &format!("\"{key}\"")))?;
    at = expect(body, skip(body, key, char::is_whitespace), ":")?;
    Some((name, skip(body, at, char::is_whitespace)))
}

fn skip(body: &str, at: usize, what: impl Fn(char) -> bool) -> usize {
    body[at..].find(|c: char| !what(c)).map_or(body.len(), |to| at + to)
}

fn expect(body: &str, at: usize, text: &str) -> Option<usize> {
    body[at..].starts_with(text).then_some(at + text.len())
}

/// The end (past the closing quote) of the JSON string starting at `at`.
fn string_end(body: &str, at: usize) -> Option<usize> {
    let rest = body[at..].strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(at + 1 + i + 1),
            _ => {}
        }
    }
    None
}
