//! The hostile-input table of `POST /api/v1/spending`: malformed,
//! ambiguous and malicious requests, one line each. Every one must get a
//! clear 4xx whose JSON error body names the offending field (or says what
//! is wrong with the body, the media type or the header), and must leave
//! nothing behind: no spending for the identity (GET answers 404), no event
//! in the outbox (no `obt` row in MySQL), nothing stored at all. Runs in
//! both storage modes.
//!
//! `validation.rs` holds the table of the ordinary rules (each rule's
//! message, and the valid requests at the edge of each rule); this one is
//! about what an attacker or a broken client sends.

use axum::body::Body;
use axum::http::{Request, StatusCode};

use crate::helpers::TestApp;

/// The identity of every body below that has a valid one.
const IDENTITY: &str = "HOSTILE-1";

struct Case {
    name: &'static str,
    /// `None`: no Content-Type header.
    content_type: Option<&'static str>,
    idempotency_key: Option<&'static [u8]>,
    body: Vec<u8>,
    status: StatusCode,
    /// The member of `errors` that must say what is wrong.
    field: String,
    /// Text that one of the field's messages must contain.
    says: &'static str,
}

const JSON: Option<&str> = Some("application/json");
const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// A valid body (for [`IDENTITY`]) with one member's JSON replaced.
fn with(field: &str, json: &str) -> String {
    let mut members = [
        ("identity", format!("\"{IDENTITY}\"")),
        ("name", "\"Martin\"".to_owned()),
        ("surname", "\"Robi\"".to_owned()),
        ("amount", "51.3".to_owned()),
    ];
    let member = members
        .iter_mut()
        .find(|(name, _)| *name == field)
        .expect("a known field");
    member.1 = json.to_owned();
    let inner: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn valid() -> String {
    with("amount", "51.3")
}

/// A JSON body judged by its rules: 422 about `field`.
fn rule(name: &'static str, body: String, field: &str, says: &'static str) -> Case {
    Case {
        name,
        content_type: JSON,
        idempotency_key: None,
        body: body.into_bytes(),
        status: UNPROCESSABLE,
        field: field.to_owned(),
        says,
    }
}

/// A body that is not a JSON document: 400 about the body.
fn malformed(name: &'static str, body: impl Into<Vec<u8>>, says: &'static str) -> Case {
    Case {
        name,
        content_type: JSON,
        idempotency_key: None,
        body: body.into(),
        status: BAD_REQUEST,
        field: "body".to_owned(),
        says,
    }
}

fn media_type(name: &'static str, content_type: Option<&'static str>) -> Case {
    Case {
        name,
        content_type,
        idempotency_key: None,
        body: valid().into_bytes(),
        status: BAD_REQUEST,
        field: "body".to_owned(),
        says: "must be sent with Content-Type: application/json",
    }
}

fn cases() -> Vec<Case> {
    const STRING: &str = "must be a string";
    const AMOUNT_TYPE: &str = "must be a number, or a string holding a decimal number";
    const NOT_JSON: &str = "is not valid JSON";
    const IDENTITY_CHARS: &str = "may contain only letters A-Z and a-z, digits and . _ : -";
    const CONTROL: &str = "must not contain control characters";
    const NONCHARACTER: &str = "must not contain Unicode noncharacters such as U+FFFF";
    const EXPONENT: &str = "must be written without an exponent";
    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let mut bom = b"\xef\xbb\xbf".to_vec();
    bom.extend_from_slice(valid().as_bytes());
    let mut invalid_utf8 = with("name", "\"Mar\u{1}tin\"").into_bytes();
    let at = invalid_utf8
        .iter()
        .position(|b| *b == 1)
        .expect("the marker");
    invalid_utf8[at] = 0xff;
    let mut overlong_utf8 = with("name", "\"Mar\u{1}tin\"").into_bytes();
    overlong_utf8.splice(at..=at, [0xc0, 0xaf]);
    let utf16: Vec<u8> = valid()
        .encode_utf16()
        .flat_map(|unit| unit.to_le_bytes())
        .collect();

    vec![
        // Wrong types and nulls.
        rule(
            "identity a number",
            with("identity", "123"),
            "identity",
            STRING,
        ),
        rule(
            "identity null",
            with("identity", "null"),
            "identity",
            STRING,
        ),
        rule(
            "name an array",
            with("name", "[\"Martin\"]"),
            "name",
            STRING,
        ),
        rule(
            "surname an object",
            with("surname", "{\"s\":1}"),
            "surname",
            STRING,
        ),
        rule(
            "amount a boolean",
            with("amount", "true"),
            "amount",
            AMOUNT_TYPE,
        ),
        rule("amount null", with("amount", "null"), "amount", AMOUNT_TYPE),
        rule(
            "amount an array",
            with("amount", "[51.3]"),
            "amount",
            AMOUNT_TYPE,
        ),
        // Numbers.
        rule(
            "a 400-digit amount",
            with("amount", &"9".repeat(400)),
            "amount",
            "must have at most 18 integer digits",
        ),
        rule(
            "amount 1e400",
            with("amount", "1e400"),
            "amount",
            "must have at most 18 integer digits",
        ),
        rule(
            "amount 1E-400",
            with("amount", "1E-400"),
            "amount",
            "must have at most 2 fraction digits",
        ),
        rule(
            "amount 1e99999999999999999999 (an exponent beyond 64 bits)",
            with("amount", "1e99999999999999999999"),
            "amount",
            "must have at most 18 integer digits",
        ),
        rule(
            "amount a string with an exponent",
            with("amount", "\"5e-1\""),
            "amount",
            EXPONENT,
        ),
        malformed("amount NaN", with("amount", "NaN"), NOT_JSON),
        malformed("amount Infinity", with("amount", "Infinity"), NOT_JSON),
        malformed("amount -Infinity", with("amount", "-Infinity"), NOT_JSON),
        rule(
            "amount the string Infinity",
            with("amount", "\"Infinity\""),
            "amount",
            "must be a decimal number such as 51.30",
        ),
        rule(
            "amount negative zero",
            with("amount", "-0.00"),
            "amount",
            "must be greater than zero",
        ),
        rule(
            "amount with 3 decimals",
            with("amount", "0.001"),
            "amount",
            "must have at most 2 fraction digits",
        ),
        rule(
            "amount a hexadecimal string",
            with("amount", "\"0x10\""),
            "amount",
            "must be a decimal number such as 51.30",
        ),
        malformed("amount with leading zeros", with("amount", "007"), NOT_JSON),
        // Unicode and control characters.
        rule(
            "identity with a non-ASCII letter",
            with("identity", "\"ÄB1\""),
            "identity",
            IDENTITY_CHARS,
        ),
        rule(
            "identity with a NUL",
            with("identity", "\"AB\\u00001\""),
            "identity",
            IDENTITY_CHARS,
        ),
        rule(
            "identity with a zero-width space",
            with("identity", "\"AB\u{200b}1\""),
            "identity",
            IDENTITY_CHARS,
        ),
        rule(
            "identity with a newline (log injection)",
            with("identity", "\"AB1\\nlevel=ERROR\""),
            "identity",
            IDENTITY_CHARS,
        ),
        rule(
            "identity of 10000 characters",
            with("identity", &format!("\"{}\"", "x".repeat(10_000))),
            "identity",
            "must be at most 64 characters long",
        ),
        rule(
            "name with a NUL",
            with("name", "\"Mar\\u0000tin\""),
            "name",
            CONTROL,
        ),
        rule(
            "name with an escape sequence (terminal injection)",
            with("name", "\"\\u001b[31mMartin\""),
            "name",
            CONTROL,
        ),
        rule(
            "surname with a C1 control (NEL)",
            with("surname", "\"Ro\u{85}bi\""),
            "surname",
            CONTROL,
        ),
        rule(
            "name of 101 emoji",
            with("name", &format!("\"{}\"", "😀".repeat(101))),
            "name",
            "must be at most 100 characters long",
        ),
        rule(
            "name with a lone surrogate",
            with("name", "\"Mar\\ud800tin\""),
            "name",
            "is not a valid JSON string",
        ),
        // Unicode noncharacters: SQS refuses U+FFFE and U+FFFF in a message
        // body, so an accepted one would never be published.
        rule(
            "name U+FFFF",
            with("name", "\"\\uffff\""),
            "name",
            NONCHARACTER,
        ),
        rule(
            "name a U+FFFE",
            with("name", "\"a\\ufffe\""),
            "name",
            NONCHARACTER,
        ),
        rule(
            "surname U+FFFF",
            with("surname", "\"\\uffff\""),
            "surname",
            NONCHARACTER,
        ),
        rule(
            "surname a U+FFFE",
            with("surname", "\"a\\ufffe\""),
            "surname",
            NONCHARACTER,
        ),
        rule(
            "name U+FDD0 as UTF-8",
            with("name", "\"Mar\u{fdd0}tin\""),
            "name",
            NONCHARACTER,
        ),
        rule(
            "surname U+10FFFF as an escaped surrogate pair",
            with("surname", "\"Ro\\udbff\\udfffbi\""),
            "surname",
            NONCHARACTER,
        ),
        rule(
            "name U+1FFFE as UTF-8",
            with("name", "\"\u{1fffe}\""),
            "name",
            NONCHARACTER,
        ),
        // Shapes.
        rule(
            "an array body",
            format!("[{}]", valid()),
            "body",
            "must be a JSON object",
        ),
        rule(
            "a number body",
            "51.3".to_owned(),
            "body",
            "must be a JSON object",
        ),
        rule(
            "a duplicate key",
            format!("{},\"amount\":1}}", valid().trim_end_matches('}')),
            "amount",
            "must appear only once",
        ),
        rule(
            "a duplicate key spelled with an escape",
            format!("{},\"n\\u0061me\":\"Eve\"}}", valid().trim_end_matches('}')),
            "name",
            "must appear only once",
        ),
        rule(
            "an empty key",
            format!("{},\"\":1}}", valid().trim_end_matches('}')),
            "",
            "is not a known field",
        ),
        rule(
            "a prototype-pollution key",
            format!(
                "{},\"__proto__\":{{\"admin\":true}}}}",
                valid().trim_end_matches('}')
            ),
            "__proto__",
            "is not a known field",
        ),
        rule(
            "a deeply nested amount (100 levels)",
            with("amount", &nested(100)),
            "amount",
            AMOUNT_TYPE,
        ),
        rule(
            "a deeply nested amount (5000 levels)",
            with("amount", &nested(5000)),
            "amount",
            AMOUNT_TYPE,
        ),
        rule(
            "a deeply nested body (8000 levels)",
            nested(8000),
            "body",
            "must be a JSON object",
        ),
        // Not a JSON document.
        malformed("an empty body", "", NOT_JSON),
        malformed("only whitespace", " \n\t ", NOT_JSON),
        malformed("trailing garbage", format!("{}xyz", valid()), NOT_JSON),
        malformed("two documents", format!("{0}{0}", valid()), NOT_JSON),
        malformed("a comment", format!("/* admin */{}", valid()), NOT_JSON),
        malformed("a byte order mark", bom, "byte order mark"),
        malformed("invalid UTF-8", invalid_utf8, "is not valid UTF-8"),
        malformed("overlong UTF-8", overlong_utf8, "is not valid UTF-8"),
        malformed("UTF-16", utf16, NOT_JSON),
        malformed("a truncated body", &valid().as_bytes()[..20], NOT_JSON),
        // Size.
        Case {
            name: "a 1 MiB body",
            content_type: JSON,
            idempotency_key: None,
            body: with("name", &format!("\"{}\"", "a".repeat(1 << 20))).into_bytes(),
            status: StatusCode::PAYLOAD_TOO_LARGE,
            field: "body".to_owned(),
            says: "must be at most 16384 bytes",
        },
        // Media types.
        media_type("no Content-Type", None),
        media_type("text/plain", Some("text/plain")),
        media_type("a form", Some("application/x-www-form-urlencoded")),
        media_type("multipart", Some("multipart/form-data; boundary=x")),
        media_type("a JSON look-alike", Some("application/json-patch+json")),
        media_type("an empty Content-Type", Some("")),
        // The Idempotency-Key header.
        Case {
            name: "an Idempotency-Key with a byte that is not ASCII",
            content_type: JSON,
            idempotency_key: Some(b"key\xff"),
            body: valid().into_bytes(),
            status: BAD_REQUEST,
            field: "Idempotency-Key".to_owned(),
            says: "visible ASCII characters",
        },
    ]
}

fn request(case: &Case) -> Request<Body> {
    let mut builder = Request::post("/api/v1/spending");
    if let Some(content_type) = case.content_type {
        builder = builder.header("content-type", content_type);
    }
    if let Some(key) = case.idempotency_key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Body::from(case.body.clone()))
        .expect("a valid request")
}

