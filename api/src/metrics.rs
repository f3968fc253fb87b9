//! `obt_api_requests_total{route,method,status}` and
//! `obt_api_post_duration_seconds`, measured around the whole router (the
//! answers of the authentication, the rate limit and the timeout
//! included). The route is the matched pattern, never the raw path, so
//! that identities do not become label values.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// The route label of a request that matched no route.
const UNMATCHED: &str = "unmatched";

/// Middleware: counts the request once answered; times the POSTs.
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| UNMATCHED.to_owned(), |path| path.as_str().to_owned());
    let method = request.method().clone();
    let started = Instant::now();
    let response = next.run(request).await;
    if method == Method::POST {
        metrics::histogram!("obt_api_post_duration_seconds").record(started.elapsed());
    }
    metrics::counter!(
        "obt_api_requests_total",
        "route" => route,
        "method" => method.to_string(),
        "status" => response.status().as_str().to_owned(),
    )
    .increment(1);
    response
}
