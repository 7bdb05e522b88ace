//! Bearer-key authentication of API requests (`metrics-api.md`, Authentication).
//!
//! The key is compared in constant time (`subtle`): how long a wrong guess takes says nothing
//! about how much of it matched. Only the length of the key can show, as with any comparison
//! that does not hash first.

use actix_web::HttpRequest;
use actix_web::http::header;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The detail of a request without a bearer token.
pub const MISSING: &str = "Authorization header required";
/// The detail of a request with the wrong token.
pub const INVALID: &str = "Invalid authentication token";

/// Checks the request's `Authorization: Bearer <key>` against `key`; with no key, every request
/// passes.
///
/// # Errors
///
/// [`ApiError::Unauthenticated`] when the header is missing, not a bearer token, or the wrong
/// key.
pub fn authenticate(request: &HttpRequest, key: Option<&SecretString>) -> Result<(), ApiError> {
    let Some(key) = key else {
        return Ok(());
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthenticated(MISSING))?;
    if bool::from(token.as_bytes().ct_eq(key.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthenticated(INVALID))
    }
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110, 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim_start();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
