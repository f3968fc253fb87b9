//! Builds the router and runs the server.
//!
//! [`app`] is the whole HTTP surface, middleware included, as a plain
//! [`Router`]: tests drive it with `tower::ServiceExt::oneshot`, or bind it
//! on port 0 through [`Application`], exactly as the binary does.
//!
//! The middleware, outermost first:
//! - [`hide_authorization`](crate::auth::hide_authorization): marks the
//!   `Authorization` header sensitive, so no `Debug` of it prints a token;
//! - `SetRequestIdLayer`: gives every request an `x-request-id` (a UUID),
//!   keeping one the client sent;
//! - `TraceLayer`: one span per request carrying that id, so every log line
//!   of the request (the store's included) can be found by it;
//! - `PropagateRequestIdLayer`: copies the id onto the response;
//! - [`json_error_bodies`]: error answers not made by
//!   [`ApiError`](crate::ApiError) get the same JSON shape;
//! - `TimeoutLayer`: a request that takes longer than the request timeout is
//!   answered 504 (the write, if one was under way, may or may not have
//!   happened: it is atomic either way).
//!
//! The two spending routes alone have two more, innermost (a
//! `route_layer`, so an unknown path is still a 404, not a 401):
//! [`require_bearer`](crate::auth::require_bearer) when authentication is
//! on, then the per-client [`rate_limit`](crate::rate_limit) when a limit
//! is set. The health probes and the OpenAPI document are public.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, map_response};
use axum::routing::{get, post};
use obt_runtime::Storage;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::auth::{AuthConfig, AuthSetupError, Authenticator};
use crate::config::Settings;
use crate::error::json_error_bodies;
use crate::rate_limit::RateLimit;
use crate::routes::{health, openapi, spending};
use crate::store::{DynamoDbStore, Store};

/// What every handler shares. Cloned per request, hence the `Arc`s.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The bound of one request, applied by [`app`].
    pub request_timeout: Duration,
    /// Checks the bearer tokens of the spending routes; `None`: no
    /// authentication (only allowed on loopback, see [`Application::bind`]).
    pub auth: Option<Arc<Authenticator>>,
    /// The per-client limit of the spending routes; `None`: no limit.
    pub rate_limit: Option<Arc<RateLimit>>,
}

impl AppState {
    /// A state without authentication and without a rate limit.
    pub fn new(store: impl Into<Store>, request_timeout: Duration) -> Self {
        Self {
            store: Arc::new(store.into()),
            request_timeout,
            auth: None,
            rate_limit: None,
        }
    }

    /// The spending routes require a bearer token that `auth` accepts.
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// The spending routes are limited per client.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(Arc::new(limit));
        self
    }

    /// The state the binary runs with: the backend that `settings` choose,
    /// with its limits. DynamoDB: a client from `aws` on the table. MySQL:
    /// a pool, connected and checked now, so that a wrong URL or an
    /// unreachable server stops the api at start-up.
    pub async fn from_settings(settings: &Settings, aws: &SdkConfig) -> Result<Self, StartupError> {
        let store: Store = match settings.storage.storage {
            Storage::Dynamodb => {
                let client = obt_runtime::aws_client!(aws_sdk_dynamodb, aws);
                DynamoDbStore::new(
                    client,
                    settings.table.table.clone(),
                    settings.store_options(),
                )
                .with_idempotency_table(settings.idempotency_table.clone())
                .into()
            }
            Storage::Mysql => mysql_store(settings).await?,
        };
        let mut state = Self::new(store, settings.request_timeout());
        if let Some(config) = AuthConfig::from_settings(settings)? {
            state = state.with_auth(Authenticator::start(config).await?);
        }
        if let Some((per_sec, burst)) = settings.rate_limit(state.auth.is_some()) {
            state =
                state.with_rate_limit(RateLimit::new(per_sec, burst, settings.trust_forwarded_for));
        }
        Ok(state)
    }
}

#[cfg(feature = "mysql")]
async fn mysql_store(settings: &Settings) -> Result<Store, StartupError> {
    let url = settings.storage.mysql_url("api")?;
    let store = crate::store::MySqlStore::connect(
        url.expose(),
        settings.database_max_connections,
        settings.store_options(),
    )
    .await?;
    Ok(store.into())
}

#[cfg(not(feature = "mysql"))]
async fn mysql_store(_: &Settings) -> Result<Store, StartupError> {
    Err(obt_runtime::MySqlNotBuilt { binary: "api" }.into())
}

