//! `GET /openapi.json`: the contract's OpenAPI document.
//!
//! `openapi.json` beside `Cargo.toml` is `docs/metrics-openapi.yaml` (the contract,
//! `metrics-openapi.yaml`) in JSON. It is embedded and served as is; the integration tests
//! compare the served document with the YAML so the two cannot drift.

use actix_web::HttpResponse;
use actix_web::http::header::ContentType;

/// The OpenAPI document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// `GET /openapi.json`.
pub async fn get_openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(DOCUMENT)
}
