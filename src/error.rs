//! The errors the gateway itself originates, each with its status, its UPPER_SNAKE_CASE code and
//! advice, rendered in the upstream's dialect. Upstream answers never pass through here: they go
//! back to the client verbatim.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::{
    body::{self, Body},
    envelope::Dialect,
};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("The document is larger than the {limit} bytes allowed; split it or raise the limit.")]
    PayloadTooLarge { limit: u64 },
    #[error("The document is empty; send at least one byte.")]
    EmptyDocument,
    #[error("The account id must be an integer account number or a GUID.")]
    InvalidAccountId,
    #[error("No bearer token: send `Authorization: Bearer <token>`; it is forwarded upstream.")]
    MissingToken,
    #[error("The Content-Digest header is not a valid RFC 9530 `sha-256=:<base64>:` value.")]
    BadContentDigest,
    #[error(
        "The document's SHA-256 ({actual}) differs from the Content-Digest sent ({expected}); nothing was committed."
    )]
    DigestMismatch { expected: String, actual: String },
    #[error(
        "The upstream's checksum ({upstream}) differs from the bytes sent ({actual}); nothing was committed. Send the document again."
    )]
    UpstreamChecksumMismatch { upstream: String, actual: String },
    #[error("The upstream could not be reached: {0}. Try again later.")]
    UpstreamUnavailable(String),
    #[error("The upstream did not answer in time ({0}). Try again later.")]
    UpstreamTimeout(String),
    #[error("The upstream's answer could not be understood: {0}.")]
    UpstreamBadResponse(String),
    #[error(
        "The upstream holds part {seq} with {held} bytes where {sent} were sent; the upload cannot be completed. Send the document again."
    )]
    UpstreamPartConflict { seq: u32, held: u64, sent: u64 },
    #[error("The account's API rate limit is exhausted; retry after the time given in Retry-After.")]
    RateLimited { retry_after: Duration },
    #[error("The client sent no body bytes for {0:?}; the upload was abandoned.")]
    ClientBodyTimeout(Duration),
    #[error("The client's body ended early or could not be read; the upload was abandoned.")]
    ClientBodyError,
    #[error("The gateway is running as many uploads as it allows; retry after the time given in Retry-After.")]
    GatewayBusy { retry_after: Duration },
    #[error("The gateway is shutting down; retry against another instance or shortly.")]
    ShuttingDown,
    #[error("The gateway could not forward the request: {0}.")]
    BadRequest(String),
    #[error("The request target was refused: {0}.")]
    InvalidPath(&'static str),
    #[error("The caller presented no valid key in the gateway's caller-key header.")]
    CallerUnauthorized,
    #[error("This gateway is not configured to serve that account.")]
    AccountNotAllowed,
    #[error("The upstream's TLS certificate could not be verified: {0}.")]
    UpstreamTls(String),
    #[error("The request's head (request line and headers) is larger than the {limit} bytes allowed.")]
    HeadersTooLarge { limit: usize },
}

// === impl GatewayError ===

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EmptyDocument | InvalidAccountId | BadContentDigest | BadRequest(_) | ClientBodyError | InvalidPath(_) => {
                StatusCode::BAD_REQUEST
            }
            MissingToken | CallerUnauthorized => StatusCode::UNAUTHORIZED,
            AccountNotAllowed => StatusCode::FORBIDDEN,
            DigestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            UpstreamChecksumMismatch { .. }
            | UpstreamBadResponse(_)
            | UpstreamPartConflict { .. }
            | UpstreamUnavailable(_)
            | UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayBusy { .. } | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            EmptyDocument => "EMPTY_DOCUMENT",
            InvalidAccountId => "INVALID_ACCOUNT_ID",
            MissingToken => "MISSING_TOKEN",
            BadContentDigest => "BAD_CONTENT_DIGEST",
            DigestMismatch { .. } => "DIGEST_MISMATCH",
            UpstreamChecksumMismatch { .. } => "UPSTREAM_CHECKSUM_MISMATCH",
            UpstreamUnavailable(_) => "UPSTREAM_UNAVAILABLE",
            UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            UpstreamBadResponse(_) => "UPSTREAM_BAD_RESPONSE",
            UpstreamPartConflict { .. } => "UPSTREAM_PART_CONFLICT",
            RateLimited { .. } => "RATE_LIMITED",
            ClientBodyTimeout(_) => "CLIENT_BODY_TIMEOUT",
            ClientBodyError => "CLIENT_BODY_ERROR",
            GatewayBusy { .. } => "GATEWAY_BUSY",
            ShuttingDown => "SHUTTING_DOWN",
            BadRequest(_) => "BAD_REQUEST",
            InvalidPath(_) => "INVALID_PATH",
            CallerUnauthorized => "CALLER_UNAUTHORIZED",
            AccountNotAllowed => "ACCOUNT_NOT_ALLOWED",
            UpstreamTls(_) => "UPSTREAM_TLS",
            HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after } | GatewayError::GatewayBusy { retry_after } => Some(*retry_after),
            GatewayError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The answer to the client. `accepted` names the parts the upstream had accepted when an
    /// upload ended early.
    pub fn response(&self, dialect: Dialect, accepted: Option<&[u32]>) -> Response<Body> {
        let mut message = self.to_string();
        if let Some(parts) = accepted {
            message.push_str(&format!(" The upstream had accepted parts [{}]; the upload was deleted.", join(parts)));
        }
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body::full(dialect.error(self.code(), &message)))
            .expect("valid response");
        let headers = response.headers_mut();
        if let Some(after) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs_f64().ceil().max(1.0) as u64));
        }
        if let Some(parts) = accepted {
            if let Ok(v) = HeaderValue::from_str(&join(parts)) {
                headers.insert("x-chunkgate-parts-accepted", v);
            }
        }
        response
    }
}

fn join(parts: &[u32]) -> String {
    parts.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
