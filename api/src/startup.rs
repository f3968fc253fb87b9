//! Builds the router and runs the server.
//!
//! [`app`] is the whole HTTP surface, middleware included, as a plain
//! [`Router`]: tests drive it with `tower::ServiceExt::oneshot`, or bind it
//! on port 0 through [`Application`], exactly as the binary does.
//!
//! The middleware, outermost first:
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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::middleware::map_response;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::error::json_error_bodies;
use crate::routes::{health, spending};
use crate::settings::Settings;
use crate::store::SpendingStore;

/// What every handler shares. Cloned per request, hence the `Arc`.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<SpendingStore>,
    /// The bound of one request, applied by [`app`].
    pub request_timeout: Duration,
}

impl AppState {
    pub fn new(store: SpendingStore, request_timeout: Duration) -> Self {
        Self {
            store: Arc::new(store),
            request_timeout,
        }
    }

    /// The state the binary runs with: a DynamoDB client from `aws` on the
    /// table and limits of `settings`.
    pub fn from_settings(settings: &Settings, aws: &SdkConfig) -> Self {
        let client = aws_sdk_dynamodb::Client::new(aws);
        let store = SpendingStore::new(client, settings.table.clone(), settings.store_options());
        Self::new(store, settings.request_timeout())
    }
}

/// The api's routes and middleware.
pub fn app(state: AppState) -> Router {
    let request_timeout = state.request_timeout;
    let middleware = ServiceBuilder::new()
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
    Router::new()
        .route("/api/v1/spending", post(spending::record))
        .route("/api/v1/spending/{identity}", get(spending::summary))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .layer(DefaultBodyLimit::max(spending::BODY_LIMIT))
        .with_state(state)
        .layer(middleware)
}

fn request_span<B>(request: &Request<B>) -> Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    )
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
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
    /// Binds `settings.listen` and builds the app over a DynamoDB client
    /// made from `aws`.
    pub async fn build(settings: &Settings, aws: &SdkConfig) -> Result<Self, StartupError> {
        Self::bind(settings, AppState::from_settings(settings, aws)).await
    }

    /// Binds `settings.listen` with a state of the caller's making (a test
    /// may point the store at another endpoint, or share none of it with a
    /// second instance).
    pub async fn bind(settings: &Settings, state: AppState) -> Result<Self, StartupError> {
        let addr = settings.listen;
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
        let serve = axum::serve(self.listener, self.router).with_graceful_shutdown(signal);
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
