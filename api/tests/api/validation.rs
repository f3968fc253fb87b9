//! Every rule of `POST /api/v1/spending`, through the real router and a real
//! database: rejected requests answer the documented error and write
//! nothing; accepted ones store the exact amount. What broken or hostile
//! clients send (wrong types, NaN, invalid UTF-8, nesting, media types,
//! ...) is the table of `hostile.rs`.

use axum::http::StatusCode;

use crate::helpers::{TestApp, post_request};

struct Rejected {
    case: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: StatusCode,
    field: &'static str,
    /// The message expected among the field's messages; `None` when any
    /// message will do (it comes from the JSON parser).
    message: Option<&'static str>,
}

const JSON: Option<&str> = Some("application/json");

fn body(identity: &str, name: &str, surname: &str, amount: &str) -> String {
    format!(r#"{{"identity":{identity},"name":{name},"surname":{surname},"amount":{amount}}}"#)
}

/// A valid body with one member's JSON replaced.
fn with(field: &str, json: &str) -> String {
    let mut parts = [r#""AB1""#, r#""Martin""#, r#""Robi""#, "51.3"].map(str::to_owned);
    let index = ["identity", "name", "surname", "amount"]
        .iter()
        .position(|f| *f == field)
        .expect("a known field");
    parts[index] = json.to_owned();
    body(&parts[0], &parts[1], &parts[2], &parts[3])
}

fn unprocessable(
    case: &'static str,
    body: String,
    field: &'static str,
    message: &'static str,
) -> Rejected {
    Rejected {
        case,
        content_type: JSON,
        body,
        status: StatusCode::UNPROCESSABLE_ENTITY,
        field,
        message: Some(message),
    }
}

fn rejected_cases() -> Vec<Rejected> {
    const STRING: &str = "must be a string";
    const AMOUNT_TYPE: &str =
        "must be a number, or a string holding a decimal number such as \"51.30\"";
    const NOT_POSITIVE: &str = "must be greater than zero";
    let bad_json = |case, body: &str| Rejected {
        case,
        content_type: JSON,
        body: body.to_owned(),
        status: StatusCode::BAD_REQUEST,
        field: "body",
        message: None,
    };
    let bad_content_type = |case, content_type| Rejected {
        case,
        content_type,
        body: with("amount", "51.3"),
        status: StatusCode::BAD_REQUEST,
        field: "body",
        message: Some("must be sent with Content-Type: application/json"),
    };
    vec![
        unprocessable(
            "missing field",
            r#"{"identity":"AB1","name":"Martin","amount":51.3}"#.to_owned(),
            "surname",
            "is required",
        ),
        unprocessable("empty object", "{}".to_owned(), "identity", "is required"),
        unprocessable(
            "unknown field",
            r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3,"currency":"EUR"}"#
                .to_owned(),
            "currency",
            "is not a known field",
        ),
        unprocessable(
            "duplicate key",
            r#"{"identity":"AB1","name":"Martin","surname":"Robi","amount":51.3,"amount":1}"#
                .to_owned(),
            "amount",
            "must appear only once",
        ),
        unprocessable(
            "duplicate key with the same value",
            r#"{"identity":"AB1","identity":"AB1","name":"Martin","surname":"Robi","amount":1}"#
                .to_owned(),
            "identity",
            "must appear only once",
        ),
        unprocessable(
            "identity a number",
            with("identity", "1"),
            "identity",
            STRING,
        ),
        unprocessable(
            "identity an object",
            with("identity", r#"{"id":"AB1"}"#),
            "identity",
            STRING,
        ),
        unprocessable("name a number", with("name", "7"), "name", STRING),
        unprocessable("name null", with("name", "null"), "name", STRING),
        unprocessable(
            "surname a boolean",
            with("surname", "true"),
            "surname",
            STRING,
        ),
        unprocessable("surname null", with("surname", "null"), "surname", STRING),
        unprocessable(
            "amount an object",
            with("amount", r#"{"value":1}"#),
            "amount",
            AMOUNT_TYPE,
        ),
        unprocessable(
            "identity empty",
            with("identity", r#""""#),
            "identity",
            "must not be empty",
        ),
        unprocessable(
            "identity 65 characters",
            with("identity", &format!(r#""{}""#, "x".repeat(65))),
            "identity",
            "must be at most 64 characters long",
        ),
        unprocessable(
            "identity with a space",
            with("identity", r#""AB 1""#),
            "identity",
            "may contain only letters A-Z and a-z, digits and . _ : -",
        ),
        unprocessable(
            "identity with a slash",
            with("identity", r#""AB/1""#),
            "identity",
            "may contain only letters A-Z and a-z, digits and . _ : -",
        ),
        unprocessable(
            "name empty",
            with("name", r#""""#),
            "name",
            "must not be empty",
        ),
        unprocessable(
            "name 101 characters",
            with("name", &format!(r#""{}""#, "é".repeat(101))),
            "name",
            "must be at most 100 characters long",
        ),
        unprocessable(
            "name with a control character",
            with("name", r#""Mar\u0007tin""#),
            "name",
            "must not contain control characters",
        ),
        unprocessable(
            "surname with a tab",
            with("surname", r#""Ro\tbi""#),
            "surname",
            "must not contain control characters",
        ),
        unprocessable("amount 0", with("amount", "0"), "amount", NOT_POSITIVE),
        unprocessable(
            "amount 0.00",
            with("amount", "0.00"),
            "amount",
            NOT_POSITIVE,
        ),
        unprocessable("amount -0", with("amount", "-0"), "amount", NOT_POSITIVE),
        unprocessable(
            "amount negative",
            with("amount", "-5.10"),
            "amount",
            NOT_POSITIVE,
        ),
        unprocessable(
            "amount negative string",
            with("amount", r#""-1""#),
            "amount",
            NOT_POSITIVE,
        ),
        unprocessable(
            "amount with 3 decimals",
            with("amount", "1.234"),
            "amount",
            "must have at most 2 fraction digits",
        ),
        unprocessable(
            "amount with 3 decimals, the last a zero",
            with("amount", "1.230"),
            "amount",
            "must have at most 2 fraction digits",
        ),
        unprocessable(
            "amount with 19 integer digits",
            with("amount", "1000000000000000000"),
            "amount",
            "must have at most 18 integer digits",
        ),
        unprocessable(
            "amount with an exponent, three fraction digits",
            with("amount", "1.5e-3"),
            "amount",
            "must have at most 2 fraction digits",
        ),
        unprocessable(
            "amount with an exponent, 19 integer digits",
            with("amount", "1e18"),
            "amount",
            "must have at most 18 integer digits",
        ),
        unprocessable(
            "amount with an exponent in a string",
            with("amount", r#""1.5E2""#),
            "amount",
            "must be written without an exponent, such as 1500.00 rather than 1.5e3",
        ),
        unprocessable(
            "amount a string that is not a number",
            with("amount", r#""abc""#),
            "amount",
            "must be a decimal number such as 51.30",
        ),
        unprocessable(
            "amount an empty string",
            with("amount", r#""""#),
            "amount",
            "must be a decimal number such as 51.30",
        ),
        unprocessable(
            "amount a string with spaces",
            with("amount", r#"" 51.30""#),
            "amount",
            "must be a decimal number such as 51.30",
        ),
        unprocessable(
            "JSON array body",
            "[]".to_owned(),
            "body",
            "must be a JSON object",
        ),
        unprocessable(
            "JSON array of an object",
            format!("[{}]", with("amount", "1")),
            "body",
            "must be a JSON object",
        ),
        unprocessable(
            "JSON string body",
            r#""AB1""#.to_owned(),
            "body",
            "must be a JSON object",
        ),
        unprocessable(
            "JSON null body",
            "null".to_owned(),
            "body",
            "must be a JSON object",
        ),
        bad_json("malformed JSON", r#"{"identity":"AB1","#),
        bad_json("trailing comma", &format!("{},", with("amount", "1"))),
        bad_json("single quotes", "{'identity':'AB1'}"),
        bad_json("a leading plus", &with("amount", "+5")),
        bad_content_type("no content type", None),
        bad_content_type("json as a prefix only", Some("application/jsonp")),
        unprocessable(
            "a body of exactly 16 KiB is read, then judged",
            {
                let frame = with("name", "\"\"").len();
                with("name", &format!("\"{}\"", "a".repeat(16 * 1024 - frame)))
            },
            "name",
            "must be at most 100 characters long",
        ),
        Rejected {
            case: "body over 16 KiB",
            content_type: JSON,
            body: with("name", &format!(r#""{}""#, "a".repeat(16 * 1024))),
            status: StatusCode::PAYLOAD_TOO_LARGE,
            field: "body",
            message: Some("must be at most 16384 bytes"),
        },
    ]
}

#[tokio::test]
async fn every_rejected_request_answers_its_error_and_writes_nothing() {
    let app = TestApp::new().await;
    for case in rejected_cases() {
        let response = app
            .request(post_request(case.content_type, &case.body))
            .await;
        let name = case.case;
        assert_eq!(response.status, case.status, "{name}: {}", response.text);
        assert_eq!(
            response.header("content-type"),
            Some("application/json"),
            "{name}: an error answer is JSON"
        );
        let messages = response.errors(case.field);
        assert!(
            !messages.is_empty(),
            "{name}: no error about {}: {}",
            case.field,
            response.text
        );
        if let Some(message) = case.message {
            assert!(
                messages.iter().any(|m| m == message),
                "{name}: {message:?} not in {messages:?}"
            );
        }
        assert_eq!(
            app.stored_count().await,
            0,
            "{name}: the rejected request wrote something"
        );
    }
}

#[tokio::test]
async fn every_broken_rule_of_a_request_is_reported_at_once() {
    let app = TestApp::new().await;
    let response = app
        .post_json(
            r#"{"identity":"","name":"","amount":0,"amount":-1,"colour":"red","extra":null}"#,
        )
        .await;
    assert_eq!(
        response.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        response.text
    );
    assert_eq!(
        response.json,
        serde_json::json!({"errors": {
            "identity": ["must not be empty"],
            "name": ["must not be empty"],
            "surname": ["is required"],
            "amount": ["must appear only once"],
            "colour": ["is not a known field"],
            "extra": ["is not a known field"],
        }})
    );
    assert_eq!(app.stored_count().await, 0);
}

#[tokio::test]
async fn valid_requests_are_accepted_with_the_exact_amount() {
    let app = TestApp::new().await;
    // (case, content type, identity, name, amount JSON, amount answered)
    let long_identity = "x".repeat(64);
    let long_name = format!(r#""{}""#, "é".repeat(100));
    let cases: Vec<(&str, &str, &str, &str, &str, &str)> = vec![
        (
            "a number",
            "application/json",
            "n1",
            r#""Martin""#,
            "51.3",
            "51.30",
        ),
        (
            "a string",
            "application/json",
            "s1",
            r#""Martin""#,
            r#""51.30""#,
            "51.30",
        ),
        (
            "an integer string",
            "application/json",
            "s2",
            r#""Martin""#,
            r#""7""#,
            "7.00",
        ),
        (
            "a cent",
            "application/json",
            "c1",
            r#""Martin""#,
            "0.01",
            "0.01",
        ),
        (
            "0.1, inexact as a float",
            "application/json",
            "f1",
            r#""Martin""#,
            "0.1",
            "0.10",
        ),
        (
            "the largest amount",
            "application/json",
            "max",
            r#""Martin""#,
            "999999999999999999.99",
            "999999999999999999.99",
        ),
        (
            "exponent notation, as Python prints large floats",
            "application/json",
            "e17",
            r#""Martin""#,
            "6.7902384220095e+17",
            "679023842200950000.00",
        ),
        (
            "exponent notation, a negative exponent",
            "application/json",
            "e-1",
            r#""Martin""#,
            "15E-1",
            "1.50",
        ),
        (
            "a charset parameter",
            "application/json; charset=utf-8",
            "cs",
            r#""Martin""#,
            "1",
            "1.00",
        ),
        (
            "an upper-case media type",
            "Application/JSON",
            "uc",
            r#""Martin""#,
            "2.5",
            "2.50",
        ),
        (
            "a 64-character identity",
            "application/json",
            &long_identity,
            r#""Martin""#,
            "3",
            "3.00",
        ),
        (
            "a 100-character name",
            "application/json",
            "long-name",
            &long_name,
            "4",
            "4.00",
        ),
        (
            "an escaped name",
            "application/json",
            "esc",
            r#""Mart\u00edn""#,
            "5",
            "5.00",
        ),
    ];
    for (case, content_type, identity, name, amount, answered) in cases {
        let body = format!(
            r#"{{"amount":{amount},"surname":"Robi","name":{name},"identity":"{identity}"}}"#
        );
        let response = app.request(post_request(Some(content_type), &body)).await;
        assert_eq!(
            response.status,
            StatusCode::CREATED,
            "{case}: {}",
            response.text
        );
        assert_eq!(response.json["amount"], answered, "{case}");
        assert_eq!(response.json["identity"], identity, "{case}");
        let summary = app.get(&format!("/api/v1/spending/{identity}")).await;
        assert_eq!(summary.json["total"], answered, "{case}: the stored total");
    }
    let name = app.get("/api/v1/spending/esc").await;
    assert_eq!(name.json["name"], "Martín");
}
