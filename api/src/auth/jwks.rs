//! JSON Web Key Sets (RFC 7517): parsing one into the keys a token may be
//! checked with ([`KeySet`]), and keeping one fetched from a URL current
//! ([`RemoteKeys`]).
//!
//! A key is used when it is a public signature key: `kty` RSA, EC (P-256,
//! P-384) or OKP (Ed25519), `use` absent or `sig`, `alg` absent or an
//! allowed asymmetric algorithm. Symmetric (`oct`) keys, encryption keys
//! and keys that do not parse are skipped (and counted in the log), so
//! that one odd key of an issuer does not make the others unusable.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::sync::{Mutex, watch};

use super::{ALLOWED_ALGORITHMS, AuthSetupError};

/// The largest JWKS document read (Cognito's is about 1 KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// One fetch of the JWKS URL, connection included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two fetches caused by unknown key ids.
pub const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// One usable key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl VerifyKey {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The key of one JWK, or why it is not used.
    fn of(jwk: &Jwk) -> Result<Self, &'static str> {
        if matches!(
            &jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            return Err("not a signature key (use)");
        }
        let by_type: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(params) => match params.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                _ => return Err("unsupported curve"),
            },
            AlgorithmParameters::OctetKeyPair(params) => match params.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                _ => return Err("unsupported curve"),
            },
            AlgorithmParameters::OctetKey(_) => return Err("a symmetric key"),
        };
        let algorithms = match jwk.common.key_algorithm {
            None => by_type,
            Some(named) => {
                let alg: Algorithm = named
                    .to_string()
                    .parse()
                    .map_err(|_| "not a signature algorithm")?;
                if !(ALLOWED_ALGORITHMS.contains(&alg) && by_type.contains(&alg)) {
                    return Err("an algorithm not allowed, or not of its key type");
                }
                vec![alg]
            }
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key parameters")?;
        Ok(Self {
            decoding,
            algorithms,
        })
    }
}

/// The usable keys of a JWKS.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyKey>,
    /// Keys without a `kid`: a token without `kid` may use the only key of
    /// a set that has exactly one.
    without_kid: Vec<VerifyKey>,
}

/// Why a JWKS document gives no keys.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JSON Web Key Set ({0})")]
    NotJwks(String),
    #[error("no usable signature key (of {total}; skipped: {skipped})")]
    NoUsableKey { total: usize, skipped: String },
}

impl KeySet {
    /// The usable keys of a JWKS document; an error when there is none.
    pub fn parse(json: &[u8]) -> Result<Self, JwksError> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document =
            serde_json::from_slice(json).map_err(|e| JwksError::NotJwks(e.to_string()))?;
        let total = document.keys.len();
        let mut set = Self::default();
        let mut skipped: Vec<String> = Vec::new();
        for value in document.keys {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(_) => {
                    skipped.push("unparsable".to_owned());
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            match (VerifyKey::of(&jwk), kid) {
                (Ok(key), Some(kid)) => {
                    set.by_kid.insert(kid, key);
                }
                (Ok(key), None) => set.without_kid.push(key),
                (Err(why), kid) => skipped.push(format!("{}: {why}", kid.unwrap_or_default())),
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoUsableKey {
                total,
                skipped: skipped.join(", "),
            });
        }
        if !skipped.is_empty() {
            tracing::info!(skipped = %skipped.join(", "), "JWKS keys not used");
        }
        Ok(set)
    }

    /// The key a token's `kid` names; without `kid`, the only key.
    pub fn find(&self, kid: Option<&str>) -> Option<&VerifyKey> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.len() == 1 => self.by_kid.values().chain(&self.without_kid).next(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The keys of a JWKS URL, kept current by a background task that stops
/// when this is dropped.
pub struct RemoteKeys {
    shared: Arc<Shared>,
    refresher: tokio::task::AbortHandle,
}

struct Shared {
    url: hyper::Uri,
    client: HttpClient,
    keys: watch::Sender<Option<Arc<KeySet>>>,
    /// When a token's unknown `kid` last caused a fetch.
    last_refetch: Mutex<Option<Instant>>,
}

impl fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &self.shared.url)
            .field("keys", &self.shared.keys.borrow().as_ref().map(|k| k.len()))
            .finish_non_exhaustive()
    }
}

impl Drop for RemoteKeys {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl RemoteKeys {
    /// Checks `url`, starts the task that fetches it now and every
    /// `refresh` (sooner again after a failure), and waits up to
    /// `first_wait` for the first load. A URL that cannot be loaded yet is
    /// no start-up error: it is retried, and the keys are missing until then.
    pub async fn start(
        url: &str,
        refresh: Duration,
        first_wait: Duration,
    ) -> Result<Self, AuthSetupError> {
        let uri = checked_url(url)?;
        let shared = Arc::new(Shared {
            client: client(&uri)?,
            url: uri,
            keys: watch::Sender::new(None),
            last_refetch: Mutex::new(None),
        });
        let mut loaded = shared.keys.subscribe();
        let refresher = tokio::spawn(refresh_loop(Arc::clone(&shared), refresh)).abort_handle();
        let first = tokio::time::timeout(first_wait, loaded.wait_for(Option::is_some)).await;
        if first.is_err() {
            tracing::warn!(
                url = %shared.url,
                wait = ?first_wait,
                "the JWKS is not loaded yet: the spending routes answer 503 until it is"
            );
        }
        Ok(Self { shared, refresher })
    }

