//! Families whose calls sit in a delimited block: the markers that open and close it, and how
//! its body reads as calls. The JSON-bodied families are read here, the key/value ones in
//! [`super::xml_calls`].

use super::arguments::{ToolSchemas, json_arguments};
use super::{ToolCall, ToolCallFormat, xml_calls};

/// Reads a block's body (what is between the markers) as calls; `None` when it is not calls.
type BodyReader = fn(open: &str, body: &str, schemas: &ToolSchemas) -> Option<Vec<ToolCall>>;

#[derive(Debug, Clone, Copy)]
pub(super) struct BlockSyntax {
    /// (opening marker, closing marker) pairs.
    pub pairs: &'static [(&'static str, &'static str)],
    pub read: BodyReader,
    /// Markup around the answer's text, dropped from it (Kimi K3's response channel).
    pub dropped: &'static [&'static str],
}

impl BlockSyntax {
    pub(super) fn opens(&self) -> Vec<&'static str> {
        self.pairs.iter().map(|(open, _)| *open).collect()
    }

    pub(super) fn close_of(&self, open: &str) -> &'static str {
        self.pairs.iter().find(|(o, _)| *o == open).map_or("", |(_, close)| close)
    }
}

const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const KIMI_CALL_BEGIN: &str = "<|tool_call_begin|>";
const KIMI_CALL_END: &str = "<|tool_call_end|>";
const KIMI_ARGUMENTS: &str = "<|tool_call_argument_begin|>";
const INKLING_TOOL: &str = "<|content_invoke_tool_json|>";

pub(super) fn block_syntax(format: ToolCallFormat) -> Option<BlockSyntax> {
    use ToolCallFormat::*;
    let syntax = |pairs, read| Some(BlockSyntax { pairs, read, dropped: &[] });
    match format {
        Hermes => syntax(&[("<tool_call>", "</tool_call>")], |_, body, _| json_body(body)),
        Qwen3 => syntax(&[("<tool_call>", "</tool_call>"), ("<function=", "</function>")], |open, body, schemas| {
            match body.trim_start().starts_with('{') && open == "<tool_call>" {
                true => json_body(body),
                false => xml_calls::functions(open, body, schemas),
            }
        }),
        Qwen3Coder => syntax(&[("<tool_call>", "</tool_call>"), ("<function=", "</function>")], xml_calls::functions),
        NemotronDeci => syntax(&[("<TOOLCALL>", "</TOOLCALL>")], |_, body, _| json_body(body)),
        Jamba => syntax(&[("<tool_calls>", "</tool_calls>")], |_, body, _| json_body(body)),
        DeepseekV3 | DeepseekV31 => syntax(&[(DS_CALLS_BEGIN, DS_CALLS_END), (DS_CALL_BEGIN, DS_CALL_END)], deepseek_body),
        DeepseekV32 => syntax(&[("<｜DSML｜function_calls>", "</｜DSML｜function_calls>")], |_, body, schemas| {
            xml_calls::invokes("｜DSML｜", body, schemas)
        }),
        DeepseekV4 => syntax(&[("<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>")], |_, body, schemas| {
            xml_calls::invokes("｜DSML｜", body, schemas)
        }),
        DeepseekV41 => syntax(&[("<｜DSML｜ calls>", "</｜DSML｜ calls>")], |_, body, schemas| {
            xml_calls::invokes("｜DSML｜ ", body, schemas)
        }),
        MinimaxM2 => {
            syntax(&[("<minimax:tool_call>", "</minimax:tool_call>")], |_, body, schemas| xml_calls::invokes("", body, schemas))
        }
        MuseGlimmer => syntax(&[("<atem:function_calls>", "</atem:function_calls>")], |_, body, schemas| {
            xml_calls::invokes("atem:", body, schemas)
        }),
        MinimaxM3 => syntax(&[("]<]minimax[>[<tool_call>", "]<]minimax[>[</tool_call>")], |_, body, schemas| {
            xml_calls::minimax_m3(body, schemas)
        }),
        Glm => syntax(&[("<tool_call>", "</tool_call>")], |_, body, schemas| xml_calls::glm(body, schemas)),
        KimiK2 => syntax(
            &[
                ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"),
                ("<|tool_call_section_begin|>", "<|tool_call_section_end|>"),
            ],
            |_, body, _| kimi_k2_body(body),
        ),
        KimiK3 => Some(BlockSyntax {
            pairs: &[("<|open|>tools<|sep|>", "<|close|>tools<|sep|>")],
            read: |_, body, schemas| xml_calls::kimi_k3(body, schemas),
            dropped: &["<|open|>response<|sep|>", "<|close|>response<|sep|>", "<|close|>message<|sep|>", "<|end_of_msg|>"],
        }),
        Harmony => syntax(
            &[("<|start|>assistant<|channel|>commentary", "<|call|>"), ("<|channel|>commentary", "<|call|>")],
            |_, body, _| harmony_body(body),
        ),
        Gemma4 => syntax(&[("<|tool_call>", "<tool_call|>")], |_, body, _| xml_calls::gemma4(body)),
        Inkling => syntax(&[("<|message_model|>", "<|end_message|>")], |_, body, _| inkling_body(body)),
        Llama3Json | Mistral | Pythonic | Phi4 => None,
    }
}

