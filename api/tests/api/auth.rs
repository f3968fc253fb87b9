//! Authentication, the rate limit and the secrecy of tokens, through the
//! real router over a real store, in both storage modes.
//!
//! Every key is generated when the test runs (aws-lc-rs); none is
//! committed. Tokens are signed with `jsonwebtoken`, as an issuer would.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use clap::Parser;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use obt_api::auth::{AuthConfig, AuthMode, AuthSetupError, Authenticator, KeysConfig, RemoteKeys};
use obt_api::error::UNAUTHORIZED;
use obt_api::rate_limit::RateLimit;
use obt_api::startup::StartupError;
use obt_api::{Application, Settings};
use obt_testkit::eventually;
use serde_json::{Value, json};

use crate::helpers::{SpawnedApp, TestApp, TestResponse, spending};

const ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_TEST";
const AUDIENCE: &str = "test-app-client";

/// A signing key of the test issuer and its public JWK.
struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
}

impl TestKey {
    fn es256(kid: &str) -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("an EC key");
        let pkcs8 = pair.to_pkcs8v1().expect("PKCS#8");
        Self::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(pkcs8.as_ref()),
        )
    }

    /// RS256, as Amazon Cognito signs.
    fn rs256(kid: &str) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .expect("an RSA key");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8");
        let pkcs1 = pkcs1_of_pkcs8(pkcs8.as_ref());
        Self::new(kid, Algorithm::RS256, EncodingKey::from_rsa_der(pkcs1))
    }

    fn new(kid: &str, alg: Algorithm, encoding: EncodingKey) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("a public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            kid: kid.to_owned(),
            alg,
            encoding,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("a token")
    }
}

/// The RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (what jsonwebtoken's
/// RSA signer reads): SEQUENCE { INTEGER, SEQUENCE, OCTET STRING { key } }.
fn pkcs1_of_pkcs8(der: &[u8]) -> &[u8] {
    fn element(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => (usize::from(input[2]) << 8 | usize::from(input[3]), 4),
            other => panic!("unexpected DER length byte {other:#x}"),
        };
        (tag, &input[header..header + len], &input[header + len..])
    }
    let (_, info, _) = element(der);
    let (_, _, rest) = element(info); // version
    let (_, _, rest) = element(rest); // algorithm
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    key
}