    /// The keys last loaded, if any were.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.shared.keys.borrow().clone()
    }

    /// Fetches the keys again because a token named `kid`, unknown so far
    /// (a key rotation), unless such a fetch happened within
    /// [`MIN_REFETCH_INTERVAL`]. The keys then current.
    pub async fn refetch_for(&self, kid: &str) -> Option<Arc<KeySet>> {
        let mut last = self.shared.last_refetch.lock().await;
        // A concurrent request may have fetched the key meanwhile.
        if let Some(set) = self.current().filter(|set| set.find(Some(kid)).is_some()) {
            return Some(set);
        }
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return self.current();
        }
        *last = Some(Instant::now());
        tracing::info!(kid, url = %self.shared.url, "unknown key id: fetching the JWKS again");
        if let Err(e) = self.shared.load().await {
            tracing::warn!(error = %e, url = %self.shared.url, "JWKS fetch failed");
        }
        self.current()
    }
}

impl Shared {
    /// Fetches and parses the JWKS; on success it becomes the current keys.
    async fn load(&self) -> Result<(), String> {
        let set = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        tracing::debug!(url = %self.url, keys = set.len(), "JWKS loaded");
        self.keys.send_replace(Some(Arc::new(set)));
        Ok(())
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let request = hyper::Request::get(self.url.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| obt_runtime::error_chain(&e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        KeySet::parse(&body).map_err(|e| e.to_string())
    }
}

/// Loads now, then every `refresh`; after a failure, again after 2 s,
/// doubling up to a minute (never later than `refresh`).
async fn refresh_loop(shared: Arc<Shared>, refresh: Duration) {
    let mut failures: u32 = 0;
    loop {
        let wait = match shared.load().await {
            Ok(()) => {
                failures = 0;
                refresh
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff =
                    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
                tracing::warn!(error = %e, url = %shared.url, retry_in = ?backoff.min(refresh), "JWKS fetch failed");
                backoff.min(refresh)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// `url`, if it is https://, or http:// to a loopback address.
fn checked_url(url: &str) -> Result<hyper::Uri, AuthSetupError> {
    let error = |detail: &str| AuthSetupError::JwksUrl {
        url: url.to_owned(),
        detail: detail.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| error("not a URL"))?;
    let host = uri.host().ok_or_else(|| error("it has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback_host(host) => Ok(uri),
        Some("http") => Err(error("plain http is only allowed to a loopback address")),
        _ => Err(error("the scheme must be https")),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The project's HTTPS client ([`obt_runtime::https_client`]).
fn client(uri: &hyper::Uri) -> Result<HttpClient, AuthSetupError> {
    obt_runtime::https_client(uri.scheme_str() == Some("https"))
        .map_err(AuthSetupError::RootCertificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_encryption_keys_are_not_used() {
        let json = br#"{"keys":[
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","use":"enc","crv":"P-256","x":"AA","y":"AA"}
        ]}"#;
        let error = KeySet::parse(json).expect_err("no usable key");
        assert!(error.to_string().contains("symmetric"), "{error}");
        assert!(error.to_string().contains("signature"), "{error}");
    }

    #[test]
    fn a_key_naming_an_hmac_algorithm_is_not_used() {
        let json = br#"{"keys":[{"kty":"RSA","kid":"r","alg":"HS256","n":"AQAB","e":"AQAB"}]}"#;
        assert!(KeySet::parse(json).is_err());
    }

    #[test]
    fn garbage_is_no_key_set() {
        assert!(matches!(
            KeySet::parse(b"not json"),
            Err(JwksError::NotJwks(_))
        ));
        assert!(matches!(
            KeySet::parse(br#"{"keys":[]}"#),
            Err(JwksError::NoUsableKey { .. })
        ));
    }

    #[test]
    fn only_https_or_loopback_http_urls_are_accepted() {
        for good in [
            "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json",
            "http://127.0.0.1:9000/jwks.json",
            "http://localhost:9000/jwks.json",
            "http://[::1]:9000/jwks.json",
        ] {
            assert!(checked_url(good).is_ok(), "{good}");
        }
        for bad in [
            "http://example.com/jwks.json",
            "ftp://127.0.0.1/x",
            "/jwks.json",
            "not a url",
        ] {
            assert!(checked_url(bad).is_err(), "{bad}");
        }
    }
}
