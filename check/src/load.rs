//! The load driver: sends every planned spending, `concurrency` at a time
//! (several for the same identity at once: the api must serialise them),
//! each with its own `Idempotency-Key`, retrying the same request with the
//! same key until a definite answer or `give_up_after`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use indicatif::ProgressBar;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use obt_runtime::backoff::Backoff;

use crate::http::{Answer, Http, TransportError};
use crate::model::{Created, Outcome, PostResult};
use crate::plan::Planned;

/// The waits between retries: the first at most 100 ms, each next ceiling
/// twice as high, none above 5 s (unless `Retry-After` says so).
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Why a request was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryCause {
    /// No connection, or it broke.
    Transport,
    /// No answer within `--request-timeout-secs`.
    Timeout,
    /// 429 Too Many Requests.
    TooManyRequests,
    /// 503 Service Unavailable.
    Unavailable,
    /// Another 5xx (500, 502, 504 ...).
    ServerError,
}

impl RetryCause {
    pub const ALL: [Self; 5] = [
        Self::Transport,
        Self::Timeout,
        Self::TooManyRequests,
        Self::Unavailable,
        Self::ServerError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Transport => "transport error",
            Self::Timeout => "timeout",
            Self::TooManyRequests => "429",
            Self::Unavailable => "503",
            Self::ServerError => "other 5xx",
        }
    }
}

/// The load's settings.
#[derive(Debug, Clone)]
pub struct LoadSettings {
    pub concurrency: usize,
    pub give_up_after: Duration,
}

/// What the load produced.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// One per planned spending, in plan index order.
    pub posts: Vec<PostResult>,
    /// From the first POST to the last answer.
    pub elapsed: Duration,
    /// Latency of each exchange that was answered 201.
    pub latencies: Vec<Duration>,
    pub retries: BTreeMap<RetryCause, u64>,
    /// When the last 201 arrived.
    pub last_created: Option<Instant>,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    by_cause: Mutex<BTreeMap<RetryCause, u64>>,
    latencies: Mutex<Vec<Duration>>,
    last_created: Mutex<Option<Instant>>,
}

impl Counters {
    fn message(&self) -> String {
        format!(
            "ok {} retries {} errors {}",
            self.ok.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed)
        )
    }
}

/// Sends every spending of `plan`; `bar` shows the progress.
pub async fn run(
    http: &Http,
    spendings: &[Planned],
    settings: &LoadSettings,
    bar: &ProgressBar,
) -> LoadResult {
    let counters = Counters::default();
    let started = Instant::now();
    bar.set_message(counters.message());
    let mut posts: Vec<PostResult> = futures::stream::iter(spendings)
        .map(|planned| {
            let counters = &counters;
            async move {
                let result = post_one(http, planned, settings, counters, bar).await;
                match &result.outcome {
                    Outcome::Created(_) => counters.ok.fetch_add(1, Ordering::Relaxed),
                    _ => counters.errors.fetch_add(1, Ordering::Relaxed),
                };
                bar.inc(1);
                bar.set_message(counters.message());
                result
            }
        })
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await;
    let elapsed = started.elapsed();
    posts.sort_by_key(|p| p.index);
    let by_cause = std::mem::take(&mut *lock(&counters.by_cause));
    let latencies = std::mem::take(&mut *lock(&counters.latencies));
    let last_created = *lock(&counters.last_created);
    LoadResult {
        posts,
        elapsed,
        latencies,
        retries: by_cause,
        last_created,
    }
}

/// A poisoned lock only means another task panicked while counting: the
/// counts are still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The body of a planned spending. The amount goes as a string ("51.30"):
/// the api reads money from its text, never through a float.
pub fn body(planned: &Planned) -> Bytes {
    let body = serde_json::json!({
        "identity": planned.identity,
        "name": planned.name,
        "surname": planned.surname,
        "amount": planned.amount.to_string(),
    });
    Bytes::from(body.to_string())
}

