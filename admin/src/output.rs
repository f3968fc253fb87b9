//! What `obt-admin` prints: a table for people, JSON for scripts.

use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::parking::ParkedIdentity;

/// The parked identities as a table, or a sentence when there are none.
pub fn table(parked: &[ParkedIdentity]) -> String {
    if parked.is_empty() {
        return "No identity is parked.\n".to_owned();
    }
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "identity",
            "stage",
            "seq",
            "cause",
            "parked at",
            "age",
            "waiting",
            "reason",
        ]);
    for p in parked {
        table.add_row([
            p.identity.clone(),
            p.stage.to_owned(),
            p.seq.map_or_else(|| "?".to_owned(), |s| s.to_string()),
            p.cause.clone(),
            p.parked_at.clone(),
            p.age_secs.map_or_else(String::new, age),
            p.waiting.to_string(),
            match &p.message_id {
                Some(id) => format!("{} (message {id})", p.reason),
                None => p.reason.clone(),
            },
        ]);
    }
    format!("{table}\n")
}

/// `value` as one JSON document and a newline.
pub fn json(value: &impl Serialize) -> String {
    // Plain data (strings and numbers): serializing it cannot fail.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

/// Seconds as the largest unit that fits: `42s`, `17m`, `5h`, `3d`.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(17 * 60 + 5), "17m");
        assert_eq!(age(5 * 3600), "5h");
        assert_eq!(age(3 * 86_400 + 7), "3d");
    }

    #[test]
    fn an_empty_list_is_a_sentence() {
        assert_eq!(table(&[]), "No identity is parked.\n");
    }
}