#[tokio::test]
async fn every_hostile_request_is_a_clear_4xx_and_leaves_nothing_behind() {
    let app = TestApp::new().await;
    let cases = cases();
    assert!(cases.len() >= 30, "the table has {} cases", cases.len());
    for case in &cases {
        let name = case.name;
        let response = app.request(request(case)).await;
        assert_eq!(response.status, case.status, "{name}: {}", response.text);
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{name}: an error answer is JSON"
        );
        let messages = response.errors(&case.field);
        assert!(
            messages.iter().any(|m| m.contains(case.says)),
            "{name}: no message about {:?} saying {:?}: {}",
            case.field,
            case.says,
            response.text
        );
        let summary = app.get(&format!("/api/v1/spending/{IDENTITY}")).await;
        assert_eq!(summary.status, StatusCode::NOT_FOUND, "{name}: recorded");
        assert!(
            app.outbox_events(IDENTITY).await.is_empty(),
            "{name}: an event was written"
        );
        assert_eq!(app.stored_count().await, 0, "{name}: something was written");
    }
    // The same app records a valid request: the cases failed for their
    // own reason, not because the app could not write.
    let response = app
        .request(
            Request::post("/api/v1/spending")
                .header("content-type", "application/json")
                .body(Body::from(valid()))
                .expect("a valid request"),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    assert_eq!(app.outbox_events(IDENTITY).await.len(), 1);
}