/// One or more JSON values (objects or arrays of calls), maybe separated by whitespace.
pub(super) fn json_body(body: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut values = serde_json::Deserializer::from_str(body).into_iter::<&serde_json::value::RawValue>();
    for value in values.by_ref() {
        calls.extend(json_calls(value.ok()?.get())?);
    }
    (!calls.is_empty()).then_some(calls)
}

/// `{"name": …, "arguments" | "parameters": …}`, or a non-empty array of them, as calls; the
/// arguments keep the model's text, minified.
pub(super) fn json_calls(text: &str) -> Option<Vec<ToolCall>> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        name: String,
        #[serde(borrow, alias = "parameters", alias = "args")]
        arguments: Option<&'a serde_json::value::RawValue>,
    }
    if text.trim_start().starts_with('[') {
        let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(text).ok()?;
        if items.is_empty() {
            return None;
        }
        return items.into_iter().map(|item| json_calls(item.get()).and_then(|mut one| one.pop())).collect();
    }
    let call: Call = serde_json::from_str(text).ok()?;
    let arguments = match call.arguments {
        Some(raw) => json_arguments(raw.get())?,
        None => "{}".to_owned(),
    };
    Some(vec![ToolCall::with_arguments(call.name, arguments)])
}

/// DeepSeek: calls between `<｜tool▁call▁begin｜>` and `<｜tool▁call▁end｜>`, each
/// `function<｜tool▁sep｜>name` + a fenced JSON block (V3) or `name<｜tool▁sep｜>{…}` (V3.1).
fn deepseek_body(open: &str, body: &str, _: &ToolSchemas) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    if open == DS_CALL_BEGIN {
        return deepseek_call(body).map(|call| vec![call]);
    }
    let mut rest = body;
    while let Some(start) = rest.find(DS_CALL_BEGIN) {
        let after = &rest[start + DS_CALL_BEGIN.len()..];
        let end = after.find(DS_CALL_END)?;
        calls.push(deepseek_call(&after[..end])?);
        rest = &after[end + DS_CALL_END.len()..];
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

fn deepseek_call(call: &str) -> Option<ToolCall> {
    let (head, tail) = call.split_once(DS_SEP)?;
    let (name, arguments) = match tail.split_once("```") {
        Some((name, fenced)) => {
            let fenced = fenced.strip_prefix("json").unwrap_or(fenced);
            (name.trim(), fenced.rsplit_once("```").map_or(fenced, |(inside, _)| inside))
        }
        None => (head.trim(), tail),
    };
    (!name.is_empty()).then_some(())?;
    Some(ToolCall::with_arguments(name.to_owned(), json_arguments(arguments.trim())?))
}

/// Kimi K2: `<|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{…}<|tool_call_end|>`;
/// the `functions.name:0` id is the call's id (Kimi's template writes it back as such).
fn kimi_k2_body(body: &str) -> Option<Vec<ToolCall>> {
    let mut calls = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find(KIMI_CALL_BEGIN) {
        let after = &rest[start + KIMI_CALL_BEGIN.len()..];
        let end = after.find(KIMI_CALL_END)?;
        let (id, arguments) = after[..end].split_once(KIMI_ARGUMENTS)?;
        let id = id.trim();
        let name = id.strip_prefix("functions.").unwrap_or(id);
        let name = name.rsplit_once(':').filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit())).map_or(name, |(name, _)| name);
        let mut call = ToolCall::with_arguments(name.to_owned(), json_arguments(arguments.trim())?);
        call.id = id.to_owned();
        calls.push(call);
        rest = &after[end + KIMI_CALL_END.len()..];
    }
    (!calls.is_empty() && rest.trim().is_empty()).then_some(calls)
}

/// harmony: ` to=functions.name <|constrain|>json<|message|>{…}` (the channel's header and body).
fn harmony_body(body: &str) -> Option<Vec<ToolCall>> {
    let (header, arguments) = body.split_once("<|message|>")?;
    let (_, to) = header.split_once("to=")?;
    let name: String = to.chars().take_while(|c| !c.is_whitespace() && *c != '<').collect();
    let name = name.strip_prefix("functions.").unwrap_or(&name);
    (!name.is_empty()).then_some(())?;
    Some(vec![ToolCall::with_arguments(name.to_owned(), json_arguments(arguments.trim())?)])
}

/// Inkling: `name<|content_invoke_tool_json|>{"name": …, "args": {…}}`.
fn inkling_body(body: &str) -> Option<Vec<ToolCall>> {
    let (label, json) = body.split_once(INKLING_TOOL)?;
    let calls = json_calls(json.trim())?;
    let label = label.trim();
    calls.iter().all(|call| label.is_empty() || call.name == label).then_some(calls)
}
