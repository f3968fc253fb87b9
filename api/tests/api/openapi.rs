//! The OpenAPI document served at `GET /api/v1/openapi.json` is hand
//! written; these tests keep it truthful: it parses as OpenAPI 3.1, it
//! names exactly the routes of the router (read from `src/startup.rs`),
//! each documented operation is served and each undocumented method on a
//! documented path is refused, and its example is accepted.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

/// `(method, path)` of every `.route("path", method(..))` in the router's
/// source, so that a route added there without a word in the document
/// fails this test.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = include_str!("../../src/startup.rs");
    let mut routes = BTreeSet::new();
    for piece in source.split(".route(\"").skip(1) {
        let (path, rest) = piece.split_once('"').expect("a quoted path");
        let rest = rest.trim_start_matches(',').trim_start();
        let method = rest.split('(').next().expect("a method router");
        for method in method.split('.') {
            routes.insert((method.trim().to_uppercase(), path.to_owned()));
        }
    }
    routes
}

fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut routes = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

async fn served(app: &TestApp) -> Value {
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.text, obt_api::routes::openapi::DOCUMENT);
    assert!(response.json.is_object(), "the document parses as JSON");
    response.json
}

#[tokio::test]
async fn the_served_document_names_exactly_the_routes_of_the_router() {
    let app = TestApp::new().await;
    let document = served(&app).await;
    assert_eq!(document["openapi"], "3.1.0");
    let routes = router_routes();
    assert_eq!(routes.len(), 5, "the parse of startup.rs found {routes:?}");
    assert_eq!(documented(&document), routes);
}

#[tokio::test]
async fn every_documented_operation_is_served_and_no_other_method() {
    let app = TestApp::new().await;
    let document = served(&app).await;
    let operations = documented(&document);
    let paths: BTreeSet<&String> = operations.iter().map(|(_, path)| path).collect();
    for path in paths {
        let uri = path.replace("{identity}", "AB1");
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            let request = Request::builder()
                .method(method.clone())
                .uri(&uri)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("a request");
            let response = app.request(request).await;
            let is_documented = operations.contains(&(method.to_string(), path.clone()));
            if is_documented {
                assert!(
                    response.status != StatusCode::METHOD_NOT_ALLOWED
                        && response.errors("path").is_empty(),
                    "{method} {uri} is documented but answered {}: {}",
                    response.status,
                    response.text
                );
            } else {
                assert_eq!(
                    response.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {uri} is not documented"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_documented_example_is_recorded() {
    let app = TestApp::new().await;
    let document = served(&app).await;
    let example = &document["paths"]["/api/v1/spending"]["post"]["requestBody"]["content"]["application/json"]
        ["example"];
    let response = app.post_json(&example.to_string()).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
    let required = document["components"]["schemas"]["Recorded"]["required"]
        .as_array()
        .expect("required fields");
    let fields = response.json.as_object().expect("an object");
    assert_eq!(fields.len(), required.len());
    for field in required {
        assert!(
            fields.contains_key(field.as_str().expect("a name")),
            "{field}"
        );
    }
}
