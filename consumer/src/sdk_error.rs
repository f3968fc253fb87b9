//! One-line descriptions of AWS SDK errors for logs and error messages.
//!
//! The SDK's `DisplayErrorContext` ends with the `Debug` form of the whole
//! response (headers and body), too much for a log line; the `Display` of
//! an `SdkError` alone says only "service error". This walks the chain of
//! sources instead and drops the links that repeat the one before.

use std::error::Error;

/// `outer: inner: innermost`, each distinct message once.
pub(crate) fn describe(error: &(dyn Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
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
        assert_eq!(describe(error.as_ref()), "service error: NoSuchQueue: gone");
    }
}
