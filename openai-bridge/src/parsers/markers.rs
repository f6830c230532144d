//! Finding the first of several markers in streamed text, and how much of its end to hold back
//! because it may be a marker's beginning.

use crate::stop::partial_match;

/// The earliest marker of any group in `text`: (byte offset, group index, marker). At one
/// offset the longest marker wins (`<|start|>assistant<|channel|>commentary` over
/// `<|channel|>commentary` would not tie, but `[TOOL_CALLS]` over `[TOOL` would).
pub(super) fn earliest(text: &str, groups: &[&[&'static str]]) -> Option<(usize, usize, &'static str)> {
    let mut best: Option<(usize, usize, &'static str)> = None;
    for (group, markers) in groups.iter().enumerate() {
        for &marker in markers.iter() {
            if marker.is_empty() {
                continue;
            }
            if let Some(at) = text.find(marker) {
                let better = match best {
                    None => true,
                    Some((best_at, _, best_marker)) => at < best_at || (at == best_at && marker.len() > best_marker.len()),
                };
                if better {
                    best = Some((at, group, marker));
                }
            }
        }
    }
    best
}

/// The length of the longest end of `text` that begins some marker of the groups.
pub(super) fn held_back(text: &str, groups: &[&[&'static str]]) -> usize {
    groups.iter().flat_map(|markers| markers.iter()).map(|marker| partial_match(text, marker)).max().unwrap_or(0)
}

/// The largest char boundary of `text` at or below `at`.
pub(super) fn floor_boundary(text: &str, at: usize) -> usize {
    let at = at.min(text.len());
    (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_and_then_the_longest_marker_wins() {
        let groups: &[&[&str]] = &[&["<b>", "<a>"], &["<a>x"]];
        assert_eq!(earliest("..<a>x<b>", groups), Some((2, 1, "<a>x")));
        assert_eq!(earliest("..<a>y<b>", groups), Some((2, 0, "<a>")));
        assert_eq!(earliest("nothing", groups), None);
        assert_eq!(held_back("text <a", groups), 2);
        assert_eq!(held_back("text", groups), 0);
        assert_eq!(floor_boundary("é", 1), 0);
    }
}
