//! Authentication of the spending routes: JWT bearer tokens (RFC 6750),
//! as Amazon Cognito issues them, checked against the issuer's public keys.
//!
//! - **When.** `OBT_AUTH=auto` (the default) requires a token whenever the
//!   api listens on anything but a loopback address; `required` always;
//!   `off` never, and is refused off loopback ([`AuthConfig::from_settings`]).
//!   `/health/*` and `/api/v1/openapi.json` never need one.
//! - **Keys.** A JSON Web Key Set ([`jwks`]): fetched from
//!   `OBT_JWT_JWKS_URL` (at start-up, every `OBT_JWT_JWKS_REFRESH_SECS`,
//!   and when a token names a key id not yet known, at most every 30 s, so
//!   that a key rotation needs no restart), or read once from
//!   `OBT_JWT_JWKS_FILE`. Only public signature keys are used.
//! - **Checks.** The signature, with an asymmetric algorithm only (RS*,
//!   PS*, ES256, ES384, EdDSA) that the key allows: `alg: none` and HS*
//!   are refused, so a public key can never serve as an HMAC secret
//!   (algorithm confusion). `iss` must equal `OBT_JWT_ISSUER`; `exp` is
//!   required and `nbf` checked, with [`LEEWAY`] for clock skew. With
//!   `OBT_JWT_AUDIENCE`: `aud` must name it, or, for a token without `aud`,
//!   `client_id` must equal it (Cognito's access tokens carry the app
//!   client in `client_id`, its ID tokens in `aud`).
//! - **Who.** The [`Principal`] is `sub`, or `client_id` when there is no
//!   `sub`; it goes into the request's extensions, keys the rate limit and
//!   scopes Idempotency-Keys.
//! - **Answers.** Every failure is the same 401 (`WWW-Authenticate: Bearer`,
//!   plus `error="invalid_token"` when a token was sent) with the same
//!   body: which check failed is logged (at INFO, with the key id and the
//!   algorithm), never answered. Until a JWKS URL was loaded once, the
//!   routes answer 503 with `Retry-After` instead. Neither the token nor
//!   any part of it other than `kid` and `alg` is ever logged.

pub mod jwks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use crate::config::Settings;
use crate::error::ApiError;

pub use jwks::{KeySet, RemoteKeys};

/// Allowed clock skew between the issuer and the api, for `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The longest token considered (Cognito's are 1 to 2 KiB).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;
/// How long start-up waits for the first load of a JWKS URL before it
/// serves anyway (the spending routes answer 503 until the keys load).
pub const FIRST_LOAD_WAIT: Duration = Duration::from_secs(5);
/// `Retry-After` of the 503 answered before the keys were loaded.
pub const NOT_READY_RETRY_AFTER_SECS: u32 = 5;

/// The algorithms a token may be signed with: asymmetric ones only.
pub const ALLOWED_ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// `OBT_AUTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Required unless the api listens on a loopback address.
    Auto,
    /// Always required.
    Required,
    /// Never required; refused unless the api listens on a loopback address.
    Off,
}

/// The authenticated caller: the token's `sub`, or its `client_id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(String);

impl Principal {
    /// A principal of the caller's choosing (tests, other authenticators).
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysConfig {
    /// `OBT_JWT_JWKS_FILE`, read once.
    File(PathBuf),
    /// `OBT_JWT_JWKS_URL`, fetched every `refresh`.
    Url { url: String, refresh: Duration },
}

/// The validated authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: Option<String>,
    pub keys: KeysConfig,
}

/// Why the authentication settings cannot be used; each says what to set.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error(
        "OBT_AUTH=off is refused on {addr}: off a loopback address the api requires \
         authentication. Set OBT_AUTH=auto (or required) with OBT_JWT_ISSUER and \
         OBT_JWT_JWKS_URL (or OBT_JWT_JWKS_FILE), or listen on 127.0.0.1"
    )]
    OffOnNetwork { addr: SocketAddr },
    #[error(
        "authentication is required ({why}) but OBT_JWT_ISSUER is not set: set it to the \
         issuer of the tokens, e.g. https://cognito-idp.REGION.amazonaws.com/POOL_ID"
    )]
    IssuerMissing { why: String },
    #[error(
        "authentication is required ({why}) but no keys are configured: set OBT_JWT_JWKS_URL \
         (e.g. OBT_JWT_ISSUER followed by /.well-known/jwks.json) or OBT_JWT_JWKS_FILE"
    )]
    KeysMissing { why: String },
    #[error("OBT_JWT_ISSUER must not be empty: set it to the issuer of the tokens")]
    Empty,
    #[error(
        "OBT_JWT_JWKS_URL {url:?} is not usable: {detail} (https://, or http:// to a \
         loopback address)"
    )]
    JwksUrl { url: String, detail: String },
    #[error("OBT_JWT_JWKS_FILE {path}: {detail}")]
    JwksFile { path: String, detail: String },
    #[error(
        "no root certificates found for OBT_JWT_JWKS_URL ({0}): install the ca-certificates \
         package or set SSL_CERT_FILE"
    )]
    RootCertificates(std::io::Error),
}

