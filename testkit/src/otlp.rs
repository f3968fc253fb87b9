//! A stand-in for an OpenTelemetry collector: an OTLP/HTTP receiver on a
//! loopback port that keeps every request it gets (path and body), so that
//! a test can check what a binary exported with `OTEL_EXPORTER_OTLP_ENDPOINT`
//! pointed at [`OtlpReceiver::url`]. It answers 200 with an empty
//! `ExportTraceServiceResponse` (an empty protobuf message).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Export {
    pub path: String,
    pub body: Vec<u8>,
}

/// A running receiver; stopped when dropped.
pub struct OtlpReceiver {
    /// The base URL: the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub url: String,
    received: Arc<Mutex<Vec<Export>>>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("the receiver's address")
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .fallback(keep)
            .with_state(Arc::clone(&received));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            received,
            server,
        }
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Export> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn keep(
    State(received): State<Arc<Mutex<Vec<Export>>>>,
    uri: Uri,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1]) {
    received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Export {
            path: uri.path().to_owned(),
            body: body.to_vec(),
        });
    (StatusCode::OK, [("content-type", "application/x-protobuf")])
}
