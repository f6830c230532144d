//! Structured output: a grammar (JSON schema, regex, a choice of strings, a Lark grammar) the
//! generated text must follow, enforced while sampling. Before each token the sequence's
//! [`llguidance::Matcher`] says which tokens may come next; the sampler draws only among them,
//! and the token drawn advances the matcher. When the grammar is complete the sequence ends.
//!
//! The token trie is built once per model, from the bytes of every token of its vocabulary
//! (special tokens marked so that no grammar can spell them).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};
use tokenizers::Tokenizer;
use toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};

use tritium_backend_api::llm::{Constraint, ModelCard, Vocabulary};

/// Lexer states one grammar may build (llguidance's default is 250,000 at 1-2 kB each): a
/// bound on the memory one constrained sequence can take.
const MAX_LEXER_STATES: usize = 50_000;

/// Compiles constraints for one model.
pub(crate) struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").finish_non_exhaustive()
    }
}

impl Grammars {
    /// The token trie of `card`'s tokenizer over a vocabulary of `vocab_size` ids (the model's
    /// logits may cover more ids than the tokenizer names: those can never be drawn).
    pub(crate) fn new(card: &ModelCard, vocab_size: usize) -> Result<Grammars, String> {
        let tokenizer: Tokenizer =
            card.tokenizer_json.parse().map_err(|e| format!("the tokenizer cannot be loaded for constrained decoding: {e}"))?;
        let vocabulary = Vocabulary::new(&tokenizer);
        let special: std::collections::HashSet<u32> =
            tokenizer.get_added_tokens_decoder().iter().filter(|(_, token)| token.special).map(|(&id, _)| id).collect();
        let words: Vec<Vec<u8>> = (0..u32::try_from(vocab_size).unwrap_or(u32::MAX))
            .map(|id| {
                let bytes = vocabulary.token_bytes(&tokenizer, id);
                if special.contains(&id) || bytes.is_empty() {
                    let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    match bytes.is_empty() {
                        true => marked.extend_from_slice(format!("<unnamed_{id}>").as_bytes()),
                        false => marked.extend_from_slice(&bytes),
                    }
                    marked
                } else {
                    bytes
                }
            })
            .collect();
        let eos = card.eos_token_ids.first().copied().unwrap_or(0);
        let mut info = TokRxInfo::new(u32::try_from(words.len()).unwrap_or(u32::MAX), eos);
        info.tok_end_of_turn = card.eos_token_ids.get(1).copied();
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| format!("constrained decoding: {e}"))?;
        factory.quiet();
        factory.limits_mut().max_lexer_states = MAX_LEXER_STATES;
        Ok(Grammars { factory })
    }

    /// A matcher for `constraint`, or why the constraint is not valid.
    pub(crate) fn matcher(&self, constraint: &Constraint) -> Result<Matcher, String> {
        let grammar = match constraint {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Constraint::JsonSchema(text) => {
                let schema: Value = serde_json::from_str(text).map_err(|e| format!("the JSON schema is not valid JSON: {e}"))?;
                if !schema.is_object() && !schema.is_boolean() {
                    return Err("the JSON schema must be an object".to_string());
                }
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Constraint::Regex(regex) => TopLevelGrammar::from_regex(regex),
            Constraint::Choice(choices) => {
                if choices.is_empty() {
                    return Err("the choice needs at least one string".to_string());
                }
                let alternatives: Vec<String> = choices.iter().map(|c| Value::String(c.clone()).to_string()).collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Constraint::Lark(grammar) => TopLevelGrammar::from_lark(grammar.clone()),
        };
        let parser = self.factory.create_parser(grammar).map_err(|e| format!("the grammar is not valid: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        match matcher.get_error() {
            Some(error) => Err(format!("the grammar is not valid: {error}")),
            None => Ok(matcher),
        }
    }
}

/// JSON as one line with Python's separators: a small model given free whitespace can loop on
/// newlines forever. Schema keywords llguidance does not know are ignored, not refused.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(object) = &mut schema
        && !object.contains_key("x-guidance")
    {
        let options = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": ", "lenient": true});
        object.insert("x-guidance".into(), options);
    }
    schema
}

/// One sequence's progress through its grammar.
pub(crate) struct Constrained {
    matcher: Matcher,
}

impl Constrained {
    pub(crate) fn new(matcher: Matcher) -> Constrained {
        Constrained { matcher }
    }

    /// The tokens allowed next.
    pub(crate) fn mask(&mut self) -> Result<SimpleVob, String> {
        self.matcher.compute_mask_or_eos().map_err(|e| format!("constrained decoding failed: {e}"))
    }

    /// Advances past `token`; true when the grammar is complete and nothing more may follow.
    pub(crate) fn advance(&mut self, token: u32) -> Result<bool, String> {
        self.matcher.consume_token(token).map_err(|e| format!("constrained decoding failed: {e}"))?;
        Ok(self.matcher.is_stopped())
    }

    /// The grammar allows the text to end here.
    pub(crate) fn accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }
}
