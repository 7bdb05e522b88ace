//! `GET /openapi.json`: the contract's OpenAPI document.
//!
//! `openapi.json` beside `Cargo.toml` is `docs/metrics-openapi.yaml` (the contract,
//! `metrics-openapi.yaml`) in JSON, plus what `agentos-compat.md` adds: the `user_id` parameter
//! of `GET /metrics`, `POST /metrics/refresh` and `GET /metrics/refresh/status` with their
//! schemas. It is embedded and served as is; the integration tests compare the served document
//! with the YAML (the additions taken out) and with the handlers, so they cannot drift.

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
