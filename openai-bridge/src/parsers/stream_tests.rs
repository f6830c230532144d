//! Streaming equals non-streaming, for every format: the recorded outputs and what each format's
//! writer writes, fed whole, at every character and in random pieces, must give the same
//! content, reasoning and calls; each call's pieces must start with its id and name and add up
//! to its arguments; and the formats that stream arguments must send a call's name before its
//! block ends and its arguments in more than one piece.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::tests::split;
use super::*;

/// What a stream of deltas adds up to: content, reasoning, whole calls, and the calls put
/// together from their pieces (id, name, arguments, number of argument pieces).
#[derive(Debug, Default)]
struct Streamed {
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
    pieces: Vec<(String, String, String, usize)>,
    /// Index of the push that started each call, and of the push that completed it.
    started_at: Vec<usize>,
    completed_at: Vec<usize>,
}

fn run(parser: &mut OutputParser, pieces: &[&str]) -> Streamed {
    let mut out = Streamed::default();
    let take = |delta: ParsedDelta, at: usize, out: &mut Streamed| {
        out.content.push_str(&delta.content);
        out.reasoning.push_str(&delta.reasoning);
        for piece in delta.call_pieces {
            match piece {
                CallPiece::Start { id, name } => {
                    out.pieces.push((id, name, String::new(), 0));
                    out.started_at.push(at);
                }
                CallPiece::Arguments(text) => {
                    let call = out.pieces.last_mut().expect("arguments come after their call's start");
                    call.2.push_str(&text);
                    call.3 += 1;
                }
            }
        }
        for call in delta.tool_calls {
            out.completed_at.push(at);
            out.calls.push(call);
        }
    };
    for (at, piece) in pieces.iter().enumerate() {
        take(parser.push(piece), at, &mut out);
    }
    take(parser.finish(), pieces.len(), &mut out);
    out
}

/// Checks one text under one pair of formats; returns the char-by-char run for more checks.
fn check(what: &str, reasoning: Option<ReasoningFormat>, tools: Option<ToolCallFormat>, text: &str) -> Streamed {
    let whole = run(&mut OutputParser::new(reasoning, tools), &[text]);
    let by_char = run(&mut OutputParser::new(reasoning, tools), &split(text, 0));
    for (how, streamed) in std::iter::once(("by character", by_char))
        .chain((1..=6).map(|seed| ("in pieces", run(&mut OutputParser::new(reasoning, tools), &split(text, seed)))))
        .collect::<Vec<_>>()
    {
        assert_eq!(streamed.content, whole.content, "{what} {how}: content");
        assert_eq!(streamed.reasoning, whole.reasoning, "{what} {how}: reasoning");
        let names = |calls: &[ToolCall]| calls.iter().map(|c| (c.name.clone(), c.arguments.clone())).collect::<Vec<_>>();
        assert_eq!(names(&streamed.calls), names(&whole.calls), "{what} {how}: calls");
        assert_eq!(streamed.pieces.len(), streamed.calls.len(), "{what} {how}: every call started once");
        for (call, (id, name, arguments, _)) in streamed.calls.iter().zip(&streamed.pieces) {
            assert_eq!((&call.id, &call.name, &call.arguments), (id, name, arguments), "{what} {how}: pieces add up");
        }
        for (started, completed) in streamed.started_at.iter().zip(&streamed.completed_at) {
            assert!(started <= completed, "{what} {how}: a call starts before it completes");
        }
        if how == "by character" {
            return streamed;
        }
    }
    unreachable!()
}

#[test]
fn every_recorded_output_streams_as_it_parses_whole() {
    let cases: Vec<Value> = serde_json::from_str(include_str!("../../tests/fixtures/model_outputs.json")).unwrap();
    for case in cases {
        let name = |key: &str| case[key].as_str().map(str::to_owned);
        let tools = name("tool_parser").map(|n| ToolCallFormat::from_name(&n).unwrap());
        let reasoning = name("reasoning_parser").map(|n| ReasoningFormat::from_name(&n).unwrap());
        check(case["family"].as_str().unwrap(), reasoning, tools, case["text"].as_str().unwrap());
    }
}

