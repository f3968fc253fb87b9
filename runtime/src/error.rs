//! One-line descriptions of errors for logs and error messages.
//!
//! The AWS SDK's `DisplayErrorContext` ends with the `Debug` form of the
//! whole response (headers and body), too much for a log line; the
//! `Display` of an `SdkError` alone says only "service error". This walks
//! the chain of sources instead and drops the links that repeat the one
//! before.

use std::error::Error;

/// `outer: inner: innermost`, each message once: a link whose text the
/// line already holds (the SDK repeats its causes) or that is empty is left
/// out.
pub fn error_chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Link {
        text: &'static str,
        #[source]
        source: Option<Box<Link>>,
    }

    fn chain(texts: &[&'static str]) -> Option<Box<Link>> {
        texts.split_first().map(|(text, rest)| {
            Box::new(Link {
                text,
                source: chain(rest),
            })
        })
    }

    #[test]
    fn a_chain_is_described_on_one_line_without_repetition() {
        let error =
            chain(&["service error", "NoSuchQueue: gone", "NoSuchQueue: gone"]).expect("a chain");
        assert_eq!(
            error_chain(error.as_ref()),
            "service error: NoSuchQueue: gone"
        );
    }

    #[test]
    fn empty_links_are_left_out() {
        let error = chain(&["dispatch failure", "", "connection refused"]).expect("a chain");
        assert_eq!(
            error_chain(error.as_ref()),
            "dispatch failure: connection refused"
        );
    }
}
