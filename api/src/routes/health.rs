//! Probes for the orchestrator: `live` says the process serves HTTP,
//! `ready` that it can reach its database too (the DynamoDB table, or the
//! MySQL database and its `obt_identity` table) and, with authentication
//! from a JWKS URL, that the keys were loaded: until then every spending
//! request would be a 503, so the load balancer should send none.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use obt_runtime::error_chain;
use serde_json::{Value, json};

use crate::startup::AppState;

/// A ready probe that hangs is as bad as a failing one; answer before the
/// orchestrator's own probe timeout would.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.auth.as_ref().is_some_and(|auth| !auth.keys_loaded()) {
        tracing::warn!("not ready: the keys of the JWKS URL were not loaded yet");
        let body = json!({
            "status": "unavailable",
            "errors": { "authentication": ["the token signing keys (JWKS) are not loaded yet"] },
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    let backend = state.store.backend();
    let unavailable = || {
        let body = json!({
            "status": "unavailable",
            "errors": { backend: ["the database does not answer"] },
        });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    };
    match tokio::time::timeout(READY_TIMEOUT, state.store.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({ "status": "ok" }))),
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "not ready");
            unavailable()
        }
        Err(_) => {
            tracing::warn!(timeout = ?READY_TIMEOUT, backend, "not ready: the database did not answer in time");
            unavailable()
        }
    }
}
