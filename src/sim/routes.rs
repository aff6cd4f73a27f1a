//! The simulator's HTTP face: the five routes of the upstream API, in either dialect, and the
//! `/__sim/` control and introspection routes.

use std::{borrow::Cow, sync::Arc, sync::atomic::Ordering};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;

use super::{
    Sim,
    config::Limits,
    faults::{Action, Faults, Op},
    path::{self, Collection, Route},
    ratelimit::Announce,
    shape,
    store::Caller,
    store::Refusal,
};
use crate::body::{self, Body, BoxError, ReadError};

/// An answer before the rate-limit headers are added.
struct Reply {
    status: StatusCode,
    body: Bytes,
    /// An HTML page from the front end, not an API answer.
    html: bool,
}

impl Reply {
    fn error(sim: &Sim, status: StatusCode, code: &str, message: &str) -> Self {
        Self { status, body: shape::error(sim.config.dialect, code, message), html: false }
    }

    /// The kind of page DocuSign's front end answers with before the API sees a request (too
    /// large, throttled, failing): HTML, no error code, no rate-limit headers.
    fn front_end(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or("Error");
        let page = format!(
            "<!DOCTYPE html>\r\n<html><head><title>{code} {reason}</title></head>\r\n<body><h1>{code} {reason}</h1><p>The request could not be processed.</p></body></html>\r\n",
            code = status.as_u16()
        );
        Self { status, body: Bytes::from(page), html: true }
    }
}

impl From<(&Sim, Refusal)> for Reply {
    fn from((sim, r): (&Sim, Refusal)) -> Self {
        Reply::error(sim, r.status(), r.code(), &r.to_string())
    }
}

pub async fn handle(sim: Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let head = req.method() == Method::HEAD && req.version() == Version::HTTP_2;
    let mut response = api_or_control(&sim, req).await?;
    if head {
        body::headers_only(&mut response);
    }
    Ok(dated(&sim, response))
}

async fn api_or_control(sim: &Arc<Sim>, req: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let sim = sim.clone();
    if req.uri().path().starts_with("/__sim/") {
        return Ok(control(&sim, req).await);
    }
    sim.stats.requests.fetch_add(1, Ordering::Relaxed);
    if req.version() == http::Version::HTTP_2 {
        sim.stats.http2_requests.fetch_add(1, Ordering::Relaxed);
    }
    let uri = req.uri().clone();
    let (op, target, owner) = match accept(&sim, &req, uri.path()) {
        Ok(accepted) => accepted,
        Err(refused) => return Ok(*refused),
    };
    let limits = sim.config.limits_for(target.account);
    let now = sim.now();
    let (exceeded, announce) = sim.rates.admit(target.account, &limits, now);
    if let Some(ex) = exceeded {
        sim.stats.throttled.fetch_add(1, Ordering::Relaxed);
        return Ok(reply(Reply::error(&sim, throttle_status(&sim), ex.code(), &ex.message(&limits)), Some(announce)));
    }
    let (delay, action) = sim.faults.decide(op);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(faulty) = injected(&sim, action, &limits, announce) {
        return Ok(faulty);
    }
    let answer = api(&sim, op, target, &owner, req, now, action == Action::Corrupt).await;
    if action == Action::DropAfterStore {
        sim.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return Err("simulated fault: request applied, connection dropped unanswered".into());
    }
    Ok(reply(answer, Some(announce)))
}

