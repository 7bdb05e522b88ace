//! Authentication and authorisation of API requests: the bearer security key
//! (`metrics-api.md`, Authentication) and JWTs with scopes (`agentos-compat.md`).
//!
//! The key is compared in constant time (`subtle`): how long a wrong guess takes says nothing
//! about how much of it matched. Only the length of the key can show, as with any comparison
//! that does not hash first. A bearer token that is not the key is verified as a JWT when JWTs
//! are configured ([`crate::jwt`]).

use actix_web::HttpRequest;
use actix_web::http::header;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::jwt::JwtVerifier;

/// The detail of a request without a bearer token.
pub const MISSING: &str = "Authorization header required";
/// The detail of a request with the wrong token.
pub const INVALID: &str = "Invalid authentication token";

/// What a route needs the caller to be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `metrics:read`: `GET /metrics`, `GET /metrics/refresh/status`.
    Read,
    /// `metrics:write`: `POST /metrics/refresh`.
    Write,
}

impl Scope {
    /// The scope's name in a token.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "metrics:read",
            Scope::Write => "metrics:write",
        }
    }
}

/// Whose rows an authorised caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Any user's, or all users': the security key, an admin token, or an open API.
    Unrestricted,
    /// Only this user's: a token without `agent_os:admin`.
    User(String),
}

impl Caller {
    /// The user whose rows a request reads: the caller's own when restricted, whatever it asked
    /// for; else the one it asked for (`None`: all users).
    pub fn user_to_read(&self, asked: Option<String>) -> Option<String> {
        match self {
            Caller::Unrestricted => asked,
            Caller::User(user) => Some(user.clone()),
        }
    }
}

/// Checks the request's `Authorization: Bearer <token>`: the security key `key`, or a JWT that
/// `jwt` verifies granting `scope`; with neither configured, every request passes.
///
/// # Errors
///
/// [`ApiError::Unauthenticated`] when the header is missing, not a bearer token, neither the key
/// nor a valid JWT; [`ApiError::Forbidden`] for a valid JWT without the scope (or, not being
/// admin, without a user).
pub fn authorize(
    request: &HttpRequest,
    key: Option<&SecretString>,
    jwt: Option<&JwtVerifier>,
    scope: Scope,
) -> Result<Caller, ApiError> {
    if key.is_none() && jwt.is_none() {
        return Ok(Caller::Unrestricted);
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .ok_or(ApiError::Unauthenticated(MISSING))?;
    if let Some(key) = key
        && bool::from(token.as_bytes().ct_eq(key.expose_secret().as_bytes()))
    {
        return Ok(Caller::Unrestricted);
    }
    let Some(jwt) = jwt else {
        return Err(ApiError::Unauthenticated(INVALID));
    };
    let claims = jwt
        .verify(token)
        .map_err(|err| ApiError::Unauthenticated(err.detail()))?;
    if claims.is_admin() {
        return Ok(Caller::Unrestricted);
    }
    match claims.user {
        Some(user) if claims.grants(scope.as_str()) => Ok(Caller::User(user)),
        _ => Err(ApiError::Forbidden),
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
