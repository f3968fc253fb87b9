//! The per-client rate limit of the spending routes: a keyed GCRA limiter
//! (`governor`), `OBT_RATE_LIMIT_PER_SEC` requests a second on average with
//! bursts of `OBT_RATE_LIMIT_BURST`; beyond that, 429 with `Retry-After`.
//!
//! A client is the authenticated [`Principal`] (the layer runs after the
//! authentication), else the peer's IP address, or with
//! `OBT_TRUST_FORWARDED_FOR` the right-most address of the last
//! `X-Forwarded-For` header: the one the load balancer in front appended
//! (every address left of it was sent by the client and may be forged).
//!
//! The limiter keeps one small state per client seen; states of clients
//! that would be allowed a full burst again carry no information and are
//! dropped every [`PRUNE_INTERVAL`], so memory is bounded by the clients of
//! the last moments, not of the process's life.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::Principal;
use crate::error::ApiError;

/// How often the states of idle clients are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// The limiter and how it tells clients apart.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultKeyedRateLimiter<String>,
    trust_forwarded_for: bool,
    started: Instant,
    /// Seconds after `started` of the last pruning.
    last_prune: AtomicU64,
}

impl RateLimit {
    pub fn new(per_sec: NonZeroU32, burst: NonZeroU32, trust_forwarded_for: bool) -> Self {
        Self::with_quota(
            Quota::per_second(per_sec).allow_burst(burst),
            trust_forwarded_for,
        )
    }

    /// A limit of any `quota` (tests use slow ones, so that no token comes
    /// back while they run).
    pub fn with_quota(quota: Quota, trust_forwarded_for: bool) -> Self {
        Self {
            limiter: RateLimiter::keyed(quota),
            trust_forwarded_for,
            started: Instant::now(),
            last_prune: AtomicU64::new(0),
        }
    }

    /// How many clients the limiter holds a state for.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }

    /// `Ok` when `key` may make a request now, else how long until it may.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.prune_now_and_then();
        self.limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Drops the states of idle clients, at most once a [`PRUNE_INTERVAL`],
    /// by whichever request comes first after it.
    fn prune_now_and_then(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= PRUNE_INTERVAL.as_secs()
            && self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.prune();
        }
    }

    /// Drops the states of the clients that could make a full burst again.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// The client of `request`.
    fn client_of(&self, request: &Request) -> String {
        if let Some(principal) = request.extensions().get::<Principal>() {
            return format!("principal:{}", principal.as_str());
        }
        if self.trust_forwarded_for {
            if let Some(ip) = forwarded_for(request) {
                return format!("ip:{ip}");
            }
        }
        match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(peer)) => format!("ip:{}", peer.ip()),
            None => "unknown".to_owned(),
        }
    }
}

/// The right-most address of the last `X-Forwarded-For` header.
fn forwarded_for(request: &Request) -> Option<IpAddr> {
    let last = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .next_back()?;
    let rightmost = last.to_str().ok()?.rsplit(',').next()?.trim();
    rightmost.parse().ok()
}

/// Middleware of the spending routes.
pub async fn limit(State(limit): State<Arc<RateLimit>>, request: Request, next: Next) -> Response {
    let client = limit.client_of(&request);
    match limit.check(&client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            // Whole seconds, rounded up: never "come back now".
            let retry_after_secs = u32::try_from(wait.as_millis().div_ceil(1000))
                .unwrap_or(u32::MAX)
                .max(1);
            tracing::info!(retry_after_secs, "rate limit exceeded");
            metrics::counter!("obt_api_rate_limited_total").increment(1);
            ApiError::TooManyRequests { retry_after_secs }.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn limit(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit::new(
            NonZeroU32::new(per_sec).expect("positive"),
            NonZeroU32::new(burst).expect("positive"),
            true,
        )
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limit = limit(1, 3);
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
        }
        let wait = limit.check("a").expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check("b").is_ok());
        assert_eq!(limit.clients(), 2);
    }

    #[test]
    fn pruning_drops_clients_that_are_back_to_a_full_burst() {
        let limit = limit(1000, 1);
        assert!(limit.check("a").is_ok());
        std::thread::sleep(Duration::from_millis(20));
        limit.prune();
        assert_eq!(limit.clients(), 0);
    }

    #[test]
    fn the_forwarded_address_is_the_right_most_of_the_last_header() {
        let request = Request::get("/")
            .header("x-forwarded-for", "1.1.1.1")
            .header("x-forwarded-for", "6.6.6.6, 203.0.113.7")
            .body(Body::empty())
            .expect("a request");
        assert_eq!(
            forwarded_for(&request),
            Some("203.0.113.7".parse().expect("an address"))
        );
        let limit = limit(1, 1);
        assert_eq!(limit.client_of(&request), "ip:203.0.113.7");
    }
}
