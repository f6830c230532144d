//! Stop strings over streamed text: a stop string may arrive split over many deltas, so text
//! that could be its beginning is held back until it is ruled out. As in OpenAI's API the stop
//! string itself is never emitted, nor anything after it.

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopOutcome {
    /// Text that is safe to send.
    pub emit: String,
    /// A stop string appeared: the sequence is over (later pushes emit nothing).
    pub stopped: bool,
    /// Which stop string it was (Anthropic's `stop_sequence`).
    pub matched: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text not emitted yet: a suffix that some stop string starts with.
    held: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> StopMatcher {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        StopMatcher { stops, held: String::new(), stopped: false }
    }

    pub fn push(&mut self, text: String) -> StopOutcome {
        if self.stopped {
            return StopOutcome { emit: String::new(), stopped: true, matched: None };
        }
        // Nothing held (the usual case): the text itself is held, not a copy of it.
        if self.held.is_empty() {
            self.held = text;
        } else {
            self.held.push_str(&text);
        }
        // The stop string that ends first wins: generation would have stopped right there.
        let first = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, stop)| self.held.find(stop.as_str()).map(|at| (at + stop.len(), at, i)))
            .min();
        if let Some((_, at, i)) = first {
            self.held.truncate(at);
            self.stopped = true;
            return StopOutcome { emit: std::mem::take(&mut self.held), stopped: true, matched: Some(self.stops[i].clone()) };
        }
        let keep = self.stops.iter().map(|stop| partial_match(&self.held, stop)).max().unwrap_or(0);
        let rest = self.held.split_off(self.held.len() - keep);
        StopOutcome { emit: std::mem::replace(&mut self.held, rest), stopped: false, matched: None }
    }

    /// The end of the text: releases what was held back (nothing after a stop).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// The length of the longest end of `text` that `stop` starts with (a proper prefix of `stop`).
pub(crate) fn partial_match(text: &str, stop: &str) -> usize {
    stop.char_indices().rev().map(|(at, _)| at).find(|&at| at > 0 && text.ends_with(&stop[..at])).unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut matcher = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut emitted = Vec::new();
        let mut stopped = false;
        for piece in pieces {
            let outcome = matcher.push(piece.to_string());
            emitted.push(outcome.emit);
            stopped = outcome.stopped;
        }
        (emitted, stopped, matcher.finish())
    }

    #[test]
    fn no_stops_pass_everything_through() {
        assert_eq!(run(&[], &["a", "b"]), (vec!["a".into(), "b".into()], false, String::new()));
        assert_eq!(run(&[""], &["a"]), (vec!["a".into()], false, String::new()));
    }

    #[test]
    fn stop_spanning_many_pushes() {
        let (emitted, stopped, rest) = run(&["<END>"], &["Hello <", "E", "N", "D> more"]);
        assert_eq!(emitted, ["Hello ", "", "", ""]);
        assert!(stopped);
        assert_eq!(rest, "");
    }

    #[test]
    fn held_text_is_released_when_ruled_out_or_at_the_end() {
        let (emitted, stopped, rest) = run(&["<END>"], &["a <E", "x", " <EN"]);
        assert_eq!(emitted, ["a ", "<Ex", " "]);
        assert!(!stopped);
        assert_eq!(rest, "<EN");
    }

    #[test]
    fn stop_at_the_very_start_and_nothing_after() {
        let mut matcher = StopMatcher::new(vec!["\n\n".into()]);
        let stopped = StopOutcome { emit: String::new(), stopped: true, matched: Some("\n\n".into()) };
        assert_eq!(matcher.push("\n\nrest".into()), stopped);
        assert_eq!(matcher.push("more".into()), StopOutcome { emit: String::new(), stopped: true, matched: None });
        assert_eq!(matcher.finish(), "");
    }

    #[test]
    fn overlapping_stops_end_at_the_first_complete_one() {
        // "bc" is complete before "abcd" could be.
        assert_eq!(run(&["abcd", "bc"], &["xab", "c", "d"]).0, ["x", "a", ""]);
        // Both complete in one push: the one that ends first wins.
        assert_eq!(run(&["cde", "bcdef", "de"], &["abcdefg"]).0, ["ab"]);
        // A stop's own prefix repeats inside it.
        let (emitted, stopped, _) = run(&["aab"], &["a", "a", "a", "b"]);
        assert_eq!(emitted, ["", "", "a", ""]);
        assert!(stopped);
    }

    #[test]
    fn multi_byte_characters() {
        let (emitted, stopped, _) = run(&["こんにちは", "🙂!"], &["日本", "こん", "に", "x🙂", "!"]);
        assert_eq!(emitted, ["日本", "", "", "こんにx", ""]);
        assert!(stopped);
        let (emitted, stopped, rest) = run(&["é."], &["caf", "é", " ok"]);
        assert_eq!(emitted, ["caf", "", "é ok"]);
        assert!(!stopped);
        assert_eq!(rest, "");
    }
}