impl AuthConfig {
    /// The authentication `settings` ask for: `None` when it is off.
    pub fn from_settings(settings: &Settings) -> Result<Option<Self>, AuthSetupError> {
        let addr = settings.listen;
        let loopback = addr.ip().is_loopback();
        let why = match (settings.auth, loopback) {
            (AuthMode::Off, false) => return Err(AuthSetupError::OffOnNetwork { addr }),
            (AuthMode::Off, true) | (AuthMode::Auto, true) => {
                if settings.jwt_issuer.is_some() && settings.auth == AuthMode::Auto {
                    tracing::warn!(
                        %addr,
                        "OBT_JWT_ISSUER is set, but with OBT_AUTH=auto on a loopback address \
                         no token is required; set OBT_AUTH=required to require one"
                    );
                }
                return Ok(None);
            }
            (AuthMode::Auto, false) => {
                format!("OBT_AUTH=auto and OBT_LISTEN={addr} is not loopback")
            }
            (AuthMode::Required, _) => "OBT_AUTH=required".to_owned(),
        };
        let issuer = settings
            .jwt_issuer
            .clone()
            .ok_or_else(|| AuthSetupError::IssuerMissing { why: why.clone() })?;
        if issuer.trim().is_empty() {
            return Err(AuthSetupError::Empty);
        }
        let keys = match (&settings.jwt_jwks_url, &settings.jwt_jwks_file) {
            (Some(url), _) => KeysConfig::Url {
                url: url.clone(),
                refresh: Duration::from_secs(settings.jwt_jwks_refresh_secs),
            },
            (None, Some(path)) => KeysConfig::File(path.clone()),
            (None, None) => return Err(AuthSetupError::KeysMissing { why }),
        };
        Ok(Some(Self {
            issuer,
            // Empty is unset: an env file's `OBT_JWT_AUDIENCE=` (the
            // CloudFormation template writes one when JwtAudience is empty).
            audience: settings.jwt_audience.clone().filter(|a| !a.is_empty()),
            keys,
        }))
    }
}

/// Checks bearer tokens. Shared by all requests.
#[derive(Debug)]
pub struct Authenticator {
    issuer: String,
    audience: Option<String>,
    keys: Keys,
}

#[derive(Debug)]
enum Keys {
    Static(Arc<KeySet>),
    Remote(RemoteKeys),
}

/// Why a request is not authenticated. The reason is for the log only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No bearer token was sent (no Authorization header, or another scheme).
    Missing(&'static str),
    /// A token was sent and is not acceptable.
    Invalid(&'static str),
    /// The keys of a JWKS URL were never loaded yet.
    NotReady,
}

impl Rejection {
    /// Why, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(reason) | Self::Invalid(reason) => reason,
            Self::NotReady => "the keys were not loaded yet",
        }
    }
}

/// The claims the api reads; `exp`, `nbf` and `iss` are checked by
/// `jsonwebtoken` itself.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    client_id: Option<String>,
    aud: Option<Audience>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Self::One(aud) => aud == audience,
            Self::Many(auds) => auds.iter().any(|a| a == audience),
        }
    }
}

impl Authenticator {
    /// Loads the keys `config` names: reads the file (an unreadable file or
    /// one without usable keys stops the start-up), or starts fetching the
    /// URL and waits up to [`FIRST_LOAD_WAIT`] for the first load.
    pub async fn start(config: AuthConfig) -> Result<Self, AuthSetupError> {
        let keys = match &config.keys {
            KeysConfig::File(path) => {
                let file_error = |detail: String| AuthSetupError::JwksFile {
                    path: path.display().to_string(),
                    detail,
                };
                let json = tokio::fs::read(path)
                    .await
                    .map_err(|e| file_error(format!("cannot be read: {e}")))?;
                let set = KeySet::parse(&json).map_err(|e| file_error(e.to_string()))?;
                tracing::info!(path = %path.display(), keys = set.len(), "JWKS file loaded");
                Keys::Static(Arc::new(set))
            }
            KeysConfig::Url { url, refresh } => {
                Keys::Remote(RemoteKeys::start(url, *refresh, FIRST_LOAD_WAIT).await?)
            }
        };
        Ok(Self {
            issuer: config.issuer,
            audience: config.audience,
            keys,
        })
    }

    /// An authenticator over fixed keys.
    pub fn with_keys(issuer: impl Into<String>, audience: Option<String>, keys: KeySet) -> Self {
        Self {
            issuer: issuer.into(),
            audience,
            keys: Keys::Static(Arc::new(keys)),
        }
    }

