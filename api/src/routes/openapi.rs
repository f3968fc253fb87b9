//! `GET /api/v1/openapi.json`: the api's OpenAPI 3.1 document.
//!
//! Hand-written (`api/openapi/openapi.json`) and compiled in. It is kept
//! truthful by tests: `tests/api/openapi.rs` checks that it parses, that
//! its operations are exactly the router's routes, and that its examples
//! and constraints match what the api accepts; `scripts/schemathesis.sh`
//! checks the running api against it.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT)
}
