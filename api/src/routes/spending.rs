//! `POST /api/v1/spending` and `GET /api/v1/spending/{identity}`.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use obt_contract::{Amount, EventId, Identity, PersonName};
use serde::Serialize;
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::error::{ApiError, FieldErrors};
use crate::idempotency::{self, Idempotency, IdempotencyKey};
use crate::input::NewSpending;
use crate::startup::AppState;
use crate::store::{Outcome, StoreError, StoredOutcome, Summary};

/// The largest request body accepted: a spending is well under 1 KiB.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The answer to a recorded spending, made from the store's
/// [`StoredOutcome`] (also when it is replayed from an Idempotency-Key's
/// record).
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

impl From<StoredOutcome> for Recorded {
    fn from(o: StoredOutcome) -> Self {
        Self {
            event_id: o.event_id,
            identity: o.identity,
            seq: o.seq,
            name: o.name,
            surname: o.surname,
            amount: o.amount,
            created_at: o.occurred_at,
        }
    }
}

impl Recorded {
    /// The `Location` of the answer: the identity's totals.
    pub fn location(&self) -> String {
        format!("/api/v1/spending/{}", self.identity)
    }
}

/// Records a spending. With an `Idempotency-Key` (see
/// [`crate::idempotency`]), a retry is answered as the first request was,
/// with `Idempotent-Replayed: true`; with authentication, the key is the
/// principal's own. The event joins the request's trace (`traceparent`,
/// see [`obt_runtime::trace`]); a replay answers as the first request did.
pub async fn record(
    State(state): State<AppState>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?.map(|key| match &principal {
        Some(Extension(principal)) => key.scoped_to(principal),
        None => key,
    });
    let spending = NewSpending::from_json(&body)?;
    let idempotency = Idempotency::of(key, &spending);
    let trace = obt_runtime::trace::current().unwrap_or_else(|| {
        // Logging is off for the request's span: a context of its own.
        obt_runtime::trace::start(
            &tracing::Span::none(),
            obt_runtime::trace::from_headers(&headers).as_ref(),
        )
    });
    let recorded = state.store.record(&spending, &idempotency, Some(&trace));
    let (outcome, replayed) = match recorded.await? {
        Outcome::Recorded(outcome) => {
            metrics::counter!("obt_api_spendings_recorded_total").increment(1);
            (outcome, false)
        }
        Outcome::Replayed(outcome) => {
            metrics::counter!("obt_api_idempotent_replays_total").increment(1);
            (outcome, true)
        }
    };
    let recorded = Recorded::from(outcome);
    let body = serde_json::to_string(&recorded)
        .map_err(|e| ApiError::Internal(StoreError::Encode(e.to_string())))?;
    let mut response = (
        StatusCode::CREATED,
        [
            (LOCATION, recorded.location()),
            (CONTENT_TYPE, "application/json".to_owned()),
        ],
        body,
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            idempotency::REPLAYED_HEADER,
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
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
