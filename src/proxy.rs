//! Passthrough: every request that is not a streamed upload goes to `upstream.base_url` + its path
//! and query, streamed both ways, with hop-by-hop headers removed and the answer returned as is.

use http::{HeaderMap, HeaderName, Request, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::{
    body::Body,
    error::GatewayError,
    upstream::{CallError, Upstream},
};

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names present costs less than eight removals.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Forwards `req` and returns the upstream's answer, or the gateway's error when there is none.
pub async fn forward(upstream: &Upstream, req: Request<Incoming>) -> Result<Response<Body>, GatewayError> {
    let (mut parts, incoming) = req.into_parts();
    parts.uri = upstream.forward_uri(&parts.uri);
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The client sets Host from the URI.
    parts.headers.remove(header::HOST);
    let req = Request::from_parts(parts, incoming.map_err(Into::into).boxed());
    let response = upstream.send(req).await.map_err(|err| match err {
        CallError::NotSent(e) | CallError::Broken(e) | CallError::BadAnswer(e) => GatewayError::UpstreamUnavailable(e),
        CallError::Timeout(d) => GatewayError::UpstreamTimeout(format!("{d:?}")),
        CallError::RateLimited(wait) => GatewayError::RateLimited { retry_after: wait },
        CallError::Tls(e) => GatewayError::UpstreamTls(e),
    })?;
    let (mut parts, incoming) = response.into_parts();
    crate::telemetry::passthrough(parts.status);
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, incoming.map_err(Into::into).boxed()))
}