/// What the request is: its operation, its route and the member behind its token; or the answer
/// that refuses it before the API looks at it (no such route or method, a bad account, no token,
/// and the front end's own refusals).
fn accept<'p>(
    sim: &Sim,
    req: &Request<Incoming>,
    path: &'p str,
) -> Result<(Op, Route<'p>, String), Box<Response<Body>>> {
    let refuse = |status, code, message| Box::new(reply(Reply::error(sim, status, code, message), None));
    let served = path::api(path, &sim.config.path_prefix)
        .filter(|t| t.collection == Collection::ChunkedUploads || req.method() == Method::POST);
    let Some(target) = served else {
        let message = "The simulator serves only the chunked-upload routes and envelope creation.";
        return Err(refuse(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND", message));
    };
    let commit = path::query_has(req.uri().query(), "action", "commit");
    let op = match (req.method(), target.collection, target.upload, target.part) {
        (&Method::POST, Collection::Envelopes, None, None) => Op::Envelope,
        (&Method::POST, Collection::ChunkedUploads, None, None) => Op::Create,
        (&Method::GET, Collection::ChunkedUploads, Some(_), None) => Op::Get,
        (&Method::PUT, Collection::ChunkedUploads, Some(_), None) if commit => Op::Commit,
        (&Method::PUT, Collection::ChunkedUploads, Some(_), Some(_)) => Op::AddPart,
        (&Method::DELETE, Collection::ChunkedUploads, Some(_), None) => Op::Delete,
        _ => {
            let message = "This method is not allowed on this resource.";
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", message));
        }
    };
    if !path::valid_account(target.account) {
        let message = "The account id must be an integer or a GUID.";
        return Err(refuse(StatusCode::BAD_REQUEST, "INVALID_ACCOUNT_ID", message));
    }
    let Some(owner) = bearer(req.headers(), &sim.config.tokens) else {
        let message = "One or both of Username and Password are invalid. Invalid access token.";
        return Err(refuse(StatusCode::UNAUTHORIZED, "USER_AUTHENTICATION_FAILED", message));
    };
    // DocuSign's IIS front end refuses a length-less PUT before the API ever sees it...
    if op == Op::Commit && sim.config.require_commit_length && lacks_length(req) {
        return Err(Box::new(length_required()));
    }
    // ...and a request over its size cap.
    if declared_length(req).is_some_and(|n| n > sim.config.max_request_bytes) {
        return Err(Box::new(reply(Reply::front_end(StatusCode::PAYLOAD_TOO_LARGE), None)));
    }
    Ok((op, target, owner))
}

/// The answer of an injected throttling or server error, if `action` is one.
fn injected(sim: &Sim, action: Action, limits: &Limits, announce: Announce) -> Option<Response<Body>> {
    let html = sim.faults.html_errors();
    let faulty = match action {
        Action::Throttle => {
            sim.stats.throttled.fetch_add(1, Ordering::Relaxed);
            if html {
                return Some(reply(Reply::front_end(StatusCode::TOO_MANY_REQUESTS), None));
            }
            let ex = super::ratelimit::Exceeded::Burst;
            Reply::error(sim, throttle_status(sim), ex.code(), &ex.message(limits))
        }
        Action::Error(status) => {
            sim.stats.injected_errors.fetch_add(1, Ordering::Relaxed);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            if html {
                return Some(reply(Reply::front_end(status), None));
            }
            Reply::error(sim, status, "UNSPECIFIED_ERROR", "An injected server error (simulator fault).")
        }
        Action::None | Action::DropAfterStore | Action::Corrupt => return None,
    };
    Some(reply(faulty, Some(announce)))
}

/// The five operations, after routing, auth and rate limits.
async fn api(sim: &Sim, op: Op, t: Route<'_>, owner: &str, req: Request<Incoming>, now: i64, corrupt: bool) -> Reply {
    let limits = sim.config.limits_for(t.account);
    let id = t.upload.unwrap_or_default();
    let caller = Caller { account: t.account, owner, now };
    let result = match op {
        Op::Create | Op::AddPart => {
            let seq = match t.part.map(path::sequence) {
                Some(None) => {
                    return Reply::error(
                        sim,
                        StatusCode::BAD_REQUEST,
                        "INVALID_PART_SEQUENCE",
                        "The part sequence must be a non-negative integer.",
                    );
                }
                Some(Some(seq)) => Some(seq),
                None => None,
            };
            let data = match part_data(sim, req, limits.max_request_data).await {
                Ok(data) if corrupt && !data.is_empty() => {
                    let mut bad = data.to_vec();
                    bad[0] ^= 0xff;
                    Bytes::from(bad)
                }
                Ok(data) => data,
                Err(answer) => return answer,
            };
            match seq {
                None => sim.store.create(caller, data, &limits).map(|r| (StatusCode::CREATED, r)),
                Some(seq) => sim.store.add_part(caller, id, seq, data, limits.quota_bytes).map(|r| (StatusCode::OK, r)),
            }
        }
        Op::Get => {
            let checksum = path::query_has(req.uri().query(), "include", "checksum") && !sim.faults.omit_checksum();
            sim.store.resource(caller, id, checksum).map(|r| (StatusCode::OK, r))
        }
        Op::Commit => sim.store.commit(caller, id).map(|r| (StatusCode::OK, r)),
        Op::Delete => sim.store.delete(caller, id).map(|r| (StatusCode::OK, r)),
        Op::Envelope => return envelope(sim, caller, req).await,
    };
    match result {
        Ok((status, resource)) => Reply { status, body: shape::success(sim.config.dialect, &resource), html: false },
        Err(refusal) => (sim, refusal).into(),
    }
}

/// The part of an envelope definition the simulator reads: its status and its documents' remote
/// URLs. Everything else is accepted and ignored.
#[derive(Deserialize)]
struct EnvelopeDefinition {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    documents: Vec<EnvelopeDocument>,
}

#[derive(Deserialize)]
struct EnvelopeDocument {
    #[serde(default, rename = "remoteUrl")]
    remote_url: Option<String>,
}

const CHUNKED_UPLOAD_SCHEME: &str = "docusignchunkedupload://";

/// `POST .../envelopes`: uses every upload its documents name by `remoteUrl`, all or none, and
/// answers 201 with the new envelope. No other envelope semantics are simulated.
async fn envelope(sim: &Sim, caller: Caller<'_>, req: Request<Incoming>) -> Reply {
    let bad = |what: &str| {
        let message = format!("The request body is missing or improperly formatted: {what}.");
        Reply::error(sim, StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", &message)
    };
    let cap = usize::try_from(sim.config.max_request_bytes).unwrap_or(usize::MAX);
    let raw = match body::read_limited(req.into_body(), cap).await {
        Ok(raw) => raw,
        Err(ReadError::TooLarge { .. }) => return Reply::front_end(StatusCode::PAYLOAD_TOO_LARGE),
        Err(ReadError::Io(_)) => return bad("it could not be read"),
    };
    let Ok(definition) = serde_json::from_slice::<EnvelopeDefinition>(&raw) else {
        return bad("not an envelope definition");
    };
    let ids: Vec<String> = definition
        .documents
        .iter()
        .filter_map(|d| d.remote_url.as_deref()?.strip_prefix(CHUNKED_UPLOAD_SCHEME))
        .map(str::to_owned)
        .collect();
    if let Err(refusal) = sim.store.use_uploads(caller, &ids) {
        return (sim, refusal).into();
    }
    let envelope_id = uuid::Uuid::from_u128(fastrand::u128(..)).hyphenated().to_string();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(caller.now.max(0) as u64);
    let summary = json!({
        "envelopeId": envelope_id,
        "uri": format!("/envelopes/{envelope_id}"),
        "statusDateTime": humantime::format_rfc3339_millis(at).to_string(),
        "status": definition.status.as_deref().unwrap_or("created"),
    });
    Reply { status: StatusCode::CREATED, body: shape::success(sim.config.dialect, &summary), html: false }
}

#[derive(Deserialize)]
struct PartRequest<'a> {
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

/// The decoded `data` of a create or add-part body.
async fn part_data(sim: &Sim, req: Request<Incoming>, max_data: u64) -> Result<Bytes, Reply> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        let message = "Parts must be sent as application/json.";
        return Err(Reply::error(sim, StatusCode::UNSUPPORTED_MEDIA_TYPE, "INVALID_CONTENT_TYPE", message));
    }
    let mut raw = read_part_body(sim, req, max_data).await?;
    if let Some(len) = decode_compact(&mut raw) {
        // The decoded bytes sit at the start of the data string; the buffer returns to the pool
        // when the store lets go of them (in memory storage, a kept part holds its whole body
        // buffer, 4/3 of its size: the simulator's own memory, for tests and demos).
        let at = COMPACT_HEAD.len();
        return Ok(sim.buffers.lend(raw).slice(at..at + len));
    }
    let bad = |what: &str| {
        let message = format!("The request body is missing or improperly formatted: {what}.");
        Reply::error(sim, StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", &message)
    };
    let parsed: PartRequest = serde_json::from_slice(&raw).map_err(|_| bad("not a JSON object with a data string"))?;
    let encoded = parsed.data.ok_or_else(|| bad("no data"))?;
    // base64-simd, strict standard padded alphabet: about 4x the `base64` crate's decode speed.
    let decoded = base64_simd::STANDARD
        .decode_to_vec(encoded.as_bytes())
        .map_err(|_| bad("data is not standard padded base64"))?;
    Ok(Bytes::from(decoded))
}

/// A part's request body, read whole into a reused buffer: refused by the front end over its cap,
/// by the API over `max_data` bytes of data.
async fn read_part_body(sim: &Sim, req: Request<Incoming>, max_data: u64) -> Result<Vec<u8>, Reply> {
    // Base64 inflates by 4/3; leave room for the JSON around it. The front end's cap on a
    // request comes first.
    let api_limit = (max_data as usize / 3 + 1) * 4 + 64 * 1024;
    let cap = usize::try_from(sim.config.max_request_bytes).unwrap_or(usize::MAX);
    let limit = api_limit.min(cap);
    let declared = declared_length(&req).unwrap_or(0) as usize;
    // Sized to the declared length, so the body is copied once and the buffer never grows.
    let buf = sim.buffers.take(declared.min(limit));
    match body::read_limited_into(req.into_body(), limit, buf).await {
        Ok(raw) => Ok(raw),
        Err(ReadError::TooLarge { .. }) if limit == cap => Err(Reply::front_end(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(ReadError::TooLarge { .. }) => Err((sim, Refusal::PartTooLarge(max_data)).into()),
        Err(ReadError::Io(_)) => {
            let message = "The request body could not be read.";
            Err(Reply::error(sim, StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", message))
        }
    }
}

const COMPACT_HEAD: &[u8] = b"{\"data\":\"";
const COMPACT_TAIL: &[u8] = b"\"}";

/// Decodes in place a body of exactly `{"data":"<base64>"}` (what the gateway sends), without a
/// JSON parse: the base64 alphabet holds no quote, backslash or control character, so when the
/// middle decodes as strict padded base64, the body was that JSON object and the decoded bytes
/// are what a parse and decode would give. Returns their length, now at `COMPACT_HEAD.len()`.
/// `None` (the buffer untouched) for any other body: the general path decides.
fn decode_compact(raw: &mut [u8]) -> Option<usize> {
    if raw.len() < COMPACT_HEAD.len() + COMPACT_TAIL.len()
        || !raw.starts_with(COMPACT_HEAD)
        || !raw.ends_with(COMPACT_TAIL)
    {
        return None;
    }
    let end = raw.len() - COMPACT_TAIL.len();
    let middle = &mut raw[COMPACT_HEAD.len()..end];
    // Checked before decoding in place, which would otherwise leave a half-decoded body behind.
    base64_simd::STANDARD.check(middle).ok()?;
    base64_simd::STANDARD.decode_inplace(middle).ok().map(|decoded| decoded.len())
}

/// The member a request acts for: its bearer token (accepted when `tokens` is empty or lists it).
fn bearer(headers: &HeaderMap, tokens: &[String]) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    let accepted = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && (tokens.is_empty() || tokens.iter().any(|t| t == token));
    accepted.then(|| token.to_owned())
}

fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

fn lacks_length<B>(req: &Request<B>) -> bool {
    matches!(req.version(), Version::HTTP_10 | Version::HTTP_11)
        && !req.headers().contains_key(header::CONTENT_LENGTH)
        && !req.headers().contains_key(header::TRANSFER_ENCODING)
}

fn throttle_status(sim: &Sim) -> StatusCode {
    StatusCode::from_u16(sim.config.throttle_status).unwrap_or(StatusCode::TOO_MANY_REQUESTS)
}

/// The page IIS answers a length-less PUT with.
fn length_required() -> Response<Body> {
    const PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01//EN\"\"http://www.w3.org/TR/html4/strict.dtd\">\r\n<HTML><HEAD><TITLE>Length Required</TITLE>\r\n<META HTTP-EQUIV=\"Content-Type\" Content=\"text/html; charset=us-ascii\"></HEAD>\r\n<BODY><h2>Length Required</h2>\r\n<hr><p>HTTP Error 411. The request must be chunked or have a content length.</p>\r\n</BODY></HTML>\r\n";
    Response::builder()
        .status(StatusCode::LENGTH_REQUIRED)
        .header(header::CONTENT_TYPE, "text/html; charset=us-ascii")
        .body(body::full(PAGE))
        .expect("static response")
}

fn reply(answer: Reply, announce: Option<Announce>) -> Response<Body> {
    let content_type = if answer.html { "text/html; charset=utf-8" } else { "application/json; charset=utf-8" };
    let mut response = Response::builder()
        .status(answer.status)
        .header(header::CONTENT_TYPE, content_type)
        .body(body::full(answer.body))
        .expect("valid response");
    if let Some(a) = announce {
        a.write(response.headers_mut());
    }
    response
}

/// Stamps the simulator's own clock (moved by `/__sim/clock`) in `Date`, as a server does.
fn dated(sim: &Sim, mut response: Response<Body>) -> Response<Body> {
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(sim.now().max(0) as u64);
    if let Ok(v) = http::HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
        response.headers_mut().insert(header::DATE, v);
    }
    response
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body::full(value.to_string()))
        .expect("valid response")
}

/// `/__sim/`: change faults, move the clock, look inside uploads.
async fn control(sim: &Sim, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().trim_start_matches("/__sim/").trim_end_matches('/').to_owned();
    let segments: Vec<&str> = path.split('/').collect();
    let not_found = || json_reply(StatusCode::NOT_FOUND, json!({"error": "no such simulator route or upload"}));
    match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["faults"]) => json_reply(StatusCode::OK, json!(sim.faults.get())),
        (Method::PUT, ["faults"]) => set_faults(sim, req).await,
        (Method::GET, ["stats"]) => json_reply(StatusCode::OK, sim.stats_json()),
        (Method::POST, ["clock"]) => advance_clock(sim, req.uri().query()),
        (Method::GET, ["uploads", id]) => match sim.store.inspect(id, sim.now()) {
            Some(inspection) => json_reply(StatusCode::OK, json!(inspection)),
            None => not_found(),
        },
        (Method::GET, ["uploads", id, "content"]) => match sim.store.content(id) {
            Some(bytes) => Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body::full(bytes))
                .expect("valid response"),
            None => json_reply(
                StatusCode::CONFLICT,
                json!({"error": "no contiguous content kept for this upload (unknown id, digest storage, or parts missing)"}),
            ),
        },
        (Method::POST, ["uploads", id, "consume"]) => match sim.store.consume(id) {
            Ok(()) => json_reply(StatusCode::OK, json!({"consumed": id})),
            Err(_) => json_reply(StatusCode::CONFLICT, json!({"error": "only a committed upload can be consumed"})),
        },
        _ => not_found(),
    }
}

