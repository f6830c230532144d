//! The parsers on recorded outputs of several model families (tests/fixtures/model_outputs.json),
//! fed whole, one character at a time, and in pseudo-random pieces: a token boundary may fall
//! anywhere, so every split must give the same result.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde::Deserialize;
use serde_json::Value;

use super::*;

#[derive(Debug, Deserialize)]
struct Case {
    family: String,
    tool_parser: Option<String>,
    reasoning_parser: Option<String>,
    text: String,
    expected: Expected,
}

#[derive(Debug, Deserialize)]
struct Expected {
    content: Option<String>,
    reasoning: Option<String>,
    tool_calls: Vec<ExpectedCall>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct ExpectedCall {
    name: String,
    arguments: Value,
}

fn cases() -> Vec<Case> {
    serde_json::from_str(include_str!("../../tests/fixtures/model_outputs.json")).expect("the fixture parses")
}

/// Runs the parser over `pieces`: (content, reasoning, calls).
fn run(case: &Case, pieces: &[&str]) -> (String, String, Vec<ToolCall>) {
    let tools = case.tool_parser.as_deref().map(|name| ToolCallFormat::from_name(name).expect("known tool parser"));
    let reasoning = case.reasoning_parser.as_deref().map(|name| ReasoningFormat::from_name(name).expect("known parser"));
    let mut parser = OutputParser::new(reasoning, tools);
    let mut all = ParsedDelta::default();
    for piece in pieces {
        all.extend(parser.push(piece));
    }
    all.extend(parser.finish());
    (all.content, all.reasoning, all.tool_calls)
}

/// Splits at char boundaries: every `n`th, or pseudo-randomly from `seed`.
pub(super) fn split(text: &str, seed: u64) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut rest = text;
    while !rest.is_empty() {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let want = if seed == 0 { 1 } else { 1 + (state >> 33) as usize % 9 };
        let mut at = want.min(rest.len());
        while !rest.is_char_boundary(at) {
            at += 1;
        }
        let (piece, tail) = rest.split_at(at);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

fn check(case: &Case, how: &str, (content, reasoning, calls): (String, String, Vec<ToolCall>)) {
    let what = format!("{} ({how}): {:?}", case.family, case.text);
    let trimmed = content.trim();
    assert_eq!((!trimmed.is_empty()).then_some(trimmed), case.expected.content.as_deref().map(str::trim), "content of {what}");
    let reasoning = reasoning.trim();
    assert_eq!(
        (!reasoning.is_empty()).then_some(reasoning),
        case.expected.reasoning.as_deref().map(str::trim).filter(|r| !r.is_empty()),
        "reasoning of {what}"
    );
    let got: Vec<ExpectedCall> = calls
        .iter()
        .map(|call| ExpectedCall {
            name: call.name.clone(),
            arguments: serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("arguments of {what}: {e}")),
        })
        .collect();
    assert_eq!(got, case.expected.tool_calls, "tool calls of {what}");
    // Mistral and Kimi write ids of their own, which their templates read back.
    let own_ids = matches!(case.tool_parser.as_deref(), Some("mistral" | "kimi_k2" | "kimi_k25"));
    for call in &calls {
        assert!(call.id.starts_with("call_") || own_ids, "{what}: id {}", call.id);
    }
}

#[test]
fn recorded_outputs_parse_the_same_however_they_are_split() {
    let cases = cases();
    assert!(cases.len() >= 8, "the fixture has {} cases", cases.len());
    for case in &cases {
        check(case, "whole", run(case, &[&case.text]));
        check(case, "one character at a time", run(case, &split(&case.text, 0)));
        for seed in 1..=8 {
            check(case, &format!("pieces from seed {seed}"), run(case, &split(&case.text, seed)));
        }
    }
}

#[test]
fn a_call_is_given_out_once_when_it_is_complete() {
    let mut parser = OutputParser::new(None, Some(ToolCallFormat::Hermes));
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"}</tool\"}}\n</tool_call>";
    let mut seen = Vec::new();
    for (i, c) in text.char_indices() {
        let delta = parser.push(&c.to_string());
        assert!(delta.content.is_empty(), "no text leaks from a call: {delta:?}");
        if !delta.tool_calls.is_empty() {
            seen.push(i);
        }
    }
    assert_eq!(seen, vec![text.len() - 1], "the call comes with its last character");
    assert!(parser.finish().is_empty());
}

#[test]
fn text_that_only_looks_like_a_marker_is_given_back() {
    for (format, text) in [
        (ToolCallFormat::Hermes, "a <tool_cal b <tool_call>not json</tool_call> c"),
        (ToolCallFormat::Mistral, "x [TOOL_CALLS] no call here"),
        (ToolCallFormat::Llama3Json, "{\"answer\": 42}"),
        (ToolCallFormat::Llama3Json, "{\"name\": \"f\", \"parameters\": {"),
        (ToolCallFormat::Pythonic, "[1, 2, 3] are numbers"),
        (ToolCallFormat::Pythonic, "[f(a="),
    ] {
        let parsed = OutputParser::new(None, Some(format)).parse_all(text);
        assert_eq!((parsed.content.as_str(), parsed.tool_calls.len()), (text, 0), "{format:?}");
        let mut parser = OutputParser::new(None, Some(format));
        let mut content: String = text.chars().map(|c| parser.push(&c.to_string()).content).collect();
        content.push_str(&parser.finish().content);
        assert_eq!(content, text, "{format:?} streamed");
    }
}

#[test]
fn reasoning_without_its_markers() {
    let parsed = OutputParser::new(Some(ReasoningFormat::DeepseekR1), None).parse_all("  <think>\nsteps</think>answer");
    assert_eq!((parsed.reasoning.trim(), parsed.content.as_str()), ("steps", "answer"));
    let parsed = OutputParser::new(Some(ReasoningFormat::DeepseekR1), None).parse_all("still thinking");
    assert_eq!((parsed.reasoning.as_str(), parsed.content.as_str()), ("still thinking", ""));
    let parsed = OutputParser::new(Some(ReasoningFormat::Think), None).parse_all("no markers </think>");
    assert_eq!((parsed.reasoning.as_str(), parsed.content.as_str()), ("", "no markers </think>"));
}

#[test]
fn formats_by_name() {
    for name in ToolCallFormat::NAMES {
        assert!(ToolCallFormat::from_name(name).is_some(), "{name}");
    }
    for name in ReasoningFormat::NAMES {
        assert!(ReasoningFormat::from_name(name).is_some(), "{name}");
    }
    assert_eq!(ToolCallFormat::from_name("json"), None);
    // The names the cluster and the backends check cards and configs against are these.
    assert_eq!(ToolCallFormat::NAMES, tritium_backend_api::llm::TOOL_CALL_PARSER_NAMES);
    assert_eq!(ReasoningFormat::NAMES, tritium_backend_api::llm::REASONING_PARSER_NAMES);
    let names =
        tritium_backend_api::llm::OutputParserNames { tool_call_parser: Some("qwen3_coder".into()), reasoning_parser: None };
    let server = OutputFormats { tool_calls: Some(ToolCallFormat::Hermes), reasoning: Some(ReasoningFormat::Think) };
    let model = server.for_model(&names).unwrap();
    assert_eq!((model.tool_calls, model.reasoning), (Some(ToolCallFormat::Qwen3Coder), Some(ReasoningFormat::Think)));
    let formats = OutputFormats { tool_calls: Some(ToolCallFormat::Mistral), reasoning: Some(ReasoningFormat::Think) };
    assert_eq!(formats.markers(false), vec!["<think>", "</think>"]);
    assert!(formats.markers(true).contains(&"[TOOL_CALLS]"));
    assert!(OutputFormats::default().parser(Some(ToolSchemas::default())).is_none());
}

#[test]
fn forced_calls_stream_and_come_whole_at_the_end() {
    let mut parser = OutputParser::forced(None, ForcedCalls::Named("get_weather".into()));
    let first = parser.push("{\"city\": ");
    assert!(
        matches!(&first.call_pieces[..], [CallPiece::Start { name, .. }, CallPiece::Arguments(text)]
        if name == "get_weather" && text == "{\"city\":"),
        "{first:?}"
    );
    let second = parser.push("\"Paris\"}");
    assert_eq!(second.call_pieces, [CallPiece::Arguments("\"Paris\"}".into())]);
    assert!(second.tool_calls.is_empty(), "whole only at the end");
    let calls = parser.finish().tool_calls;
    assert_eq!((calls[0].name.as_str(), calls[0].arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
    let any = OutputParser::forced(None, ForcedCalls::Any)
        .parse_all(r#"[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]"#);
    assert_eq!(any.tool_calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let cut = OutputParser::forced(None, ForcedCalls::Any).parse_all(r#"[{"name": "a", "argu"#);
    assert_eq!((cut.content.as_str(), cut.tool_calls.len()), (r#"[{"name": "a", "argu"#, 0));
}

/// Whitespace before a call or a reasoning block, fed one character at a time, is scanned once:
/// the result is the same as for the text fed whole (and long runs stay linear).
#[test]
fn long_leading_whitespace_gives_the_same_parse_piece_by_piece() {
    let blank = " \n\t".repeat(20_000);
    let outputs = [
        ("pythonic", None, format!("{blank}[get_weather(city=\"Paris\")]")),
        ("llama3_json", None, format!("{blank}{{\"name\": \"get_weather\", \"parameters\": {{\"city\": \"Paris\"}}}}")),
        ("mistral", None, format!("[TOOL_CALLS]{blank}get_weather[ARGS]{{\"city\": \"{}\"}}", "P".repeat(20_000))),
        ("hermes", Some("deepseek_r1"), format!("{blank}<think>why</think>The answer.")),
        ("pythonic", None, format!("{blank}Just text.")),
    ];
    for (tools, reasoning, text) in outputs {
        let case = Case {
            family: tools.into(),
            tool_parser: Some(tools.into()),
            reasoning_parser: reasoning.map(str::to_string),
            text: text.clone(),
            expected: Expected { content: None, reasoning: None, tool_calls: Vec::new() },
        };
        // Call ids are unique per call; the rest must match.
        let without_ids = |(content, reasoning, calls): (String, String, Vec<ToolCall>)| {
            (content, reasoning, calls.into_iter().map(|call| (call.name, call.arguments)).collect::<Vec<_>>())
        };
        let whole = without_ids(run(&case, &[&text]));
        let by_char = without_ids(run(&case, &split(&text, 0)));
        assert_eq!(by_char, whole, "{tools}");
        assert!(!whole.2.is_empty() || !whole.0.trim().is_empty() || !whole.1.is_empty(), "{tools}: nothing parsed");
    }
}

/// Gemma 4's literal syntax nests; a call nested past the bound is given back as text, not read
/// by one stack frame per level.
#[test]
fn a_gemma_call_nested_too_deep_is_text() {
    let deep = format!("<|tool_call>call:f{{a:{}1{}}}<tool_call|>", "[".repeat(200), "]".repeat(200));
    let parsed = OutputParser::new(None, Some(ToolCallFormat::Gemma4)).parse_all(&deep);
    assert!(parsed.tool_calls.is_empty() && parsed.content == deep, "{parsed:?}");
    let shallow = "<|tool_call>call:f{a:[[1]]}<tool_call|>";
    let parsed = OutputParser::new(None, Some(ToolCallFormat::Gemma4)).parse_all(shallow);
    assert_eq!(parsed.tool_calls[0].arguments, r#"{"a":[[1]]}"#);
}

#[test]
fn a_gemma_4_call_still_arriving_gives_the_arguments_certain_so_far() {
    let q = "<|\"|>";
    let whole = format!("call:get_weather{{city:{q}Paris, France{q},days:3,opts:{{metric:true}}}}");
    let final_text = xml_calls::gemma4(&whole).unwrap()[0].arguments.clone();
    assert_eq!(xml_calls::gemma4_partial("call:get_wea"), None);
    assert_eq!(xml_calls::gemma4_partial("call:get_weather{"), Some(("get_weather".into(), "{".into())));
    let first = format!("call:get_weather{{city:{q}Paris, France{q},");
    assert_eq!(xml_calls::gemma4_partial(&first), Some(("get_weather".into(), r#"{"city":"Paris, France""#.into())));
    for cut in (0..=whole.len()).filter(|&cut| whole.is_char_boundary(cut)) {
        if let Some((_, text)) = xml_calls::gemma4_partial(&whole[..cut]) {
            assert!(final_text.starts_with(&text), "{cut}: {text} / {final_text}");
        }
    }
    assert_eq!(xml_calls::gemma4("call:f{a:1,a:2}"), None, "a repeated key");
}