fn jwks(keys: &[&TestKey]) -> String {
    serde_json::to_string(&JwkSet {
        keys: keys.iter().map(|k| k.jwk.clone()).collect(),
    })
    .expect("JSON")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Claims of a valid Cognito-style ID token for `sub`.
fn claims(sub: &str) -> Value {
    json!({"iss": ISSUER, "sub": sub, "aud": AUDIENCE, "exp": now() + 300, "iat": now()})
}

fn with(mut claims: Value, field: &str, value: Value) -> Value {
    if value.is_null() {
        claims.as_object_mut().expect("an object").remove(field);
    } else {
        claims[field] = value;
    }
    claims
}

/// A JWKS file in the temporary directory, removed on drop.
struct JwksFile(PathBuf);

impl JwksFile {
    fn new(json: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("obt-test-jwks-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, json).expect("write the JWKS");
        Self(path)
    }
}

impl Drop for JwksFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An authenticator over `keys`, loaded as the binary loads
/// OBT_JWT_JWKS_FILE.
async fn authenticator(keys: &[&TestKey], audience: Option<&str>) -> Authenticator {
    let file = JwksFile::new(&jwks(keys));
    Authenticator::start(AuthConfig {
        issuer: ISSUER.to_owned(),
        audience: audience.map(str::to_owned),
        keys: KeysConfig::File(file.0.clone()),
    })
    .await
    .expect("the JWKS file loads")
}

/// The api with authentication over `key`, audience checked.
async fn authenticated_app(key: &TestKey) -> TestApp {
    let auth = authenticator(&[key], Some(AUDIENCE)).await;
    TestApp::with_state(|state| state.with_auth(auth)).await
}

fn post(token: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::post("/api/v1/spending").header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder
        .body(Body::from(body.to_owned()))
        .expect("a request")
}

fn get(token: Option<&str>, path: &str) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(Body::empty()).expect("a request")
}

#[track_caller]
fn assert_unauthorized(response: &TestResponse, challenge: &str, what: &str) {
    assert_eq!(
        response.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        response.text
    );
    assert_eq!(
        response.header("www-authenticate"),
        Some(challenge),
        "{what}"
    );
    assert_eq!(
        response.json,
        json!({"errors": {"authorization": [UNAUTHORIZED]}}),
        "{what}: every 401 has the same body"
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_401_with_a_bare_bearer_challenge_and_writes_nothing() {
    let key = TestKey::es256("k1");
    let app = authenticated_app(&key).await;
    let posted = app
        .request(post(None, &spending("AB1", "Martin", "10")))
        .await;
    assert_unauthorized(&posted, "Bearer", "POST without a token");
    let read = app.request(get(None, "/api/v1/spending/AB1")).await;
    assert_unauthorized(&read, "Bearer", "GET without a token");
    // Another scheme is no bearer token either.
    let basic = Request::post("/api/v1/spending")
        .header("content-type", "application/json")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .body(Body::from(spending("AB1", "Martin", "10")))
        .expect("a request");
    assert_unauthorized(&app.request(basic).await, "Bearer", "Basic");
    assert_eq!(app.stored_count().await, 0);
}

#[tokio::test]
async fn every_refused_token_gets_the_same_401_and_nothing_is_written() {
    let key = TestKey::es256("k1");
    let impostor = TestKey::es256("k1");
    let rsa = TestKey::rs256("r1");
    let app = authenticated_app(&key).await;
    let valid = claims("alice");

    // alg "none": an unsigned token (header {"alg":"none","typ":"JWT"}).
    let b64 = |v: &Value| base64url(v.to_string().as_bytes());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": "k1"})),
        b64(&valid)
    );
    // HS256 with the public key as the HMAC secret (algorithm confusion),
    // both the JWK's text and its coordinate.
    let public_jwk = serde_json::to_string(&key.jwk).expect("JSON");
    let hs256 = |secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &valid, &EncodingKey::from_secret(secret)).expect("a token")
    };
    let coordinate = match &key.jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => p.x.clone(),
        other => panic!("an EC key, not {other:?}"),
    };
    let good = key.sign(&valid);
    let (head, rest) = good.split_once('.').expect("a JWT");
    let (_, signature) = rest.split_once('.').expect("a JWT");
    let tampered = format!("{head}.{}.{signature}", b64(&claims("mallory")));

    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not-a-jwt".to_owned()),
        ("three garbage parts", "a.b.c".to_owned()),
        (
            "bad signature (another key, same kid)",
            impostor.sign(&valid),
        ),
        ("tampered claims", tampered),
        ("unknown kid", key.sign_as("k2", &valid)),
        ("a key of another issuer", rsa.sign(&valid)),
        (
            "expired",
            key.sign(&with(valid.clone(), "exp", json!(now() - 120))),
        ),
        (
            "not yet valid",
            key.sign(&with(valid.clone(), "nbf", json!(now() + 600))),
        ),
        ("no exp", key.sign(&with(valid.clone(), "exp", Value::Null))),
        (
            "wrong issuer",
            key.sign(&with(valid.clone(), "iss", json!("https://evil.example"))),
        ),
        (
            "no issuer",
            key.sign(&with(valid.clone(), "iss", Value::Null)),
        ),
        (
            "wrong audience",
            key.sign(&with(valid.clone(), "aud", json!("other-client"))),
        ),
        (
            "wrong client_id, no aud",
            key.sign(&with(
                with(valid.clone(), "aud", Value::Null),
                "client_id",
                json!("other-client"),
            )),
        ),
        (
            "neither aud nor client_id",
            key.sign(&with(valid.clone(), "aud", Value::Null)),
        ),
        (
            "no sub nor client_id",
            key.sign(&with(valid.clone(), "sub", Value::Null)),
        ),
        ("alg none", unsigned),
        (
            "HS256 with the public JWK as secret",
            hs256(public_jwk.as_bytes()),
        ),
        (
            "HS256 with the public coordinate as secret",
            hs256(coordinate.as_bytes()),
        ),
    ];
    for (what, token) in &cases {
        let posted = app
            .request(post(Some(token), &spending("AB1", "Martin", "10")))
            .await;
        assert_unauthorized(&posted, r#"Bearer error="invalid_token""#, what);
        let read = app.request(get(Some(token), "/api/v1/spending/AB1")).await;
        assert_unauthorized(&read, r#"Bearer error="invalid_token""#, what);
    }
    assert_eq!(
        app.stored_count().await,
        0,
        "no refused POST wrote anything"
    );

    // The same app accepts the valid token: the refusals were the tokens'.
    let recorded = app
        .request(post(Some(&good), &spending("AB1", "Martin", "10")))
        .await;
    assert_eq!(recorded.status, StatusCode::CREATED, "{}", recorded.text);
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

#[tokio::test]
async fn valid_tokens_record_and_read() {
    let es = TestKey::es256("k1");
    let rs = TestKey::rs256("r1");
    let auth = authenticator(&[&es, &rs], Some(AUDIENCE)).await;
    let app = TestApp::with_state(|state| state.with_auth(auth)).await;

    let id_token = es.sign(&claims("alice"));
    let recorded = app
        .request(post(Some(&id_token), &spending("AB1", "Martin", "10")))
        .await;
    assert_eq!(recorded.status, StatusCode::CREATED, "{}", recorded.text);
    let read = app
        .request(get(Some(&id_token), "/api/v1/spending/AB1"))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.json["count"], 1);

    // RS256, a Cognito access token: client_id instead of aud.
    let access = rs.sign(&with(
        with(claims("bob"), "aud", Value::Null),
        "client_id",
        json!(AUDIENCE),
    ));
    let recorded = app
        .request(post(Some(&access), &spending("AB1", "Martin", "5")))
        .await;
    assert_eq!(recorded.status, StatusCode::CREATED, "{}", recorded.text);
    // A client-credentials token: no sub, client_id is the principal.
    let machine = rs.sign(&with(
        with(with(claims("-"), "sub", Value::Null), "aud", Value::Null),
        "client_id",
        json!(AUDIENCE),
    ));
    let read = app
        .request(get(Some(&machine), "/api/v1/spending/AB1"))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
    assert_eq!(read.json["count"], 2);
    // aud as an array naming the audience; an expiry within the leeway.
    let listed = es.sign(&with(
        with(claims("carol"), "aud", json!(["other", AUDIENCE])),
        "exp",
        json!(now() - 5),
    ));
    let read = app
        .request(get(Some(&listed), "/api/v1/spending/AB1"))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text);
}

