//! The errors the gateway itself originates, each with its status, its UPPER_SNAKE_CASE code and
//! advice, rendered in the upstream's dialect. Upstream answers in the dialect's shape never pass
//! through here: they go back to the client verbatim.
//!
//! The `Display` text is what the client reads; it never carries transport detail (hyper's error
//! chains, addresses). That detail sits in the variant's field and goes to the log only
//! ([`GatewayError::detail`]).

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::{
    body::{self, Body},
    config::Dialect,
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
    #[error(
        "The upstream reports {what} where the gateway sent {sent}; nothing was committed. Send the document again."
    )]
    UpstreamSizeMismatch { what: String, sent: String },
    #[error(
        "The upstream's answer carries no checksum and upload.require_upstream_checksum is set; nothing was committed."
    )]
    UpstreamChecksumMissing,
    /// The detail (hyper's error chain) is for the log only.
    #[error("The upstream could not be reached or dropped the connection. Try again later.")]
    UpstreamUnavailable(String),
    /// A passthrough request of a method that is not idempotent, sent whole, whose connection
    /// broke before the answer: the upstream may have acted on it.
    #[error(
        "The connection to the upstream broke after the request was sent: it may have been applied. Check before sending it again."
    )]
    UpstreamBrokeAfterSending(String),
    #[error("The upstream answered {0} to every attempt. Try again later.")]
    UpstreamFailing(StatusCode),
    #[error("The upstream did not answer in time. Try again later.")]
    UpstreamTimeout(Duration),
    /// The detail (what could not be understood) is for the log only.
    #[error("The upstream's answer could not be understood.")]
    UpstreamBadResponse(String),
    /// An answer that is not in the upstream's error shape (an HTML page from its front end).
    #[error("The upstream refused the call with {0} and a page the gateway cannot pass on as an API error.")]
    UpstreamRefused(StatusCode),
    #[error(
        "The upstream holds part {seq} with {held} bytes where {sent} were sent; the upload cannot be completed. Send the document again."
    )]
    UpstreamPartConflict { seq: u32, held: u64, sent: u64 },
    /// Create answered, but its answer cannot be read: an upload was probably made that the
    /// gateway cannot name. The detail is for the log only.
    #[error(
        "The upstream's answer to the create could not be understood; an upload it may hold cannot be named or deleted by the gateway and counts against the member's quota until it expires (20 minutes). Send the document again."
    )]
    CreatedUnreadable(String),
    /// What happened to the create (a status, no answer, a timeout): words, never transport detail.
    #[error(
        "The outcome of the create is unknown ({0}): the upstream may have made an upload. It was not sent again, so at most one such upload exists; the gateway cannot name or delete it (the API cannot list uploads), and it counts against the member's quota until it expires (20 minutes). Send the document again."
    )]
    UploadOutcomeUnknown(String),
    /// The upstream gave the upload too little time to live to be finished.
    #[error(
        "The upstream gave the upload {0} s to live, less than the gateway needs to finish it; nothing was committed. Send the document again."
    )]
    UploadExpiring(u64),
    #[error("The account's API rate limit is exhausted; retry after the time given in Retry-After.")]
    RateLimited { retry_after: Duration },
    #[error("The client sent no body bytes for {0:?}.")]
    ClientBodyTimeout(Duration),
    #[error("The client's body did not end before the upload's deadline ({0:?} after it began).")]
    ClientBodyDeadline(Duration),
    #[error("The client's body ended early, or was cut off, or could not be read.")]
    ClientBodyError,
    /// Never heard by anyone: the client left before the answer. In logs and metrics only.
    #[error("The client went away before the upload could be committed.")]
    ClientGone,
    #[error("The gateway is running as many requests as it allows; retry after the time given in Retry-After.")]
    GatewayBusy { retry_after: Duration },
    #[error(
        "The member's upload quota (unused uploads and their bytes, committed ones included) had no room within the time allowed; use or delete committed uploads, or retry after the time given in Retry-After."
    )]
    QuotaBusy { retry_after: Duration },
    /// A tus request the protocol refuses: its status, code and message.
    #[error("{message}")]
    Tus { status: StatusCode, code: &'static str, message: String },
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
    /// The detail (the verification failure) is for the log only.
    #[error("The upstream's TLS certificate could not be verified.")]
    UpstreamTls(String),
    #[error(
        "The request's head (request line and headers) is larger than the {limit} bytes allowed, or has more than 100 header fields."
    )]
    HeadersTooLarge { limit: usize },
    #[error(
        "Transfer-Encoding {0:?} is not supported: the gateway takes `chunked` alone (RFC 9112); send the body unencoded, with Content-Length or chunked."
    )]
    UnsupportedTransferCoding(String),
    /// A bug or a task that died: the detail goes to the log, never to the client.
    #[error("The gateway failed internally; the request was not completed. Try again.")]
    Internal(String),
}

/// How an upload that ended early was left upstream, for the client's answer.
#[derive(Clone, Copy, Debug)]
pub struct Cleanup<'a> {
    /// Parts the upstream had acknowledged.
    pub accepted: &'a [u32],
    pub deletion: Deletion,
    /// The upload's `expirationDateTime` as the upstream announced it (empty if it did not).
    pub expires: &'a str,
}

/// What became of the upstream upload after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// The account is paused by its rate limit: the delete waits for it in the background.
    Deferred,
    /// The delete failed: the upload may remain until it expires.
    Failed,
}

