//! `POST /api/v1/spending` and `GET /api/v1/spending/{identity}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use obt_contract::{Amount, Envelope, EventId, Identity, PersonName};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{ApiError, FieldErrors};
use crate::input::NewSpending;
use crate::startup::AppState;
use crate::store::Summary;

/// The largest request body accepted: a spending is well under 1 KiB.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The answer to a recorded spending.
#[derive(Debug, Serialize)]
pub struct Recorded {
    pub event_id: EventId,
    pub identity: Identity,
    pub seq: u64,
    pub name: PersonName,
    pub surname: PersonName,
    pub amount: Amount,
    /// When the event occurred (the envelope's `occurred_at`).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<Envelope> for Recorded {
    fn from(e: Envelope) -> Self {
        Self {
            event_id: e.event_id,
            identity: e.identity,
            seq: e.seq,
            name: e.data.name,
            surname: e.data.surname,
            amount: e.data.amount,
            created_at: e.occurred_at,
        }
    }
}

pub async fn record(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    let spending = NewSpending::from_json(&body)?;
    let envelope = state.store.record(&spending).await?;
    let location = format!("/api/v1/spending/{}", envelope.identity);
    Ok((
        StatusCode::CREATED,
        [(LOCATION, location)],
        Json(Recorded::from(envelope)),
    ))
}

/// The answer to `GET /api/v1/spending/{identity}`.
#[derive(Debug, Serialize)]
pub struct SummaryBody {
    pub identity: Identity,
    pub name: String,
    pub surname: String,
    /// Exact, with two fraction digits: `"102.60"`.
    pub total: String,
    pub count: u64,
    pub last_seq: u64,
    pub pending_events: usize,
}

impl From<Summary> for SummaryBody {
    fn from(s: Summary) -> Self {
        Self {
            identity: s.identity,
            name: s.name,
            surname: s.surname,
            total: s.total.to_string(),
            count: s.count,
            last_seq: s.last_seq,
            pending_events: s.pending_events,
        }
    }
}

pub async fn summary(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SummaryBody>, ApiError> {
    let invalid = |message: String| ApiError::Validation(FieldErrors::single("identity", message));
    let Path(raw) = path.map_err(|_| invalid("must be valid UTF-8".to_owned()))?;
    let identity = Identity::parse(&raw).map_err(|e| invalid(e.to_string()))?;
    let summary = state
        .store
        .summary(&identity)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(summary.into()))
}

/// The raw body of a request declared as JSON, at most [`BODY_LIMIT`]
/// bytes (enforced by the router's `DefaultBodyLimit`). Its rejections are
/// [`ApiError`]s, so they answer in JSON like every other error.
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !declares_json(req.headers()) {
            return Err(ApiError::BadRequest(FieldErrors::single(
                "body",
                "must be sent with Content-Type: application/json",
            )));
        }
        let body = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: BODY_LIMIT }
            } else {
                ApiError::BadRequest(FieldErrors::single("body", "could not be read"))
            }
        })?;
        Ok(Self(body))
    }
}

/// `application/json`, with or without parameters such as `charset`.
fn declares_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}