#[tokio::test]
async fn without_an_audience_setting_aud_is_not_checked() {
    let key = TestKey::es256("k1");
    let auth = authenticator(&[&key], None).await;
    let app = TestApp::with_state(|state| state.with_auth(auth)).await;
    let token = key.sign(&with(claims("alice"), "aud", json!("anything")));
    let read = app.request(get(Some(&token), "/api/v1/spending/AB1")).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.text);
}

#[tokio::test]
async fn health_and_the_openapi_document_need_no_token() {
    let key = TestKey::es256("k1");
    let app = authenticated_app(&key).await;
    for path in ["/health/live", "/health/ready", "/api/v1/openapi.json"] {
        let response = app.get(path).await;
        assert_eq!(response.status, StatusCode::OK, "{path}: {}", response.text);
    }
    // An unknown path stays a 404, not a 401.
    assert_eq!(
        app.get("/api/v1/nothing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_principal() {
    let key = TestKey::es256("k1");
    let app = authenticated_app(&key).await;
    let alice = key.sign(&claims("alice"));
    let bob = key.sign(&claims("bob"));
    let body = spending("AB1", "Martin", "10");
    let with_key = |token: &str| {
        Request::post("/api/v1/spending")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", "shared-key-1")
            .body(Body::from(body.clone()))
            .expect("a request")
    };
    let first = app.request(with_key(&alice)).await;
    let second = app.request(with_key(&bob)).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.text);
    assert_eq!(
        second.header("idempotent-replayed"),
        None,
        "bob's is no replay of alice's"
    );
    assert_ne!(first.json["event_id"], second.json["event_id"]);
    assert_eq!(
        app.outbox_events("AB1").await.len(),
        2,
        "two spendings recorded"
    );
    // Each principal's own retry is still a replay.
    let retry = app.request(with_key(&alice)).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.text, first.text);
    assert_eq!(app.outbox_events("AB1").await.len(), 2);
}

/// A limit of `burst` requests, then one more every 30 s: slow enough
/// that no request comes back while a test runs, however slow the machine.
fn rate_limit(burst: u32) -> RateLimit {
    let quota = governor::Quota::with_period(Duration::from_secs(30))
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::new(burst).expect("positive"));
    RateLimit::with_quota(quota, false)
}