// === impl GatewayError ===

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            EmptyDocument | InvalidAccountId | BadContentDigest | BadRequest(_) | ClientBodyError | ClientGone
            | InvalidPath(_) => StatusCode::BAD_REQUEST,
            MissingToken | CallerUnauthorized => StatusCode::UNAUTHORIZED,
            AccountNotAllowed => StatusCode::FORBIDDEN,
            DigestMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            UpstreamChecksumMismatch { .. }
            | UpstreamSizeMismatch { .. }
            | UpstreamChecksumMissing
            | UpstreamBadResponse(_)
            | CreatedUnreadable(_)
            | UpstreamRefused(_)
            | UpstreamPartConflict { .. }
            | UpstreamUnavailable(_)
            | UpstreamBrokeAfterSending(_)
            | UpstreamFailing(_)
            | UploadOutcomeUnknown(_)
            | UploadExpiring(_)
            | UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ClientBodyTimeout(_) | ClientBodyDeadline(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayBusy { .. } | QuotaBusy { .. } | ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UnsupportedTransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Tus { status, .. } => *status,
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
            UpstreamSizeMismatch { .. } => "UPSTREAM_SIZE_MISMATCH",
            UpstreamChecksumMissing => "UPSTREAM_CHECKSUM_MISSING",
            UpstreamUnavailable(_) | UpstreamBrokeAfterSending(_) | UpstreamFailing(_) => "UPSTREAM_UNAVAILABLE",
            UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            UpstreamBadResponse(_) | CreatedUnreadable(_) => "UPSTREAM_BAD_RESPONSE",
            UpstreamRefused(_) => "UPSTREAM_REFUSED",
            UpstreamPartConflict { .. } => "UPSTREAM_PART_CONFLICT",
            UploadOutcomeUnknown(_) => "UPLOAD_OUTCOME_UNKNOWN",
            UploadExpiring(_) => "UPLOAD_EXPIRING",
            RateLimited { .. } => "RATE_LIMITED",
            ClientBodyTimeout(_) | ClientBodyDeadline(_) => "CLIENT_BODY_TIMEOUT",
            ClientBodyError => "CLIENT_BODY_ERROR",
            ClientGone => "CLIENT_GONE",
            GatewayBusy { .. } | QuotaBusy { .. } => "GATEWAY_BUSY",
            Tus { code, .. } => code,
            ShuttingDown => "SHUTTING_DOWN",
            BadRequest(_) => "BAD_REQUEST",
            InvalidPath(_) => "INVALID_PATH",
            CallerUnauthorized => "CALLER_UNAUTHORIZED",
            AccountNotAllowed => "ACCOUNT_NOT_ALLOWED",
            UpstreamTls(_) => "UPSTREAM_TLS",
            HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            UnsupportedTransferCoding(_) => "UNSUPPORTED_TRANSFER_CODING",
            Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// What the log gets beyond the client's message: transport detail, internal causes.
    pub fn detail(&self) -> Option<&str> {
        use GatewayError::*;
        match self {
            UpstreamUnavailable(d)
            | UpstreamBrokeAfterSending(d)
            | UpstreamBadResponse(d)
            | CreatedUnreadable(d)
            | UpstreamTls(d)
            | Internal(d) => Some(d),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after }
            | GatewayError::GatewayBusy { retry_after }
            | GatewayError::QuotaBusy { retry_after } => Some(*retry_after),
            GatewayError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The answer to the client, in the dialect's error shape.
    pub fn response(&self, dialect: Dialect) -> Response<Body> {
        self.render(dialect, self.to_string())
    }

    /// The answer for an upload that ended after create: it also says which parts the upstream
    /// had accepted and whether the upload is gone (`X-Chunkgate-Parts-Accepted`,
    /// `X-Chunkgate-Upload-Deleted`).
    pub fn response_after(&self, dialect: Dialect, cleanup: Cleanup<'_>, upload_id: &str) -> Response<Body> {
        let mut message = self.to_string();
        message.push_str(&cleanup.sentence(upload_id));
        let mut response = self.render(dialect, message);
        cleanup.stamp(response.headers_mut(), upload_id);
        response
    }

    fn render(&self, dialect: Dialect, message: String) -> Response<Body> {
        let mut response = Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body::full(dialect.error(self.code(), &message)))
            .expect("valid response");
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

// === impl Cleanup ===

impl Cleanup<'_> {
    /// The sentence appended to the client's message.
    pub fn sentence(&self, upload_id: &str) -> String {
        let parts = join(self.accepted);
        match self.deletion {
            Deletion::Deleted => {
                format!(" The upstream had accepted parts [{parts}]; the upload ({upload_id}) was deleted.")
            }
            Deletion::Deferred => format!(
                " The upstream had accepted parts [{parts}]; the upload ({upload_id}) will be deleted in the background once the rate limit (or the upstream) allows; until then, or if that fails, it may remain until it expires (20 minutes after it was created)."
            ),
            Deletion::Failed => format!(
                " The upstream had accepted parts [{parts}]; deleting the upload ({upload_id}) failed, so it may remain until it expires (20 minutes after it was created) and count against the member's quota until then."
            ),
        }
    }

    /// `X-Chunkgate-Upload-Id`, `X-Chunkgate-Parts-Accepted` and `X-Chunkgate-Upload-Deleted`.
    pub fn stamp(&self, headers: &mut http::HeaderMap, upload_id: &str) {
        if let Ok(v) = HeaderValue::from_str(upload_id) {
            headers.insert("x-chunkgate-upload-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&join(self.accepted)) {
            headers.insert("x-chunkgate-parts-accepted", v);
        }
        let deleted = match self.deletion {
            Deletion::Deleted => "true",
            Deletion::Deferred => "deferred",
            Deletion::Failed => "false",
        };
        headers.insert("x-chunkgate-upload-deleted", HeaderValue::from_static(deleted));
    }
}

fn join(parts: &[u32]) -> String {
    parts.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}
