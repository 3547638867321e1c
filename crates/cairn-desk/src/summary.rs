//! The extractive ticket summary: the subject, then the body's first sentences
//! up to [`MAX_CHARS`] characters (whitespace collapsed).

/// Longest summary, in characters.
pub const MAX_CHARS: usize = 280;

/// A summary of a ticket.
pub fn summarize(subject: &str, body: &str) -> String {
    let clean = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let subject = clean(subject);
    let body = clean(body);
    let mut out = subject.trim_end_matches(['.', '!', '?', ':']).to_owned();
    let mut rest = body.as_str();
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .find(|(i, c)| {
                matches!(c, '.' | '!' | '?') && rest[i + c.len_utf8()..].starts_with(' ')
            })
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(rest.len());
        let sentence = rest[..end].trim();
        let sep = if out.is_empty() { "" } else { ": " };
        let joined = if out.contains(": ") || out.is_empty() {
            format!("{out}{}{sentence}", if out.is_empty() { "" } else { " " })
        } else {
            format!("{out}{sep}{sentence}")
        };
        if joined.chars().count() > MAX_CHARS {
            if out.chars().count() < MAX_CHARS / 2 {
                // One long sentence: cut it at a word boundary.
                let cut: String = joined.chars().take(MAX_CHARS - 1).collect();
                let cut = cut.rsplit_once(' ').map(|(a, _)| a).unwrap_or(&cut);
                return format!("{cut}…");
            }
            break;
        }
        out = joined;
        rest = rest[end..].trim_start();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_short_and_start_with_the_subject() {
        let s = summarize(
            "Double charge",
            "I was charged twice for   my plan. Please refund one. Thanks!",
        );
        assert_eq!(
            s,
            "Double charge: I was charged twice for my plan. Please refund one. Thanks!"
        );
        let long = "word ".repeat(200);
        let s = summarize("Long", &long);
        assert!(s.chars().count() <= MAX_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(summarize("", "Just this."), "Just this.");
    }
}
