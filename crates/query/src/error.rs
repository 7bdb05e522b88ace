//! [`ApiError`]: every error the API returns, rendered as the contract's
//! `{"detail", "error_code"}` body. Client errors carry their detail; anything else is a 500
//! with a generic detail, its cause logged once here and never sent to the client.
//!
//! [`contract_errors`] gives the errors actix-web answers by itself (an extractor's 400, a
//! payload's 413 or 415) the same body. The 400, 408 and 431 that actix-http's HTTP/1 dispatcher
//! writes before a request reaches the application (a malformed request head, a head not
//! received within the client request timeout, a head over its buffer or with too many headers)
//! are [`ApiError::MalformedHead`], [`ApiError::HeadTimeout`] and [`ApiError::HeadTooLarge`]: the
//! dispatcher builds them inline with an empty body and no hook to replace it, so the API
//! listener's connections rewrite them on their way out (`crate::http1`).

use std::borrow::Cow;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};
use metrics_service::truncated;
use serde::Serialize;

/// The error of an API request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `BAD_REQUEST`: the request is well formed but makes no sense (a reversed range).
    #[error("{0}")]
    BadRequest(String),
    /// 401 `UNAUTHENTICATED`, with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// 403 `FORBIDDEN`: a valid token without the scope the route needs.
    #[error("insufficient permissions")]
    Forbidden,
    /// 404 `NOT_FOUND`: an unknown route, database or table.
    #[error("{0}")]
    NotFound(String),
    /// 405 `METHOD_NOT_ALLOWED`: the route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The methods the route accepts, for the `Allow` header.
        allow: &'static str,
    },
    /// 422 `VALIDATION_ERROR`: a parameter that does not parse.
    #[error("{0}")]
    Validation(String),
    /// 500 `INTERNAL_SERVER_ERROR`: the database failed or did not answer in time.
    #[error("reading metrics failed")]
    Internal(#[source] anyhow::Error),
    /// 400 `BAD_REQUEST`, answered by actix-http: a request line or header that does not parse.
    #[error("malformed request head")]
    MalformedHead,
    /// 408 `REQUEST_TIMEOUT`, answered by actix-http: no whole request head within the client
    /// request timeout (the duration) of the connection's start.
    #[error("request head not received in time")]
    HeadTimeout(Duration),
    /// 431 `REQUEST_HEADER_FIELDS_TOO_LARGE`, answered by actix-http: a request head of
    /// [`MAX_HEAD_BYTES`] or more, or with more than [`MAX_HEADERS`] headers.
    #[error("request head too large")]
    HeadTooLarge,
}

/// The size from which actix-http refuses a request head that is not yet whole (its h1
/// decoder's `MAX_BUFFER_SIZE`).
pub const MAX_HEAD_BYTES: usize = 131_072;

/// The most headers actix-http parses in a request head (its h1 decoder's `MAX_HEADERS`).
pub const MAX_HEADERS: usize = 96;

/// The contract's error body.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    detail: &'a str,
    error_code: &'a str,
}

/// The detail of every 500: the cause stays in the log.
pub const INTERNAL_DETAIL: &str = "Failed to retrieve metrics";

impl ApiError {
    /// The contract's `error_code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BAD_REQUEST",
            ApiError::Unauthenticated(_) => "UNAUTHENTICATED",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::NotFound(_) => "NOT_FOUND",
            ApiError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            ApiError::Validation(_) => "VALIDATION_ERROR",
            ApiError::Internal(_) => "INTERNAL_SERVER_ERROR",
            ApiError::MalformedHead => "BAD_REQUEST",
            ApiError::HeadTimeout(_) => "REQUEST_TIMEOUT",
            ApiError::HeadTooLarge => "REQUEST_HEADER_FIELDS_TOO_LARGE",
        }
    }

    /// The contract's body of this error, as it is sent.
    pub fn to_json(&self) -> Vec<u8> {
        // Two strings always serialise.
        serde_json::to_vec(&ErrorBody {
            detail: &self.detail(),
            error_code: self.code(),
        })
        .unwrap_or_default()
    }

    fn detail(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            ApiError::BadRequest(detail)
            | ApiError::NotFound(detail)
            | ApiError::Validation(detail) => detail,
            ApiError::Unauthenticated(detail) => detail,
            ApiError::Forbidden => "Insufficient permissions",
            ApiError::MethodNotAllowed { .. } => "Method not allowed",
            ApiError::Internal(_) => INTERNAL_DETAIL,
            ApiError::MalformedHead => {
                "Malformed request: its request line or a header could not be parsed"
            }
            ApiError::HeadTimeout(timeout) => {
                return Cow::Owned(format!(
                    "The request head was not received within {} ms",
                    timeout.as_millis()
                ));
            }
            ApiError::HeadTooLarge => {
                "The request head is 128 KiB or more, or has more than 96 headers"
            }
        })
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::MalformedHead => StatusCode::BAD_REQUEST,
            ApiError::HeadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            // The one place a 500 is logged: the chain goes to operators, never to clients.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthenticated(_) => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
            }
            _ => {}
        }
        response.json(ErrorBody {
            detail: &self.detail(),
            error_code: self.code(),
        })
    }
}

