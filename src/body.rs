//! The HTTP body type every handler returns, and bounded reads of request bodies.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

/// Errors that are only reported, never branched on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every service in this crate.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// A body with nothing in it.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// An answer to HEAD, made headers only (what GET's answer would be, its length kept). Over
/// HTTP/1.1 hyper leaves the body out itself; over HTTP/2 the server must, or the stream is reset
/// (PROTOCOL_ERROR) instead of answered.
pub fn headers_only(answer: &mut http::Response<Body>) {
    if let Some(len) = hyper::body::Body::size_hint(answer.body()).exact() {
        answer.headers_mut().entry(http::header::CONTENT_LENGTH).or_insert(len.into());
    }
    *answer.body_mut() = empty();
}

/// A message's transfer codings (RFC 9112 §6.1), read the one way for requests and for the
/// upstream's answers: `Ok(false)` without `Transfer-Encoding`, `Ok(true)` when its lines name
/// exactly one coding, `chunked`; otherwise the codings all its lines name (`gzip, chunked`, or
/// `chunked` twice), which no part of the gateway decodes.
pub fn chunked_only(headers: &http::HeaderMap) -> Result<bool, String> {
    let lines = headers.get_all(http::header::TRANSFER_ENCODING);
    let mut codings = Vec::new();
    for line in lines.iter() {
        let text = line.to_str().map_err(|_| "(not text)".to_owned())?;
        codings.extend(text.split(',').map(str::trim).filter(|c| !c.is_empty()));
    }
    match codings[..] {
        [] if lines.iter().next().is_none() => Ok(false),
        [coding] if coding.eq_ignore_ascii_case("chunked") => Ok(true),
        _ => Err(codings.join(", ")),
    }
}

/// Why a bounded body read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("body is longer than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the body failed: {0}")]
    Io(BoxError),
}

/// Reads a whole body, refusing it once it passes `limit` bytes.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    read_limited_into(body, limit, Vec::new()).await.map(Bytes::from)
}

/// Reads a whole body into `buf` (cleared first), refusing it once it passes `limit` bytes. Each
/// byte is copied once, into a buffer the caller may size and reuse.
pub async fn read_limited_into<B>(body: B, limit: usize, mut buf: Vec<u8>) -> Result<Vec<u8>, ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    buf.clear();
    read_appending(body, limit, &mut buf).await?;
    Ok(buf)
}

/// Reads a whole body onto the end of `buf`, refusing it once `buf` would pass `limit` bytes.
/// What arrived stays in `buf` whatever happens (a body cut off, or the read dropped at a timeout).
pub async fn read_appending<B>(mut body: B, limit: usize, buf: &mut Vec<u8>) -> Result<(), ReadError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Io(e.into()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ReadError::TooLarge { limit });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(())
}

/// Longest a closed connection lingers (or an unread stream body is drained), in all.
pub const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest it waits for the client's next bytes.
pub const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// Most bytes it reads and throws away.
pub const LINGER_BYTES: u64 = 64 << 20;

/// A client's request body (an upload's, or one passed through), which over HTTP/2 is drained
/// (`drain_stream`) rather than dropped while unread, whichever path lets go of it: a refusal before
/// it is read, a failure half-way (the document too large, a digest mismatch, the upstream
/// refusing, the drain's cancel), a tus PATCH refused, an upstream answering a passthrough request
/// early. Dropped, it had reset the stream right after the answer, and curl reported a framing
/// error instead of the answer. (Over HTTP/1.1 the connection closes and lingers instead.)
pub struct RequestBody {
    body: Option<hyper::body::Incoming>,
    /// Drained when dropped unread: an HTTP/2 stream not yet ended.
    drain: bool,
}

impl RequestBody {
    pub fn new(body: hyper::body::Incoming, version: http::Version) -> Self {
        let drain = version == http::Version::HTTP_2 && !http_body::Body::is_end_stream(&body);
        Self { body: Some(body), drain }
    }
}

impl http_body::Body for RequestBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let Some(body) = self.body.as_mut() else { return std::task::Poll::Ready(None) };
        let polled = std::pin::Pin::new(body).poll_frame(cx);
        // Ended, or broken: nothing is left to drain.
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.drain = false;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map_or_else(|| http_body::SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|b| self.drain && !http_body::Body::is_end_stream(b)) {
            drain_stream(body);
        }
    }
}

/// An HTTP/2 stream whose answer went out before its body was read (the stream's counterpart of
/// `edge::linger`'s lingering close): dropping the
/// body would make the server reset the stream (RST_STREAM with NO_ERROR, which RFC 9113 allows
/// but some clients take as a failure: curl reports a framing error, httpx waits for its read
/// timeout), so the body is read and thrown away in the background, within the same bounds as a
/// lingering connection, and the client finishes sending and reads its answer.
pub fn drain_stream<B>(body: B)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: bytes::Buf + Send,
{
    use http_body_util::BodyExt;
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    runtime.spawn(async move {
        let mut body = body;
        let until = tokio::time::Instant::now() + LINGER_FOR;
        let mut read = 0u64;
        while read < LINGER_BYTES {
            let wait = LINGER_IDLE.min(until.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        read += bytes::Buf::remaining(data) as u64;
                    }
                }
                _ => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codings(lines: &[&'static str]) -> Result<bool, String> {
        let mut h = http::HeaderMap::new();
        for line in lines {
            h.append(http::header::TRANSFER_ENCODING, http::HeaderValue::from_static(line));
        }
        chunked_only(&h)
    }

    #[test]
    fn transfer_codings_are_one_chunked_or_named_in_full() {
        assert_eq!(codings(&[]), Ok(false));
        assert_eq!(codings(&["chunked"]), Ok(true));
        assert_eq!(codings(&[" CHUNKED\t"]), Ok(true));
        assert_eq!(codings(&["gzip, chunked"]), Err("gzip, chunked".into()));
        // Two lines are named whole: the message had quoted the second alone ("chunked").
        assert_eq!(codings(&["chunked", "chunked"]), Err("chunked, chunked".into()));
        assert_eq!(codings(&["gzip"]), Err("gzip".into()));
        assert_eq!(codings(&[""]), Err(String::new()));
    }
}