#[test]
fn every_format_streams_its_calls_name_first_and_arguments_in_pieces() {
    let weather = json!({"city": "Paris", "days": 3, "note": "a \"b\" {c}", "hours": [6, 12]});
    let time = json!({"zone": "CET"});
    let calls = [("get_weather", &weather), ("get_time", &time)];
    for (name, format) in TOOL_CALL_PARSERS {
        // Llama 3's JSON and pythonic calls are the whole output; the others may follow text.
        let before = if matches!(format, ToolCallFormat::Llama3Json | ToolCallFormat::Pythonic) { "" } else { "Let me look. " };
        let text = format!("{before}{}", format.write_calls(&calls));
        let streamed = check(name, None, Some(format), &text);
        assert_eq!(streamed.calls.len(), 2, "{name}: {text}");
        let read: Vec<Value> = streamed.calls.iter().map(|c| serde_json::from_str(&c.arguments).unwrap()).collect();
        assert_eq!(read, vec![weather.clone(), time.clone()], "{name}");
        // Every format: the first call's name went out before its last character, its arguments in pieces.
        assert!(streamed.started_at[0] < streamed.completed_at[0], "{name}: the name waited for the end: {text}");
        assert!(streamed.pieces[0].3 > 1, "{name}: arguments in one piece: {text}");
    }
}

#[test]
fn reasoning_and_tools_together_stream_as_they_parse() {
    let arguments = json!({"city": "Paris"});
    let pairs = [
        ("qwen3", "qwen3_coder", "<think>\nWeather.\n</think>\n\n"),
        ("deepseek_r1", "deepseek_v3_1", "Weather.</think>"),
        ("kimi_k25", "kimi_k2", "Weather."),
        ("gpt_oss", "harmony", "<|channel|>analysis<|message|>Weather.<|end|>"),
        ("minimax_m2", "minimax_m2", "Weather.</think>\n"),
        ("glm45", "glm45", "<think>Weather.</think>"),
        ("deepseek_v4", "deepseek_v4", "<think>Weather."),
    ];
    for (reasoning, tools, thought) in pairs {
        let format = ToolCallFormat::from_name(tools).unwrap();
        let text = format!("{thought}{}", format.write_calls(&[("get_weather", &arguments)]));
        let streamed = check(tools, ReasoningFormat::from_name(reasoning), Some(format), &text);
        assert_eq!(streamed.reasoning.trim(), "Weather.", "{reasoning} + {tools}: {text}");
        assert_eq!(streamed.calls.len(), 1, "{reasoning} + {tools}: {text}");
    }
}

#[test]
fn forced_calls_stream_their_pieces_at_the_end() {
    let mut parser = OutputParser::forced(None, ForcedCalls::Any);
    let streamed = run(&mut parser, &split(r#"[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]"#, 3));
    assert_eq!(
        streamed.pieces.iter().map(|p| (p.1.as_str(), p.2.as_str())).collect::<Vec<_>>(),
        [("a", r#"{"x":1}"#), ("b", "{}")]
    );
}

#[test]
fn schemas_type_streamed_parameters_as_the_whole_reading_does() {
    let parameters = json!({"properties": {"zip": {"type": "string"}, "count": {"type": "integer"}}});
    let text = "<tool_call>\n<function=lookup>\n<parameter=zip>\n01234\n</parameter>\n<parameter=count>\n7\n</parameter>\n</function>\n</tool_call>";
    let formats = OutputFormats { tool_calls: Some(ToolCallFormat::Qwen3Coder), reasoning: None };
    let mut parser = formats.parser(Some(ToolSchemas::new([("lookup", &parameters)]))).unwrap();
    let streamed = run(&mut parser, &split(text, 0));
    assert_eq!(streamed.calls[0].arguments, r#"{"zip":"01234","count":7}"#);
    assert_eq!(streamed.pieces[0].2, streamed.calls[0].arguments);
    assert!(streamed.pieces[0].3 >= 3, "one piece per parameter and the closing brace");
}
