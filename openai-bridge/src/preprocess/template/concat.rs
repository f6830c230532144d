//! Output tags that join strings with `+`, written as one tag per operand.
//!
//! Chat templates build each turn as `{{ '<|im_start|>' + message.role + '\n' + message.content +
//! '<|im_end|>' + '\n' }}`. minijinja evaluates each `+` into a new string, so a long message is
//! copied once per operator after it and once more into the output: an agent's 100 KB history
//! was copied six times per render. Written as `{{ '<|im_start|>' }}{{ message.role if ... }}`,
//! each operand goes straight into the output.
//!
//! Only a chain that starts with a string literal is rewritten. Then each `+` in the original is
//! string + operand, which minijinja concatenates when the operand is a string and refuses
//! otherwise, so a later operand `x` becomes `{{ x if x is string else '' + x }}`: the same text
//! when it is a string, and else the same error from the same operator, naming the same undefined
//! value. A literal operand is written as it is. Operands are kept to shapes that are pure and
//! whose precedence is plain: a literal, or a name with attribute and index lookups and
//! argument-less filters known to be pure (which bind tighter than `+`). Anything else in the tag (another
//! operator, a call, a test, a conditional) leaves the tag as it is.
//!
//! Each operand stays where it was, so an error in it names the line it names now (minijinja
//! reports the line of the operand just evaluated).

use minijinja::machinery::{Span, Token, tokenize};
use minijinja::syntax::SyntaxConfig;

/// `source` with its string-joining output tags split into one tag per operand, or `None` when
/// it has none (or does not lex: compiling it reports why).
pub(crate) fn split_concatenations(source: &str, syntax: SyntaxConfig) -> Option<String> {
    let mut out = String::with_capacity(source.len() + 256);
    let mut copied = 0;
    let mut tag: Option<Vec<(Token<'_>, Span)>> = None;
    for token in tokenize(source, false, syntax) {
        let (token, span) = token.ok()?;
        match (token, &mut tag) {
            (Token::VariableStart, _) => tag = Some(Vec::new()),
            (Token::VariableEnd, Some(inner)) => {
                if let Some(operands) = operands(inner)
                    && let (Some(first), Some(last)) = (operands.first(), operands.last())
                    && let Some(written) = one_tag_each(source, &operands)
                {
                    out.push_str(source.get(copied..first.start)?);
                    out.push_str(&written);
                    copied = last.end;
                }
                tag = None;
            }
            (token, Some(inner)) => inner.push((token, span)),
            _ => {}
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(source.get(copied..)?);
    Some(out)
}

/// An operand's bytes in the source.
struct Operand {
    start: usize,
    end: usize,
    literal: bool,
}

/// The operands from the first's start to the last's end as one tag per operand, each where it
/// was, so an error in it names the line it names now.
fn one_tag_each(source: &str, operands: &[Operand]) -> Option<String> {
    let mut written = String::new();
    let mut previous_end = None;
    for operand in operands {
        let text = source.get(operand.start..operand.end)?;
        if let Some(end) = previous_end {
            // The `+` between: its line breaks stay, as whitespace inside the tag before.
            let breaks = source.get(end..operand.start)?.matches('\n').count();
            written.push(' ');
            written.extend(std::iter::repeat_n('\n', breaks));
            written.push_str("}}{{ ");
        }
        previous_end = Some(operand.end);
        match operand.literal {
            true => written.push_str(text),
            // A lookup split over lines is left alone: written three times, it would add lines.
            false if text.contains('\n') => return None,
            false => written.push_str(&format!("{text} if {text} is string else '' + {text}")),
        }
    }
    Some(written)
}

/// A tag's operands when it is `'literal' + operand (+ operand)*`.
fn operands(tokens: &[(Token<'_>, Span)]) -> Option<Vec<Operand>> {
    let mut operands = Vec::new();
    let mut at = 0;
    while at < tokens.len() {
        if at > 0 {
            if !matches!(tokens[at].0, Token::Plus) {
                return None;
            }
            at += 1;
        }
        let literal = matches!(tokens.get(at)?.0, Token::Str(_) | Token::String(_));
        if at == 0 && !literal {
            return None;
        }
        let end = operand_end(tokens, at)?;
        let (start, end_offset) = (tokens[at].1.start_offset as usize, tokens[end - 1].1.end_offset as usize);
        operands.push(Operand { start, end: end_offset, literal });
        at = end;
    }
    (operands.len() >= 2).then_some(operands)
}

/// Words the lexer gives as names that are operators or tests, not variables.
const KEYWORDS: [&str; 7] = ["and", "or", "not", "if", "else", "is", "in"];
/// Filters that give the same value each time (a rewritten operand is evaluated twice).
const PURE_FILTERS: [&str; 14] =
    ["trim", "upper", "lower", "capitalize", "title", "string", "safe", "e", "escape", "tojson", "length", "first", "last", "join"];

/// The index after the operand starting at `at`: a string literal, or a name followed by
/// `.name`, `.0`, `['key']`, `[0]` and `|filter` (one of [`PURE_FILTERS`], without arguments).
fn operand_end(tokens: &[(Token<'_>, Span)], mut at: usize) -> Option<usize> {
    match &tokens.get(at)?.0 {
        Token::Str(_) | Token::String(_) => return Some(at + 1),
        Token::Ident(name) if !KEYWORDS.contains(name) => at += 1,
        _ => return None,
    }
    loop {
        match tokens.get(at).map(|t| &t.0) {
            Some(Token::Dot) => match tokens.get(at + 1).map(|t| &t.0) {
                Some(Token::Ident(_) | Token::Int(_)) => at += 2,
                _ => return None,
            },
            Some(Token::BracketOpen) => match (tokens.get(at + 1).map(|t| &t.0), tokens.get(at + 2).map(|t| &t.0)) {
                (Some(Token::Str(_) | Token::String(_) | Token::Int(_)), Some(Token::BracketClose)) => at += 3,
                _ => return None,
            },
            Some(Token::Pipe) => match (tokens.get(at + 1).map(|t| &t.0), tokens.get(at + 2).map(|t| &t.0)) {
                (Some(Token::Ident(_)), Some(Token::ParenOpen)) => return None,
                (Some(Token::Ident(name)), _) if PURE_FILTERS.contains(name) => at += 2,
                _ => return None,
            },
            _ => return Some(at),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "concat_tests.rs"]
mod tests;