/// The longest detail quoted from an error of actix-web, which may echo client input.
const DETAIL_CHARS: usize = 256;

/// Renders the errors actix-web answers by itself (extractors, payloads, anything not an
/// [`ApiError`]) as the contract's body, with their status: `BAD_REQUEST` for a 400,
/// `PAYLOAD_TOO_LARGE` for a 413, the status's name likewise for other client errors, and a
/// generic 500 (cause logged) for anything else.
///
/// Wrap it innermost: handlers' and extractors' errors reach it as responses that carry their
/// error.
///
/// # Errors
///
/// Those of the inner service, which the router never returns (it answers errors as responses).
pub async fn contract_errors(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = next.call(request).await?;
    let foreign = response
        .response()
        .error()
        .filter(|error| error.as_error::<ApiError>().is_none())
        .map(render_foreign);
    Ok(match foreign {
        Some(rendered) => response.into_response(rendered),
        None => response.map_into_boxed_body(),
    })
}

/// The contract's body for an error that is not an [`ApiError`].
fn render_foreign(error: &actix_web::Error) -> HttpResponse {
    let status = error.as_response_error().status_code();
    if !status.is_client_error() {
        return ApiError::Internal(anyhow::anyhow!("{error}")).error_response();
    }
    let code = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHENTICATED".to_owned(),
        StatusCode::UNPROCESSABLE_ENTITY => "VALIDATION_ERROR".to_owned(),
        status => status
            .canonical_reason()
            .unwrap_or("Bad Request")
            .to_uppercase()
            .replace([' ', '-'], "_"),
    };
    let detail = error.to_string();
    HttpResponse::build(status).json(ErrorBody {
        detail: &truncated(&detail, DETAIL_CHARS),
        error_code: &code,
    })
}

#[cfg(test)]
mod tests {
    use actix_web::body::MessageBody;

    use super::*;

    fn render(error: &ApiError) -> (StatusCode, String) {
        let response = error.error_response();
        let status = response.status();
        let body = response.into_body().try_into_bytes().unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn each_error_maps_to_its_status_and_code() {
        let cases = [
            (
                ApiError::BadRequest("b".into()),
                400,
                r#"{"detail":"b","error_code":"BAD_REQUEST"}"#,
            ),
            (
                ApiError::Unauthenticated("u"),
                401,
                r#"{"detail":"u","error_code":"UNAUTHENTICATED"}"#,
            ),
            (
                ApiError::Forbidden,
                403,
                r#"{"detail":"Insufficient permissions","error_code":"FORBIDDEN"}"#,
            ),
            (
                ApiError::NotFound("n".into()),
                404,
                r#"{"detail":"n","error_code":"NOT_FOUND"}"#,
            ),
            (
                ApiError::MethodNotAllowed { allow: "GET" },
                405,
                r#"{"detail":"Method not allowed","error_code":"METHOD_NOT_ALLOWED"}"#,
            ),
            (
                ApiError::Validation("v".into()),
                422,
                r#"{"detail":"v","error_code":"VALIDATION_ERROR"}"#,
            ),
            (
                ApiError::Internal(anyhow::anyhow!("password=secret in the cause")),
                500,
                r#"{"detail":"Failed to retrieve metrics","error_code":"INTERNAL_SERVER_ERROR"}"#,
            ),
            (
                ApiError::MalformedHead,
                400,
                r#"{"detail":"Malformed request: its request line or a header could not be parsed","error_code":"BAD_REQUEST"}"#,
            ),
            (
                ApiError::HeadTimeout(Duration::from_millis(5000)),
                408,
                r#"{"detail":"The request head was not received within 5000 ms","error_code":"REQUEST_TIMEOUT"}"#,
            ),
            (
                ApiError::HeadTooLarge,
                431,
                r#"{"detail":"The request head is 128 KiB or more, or has more than 96 headers","error_code":"REQUEST_HEADER_FIELDS_TOO_LARGE"}"#,
            ),
        ];
        for (error, status, body) in cases {
            assert_eq!(
                render(&error),
                (StatusCode::from_u16(status).unwrap(), body.to_owned())
            );
            assert_eq!(String::from_utf8(error.to_json()).unwrap(), body);
        }
    }
}