/// `PUT /__sim/faults`: new fault settings, unknown or out-of-range ones refused.
async fn set_faults(sim: &Sim, req: Request<Incoming>) -> Response<Body> {
    let raw = match body::read_limited(req.into_body(), 64 * 1024).await {
        Ok(raw) => raw,
        Err(err) => return json_reply(StatusCode::BAD_REQUEST, json!({"error": err.to_string()})),
    };
    let mut unknown = Vec::new();
    let parsed: Result<Faults, _> =
        serde_ignored::deserialize(&mut serde_json::Deserializer::from_slice(&raw), |path| {
            unknown.push(path.to_string())
        });
    if !unknown.is_empty() {
        let error = format!("unknown fault settings: {}", unknown.join(", "));
        return json_reply(StatusCode::BAD_REQUEST, json!({ "error": error }));
    }
    match parsed {
        Ok(faults) if faults.problems().is_empty() => {
            sim.faults.set(faults.clone());
            json_reply(StatusCode::OK, json!(faults))
        }
        Ok(faults) => json_reply(StatusCode::BAD_REQUEST, json!({"error": faults.problems()})),
        Err(err) => json_reply(StatusCode::BAD_REQUEST, json!({"error": err.to_string()})),
    }
}

/// `POST /__sim/clock?advance_secs=N`: moves the simulator's clock.
fn advance_clock(sim: &Sim, query: Option<&str>) -> Response<Body> {
    let advance = query
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("advance_secs=")))
        .and_then(|v| v.parse::<i64>().ok());
    match advance {
        Some(secs) => {
            sim.clock_offset.fetch_add(secs, Ordering::Relaxed);
            json_reply(StatusCode::OK, json!({"now": sim.now()}))
        }
        None => json_reply(StatusCode::BAD_REQUEST, json!({"error": "expected ?advance_secs=N"})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(body: &str) -> (Option<Vec<u8>>, Vec<u8>) {
        let mut raw = body.as_bytes().to_vec();
        let len = decode_compact(&mut raw);
        (len.map(|n| raw[COMPACT_HEAD.len()..COMPACT_HEAD.len() + n].to_vec()), raw)
    }

    #[test]
    fn only_the_exact_compact_body_skips_the_json_parse() {
        assert_eq!(compact(r#"{"data":"aGVsbG8="}"#).0.as_deref(), Some(&b"hello"[..]));
        assert_eq!(compact(r#"{"data":""}"#).0.as_deref(), Some(&b""[..]));
        // Other shapes go to the general path with the body untouched: another key after the data
        // (whose first value is valid base64), whitespace, bad base64, an escape, no closing brace.
        for body in [
            r#"{"data":"QUJD","x":"y"}"#,
            r#"{"data": "aGVsbG8="}"#,
            r#"{"data":"aGVsbG8"}"#,
            r#"{"data":"aGVs\/bG8="}"#,
            r#"{"data":"aGVsbG8=""#,
            r#"{"data":"#,
        ] {
            let (decoded, raw) = compact(body);
            assert_eq!(decoded, None, "{body}");
            assert_eq!(raw, body.as_bytes(), "{body} left as it came");
        }
    }
}