#[tokio::test]
async fn a_principal_over_its_burst_gets_429_with_retry_after_and_others_do_not() {
    let key = TestKey::es256("k1");
    let auth = authenticator(&[&key], Some(AUDIENCE)).await;
    let app =
        TestApp::with_state(|state| state.with_auth(auth).with_rate_limit(rate_limit(3))).await;
    let alice = key.sign(&claims("alice"));
    let bob = key.sign(&claims("bob"));
    for _ in 0..3 {
        let read = app.request(get(Some(&alice), "/api/v1/spending/AB1")).await;
        assert_eq!(read.status, StatusCode::NOT_FOUND, "{}", read.text);
    }
    let limited = app.request(get(Some(&alice), "/api/v1/spending/AB1")).await;
    assert_eq!(
        limited.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        limited.text
    );
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(
        limited.json,
        json!({"errors": {"request": ["too many requests; retry later"]}})
    );
    let posted = app
        .request(post(Some(&alice), &spending("AB1", "Martin", "10")))
        .await;
    assert_eq!(
        posted.status,
        StatusCode::TOO_MANY_REQUESTS,
        "POST counts too"
    );
    assert_eq!(app.stored_count().await, 0, "a limited POST writes nothing");

    let other = app.request(get(Some(&bob), "/api/v1/spending/AB1")).await;
    assert_eq!(
        other.status,
        StatusCode::NOT_FOUND,
        "bob has his own budget"
    );
    // The public routes are not limited.
    assert_eq!(app.get("/health/live").await.status, StatusCode::OK);
    // A refused token is answered 401 before any limit is consulted.
    let refused = app
        .request(get(Some("x.y.z"), "/api/v1/spending/AB1"))
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn without_authentication_the_limit_is_per_peer_address() {
    let app = TestApp::new().await;
    let state = app
        .state(Default::default())
        .await
        .with_rate_limit(rate_limit(2));
    let server = SpawnedApp::start(&app.settings(), state).await;
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = client
            .get(server.url("/api/v1/spending/AB1"))
            .send()
            .await
            .expect("an answer");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 429]);
}

