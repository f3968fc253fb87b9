//! The one error type of the HTTP layer. Each variant names its status
//! code; every error answer is JSON of the form
//! `{"errors": {"<field>": ["message", ...]}}`, and a 500 says nothing about
//! its cause, which is logged instead (inside the request's span, so the
//! log line carries the request id).

use axum::Json;
use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use obt_runtime::error_chain;
use serde::Serialize;

use crate::idempotency::InvalidKey;
pub use crate::input::FieldErrors;
use crate::input::InputError;
use crate::store::StoreError;

/// Why a request was not answered with success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON, or was not declared as JSON.
    #[error("bad request: {0:?}")]
    BadRequest(FieldErrors),
    /// 401 with `WWW-Authenticate`: no bearer token, or one that is not
    /// accepted. The answer never says which check failed.
    #[error("authentication required")]
    Unauthorized {
        /// A token was sent (RFC 6750: then `error="invalid_token"`).
        token_presented: bool,
    },
    /// 429 with `Retry-After`: the client exceeded its rate limit.
    #[error("too many requests")]
    TooManyRequests { retry_after_secs: u32 },
    /// 503 with `Retry-After`: the keys that tokens are checked with were
    /// not loaded yet.
    #[error("authentication is not available yet")]
    AuthNotReady { retry_after_secs: u32 },
    /// 404: nothing recorded under the identity.
    #[error("no spending recorded for this identity")]
    NotFound,
    /// 413: the body exceeds the limit.
    #[error("the body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 422: well-formed JSON that breaks a rule.
    #[error("invalid request: {0:?}")]
    Validation(FieldErrors),
    /// 503 with `Retry-After`: the store cannot take the write now, but
    /// the same request may succeed later; nothing was written.
    #[error("temporarily unavailable: {message}")]
    Unavailable {
        message: &'static str,
        retry_after_secs: u32,
        #[source]
        source: StoreError,
    },
    /// 500: anything else. Logged, never shown.
    #[error("internal error")]
    Internal(#[source] StoreError),
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::Malformed(errors) => Self::BadRequest(errors),
            InputError::Invalid(errors) => Self::Validation(errors),
        }
    }
}

impl From<InvalidKey> for ApiError {
    fn from(_: InvalidKey) -> Self {
        Self::BadRequest(FieldErrors::single(
            crate::idempotency::HEADER,
            crate::idempotency::INVALID_KEY,
        ))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Contention { .. } => Self::Unavailable {
                message: "too many concurrent writes for this identity; retry later",
                retry_after_secs: 1,
                source: e,
            },
            StoreError::OutboxFull { .. } => Self::Unavailable {
                message: "too many events of this identity are waiting to be published; retry later",
                retry_after_secs: 5,
                source: e,
            },
            StoreError::Throttled { .. } => Self::Unavailable {
                message: "the database is busy; retry later",
                retry_after_secs: 1,
                source: e,
            },
            StoreError::DynamoDbUnreachable { .. } => Self::Unavailable {
                message: "the database is unavailable; retry later",
                retry_after_secs: 5,
                source: e,
            },
            // Unreachable, or no pooled connection within the acquire
            // timeout: the pool's own retries already took seconds.
            #[cfg(feature = "mysql")]
            StoreError::MySqlUnavailable { .. } => Self::Unavailable {
                message: "the database is unavailable; retry later",
                retry_after_secs: 5,
                source: e,
            },
            StoreError::KeyReused => Self::Validation(FieldErrors::single(
                crate::idempotency::HEADER,
                crate::idempotency::KEY_REUSED,
            )),
            #[cfg(feature = "mysql")]
            StoreError::MySql { .. } => Self::Internal(e),
            // 500, never 503: the spending may be recorded, and a 503 says
            // it is not. The client retries with its Idempotency-Key.
            StoreError::WriteOutcomeUnknown { .. } => Self::Internal(e),
            StoreError::DynamoDb { .. } | StoreError::Malformed { .. } | StoreError::Encode(_) => {
                Self::Internal(e)
            }
        }
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::AuthNotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client is told.
    fn errors(&self) -> FieldErrors {
        match self {
            Self::BadRequest(errors) | Self::Validation(errors) => errors.clone(),
            Self::NotFound => FieldErrors::single("identity", self.to_string()),
            Self::Unauthorized { .. } => FieldErrors::single("authorization", UNAUTHORIZED),
            Self::TooManyRequests { .. } => {
                FieldErrors::single("request", "too many requests; retry later")
            }
            Self::AuthNotReady { .. } => {
                FieldErrors::single("server", "authentication is not available yet; retry later")
            }
            Self::PayloadTooLarge { limit } => {
                FieldErrors::single("body", format!("must be at most {limit} bytes"))
            }
            Self::Unavailable { message, .. } => FieldErrors::single("server", *message),
            Self::Internal(_) => FieldErrors::single("server", "internal error"),
        }
    }
}

/// The one message of every 401.
pub const UNAUTHORIZED: &str = "authentication required";

/// The body of every error answer.
#[derive(Serialize)]
struct ErrorBody {
    errors: FieldErrors,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %error_chain(cause), "request failed");
            }
            Self::Unavailable { source, .. } => {
                tracing::warn!(error = %error_chain(source), "answering 503");
            }
            _ => {}
        }
        let mut response = (
            self.status(),
            Json(ErrorBody {
                errors: self.errors(),
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unavailable {
                retry_after_secs, ..
            }
            | Self::TooManyRequests { retry_after_secs }
            | Self::AuthNotReady { retry_after_secs } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::Unauthorized { token_presented } => {
                // RFC 6750, 3.1: no error code when no token was sent;
                // no error_description, which would say which check failed.
                let challenge = if token_presented {
                    r#"Bearer error="invalid_token""#
                } else {
                    "Bearer"
                };
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            _ => {}
        }
        response
    }
}

/// Middleware: gives the error answers that do not come from [`ApiError`]
/// (an unknown route, a wrong method, a request timeout) the same JSON
/// shape, so that clients can always parse an error.
pub async fn json_error_bodies(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let field = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body",
        StatusCode::NOT_FOUND => "path",
        StatusCode::METHOD_NOT_ALLOWED => "method",
        _ => "request",
    };
    let message = status.canonical_reason().unwrap_or("error").to_lowercase();
    let body = ErrorBody {
        errors: FieldErrors::single(field, message),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::from_parts(parts, Body::from(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn running_out_of_conflict_retries_is_a_503_with_retry_after() {
        let error = ApiError::from(StoreError::Contention { attempts: 11 });
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        let body = body_json(response).await;
        assert!(
            body["errors"]["server"][0]
                .as_str()
                .is_some_and(|m| m.contains("retry"))
        );
    }

    #[tokio::test]
    async fn a_database_failure_is_a_500_that_says_nothing_internal() {
        let error = ApiError::from(StoreError::Malformed {
            identity: "AB1".to_owned(),
            reason: "secret detail".to_owned(),
        });
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({"errors": {"server": ["internal error"]}})
        );
    }

    #[tokio::test]
    async fn empty_error_answers_get_a_json_body() {
        let response = (StatusCode::GATEWAY_TIMEOUT, "").into_response();
        let response = json_error_bodies(response).await;
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({"errors": {"request": ["gateway timeout"]}})
        );
    }
}