async fn post_one(
    http: &Http,
    planned: &Planned,
    settings: &LoadSettings,
    counters: &Counters,
    bar: &ProgressBar,
) -> PostResult {
    let key = uuid::Uuid::new_v4().to_string();
    let body = body(planned);
    let give_up_at = Instant::now() + settings.give_up_after;
    let mut attempts = 0u32;
    let outcome = loop {
        attempts += 1;
        let sent = Instant::now();
        let answer = http
            .post_json(
                "/api/v1/spending",
                &[("idempotency-key", key.clone())],
                body.clone(),
            )
            .await;
        let (cause, retry_after, last) = match answer {
            Ok(answer) if answer.status == http::StatusCode::CREATED => {
                let now = Instant::now();
                lock(&counters.latencies).push(now - sent);
                {
                    let mut last = lock(&counters.last_created);
                    *last = Some(last.map_or(now, |l| l.max(now)));
                }
                break match parse_created(&answer) {
                    Ok(created) => Outcome::Created(created),
                    Err(reason) => Outcome::Unresolved {
                        reason: format!(
                            "answered 201 with an unreadable body ({reason}): {}",
                            answer.excerpt(200)
                        ),
                    },
                };
            }
            Ok(answer) => match classify(&answer) {
                Some(cause) => (
                    cause,
                    answer.retry_after(),
                    format!("HTTP {}: {}", answer.status.as_u16(), answer.excerpt(200)),
                ),
                None if answer.status.is_client_error() => {
                    break Outcome::Rejected {
                        status: answer.status.as_u16(),
                        body: answer.excerpt(500),
                    };
                }
                None => {
                    break Outcome::Unresolved {
                        reason: format!(
                            "answered HTTP {}, expected 201: {}",
                            answer.status.as_u16(),
                            answer.excerpt(200)
                        ),
                    };
                }
            },
            Err(TransportError::Timeout(after)) => (
                RetryCause::Timeout,
                None,
                format!("no answer within {after:?}"),
            ),
            Err(TransportError::Failed(detail)) => (RetryCause::Transport, None, detail),
        };
        let wait = backoff(attempts).max(retry_after.unwrap_or_default());
        if Instant::now() + wait >= give_up_at {
            break Outcome::Unresolved {
                reason: format!(
                    "no definite answer after {attempts} attempts in {}s (last: {last})",
                    settings.give_up_after.as_secs()
                ),
            };
        }
        counters.retries.fetch_add(1, Ordering::Relaxed);
        *lock(&counters.by_cause).entry(cause).or_default() += 1;
        bar.set_message(counters.message());
        tokio::time::sleep(wait).await;
    };
    PostResult {
        index: planned.index,
        identity: planned.identity.clone(),
        amount: planned.amount,
        idempotency_key: key,
        attempts,
        outcome,
    }
}

/// Whether an answer other than 201 is worth retrying, and why.
pub fn classify(answer: &Answer) -> Option<RetryCause> {
    match answer.status.as_u16() {
        429 => Some(RetryCause::TooManyRequests),
        503 => Some(RetryCause::Unavailable),
        500..=599 => Some(RetryCause::ServerError),
        _ => None,
    }
}

/// The wait before retry number `attempt` (1 for the first).
pub fn backoff(attempt: u32) -> Duration {
    BACKOFF.delay(attempt.saturating_sub(1))
}

/// Reads a 201's body: `{"event_id","identity","seq","name","surname",
/// "amount","created_at"}`.
pub fn parse_created(answer: &Answer) -> Result<Created, String> {
    let json: Value = serde_json::from_slice(&answer.body).map_err(|e| e.to_string())?;
    let text = |field: &str| -> Result<String, String> {
        match &json[field] {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(format!("{field} is {other}")),
        }
    };
    let seq = json["seq"]
        .as_u64()
        .ok_or_else(|| format!("seq is {}", json["seq"]))?;
    let amount_text = text("amount")?;
    let amount =
        Decimal::from_str(&amount_text).map_err(|e| format!("amount {amount_text:?}: {e}"))?;
    let created_at = json["created_at"]
        .as_str()
        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let replayed = answer
        .headers
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    Ok(Created {
        event_id: text("event_id")?,
        seq,
        amount,
        created_at,
        replayed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, StatusCode};

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, value.parse().expect("a header value"));
        }
        Answer {
            status: StatusCode::from_u16(status).expect("a status"),
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn retryable_answers_are_told_from_definite_ones() {
        assert_eq!(
            classify(&answer(429, &[], "")),
            Some(RetryCause::TooManyRequests)
        );
        assert_eq!(
            classify(&answer(503, &[], "")),
            Some(RetryCause::Unavailable)
        );
        assert_eq!(
            classify(&answer(500, &[], "")),
            Some(RetryCause::ServerError)
        );
        assert_eq!(
            classify(&answer(504, &[], "")),
            Some(RetryCause::ServerError)
        );
        assert_eq!(classify(&answer(422, &[], "")), None);
        assert_eq!(classify(&answer(400, &[], "")), None);
        assert_eq!(
            answer(503, &[("retry-after", "5")], "").retry_after(),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn a_201_body_is_read_exactly() {
        let created = parse_created(&answer(
            201,
            &[("idempotent-replayed", "true")],
            r#"{"event_id":"e1","identity":"a","seq":3,"name":"n","surname":"s","amount":"51.30","created_at":"2026-11-28T04:00:00.123Z"}"#,
        ))
        .expect("a valid body");
        assert_eq!(created.seq, 3);
        assert_eq!(created.event_id, "e1");
        assert_eq!(created.amount, Decimal::new(5130, 2));
        assert!(created.replayed);
        assert!(created.created_at.is_some());
        assert!(parse_created(&answer(201, &[], r#"{"seq":"x"}"#)).is_err());
    }
}
