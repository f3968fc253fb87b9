//! Reading the deployment: the api before the load (reachable, identities
//! fresh) and after it (each identity's summary), and the consumer's
//! records until they caught up with the api (the convergence wait).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::ProgressBar;
use obt_consumer::LedgerReader;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::CheckError;
use crate::http::{Http, TransportError};
use crate::load::backoff;
use crate::model::{ApiState, ApiSummary, AppliedView, Lag};

/// How many GETs run at once.
const READ_CONCURRENCY: usize = 8;
/// Pause between two rounds of the convergence wait.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Waits until the api answers `GET /health/live` (any answer below 500
/// other than 429 counts as reachable), at most `give_up_after`.
pub async fn api_reachable(http: &Http, give_up_after: Duration) -> Result<(), CheckError> {
    until_answered(give_up_after, || async {
        match http.get("/health/live").await {
            Ok(answer) if answer.status.as_u16() < 500 && answer.status.as_u16() != 429 => Ok(()),
            Ok(answer) => Err(format!(
                "HTTP {}: {}",
                answer.status.as_u16(),
                answer.excerpt(200)
            )),
            Err(TransportError::Timeout(after)) => Err(format!("no answer within {after:?}")),
            Err(TransportError::Failed(detail)) => Err(detail),
        }
    })
    .await
    .map_err(|gave_up| CheckError::ApiUnreachable {
        url: http.base().to_owned(),
        secs: give_up_after.as_secs(),
        last: gave_up.last,
    })
}

/// What the last of several attempts said, when they never got an answer.
struct GaveUp {
    attempts: u32,
    /// Why the last attempt got no answer.
    last: String,
}