#[test]
fn off_loopback_authentication_is_required_and_its_settings_too() {
    let exposed = |args: &[&str]| {
        let mut all = vec!["api", "--listen", "0.0.0.0:8081"];
        all.extend_from_slice(args);
        Settings::try_parse_from(all).expect("valid flags")
    };
    let error = AuthConfig::from_settings(&exposed(&[])).expect_err("no issuer");
    assert!(
        matches!(error, AuthSetupError::IssuerMissing { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("OBT_JWT_ISSUER"), "{error}");

    let error =
        AuthConfig::from_settings(&exposed(&["--jwt-issuer", ISSUER])).expect_err("no keys");
    assert!(
        matches!(error, AuthSetupError::KeysMissing { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("OBT_JWT_JWKS_URL"), "{error}");

    let error =
        AuthConfig::from_settings(&exposed(&["--auth", "off"])).expect_err("off is refused");
    assert!(
        matches!(error, AuthSetupError::OffOnNetwork { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("OBT_AUTH=off"), "{error}");

    let config = AuthConfig::from_settings(&exposed(&[
        "--jwt-issuer",
        ISSUER,
        "--jwt-jwks-url",
        "https://issuer.example/.well-known/jwks.json",
    ]))
    .expect("complete")
    .expect("required");
    assert_eq!(config.issuer, ISSUER);
    assert_eq!(config.audience, None);
    let config = AuthConfig::from_settings(&exposed(&[
        "--jwt-issuer",
        ISSUER,
        "--jwt-jwks-file",
        "/etc/jwks.json",
        "--jwt-audience",
        "",
    ]))
    .expect("complete")
    .expect("required");
    assert_eq!(config.audience, None, "an empty audience is unset");
    assert_eq!(
        config.keys,
        KeysConfig::File(PathBuf::from("/etc/jwks.json"))
    );
    let error =
        AuthConfig::from_settings(&exposed(&["--jwt-issuer", " ", "--jwt-jwks-file", "/x"]))
            .expect_err("an empty issuer");
    assert!(matches!(error, AuthSetupError::Empty), "{error:?}");

    // On loopback: off by default, required on demand.
    let local = Settings::defaults();
    assert_eq!(local.auth, AuthMode::Auto);
    assert!(AuthConfig::from_settings(&local).expect("valid").is_none());
    let required = Settings {
        auth: AuthMode::Required,
        ..Settings::defaults()
    };
    assert!(matches!(
        AuthConfig::from_settings(&required),
        Err(AuthSetupError::IssuerMissing { .. })
    ));
    // Both key sources at once is a usage error.
    assert!(
        Settings::try_parse_from([
            "api",
            "--jwt-jwks-url",
            "https://x/jwks.json",
            "--jwt-jwks-file",
            "/tmp/jwks.json"
        ])
        .is_err()
    );
}

#[tokio::test]
async fn the_api_does_not_start_off_loopback_without_authentication() {
    let exposed = Settings {
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..Settings::defaults()
    };
    let aws = aws_config::SdkConfig::builder().build();
    let error = Application::build(&exposed, &aws)
        .await
        .expect_err("no authentication settings");
    assert!(
        matches!(
            error,
            StartupError::Auth(AuthSetupError::IssuerMissing { .. })
        ),
        "{error:?}"
    );
    // A state made without authentication is refused too.
    let app = TestApp::new().await;
    let state = app.state(Default::default()).await;
    let error = Application::bind(&exposed, state)
        .await
        .expect_err("no authentication");
    assert!(
        matches!(error, StartupError::Unauthenticated { .. }),
        "{error:?}"
    );

    // A JWKS file that cannot be read, or holds no usable key, stops it.
    let missing = Settings {
        jwt_issuer: Some(ISSUER.to_owned()),
        jwt_jwks_file: Some(PathBuf::from("/nonexistent/jwks.json")),
        ..exposed.clone()
    };
    let error = Application::build(&missing, &aws)
        .await
        .expect_err("no file");
    assert!(
        matches!(error, StartupError::Auth(AuthSetupError::JwksFile { .. })),
        "{error:?}"
    );
    let symmetric = JwksFile::new(r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#);
    let error = Application::build(
        &Settings {
            jwt_jwks_file: Some(symmetric.0.clone()),
            ..missing
        },
        &aws,
    )
    .await
    .expect_err("no usable key");
    assert!(
        error.to_string().contains("no usable signature key"),
        "{error}"
    );
}

/// A JWKS server on a free loopback port: serves `document`, or 500 while
/// `failing`, and counts the requests.
struct JwksServer {
    url: String,
    document: Arc<Mutex<String>>,
    failing: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        let document = Arc::new(Mutex::new(document));
        let failing = Arc::new(AtomicBool::new(false));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, fail, count) = (document.clone(), failing.clone(), fetches.clone());
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (doc, fail, count) = (doc.clone(), fail.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    if fail.load(Ordering::SeqCst) {
                        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    }
                    let body = doc.lock().expect("not poisoned").clone();
                    (StatusCode::OK, body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            url: format!("http://{addr}/.well-known/jwks.json"),
            document,
            failing,
            fetches,
            task,
        }
    }

    fn serve(&self, document: String) {
        *self.document.lock().expect("not poisoned") = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn keys_from_a_url_are_loaded_at_start_up_and_a_new_kid_is_fetched_at_most_every_30_s() {
    let old = TestKey::es256("old");
    let new = TestKey::es256("new");
    let server = JwksServer::start(jwks(&[&old])).await;
    let settings = Settings {
        jwt_issuer: Some(ISSUER.to_owned()),
        jwt_jwks_url: Some(server.url.clone()),
        auth: AuthMode::Required,
        ..Settings::defaults()
    };
    let config = AuthConfig::from_settings(&settings)
        .expect("complete")
        .expect("required");
    let auth = Authenticator::start(config).await.expect("starts");
    assert_eq!(server.fetches(), 1, "loaded once at start-up");
    let app = TestApp::with_state(|state| state.with_auth(auth)).await;

    let read = |token: String| {
        let app = &app;
        async move { app.request(get(Some(&token), "/api/v1/spending/AB1")).await }
    };
    assert_eq!(
        read(old.sign(&claims("alice"))).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.fetches(), 1, "a known kid fetches nothing");

    // The issuer rotates: the new key is fetched when a token names it.
    server.serve(jwks(&[&old, &new]));
    let rotated = read(new.sign(&claims("alice"))).await;
    assert_eq!(rotated.status, StatusCode::NOT_FOUND, "{}", rotated.text);
    assert_eq!(server.fetches(), 2);

    // Unknown kids cannot make the api hammer the issuer.
    for i in 0..5 {
        let unknown = read(new.sign_as(&format!("forged-{i}"), &claims("mallory"))).await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.fetches(), 2, "no fetch within 30 s of the last");
    assert_eq!(
        read(old.sign(&claims("alice"))).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn until_the_keys_of_a_url_are_loaded_the_routes_answer_503() {
    let key = TestKey::es256("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    server.failing.store(true, Ordering::SeqCst);
    let remote = RemoteKeys::start(&server.url, Duration::from_secs(3600), Duration::ZERO)
        .await
        .expect("a valid URL");
    let auth = Authenticator::with_remote_keys(ISSUER, Some(AUDIENCE.to_owned()), remote);
    let app = TestApp::with_state(|state| state.with_auth(auth)).await;
    let token = key.sign(&claims("alice"));

    let early = app
        .request(post(Some(&token), &spending("AB1", "Martin", "10")))
        .await;
    early.assert_retry_later("5", "authentication is not available yet; retry later");
    assert_eq!(app.stored_count().await, 0);
    let ready = app.get("/health/ready").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert_eq!(
        ready.errors("authentication"),
        ["the token signing keys (JWKS) are not loaded yet"]
    );

    server.failing.store(false, Ordering::SeqCst);
    eventually(
        "the JWKS to load after the issuer recovers",
        Duration::from_secs(20),
        || {
            let app = &app;
            let token = &token;
            async move {
                let response = app
                    .request(post(Some(token), &spending("AB1", "Martin", "10")))
                    .await;
                if response.status == StatusCode::CREATED {
                    let ready = app.get("/health/ready").await;
                    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
                    Ok(())
                } else {
                    Err(format!("{} {}", response.status, response.text))
                }
            }
        },
    )
    .await;
}

/// A log sink for one test: everything the api logs, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

// A current-thread runtime (the default of #[tokio::test]): the whole
// request runs on this thread, under this thread's subscriber.
#[tokio::test]
async fn tokens_never_reach_the_log() {
    let key = TestKey::es256("k1");
    let impostor = TestKey::es256("k1");
    let app = authenticated_app(&key).await;
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let valid = key.sign(&claims("alice"));
    let forged = impostor.sign(&claims("alice"));
    let expired = key.sign(&with(claims("alice"), "exp", json!(now() - 600)));
    let garbage = "s3cr3t-n0t-a-jwt".to_owned();
    for token in [&valid, &forged, &expired, &garbage] {
        let _ = app
            .request(post(Some(token), &spending("AB1", "Martin", "10")))
            .await;
        let _ = app.request(get(Some(token), "/api/v1/spending/AB1")).await;
    }
    let log = captured.text();
    assert!(
        log.contains("bearer token refused"),
        "the refusals are logged:\n{log}"
    );
    assert!(log.contains("bad signature"), "with their reason:\n{log}");
    for token in [&valid, &forged, &expired, &garbage] {
        for (i, part) in token.split('.').enumerate() {
            // The header (alg, kid) may be logged decoded, never as is.
            assert!(
                part.len() < 8 || !log.contains(part),
                "part {i} of a token is in the log:\n{log}"
            );
        }
    }
}

#[tokio::test]
async fn the_document_declares_bearer_auth_on_exactly_the_operations_that_need_it() {
    let key = TestKey::es256("k1");
    let app = authenticated_app(&key).await;
    let document = app.get("/api/v1/openapi.json").await.json;
    let scheme = &document["components"]["securitySchemes"]["bearerAuth"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            let uri = path.replace("{identity}", "AB1");
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from(spending("AB1", "Martin", "10")))
                .expect("a request");
            let response = app.request(request).await;
            let declared = operation.get("security").is_some();
            assert_eq!(
                response.status == StatusCode::UNAUTHORIZED,
                declared,
                "{method} {path}: answered {} without a token; security declared: {declared}",
                response.status
            );
            if declared {
                assert_eq!(
                    operation["security"],
                    json!([{"bearerAuth": []}, {}]),
                    "optional: loopback deployments have no authentication"
                );
                assert!(operation["responses"]["401"].is_object(), "{method} {path}");
                assert!(operation["responses"]["429"].is_object(), "{method} {path}");
            }
        }
    }
}