/// The api's routes and middleware.
pub fn app(state: AppState) -> Router {
    let request_timeout = state.request_timeout;
    let middleware = ServiceBuilder::new()
        .layer(from_fn(crate::auth::hide_authorization))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                // The response line has the status, and the causes of 5xx
                // are logged where they are known (`ApiError`, the probe);
                // a busy or unready service is no ERROR.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(map_response(json_error_bodies))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            request_timeout,
        ));
    let mut router = Router::new()
        .route("/api/v1/spending", post(spending::record))
        .route("/api/v1/spending/{identity}", get(spending::summary));
    // Layers added later run first: authentication, then the rate limit
    // keyed by its principal. Only the routes above are covered.
    if let Some(limit) = &state.rate_limit {
        router = router.route_layer(from_fn_with_state(
            Arc::clone(limit),
            crate::rate_limit::limit,
        ));
    }
    if let Some(auth) = &state.auth {
        router = router.route_layer(from_fn_with_state(
            Arc::clone(auth),
            crate::auth::require_bearer,
        ));
    }
    router
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/api/v1/openapi.json", get(openapi::document))
        .layer(DefaultBodyLimit::max(spending::BODY_LIMIT))
        .with_state(state)
        .layer(middleware)
        .layer(from_fn(crate::metrics::count_requests))
}

fn request_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = tracing::field::Empty,
    );
    // The caller's W3C trace, or a new one: an invalid traceparent is
    // ignored, never refused.
    obt_runtime::trace::start(
        &span,
        obt_runtime::trace::from_headers(request.headers()).as_ref(),
    );
    span
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Authentication is off, or its settings are incomplete.
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    /// A state without authentication, bound off loopback.
    #[error(
        "refusing to serve {addr} without authentication: off a loopback address the api \
         requires it (set OBT_JWT_ISSUER and OBT_JWT_JWKS_URL or OBT_JWT_JWKS_FILE)"
    )]
    Unauthenticated { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// `OBT_STORAGE=mysql` in a build without the `mysql` feature.
    #[error(transparent)]
    MySqlNotBuilt(#[from] obt_runtime::MySqlNotBuilt),
    /// `OBT_STORAGE=mysql` without `OBT_DATABASE_URL`.
    #[cfg(feature = "mysql")]
    #[error(transparent)]
    DatabaseUrlMissing(#[from] obt_runtime::args::MissingDatabaseUrl),
    #[cfg(feature = "mysql")]
    #[error(transparent)]
    MySql(#[from] crate::store::mysql::ConnectError),
}

/// A bound server, not yet serving: its address is known, so a test can
/// bind port 0 and learn the port before it sends a request.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    shutdown_timeout: Duration,
}

impl Application {
    /// Builds the app's state from `settings` (DynamoDB through a client
    /// made from `aws`, or MySQL) and binds `settings.listen`.
    pub async fn build(settings: &Settings, aws: &SdkConfig) -> Result<Self, StartupError> {
        Self::bind(settings, AppState::from_settings(settings, aws).await?).await
    }

    /// Binds `settings.listen` with a state of the caller's making (a test
    /// may point the store at another endpoint, or share none of it with a
    /// second instance). A state without authentication is refused off
    /// loopback.
    pub async fn bind(settings: &Settings, state: AppState) -> Result<Self, StartupError> {
        let addr = settings.listen;
        if state.auth.is_none() && !addr.ip().is_loopback() {
            return Err(StartupError::Unauthenticated { addr });
        }
        let bind_error = |source| StartupError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            router: app(state),
            shutdown_timeout: settings.shutdown_timeout(),
        })
    }

    /// The bound address, with the real port when port 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting connections
    /// and lets the requests in flight finish, for at most the shutdown
    /// timeout; requests still running then are abandoned when the process
    /// exits.
    pub async fn run_until<F>(self, shutdown: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = signalled_tx.send(());
        };
        // The peer's address is the rate limit's key without authentication.
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(self.listener, service).with_graceful_shutdown(signal);
        let grace = self.shutdown_timeout;
        let deadline = async move {
            match signalled_rx.await {
                Ok(()) => tokio::time::sleep(grace).await,
                // The server ended without a signal; `serve` is done too.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = serve.into_future() => result,
            () = deadline => {
                tracing::warn!(?grace, "requests still in flight at the end of the shutdown timeout");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mysql_settings() -> Settings {
        let mut settings = Settings::defaults();
        settings.storage.storage = Storage::Mysql;
        settings.storage.database_url = None;
        settings
    }

    #[cfg(not(feature = "mysql"))]
    #[tokio::test]
    async fn asking_for_mysql_in_a_build_without_it_stops_the_start_up() {
        let error = AppState::from_settings(&mysql_settings(), &SdkConfig::builder().build())
            .await
            .expect_err("this build has no MySQL");
        assert!(matches!(error, StartupError::MySqlNotBuilt(_)), "{error:?}");
        assert!(
            error.to_string().contains("--features mysql"),
            "says how to fix it: {error}"
        );
    }

    #[cfg(feature = "mysql")]
    #[tokio::test]
    async fn mysql_without_a_database_url_stops_the_start_up() {
        let error = AppState::from_settings(&mysql_settings(), &SdkConfig::builder().build())
            .await
            .expect_err("no URL to connect to");
        assert!(
            matches!(error, StartupError::DatabaseUrlMissing(_)),
            "{error:?}"
        );
        assert!(error.to_string().contains("OBT_DATABASE_URL"), "{error}");
    }
}