/// Tries `attempt` until it gets an answer (`Ok`), waiting the POSTs'
/// backoff after each attempt that got none (`Err`, with why), at most
/// `give_up_after`.
async fn until_answered<T, F, Fut>(give_up_after: Duration, mut attempt: F) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match attempt().await {
            Ok(answer) => return Ok(answer),
            Err(last) => last,
        };
        let wait = backoff(attempts);
        if started.elapsed() + wait >= give_up_after {
            return Err(GaveUp { attempts, last });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Reads every identity's summary from the api, each retried as
/// [`api_state`] says.
pub async fn api_states(
    http: &Http,
    identities: &[String],
    give_up_after: Duration,
) -> BTreeMap<String, ApiState> {
    futures::stream::iter(identities)
        .map(|identity| async move {
            (
                identity.clone(),
                api_state(http, identity, give_up_after).await,
            )
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await
}

/// Reads one identity's summary. What a restart or an overload of the api
/// answers (no connection, a timeout, a `429`, a `5xx`) is retried with the
/// POSTs' backoff until `give_up_after`, as a POST is: a run that rides out
/// an api restart during its load must ride it out during its reads too.
pub async fn api_state(http: &Http, identity: &str, give_up_after: Duration) -> ApiState {
    let path = format!("/api/v1/spending/{identity}");
    let read = until_answered(give_up_after, || async {
        let answer = http.get(&path).await.map_err(|e| e.to_string())?;
        let status = answer.status;
        if status == http::StatusCode::OK {
            return Ok(match parse_summary(&answer.body) {
                Ok(summary) => ApiState::Found(summary),
                Err(reason) => ApiState::Unreadable {
                    reason: format!("unreadable 200 ({reason}): {}", answer.excerpt(200)),
                },
            });
        }
        if status == http::StatusCode::NOT_FOUND {
            return Ok(ApiState::NotFound);
        }
        let said = format!("HTTP {}: {}", status.as_u16(), answer.excerpt(200));
        if status.is_client_error() && status.as_u16() != 429 {
            Ok(ApiState::Unreadable { reason: said })
        } else {
            Err(said)
        }
    })
    .await;
    read.unwrap_or_else(|gave_up| ApiState::Unreadable {
        reason: format!(
            "no answer after {} attempts (last: {})",
            gave_up.attempts, gave_up.last
        ),
    })
}

/// Reads `{"identity","name","surname","total":"102.60","count","last_seq",
/// "pending_events"}`; the total as exact decimal text.
pub fn parse_summary(body: &[u8]) -> Result<ApiSummary, String> {
    let json: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let whole = |field: &str| {
        json[field]
            .as_u64()
            .ok_or_else(|| format!("{field} is {}", json[field]))
    };
    let text = |field: &str| {
        json[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{field} is {}", json[field]))
    };
    let total_text = match &json["total"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("total is {other}")),
    };
    let total = Decimal::from_str(&total_text).map_err(|e| format!("total {total_text:?}: {e}"))?;
    Ok(ApiSummary {
        name: text("name")?,
        surname: text("surname")?,
        total,
        count: whole("count")?,
        last_seq: whole("last_seq")?,
        pending_events: whole("pending_events")?,
    })
}

/// Checks before the load that the identities are fresh in the api and in
/// the consumer's records, and that both can be read.
pub async fn preflight(
    http: &Http,
    ledger: &Arc<dyn LedgerReader>,
    identities: &[String],
    give_up_after: Duration,
) -> Result<(), CheckError> {
    if let Some(first) = identities.first() {
        let path = format!("/api/v1/spending/{first}");
        let answer = http.get(&path).await;
        if answer.is_ok_and(|a| a.status == http::StatusCode::UNAUTHORIZED) {
            return Err(CheckError::Unauthorized {
                url: http.base().to_owned(),
                what: if http.has_token() {
                    "the bearer token sent was refused (expired, another issuer or audience?)"
                } else {
                    "no bearer token was sent"
                },
            });
        }
    }
    let states = api_states(http, identities, give_up_after).await;
    for (identity, state) in &states {
        match state {
            ApiState::NotFound => {}
            ApiState::Found(summary) => {
                return Err(CheckError::NotFresh {
                    identity: identity.clone(),
                    place: format!("the api ({} spendings)", summary.count),
                });
            }
            ApiState::Unreadable { reason } => {
                return Err(CheckError::ApiUnusable {
                    identity: identity.clone(),
                    reason: reason.clone(),
                });
            }
        }
    }
    let Some(first) = identities.first() else {
        return Ok(());
    };
    match ledger.load_identity(first).await {
        Ok(None) => Ok(()),
        Ok(Some(applied)) => Err(CheckError::NotFresh {
            identity: first.clone(),
            place: format!(
                "the consumer's records ({} applied, {})",
                applied.count,
                ledger.describe()
            ),
        }),
        Err(e) => Err(CheckError::ConsumerUnreadable {
            store: ledger.describe(),
            detail: e.to_string(),
        }),
    }
}

/// The convergence wait's result.
#[derive(Debug, Clone)]
pub struct Convergence {
    /// Identities still behind at the end (empty: converged).
    pub lagging: Vec<Lag>,
    /// When the last identity caught up.
    pub converged_at: Option<Instant>,
}

/// Polls the consumer's records until every identity's applied last seq
/// reached the api's, or `timeout`. Read errors are retried until the
/// timeout; if the records could never be read, that is the error.
pub async fn converge(
    ledger: &Arc<dyn LedgerReader>,
    targets: &BTreeMap<String, u64>,
    timeout: Duration,
    bar: &ProgressBar,
) -> Result<Convergence, CheckError> {
    let started = Instant::now();
    let total_events: u64 = targets.values().sum();
    let mut applied: BTreeMap<String, u64> = targets.keys().map(|k| (k.clone(), 0)).collect();
    bar.set_length(total_events);
    loop {
        let behind: Vec<(&String, &u64)> = targets
            .iter()
            .filter(|(identity, target)| applied.get(*identity).copied().unwrap_or(0) < **target)
            .collect();
        let reads: Vec<(String, Result<u64, String>)> = futures::stream::iter(behind)
            .map(|(identity, _)| async move {
                let read = ledger
                    .load_identity(identity)
                    .await
                    .map(|a| a.map_or(0, |a| a.last_seq))
                    .map_err(|e| e.to_string());
                (identity.clone(), read)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        let mut last_error = None;
        for (identity, read) in reads {
            match read {
                Ok(seq) => {
                    applied.insert(identity, seq);
                }
                Err(e) => last_error = Some(e),
            }
        }
        let done_events: u64 = targets
            .iter()
            .map(|(identity, target)| applied.get(identity).copied().unwrap_or(0).min(*target))
            .sum();
        let caught_up = targets
            .iter()
            .filter(|(identity, target)| applied.get(*identity).copied().unwrap_or(0) >= **target)
            .count();
        bar.set_position(done_events);
        bar.set_message(format!(
            "consumer: {caught_up}/{} identities caught up",
            targets.len()
        ));
        if caught_up == targets.len() {
            return Ok(Convergence {
                lagging: Vec::new(),
                converged_at: Some(Instant::now()),
            });
        }
        if started.elapsed() >= timeout {
            if let (Some(detail), true) = (last_error, done_events == 0) {
                return Err(CheckError::ConsumerUnreadable {
                    store: ledger.describe(),
                    detail,
                });
            }
            let lagging = targets
                .iter()
                .filter_map(|(identity, target)| {
                    let seq = applied.get(identity).copied().unwrap_or(0);
                    (seq < *target).then(|| Lag {
                        identity: identity.clone(),
                        api_last_seq: *target,
                        applied_last_seq: seq,
                    })
                })
                .collect();
            return Ok(Convergence {
                lagging,
                converged_at: None,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads everything the consumer applied for each identity.
pub async fn applied_views(
    ledger: &Arc<dyn LedgerReader>,
    identities: &[String],
) -> Result<BTreeMap<String, Option<AppliedView>>, CheckError> {
    let reads: Vec<(String, Result<Option<AppliedView>, String>)> =
        futures::stream::iter(identities)
            .map(|identity| async move {
                let mut last = String::new();
                for attempt in 1..=5 {
                    match ledger.load_identity(identity).await {
                        Ok(view) => return (identity.clone(), Ok(view.map(AppliedView::from))),
                        Err(e) => last = e.to_string(),
                    }
                    if attempt < 5 {
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                (identity.clone(), Err(last))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
    let mut views = BTreeMap::new();
    for (identity, read) in reads {
        match read {
            Ok(view) => {
                views.insert(identity, view);
            }
            Err(detail) => {
                return Err(CheckError::ConsumerUnreadable {
                    store: ledger.describe(),
                    detail,
                });
            }
        }
    }
    Ok(views)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_is_read_with_an_exact_total() {
        let summary = parse_summary(
            br#"{"identity":"a","name":"n","surname":"s","total":"102.60","count":2,"last_seq":2,"pending_events":0}"#,
        )
        .expect("valid");
        assert_eq!(summary.total, Decimal::new(10260, 2));
        assert_eq!(summary.count, 2);
        assert!(parse_summary(br#"{"total":"x"}"#).is_err());
    }
}