    /// An authenticator over the keys of a JWKS URL, already started.
    pub fn with_remote_keys(
        issuer: impl Into<String>,
        audience: Option<String>,
        keys: RemoteKeys,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audience,
            keys: Keys::Remote(keys),
        }
    }

    /// Whether tokens can be checked: always with fixed keys; with a JWKS
    /// URL, once it was loaded.
    pub fn keys_loaded(&self) -> bool {
        match &self.keys {
            Keys::Static(_) => true,
            Keys::Remote(remote) => remote.current().is_some(),
        }
    }

    /// The principal of a request's bearer token.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Rejection> {
        let token = bearer_token(headers).inspect_err(|rejection| {
            tracing::info!(reason = rejection.reason(), "request not authenticated");
        })?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            let reason = "malformed token, or an unknown algorithm (none, ...)";
            tracing::info!(reason, "bearer token refused");
            Rejection::Invalid(reason)
        })?;
        let alg = header.alg;
        let kid = header.kid.as_deref();
        let fail = |reason: &'static str| {
            tracing::info!(reason, ?alg, kid, "bearer token refused");
            Rejection::Invalid(reason)
        };
        if !ALLOWED_ALGORITHMS.contains(&alg) {
            return Err(fail("algorithm not allowed"));
        }
        let key = match &self.keys {
            Keys::Static(set) => set.find(kid).cloned(),
            Keys::Remote(remote) => {
                let Some(set) = remote.current() else {
                    tracing::info!(?alg, kid, "bearer token not checked: no keys loaded yet");
                    return Err(Rejection::NotReady);
                };
                match (set.find(kid), kid) {
                    (Some(key), _) => Some(key.clone()),
                    (None, Some(kid)) => remote
                        .refetch_for(kid)
                        .await
                        .and_then(|set| set.find(Some(kid)).cloned()),
                    (None, None) => None,
                }
            }
        };
        let Some(key) = key else {
            return Err(fail("unknown key id"));
        };
        if !key.allows(alg) {
            return Err(fail("algorithm does not match the key"));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, key.decoding(), &validation).map_err(|e| {
                fail(match e.kind() {
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::ExpiredSignature => "expired",
                    ErrorKind::ImmatureSignature => "not yet valid (nbf)",
                    ErrorKind::InvalidIssuer => "wrong issuer",
                    ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss) is missing",
                    ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
                    _ => "malformed token or claims",
                })
            })?;
        let claims = data.claims;
        if let Some(audience) = &self.audience {
            let named = match (&claims.aud, &claims.client_id) {
                (Some(aud), _) => aud.names(audience),
                (None, Some(client_id)) => client_id == audience,
                (None, None) => false,
            };
            if !named {
                return Err(fail("wrong audience"));
            }
        }
        claims
            .sub
            .filter(|s| !s.is_empty())
            .or(claims.client_id.filter(|c| !c.is_empty()))
            .map(Principal)
            .ok_or_else(|| fail("neither sub nor client_id"))
    }
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer_token(headers: &HeaderMap) -> Result<&str, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Rejection::Missing("no Authorization header"));
    };
    if values.next().is_some() {
        return Err(Rejection::Invalid("more than one Authorization header"));
    }
    let value = value
        .to_str()
        .map_err(|_| Rejection::Invalid("Authorization is not visible ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::Missing(
            "Authorization is not of the Bearer scheme",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Rejection::Invalid("empty bearer token"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(Rejection::Invalid("bearer token too long"));
    }
    Ok(token)
}

/// Middleware of the spending routes: the request goes on with its
/// [`Principal`] in its extensions, or is answered 401 (or 503 before the
/// keys were ever loaded).
pub async fn require_bearer(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    match auth.authenticate(request.headers()).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(Rejection::Missing(_)) => ApiError::Unauthorized {
            token_presented: false,
        }
        .into_response(),
        Err(Rejection::Invalid(_)) => ApiError::Unauthorized {
            token_presented: true,
        }
        .into_response(),
        Err(Rejection::NotReady) => ApiError::AuthNotReady {
            retry_after_secs: NOT_READY_RETRY_AFTER_SECS,
        }
        .into_response(),
    }
}

/// Middleware of every route, outside the request's span: marks the
/// `Authorization` header sensitive, so that no `Debug` of the headers
/// (ours or a library's) can print the token.
pub async fn hide_authorization(mut request: Request, next: Next) -> Response {
    if let axum::http::header::Entry::Occupied(mut entry) =
        request.headers_mut().entry(AUTHORIZATION)
    {
        for value in entry.iter_mut() {
            value.set_sensitive(true);
        }
    }
    next.run(request).await
}
