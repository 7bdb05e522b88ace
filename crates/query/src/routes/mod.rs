//! The public API's resources, one module each with its request and response types, and the
//! fallbacks that keep every error in the contract's shape.

use actix_web::HttpResponse;

use crate::error::ApiError;

pub mod dashboard;
pub mod metrics;
pub mod openapi;
pub mod refresh;

/// Any path the API does not serve: 404 `NOT_FOUND`.
///
/// # Errors
///
/// Always [`ApiError::NotFound`].
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(not_found_error())
}

/// The error of a path nobody serves.
pub fn not_found_error() -> ApiError {
    ApiError::NotFound("Not found".to_owned())
}

/// A `GET` path asked with another method: 405 with `Allow: GET`.
///
/// # Errors
///
/// Always [`ApiError::MethodNotAllowed`].
pub async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "GET" })
}

/// A `POST` path asked with another method: 405 with `Allow: POST`.
///
/// # Errors
///
/// Always [`ApiError::MethodNotAllowed`].
pub async fn post_only() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "POST" })
}
