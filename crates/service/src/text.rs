//! Text for logs and answers: error chains, and bounded quotes of untrusted values.

use std::borrow::Cow;

/// An error and its sources, joined by `: `.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` whole up to `max_chars` characters, else cut there and marked with `…`, so that a huge
/// client-supplied value never makes a huge log line or response.
pub fn truncated(text: &str, max_chars: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max_chars) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Outer(#[source] std::fmt::Error);

    #[test]
    fn chains_join_every_source() {
        assert_eq!(
            error_chain(&Outer(std::fmt::Error)),
            "starting: an error occurred when formatting an argument"
        );
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        assert_eq!(truncated("héllo", 5), "héllo");
        assert_eq!(truncated("héllo", 2), "hé…");
        assert_eq!(truncated("", 0), "");
    }
}
