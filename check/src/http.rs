//! The HTTP client: hyper with rustls on the aws-lc-rs provider, the TLS
//! stack the AWS SDK already compiles (see docs/CHECK.md for why not
//! reqwest's rustls features). `https://` URLs are verified against the
//! system's root certificates (`SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use obt_runtime::error_chain;

/// A bearer token: never shown by `Debug`, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Why the client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--api-url {url:?} is not an http:// or https:// URL with a host ({detail})")]
    Url { url: String, detail: String },
    #[error(
        "no root certificates found for https ({0}): install the ca-certificates package or set SSL_CERT_FILE"
    )]
    RootCertificates(std::io::Error),
    #[error("the bearer token (--bearer-token or --token-file) is not a valid HTTP header value")]
    Token,
}

/// Why a request got no HTTP answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// An HTTP answer, body read.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as text, cut to `max` characters, for messages.
    pub fn excerpt(&self, max: usize) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut cut: String = text.chars().take(max).collect();
        if cut.len() < text.len() {
            cut.push_str("...");
        }
        cut
    }

    /// `Retry-After` in seconds (the HTTP-date form is not used by the api).
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(http::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }
}

/// A client of one api.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Http {
    /// A client for the api at `base_url` (`http://` or `https://`, with an
    /// optional path prefix), each request bounded by `timeout`.
    pub fn new(
        base_url: &str,
        bearer: Option<&Secret>,
        timeout: Duration,
    ) -> Result<Self, SetupError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let url_error = |detail: String| SetupError::Url {
            url: base_url.to_owned(),
            detail,
        };
        let uri: Uri = base.parse().map_err(|e| url_error(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(url_error("the scheme must be http or https".to_owned())),
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(url_error("it has no host".to_owned()));
        }
        if uri.query().is_some() {
            return Err(url_error("it must not have a query".to_owned()));
        }
        let client = obt_runtime::https_client(https).map_err(SetupError::RootCertificates)?;
        let authorization = bearer
            .map(|token| {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| SetupError::Token)?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        Ok(Self {
            client,
            base,
            authorization,
            timeout,
        })
    }

    /// Whether requests carry a bearer token.
    pub fn has_token(&self) -> bool {
        self.authorization.is_some()
    }

    /// The api's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET {base}{path}`.
    pub async fn get(&self, path: &str) -> Result<Answer, TransportError> {
        self.send(Method::GET, path, &[], None).await
    }

    /// `POST {base}{path}` with a JSON body and extra headers.
    pub async fn post_json(
        &self,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        self.send(Method::POST, path, headers, Some(body)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Option<Bytes>,
    ) -> Result<Answer, TransportError> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("obt-check/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| TransportError::Failed(format!("building the request: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| TransportError::Failed(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| {
                    TransportError::Failed(format!("reading the answer: {}", error_chain(&e)))
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(TransportError::Timeout(self.timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let t = Duration::from_secs(1);
        assert!(Http::new("http://127.0.0.1:8081", None, t).is_ok());
        assert!(Http::new("https://api.example.com/prefix/", None, t).is_ok());
        for bad in [
            "127.0.0.1:8081",
            "ftp://x",
            "http://",
            "not a url",
            "http://h/?q=1",
        ] {
            assert!(
                matches!(Http::new(bad, None, t), Err(SetupError::Url { .. })),
                "{bad}"
            );
        }
    }

    /// A server that answers each request with its Authorization header.
    async fn echo_authorization() -> String {
        use axum::http::HeaderMap;
        let router = axum::Router::new().route(
            "/echo",
            axum::routing::get(|headers: HeaderMap| async move {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("(none)")
                    .to_owned()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn the_token_is_sent_as_a_bearer_authorization() {
        let base = echo_authorization().await;
        let t = Duration::from_secs(5);
        let token: Secret = "abc.def.ghi".parse().expect("infallible");
        let with = Http::new(&base, Some(&token), t).expect("a client");
        assert!(with.has_token());
        let answer = with.get("/echo").await.expect("an answer");
        assert_eq!(answer.body, "Bearer abc.def.ghi");
        let without = Http::new(&base, None, t).expect("a client");
        let answer = without.get("/echo").await.expect("an answer");
        assert_eq!(answer.body, "(none)");
        let bad: Secret = "line\nbreak".parse().expect("infallible");
        assert!(matches!(
            Http::new(&base, Some(&bad), t),
            Err(SetupError::Token)
        ));
    }

    #[test]
    fn the_token_is_never_shown() {
        let token: Secret = "s3cret-token".parse().expect("infallible");
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
